"""Answering GET and LIST: a file streamed as DATA frames (with sendfile on plain TCP; hashed
by a worker thread meanwhile, digests remembered per file identity), small pipelined files
answered from a read-ahead, a directory listed page by page.

Used by :class:`ftx.server._session.Session`, one :class:`DownloadHandler` per connection; the
handler sends through its session, which it knows only as a :class:`DownloadSession`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Final, Protocol, TypeVar

import trio

from ftx.errors import FtxError
from ftx.framing import BlockingSender
from ftx.fs import FsEntry, FsError, OpenedFile, file_identity, portable_identity
from ftx.protocol import (
    DIGEST_ALGORITHMS,
    LARGE_DATA_FEATURE,
    MAX_LIST_ENTRIES,
    ErrorCode,
    Hasher,
    ServerProtocol,
    new_hasher,
    overflows,
    range_end,
)
from ftx.protocol.messages import (
    Data,
    Error,
    FileEnd,
    FileHeader,
    Get,
    ListDir,
    ListEnd,
    ListEntries,
    Message,
)
from ftx.server._access_log import AccessRecord
from ftx.server._bulk import (
    SPAN_CHUNK,
    SPAN_HASH_BUFFER,
    SpanEnd,
    SpanResult,
    bulk_eligible,
    hash_rest,
    send_span_work,
)
from ftx.server._file_hasher import FileHasher
from ftx.server._fs_wire import error_code, wire_entry
from ftx.server._readahead import SmallFile, read_small_files
from ftx.server._resources import ServerResources

__all__ = ["DownloadHandler", "DownloadSession"]

T = TypeVar("T")

# A listing entry encodes to at most ~1.6 KiB of JSON (a 255-byte name, all escaped): pages of
# peer_max_frame_size // 2048 entries always fit in a frame.
_MAX_LIST_PAGE: Final = 256
_ENTRY_BUDGET: Final = 2048
# A transfer cut short has its digest finished from the disk when what remains is at most this,
# or at most what was already sent (the client paid for that much).
_FINISH_HASH_FREE: Final = 64 << 20
# A span's write deadline: the client must take this many bytes in every idle period
# (docs/protocol.md, section 3).
_WRITE_PROGRESS: Final = 65536


class DownloadSession(Protocol):
    """What a :class:`DownloadHandler` needs of the connection it answers on (implemented by
    :class:`~ftx.server._session.Session`)."""

    async def send(self, *messages: Message) -> None:
        """Send the messages after anything queued (several in one write, if small).

        Raises:
            WriteStalledError: the client accepted no frame within the idle period.
            trio.BrokenResourceError, trio.ClosedResourceError: the connection is gone.
        """

    async def send_soon(self, *messages: Message) -> None:
        """Queue the messages to go out with the next ones (at the latest once the batch of
        requests being answered is done): for small answers. Raises what :meth:`send` does."""

    async def send_from_file(self, opened: OpenedFile, offset: int, count: int) -> int:
        """Send one DATA message of ``count`` bytes of ``opened`` from ``offset`` (with
        sendfile where the transport allows it); return how many the file gave (fewer only if
        it was truncated meanwhile). Raises what :meth:`send` does."""

    def check_stop(self) -> None:
        """Called at each frame boundary; raises to stop the answer there."""

    @property
    def spans_supported(self) -> bool:
        """Whether the connection can be handed to a worker thread now (plain TCP, or TLS
        over TCP: see :attr:`ftx.framing.FramedChannel.spans_supported`)."""

    async def send_span(self, work: Callable[[BlockingSender], T], unit: int) -> T:
        """Run ``work(sender)`` in a worker thread that owns the sending side; the client
        must take ``unit`` bytes in every idle period. Raises what :meth:`send` raises, and
        what ``work`` raises."""


class DownloadHandler:
    """Answers the GET and LIST requests of one connection.

    Args:
        session: the connection, to send on.
        resources: what the server's connections share (the root, buffer pools, digests).
        protocol: the connection's state machine (for the client's frame limit).
        sendfile: send a file's chunks with ``session.send_from_file``, without reading them
            into Python. False where its bytes must pass through Python anyway (TLS): chunks
            are then read here, into pooled buffers, and sent.
        portable: name files by their portable identity (path, size, mtime) rather than the
            local one (see :attr:`~ftx.server.ServerConfig.identity`).
    """

    def __init__(
        self,
        session: DownloadSession,
        resources: ServerResources,
        protocol: ServerProtocol,
        *,
        sendfile: bool,
        portable: bool = False,
    ) -> None:
        self._session = session
        self._identity: Callable[[str, os.stat_result], str] = (
            portable_identity if portable else lambda _path, st: file_identity(st)
        )
        self._resources = resources
        self._root = resources.root
        self._protocol = protocol
        self._sendfile = sendfile
        self._prepared: dict[int, SmallFile | OpenedFile | FsError] = {}

    async def answer(self, request: Get | ListDir, record: AccessRecord, chunk_size: int) -> None:
        """Answer ``request`` completely (or with a per-request ERROR), noting in ``record``
        what was sent. Raises what the session's ``send`` and ``check_stop`` raise."""
        if isinstance(request, Get):
            await self._send_file(request, record, chunk_size)
        else:
            await self._send_listing(request, record)

    async def _refuse(
        self, request: Get | ListDir, record: AccessRecord, code: ErrorCode, message: str
    ) -> None:
        record.result = code
        record.message = message
        await self._session.send_soon(Error(request.request_id, code, message))

    async def prepare(self, requests: Sequence[Get]) -> None:
        """Read ahead the small files that ``requests`` (pipelined, to be answered next) ask
        for, in one worker-thread hop. Call :meth:`release_prepared` once they are answered."""
        if not requests:
            return
        buffer = await self._resources.batch_buffers.acquire()
        try:
            prepared = await trio.to_thread.run_sync(read_small_files, self._root, requests, buffer)
            # Copied out, and the buffer given back, before anything is sent: a client that
            # stops reading must not hold a buffer of the pool that every batch needs.
            self._prepared = {
                request_id: SmallFile(item.stat, bytes(item.content))
                if isinstance(item, SmallFile)
                else item
                for request_id, item in prepared.items()
            }
        finally:
            self._resources.batch_buffers.release(buffer)

    def release_prepared(self) -> None:
        """Forget what :meth:`prepare` read (closing what it left open)."""
        for unused in self._prepared.values():
            if isinstance(unused, OpenedFile):
                unused.close()
        self._prepared = {}

    async def _send_file(self, request: Get, record: AccessRecord, chunk_size: int) -> None:
        if request.digest is not None and request.digest not in DIGEST_ALGORITHMS:
            await self._refuse(
                request, record, ErrorCode.BAD_REQUEST, f"unknown digest {request.digest}"
            )
            return
        if request.length is not None:  # a ranged GET (docs/protocol.md, section 22)
            range_refusal = _check_range(request)
            if range_refusal is not None:
                await self._refuse(request, record, ErrorCode.BAD_REQUEST, range_refusal)
                return
        prepared = self._prepared.pop(request.request_id, None)
        # Read ahead maybe a while ago (answers before it in its batch took time): served from
        # the copy only if the file is still the same, else opened again.
        if isinstance(prepared, SmallFile) and self._root.is_unchanged(request.path, prepared.stat):
            refusal = self._check_request(request, prepared.stat)
            if refusal is not None:
                await self._refuse(request, record, *refusal)
            else:
                await self._send_small_file(request, record, prepared, chunk_size)
            return
        try:
            if isinstance(prepared, FsError):
                raise prepared
            if isinstance(prepared, OpenedFile):
                opened = prepared
            else:  # not read ahead, or changed since
                opened = await trio.to_thread.run_sync(self._root.open_file, request.path)
        except FsError as exc:
            await self._refuse(request, record, error_code(exc), exc.message)
            return
        with opened:
            refusal = self._check_request(request, opened.stat)
            if refusal is not None:
                await self._refuse(request, record, *refusal)
            else:
                await self._stream_file(request, record, opened, chunk_size)

    def _check_request(self, request: Get, st: os.stat_result) -> tuple[ErrorCode, str] | None:
        """Why a GET of the file with metadata ``st`` cannot be answered, if it cannot."""
        if request.identity is not None and request.identity != self._identity(request.path, st):
            return ErrorCode.CHANGED, f"{request.path!r} changed since the transfer began"
        if request.offset > st.st_size:
            return (
                ErrorCode.BAD_REQUEST,
                f"offset {request.offset} is beyond the end of {request.path!r}",
            )
        return None

    def _file_header(self, request: Get, record: AccessRecord, st: os.stat_result) -> FileHeader:
        record.offset = request.offset
        record.size = st.st_size
        return FileHeader(
            request.request_id,
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            identity=self._identity(request.path, st),
            offset=request.offset,
            mode=st.st_mode & 0o7777,
            digest=request.digest,
        )

    async def _send_small_file(
        self, request: Get, record: AccessRecord, small: SmallFile, chunk_size: int
    ) -> None:
        """Answer with a file read ahead: header, data and end queued to go out with the rest
        of the batch, hashed here (a small hash costs less than a thread hop)."""
        digest = None
        if request.digest is not None:
            hasher = new_hasher(request.digest)
            hasher.update(small.content)
            digest = hasher.hexdigest()
        header = self._file_header(request, record, small.stat)
        body = small.content[
            request.offset : range_end(request.offset, request.length, len(small.content))
        ]
        # As many DATA frames as the client's frame limit needs (one, unless it is tiny).
        chunks = [
            Data(body[start : start + chunk_size]) for start in range(0, len(body), chunk_size)
        ]
        self._session.check_stop()
        await self._session.send_soon(header, *chunks, FileEnd(request.request_id, digest))
        record.bytes += len(body)

    async def send_whole_file(
        self, request: Get, record: AccessRecord, opened: OpenedFile, chunk_size: int
    ) -> bool:
        """Send FILE, DATA and END for all of ``opened`` (a large file of a tree stream,
        answering the request ``request`` stands for), as a GET's answer is sent. Return False
        if the file changed while it was being sent: its END was not sent then, and the caller
        ends it (docs/protocol.md section 21). Raises what the session's ``send`` raises."""
        await self._session.send(self._file_header(request, record, opened.stat))
        try:
            digest = await self._stream_chunks(request, record, opened, chunk_size)
        except _FileChangedError:
            return False
        await self._session.send(FileEnd(request.request_id, digest))
        return True

    async def _stream_file(
        self, request: Get, record: AccessRecord, opened: OpenedFile, chunk_size: int
    ) -> None:
        await self._session.send(self._file_header(request, record, opened.stat))
        try:
            digest = await self._stream_chunks(request, record, opened, chunk_size)
        except _FileChangedError:
            message = f"{request.path!r} changed during the transfer"
            await self._refuse(request, record, ErrorCode.CHANGED, message)
            return
        await self._session.send(FileEnd(request.request_id, digest))

    async def _stream_chunks(
        self, request: Get, record: AccessRecord, opened: OpenedFile, chunk_size: int
    ) -> str | None:
        """Send the file from the requested offset as DATA frames; return the digest of the
        whole file, or ``None`` if none was asked for.

        On plain TCP the chunks go with sendfile; under TLS they are read and sent. When a
        digest is needed and not known, a worker thread hashes the whole file meanwhile, from
        the page cache (a second read costs less than handing every chunk to a thread); it is
        remembered per file identity, so a file downloaded again (or resumed) is not re-read.

        Raises:
            _FileChangedError: the file was truncated or modified while it was being sent.
        """
        cache_key = f"{request.digest}:{opened.identity}"
        known = await self._resources.digests.recall(cache_key) if request.digest else None
        hasher = new_hasher(request.digest) if request.digest and known is None else None
        # The span takes an explicit (offset, count): the whole tail, or a ranged GET's range.
        offset = request.offset
        count = range_end(offset, request.length, opened.size) - offset
        if bulk_eligible(self._session.spans_supported, count):
            return await self._stream_span(
                opened, offset, count, record, chunk_size, hasher, known, cache_key
            )
        send_chunk = self._session.send_from_file if self._sendfile else self._send_read_chunk
        check_stop = self._session.check_stop
        buffer = await self._resources.buffers.acquire() if hasher is not None else None
        released = False

        def release_buffer() -> None:
            # As soon as the hashing is done: it runs far ahead of a slow client, whose whole
            # transfer must not hold a buffer of the pool.
            nonlocal released
            if buffer is not None and not released:
                released = True
                self._resources.buffers.release(buffer)

        try:
            background = (
                FileHasher(opened, hasher, buffer, on_finished=release_buffer)
                if hasher and buffer
                else None
            )
            # A ranged GET stops at the end of its range (never past the end of the file).
            position, size = request.offset, range_end(request.offset, request.length, opened.size)
            try:
                while position < size:
                    count = min(chunk_size, size - position)
                    check_stop()
                    if await send_chunk(opened, position, count) < count:
                        raise _FileChangedError  # truncated under us
                    position += count
                    record.bytes += count
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                if background is not None:
                    # Finish the digest for the resume that usually follows, if cheap enough.
                    background.stop_unless(max(position, _FINISH_HASH_FREE))
                    digest = await background.digest()
                    if digest is not None and not opened.changed():
                        await self._resources.digests.remember(cache_key, digest)
                raise
            except BaseException:
                if background is not None:
                    background.stop_unless(0)
                    await background.wait_quietly()
                raise
            if opened.changed():
                raise _FileChangedError
            if background is None:
                return known
            digest = await background.digest()
            if digest is None or opened.changed():
                raise _FileChangedError
            await self._resources.digests.remember(cache_key, digest)
            return digest
        finally:
            release_buffer()

    async def _stream_span(
        self,
        opened: OpenedFile,
        offset: int,
        count: int,
        record: AccessRecord,
        chunk_size: int,
        hasher: Hasher | None,
        known: str | None,
        cache_key: str,
    ) -> str | None:
        """Send bytes ``[offset, offset + count)`` of the file as DATA frames in one worker
        thread span (see :mod:`ftx.server._bulk`), hashing the whole file there if ``hasher``
        is given; return the digest (``known`` if no hasher).

        Raises:
            _FileChangedError: the file was truncated or modified while it was being sent.
        """
        # A buffer of the span's own, not one of the pool's: a slow client would hold that for
        # its whole transfer. Bounded by the connection limit, and small.
        buffer = bytearray(SPAN_HASH_BUFFER) if hasher is not None else None
        result = SpanResult(hashed_to=0)
        if LARGE_DATA_FEATURE in self._protocol.features:
            # Larger DATA frames, as the client announced it accepts (docs/protocol.md, 20).
            chunk_size = max(
                chunk_size, min(SPAN_CHUNK, self._protocol.peer_max_data_frame_size - 1)
            )
        work = send_span_work(
            opened,
            offset,
            count,
            chunk_size,
            self._protocol,
            hasher,
            buffer,
            self._session.check_stop,
            result,
        )
        try:
            await self._session.send_span(work, _WRITE_PROGRESS)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            if hasher is not None and buffer is not None:
                # Finish the digest for the resume that usually follows, if cheap enough.
                budget = max(result.hashed_to, _FINISH_HASH_FREE)
                whole = await trio.to_thread.run_sync(
                    hash_rest, opened, hasher, buffer, result, budget
                )
                if whole and not opened.changed():
                    await self._resources.digests.remember(cache_key, hasher.hexdigest())
            raise
        finally:
            record.bytes += result.sent
        if result.end is SpanEnd.TRUNCATED or opened.changed():
            raise _FileChangedError
        if hasher is None:
            return known
        digest = hasher.hexdigest()
        await self._resources.digests.remember(cache_key, digest)
        return digest

    async def _send_read_chunk(self, opened: OpenedFile, position: int, count: int) -> int:
        """Read ``count`` bytes of the file from ``position`` and send them as one DATA message
        (where sendfile cannot be used); return how many the file gave (fewer at its end)."""
        buffer = await self._resources.buffers.acquire()
        try:
            with memoryview(buffer) as whole:
                view = whole[:count]
                filled = 0
                while filled < count:
                    # Page-cache reads are memory copies: done here, no thread hop per chunk.
                    got = opened.read_cached_into(view[filled:], position + filled)
                    if got is None:
                        got = await trio.to_thread.run_sync(
                            opened.read_into, view[filled:], position + filled
                        )
                    if got == 0:
                        return filled  # truncated under us
                    filled += got
                await self._session.send(Data(view))
                return filled
        finally:
            self._resources.buffers.release(buffer)

    async def _send_listing(self, request: ListDir, record: AccessRecord) -> None:
        try:
            listing = await trio.to_thread.run_sync(self._root.list_directory, request.path)
        except FsError as exc:
            await self._refuse(request, record, error_code(exc), exc.message)
            return
        if isinstance(listing, FsEntry):
            await self._session.send(ListEntries(request.request_id, (wire_entry(listing),)))
            await self._session.send(ListEnd(request.request_id, 1))
            record.entries = 1
            return
        page_size = min(_MAX_LIST_PAGE, self._protocol.peer_max_frame_size // _ENTRY_BUDGET)
        record.entries = 0
        with listing:
            while page := await trio.to_thread.run_sync(
                listing.next_page, min(page_size, MAX_LIST_ENTRIES - record.entries) or 1
            ):
                if record.entries == MAX_LIST_ENTRIES:  # one entry too many: refused
                    message = f"{request.path!r} holds more than {MAX_LIST_ENTRIES} entries"
                    await self._refuse(request, record, ErrorCode.TOO_LARGE, message)
                    return
                self._session.check_stop()
                entries = tuple(map(wire_entry, page))
                await self._session.send(ListEntries(request.request_id, entries))
                record.entries += len(page)
        await self._session.send(ListEnd(request.request_id, record.entries))


def _check_range(request: Get) -> str | None:
    """Why a GET with a ``length`` cannot be answered, if it cannot: it asks for a digest (a
    range is checked against block digests instead), or ends beyond 2^63-1."""
    if request.digest is not None:
        return "a GET with a length asks for no digest (use BLOCKS for block digests)"
    if overflows(request.offset, request.length):
        return f"offset {request.offset} + length {request.length} lies beyond 2^63-1"
    return None


class _FileChangedError(FtxError):
    """The file was truncated or modified while it was being sent."""
