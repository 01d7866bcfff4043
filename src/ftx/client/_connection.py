"""One client connection to a server: the handshake, checked messages in and out, and closing
for good after a failure. :class:`ftx.Client` adds the file operations on top; the helper
modules (``_receive``, ``_pipeline``, ``_upload``) use the private members below through the
Protocols they declare (``DownloadWire``, ``FetchWire``, ``UploadWire``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Final, TypeVar

import trio

from ftx._net import set_keepalive
from ftx._version import __version__
from ftx.client._config import ClientConfig
from ftx.client._receive import ReceiveBuffers
from ftx.errors import (
    AuthenticationError,
    ConnectionLostError,
    IncompleteFrameError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from ftx.framing import (
    BlockingReceiver,
    Buffer,
    FramedChannel,
    IdleClock,
    SpanStalledError,
)
from ftx.protocol import (
    BLOCK_PROGRESS_FEATURE,
    DIGEST_FEATURES,
    LARGE_DATA_FEATURE,
    RANGES_FEATURE,
    TREE_FEATURE,
    TREE_PUT_FEATURE,
    UPLOAD_FEATURE,
    ClientAuthenticator,
    ClientProtocol,
    DigestChoice,
    choose_digest,
)
from ftx.protocol.messages import Data, Error, Hello, ListEntries, Message

__all__ = ["MAX_DATA_FRAME_SIZE", "PROGRESS_BYTES", "ClientConnection"]

MAX_DATA_FRAME_SIZE: Final = 2 << 20
"""The largest DATA payload the client accepts from a server that lists ``large-data``
(docs/protocol.md, section 20); every other frame keeps the ``max_frame_size`` limit."""

PROGRESS_BYTES: Final = 65536
"""While an answer is due, the server must send this many bytes of file content, or a message
other than DATA, within the idle timeout (the time spent waiting for it, not the client's own
work in between); else the client gives up (docs/protocol.md, section 3)."""

logger = logging.getLogger("ftx.client")

T = TypeVar("T")

# What the channel raises when the connection is gone (docs/protocol.md, section 4): each is a
# ConnectionLostError to the caller (see _connection_lost).
_LOST: Final = (
    trio.EndOfChannel,
    IncompleteFrameError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def _connection_lost(exc: BaseException) -> ConnectionLostError:
    """The ConnectionLostError for one of the channel's :data:`_LOST` exceptions."""
    if isinstance(exc, trio.EndOfChannel):
        return ConnectionLostError("the server closed the connection")
    if isinstance(exc, IncompleteFrameError):
        return ConnectionLostError(f"the server closed the connection: {exc}")
    return ConnectionLostError(f"the connection broke: {exc.__cause__ or exc}")


