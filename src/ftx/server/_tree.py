"""Answering TREE (feature ``tree``, docs/protocol.md section 21): a whole directory tree as one
stream. Small files go many to a frame (TREE_FILES), read in batches by a worker thread; large
ones as FILE, DATA and END through :class:`~ftx.server._downloads.DownloadHandler`, exactly as a
GET's answer (sendfile, digests remembered). With ``have`` the client's list of what it has is
read as the walk reaches each directory (both go in the same order), so it is never held whole.
"""

from __future__ import annotations

import logging
import posixpath
from typing import Final, Protocol

import trio

from ftx._tree_walk import (
    DirItem,
    Have,
    LargeItem,
    SameItem,
    SkipItem,
    SmallItem,
    TreeWalker,
    sort_key,
)
from ftx.fs import FsEntry, FsError, OpenedFile, ServedRoot
from ftx.protocol import DIGEST_ALGORITHMS, ErrorCode, new_hasher
from ftx.protocol.messages import (
    Error,
    Get,
    Message,
    TreeDir,
    TreeEnd,
    TreeFile,
    TreeFiles,
    TreeGet,
    TreeHave,
    TreeHaveEnd,
    TreeRecord,
    TreeSame,
    TreeSkip,
)
from ftx.server._access_log import AccessRecord
from ftx.server._downloads import DownloadHandler, DownloadSession
from ftx.server._fs_wire import error_code
from ftx.server._limits import WriteStalledError

__all__ = ["TreeHandler", "TreeSession"]

logger = logging.getLogger("ftx.server")

# Files smaller than this travel whole in TREE_FILES (capped by the client's frame limit).
SMALL_FILE_SIZE: Final = 256 * 1024
# A TREE_FILES frame holds at most this many files and about this many bytes.
_MAX_RECORDS: Final = 512
_MAX_BATCH_BYTES: Final = 1 << 20
# How many files of one directory the client's have-list may name; more are ignored (sent).
_MAX_HAVE: Final = 1_000_000
# Per record, the most its JSON can take beside its name (numbers, a digest, punctuation).
_RECORD_OVERHEAD: Final = 400
_HEADER_RESERVE: Final = 64


class TreeSession(DownloadSession, Protocol):
    """What a :class:`TreeHandler` needs of its connection: a download session that also
    receives (the client's have-list)."""

    async def receive(self) -> Message:
        """The next message from the client."""


