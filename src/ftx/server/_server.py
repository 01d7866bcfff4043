"""The ftx server: serves the files under one directory to many clients at once, read-only
unless made writable (uploads: :mod:`ftx.server._uploads`).

Each connection is a task in a nursery. Whatever goes wrong in one connection (a malformed frame,
a dead or stalled peer, a bug) is logged and closes that connection only: the server keeps
serving everyone else. What a connection may cost is bounded (:mod:`ftx.server._limits`): a number
of
connections served at once (one more is answered ``busy``), a handshake deadline, and an idle
deadline on every read and write.

Use :func:`serve` for TCP, or :class:`Server` with :meth:`Server.serve_listeners` (or
:meth:`Server.handle_stream` on a stream you made) for any other transport.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable, Sequence
from typing import Final

import trio

from ftx._net import transport_of
from ftx.errors import RemoteProtocolError
from ftx.framing import DEFAULT_MAX_FRAME_SIZE
from ftx.fs import ServedRoot
from ftx.protocol import ErrorCode
from ftx.protocol._auth import ServerAuthenticator, check_token
from ftx.server._limits import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    Limits,
    WriteStalledError,
)
from ftx.server._listen import FdReserve, accept_loop
from ftx.server._readahead import BATCH_BUFFER_SIZE
from ftx.server._resources import BufferPool, DigestCache
from ftx.server._session import Session
from ftx.server._uploads import UploadPolicy

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_PORT", "Server", "serve"]

DEFAULT_PORT: Final = 3890
DEFAULT_CHUNK_SIZE: Final = 512 * 1024
# All connections together read and send through at most this much buffer memory.
_BUFFER_MEMORY: Final = 32 * 1024 * 1024
_BATCH_BUFFERS: Final = 64  # of BATCH_BUFFER_SIZE (256 KiB): 16 MiB at most
# Connections being refused (``busy``) at once; beyond this, further ones are just closed.
# Each holds a descriptor for at most REFUSAL_HELLO_SECONDS (plus a TLS handshake): a burst of
# real clients beyond the connection limit is told "busy" rather than cut off.
_MAX_REFUSALS: Final = 256

logger = logging.getLogger("ftx.server")

Listeners = Sequence[trio.abc.Listener[trio.abc.Stream]]


class Server:
    """Serves the regular files under ``root`` over the ftx protocol.

    Args:
        root: the directory to serve, or a :class:`~ftx.fs.ServedRoot` already opened. Nothing
            outside it is ever opened.
        chunk_size: the largest DATA chunk to send (capped by the client's frame limit).
        max_frame_size: the largest frame this server accepts from a client.
        max_connections: connections served at once; one more is sent a connection-level
            ``busy`` ERROR and closed, without disturbing the others.
        handshake_timeout: seconds from accepting a connection to the end of the handshake.
        idle_timeout: seconds the server waits for each complete request, and the longest the
            client may take to accept one frame (at most ``chunk_size`` bytes of a file).
            ``math.inf`` switches a deadline off.
        writable: accept uploads and new directories (otherwise clients are told
            ``read-only``); see :class:`~ftx.server._uploads.UploadPolicy`.
        allow_overwrite: let a client that asks for it replace an existing file.
        max_upload_size: the largest upload accepted, in bytes (``None``: no limit).
        ssl_context: serve over TLS with this server context (see
            :func:`ftx._tls.server_context`); a client speaking plain ftx is answered
            ``tls-required``.
        token: require clients to prove, by challenge and response, that they know this
            shared token (at least 16 bytes; see :mod:`ftx.protocol._auth`). It never crosses the
            wire.

    Raises:
        OSError: ``root`` cannot be opened as a directory.
        ValueError: a limit is out of range, or the token is too short.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | ServedRoot,
        *,
        writable: bool = False,
        allow_overwrite: bool = False,
        max_upload_size: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        token: str | bytes | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self.limits: Final = Limits(max_connections, handshake_timeout, idle_timeout)
        self.root: Final = root if isinstance(root, ServedRoot) else ServedRoot(root)
        self.chunk_size: Final = chunk_size
        self.max_frame_size: Final = max_frame_size
        self.ssl_context: Final = ssl_context
        self._token = check_token(token) if token is not None else None
        self.buffers: Final = BufferPool(chunk_size, max(2, _BUFFER_MEMORY // chunk_size))
        # Separate from the chunk buffers: a batch holds its buffer while a large file in it
        # is sent with a chunk buffer, so one pool for both could run dry and deadlock.
        self.batch_buffers: Final = BufferPool(BATCH_BUFFER_SIZE, _BATCH_BUFFERS)
        self.digests: Final = DigestCache()
        self.uploads: Final = UploadPolicy(writable, allow_overwrite, max_upload_size)
        self._sessions: set[Session] = set()
        self._sessions_changed = trio.lowlevel.ParkingLot()
        self._refusals = 0
        self._closing = False
        self._accepting: set[trio.CancelScope] = set()

    @property
    def connections(self) -> int:
        """How many connections are being served now (refused ones are not counted)."""
        return len(self._sessions)

    @property
    def requires_token(self) -> bool:
        """Whether clients must prove that they know a token."""
        return self._token is not None

    def _new_authenticator(self) -> ServerAuthenticator | None:
        return None if self._token is None else ServerAuthenticator(self._token)

    @property
    def closing(self) -> bool:
        """Whether :meth:`shutdown` was called."""
        return self._closing

    async def shutdown(self, grace: float = 0.0) -> None:
        """Stop serving, gracefully: let the answers in progress finish, then close everything.

        Accepting stops at once: :meth:`serve_listeners` closes its listeners (a connection
        accepted meanwhile is answered ``shutting-down``). Connections waiting for their
        handshake or their next request are closed at once; those answering a request get up to
        ``grace`` seconds to finish it. Then the rest are stopped at the next frame boundary (or
        cancelled, if they cannot reach one within two seconds). Every client told nothing else
        receives a connection-level ``shutting-down`` ERROR, and can resume later.

        Returns once every connection is closed; :meth:`serve_listeners` then returns too. May
        be called again, from any task: ``shutdown(0)`` during a graceful shutdown ends the
        grace period at once.
        """
        self._closing = True
        for scope in self._accepting:
            scope.cancel()
        for session in list(self._sessions):
            session.stop(now=False)
        with trio.move_on_after(grace):
            await self._wait_for_sessions()
        for session in list(self._sessions):
            session.stop(now=True)
        await self._wait_for_sessions()

    async def _wait_for_sessions(self) -> None:
        while self._sessions:
            await self._sessions_changed.park()
        await trio.lowlevel.checkpoint()

    async def serve_listeners(
        self,
        listeners: Listeners,
        *,
        handler_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[Listeners] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on ``listeners`` and serve each in its own task, until cancelled
        or, after :meth:`shutdown`, until the last connection is closed.

        ``task_status.started`` is called with the listeners once they accept connections; they
        are closed when accepting stops. TCP connections get ``SO_KEEPALIVE``. When the process
        runs out of file descriptors, new connections are refused (``busy``) rather than left
        waiting, and the server goes on.

        Raises:
            OSError: accepting failed for a reason other than a lack of resources.
        """
        await self._serve(listeners, handler_nursery, lambda: task_status.started(listeners))

    async def _serve(
        self,
        listeners: Listeners,
        handler_nursery: trio.Nursery | None,
        started: Callable[[], None],
    ) -> None:
        accepting = trio.CancelScope()
        if self._closing:
            accepting.cancel()
        self._accepting.add(accepting)

        async def accept(handlers: trio.Nursery) -> None:
            reserve = FdReserve()
            try:
                with accepting:
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(
                                accept_loop,
                                listener,
                                self.handle_stream,
                                self._refuse,
                                handlers,
                                reserve,
                            )
            finally:
                reserve.close()
                for listener in listeners:  # stop accepting: the system refuses new ones
                    await trio.aclose_forcefully(listener)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept, handler_nursery or nursery)
                started()
        finally:
            self._accepting.discard(accepting)

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client over ``stream`` until it closes the connection, then close it.

        Over the connection limit, the client is refused with ``busy`` instead; after
        :meth:`shutdown`, with ``shutting-down``.

        Never raises, except :exc:`trio.Cancelled` and :exc:`KeyboardInterrupt`: a failure is
        logged and ends this connection only.
        """
        if self._closing:
            await self._refuse(stream, ErrorCode.SHUTTING_DOWN)
        elif len(self._sessions) >= self.limits.max_connections:
            await self._refuse(stream, ErrorCode.BUSY)
        else:
            await self._handle(stream)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        peer = _peer_name(stream)
        session = Session(self, stream, peer)
        self._sessions.add(session)
        try:
            await session.run()
        except WriteStalledError as exc:
            logger.info("%s: cut off: %s", peer, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            logger.info("%s: connection lost (%s)", peer, exc.__cause__ or exc)
        except RemoteProtocolError as exc:
            logger.warning("%s: protocol error: %s", peer, exc)
            await session.farewell(ErrorCode.BAD_REQUEST, f"protocol error: {exc}")
        except Exception:
            logger.exception("%s: internal error; closing this connection", peer)
            await session.farewell(ErrorCode.INTERNAL, "internal server error")
        finally:
            self._sessions.discard(session)
            self._sessions_changed.unpark_all()
            await session.aclose()

    async def _refuse(self, stream: trio.abc.Stream, code: ErrorCode = ErrorCode.BUSY) -> None:
        """Answer the client's HELLO with a connection-level ERROR (``busy`` or
        ``shutting-down``), and close.

        Bounded in time, and in number: past :data:`_MAX_REFUSALS` at once, connections are
        closed without a word.
        """
        peer = _peer_name(stream)
        if self._refusals >= _MAX_REFUSALS:
            logger.info("%s: refused (%s), closed at once", peer, code)
            await trio.aclose_forcefully(stream)
            return
        self._refusals += 1
        try:
            logger.warning("%s: refused: %s (%d connections)", peer, code, len(self._sessions))
            what = "busy" if code == ErrorCode.BUSY else "shutting down"
            await Session(self, stream, peer).refuse(code, f"the server is {what}; try again later")
        finally:
            self._refusals -= 1
            await trio.aclose_forcefully(stream)


async def serve(
    root: str | os.PathLike[str],
    host: str | None = None,
    port: int = DEFAULT_PORT,
    *,
    writable: bool = False,
    allow_overwrite: bool = False,
    max_upload_size: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
    token: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``root`` over TCP on ``host``:``port`` until cancelled.

    ``host=None`` listens on every interface (IPv4 and IPv6 where available). With ``port=0``
    the system picks a free port: run this with ``await nursery.start(serve, root, host, 0)``,
    which returns the :class:`trio.SocketListener` list, to learn it. ``backlog`` is the listen
    queue length (``None``: the system's maximum). The other arguments are those of
    :class:`Server`.

    Raises:
        OSError: ``root`` is not a directory that can be opened, or the address cannot be
            bound (in use, not available on this host).
        ValueError: a limit is out of range.
    """
    server = Server(
        root,
        writable=writable,
        allow_overwrite=allow_overwrite,
        max_upload_size=max_upload_size,
        chunk_size=chunk_size,
        max_frame_size=max_frame_size,
        max_connections=max_connections,
        handshake_timeout=handshake_timeout,
        idle_timeout=idle_timeout,
        ssl_context=ssl_context,
        token=token,
    )
    try:
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
        await server._serve(listeners, handler_nursery, lambda: task_status.started(listeners))
    finally:
        server.root.close()


def _peer_name(stream: trio.abc.Stream) -> str:
    transport = transport_of(stream)
    if isinstance(transport, trio.SocketStream):
        try:
            address = transport.socket.getpeername()
        except OSError:
            return "unknown peer"
        if isinstance(address, tuple):
            host, port = address[0], address[1]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return str(address) or "local peer"
    return type(transport).__name__