class ClientConnection(trio.abc.AsyncResource):
    """A connection to an ftx server over any :class:`trio.abc.Stream`, as far as the handshake
    and the messages go: the base of :class:`ftx.Client`, which adds the file operations.

    Requests wait for :attr:`_lock` in turn. Any failure to send or receive closes the
    connection for good (:meth:`_fail`): the next request raises ConnectionLostError.

    Args:
        stream: a connected stream to an ftx server; the connection owns it from now on.
        config: how the connection behaves (frame limit, idle timeout, token, digest).
    """

    def __init__(self, stream: trio.abc.Stream, config: ClientConfig = ClientConfig()) -> None:
        set_keepalive(stream)  # a TCP connection to a server that vanished is noticed
        if config.rate_limit is not None:
            stream = config.rate_limit.wrap(stream)  # (then no thread span: not a socket)
        # DATA frames may be larger than the frame limit, where the server agrees (large-data).
        data_limit = max(config.max_frame_size, MAX_DATA_FRAME_SIZE)
        self._channel = FramedChannel(stream, max_frame_size=data_limit)
        self._protocol = ClientProtocol(
            max_frame_size=config.max_frame_size,
            agent=f"ftx/{__version__}",
            auth=ClientAuthenticator(config.token) if config.token is not None else None,
            features=DIGEST_FEATURES
            | {UPLOAD_FEATURE, LARGE_DATA_FEATURE, RANGES_FEATURE, BLOCK_PROGRESS_FEATURE}
            | _tree_features(config),
            max_data_frame_size=data_limit,
        )
        self._digest_choice: DigestChoice = config.digest
        self._digest_algorithm: str | None = None  # chosen by the handshake
        self._idle_timeout = config.idle_timeout
        # The read-progress deadline: the seconds spent waiting for the server, and the DATA
        # bytes received, since it last made progress (see _note_progress).
        self._stalled = 0.0
        self._data_since_progress = 0
        self._lock = trio.Lock()
        self._receive_buffers = ReceiveBuffers(data_limit)
        self._range_buffer: bytearray | None = None  # for ranged GETs, made on first use
        self._closed = False

    @property
    def digest_algorithm(self) -> str:
        """The whole-file digest transfers are verified with: the fastest one the server computes
        of ``xxh3-128``, ``blake3`` and ``sha256``; with ``digest="cryptographic"``, of
        ``blake3`` and ``sha256``; else the one named. (Every server computes ``sha256``.)

        Raises:
            LocalProtocolError: the algorithm named is not one the server computes (raised by
                :meth:`handshake` already)."""
        if self._digest_algorithm is not None:
            return self._digest_algorithm  # known since the handshake
        return choose_digest(self._protocol.features, self._digest_choice)

    @property
    def server_hello(self) -> Hello | None:
        """The server's HELLO (its version, features and agent), once the handshake is done."""
        return self._protocol.peer_hello

    async def aclose(self) -> None:
        """Close the connection. Idempotent."""
        self._closed = True
        await self._channel.aclose()

    async def handshake(self) -> Hello:
        """Exchange HELLO with the server (done by :func:`ftx.connect`); return the server's.

        With a token, the token exchange follows (CHALLENGE, AUTH, AUTH_OK).

        Raises:
            RemoteError: the server refused the connection (``busy``, ``unsupported-version``,
                ``unauthorized`` for a missing or wrong token, ``tls-required``).
            AuthenticationError: we have a token, and the server does not ask for it or does
                not prove that it knows it.
            RemoteProtocolError: the peer does not speak ftx.
            ConnectionLostError: the connection closed or the server stayed silent.
            LocalProtocolError: the digest asked for by name is not one the server computes.
        """
        async with self._lock:
            if self._protocol.peer_hello is not None and self._protocol.authenticated:
                return self._protocol.peer_hello
            try:
                await self._send(self._protocol.local_hello)
                message = await self._receive()
                if not isinstance(message, Hello):  # pragma: no cover - ClientProtocol ensures it
                    raise RemoteProtocolError(f"expected HELLO, got {type(message).__name__}")
                if not self._protocol.authenticated:
                    await self._receive()  # CHALLENGE
                    await self._send(self._protocol.auth_answer())
                    await self._receive()  # AUTH_OK, checked by the protocol
                # Chosen now, so that a digest the server does not compute fails here.
                self._digest_algorithm = choose_digest(self._protocol.features, self._digest_choice)
                logger.debug(
                    "handshake done: server %r, protocol version %s, features in use: %s; "
                    "digest %s",
                    message.agent,
                    self._protocol.version,
                    ", ".join(sorted(map(repr, self._protocol.features))) or "none",
                    self._digest_algorithm,
                )
            except (AuthenticationError, LocalProtocolError):
                await self._fail()
                raise
            return message

    async def _check_open(self) -> None:
        """Raise unless the connection is ready for a request.

        Raises:
            ConnectionLostError: it was closed after an earlier failure.
            RuntimeError: the handshake was not done yet.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise ConnectionLostError("this connection was closed after an earlier failure")
        if self._protocol.peer_hello is None:
            raise RuntimeError("handshake() first (ftx.connect does it)")

    async def _send(self, *messages: Message) -> None:
        """Send the messages, in one write if they are small.

        Raises:
            ConnectionLostError: the connection broke (it is closed now).
            LocalProtocolError: a message may not be sent now (nothing was sent).
        """
        frames = [self._protocol.send(message) for message in messages]
        try:
            await self._channel.send_frames(*frames)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await self._fail()
            raise ConnectionLostError(f"the connection broke while sending: {exc}") from exc

    async def _receive(self, into: bytearray | None = None) -> Message:
        """The next message from the server (received ``into`` that buffer if one is given: a
        DATA message's chunk is then a view of it). Any failure closes the connection.

        Raises:
            ConnectionLostError: the connection broke or closed, or the server made no progress
                (see :meth:`_note_progress`) in the idle timeout.
            RemoteProtocolError: the server broke the protocol.
            RemoteError: the server refused the whole connection (an ERROR without a request).
        """
        try:
            while True:
                payload: Buffer | None = None
                if into is None:
                    # Small answers come several to a segment: a frame that is here already
                    # needs no deadline (a cancel scope costs more than a small message).
                    with contextlib.suppress(trio.WouldBlock):
                        payload = self._channel.receive_nowait()
                if payload is None:
                    started = trio.current_time()
                    with trio.move_on_after(max(0.0, self._idle_timeout - self._stalled)) as idle:
                        if into is None:
                            payload = await self._channel.receive()
                        else:
                            size = await self._channel.receive_into(into)
                            payload = memoryview(into)[:size]
                    self._stalled += trio.current_time() - started
                    if payload is None or idle.cancelled_caught:
                        await self._fail()
                        raise ConnectionLostError(
                            f"the server made no progress for {self._idle_timeout:g} seconds"
                        )
                message = self._protocol.receive(payload)
                self._note_progress(message)
                if message is not None:
                    break
        except _LOST as exc:
            await self._fail()
            raise _connection_lost(exc) from exc
        except RemoteProtocolError:
            await self._fail()
            raise
        if isinstance(message, Error) and message.request_id is None:
            await self._fail()
            raise RemoteError(message.code, message.message)
        return message

    @property
    def _spans_supported(self) -> bool:
        """Whether the connection can hand its socket to a worker thread (plain TCP)."""
        return self._channel.spans_supported

    async def _receive_span(self, work: Callable[[BlockingReceiver], T]) -> T:
        """Run ``work(receiver)`` in a worker thread that owns the receiving side (see
        :meth:`ftx.framing.FramedChannel.receive_span`), under the same read-progress deadline
        as :meth:`_receive`. Any failure but a cancellation closes the connection.

        Raises:
            ConnectionLostError, RemoteProtocolError: as for :meth:`_receive`.
            Whatever ``work`` raises.
        """
        clock = IdleClock(self._idle_timeout, PROGRESS_BYTES, self._stalled)
        try:
            result = await self._channel.receive_span(work, clock)
        except SpanStalledError as exc:
            await self._fail()
            raise ConnectionLostError(
                f"the server made no progress for {self._idle_timeout:g} seconds"
            ) from exc
        except _LOST as exc:
            await self._fail()
            raise _connection_lost(exc) from exc
        except RemoteProtocolError:
            await self._fail()
            raise
        self._stalled = clock.spent
        self._data_since_progress = clock.since_progress
        return result

    def _note_progress(self, message: Message | None) -> None:
        """Restart the read-progress deadline if ``message`` is progress: any message but DATA,
        an ENTRIES page without entries and an extension frame (``None``); or, counted over
        several DATA, :data:`PROGRESS_BYTES` of file content. So a server that sends empty
        frames, or a byte now and then, cannot hold the connection open forever."""
        if isinstance(message, Data):
            self._data_since_progress += memoryview(message.data).nbytes
            if self._data_since_progress < PROGRESS_BYTES:
                return
        elif message is None or (isinstance(message, ListEntries) and not message.entries):
            return
        self._stalled = 0.0
        self._data_since_progress = 0

    async def _fail(self) -> None:
        """Close the connection at once, for good (after a failure, or to abandon an answer or
        an upload that cannot be finished)."""
        self._closed = True
        await trio.aclose_forcefully(self._channel)


def _tree_features(config: ClientConfig) -> frozenset[str]:
    """The features of tree streams, both ways, unless ``config`` turns them off."""
    return frozenset({TREE_FEATURE, TREE_PUT_FEATURE}) if config.tree_streams else frozenset()
