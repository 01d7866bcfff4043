"""``ftx get`` of one file (to a file or, with ``-o -``, to standard output; with its progress
bar and retries) and ``ftx ls``. Several files or ``-r`` go through :mod:`ftx.cli._tree`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import posixpath
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ftx.cli._address import Address
from ftx.cli._checksum import same_digest
from ftx.cli._connect import connect_client
from ftx.cli._errors import CliError, ExitCode
from ftx.cli._output import as_json, printable, say, timing, write_line
from ftx.cli._paths import server_path
from ftx.cli._progress import ProgressBar
from ftx.cli._retry import Retrying
from ftx.client import (
    Client,
    Download,
    is_null_device,
    local_destination,
)
from ftx.errors import ConnectionLostError, LocalFileError, RemoteError
from ftx.protocol.messages import Entry, EntryType

if TYPE_CHECKING:
    from ftx.client import Skipped

__all__ = ["get_command", "ls_command"]

STDOUT: Final = "-"

logger = logging.getLogger("ftx.cli")


async def get_command(args: argparse.Namespace) -> None:
    """``ftx get HOST PATH``: one file, resumed and retried as the options say; a file already
    at the destination with the server's size and modification time is up to date."""
    path = args.path = server_path(args.paths[0])
    if not path:
        raise CliError(
            f"{args.paths[0]!r} is the served directory itself: add -r to fetch all of it",
            ExitCode.USAGE,
        )
    if args.output == STDOUT:
        await _stream(args, path)
        return
    try:
        target = local_destination(path, args.output)
    except LocalFileError as exc:
        raise CliError(str(exc), ExitCode.LOCAL_FILE) from None
    if args.sources or args.segments > 1:
        await get_from_sources(args, path, target)
        return
    retrying = Retrying(args)
    bar = ProgressBar(
        enabled=not args.quiet and not args.json and sys.stderr.isatty(), label=args.path
    )

    async def attempt() -> Download | Skipped:
        async with await retrying.connect() as client:
            if not args.force and await _up_to_date(client, path, target, args.checksum):
                from ftx.client import Skipped  # (its module is not needed otherwise)

                return Skipped(path, "up to date")
            return await client.get(
                path,
                args.output,
                progress=bar.callback,
                overwrite=args.force,
                preserve_mode=args.preserve,
                resume=args.resume,
            )

    try:
        result = await retrying.run(attempt)
    finally:
        bar.close()
    _report(args, path, target, result)


def _report(args: argparse.Namespace, path: str, target: Path, result: Download | Skipped) -> None:
    """Say what ``get`` of one file did: a JSON record, or a line on stderr."""
    if args.json:
        print(json.dumps(as_json(path, result)))
    elif not isinstance(result, Download):  # skipped
        say(args, f"{printable(str(target))} is up to date (the server's size and time)")
    else:
        verified = f"{result.digest_algorithm} {result.digest}" if result.digest else "not verified"
        what = f"{result.dest}" if not is_null_device(result.dest) else f"nothing ({result.dest})"
        times = timing(result.size, result.offset, result.seconds)
        say(args, f"saved {printable(what)} ({times}), {verified}")


