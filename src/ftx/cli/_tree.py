"""``ftx get`` of several files or, with ``-r``, of whole directories: the command-line side of
:func:`ftx.client._tree.download` (progress display, per-file report, JSON lines, exit code)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

from ftx._threads import with_background
from ftx.cli._errors import CliError, ExitCode, describe
from ftx.cli._output import as_json, human_size, printable, say
from ftx.cli._paths import server_path
from ftx.cli._progress import TreeBar
from ftx.cli._retry import Retrying
from ftx.client import Client, Download, Skipped, TreeProgress, download_tree
from ftx.errors import FtxError

logger = logging.getLogger("ftx.cli")


async def get_tree(args: argparse.Namespace) -> None:
    """Run ``ftx get`` for several paths or a tree; raise :class:`CliError` if any file failed.

    After a lost connection (or a server that is busy or restarting) it runs again, up to
    ``--retries`` times in a row without progress: files saved meanwhile are then up to date,
    interrupted ones resume from their parts.
    """
    paths = [server_path(path) for path in args.paths]
    # The last result of each file, over every attempt: a later attempt finds the files an
    # earlier one saved up to date, and meets the same skips and refusals again.
    # (A saved file is kept as its size only: a tree of 100,000 files must not hold 100,000
    # Download objects.)
    outcomes: dict[str, int | FtxError | Skipped] = {}
    retrying = Retrying(args, progress=lambda: sum(isinstance(r, int) for r in outcomes.values()))

    @asynccontextmanager
    async def connect() -> AsyncIterator[Client]:
        async with await retrying.connect() as client:
            yield client

    def on_done(path: str, result: Download | FtxError | Skipped) -> None:
        previous = outcomes.get(path)
        if isinstance(previous, int) and isinstance(result, Skipped):
            return  # saved by an earlier attempt of this command
        outcomes[path] = result.size if isinstance(result, Download) else result
        if type(previous) is type(result) and str(previous) == str(result):
            return  # said already, by an earlier attempt
        if isinstance(result, FtxError):
            _report(args, f"{printable(path)}: {describe(result, args)[0]}")
        elif isinstance(result, Skipped) and result.reason != "up to date":
            _report(args, f"skipped {printable(path)}: {result.reason}")
        if args.json:
            print(json.dumps(as_json(path, result)), flush=True)

    started = time.monotonic()
    with _output_directory(args.output):
        await retrying.run(lambda: _download_once(args, paths, connect, on_done))
        args.json_reported = True  # each outcome was printed as it came
        elapsed = time.monotonic() - started
        saved = [result for result in outcomes.values() if isinstance(result, int)]
        failures = [(p, result) for p, result in outcomes.items() if isinstance(result, FtxError)]
        up_to_date = sum(
            isinstance(result, Skipped) and result.reason == "up to date"
            for result in outcomes.values()
        )
        size = sum(saved)
        summary = f"{len(saved)} file(s) saved ({human_size(size)} in {elapsed:.2f} s)"
        if up_to_date:
            summary += f", {up_to_date} already up to date"
        if failures:
            summary += f", {len(failures)} failed"
        say(args, summary)
    if failures:
        message, code = describe(failures[0][1], args)
        if len(failures) > 1:
            code = ExitCode.FAILURE if code != ExitCode.NETWORK else code
        raise CliError(f"{len(failures)} file(s) not saved; the first: {message}", code)


@contextmanager
def _output_directory(output: str | None) -> Iterator[None]:
    """Make ``-o DIR`` if it is missing and its parent exists (as ``scp -r`` and ``cp -r``
    do); remove it again if the command fails before anything was saved in it."""
    if output is None or os.path.lexists(output):
        yield
        return
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise CliError(
            f"cannot save into {output}: {parent} is not a directory", ExitCode.LOCAL_FILE
        )
    try:
        os.mkdir(output)
    except OSError as exc:
        raise CliError(f"cannot create {output}: {exc.strerror}", ExitCode.LOCAL_FILE) from None
    logger.debug("created %s", output)
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.rmdir(output)  # only if still empty
        raise


async def _download_once(
    args: argparse.Namespace,
    paths: list[str],
    connect: Callable[[], AbstractAsyncContextManager[Client]],
    on_done: Callable[[str, Download | FtxError | Skipped], object],
) -> None:
    totals = TreeProgress()
    bar = TreeBar(enabled=not args.quiet and not args.json and sys.stderr.isatty())

    download = partial(
        download_tree,
        connect,
        paths,
        Path(args.output) if args.output is not None else None,
        recursive=args.recursive,
        jobs=args.jobs,
        overwrite=args.force,
        preserve_mode=args.preserve,
        on_done=on_done,
        progress=totals,
        checksum=args.checksum,
        keep_results=False,  # each is reported (and kept) by on_done
    )
    try:
        await with_background(partial(bar.keep_drawn, totals), download)
    finally:
        bar.close(totals)


def _report(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        say(args, message)
