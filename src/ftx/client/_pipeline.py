"""Pipelined downloads: the loop behind :meth:`ftx.Client.fetch` and :meth:`ftx.Client.get_many`.

One task sends GET requests in batches, another receives the answers in order; a resume the
server refuses because the file changed is asked for again from zero.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Final, Protocol

import trio

from ftx._threads import run_together
from ftx.client._destination import (
    check_destination,
    check_not_a_directory,
    local_destination,
)
from ftx.client._partfile import PartFile, part_file_name, part_for
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

__all__ = ["FetchWire", "Pipeline", "fetch_files"]

FetchItems = trio.abc.ReceiveChannel[tuple[str, str | os.PathLike[str]]]
Request = tuple[str, PartFile, int, str | None]
"""A GET to send: (remote path, part file, offset to resume from, identity of the file)."""


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
    pipeline = Pipeline(wire, on_done=on_done, progress=progress, options=options, window=window)
    await run_together(partial(pipeline.send_requests, files), pipeline.receive_answers)
    return pipeline.directories


class Pipeline:
    """The state of one pipelined fetch, in one object (as h11 keeps a connection's): the
    requests batched and outstanding, the resumes to ask for again, and where files went. Its
    two sides run as two tasks: :meth:`send_requests` and :meth:`receive_answers`.

    At most ``window`` requests are batched or outstanding (sent, not yet answered) at once.
    Requests go out in batches, one write each: once the window is full it is refilled only
    when half of it is answered, so that the server finds several requests at once and can read
    their files ahead in one go (a request per answer would arrive, and be served, alone).
    """

    def __init__(
        self,
        wire: FetchWire,
        *,
        on_done: Callable[[str, Download | FtxError], object],
        progress: ProgressCallback | None,
        options: GetOptions,
        window: int,
    ) -> None:
        self.window: Final = window
        self.batch: list[Request] = []  # to send in one write
        self.outstanding = 0  # sent, not yet answered
        self.source_done = False  # every file to fetch was requested once
        # Where files go: each looked up once (check_destination), and flushed by the caller.
        self.directories: set[str] = set()
        self._wire = wire
        self._on_done = on_done
        self._progress = progress
        self._options = options
        self._listings = _Listings()
        self._half_answered = trio.Event()
        # Requests sent, oldest first, for the receive side: (path, part, offset, identity).
        self._send_sent, self._receive_sent = trio.open_memory_channel[Request](math.inf)
        # Resumes refused because the file changed, or that did not verify: asked for again
        # from zero (once: a request from zero is never asked for again).
        self._send_retry, self._receive_retry = trio.open_memory_channel[tuple[str, PartFile]](
            math.inf
        )

    # The window's bookkeeping: no I/O.

    def window_full(self) -> bool:
        """Whether no more requests may be batched before some are answered."""
        return self.outstanding + len(self.batch) >= self.window

    def take_batch(self) -> list[Request]:
        """Empty the batch, to be sent: its requests are outstanding from now on."""
        batch, self.batch = self.batch, []
        self.outstanding += len(batch)
        return batch

    def answered(self) -> None:
        """Note that the oldest outstanding request was answered; once half of the window is,
        the send side may refill it."""
        self.outstanding -= 1
        if self.outstanding <= self.window // 2:
            self._half_answered.set()

    # The send side.

    async def send_requests(self, files: FetchItems) -> None:
        """Request the files that arrive on ``files``, then the resumes refused as changed,
        again from zero, until every request is answered."""
        async with self._send_sent:
            async for path, dest in files:
                request = self._plan(path, dest)
                if request is not None:
                    await self._request(request, files)
            await self._send_batch()
            self.source_done = True
            self._finish_if_idle()
            async for path, part in self._receive_retry:
                await self._request((path, part, 0, None), files)  # sent at once: files is drained

    def _plan(self, path: str, dest: str | os.PathLike[str]) -> Request | None:
        """The request for ``path``, saved to ``dest``; ``None`` (reported) if it cannot be."""
        new = self._listings.new_file(dest)
        if new is not None:
            self.directories.add(os.path.dirname(new) or ".")
            return path, part_for(new), 0, None  # no part file: nothing to resume
        try:
            if self._options.into_directories:
                target = local_destination(path, dest)
            else:
                target = dest if isinstance(dest, Path) else Path(dest)
                check_not_a_directory(target, path)
            check_destination(
                target, overwrite=self._options.overwrite, known_directories=self.directories
            )
        except LocalFileError as exc:
            self._on_done(path, exc)
            return None
        part = part_for(target)
        offset, identity = part.resumable(path) or (0, None)
        return path, part, offset, identity

    async def _request(self, request: Request, files: FetchItems) -> None:
        if self.window_full():
            await self._send_batch()
            self._half_answered = trio.Event()
            if self.outstanding > self.window // 2:
                await self._half_answered.wait()
        self.batch.append(request)
        if _nothing_waiting(files) or len(self.batch) >= self.window:
            await self._send_batch()

    async def _send_batch(self) -> None:
        if not self.batch:
            return
        messages: list[Message] = []
        verify = self._options.verify
        for path, part, offset, identity in self.take_batch():
            self._send_sent.send_nowait((path, part, offset, identity))
            messages.append(get_request(self._wire, path, verify, offset, identity))
        await self._wire._send(*messages)

    # The receive side.

    async def receive_answers(self) -> None:
        """Receive the answers, in the order the requests were sent, until the send side is
        done; report each file's result, or have a resume that was refused (or did not
        verify) asked for again from zero.

        Raises:
            ConnectionLostError, RemoteProtocolError, ...: the connection failed (and is
                closed); a file's own failure is its result instead.
        """
        async for path, part, offset, identity in self._receive_sent:
            result: Download | FtxError
            try:
                result = await receive_answer(
                    self._wire,
                    path,
                    part,
                    self._progress,
                    self._options,
                    time.monotonic(),
                    identity=identity,
                )
            except (RemoteError, IntegrityError, LocalFileError) as exc:
                if self._wire._closed:
                    raise
                result = exc
            self.answered()
            if offset and _worth_restarting(result):
                self._send_retry.send_nowait((path, part))
            else:
                self._on_done(path, result)
            self._finish_if_idle()

    def _finish_if_idle(self) -> None:
        idle = self.outstanding == 0 and self._receive_retry.statistics().current_buffer_used == 0
        if self.source_done and idle:
            self._send_retry.close()  # ends the second phase of send_requests


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


def _worth_restarting(result: Download | FtxError) -> bool:
    """Whether a resumed download that ended with ``result`` is asked for again from zero: the
    file changed, or the bytes kept did not verify with the rest (the part is gone then)."""
    changed = isinstance(result, RemoteError) and result.code == ErrorCode.CHANGED
    return changed or isinstance(result, IntegrityError)


def _nothing_waiting(channel: trio.abc.ReceiveChannel[object]) -> bool:
    """Whether ``channel`` has nothing more to give at once. Known for channels with trio's
    memory-channel ``statistics()`` (and wrappers that pass it on); for others, assumed, so
    that a batch is sent at every item rather than held back."""
    statistics = getattr(channel, "statistics", None)
    if statistics is None:
        return True
    return bool(statistics().current_buffer_used == 0)
