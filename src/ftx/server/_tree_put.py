"""Answering TREE_PUT (feature ``tree-put``, docs/protocol.md section 23): a whole tree uploaded
as one stream.

The client streams TREE_DIR and TREE_FILES frames (and TREE_ASKs, for what the server has in a
directory) without waiting; the server answers each ask at once, in order, with TREE_HAVE pages
and a TREE_HAVE_END, and writes each frame's files to part files in a worker thread while it
receives the next frame. Every :data:`~ftx.server._tree_store.COMMIT_FILES` files (or
:data:`~ftx.server._tree_store.COMMIT_BYTES`), and at the end, a group commit publishes and
flushes what was written, and the server answers TREE_STORED (the names) and TREE_SKIP (each
entry that failed, with its code). TREE_END closes the answer once the client's TREE_PUT_END
has come and the last commit is done.

Why this cannot deadlock: the server's only waits are for the client's next frame and for its
own worker thread; it never waits for the client to read before it reads again, except for the
frames it is writing, and the client reads everything the server sends at all times (a task of
its own that never waits on the client's sending side). The client's asks are bounded
(:data:`~ftx.protocol.MAX_TREE_ASKS`), and so is what the answers to them make it hold.

A tree that is refused as a whole (a read-only server, a path that does not resolve) is still
read to its TREE_PUT_END, its asks answered with nothing, and then answered with an ERROR.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Final

import trio

from ftx._threads import ThreadJob
from ftx.fs import FsError, ServedRoot
from ftx.protocol import (
    DIGEST_ALGORITHMS,
    TREE_PUT_FEATURE,
    UPLOAD_FEATURE,
    ErrorCode,
)
from ftx.protocol.messages import (
    Error,
    Message,
    TreeAsk,
    TreeDir,
    TreeEnd,
    TreeFiles,
    TreeHave,
    TreeHaveEnd,
    TreePut,
    TreePutEnd,
    TreeSkip,
    TreeStored,
)
from ftx.server._access_log import AccessRecord
from ftx.server._config import ServerConfig
from ftx.server._fs_wire import error_code
from ftx.server._tree_store import COMMIT_BYTES, COMMIT_FILES, Failure, Part, Stored, TreeStore
from ftx.server._uploads import UploadSession, UploadStalledError

__all__ = ["TreePutHandler"]

logger = logging.getLogger("ftx.server")

# A TREE_HAVE page holds at most this many records (and half the client's frame limit).
_HAVE_PAGE: Final = 1000
_MAX_PAGE_BYTES: Final = 512 << 10

_Result = tuple[list[Stored], list[Failure]]
# A job of the writing thread: its failures, and the parts to publish now (if it is time).
_Written = tuple[list[Failure], list[Part] | None]


class TreePutHandler:
    """Answers the TREE_PUT requests of one connection, in ``root``, as ``config`` allows
    (``writable``, ``allow_overwrite``, ``max_upload_size``, ``idle_timeout``)."""

    def __init__(self, session: UploadSession, config: ServerConfig, root: ServedRoot) -> None:
        self._session = session
        self._config = config
        self._root = root

    async def answer(
        self, request: TreePut, record: AccessRecord, peer_max_frame_size: int
    ) -> None:
        """Read the tree's stream to its TREE_PUT_END, storing it, and answer it completely.

        Raises:
            UploadStalledError: the client sent nothing for the idle timeout (told so).
            trio.BrokenResourceError: the client went away (what was committed stays).
            RemoteProtocolError: the client broke the protocol.
        """
        store: TreeStore | None = None
        refusal = self._refusal(request)
        if refusal is None:
            overwrite = request.overwrite and self._config.allow_overwrite
            opening = partial(
                TreeStore,
                self._root,
                request.path,
                overwrite=overwrite,
                algorithm=request.digest,
                max_size=self._config.max_upload_size,
            )
            try:
                store = await trio.to_thread.run_sync(opening)
            except FsError as exc:
                refusal = (error_code(exc), exc.message)
        stream = _Stream(self, request, record, store, peer_max_frame_size)
        try:
            await stream.run()
        except BaseException:
            await stream.abandon()
            raise
        finally:
            if store is not None:
                store.close()
        if refusal is not None:
            record.result, record.message = refusal
            await self._session.send(Error(request.request_id, *refusal))
            return
        record.entries = stream.stored
        await self._session.send(TreeEnd(request.request_id, stream.stored, stream.skipped))

    def _refusal(self, request: TreePut) -> tuple[ErrorCode, str] | None:
        features = self._session.features
        if not self._config.writable:
            return ErrorCode.READ_ONLY, "this server is read-only"
        if TREE_PUT_FEATURE not in features or UPLOAD_FEATURE not in features:
            return ErrorCode.READ_ONLY, f"tree uploads need the {TREE_PUT_FEATURE!r} feature"
        if request.digest not in DIGEST_ALGORITHMS:
            return ErrorCode.BAD_REQUEST, f"unknown digest {request.digest}"
        return None

    async def next_message(self) -> Message:
        """The client's next frame of the stream, within the idle timeout."""
        timeout = self._config.idle_timeout
        with trio.move_on_after(timeout):
            try:
                return await self._session.receive()
            except trio.EndOfChannel:
                raise trio.BrokenResourceError(
                    "the client closed the connection in the middle of a tree upload"
                ) from None
        message = f"no tree upload data for {timeout:g} seconds"
        await self._session.farewell(ErrorCode.TIMEOUT, message)
        raise UploadStalledError(message)