class TreeHandler:
    """Answers the TREE requests of one connection.

    Args:
        session: the connection.
        root: the served root.
        downloads: the connection's download handler, which sends the large files.
        peer_max_frame_size: the client's frame limit.
        idle_timeout: how long to wait for each page of the client's have-list.
        enabled: whether the server offers the feature (else TREE is refused).
    """

    def __init__(
        self,
        session: TreeSession,
        root: ServedRoot,
        downloads: DownloadHandler,
        *,
        idle_timeout: float,
        enabled: bool = True,
    ) -> None:
        self._session = session
        self._root = root
        self._downloads = downloads
        self._idle_timeout = idle_timeout
        self._enabled = enabled

    async def answer(
        self, request: TreeGet, record: AccessRecord, chunk_size: int, peer_max_frame_size: int
    ) -> None:
        """Answer ``request`` completely (or with a per-request ERROR); the client's have-list
        is read to its end in any case. Raises what the session's ``send`` raises, and
        :exc:`~ftx.errors.RemoteProtocolError` for a have-list that breaks the protocol."""
        have = _HaveReader(self._session, self._idle_timeout) if request.have else None
        await self._answer(request, record, chunk_size, peer_max_frame_size, have)
        if have is not None:
            await have.drain()

    async def _refuse(
        self, request: TreeGet, record: AccessRecord, code: ErrorCode, message: str
    ) -> None:
        record.result, record.message = code, message
        await self._session.send(Error(request.request_id, code, message))

    async def _answer(
        self,
        request: TreeGet,
        record: AccessRecord,
        chunk_size: int,
        peer_max_frame_size: int,
        have: _HaveReader | None,
    ) -> None:
        if not self._enabled:
            message = "this server does not send trees (feature 'tree')"
            await self._refuse(request, record, ErrorCode.BAD_REQUEST, message)
            return
        algorithm = request.digest
        if algorithm is not None and algorithm not in DIGEST_ALGORITHMS:
            message = f"unknown digest {algorithm}"
            await self._refuse(request, record, ErrorCode.BAD_REQUEST, message)
            return
        try:
            listing = await trio.to_thread.run_sync(self._root.list_directory, request.path)
        except FsError as exc:
            await self._refuse(request, record, error_code(exc), exc.message)
            return
        if isinstance(listing, FsEntry):
            message = f"{request.path!r} is not a directory"
            await self._refuse(request, record, ErrorCode.NOT_A_DIRECTORY, message)
            return
        frame_budget = min(peer_max_frame_size, _MAX_BATCH_BYTES + (64 << 10))
        walker = TreeWalker(
            listing,
            small_size=min(SMALL_FILE_SIZE, frame_budget // 4),
            digest=None if algorithm is None else _digest_of(algorithm),
            file_digest=None if algorithm is None else _file_digest_of(algorithm),
            checksum=request.checksum and algorithm is not None,
        )
        try:
            stream = _Stream(self, request, record, chunk_size, frame_budget)
            await stream.run(walker, have)
        finally:
            walker.close()


class _Stream:
    """One TREE answer in progress."""

    def __init__(
        self,
        handler: TreeHandler,
        request: TreeGet,
        record: AccessRecord,
        chunk_size: int,
        frame_budget: int,
    ) -> None:
        self._handler = handler
        self._session = handler._session
        self._request = request
        self._record = record
        self._chunk_size = chunk_size
        self._frame_budget = frame_budget
        self._records: list[TreeRecord] = []
        self._content: list[bytes] = []
        self._bytes = 0
        self._same: list[str] = []
        self._directory = ""
        self.files = 0
        self.skipped = 0

    async def run(self, walker: TreeWalker, have: _HaveReader | None) -> None:
        request_id = self._request.request_id
        record = self._record
        record.entries = 0
        while True:
            if have is not None:
                await self._take_unchanged(walker)
            batch = await trio.to_thread.run_sync(
                walker.next_batch, _MAX_RECORDS, _MAX_BATCH_BYTES, have is not None
            )
            if not batch:
                break
            self._session.check_stop()
            for item in batch:
                if isinstance(item, SmallItem):
                    await self._add_small(item)
                    continue
                if isinstance(item, SameItem):
                    self._same.append(item.name)
                    if len(self._same) >= _MAX_RECORDS:
                        await self._flush()
                    continue
                await self._flush()
                if isinstance(item, DirItem):
                    self._directory = item.path
                    await self._session.send_soon(TreeDir(request_id, item.path))
                    if have is not None:
                        await self._session.send()  # what is queued goes before any wait
                        walker.have = await have.for_directory(item.path)
                elif isinstance(item, SkipItem):
                    self.skipped += 1
                    await self._session.send_soon(
                        TreeSkip(request_id, item.path, item.reason, item.message)
                    )
                elif isinstance(item, LargeItem):
                    await self._send_large(item.name, item.opened)
            await self._flush()
        await self._flush()  # what take_unchanged left out of the last directory
        record.entries = self.files
        end = TreeEnd(request_id, self.files, self.skipped, walker.unchanged)
        await self._session.send(end)

    async def _take_unchanged(self, walker: TreeWalker) -> None:
        """Leave out the files the client has, decided from the listing in this thread (a
        re-run of an unchanged tree then takes one worker-thread call per directory, not two)."""
        while taken := walker.take_unchanged(_MAX_RECORDS - len(self._same)):
            self._same.extend(item.name for item in taken)
            if len(self._same) >= _MAX_RECORDS:
                await self._flush()

    async def _add_small(self, item: SmallItem) -> None:
        size = len(item.content)
        weight = size + 6 * len(item.name.encode("utf-8")) + _RECORD_OVERHEAD
        if self._records and (
            self._bytes + weight > self._frame_budget - _HEADER_RESERVE
            or len(self._records) >= _MAX_RECORDS
        ):
            await self._flush()
        self._records.append(TreeRecord(item.name, size, item.mtime_ns, item.mode, item.digest))
        self._content.append(item.content)
        self._bytes += weight
        self._record.bytes += size

    async def _flush(self) -> None:
        if self._same:
            names, self._same = tuple(self._same), []
            await self._session.send_soon(TreeSame(self._request.request_id, names))
        if not self._records:
            return
        records, self._records = tuple(self._records), []
        content, self._content = b"".join(self._content), []
        self._bytes = 0
        self.files += len(records)
        await self._session.send_soon(TreeFiles(self._request.request_id, records, content))

    async def _send_large(self, name: str, opened: OpenedFile) -> None:
        request_id = self._request.request_id
        path = posixpath.join(self._request.path, self._directory, name)
        with opened:
            await self._session.send_soon(TreeFile(request_id, name))
            get = Get(request_id, path, digest=self._request.digest)
            whole = await self._handler._downloads.send_whole_file(
                get, self._record, opened, self._chunk_size
            )
        if whole:
            self.files += 1
            return
        self.skipped += 1
        relative = f"{self._directory}/{name}" if self._directory else name
        message = "changed while it was being sent"
        await self._session.send_soon(TreeSkip(request_id, relative, ErrorCode.CHANGED, message))


def _digest_of(algorithm: str) -> _Digest:
    def digest(content: bytes) -> str:
        hasher = new_hasher(algorithm)
        hasher.update(content)
        return hasher.hexdigest()

    return digest


def _file_digest_of(algorithm: str) -> _FileDigest:
    def digest(opened: OpenedFile) -> str:
        hasher = new_hasher(algorithm)
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        position = 0
        while count := opened.read_into(view, position):
            hasher.update(view[:count])
            position += count
        return hasher.hexdigest()

    return digest


class _Digest(Protocol):
    def __call__(self, content: bytes, /) -> str: ...


class _FileDigest(Protocol):
    def __call__(self, opened: OpenedFile, /) -> str: ...


def _path_key(path: str) -> tuple[bytes, ...]:
    return tuple(sort_key(part) for part in path.split("/")) if path else ()


class _HaveReader:
    """The client's have-list, read page by page as the walk reaches each directory."""

    def __init__(self, session: TreeSession, idle_timeout: float) -> None:
        self._session = session
        self._idle_timeout = idle_timeout
        self._page: TreeHave | None = None
        self._ended = False

    async def _next_page(self) -> TreeHave | None:
        if self._page is None and not self._ended:
            with trio.move_on_after(self._idle_timeout) as waited:
                try:
                    message = await self._session.receive()
                except trio.EndOfChannel:  # the client went away in the middle of its list
                    raise trio.BrokenResourceError("the client closed the connection") from None
            if waited.cancelled_caught:
                seconds = f"{self._idle_timeout:g}"
                raise WriteStalledError(f"the client sent no more of its have-list for {seconds} s")
            if isinstance(message, TreeHaveEnd):
                self._ended = True
            else:
                assert isinstance(message, TreeHave)  # the protocol allows nothing else now
                self._page = message
        return self._page

    async def for_directory(self, path: str) -> Have:
        """What the client has in the directory ``path`` (pages for directories before it, in
        the canonical order, are dropped: the walk has passed them)."""
        key = _path_key(path)
        have: Have = {}
        while (page := await self._next_page()) is not None:
            page_key = _path_key(page.path)
            if page_key > key:
                break
            self._page = None
            if page_key == key:
                for file in page.files[: max(0, _MAX_HAVE - len(have))]:
                    have[file.name] = (file.size, file.mtime_ns, file.digest)
        return have

    async def drain(self) -> None:
        """Read what is left of the have-list (the answer ended before the walk needed it)."""
        self._page = None
        while await self._next_page() is not None:
            self._page = None
