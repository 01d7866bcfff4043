"""``ftx put``: upload files, or with ``-r`` whole directories, to a writable server. (The
options of ``ftx serve`` that make a server writable are in :mod:`ftx.cli._serve`.)"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import trio

from ftx._threads import run_together, with_background
from ftx.cli._address import ADDRESS_HELP, parse_address
from ftx.cli._checksum import same_digest
from ftx.cli._connect import add_connection_options
from ftx.cli._errors import CliError, ExitCode, describe
from ftx.cli._options import (
    add_checksum_option,
    add_digest_option,
    add_limit_rate,
    add_timeout,
    add_verbosity,
    parse_positive_count,
)
from ftx.cli._output import as_json, human_size, printable, say, timing
from ftx.cli._paths import server_path
from ftx.cli._progress import ProgressBar, TreeBar
from ftx.cli._retry import Retrying, add_retry_options
from ftx.client import (
    DEFAULT_JOBS,
    Client,
    Planned,
    Skipped,
    TreePutReport,
    Upload,
    local_name,
    plan_uploads,
    remote_join,
)
from ftx.errors import FtxError, IntegrityError, LocalFileError, RemoteError
from ftx.protocol import ErrorCode
from ftx.protocol.messages import Entry, EntryType

__all__ = ["add_put_parser", "put_command"]

# Refusals that concern the whole server, not one file: give up (or retry) instead of going on.
_FATAL: Final = {ErrorCode.READ_ONLY}
_TRANSIENT: Final = {ErrorCode.BUSY, ErrorCode.SHUTTING_DOWN}
_EPILOG: Final = """examples:
  ftx put 192.168.1.7 report.pdf                 into the served directory
  ftx put 192.168.1.7 a.txt b.txt --to incoming  into incoming/ (it must exist)
  ftx put -r 192.168.1.7 photos --to backup      photos/ and everything in it
  ftx put --json 192.168.1.7 *.log               one JSON object per file on stdout