async def get_from_sources(args: argparse.Namespace, path: str, target: Path) -> None:
    """``ftx get --from HOST1,HOST2 PATH`` (or ``--segments N``): one file from several
    servers, or several connections, at once (:func:`ftx.client.download_from_sources`). A
    source dropped (failed, or sent bytes not matching the digests) is named on stderr in one
    line, even with ``-q``."""
    from ftx.client import Source, download_from_sources

    addresses: list[Address] = args.sources or [args.address]
    retrying = Retrying(args)
    bar = ProgressBar(
        enabled=not args.quiet and not args.json and sys.stderr.isatty(), label=args.path
    )

    def source(address: Address) -> Source:
        async def connect() -> Client:
            try:
                client = await connect_client(
                    argparse.Namespace(**{**vars(args), "address": address})
                )
            except CliError as exc:  # (a source that cannot be reached is dropped, not fatal)
                raise ConnectionLostError(str(exc)) from None
            retrying.reached = True  # from now on, a source lost is worth another try
            return client

        return Source(str(address), connect)

    def dropped(name: str, reason: str) -> None:
        write_line(printable(f"ftx: dropped source {name}: {reason}"))

    async def attempt() -> Download | Skipped:
        if not args.force and _exists(target):
            async with await retrying.connect() as client:
                if await _up_to_date(client, path, target, args.checksum):
                    from ftx.client import Skipped

                    return Skipped(path, "up to date")
        try:
            return await download_from_sources(
                [source(address) for address in addresses],
                path,
                args.output,
                segments=args.segments,
                progress=bar.callback,
                overwrite=args.force,
                preserve_mode=args.preserve,
                resume=args.resume,
                on_dropped=dropped,
                on_fallback=lambda message: say(args, message),
            )
        except ConnectionLostError as exc:
            if not retrying.reached:  # no source answered at all: a mistake, as for one server
                raise CliError(str(exc), ExitCode.NETWORK) from None
            raise

    try:
        result = await retrying.run(attempt)
    finally:
        bar.close()
    _report(args, path, target, result)


def _exists(target: Path) -> bool:
    """Whether something is at ``target`` (no thread: one look-up, as in :func:`_up_to_date`)."""
    try:
        os.lstat(target)
    except OSError:
        return False
    return True


async def _up_to_date(client: Client, path: str, target: Path, checksum: bool) -> bool:
    """Whether ``target`` is a regular file with the size and modification time of the file
    at ``path`` on the server (which a download gives the files it saves), and with
    ``checksum`` its digest."""
    try:
        st = os.lstat(target)  # (no thread: a look-up in a directory just written to)
    except OSError:
        return False  # nothing there: no need to ask the server
    if not stat.S_ISREG(st.st_mode):
        return False  # the download then says what is wrong with it
    parent, name = posixpath.split(path)
    try:
        entries = await client.list(parent)
    except RemoteError:
        return False  # the download then says what the server thinks of the path
    for entry in entries:
        if entry.name == name and entry.type is EntryType.FILE:
            same = (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns)
            logger.debug(
                "%s exists: %s the server's size and time", target, "has" if same else "lacks"
            )
            return same and (not checksum or await same_digest(client, path, target, st.st_size))
    return False


async def _stream(args: argparse.Namespace, path: str) -> None:
    """``ftx get HOST PATH -o -``: the file's bytes on standard output as they arrive, its
    digest checked at the end (a mismatch exits non-zero: the bytes are already out)."""
    if args.json:
        raise CliError("-o - writes the file on standard output: --json cannot", ExitCode.USAGE)
    sys.stdout.flush()
    written = 0

    def progress(done: int, total: int) -> None:
        nonlocal written
        written = done
        bar.update(done, total)

    retrying = Retrying(args)
    retrying.may_retry = lambda: written == 0  # bytes already out cannot be taken back
    # (No bar when the bytes themselves go to the terminal: the two would mix.)
    shown = not args.quiet and sys.stderr.isatty() and not sys.stdout.isatty()
    bar = ProgressBar(enabled=shown, label=path)

    async def attempt() -> Download:
        async with await retrying.connect() as client:
            return await client.stream(path, sys.stdout.fileno(), progress=progress)

    try:
        result = await retrying.run(attempt)
    finally:
        bar.close()
    verified = f"{result.digest_algorithm} {result.digest}" if result.digest else "not verified"
    times = timing(result.size, 0, result.seconds)
    say(args, f"wrote {printable(path)} to standard output ({times}), {verified}")


async def ls_command(args: argparse.Namespace) -> None:
    """``ftx ls``: list a directory on the server, retried as ``ftx get`` is."""
    path = args.path = server_path(args.path)
    retrying = Retrying(args)

    async def attempt() -> list[Entry]:
        async with await retrying.connect() as client:
            return await client.list(path)

    entries = await retrying.run(attempt)
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
