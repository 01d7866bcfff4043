"""The ftx server: serves the files under one directory to many clients at once, read-only
unless made writable (uploads: :mod:`ftx.server._uploads`).

Each connection is a task in a nursery. Whatever goes wrong in one connection (a malformed frame,
a dead or stalled peer, a bug) is logged and closes that connection only: the server keeps
serving everyone else. What a connection may cost is bounded (:mod:`ftx.server._limits`): a
number of connections served at once (one more is answered ``busy``), a handshake deadline, and
an idle deadline on every read and write.

Use :func:`serve` for TCP, or :class:`Server` with :meth:`Server.serve_listeners` (or
:meth:`Server.handle_stream` on a stream you made) for any other transport. Both take their
settings as one :class:`~ftx.server.ServerConfig`. Each connection is a
:class:`~ftx.server._session.Session`, given the settings and the resources that connections
share (:class:`~ftx.server._resources.ServerResources`), never the server itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Final

import trio

from ftx._net import transport_of
from ftx._port import DEFAULT_PORT
from ftx.errors import IncompleteFrameError, RemoteProtocolError
from ftx.fs import ServedRoot
from ftx.protocol import ErrorCode
from ftx.server._config import ServerConfig
from ftx.server._limits import WriteStalledError
from ftx.server._listen import FdReserve, accept_loop
from ftx.server._proxy import (
    begins_like_proxy_header,
    is_allowed,
    peer_address,
    read_proxy_header,
)
from ftx.server._resources import ServerResources
from ftx.server._session import Session

__all__ = ["DEFAULT_PORT", "Server", "serve"]

# Connections being refused (``busy``) at once; beyond this, further ones are just closed.
# Each holds a descriptor for at most REFUSAL_HELLO_SECONDS (plus a TLS handshake): a burst of
# real clients beyond the connection limit is told "busy" rather than cut off.
_MAX_REFUSALS: Final = 256

logger = logging.getLogger("ftx.server")

Listeners = Sequence[trio.abc.Listener[trio.abc.Stream]]


class Server:
    """Serves the regular files under ``root`` over the ftx protocol, as ``config`` says.

    Args:
        root: the directory to serve, or a :class:`~ftx.fs.ServedRoot` already opened. Nothing
            outside it is ever opened. The caller closes it (``server.root.close()``) once done.
        config: the server's settings (:class:`~ftx.server.ServerConfig`): uploads, sizes,
            limits, TLS and token.

    Raises:
        OSError: ``root`` cannot be opened as a directory.
        ValueError: ``config.state_dir`` cannot be used (inside ``root``, cannot be made, or
            its digest store cannot be opened).
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | ServedRoot,
        config: ServerConfig = ServerConfig(),
    ) -> None:
        self.config: Final = config
        served = root if isinstance(root, ServedRoot) else ServedRoot(root)
        try:
            self._resources = ServerResources(served, config)
        except BaseException:
            if served is not root:  # opened here: not the caller's to close
                served.close()
            raise
        self._sessions: set[Session] = set()
        self._sessions_changed = trio.lowlevel.ParkingLot()
        self._refusals = 0
        self._closing = False
        self._accepting: set[trio.CancelScope] = set()

    @property
    def root(self) -> ServedRoot:
        """The directory served."""
        return self._resources.root

    @property
    def connections(self) -> int:
        """How many connections are being served now (refused ones are not counted)."""
        return len(self._sessions)

    @property
    def requires_token(self) -> bool:
        """Whether clients must prove that they know a token."""
        return self.config.token is not None

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
        admitted = await self._admit(stream)
        if admitted is None:
            await trio.aclose_forcefully(stream)
        elif self._closing:
            await self._refuse(stream, ErrorCode.SHUTTING_DOWN, admitted[0])
        elif len(self._sessions) >= self.config.max_connections:
            await self._refuse(stream, ErrorCode.BUSY, admitted[0])
        else:
            await self._handle(stream, *admitted)

    async def _admit(self, stream: trio.abc.Stream) -> tuple[str, bool, float] | None:
        """The name of the client on ``stream`` for the logs, whether the connection is a
        balancer's own health check, and when it was accepted; ``None`` if it is refused.

        With ``config.proxy_protocol_from``, a connection from one of those balancers must
        begin with a PROXY header, and is named by the client address it carries (a header that
        carries none marks the balancer's health check, whose end is logged only with -v); one
        from anywhere else must not begin with one. Both are bounded by the handshake deadline.
        """
        peer, accepted_at = _peer_name(stream), trio.current_time()
        networks = self.config.proxy_protocol_from
        transport = transport_of(stream)
        if not networks or not isinstance(transport, trio.SocketStream):
            return peer, False, accepted_at
        trusted = is_allowed(peer_address(transport), networks)
        with trio.move_on_after(self.config.handshake_timeout):
            try:
                if not trusted:
                    if await begins_like_proxy_header(transport):
                        logger.warning(
                            "%s: refused: a PROXY header from an address not allowed to send one",
                            peer,
                        )
                        return None
                    return peer, False, accepted_at
                header = await read_proxy_header(transport)
            except RemoteProtocolError as exc:
                logger.warning("%s: refused: %s", peer, exc)
                return None
            except OSError as exc:
                logger.info("%s: connection lost (%s)", peer, exc)
                return None
            if header.source is None:
                return peer, True, accepted_at
            return _address_name(*header.source), False, accepted_at
        logger.info("%s: no PROXY header within %g s; closing", peer, self.config.handshake_timeout)
        return None

    async def _handle(
        self, stream: trio.abc.Stream, peer: str, probe: bool, accepted_at: float
    ) -> None:
        session = Session(self.config, self._resources, stream, peer, accepted_at=accepted_at)
        self._sessions.add(session)
        try:
            await session.run()
        except WriteStalledError as exc:
            logger.info("%s: cut off: %s", peer, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            level = logging.DEBUG if probe else logging.INFO  # health checks end with a reset
            logger.log(level, "%s: connection lost (%s)", peer, exc.__cause__ or exc)
        except IncompleteFrameError as exc:
            # A broken connection, not a violation (docs/protocol.md, section 4): the client
            # vanished mid-frame (killed, its network gone); there is no one to tell.
            logger.info("%s: connection lost (%s)", peer, exc)
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

    async def _refuse(
        self, stream: trio.abc.Stream, code: ErrorCode = ErrorCode.BUSY, peer: str | None = None
    ) -> None:
        """Answer the client's HELLO with a connection-level ERROR (``busy`` or
        ``shutting-down``), and close.

        Bounded in time, and in number: past :data:`_MAX_REFUSALS` at once, connections are
        closed without a word.
        """
        peer = peer or _peer_name(stream)
        if self._refusals >= _MAX_REFUSALS:
            logger.info("%s: refused (%s), closed at once", peer, code)
            await trio.aclose_forcefully(stream)
            return
        self._refusals += 1
        try:
            logger.warning("%s: refused: %s (%d connections)", peer, code, len(self._sessions))
            what = "busy" if code == ErrorCode.BUSY else "shutting down"
            session = Session(self.config, self._resources, stream, peer)
            await session.refuse(code, f"the server is {what}; try again later")
        finally:
            self._refusals -= 1
            await trio.aclose_forcefully(stream)


async def serve(
    root: str | os.PathLike[str],
    host: str | None = None,
    port: int = DEFAULT_PORT,
    config: ServerConfig = ServerConfig(),
    *,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``root`` over TCP on ``host``:``port``, as ``config`` says, until cancelled.

    ``host=None`` listens on every interface (IPv4 and IPv6 where available). With ``port=0``
    the system picks a free port: run this with ``await nursery.start(serve, root, host, 0)``,
    which returns the :class:`trio.SocketListener` list, to learn it. ``config`` is the
    server's :class:`~ftx.server.ServerConfig`; ``backlog`` is the listen queue length
    (``None``: the system's maximum); connections are served in ``handler_nursery`` if given.

    Raises:
        OSError: ``root`` is not a directory that can be opened, or the address cannot be
            bound (in use, not available on this host).
    """
    server = Server(root, config)
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
            return _address_name(address[0], address[1])
        return str(address) or "local peer"
    return type(transport).__name__


def _address_name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