"""


def add_put_parser(commands: Any) -> None:
    """Add ``ftx put`` to the subcommands of the ``ftx`` parser."""
    put = commands.add_parser(
        "put",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
        help="upload files to a writable server",
        description="Upload the local files LOCAL (with -r, also directories and everything "
        "under them) into the served directory of the ftx server at HOST, which must run "
        "with --writable. Each file lands in a part file on the server and takes its name "
        "only once its digest matched; an interrupted upload resumes.",
    )
    put.add_argument("address", metavar="HOST[:PORT]", type=parse_address, help=ADDRESS_HELP)
    put.add_argument("sources", metavar="LOCAL", nargs="+", help="a file (or, with -r, directory)")
    put.add_argument(
        "-r", "--recursive", action="store_true", help="send directories with everything in them"
    )
    put.add_argument(
        "--to",
        default="",
        metavar="REMOTE_DIR",
        help="the directory on the server to put them in; it must exist (default: the served "
        "directory itself)",
    )
    put.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="replace files that exist on the server (if it allows it: --allow-overwrite)",
    )
    put.add_argument(
        "-j",
        "--jobs",
        type=parse_positive_count,
        default=DEFAULT_JOBS,
        metavar="N",
        help="with several files: connections used at once (after the directories are made; "
        f"a server that refuses some as busy gets fewer) (default: {DEFAULT_JOBS})",
    )
    put.add_argument(
        "--per-file",
        action="store_true",
        help="with -r: send each file with a request of its own, as to a server without tree "
        "uploads, instead of each directory as one stream",
    )
    put.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per file on standard output (sent, skipped or failed)",
    )
    add_checksum_option(put, where="on the server")
    add_retry_options(put)
    put.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="send every file from its start, even if the server holds part of it",
    )
    add_digest_option(put)
    add_limit_rate(put, what="the whole command, all connections together; default: no limit")
    add_timeout(put)
    add_connection_options(put)
    add_verbosity(put)


@dataclass
class _Run:
    """The state of one ``ftx put``: what is left to do, and what happened."""

    plan: list[Planned]  # directories first (top-down), then files
    taken: int = 0  # items of the plan handed out so far
    given_back: deque[int] = field(default_factory=deque)  # taken, not done: hand out again
    retried: set[int] = field(default_factory=set)  # items given back at least once
    done: int = 0
    sent: list[Upload] = field(default_factory=list)
    failures: list[FtxError] = field(default_factory=list)
    failed_directories: list[str] = field(default_factory=list)
    up_to_date: int = 0
    # What each server directory holds, listed once: files already there with the same size
    # and modification time are skipped, as `ftx get -r` skips them locally.
    listings: dict[str, dict[str, Entry]] = field(default_factory=dict)
    # Directories to send as tree streams (feature tree-put): (local, remote), and the tree
    # streams' totals.
    trees: list[tuple[Path, str]] = field(default_factory=list)
    tree_report: TreePutReport | None = None

    def take(self, *, files: bool) -> int | None:
        """The index of the next item to send (a file only if ``files``), or ``None``."""
        if self.given_back:
            if files or self.plan[self.given_back[0]].kind == "dir":
                return self.given_back.popleft()
            return None
        if self.taken < len(self.plan) and (files or self.plan[self.taken].kind == "dir"):
            self.taken += 1
            return self.taken - 1
        return None

    def under_failed_directory(self, item: Planned) -> bool:
        return any(item.remote.startswith(d + "/") for d in self.failed_directories)


async def put_command(args: argparse.Namespace) -> None:
    """Run ``ftx put``.

    Raises:
        CliError: a source is missing, or some file was not stored (with the exit code of the
            first failure).
        FtxError: the server refused everything (read-only), or the connection was lost for
            good.
    """

    def skip(path: Path, reason: str) -> None:
        if args.json:
            print(json.dumps(as_json(str(path), Skipped(str(path), reason))), flush=True)
        else:
            say(args, f"skipped {printable(str(path))}: {reason}")

    args.to = server_path(args.to)
    args.path = args.sources[0] if len(args.sources) == 1 else None  # (for --json)
    directories, others = _split_sources(args.sources, recursive=args.recursive)
    plan = list(plan_uploads(others, args.to, recursive=args.recursive, on_skip=skip))
    # Every directory is made before any file is sent: files then go over several connections
    # in any order.
    run = _Run(sorted(plan, key=lambda item: item.kind != "dir"))
    run.trees = [(Path(d), remote_join(args.to, local_name(Path(d)))) for d in directories]
    started = trio.current_time()
    retrying = Retrying(args, progress=lambda: run.done + _tree_progress(run))
    args.retrying = retrying

    async def attempt() -> None:
        async with await retrying.connect() as client:
            if run.trees and not await _put_trees(client, run, args, skip):
                # The server takes no tree streams: its files one by one, as before.
                trees, run.trees = run.trees, []
                more = plan_uploads([t[0] for t in trees], args.to, recursive=True, on_skip=skip)
                run.plan = sorted([*run.plan, *more], key=lambda item: item.kind != "dir")
            await _put_all(client, run, args)

    await retrying.run(attempt)
    _summarize(args, run, trio.current_time() - started)


def _split_sources(sources: list[str], *, recursive: bool) -> tuple[list[str], list[str]]:
    """The directories to send as trees (with ``recursive``), and the rest."""
    directories = [s for s in sources if recursive and os.path.isdir(s)]
    return directories, [s for s in sources if s not in directories]


def _tree_progress(run: _Run) -> int:
    report = run.tree_report
    return 0 if report is None else report.files + report.up_to_date


async def _put_trees(
    client: Client, run: _Run, args: argparse.Namespace, skip: Callable[[Path, str], None]
) -> bool:
    """Send each directory of ``run.trees`` as one tree stream; False (nothing sent) if the
    server does not offer them. A directory done is taken off the list: after a lost
    connection, the next attempt sends the rest, and a tree re-sent moves only what the server
    lacks."""
    if args.per_file:
        return False
    if run.tree_report is None:
        run.tree_report = _tree_report(args, run, skip)
    report = run.tree_report
    bar = TreeBar(enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        return await with_background(
            partial(bar.keep_drawn, report), partial(_put_each_tree, client, run, args, report)
        )
    finally:
        bar.close(report)


async def _put_each_tree(
    client: Client, run: _Run, args: argparse.Namespace, report: TreePutReport
) -> bool:
    while run.trees:
        local, remote = run.trees[0]
        report.listing_done = False  # (put_tree sets it once the tree is walked)
        try:
            answered = await client.put_tree(
                local,
                remote,
                overwrite=args.force,
                checksum=args.checksum,
                report=report,
                jobs=args.jobs,
                connect=args.retrying.connect,
            )
            sent = answered is not None
        except RemoteError as exc:
            if exc.code in _FATAL:
                raise CliError(
                    f"{args.address} does not accept uploads: it must run with "
                    "'ftx serve --writable' [read-only]",
                    ExitCode.PERMISSION,
                    exc.code,
                ) from None
            if exc.code in _TRANSIENT:
                raise
            run.failures.append(exc)
            _report_tree_failure(args, str(local), exc)
            sent = True
        except LocalFileError as exc:
            run.failures.append(exc)
            _report_tree_failure(args, str(local), exc)
            sent = True
        if not sent:
            return False
        run.trees.pop(0)
    return True


def _report_tree_failure(args: argparse.Namespace, path: str, error: FtxError) -> None:
    if args.json:
        print(json.dumps(as_json(path, error)), flush=True)
    else:
        say(args, f"{printable(path)}: {describe(error, args)[0]}")


def _tree_report(
    args: argparse.Namespace, run: _Run, skip: Callable[[Path, str], None]
) -> TreePutReport:
    """Reports each file of the tree streams as it is answered: failures at once (one line
    each), with ``--json`` every file."""

    def stored(path: str, size: int) -> None:
        if args.json:
            print(json.dumps({"path": path, "status": "sent", "size": size}), flush=True)

    def failed(path: str, error: FtxError) -> None:
        run.failures.append(error)
        _report_tree_failure(args, path, error)

    def unchanged(path: str) -> None:
        if args.json:
            print(json.dumps(as_json(path, Skipped(path, "up to date"))), flush=True)

    return TreePutReport(stored=stored, failed=failed, skipped=skip, unchanged=unchanged)


async def _put_all(client: Client, run: _Run, args: argparse.Namespace) -> None:
    """Make the directories on ``client``'s connection, then send the files over it and up to
    ``args.jobs - 1`` more (for many small files, each of which waits for two answers)."""
    await _put_items(client, run, args, files=False)
    files_left = len(run.plan) - run.taken + len(run.given_back)
    extra = min(args.jobs, files_left) - 1
    bars = extra <= 0
    await run_together(
        lambda: _put_items(client, run, args, files=True, bars=bars),
        *[lambda: _extra_connection(run, args)] * max(extra, 0),
    )
    await _put_items(client, run, args, files=True, bars=bars)  # what the others gave back


async def _extra_connection(run: _Run, args: argparse.Namespace) -> None:
    """Send files on a connection of its own until none is left. Whatever goes wrong with it
    (refused as busy, lost), it gives its file back and leaves: the main connection, which
    reports and retries, does the rest."""
    try:
        async with await args.retrying.connect() as client:
            await _put_items(client, run, args, files=True, bars=False)
    except (FtxError, OSError):
        pass


async def _put_items(
    client: Client, run: _Run, args: argparse.Namespace, *, files: bool, bars: bool = True
) -> None:
    while (index := run.take(files=files)) is not None:
        done = False
        try:
            await _put_item(client, run, run.plan[index], args, index in run.retried, bar=bars)
            done = True
        finally:
            if done:
                run.done += 1
            else:  # the connection failed, or the command is ending: send it again
                run.given_back.appendleft(index)
                run.retried.add(index)


async def _put_item(
    client: Client, run: _Run, item: Planned, args: argparse.Namespace, retried: bool, *, bar: bool
) -> None:
    """Send one item (``retried``: again, after its connection failed); a failure of that item
    alone is noted, not raised."""
    if run.under_failed_directory(item):
        return
    try:
        if item.kind == "dir":
            if await client.mkdir(item.remote):
                run.listings[item.remote] = {}  # new, so empty: no need to list it
        elif (
            len(run.plan) > 1
            and not args.force
            and await _up_to_date(client, run, item, checksum=args.checksum)
        ):
            _up_to_date_now(args, run, item)
        else:
            run.sent.append(await _put_file(client, item, args, bar=bar))
    except RemoteError as exc:
        if exc.code in _FATAL:
            raise CliError(
                f"{args.address} does not accept uploads: it must run with "
                "'ftx serve --writable' [read-only]",
                ExitCode.PERMISSION,
                exc.code,
            ) from None
        if exc.code in _TRANSIENT:
            raise  # the whole command tries again later (--retries)
        if exc.code == ErrorCode.EXISTS and not args.force and item.kind == "file":
            # Stored already? By this very command, if the connection was lost after the server
            # stored the file but before its answer came (or by an earlier run of it that was
            # interrupted then); else by anyone, since the listing. Identical is success.
            if await _up_to_date(client, run, item, checksum=args.checksum, again=True):
                if retried:
                    say(args, f"{printable(str(item.local))}: stored before the connection broke")
                _up_to_date_now(args, run, item)
                return
            exc = RemoteError(exc.code, f"{exc.message} (use --force to replace it)")
        _failed(args, run, item, exc)
    except (IntegrityError, LocalFileError) as exc:
        _failed(args, run, item, exc)


async def _up_to_date(
    client: Client, run: _Run, item: Planned, *, checksum: bool, again: bool = False
) -> bool:
    """Whether the server has ``item`` already: a file of the same size and modification time
    (an upload keeps the modification time), and with ``checksum`` the same digest.
    ``again``: list its directory anew."""
    directory, name = posixpath.split(item.remote)
    listing = None if again else run.listings.get(directory)
    if listing is None:
        try:
            entries = await client.list(directory)
        except RemoteError:
            entries = []  # the upload itself then says what is wrong
        listing = run.listings[directory] = {entry.name: entry for entry in entries}
    entry = listing.get(name)
    if entry is None or entry.type is not EntryType.FILE:
        return False
    try:
        st = item.local.stat()
    except OSError:
        return False  # the upload itself then says what is wrong
    if (entry.size, entry.mtime_ns) != (st.st_size, st.st_mtime_ns):
        return False
    return not checksum or await same_digest(client, item.remote, item.local, entry.size)


def _up_to_date_now(args: argparse.Namespace, run: _Run, item: Planned) -> None:
    run.up_to_date += 1
    if args.json:
        print(json.dumps(as_json(str(item.local), Skipped(item.remote, "up to date"))), flush=True)
    elif len(run.plan) == 1:
        say(
            args,
            f"{printable(str(item.local))} is up to date on the server, as "
            f"{printable(item.remote)} (same size and time)",
        )


def _failed(args: argparse.Namespace, run: _Run, item: Planned, error: FtxError) -> None:
    """Note a failure; report it now unless it is the only thing to do (then the final error
    line says it)."""
    run.failures.append(error)
    if args.json:
        print(json.dumps(as_json(str(item.local), error)), flush=True)
    if len(run.plan) == 1 or args.json:
        return
    if item.kind == "dir":
        run.failed_directories.append(item.remote)
        say(args, f"{printable(str(item.local))}: {describe(error, args)[0]} (skipped)")
    else:
        say(args, f"{printable(str(item.local))}: {describe(error, args)[0]}")


async def _put_file(
    client: Client, item: Planned, args: argparse.Namespace, *, bar: bool
) -> Upload:
    """Send one file; with ``bar``, draw its progress (when standard error is a terminal)."""
    shown = ProgressBar(
        enabled=bar and not args.quiet and not args.json and sys.stderr.isatty(),
        label=str(item.local),
    )
    try:
        result = await client.put(
            item.local,
            item.remote,
            progress=shown.update,
            overwrite=args.force,
            resume=args.resume,
        )
    finally:
        shown.close()
    if args.json:
        print(json.dumps(as_json(str(item.local), result)), flush=True)
        return result
    say(
        args,
        f"sent {printable(str(item.local))} to {printable(result.path)} "
        f"({timing(result.size, result.offset, result.seconds)}), "
        f"{result.digest_algorithm} {result.digest}",
    )
    return result


def _summarize(args: argparse.Namespace, run: _Run, elapsed: float) -> None:
    args.json_reported = True  # every outcome was printed as it came
    report = run.tree_report
    if len(run.plan) > 1 or report is not None:
        size = sum(upload.size for upload in run.sent) + (report.bytes if report else 0)
        sent = len(run.sent) + (report.files if report else 0)
        up_to_date = run.up_to_date + (report.up_to_date if report else 0)
        summary = f"{sent} file(s) sent ({human_size(size)} in {elapsed:.2f} s)"
        if up_to_date:
            summary += f", {up_to_date} already up to date"
        if run.failures:
            summary += f", {len(run.failures)} failed"
        say(args, summary)
    if run.failures:
        message, code = describe(run.failures[0], args)
        if len(run.failures) > 1:
            message = f"{len(run.failures)} not sent; the first: {message}"
            code = ExitCode.FAILURE if code != ExitCode.NETWORK else code
        raise CliError(message, code)