class _Stream:
    """One TREE_PUT being received."""

    def __init__(
        self,
        handler: TreePutHandler,
        request: TreePut,
        record: AccessRecord,
        store: TreeStore | None,
        peer_max_frame_size: int,
    ) -> None:
        self._handler = handler
        self._session = handler._session
        self._request = request
        self._record = record
        self._store = store
        self._budget = min(peer_max_frame_size // 2, _MAX_PAGE_BYTES)
        self._job: ThreadJob[_Written] | None = None  # writing: one frame at a time
        self._publishing: ThreadJob[_Result] | None = None  # a commit, beside the writing
        self.stored = 0
        self.skipped = 0

    async def run(self) -> None:
        store = self._store
        record = self._record
        record.entries = 0
        while True:
            self._session.check_stop()
            message = await self._handler.next_message()
            if isinstance(message, TreeFiles):
                record.bytes += memoryview(message.content).nbytes
                if store is not None:
                    await self._start(partial(_write, store, message))
            elif isinstance(message, TreeAsk):
                await self._answer_ask(message.path)
            elif isinstance(message, TreeDir):
                if store is not None:
                    await self._start(partial(_enter, store, message.path))
            else:
                assert isinstance(message, TreePutEnd)  # the protocol lets nothing else through
                break
        if store is not None:
            await self.settle()
            await self._settle_publishing()
            await self._answer(*await trio.to_thread.run_sync(store.commit))

    async def _start(self, work: partial[_Written]) -> None:
        """Wait for the job in progress, answer for it, and start ``work`` in a thread."""
        await self.settle()
        self._job = ThreadJob(work)

    async def settle(self) -> None:
        """Wait for the writing job in progress (if any) and send what failed; if it took
        parts to publish, publish them in a thread of their own (after the last commit)."""
        job, self._job = self._job, None
        if job is None:
            return
        failures, batch = await job.result()
        await self._answer([], failures)
        if batch is not None:
            store = self._store
            assert store is not None
            await self._settle_publishing()
            self._publishing = ThreadJob(partial(store.publish, batch))

    async def _settle_publishing(self) -> None:
        job, self._publishing = self._publishing, None
        if job is not None:
            await self._answer(*await job.result())

    async def _answer(self, stored: list[Stored], failures: list[Failure]) -> None:
        """Send what was stored and what failed."""
        request_id = self._request.request_id
        messages: list[Message] = []
        for entry in stored:
            self.stored += len(entry.names)
            messages += _stored_frames(request_id, entry, self._budget)
        for failure in failures:
            self.skipped += 1
            messages.append(TreeSkip(request_id, failure.path, failure.code, failure.message))
        if messages:
            await self._session.send(*messages)

    async def abandon(self) -> None:
        """Wait for the jobs in progress, if any, without answering (the stream failed)."""
        for job in (self._job, self._publishing):
            if job is not None:
                await job.wait_quietly()
        self._job = self._publishing = None

    async def _answer_ask(self, path: str) -> None:
        request_id = self._request.request_id
        store = self._store
        if store is not None:
            pages = store.have_pages(path, self._request.checksum, _HAVE_PAGE, self._budget)
            try:
                while page := await trio.to_thread.run_sync(next, pages, None):
                    await self._session.send(TreeHave(request_id, path, tuple(page)))
            finally:
                pages.close()
        await self._session.send(TreeHaveEnd(request_id))


def _stored_frames(request_id: int, entry: Stored, budget: int) -> list[TreeStored]:
    """TREE_STORED messages naming ``entry``'s files, each within ``budget`` bytes."""
    frames: list[TreeStored] = []
    names: list[str] = []
    size = 0
    for name in entry.names:
        weight = 6 * len(name.encode("utf-8")) + 4
        if names and size + weight > budget - 8192:
            frames.append(TreeStored(request_id, entry.path, tuple(names)))
            names, size = [], 0
        names.append(name)
        size += weight
    if names:
        frames.append(TreeStored(request_id, entry.path, tuple(names)))
    return frames


def _enter(store: TreeStore, path: str) -> _Written:
    failure = store.enter(path)
    return [] if failure is None else [failure], None


def _write(store: TreeStore, message: TreeFiles) -> _Written:
    failures = store.write(message.records, message.content)
    if store.pending_files >= COMMIT_FILES or store.pending_bytes >= COMMIT_BYTES:
        return failures, store.take()
    return failures, None
