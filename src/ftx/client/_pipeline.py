"""Pipelined downloads: the loop behind :meth:`ftx.Client.fetch` and :meth:`ftx.Client.get_many`.

One task sends GET requests in batches, another receives the answers in order; a resume the
server refuses because the file changed is asked for again from zero.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import trio

from ftx._threads import run_together
from ftx.client._partfile import (
    PartFile,
    check_destination,
    local_destination,
    part_file_name,
    part_for,
)
from ftx.client._receive import (
    Download,
    DownloadWire,
    GetOptions,
    ProgressCallback,
    get_request,
    receive_answer,
)
from ftx.errors import FtxError, IntegrityError, LocalFileError, RemoteError
from ftx.protocol import ErrorCode
from ftx.protocol.messages import Message

__all__ = ["FetchWire", "fetch_files"]

FetchItems = trio.abc.ReceiveChannel[tuple[str, str | os.PathLike[str]]]


class FetchWire(DownloadWire, Protocol):
    """What pipelined downloads need of a connection (:class:`ftx.Client` is one): a
    download's needs, and whether the connection was closed (an error then ends the fetch, not
    just a file)."""

    @property
    def _closed(self) -> bool:
        """Whether the connection was closed after a failure."""


async def fetch_files(
    wire: FetchWire,
    files: FetchItems,
    *,
    on_done: Callable[[str, Download | FtxError], object],
    progress: ProgressCallback | None,
    options: GetOptions,
    window: int,
) -> set[str]:
    """Download the files that arrive on ``files`` until it is closed (see
    :meth:`ftx.Client.fetch`); return the directories they were saved into (to be flushed).
    A directory that vanishes after its first file was checked makes a clear error when the
    next part file is created there."""
    # Requests sent, oldest first, for the receiving task: (path, part, resumed offset).
    send_sent, receive_sent = trio.open_memory_channel[tuple[str, PartFile, int]](math.inf)
    # Resumes refused because the file changed: asked for again from zero.
    send_retry, receive_retry = trio.open_memory_channel[tuple[str, PartFile]](math.inf)
    # Requests go out in batches, one write each: the window is refilled once half of it is
    # answered, so that the server finds several requests at once and can read their files
    # ahead in one go (a request per answer would arrive, and be served, alone).
    batch: list[tuple[str, PartFile, int, str | None]] = []
    half_answered = trio.Event()
    outstanding = 0
    source_done = False
    # Where files go: each looked up once (check_destination), and flushed by the caller.
    directories: set[str] = set()
    listings = _Listings()

    def finish_if_idle() -> None:
        idle = outstanding == 0 and receive_retry.statistics().current_buffer_used == 0
        if source_done and idle:
            send_retry.close()  # ends the second phase of send_requests

    async def send_batch() -> None:
        nonlocal outstanding
        if not batch:
            return
        requests: list[Message] = []
        for path, part, offset, identity in batch:
            send_sent.send_nowait((path, part, offset))
            requests.append(get_request(wire, path, options.verify, offset, identity))
        outstanding += len(batch)
        await wire._send(*requests)
        batch.clear()

    async def request(path: str, part: PartFile, offset: int, identity: str | None) -> None:
        nonlocal half_answered
        if outstanding + len(batch) >= window:
            await send_batch()
            half_answered = trio.Event()
            if outstanding > window // 2:
                await half_answered.wait()
        batch.append((path, part, offset, identity))
        if _nothing_waiting(files) or len(batch) >= window:
            await send_batch()

    async def send_requests() -> None:
        nonlocal source_done
        async with send_sent:
            async for path, dest in files:
                new = listings.new_file(dest)
                if new is not None:
                    target = new
                    directories.add(os.path.dirname(new) or ".")
                else:
                    try:
                        target = local_destination(path, dest)
                        check_destination(
                            target, overwrite=options.overwrite, known_directories=directories
                        )
                    except LocalFileError as exc:
                        on_done(path, exc)
                        continue
                part = part_for(target)
                if new is not None:
                    offset, identity = 0, None  # no part file: nothing to resume
                else:
                    offset, identity = part.resumable(path) or (0, None)
                await request(path, part, offset, identity)
            await send_batch()
            source_done = True
            finish_if_idle()
            async for path, part in receive_retry:
                await request(path, part, 0, None)
                await send_batch()

    async def receive_answers() -> None:
        nonlocal outstanding
        async for path, part, offset in receive_sent:
            result: Download | FtxError
            try:
                result = await receive_answer(wire, path, part, progress, options, time.monotonic())
            except (RemoteError, IntegrityError, LocalFileError) as exc:
                if wire._closed:
                    raise
                result = exc
            outstanding -= 1
            if outstanding <= window // 2:
                half_answered.set()
            if isinstance(result, RemoteError) and result.code == ErrorCode.CHANGED and offset:
                send_retry.send_nowait((path, part))
            else:
                on_done(path, result)
            finish_if_idle()

    await run_together(send_requests, receive_answers)
    return directories


class _Listings:
    """The names in each destination directory, listed once, when its first file comes.

    A file whose name, and its part file's, are not in its directory's listing needs none of
    the lookups a download otherwise starts with (is the destination a directory to save into?
    does it exist? is a part file there to resume?): a tree of small files into a fresh
    directory saves three failing system calls per file. A name that appears after the listing
    is caught all the same, later: a part file is created exclusively, and publishing never
    replaces what it may not.
    """

    def __init__(self) -> None:
        self._names: dict[str, frozenset[str] | None] = {}

    def new_file(self, dest: str | os.PathLike[str]) -> Path | None:
        """``dest`` as a path if neither it nor its part file exists yet in an existing
        directory, else ``None`` (then look it up the usual way, which also says what is wrong,
        and finds the part file to resume)."""
        raw = os.fspath(dest)
        directory, name = os.path.split(raw)
        if name in ("", ".", ".."):  # "dir/" means a directory
            return None
        names = self._listing(directory or ".")
        if names is None or name in names or part_file_name(name) in names:
            return None
        return dest if isinstance(dest, Path) else Path(raw)

    def _listing(self, directory: str) -> frozenset[str] | None:
        if directory not in self._names:
            try:
                self._names[directory] = frozenset(os.listdir(directory))
            except OSError:
                self._names[directory] = None  # missing, or not a directory: said later
        return self._names[directory]


def _nothing_waiting(channel: trio.abc.ReceiveChannel[object]) -> bool:
    """Whether ``channel`` has nothing more to give at once. Known for channels with trio's
    memory-channel ``statistics()`` (and wrappers that pass it on); for others, assumed, so
    that a batch is sent at every item rather than held back."""
    statistics = getattr(channel, "statistics", None)
    if statistics is None:
        return True
    return bool(statistics().current_buffer_used == 0)
