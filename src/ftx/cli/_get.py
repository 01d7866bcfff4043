"""``ftx get`` of one file (with its progress bar and retries) and ``ftx ls``. Several files
or ``-r`` go through :mod:`ftx.cli._tree`."""

from __future__ import annotations

import argparse
import itertools
import json
import stat
import sys
import time
from typing import Final

import trio

from ftx.cli._connect import connect_client
from ftx.cli._errors import CliError
from ftx.cli._output import as_json, human_size, printable, say
from ftx.cli._progress import ProgressBar
from ftx.cli._retry import MAX_RETRY_DELAY, worth_retrying
from ftx.client import is_null_device
from ftx.errors import ConnectionLostError, RemoteError
from ftx.protocol.messages import Entry, EntryType

__all__ = ["get_command", "ls_command"]


async def get_command(args: argparse.Namespace) -> None:
    """``ftx get HOST PATH``: one file, resumed and retried as the options say."""
    args.path = args.paths[0]
    bar = ProgressBar(
        enabled=not args.quiet and not args.json and sys.stderr.isatty(), label=args.path
    )
    try:
        for attempt in itertools.count():
            try:
                async with await connect_client(args) as client:
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
                delay = min(2.0**attempt, MAX_RETRY_DELAY)
                bar.clear()
                say(args, f"{exc}; retrying in {delay:g} s ({attempt + 1} of {args.retries})")
                await trio.sleep(delay)
    finally:
        bar.close()
    timing = ""
    if result.size >= 2**20 and result.seconds > 0:
        rate = result.size / result.seconds / 2**20
        timing = f" in {result.seconds:.2f} s, {rate:.1f} MiB/s"
    if args.json:
        print(json.dumps(as_json(args.path, result)))
        return
    verified = f"{result.digest_algorithm} {result.digest}" if result.digest else "not verified"
    what = f"{result.dest}" if not is_null_device(result.dest) else f"nothing ({result.dest})"
    say(args, f"saved {what} ({human_size(result.size)}{timing}), {verified}")


async def ls_command(args: argparse.Namespace) -> None:
    """``ftx ls``: list a directory on the server."""
    client = await connect_client(args)
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
