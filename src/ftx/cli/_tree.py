"""``ftx get`` of several files or, with ``-r``, of whole directories: the command-line side of
:func:`ftx.client._tree.download` (progress display, per-file report, JSON lines, exit code)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, Final

import trio

from ftx._threads import leaf_exceptions
from ftx.cli._connect import connect_client
from ftx.cli._errors import CliError, ExitCode, describe
from ftx.cli._output import as_json, human_size, printable, say
from ftx.cli._retry import MAX_RETRY_DELAY, worth_retrying
from ftx.client import Client, Download, Skipped, TreeProgress, download_tree
from ftx.errors import ConnectionLostError, FtxError, RemoteError

_REFRESH_SECONDS: Final = 0.2
_IN_FLIGHT_SHOWN: Final = 3


async def get_tree(args: argparse.Namespace) -> None:
    """Run ``ftx get`` for several paths or a tree; raise :class:`CliError` if any file failed.

    After a lost connection (or a server that is busy or restarting) it runs again, up to
    ``--retries`` times in a row without progress: files saved meanwhile are then up to date,
    interrupted ones resume from their parts.
    """
    # The last result of each file, over every attempt: a later attempt finds the files an
    # earlier one saved up to date, and meets the same skips and refusals again.
    outcomes: dict[str, Download | FtxError | Skipped] = {}

    @asynccontextmanager
    async def connect() -> AsyncIterator[Client]:
        async with await connect_client(args) as client:
            yield client

    def on_done(path: str, result: Download | FtxError | Skipped) -> None:
        previous = outcomes.get(path)
        if isinstance(previous, Download) and isinstance(result, Skipped):
            return  # saved by an earlier attempt of this command
        outcomes[path] = result
        if type(previous) is type(result) and str(previous) == str(result):
            return  # said already, by an earlier attempt
        if isinstance(result, FtxError):
            _report(args, f"{printable(path)}: {describe(result, args)[0]}")
        elif isinstance(result, Skipped) and result.reason != "up to date":
            _report(args, f"skipped {printable(path)}: {result.reason}")
        if args.json:
            print(json.dumps(as_json(path, result)), flush=True)

    started = time.monotonic()
    failed_in_a_row = 0  # attempts that saved nothing
    while True:
        saved_before = sum(isinstance(result, Download) for result in outcomes.values())
        try:
            await _download_once(args, connect, on_done)
            break
        except (ConnectionLostError, CliError, RemoteError) as exc:
            saved_now = sum(isinstance(result, Download) for result in outcomes.values())
            failed_in_a_row = 0 if saved_now > saved_before else failed_in_a_row + 1
            if not worth_retrying(exc) or failed_in_a_row > args.retries:
                raise
            if failed_in_a_row:
                delay = min(2.0 ** (failed_in_a_row - 1), MAX_RETRY_DELAY)
                retry = f"{failed_in_a_row} of {args.retries}"
                say(args, f"{exc}; retrying in {delay:g} s ({retry})")
                await trio.sleep(delay)
            else:
                say(args, f"{exc}; retrying")
    elapsed = time.monotonic() - started
    saved = [result for result in outcomes.values() if isinstance(result, Download)]
    failures = [(path, result) for path, result in outcomes.items() if isinstance(result, FtxError)]
    up_to_date = sum(
        isinstance(result, Skipped) and result.reason == "up to date"
        for result in outcomes.values()
    )
    size = sum(result.size for result in saved)
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


async def _download_once(
    args: argparse.Namespace,
    connect: Callable[[], AbstractAsyncContextManager[Client]],
    on_done: Callable[[str, Download | FtxError | Skipped], object],
) -> None:
    totals = TreeProgress()
    bar = _TreeBar(enabled=not args.quiet and not args.json and sys.stderr.isatty())
    try:
        with _unwrapped_errors():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bar.run, totals)
                await download_tree(
                    connect,
                    args.paths,
                    args.output,
                    recursive=args.recursive,
                    jobs=args.jobs,
                    overwrite=args.force,
                    preserve_mode=args.preserve,
                    on_done=on_done,
                    progress=totals,
                )
                nursery.cancel_scope.cancel()
    finally:
        bar.close()


@contextmanager
def _unwrapped_errors() -> Iterator[None]:
    """Raise a nursery's lone failure as itself (the bar's task never fails), so that callers
    can catch it by type."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = [exc for exc in leaf_exceptions(group) if not isinstance(exc, trio.Cancelled)]
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _report(args: argparse.Namespace, message: str) -> None:
    if not args.json:
        say(args, message)


class _TreeBar:
    """One tqdm bar for the whole batch: bytes, files done of found, and files in flight."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: Any = None

    async def run(self, totals: TreeProgress) -> None:
        if not self._enabled:
            return
        from tqdm import tqdm  # only when a bar is drawn: keeps start-up fast

        self._bar = tqdm(
            total=0, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, leave=True
        )
        while True:
            self._refresh(totals)
            await trio.sleep(_REFRESH_SECONDS)

    def _refresh(self, totals: TreeProgress) -> None:
        bar = self._bar
        bar.total = totals.bytes_found
        bar.n = min(totals.bytes_done, totals.bytes_found)
        more = "" if totals.listing_done else "+"
        bar.set_description_str(f"{totals.files_done}/{totals.files_found}{more} files")
        names = sorted(totals.in_flight)[:_IN_FLIGHT_SHOWN]
        bar.set_postfix_str(", ".join(printable(name) for name in names), refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
