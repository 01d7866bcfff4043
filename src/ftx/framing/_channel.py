"""The trio half of :mod:`ftx.framing`: :class:`FramedChannel`, frames over any
:class:`trio.abc.Stream`, with the fast paths of plain TCP (direct non-blocking reads and
writes, ``recv_into``, ``sendfile``).

Writing is :class:`~ftx.framing._writer.FrameWriter`'s job, reading (into the decoder, or
straight into a caller's buffer) :mod:`~ftx.framing._reader`'s, the worker-thread side of a
span :mod:`~ftx.framing._blocking`'s and :mod:`~ftx.framing._tls_span`'s; this module holds
the channel's contract. It is longer than our other modules (about 630 lines) on purpose: the
sending, receiving and span paths share one object's state (who is sending or receiving, a
span in progress, why the channel broke), and the rules that tie them are easier to check in
one place than across modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final, TypeVar

import trio

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing._blocking import BlockingReceiver, BlockingSender, IdleClock, Wakeup, run_span
from ftx.framing._decoder import FrameDecoder
from ftx.framing._format import (
    DEFAULT_MAX_FRAME_SIZE,
    FTX_FORMAT,
    Buffer,
    FrameFormat,
    check_max_frame_size,
)
from ftx.framing._reader import MAX_RECEIVE_SIZE, read_frame, receive_into
from ftx.framing._socket_io import write_some
from ftx.framing._tls_span import TlsSpanReceiver, TlsSpanSender, TlsSpanState, tls_span_state
from ftx.framing._writer import JOIN_THRESHOLD, FrameWriter, encode_frames

__all__ = ["DEFAULT_SEND_BUFFER_SIZE", "FramedChannel"]

DEFAULT_SEND_BUFFER_SIZE: Final = 64 * 1024

T = TypeVar("T")


class FramedChannel(trio.abc.Channel[bytes]):
    """A :class:`trio.abc.Channel` of frame payloads over a :class:`trio.abc.Stream`.

    ``await send(payload)`` writes one frame; ``await receive()`` returns one payload; ``async
    for payload in channel`` reads until the peer closes. One task may send while another
    receives; two tasks sending (or two receiving) at once get :exc:`trio.BusyResourceError`.
    ``send_nowait`` queues frames in a bounded buffer that ``flush`` (or the next ``send``)
    writes with one system call.

    Cancellation: a cancelled :meth:`receive` loses nothing (bytes already read stay in the
    decoder). A :meth:`send` cancelled before it could start raises :exc:`trio.Cancelled`, sent
    nothing and leaves the channel usable; on a :class:`trio.SocketStream`, so does one
    cancelled while waiting for the kernel to take its frame's first byte. Once that byte is
    written the frame is committed: a cancellation then lets ``send`` return, the rest of the
    frame kept in the pending buffer to go out first with the next ``send``, ``flush`` or
    ``send_eof``. On any other stream a cancellation in the middle of a write breaks the
    channel, as :class:`trio.SSLStream` does: every later call raises
    :exc:`trio.BrokenResourceError`.

    Args:
        transport_stream: the byte stream to frame. It belongs to the channel from now on:
            closing the channel closes it.
        max_frame_size: the largest payload this side accepts and agrees to send, in bytes.
        receive_chunk_size: the least this channel asks the transport for in one read.
        frame_format: the header's layout (:data:`~ftx.framing.FTX_FORMAT` by default).
        send_buffer_size: the most bytes :meth:`send_nowait` queues (headers included).
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        receive_chunk_size: int = 64 * 1024,
        frame_format: FrameFormat = FTX_FORMAT,
        send_buffer_size: int = DEFAULT_SEND_BUFFER_SIZE,
    ) -> None:
        if receive_chunk_size < 1:
            raise ValueError("receive_chunk_size must be at least 1")
        if send_buffer_size < 0:
            raise ValueError("send_buffer_size must not be negative")
        self.transport_stream: Final = transport_stream
        self.max_frame_size: Final = check_max_frame_size(max_frame_size, frame_format)
        self.frame_format: Final = frame_format
        self._receive_chunk_size = min(receive_chunk_size, MAX_RECEIVE_SIZE)
        self._decoder = FrameDecoder(max_frame_size=max_frame_size, frame_format=frame_format)
        self._writer = FrameWriter(transport_stream, send_buffer_size)
        self._socket = self._writer.socket
        # Formats of ftx's shape (see FrameFormat.length_unpacker) take send's fast path, where
        # the length field is the payload's size, packed without further checks (the size is
        # checked against max_frame_size, which the field can always announce).
        self._fast_send = frame_format.length_unpacker() is not None
        self._pack_length = frame_format.length_packer()
        self._sending = False
        self._receiving = False
        self._eof_sent = False
        self._closed = False
        # Why the channel broke: a failed send breaks both directions (the stream's state is
        # unknown); a framing error in what was received breaks only receiving, so that the
        # receiver can still tell its peer what went wrong before closing (as h11 allows).
        self._broken: BaseException | None = None
        self._receive_broken: BaseException | None = None
        # While a thread span drives the TLS session (both directions: see _tls_span), the
        # other direction's calls wait for this event, and aclose wakes the thread first.
        self._tls_span_done: trio.Event | None = None
        self._tls_span_wakeup: Wakeup | None = None

    async def _wait_for_tls_span(self) -> None:
        """Wait until no TLS span owns the stream (a checkpoint only if one does)."""
        while (done := self._tls_span_done) is not None:
            await done.wait()

    # --- sending ------------------------------------------------------------------------------

    def _check_usable(self, *, receiving: bool = False) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this channel was closed")
        cause = self._broken or self._writer.broken
        if cause is None and receiving:
            cause = self._receive_broken
        if cause is not None:
            raise trio.BrokenResourceError("this channel is broken") from cause

    def _start_sending(self) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this channel")
        self._check_usable()
        if self._eof_sent:
            raise trio.ClosedResourceError("this channel already sent its end of stream")

    def _frame(self, value: Buffer) -> tuple[list[Buffer], int]:
        """The writes of one frame carrying ``value``, and their size.

        Raises:
            LocalProtocolError: the receiver would get more than ``max_frame_size`` bytes.
        """
        fmt = self.frame_format
        size = len(value) if type(value) is bytes else memoryview(value).nbytes
        payload = fmt.sent_payload_size(size)
        if payload > self.max_frame_size or payload < 0:
            raise LocalProtocolError(
                f"a frame of {payload} bytes is larger than the limit of "
                f"{self.max_frame_size} bytes"
            )
        if fmt.length_offset:
            frame = fmt.encode(value)
            return [frame], len(frame)
        if type(value) is not bytes and not memoryview(value).c_contiguous:
            value = bytes(value)
        header = fmt.encode_length(size)
        if size <= JOIN_THRESHOLD:
            return [header + value], len(header) + size
        return [header, value], len(header) + size

    async def _write(
        self, data: Sequence[Buffer], size: int, *, written: int = 0, checked: bool = False
    ) -> None:
        """Write ``data`` after the pending bytes (its first ``written`` bytes went already,
        and cancellation was ``checked``): a checkpoint, with the channel's cancellation rules
        (see the class)."""
        self._sending = True
        try:
            if not checked:
                await trio.lowlevel.checkpoint_if_cancelled()
            try:
                waited = await self._writer.write(data, size, written)
            except trio.Cancelled:
                raise  # the writer has decided whether this broke the channel
            except BaseException as exc:
                if not self._closed:
                    self._broken = exc
                raise
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def send(self, value: Buffer) -> None:
        """Send ``value`` as one frame, after any frames queued by :meth:`send_nowait`. ``b""``
        sends an empty frame. It returns once the kernel (or the transport) has taken the
        frame. If it raises :exc:`trio.Cancelled` and the channel is not broken, nothing of the
        frame was sent (see the class for the rules).

        Raises:
            LocalProtocolError: ``value`` is longer than ``max_frame_size``; nothing was sent and
                the channel stays usable.
            trio.BusyResourceError: another task is sending on this channel.
            trio.BrokenResourceError: the channel or its transport is broken.
            trio.ClosedResourceError: the channel was closed, or sent its end of stream.
        """
        sock = self._socket
        if (
            type(value) is bytes
            and sock is not None
            and self._fast_send
            and not (self._sending or self._writer.pending or self._writer.broken or self._broken)
            and len(value) <= JOIN_THRESHOLD
            and len(value) <= self.max_frame_size
        ):
            # The fast path: a small frame on a socket, nothing pending. One system call; the
            # kernel takes it at once unless the peer is slow to read.
            frame = self._pack_length(len(value)) + value
            self._sending = True
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                self._sending = False
                raise
            try:
                written = write_some(sock, (frame,))
                if written == len(frame):
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return
            except BaseException as exc:
                if not self._closed:
                    self._broken = exc
                raise
            finally:
                self._sending = False
            await self._write((frame,), len(frame), written=written, checked=True)
            return
        if self._tls_span_done is not None:
            await self._wait_for_tls_span()
        self._start_sending()
        try:
            data, size = self._frame(value)
        except LocalProtocolError:
            await trio.lowlevel.checkpoint()  # every path through send is a checkpoint
            raise
        await self._write(data, size)

    def send_nowait(self, value: Buffer) -> None:
        """Queue ``value`` as one frame in the send buffer, without I/O and without a
        checkpoint. The frames queued go out, in order and with one system call, at the next
        :meth:`send`, :meth:`flush`, :meth:`send_frames` (or any other send) or
        :meth:`send_eof`; **not** by themselves: flush before waiting for the peer.

        Raises:
            trio.WouldBlock: the frame would take the queued bytes (headers included) past
                ``send_buffer_size``; nothing was queued. Flush, or ``await send(value)``.
            LocalProtocolError, trio.BusyResourceError, trio.BrokenResourceError,
                trio.ClosedResourceError: as for :meth:`send`.
        """
        self._start_sending()
        data, size = self._frame(value)
        self._writer.queue(data, size)

    async def flush(self) -> None:
        """Write every frame queued by :meth:`send_nowait`; a checkpoint. Cancelled, it keeps
        what is left for the next send (on a :class:`trio.SocketStream`; on any other stream a
        cancelled write breaks the channel).

        Raises:
            trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError: as for
                :meth:`send`.
        """
        if self._tls_span_done is not None:
            await self._wait_for_tls_span()
        self._start_sending()
        await self._write([], 0)

    @property
    def send_buffer_size(self) -> int:
        """The most bytes :meth:`send_nowait` queues (headers included)."""
        return self._writer.buffer_size

    @property
    def pending_bytes(self) -> int:
        """Bytes queued or committed and not yet written: 0 after a completed send or flush."""
        return len(self._writer.pending)

    async def send_parts(self, *parts: Buffer) -> None:
        """Send one frame whose payload is the concatenation of ``parts``, without joining them.

        Small parts are joined with the header into one write; large ones are written as they
        are, so a file chunk in a reused buffer is never copied. Raises as :meth:`send` does.
        """
        await self.send_frames(parts)

    async def send_frames(self, *frames: Iterable[Buffer]) -> None:
        """Send several frames, each given as its parts (as for :meth:`send_parts`), in as few
        writes as possible: small frames sent together cost one system call, and reach the
        peer together. Raises as :meth:`send` does; if one frame is too large, none is sent.
        """
        if self._tls_span_done is not None:
            await self._wait_for_tls_span()
        self._start_sending()
        try:
            writes, size = encode_frames(self.frame_format, self.max_frame_size, frames)
        except LocalProtocolError:
            await trio.lowlevel.checkpoint()  # every path through send is a checkpoint
            raise
        await self._write(writes, size)

    async def send_file(self, prefix: Buffer, fd: int, offset: int, count: int) -> int:
        """Send one frame whose payload is ``prefix`` followed by ``count`` bytes of the open
        file ``fd`` from ``offset``; return how many of them came from the file.

        On a plain TCP stream (:class:`trio.SocketStream`) the file's bytes go with
        :func:`os.sendfile`, from the page cache to the socket without passing through Python;
        on any other stream (TLS included) they are read in a worker thread and sent. If the
        file ends first (it was truncated meanwhile), the frame is completed with zero bytes,
        so that the framing holds: the return value is then less than ``count`` and the caller
        must tell its peer that the content is wrong. Frames queued by :meth:`send_nowait` go
        first. A cancelled or failed ``send_file`` breaks the channel.

        Raises:
            OSError: the file could not be read; part of the frame may have gone out, so the
                channel is broken.
            LocalProtocolError, trio.BusyResourceError, trio.BrokenResourceError,
                trio.ClosedResourceError: as for :meth:`send` (``LocalProtocolError`` also for
                a negative ``offset`` or ``count``, or a format with a prefix).
        """
        if self._tls_span_done is not None:
            await self._wait_for_tls_span()
        self._start_sending()
        size = memoryview(prefix).nbytes + count
        fmt = self.frame_format
        if count < 0 or offset < 0 or fmt.length_offset:
            await trio.lowlevel.checkpoint()
            raise LocalProtocolError(f"cannot send {count} bytes from offset {offset} here")
        if fmt.sent_payload_size(size) > self.max_frame_size:
            await trio.lowlevel.checkpoint()
            raise LocalProtocolError(
                f"a frame of {size} bytes is larger than the limit of {self.max_frame_size} bytes"
            )
        head = fmt.encode_length(size) + bytes(prefix)
        self._sending = True
        try:
            return await self._writer.write_file(head, fd, offset, count)
        except BaseException as exc:
            if not self._closed:
                self._broken = exc
            raise
        finally:
            self._sending = False

    # --- receiving ----------------------------------------------------------------------------

    async def receive(self) -> bytes:
        """Wait for the next frame and return its payload. A frame already received costs no
        read from the transport, only a checkpoint.

        Raises:
            trio.EndOfChannel: the peer closed the stream cleanly, on a frame boundary (raised
                again on every later call).
            FrameTooLargeError: the peer announced a frame over ``max_frame_size``.
            IncompleteFrameError: the stream ended inside a frame.
            RemoteProtocolError: a header announced a length too short for the format.

        After any of these three, ``receive`` raises :exc:`trio.BrokenResourceError`, but
        ``send`` still works, so that the peer can be told why the connection is being closed.
            trio.BusyResourceError: another task is receiving on this channel.
            trio.BrokenResourceError: the channel or its transport is broken.
            trio.ClosedResourceError: the channel was closed.
        """
        if self._tls_span_done is not None and not self._receiving:
            await self._wait_for_tls_span()
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this channel")
        self._check_usable(receiving=True)
        self._receiving = True
        try:
            # The checkpoint comes before a frame is taken from the decoder, so a cancellation
            # never loses one.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                payload = self._decoder.next_frame()
            except RemoteProtocolError as exc:
                self._receive_broken = exc
                raise
            if payload is None:
                try:
                    return await read_frame(
                        self._decoder, self.transport_stream, self._receive_chunk_size
                    )
                except RemoteProtocolError as exc:
                    self._receive_broken = exc
                    raise
            await trio.lowlevel.cancel_shielded_checkpoint()
            return payload
        finally:
            self._receiving = False

    def receive_nowait(self) -> bytes:
        """Return the next frame's payload if it has arrived whole already, without reading
        from the transport (as :meth:`trio.MemoryReceiveChannel.receive_nowait` does): a
        receiver can take the requests a peer pipelined, as a batch.

        Raises:
            trio.WouldBlock: no whole frame is buffered (also at the end of the stream: then
                :meth:`receive` raises what it raises).
            RemoteProtocolError, trio.BusyResourceError, trio.BrokenResourceError,
                trio.ClosedResourceError: as for :meth:`receive`.
        """
        writer_broken = self._writer.broken
        if self._receiving or self._closed or self._broken or self._receive_broken or writer_broken:
            if self._receiving:
                raise trio.BusyResourceError("another task is already receiving on this channel")
            self._check_usable(receiving=True)
        try:
            payload = self._decoder.next_frame()
        except RemoteProtocolError as exc:
            self._receive_broken = exc
            raise
        if payload is None:
            raise trio.WouldBlock
        return payload

    async def receive_into(self, buffer: bytearray | memoryview) -> int:
        """Wait for the next frame, put its payload at the start of ``buffer`` and return its
        size: :meth:`receive` without a new ``bytes`` per frame.

        On a plain TCP stream (:class:`trio.SocketStream`) most of the payload is read from the
        socket straight into ``buffer``, so a large frame costs one copy and no allocation.
        ``buffer`` must be writable and hold at least ``max_frame_size`` bytes; past the
        payload, its contents are unspecified. A cancelled call loses nothing, as for
        :meth:`receive` (the next call returns the same frame).

        Raises:
            ValueError: ``buffer`` is read-only or smaller than ``max_frame_size``.
            trio.EndOfChannel, RemoteProtocolError, trio.BusyResourceError,
                trio.BrokenResourceError, trio.ClosedResourceError: as for :meth:`receive`.
        """
        view = memoryview(buffer).cast("B")
        if view.readonly:
            raise ValueError("the buffer is read-only")
        if view.nbytes < self.max_frame_size:
            raise ValueError(
                f"a buffer of {view.nbytes} bytes cannot hold a frame of up to "
                f"{self.max_frame_size} bytes"
            )
        if self._tls_span_done is not None and not self._receiving:
            await self._wait_for_tls_span()
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this channel")
        self._check_usable(receiving=True)
        self._receiving = True
        try:
            return await receive_into(
                self._decoder, self.transport_stream, view, self._receive_chunk_size
            )
        except RemoteProtocolError as exc:
            self._receive_broken = exc
            raise
        finally:
            self._receiving = False

    # --- thread spans (plain TCP, TLS) ------------------------------------------------------

    @property
    def spans_supported(self) -> bool:
        """Whether :meth:`receive_span` and :meth:`send_span` work here now: on plain TCP
        always; over a :class:`trio.SSLStream` on TCP when its internals are the ones checked
        and it is idle (no other task sending or receiving; see ``_tls_span``). A caller that
        checks this and calls a span without a checkpoint in between gets the span."""
        if isinstance(self.transport_stream, trio.SocketStream):
            return True
        return self._tls_state() is not None

    def _tls_state(self) -> TlsSpanState | None:
        if self._sending or self._receiving or self._tls_span_done is not None or self._closed:
            return None
        return tls_span_state(self.transport_stream)

    def _span_tls_state(self) -> TlsSpanState | None:
        """``None`` for plain TCP, the TLS state for a TLS span.

        Raises:
            TypeError: neither (see :attr:`spans_supported`).
        """
        stream = self.transport_stream
        if isinstance(stream, trio.SocketStream):
            return None
        state = self._tls_state()
        if state is None:
            raise TypeError(f"{type(stream).__name__} cannot be handed to a thread span now")
        return state

    async def _run_tls_span(self, work: Callable[[Wakeup], T]) -> T:
        """Run a TLS span: the other direction's calls wait until it ends."""
        self._tls_span_done = done = trio.Event()
        self._tls_span_wakeup = wakeup = Wakeup()
        try:
            return await run_span(work, wakeup)
        finally:
            self._tls_span_wakeup = None  # (closed by run_span)
            self._tls_span_done = None
            done.set()

    async def receive_span(self, work: Callable[[BlockingReceiver], T], clock: IdleClock) -> T:
        """Run ``work(receiver)`` in a worker thread that owns the receiving side meanwhile:
        ``receiver.receive_into`` blocks there (GIL released) through this channel's decoder,
        so nothing buffered is lost either way. Cancelled, the thread is woken and waited for
        (see :func:`~ftx.framing._blocking.run_span`); the channel then stays at a frame
        boundary (a payload cut short goes back to the decoder), unless ``work`` had taken
        part of a frame with ``receiver.read_payload_into``: then receiving here is broken.
        Over TLS the thread owns the TLS session (a
        :class:`~ftx.framing._tls_span.TlsSpanReceiver`), and sends on this channel wait until
        the span ends.

        Raises:
            TypeError: no span here now (see :attr:`spans_supported`).
            Whatever ``work`` raises; trio.BusyResourceError, trio.BrokenResourceError,
                trio.ClosedResourceError as for :meth:`receive`.
        """
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this channel")
        self._check_usable(receiving=True)
        tls = self._span_tls_state()
        stream = self.transport_stream
        self._receiving = True
        chunk_size = self._receive_chunk_size

        def run(wakeup: Wakeup) -> T:
            receiver = (
                BlockingReceiver(self._decoder, stream.socket, wakeup, clock, chunk_size)
                if tls is None and isinstance(stream, trio.SocketStream)
                else TlsSpanReceiver(self._decoder, _present(tls), wakeup, clock, chunk_size)
            )
            try:
                return work(receiver)
            finally:
                receiver.close()
                if receiver.mid_frame:  # the rest of a frame handed out in part is unreadable
                    stopped.append(receiver)

        stopped: list[BlockingReceiver] = []
        try:
            return await (run_span(run) if tls is None else self._run_tls_span(run))
        except RemoteProtocolError as exc:
            self._receive_broken = exc
            raise
        finally:
            self._receiving = False
            if stopped and self._receive_broken is None:
                self._receive_broken = trio.BrokenResourceError(
                    "a receive span stopped inside a frame"
                )

    async def send_span(self, work: Callable[[BlockingSender], T], clock: IdleClock) -> T:
        """Run ``work(sender)`` in a worker thread that owns the sending side meanwhile, after
        the frames queued here are written. A span that stops inside a frame (cancelled,
        stalled, failed) breaks the channel. Over TLS the thread owns the TLS session (a
        :class:`~ftx.framing._tls_span.TlsSpanSender`: no ``sendfile``), and receives on this
        channel wait until the span ends.

        Raises:
            TypeError: no span here now (see :attr:`spans_supported`).
            Whatever ``work`` raises; trio.BusyResourceError, trio.BrokenResourceError,
                trio.ClosedResourceError as for :meth:`send`.
        """
        if self._tls_span_done is not None:
            await self._wait_for_tls_span()
        self._start_sending()
        if self._writer.pending:
            await self._write([], 0)
            self._start_sending()
        tls = self._span_tls_state()
        stream = self.transport_stream
        self._sending = True
        senders: list[BlockingSender] = []

        def run(wakeup: Wakeup) -> T:
            sender = (
                BlockingSender(stream.socket, wakeup, clock)
                if tls is None and isinstance(stream, trio.SocketStream)
                else TlsSpanSender(_present(tls), wakeup, clock)
            )
            senders.append(sender)
            try:
                return work(sender)
            finally:
                sender.close()

        try:
            return await (run_span(run) if tls is None else self._run_tls_span(run))
        except BaseException as exc:
            if senders and senders[0].mid_frame and not self._closed:
                self._broken = exc
            raise
        finally:
            self._sending = False

    # --- closing ------------------------------------------------------------------------------

    async def send_eof(self) -> None:
        """Write the queued frames, then close the sending direction only: the peer's
        ``receive`` raises ``EndOfChannel`` once it has taken every frame, and this side can
        go on receiving.

        Raises:
            TypeError: the transport cannot half-close (:class:`trio.SSLStream` cannot).
            trio.BusyResourceError: another task is sending on this channel.
            trio.BrokenResourceError, trio.ClosedResourceError: as for :meth:`send`.
        """
        if not isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            raise TypeError(f"{type(self.transport_stream).__name__} cannot half-close")
        if self._tls_span_done is not None:
            await self._wait_for_tls_span()
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this channel")
        self._check_usable()
        if self._eof_sent:
            await trio.lowlevel.checkpoint()  # idempotent, as the transport's
            return
        await self._write([], 0)
        self._sending = True
        try:
            await self.transport_stream.send_eof()
            self._eof_sent = True
            self._fast_send = False
        finally:
            self._sending = False

    async def aclose(self) -> None:
        """Close the channel and its transport. Idempotent; closes even if cancelled.

        Bytes still pending (frames queued by :meth:`send_nowait` and not flushed, or the rest
        of a frame whose ``send`` was cancelled) are written if the socket takes them at once,
        and dropped otherwise: flush first to be sure they go. Tasks blocked in :meth:`send`
        or :meth:`receive` wake with :exc:`trio.ClosedResourceError` (raised by the transport).
        """
        if not self._closed:
            self._closed = True
            self._fast_send = False
            self._writer.flush_nowait()
        if self._tls_span_wakeup is not None:
            # A thread drives the TLS session: stop it (it returns within milliseconds) before
            # the stream is closed under it.
            self._tls_span_wakeup.set()
        if self._tls_span_done is not None:
            with trio.CancelScope(shield=True):
                await self._wait_for_tls_span()
        await self.transport_stream.aclose()


def _present(state: TlsSpanState | None) -> TlsSpanState:
    assert state is not None
    return state
