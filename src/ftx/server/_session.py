"""One server connection: the handshake, then requests answered one after the other.

A session is given the server's settings and the resources that connections share, never the
server itself. Every wait is bounded by those settings (:mod:`ftx.server._limits`): the handshake
by an absolute deadline, each request by the idle deadline (so a request trickled in slower than
that is cut off), and each frame sent by the same idle period (a client that stops reading is
cut off).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TypeVar

import trio

from ftx._rate import RateLimitedStream, TokenBucket
from ftx._tls import accept_tls
from ftx._version import __version__
from ftx.errors import FtxError, IncompleteFrameError, RemoteProtocolError
from ftx.framing import BlockingSender, Buffer, FramedChannel, IdleClock, SpanStalledError
from ftx.fs import OpenedFile
from ftx.protocol import (
    BLOCK_PROGRESS_FEATURE,
    DIGEST_FEATURES,
    LARGE_DATA_FEATURE,
    PORTABLE_IDENTITY_FEATURE,
    RANGES_FEATURE,
    SUPPORTED_VERSIONS,
    TREE_FEATURE,
    TREE_PUT_FEATURE,
    UPLOAD_FEATURE,
    ErrorCode,
    ServerAuthenticator,
    ServerProtocol,
)
from ftx.protocol.messages import (
    Blocks,
    Error,
    Get,
    ListDir,
    MakeDir,
    Put,
    TreeGet,
    TreePut,
)
from ftx.protocol.messages import Message as _Message
from ftx.server._access_log import AccessRecord
from ftx.server._blocks import BlockHandler
from ftx.server._config import ServerConfig
from ftx.server._downloads import DownloadHandler
from ftx.server._limits import WriteStalledError
from ftx.server._readahead import MAX_BATCH
from ftx.server._resources import ServerResources
from ftx.server._tree import TreeHandler
from ftx.server._tree_put import TreePutHandler
from ftx.server._uploads import UploadHandler

T = TypeVar("T")

__all__ = ["AUTH_FAILURE_DELAY", "FAREWELL_SECONDS", "Session"]

# How long a connection being closed for an error may take to flush the error message.
FAREWELL_SECONDS: Final = 2.0
# How long a connection being refused (busy, shutting down) has to send its HELLO.
REFUSAL_HELLO_SECONDS: Final = 0.5
# How long a client that gave a wrong token waits for the refusal: guessing costs time.
AUTH_FAILURE_DELAY: Final = 1.0

logger = logging.getLogger("ftx.server")

# Answers queued by send_soon go out once this many bytes wait (or the batch is answered).
_OUTBOX_BYTES: Final = 256 * 1024


class Session:
    """One client connection, from the client's HELLO to the end of the stream.

    Its handlers of downloads and uploads send and receive through it: it is the
    :class:`~ftx.server._downloads.DownloadSession` and the
    :class:`~ftx.server._uploads.UploadSession` they are given.

    Args:
        config: the server's settings.
        resources: what the server's connections share (the root, buffers, digests).
        stream: the connection, as accepted (TLS, if ``config`` asks for it, is done here).
        peer: the client's name, for the logs.
        accepted_at: when the connection was accepted (:func:`trio.current_time`), if a PROXY
            header was read before: the handshake deadline counts from then.
    """

    def __init__(
        self,
        config: ServerConfig,
        resources: ServerResources,
        stream: trio.abc.Stream,
        peer: str,
        *,
        accepted_at: float | None = None,
    ) -> None:
        self._config = config
        # The handshake deadline runs from here (trio time), or from the session's start.
        self._accepted_at = accepted_at
        self._stream = stream
        self._channel = self._frame(stream)
        self._peer = peer
        self._stopping = False  # end after the current answer
        self._stop_now = False  # end at the next frame boundary
        self._waiting: trio.CancelScope | None = None
        # A protocol error met while taking pipelined requests, raised once they are answered.
        self._deferred_error: RemoteProtocolError | None = None
        self._working: trio.CancelScope | None = None
        # The answers of a batch of small files, encoded, wait here to go out in one write
        # (see send_soon); their access-log records are written once they have gone.
        self._outbox: list[tuple[Buffer, ...]] = []
        self._outbox_bytes = 0
        self._unlogged: list[AccessRecord] = []
        portable = config.identity == "portable"
        uploads = frozenset({UPLOAD_FEATURE, TREE_PUT_FEATURE}) if config.writable else frozenset()
        identity = frozenset({PORTABLE_IDENTITY_FEATURE}) if portable else frozenset()
        self._protocol = ServerProtocol(
            max_frame_size=config.max_frame_size,
            agent=f"ftx/{__version__}",
            auth=None if config.token is None else ServerAuthenticator(config.token),
            features=DIGEST_FEATURES
            | uploads
            | identity
            | {LARGE_DATA_FEATURE, RANGES_FEATURE, BLOCK_PROGRESS_FEATURE, TREE_FEATURE},
        )
        # Under TLS the file's bytes must pass through Python anyway: no sendfile.
        sendfile = config.ssl_context is None
        self._downloads = DownloadHandler(
            self, resources, self._protocol, sendfile=sendfile, portable=portable
        )
        self._uploads = UploadHandler(self, config, resources.root)
        self._tree_puts = TreePutHandler(self, config, resources.root)
        self._blocks = BlockHandler(self, resources, portable=portable)
        self._trees = TreeHandler(
            self, resources.root, self._downloads, idle_timeout=config.idle_timeout
        )

    def _frame(self, stream: trio.abc.Stream) -> FramedChannel:
        rate = self._config.limit_rate
        if rate is not None:  # each connection its own limit, each direction its own bucket
            stream = RateLimitedStream(stream, TokenBucket(rate), TokenBucket(rate))
        return FramedChannel(stream, max_frame_size=self._config.max_frame_size)

    async def aclose(self) -> None:
        """Close the connection, at once."""
        await trio.aclose_forcefully(self._channel)

    async def refuse(self, code: ErrorCode, message: str) -> None:
        """Refuse the connection: wait (briefly) for the client's HELLO, answer it with a
        connection-level ERROR. Never raises, except :exc:`trio.Cancelled`.

        A real client sends its HELLO as soon as it is connected, so the wait for it is short:
        a connection that says nothing must not hold a refusal slot that the next real client
        needs (an idle flood would otherwise turn ``busy`` answers into silent closes).
        """
        with trio.move_on_after(FAREWELL_SECONDS):
            try:
                if await self._open():
                    with trio.fail_after(REFUSAL_HELLO_SECONDS):
                        await self.receive()
                    await self.farewell(code, message)
            except trio.TooSlowError:
                pass  # no HELLO: not a client we can answer
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # gone already: nothing to tell
            except RemoteProtocolError:
                pass  # not a HELLO we could read: closed without a word

    async def _open(self) -> bool:
        """With TLS, do the TLS handshake (or tell a plain client that TLS is required);
        return whether the ftx handshake may follow."""
        context = self._config.ssl_context
        if context is None:
            return True
        try:
            opened = await accept_tls(self._stream, context)
        except trio.BrokenResourceError as exc:
            logger.info("%s: TLS handshake failed: %s", self._peer, exc.__cause__ or exc)
            return False
        if opened is None:
            return False
        stream, secure = opened
        self._channel = self._frame(stream)
        if not secure:
            logger.info("%s: refused: not TLS", self._peer)
            await self.receive()
            message = "this server requires TLS (ftx get --tls)"
            await self.farewell(ErrorCode.TLS_REQUIRED, message)
            return False
        return True

    # Each frame must be taken by the client within the idle period (see _limits). The scope is
    # written out in both senders: a contextmanager costs more than the rest of a small send.

    async def send(self, *messages: _Message) -> None:
        """Send the messages after anything queued, in one write if they are small.

        Raises:
            WriteStalledError: the client accepted no frame within the idle period.
            trio.BrokenResourceError, trio.ClosedResourceError: the connection is gone.
        """
        self._queue(messages)
        await self._flush()

    async def send_soon(self, *messages: _Message) -> None:
        """Queue the messages, to be sent with the answers that follow in the same batch (at
        the latest when the batch is answered): small answers cost one write for many.
        Raises what :meth:`send` does (once the outbox is sent)."""
        self._queue(messages)
        if self._outbox_bytes >= _OUTBOX_BYTES:
            await self._flush()

    def _queue(self, messages: tuple[_Message, ...]) -> None:
        frames = [self._protocol.send(message) for message in messages]
        self._outbox += frames
        self._outbox_bytes += sum(memoryview(part).nbytes for frame in frames for part in frame)

    async def _flush(self) -> None:
        """Send what the outbox holds, then log the answers that were waiting for it."""
        frames, self._outbox, self._outbox_bytes = self._outbox, [], 0
        try:
            if frames:
                with trio.move_on_after(self._config.idle_timeout) as deadline:
                    await self._channel.send_frames(*frames)
                if deadline.cancelled_caught:
                    raise self._stalled()
        except BaseException as exc:
            self._abandon_outbox(exc)
            raise
        records, self._unlogged = self._unlogged, []
        now = trio.current_time()
        for record in records:
            record.log(now)

    def _abandon_outbox(self, exc: BaseException) -> None:
        """The connection failed with ``exc``: what waited in the outbox is lost; say so."""
        self._outbox, self._outbox_bytes = [], 0
        records, self._unlogged = self._unlogged, []
        now = trio.current_time()
        for record in records:
            if record.result == "ok":
                record.result = self._outcome(exc)
            record.log(now)

    async def send_from_file(self, opened: OpenedFile, offset: int, count: int) -> int:
        """Send ``count`` bytes of ``opened`` from ``offset`` as one DATA message (with
        sendfile on plain TCP); return how many the file gave (see FramedChannel.send_file).
        Raises what :meth:`send` does, and :exc:`OSError` when the file cannot be read."""
        if self._outbox:
            await self._flush()
        prefix = self._protocol.send_data_prefix(count)
        with trio.move_on_after(self._config.idle_timeout):
            return await self._channel.send_file(prefix, opened.fd, offset, count)
        raise self._stalled()  # reached only when the deadline cancelled the send

    @property
    def spans_supported(self) -> bool:
        """Whether the connection can be handed to a worker thread now (plain TCP, TLS)."""
        return self._channel.spans_supported

    async def send_span(self, work: Callable[[BlockingSender], T], unit: int) -> T:
        """Run ``work(sender)`` in a worker thread that owns the sending side, after what the
        outbox holds; the client must take ``unit`` bytes (a frame) in every idle period.

        Raises:
            WriteStalledError: the client took too little within the idle period.
            Whatever ``work`` raises; what :meth:`send` raises.
        """
        if self._outbox:
            await self._flush()
        clock = IdleClock(self._config.idle_timeout, unit)
        try:
            return await self._channel.send_span(work, clock)
        except SpanStalledError:
            raise self._stalled() from None

    def _stalled(self) -> WriteStalledError:
        timeout = self._config.idle_timeout
        return WriteStalledError(f"the client accepted no frame for {timeout:g} seconds")

    async def receive(self) -> _Message:
        """The next message from the client, skipping extensions this version ignores.

        Raises:
            trio.EndOfChannel: the client closed the connection.
            RemoteProtocolError: the client broke the protocol (maybe in a request pipelined
                after those being answered: raised once they are).
            trio.BrokenResourceError, trio.ClosedResourceError: the connection is gone.
        """
        if self._deferred_error is not None:
            error, self._deferred_error = self._deferred_error, None
            await trio.lowlevel.checkpoint()
            raise error
        while True:
            message = self._protocol.receive(await self._channel.receive())
            if message is not None:
                return message

    async def farewell(self, code: ErrorCode, message: str, *, before_hello: bool = True) -> None:
        """Tell the client why the connection is being closed, if it can still be told.

        With ``before_hello=False`` nothing is sent to a client whose HELLO has not arrived
        (a server speaks only after the client's HELLO).
        """
        if not before_hello and self._protocol.peer_hello is None:
            return
        with trio.move_on_after(FAREWELL_SECONDS):
            try:
                await self.send(Error(None, code, message))
            except Exception as exc:  # the connection may be long gone: nothing more to do
                logger.debug("%s: could not send the error: %s", self._peer, exc)

    @property
    def features(self) -> frozenset[str]:
        """The features in use: listed in both HELLOs (empty before the handshake)."""
        return self._protocol.features

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    def stop(self, *, now: bool) -> None:
        """Ask the session to end with a connection-level ``shutting-down`` ERROR.

        A session waiting for the handshake or for a request ends at once. One answering a
        request finishes that answer first, unless ``now``: then it stops at the next frame
        boundary, and is cancelled outright if it has not reached one within
        :data:`FAREWELL_SECONDS` (a client that stopped reading).
        """
        self._stopping = True
        if self._waiting is not None:
            self._waiting.cancel()
        if now:
            self._stop_now = True
            if self._working is not None:
                deadline = trio.current_time() + FAREWELL_SECONDS
                self._working.deadline = min(self._working.deadline, deadline)

    @contextmanager
    def _wait(self, seconds: float) -> Iterator[trio.CancelScope]:
        """A scope for waiting on the client: cancelled after ``seconds``, or by :meth:`stop`."""
        with trio.move_on_after(seconds) as scope:
            if self._stopping:
                scope.cancel()
            self._waiting = scope
            try:
                yield scope
            finally:
                self._waiting = None

    async def _stopped(self) -> None:
        logger.info("%s: closing: the server is shutting down", self._peer)
        await self.farewell(
            ErrorCode.SHUTTING_DOWN,
            "the server is shutting down; try again later",
            before_hello=False,
        )

    async def run(self) -> None:
        """Serve the connection until the client closes it, a limit is reached, or the session
        is stopped.

        Raises:
            RemoteProtocolError: the client broke the protocol.
            trio.BrokenResourceError: the connection broke
                (:exc:`~ftx.server._limits.WriteStalledError` when the client stopped reading).
        """
        config = self._config
        handshake_time = config.handshake_timeout
        if self._accepted_at is not None:
            handshake_time += self._accepted_at - trio.current_time()
        with self._wait(max(0.0, handshake_time)) as handshake:
            shaken = await self._handshake()
        if handshake.cancelled_caught:
            if self._stopping:
                await self._stopped()
                return
            logger.info(
                "%s: no handshake within %g s; closing", self._peer, config.handshake_timeout
            )
            message = f"no handshake within {config.handshake_timeout:g} seconds"
            await self.farewell(ErrorCode.TIMEOUT, message, before_hello=False)
            return
        if not shaken:
            return
        chunk = min(config.chunk_size, self._protocol.peer_max_frame_size - 1)
        if config.limit_rate is not None:  # a frame a second at most: the client sees progress
            chunk = min(chunk, config.limit_rate)
        while not self._stopping:
            with self._wait(config.idle_timeout) as idle:
                try:
                    request = await self.receive()
                except trio.EndOfChannel:
                    return
            if idle.cancelled_caught:
                if self.stopping:  # (a property: stop() may have run while we waited)
                    break
                logger.info("%s: no request for %g s; closing", self._peer, config.idle_timeout)
                message = f"no request for {config.idle_timeout:g} seconds"
                await self.farewell(ErrorCode.TIMEOUT, message)
                return
            batch = [request, *self._pipelined_requests(request)]
            with trio.CancelScope() as self._working:
                try:
                    if not self._stop_now:
                        await self._downloads.prepare([r for r in batch if isinstance(r, Get)])
                        for queued in batch:
                            await self._answer(queued, chunk)
                            if self.stopping:  # (stop() may have run during the answer)
                                break  # the answer in progress is finished: stop there
                        await self._flush()
                except _StoppedError:
                    pass  # _stopped's farewell sends what the outbox holds, then the error
                except BaseException as exc:
                    self._abandon_outbox(exc)
                    raise
                finally:
                    self._working = None
                    self._downloads.release_prepared()
        await self._stopped()

    def _pipelined_requests(self, first: _Message) -> list[_Message]:
        """The requests the client pipelined after ``first`` that have arrived already, up to
        a batch: GETs, then at most one other request (after which the client may be waiting
        for an answer before it sends more, e.g. an upload's DATA after READY)."""
        more: list[_Message] = []
        last = first
        while isinstance(last, Get) and len(more) < MAX_BATCH - 1:
            try:
                message = self._protocol.receive(self._channel.receive_nowait())
            except trio.WouldBlock:
                break
            except RemoteProtocolError as exc:
                # The requests before it were valid: they are answered first, as they would
                # be had the bad frame come in a later segment; the next receive raises this.
                self._deferred_error = exc
                break
            if message is not None:
                more.append(message)
                last = message
        return more

    async def _answer(self, request: _Message, chunk: int) -> None:
        """Answer one request, and log it in the access log however the answer ends."""
        if not isinstance(
            request, Get | ListDir | Put | MakeDir | Blocks | TreeGet | TreePut
        ):  # pragma: no cover
            return
        record = AccessRecord(self._peer, _verb(request), request.path, trio.current_time())
        try:
            if isinstance(request, Get | ListDir):
                await self._downloads.answer(request, record, chunk)
            elif isinstance(request, Blocks):
                await self._blocks.answer(request, record)
            elif isinstance(request, TreeGet):
                peer_limit = self._protocol.peer_max_frame_size
                await self._trees.answer(request, record, chunk, peer_limit)
            elif isinstance(request, TreePut):
                peer_limit = self._protocol.peer_max_frame_size
                await self._tree_puts.answer(request, record, peer_limit)
            else:
                await self._uploads.answer(request, record)
        except BaseException as exc:
            record.result = self._outcome(exc)
            raise
        finally:
            if self._outbox:  # (some of) the answer waits there: logged once it has gone
                self._unlogged.append(record)
            else:
                record.log(trio.current_time())

    def _outcome(self, exc: BaseException) -> str:
        """The access-log result of an answer cut short by ``exc``."""
        match exc:
            case _StoppedError():
                return ErrorCode.SHUTTING_DOWN
            case trio.Cancelled():
                return ErrorCode.SHUTTING_DOWN if self._stop_now else "cancelled"
            case WriteStalledError():
                return ErrorCode.TIMEOUT
            case trio.BrokenResourceError() | trio.ClosedResourceError() | IncompleteFrameError():
                return "lost"  # (the stream ended inside a frame: the client vanished)
            case RemoteProtocolError():
                return ErrorCode.BAD_REQUEST  # the client broke the protocol: told so
        return ErrorCode.INTERNAL

    def check_stop(self) -> None:
        """Called at frame boundaries inside an answer: raises ``_StoppedError`` once
        :meth:`stop` asked to stop ``now``."""
        if self._stop_now:
            raise _StoppedError

    async def _handshake(self) -> bool:
        """Receive the client's HELLO and answer it; return whether requests may follow."""
        if not await self._open():
            return False
        try:
            await self.receive()  # HELLO: the protocol accepts nothing else first
        except trio.EndOfChannel:
            return False
        if self._protocol.version is None:
            versions = ", ".join(map(str, SUPPORTED_VERSIONS))
            await self.farewell(
                ErrorCode.UNSUPPORTED_VERSION, f"this server speaks protocol version {versions}"
            )
            return False
        if self._protocol.auth.refused:
            logger.warning("%s: refused: the client has no token", self._peer)
            message = "this server requires a token (ftx get --token-file FILE, or FTX_TOKEN)"
            await self.farewell(ErrorCode.UNAUTHORIZED, message)
            return False
        await self.send(self._protocol.hello_reply())
        return self._protocol.auth.done or await self._authenticate()

    async def _authenticate(self) -> bool:
        """Challenge the client to prove it knows the token; return whether it did. A failure
        is logged and answered ``unauthorized`` after :data:`AUTH_FAILURE_DELAY` seconds."""
        await self.send(self._protocol.auth.challenge())
        try:
            await self.receive()  # AUTH: the protocol accepts nothing else now
        except trio.EndOfChannel:
            return False
        if self._protocol.auth.rejected:
            logger.warning("%s: authentication failed: wrong token", self._peer)
            await trio.sleep(AUTH_FAILURE_DELAY)
            await self.farewell(ErrorCode.UNAUTHORIZED, "wrong token")
            return False
        await self.send(self._protocol.auth.ok())
        return True


class _StoppedError(FtxError):
    """The session was stopped in the middle of an answer, at a frame boundary."""


_Request = Get | ListDir | Put | MakeDir | Blocks | TreeGet | TreePut


def _verb(request: _Request) -> str:
    verbs = {
        Get: "GET",
        ListDir: "LIST",
        Put: "PUT",
        MakeDir: "MKDIR",
        Blocks: "BLOCKS",
        TreeGet: "TREE",
        TreePut: "TREE_PUT",
    }
    return verbs[type(request)]
