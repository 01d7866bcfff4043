"""``ftx get`` of one file (with its progress bar and retries) and ``ftx ls``. Several files
or ``-r`` go through :mod:`ftx.cli._tree`."""

from __future__ import annotations

import argparse
import itertools
import json
import stat
import sys
import time
from typing import Any, Final

import trio

from ftx.cli._connect import worth_retrying
from ftx.cli._main import (
    _MAX_RETRY_DELAY,
    CliError,
    _connect,
    _human_size,
    _say,
    printable,
)
from ftx.cli._tree import _as_json
from ftx.client._partfile import is_null_device
from ftx.errors import ConnectionLostError, RemoteError
from ftx.protocol.messages import Entry, EntryType

__all__ = ["ProgressBar", "get_command", "ls_command"]


async def get_command(args: argparse.Namespace) -> None:
    """``ftx get HOST PATH``: one file, resumed and retried as the options say."""
    args.path = args.paths[0]
    bar = ProgressBar(
        enabled=not args.quiet and not args.json and sys.stderr.isatty(), label=args.path
    )
    try:
        for attempt in itertools.count():
            try:
                async with await _connect(args) as client:
                    result = await client.get(
                        args.path,
                        args.output,
                        progress=bar.update,
                        overwrite=args.force,
                        preserve_mode=args.preserve,
                        resume=args.resume,
                    )
                break
            except (ConnectionLostError, CliError, RemoteError) as exc:
                if not worth_retrying(exc) or attempt >= args.retries:
                    raise
                delay = min(2.0**attempt, _MAX_RETRY_DELAY)
                bar.clear()
                _say(args, f"{exc}; retrying in {delay:g} s ({attempt + 1} of {args.retries})")
                await trio.sleep(delay)
    finally:
        bar.close()
    timing = ""
    if result.size >= 2**20 and result.seconds > 0:
        rate = result.size / result.seconds / 2**20
        timing = f" in {result.seconds:.2f} s, {rate:.1f} MiB/s"
    if args.json:
        print(json.dumps(_as_json(args.path, result)))
        return
    verified = f"{result.digest_algorithm} {result.digest}" if result.digest else "not verified"
    what = f"{result.dest}" if not is_null_device(result.dest) else f"nothing ({result.dest})"
    _say(args, f"saved {what} ({_human_size(result.size)}{timing}), {verified}")


class ProgressBar:
    """A tqdm bar drawn on stderr, created when the size of the download is known."""

    def __init__(self, *, enabled: bool, label: str) -> None:
        self._enabled = enabled
        self._label = printable(label)
        self._bar: Any = None
        self._shown = 0

    def update(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            from tqdm import tqdm  # only when a bar is drawn: keeps start-up fast

            self._bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self._label,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if done < self._shown:  # started again from zero: the file changed on the server
            self._bar.reset(total=total)
            self._shown = 0
        self._bar.update(done - self._shown)
        self._shown = done

    def clear(self) -> None:
        """Wipe the bar from the terminal, so that a message can be printed in its place."""
        if self._bar is not None:
            self._bar.clear()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def ls_command(args: argparse.Namespace) -> None:
    """``ftx ls``: list a directory on the server."""
    client = await _connect(args)
    async with client:
        entries = await client.list(args.path)
    entries.sort(key=lambda entry: entry.name)
    if args.json:
        fields = ("name", "type", "size", "mtime_ns", "mode")
        rows = [{key: getattr(entry, key) for key in fields} for entry in entries]
        print(json.dumps(rows, indent=1))
        return
    for entry in entries:
        print(_format_entry(entry) if args.long else _short_name(entry))


def _short_name(entry: Entry) -> str:
    suffix = "/" if entry.type is EntryType.DIRECTORY else ""
    return printable(entry.name) + suffix


_TYPE_BITS: Final = {
    EntryType.FILE: stat.S_IFREG,
    EntryType.DIRECTORY: stat.S_IFDIR,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.OTHER: 0,
}


def _format_entry(entry: Entry) -> str:
    mode = stat.filemode(_TYPE_BITS[entry.type] | entry.mode)
    if entry.type is EntryType.OTHER:
        mode = "?" + mode[1:]
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime_ns / 1e9))
    return f"{mode} {entry.size:>12} {when} {_short_name(entry)}"
