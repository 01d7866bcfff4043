"""The ftx server: serves the files under one directory, read-only, to any number of clients.

Each connection is a task in a nursery (:func:`trio.serve_listeners`). Whatever goes wrong in
one connection (a malformed frame, a dead peer, a bug) is logged and closes that connection
only: the server keeps serving everyone else.

Use :func:`serve` for TCP, or :class:`Server` with :meth:`Server.serve_listeners` (or
:meth:`Server.handle_stream` on a stream you made) for any other transport.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from functools import partial
from typing import Final

import trio

from ftx._resources import BufferPool, DigestCache
from ftx._threads import ThreadJob
from ftx._version import __version__
from ftx.errors import RemoteProtocolError
from ftx.framing import DEFAULT_MAX_FRAME_SIZE, FramedChannel
from ftx.fs import FsError, OpenedFile, ServedRoot
from ftx.messages import Data, Entry, Error, FileEnd, FileHeader, Get, ListDir, ListEnd, ListEntries
from ftx.messages import Message as _Message
from ftx.protocol import (
    BLAKE3_FEATURE,
    DIGEST_ALGORITHMS,
    SUPPORTED_VERSIONS,
    ErrorCode,
    Hasher,
    ServerProtocol,
    new_hasher,
)

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_PORT", "Server", "serve"]

DEFAULT_PORT: Final = 3890
DEFAULT_CHUNK_SIZE: Final = 512 * 1024
# A listing entry encodes to at most ~1.6 KiB of JSON (a 255-byte name, all escaped): pages of
# peer_max_frame_size // 2048 entries always fit in a frame.
_MAX_LIST_PAGE: Final = 256
_ENTRY_BUDGET: Final = 2048
_HASH_PREFIX_BLOCK: Final = 1 << 20
# All connections together read and send through at most this much buffer memory.
_BUFFER_MEMORY: Final = 32 * 1024 * 1024
# How long a connection being closed for an error may take to flush the error message.
_FAREWELL_SECONDS: Final = 2.0

logger = logging.getLogger("ftx.server")


class Server:
    """Serves the regular files under ``root`` over the ftx protocol.

    Args:
        root: the directory to serve, or a :class:`~ftx.fs.ServedRoot` already opened. Nothing
            outside it is ever opened.
        chunk_size: the largest DATA chunk to send (capped by the client's frame limit).
        max_frame_size: the largest frame this server accepts from a client.

    Raises:
        OSError: ``root`` cannot be opened as a directory.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | ServedRoot,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.root: Final = root if isinstance(root, ServedRoot) else ServedRoot(root)
        self.chunk_size: Final = chunk_size
        self.max_frame_size: Final = max_frame_size
        self.buffers: Final = BufferPool(chunk_size, max(2, _BUFFER_MEMORY // chunk_size))
        self.digests: Final = DigestCache()

    async def serve_listeners(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        *,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[Sequence[trio.abc.Listener[trio.abc.Stream]]] = (
            trio.TASK_STATUS_IGNORED
        ),
    ) -> None:
        """Accept connections on ``listeners`` and serve each in its own task, until cancelled.

        ``task_status.started`` is called with the listeners once they accept connections.
        """
        await trio.serve_listeners(
            self.handle_stream,
            list(listeners),
            handler_nursery=handler_nursery,
            task_status=task_status,
        )

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client over ``stream`` until it closes the connection, then close it.

        Never raises, except :exc:`trio.Cancelled` and :exc:`KeyboardInterrupt`: a failure is
        logged and ends this connection only.
        """
        peer = _peer_name(stream)
        channel = FramedChannel(stream, max_frame_size=self.max_frame_size)
        session = _Session(self, channel, peer)
        try:
            await session.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.info("%s: connection lost (%s)", peer, exc.__cause__ or exc)
        except RemoteProtocolError as exc:
            logger.warning("%s: protocol error: %s", peer, exc)
            await session.farewell(ErrorCode.BAD_REQUEST, f"protocol error: {exc}")
        except Exception:
            logger.exception("%s: internal error; closing this connection", peer)
            await session.farewell(ErrorCode.INTERNAL, "internal server error")
        finally:
            await trio.aclose_forcefully(channel)


async def serve(
    root: str | os.PathLike[str],
    host: str | None = None,
    port: int = DEFAULT_PORT,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``root`` over TCP on ``host``:``port`` until cancelled.

    ``host=None`` listens on every interface (IPv4 and IPv6 where available). With ``port=0``
    the system picks a free port: run this with ``await nursery.start(serve, root, host, 0)``,
    which returns the :class:`trio.SocketListener` list, to learn it.

    Raises:
        OSError: ``root`` is not a directory that can be opened, or the address cannot be
            bound (in use, not available on this host).
    """
    server = Server(root, chunk_size=chunk_size, max_frame_size=max_frame_size)
    try:
        await trio.serve_tcp(
            server.handle_stream,
            port,
            host=host,
            handler_nursery=handler_nursery,
            task_status=task_status,
        )
    finally:
        server.root.close()


class _Session:
    """One client connection: the handshake, then requests answered one after the other."""

    def __init__(self, server: Server, channel: FramedChannel, peer: str) -> None:
        self._server = server
        self._root = server.root
        self._channel = channel
        self._peer = peer
        self._protocol = ServerProtocol(
            max_frame_size=server.max_frame_size,
            agent=f"ftx/{__version__}",
            features=frozenset({BLAKE3_FEATURE}),
        )

    async def _send(self, message: _Message) -> None:
        await self._channel.send_parts(*self._protocol.send(message))

    async def _receive(self) -> _Message:
        """The next message from the client, skipping extensions this version ignores."""
        while True:
            message = self._protocol.receive(await self._channel.receive())
            if message is not None:
                return message

    async def farewell(self, code: ErrorCode, message: str) -> None:
        """Tell the client why the connection is being closed, if it can still be told."""
        with trio.move_on_after(_FAREWELL_SECONDS):
            try:
                await self._send(Error(None, code, message))
            except Exception as exc:  # the connection may be long gone: nothing more to do
                logger.debug("%s: could not send the error: %s", self._peer, exc)

    async def run(self) -> None:
        try:
            await self._receive()  # HELLO: the protocol accepts nothing else first
        except trio.EndOfChannel:
            return
        if self._protocol.version is None:
            versions = ", ".join(map(str, SUPPORTED_VERSIONS))
            await self.farewell(
                ErrorCode.UNSUPPORTED_VERSION, f"this server speaks protocol version {versions}"
            )
            return
        await self._send(self._protocol.hello_reply())
        chunk = min(self._server.chunk_size, self._protocol.peer_max_frame_size - 1)
        while True:
            try:
                request = await self._receive()
            except trio.EndOfChannel:
                return
            if isinstance(request, Get):
                await self._send_file(request, chunk)
            elif isinstance(request, ListDir):
                await self._send_listing(request)

    async def _refuse(self, request: Get | ListDir, code: ErrorCode, message: str) -> None:
        logger.info("%s: %s %r refused: %s", self._peer, _verb(request), request.path, message)
        await self._send(Error(request.request_id, code, message))

    async def _send_file(self, request: Get, chunk_size: int) -> None:
        if request.digest is not None and request.digest not in DIGEST_ALGORITHMS:
            await self._refuse(request, ErrorCode.BAD_REQUEST, f"unknown digest {request.digest}")
            return
        try:
            opened = await trio.to_thread.run_sync(self._root.open_file, request.path)
        except FsError as exc:
            await self._refuse(request, exc.code, exc.message)
            return
        with opened:
            if request.identity is not None and request.identity != opened.identity:
                message = f"{request.path!r} changed since the transfer began"
                await self._refuse(request, ErrorCode.CHANGED, message)
            elif request.offset > opened.size:
                message = f"offset {request.offset} is beyond the end of {request.path!r}"
                await self._refuse(request, ErrorCode.BAD_REQUEST, message)
            else:
                await self._stream_file(request, opened, chunk_size)

    async def _stream_file(self, request: Get, opened: OpenedFile, chunk_size: int) -> None:
        started = trio.current_time()
        st = opened.stat
        await self._send(
            FileHeader(
                request.request_id,
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                identity=opened.identity,
                offset=request.offset,
                mode=st.st_mode & 0o7777,
                digest=request.digest,
            )
        )
        try:
            digest = await self._stream_chunks(request, opened, chunk_size)
        except _FileChangedError:
            message = f"{request.path!r} changed during the transfer"
            await self._refuse(request, ErrorCode.CHANGED, message)
            return
        await self._send(FileEnd(request.request_id, digest))
        sent = st.st_size - request.offset
        elapsed = trio.current_time() - started
        rate = sent / elapsed / 2**20 if elapsed > 0 else math.inf
        logger.info(
            "%s: GET %r: %d bytes in %.3f s (%.1f MiB/s)",
            self._peer,
            request.path,
            sent,
            elapsed,
            rate,
        )

    async def _stream_chunks(self, request: Get, opened: OpenedFile, chunk_size: int) -> str | None:
        """Send the file from the requested offset as DATA frames; return the digest of the
        whole file, or ``None`` if none was asked for.

        Each chunk is hashed in a worker thread while it is being sent. A digest computed over
        an unchanged file is remembered, so a file downloaded again (or resumed) is not re-read
        for it.

        Raises:
            _FileChangedError: the file was truncated or modified while it was being sent.
        """
        size, identity = opened.size, opened.identity
        algorithm = request.digest
        cache_key = f"{algorithm}:{identity}"
        known = self._server.digests.get(cache_key) if algorithm else None
        hasher = new_hasher(algorithm) if algorithm and known is None else None
        if hasher is not None and request.offset:
            await trio.to_thread.run_sync(_hash_prefix, opened, request.offset, hasher)
        pool = self._server.buffers
        position = request.offset
        while position < size:
            buffer = await pool.acquire()
            try:
                with memoryview(buffer) as whole:
                    view = whole[: min(chunk_size, size - position)]
                    # Page-cache reads are memory copies: done here, no thread hop per chunk.
                    count = opened.read_cached_into(view, position)
                    if count is None:
                        count = await trio.to_thread.run_sync(opened.read_into, view, position)
                    if count == 0:
                        raise _FileChangedError  # truncated under us
                    chunk = view[:count]
                    job = ThreadJob(partial(hasher.update, chunk)) if hasher else None
                    try:
                        await self._send(Data(chunk))
                    finally:
                        if job is not None:
                            await job.wait_quietly()
                    position += count
            finally:
                pool.release(buffer)
        if opened.changed():
            raise _FileChangedError
        if hasher is None:
            return known
        digest = hasher.hexdigest()
        self._server.digests.put(cache_key, digest)
        return digest

    async def _send_listing(self, request: ListDir) -> None:
        try:
            listing = await trio.to_thread.run_sync(self._root.list_directory, request.path)
        except FsError as exc:
            await self._refuse(request, exc.code, exc.message)
            return
        if isinstance(listing, Entry):
            await self._send(ListEntries(request.request_id, (listing,)))
            await self._send(ListEnd(request.request_id, 1))
            return
        page_size = min(_MAX_LIST_PAGE, self._protocol.peer_max_frame_size // _ENTRY_BUDGET)
        count = 0
        with listing:
            while page := await trio.to_thread.run_sync(listing.next_page, page_size):
                await self._send(ListEntries(request.request_id, tuple(page)))
                count += len(page)
        await self._send(ListEnd(request.request_id, count))
        logger.info("%s: LIST %r: %d entries", self._peer, request.path, count)


class _FileChangedError(Exception):
    pass


def _hash_prefix(opened: OpenedFile, end: int, hasher: Hasher) -> None:
    """Hash the first ``end`` bytes: a resumed transfer's digest still covers the whole file."""
    buffer = memoryview(bytearray(min(end, _HASH_PREFIX_BLOCK)))
    position = 0
    while position < end:
        count = opened.read_into(buffer[: end - position], position)
        if count == 0:
            return  # truncated: the transfer will notice and report the change
        hasher.update(buffer[:count])
        position += count


def _verb(request: Get | ListDir) -> str:
    return "GET" if isinstance(request, Get) else "LIST"


def _peer_name(stream: trio.abc.Stream) -> str:
    transport = stream
    while isinstance(transport, trio.SSLStream):
        transport = transport.transport_stream
    if isinstance(transport, trio.SocketStream):
        try:
            address = transport.socket.getpeername()
        except OSError:
            return "unknown peer"
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return type(transport).__name__
