"""Length-prefixed frames over any byte stream.

Wire format::

    frame   = length payload
    length  = 4 octets, unsigned, big-endian: the number of payload octets (header excluded)
    payload = length octets (zero is allowed)

Two layers, in the h11 style:

* :class:`FrameDecoder` is sans-IO: feed it bytes with :meth:`~FrameDecoder.receive_data`, pull
  whole payloads with :meth:`~FrameDecoder.next_frame`. It never touches a socket, so it can be
  fuzzed and reused on any transport.
* :class:`FramedChannel` is a :class:`trio.abc.Channel` of ``bytes`` over any
  :class:`trio.abc.Stream` (TCP, :class:`trio.SSLStream`, memory streams, pipes): one ``send`` is
  one frame, one ``receive`` is one frame.

The receiver enforces ``max_frame_size`` (1 MiB by default) the moment a header arrives, before
any of the body is buffered, so a peer cannot make us allocate more than that per connection.

This module imports nothing of ftx but :mod:`ftx.errors`.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import trio

from ftx.errors import FrameTooLargeError, IncompleteFrameError, LocalProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_SIZE_LIMIT",
    "HEADER_SIZE",
    "Buffer",
    "FrameDecoder",
    "FramedChannel",
    "encode_frame",
    "encode_header",
]

HEADER_SIZE: Final = 4
DEFAULT_MAX_FRAME_SIZE: Final = 1 << 20
FRAME_SIZE_LIMIT: Final = (1 << 32) - 1
# Below this, a frame is joined with its header into one write: two tiny writes on a TCP_NODELAY
# socket would cost two segments. Above it, copying the payload costs more than a second write.
_JOIN_THRESHOLD: Final = 16 * 1024
# Never ask the transport for more than this in one receive_some: the buffer is allocated up front.
_MAX_RECEIVE_SIZE: Final = 1 << 20

_HEADER: Final = struct.Struct(">I")
# Received pieces smaller than this are copied together rather than kept one by one.
_SMALL_PIECE: Final = 64 * 1024

Buffer = bytes | bytearray | memoryview


def _check_max_frame_size(max_frame_size: int) -> int:
    if not 0 <= max_frame_size <= FRAME_SIZE_LIMIT:
        raise ValueError(f"max_frame_size must be between 0 and {FRAME_SIZE_LIMIT}")
    return max_frame_size


def encode_header(length: int) -> bytes:
    """Return the 4-byte header announcing a payload of ``length`` bytes.

    Raises:
        LocalProtocolError: ``length`` is negative or does not fit in 32 bits.
    """
    if not 0 <= length <= FRAME_SIZE_LIMIT:
        raise LocalProtocolError(f"a frame cannot carry {length} bytes")
    return _HEADER.pack(length)


def encode_frame(payload: Buffer, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Return header and payload joined: the bytes of one frame.

    Raises:
        LocalProtocolError: the payload is longer than ``max_frame_size``.
    """
    size = memoryview(payload).nbytes
    if size > max_frame_size:
        raise LocalProtocolError(
            f"a frame of {size} bytes is larger than the limit of {max_frame_size} bytes"
        )
    return encode_header(size) + bytes(payload)


class FrameDecoder:
    """Turns a byte stream into frame payloads. Sans-IO: bytes in, frames out.

    Feed what the transport delivers to :meth:`receive_data` (``b""`` for end of stream), then
    call :meth:`next_frame` until it returns ``None``. Once it has raised, the decoder is dead and
    raises the same error again on every later call.
    """

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size: Final = _check_max_frame_size(max_frame_size)
        # What was received and not yet returned, as the transport delivered it: kept as a list
        # of pieces so that a payload costs one copy (the join), not one per buffer operation.
        self._pieces: deque[memoryview] = deque()
        self._tail = bytearray()  # small receives not yet moved to _pieces
        self._buffered = 0
        self._payload_size: int | None = None  # set once the current frame's header is read
        # Payload bytes of the current frame already handed out by _take_payload_into or read
        # by the channel straight into its caller's buffer (see FramedChannel.receive_into).
        self._payload_taken = 0
        self._eof = False
        self._error: Exception | None = None

    def receive_data(self, data: Buffer) -> None:
        """Add bytes received from the peer; ``b""`` means the peer closed its side.

        ``bytes`` are kept as they are, without a copy; anything mutable is copied.

        Raises:
            RuntimeError: data arrived after end of stream was reported.
        """
        if self._eof:
            raise RuntimeError("received data after end of stream")
        size = memoryview(data).nbytes
        if size == 0:
            self._eof = True
        elif self._error is None:
            if size < _SMALL_PIECE:
                # Bytes that trickle in are gathered, so that a peer sending one byte per
                # segment costs about a byte of memory per byte, not a buffer object.
                self._tail += data
                if len(self._tail) >= _SMALL_PIECE:
                    self._flush_tail()
            else:
                self._flush_tail()
                self._pieces.append(memoryview(data if isinstance(data, bytes) else bytes(data)))
            self._buffered += size

    def _flush_tail(self) -> None:
        if self._tail:
            self._pieces.append(memoryview(bytes(self._tail)))
            self._tail.clear()

    def next_frame(self) -> bytes | None:
        """Return the next complete payload, or ``None`` when more bytes are needed.

        ``None`` is also returned after a clean end of stream (check :attr:`eof`).

        Raises:
            FrameTooLargeError: a header announced more than ``max_frame_size`` bytes. Raised as
                soon as the 4 header bytes are in, whatever follows them.
            IncompleteFrameError: the stream ended inside a header or a payload.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame()
        except (FrameTooLargeError, IncompleteFrameError) as exc:
            self._fail(exc)
            raise

    def _next_frame(self) -> bytes | None:
        size = self._read_header()
        if size is None:
            return None
        if self._payload_taken:
            raise RuntimeError("the frame in progress is being read into a buffer")
        if self._buffered < size:
            self._check_not_cut_short()
            return None
        self._payload_size = None
        return self._take(size)

    def _read_header(self) -> int | None:
        """Return the payload size of the frame in progress, reading its header if need be, or
        ``None`` if the header is not all in yet."""
        if self._payload_size is None:
            if self._buffered < HEADER_SIZE:
                if self._eof and self._buffered:
                    raise IncompleteFrameError(self._buffered, HEADER_SIZE)
                return None
            (size,) = _HEADER.unpack(self._take(HEADER_SIZE))
            if size > self.max_frame_size:
                raise FrameTooLargeError(size, self.max_frame_size)
            self._payload_size = size
        return self._payload_size

    def _check_not_cut_short(self) -> None:
        if self._eof and self._payload_size is not None:
            done = self._payload_taken + self._buffered
            raise IncompleteFrameError(HEADER_SIZE + done, HEADER_SIZE + self._payload_size)

    # The three methods below let FramedChannel.receive_into put a payload straight into its
    # caller's buffer, reading most of it from the socket without going through the decoder.
    # They keep the decoder's errors sticky, as next_frame does.

    def _start_frame(self) -> int | None:
        """Like :meth:`next_frame`, but only read the header: return the payload size."""
        if self._error is not None:
            raise self._error
        try:
            return self._read_header()
        except (FrameTooLargeError, IncompleteFrameError) as exc:
            self._fail(exc)
            raise

    def _take_payload_into(self, view: memoryview) -> int:
        """Move the buffered bytes of the frame in progress (at most ``view.nbytes``) into
        ``view``; return how many."""
        assert self._payload_size is not None
        count = min(view.nbytes, self._buffered, self._payload_size - self._payload_taken)
        if count:
            view[:count] = self._take(count)
        self._payload_read(count)  # even 0: that completes an empty frame
        return count

    def _payload_read(self, count: int) -> None:
        """Count ``count`` more bytes of the frame in progress as delivered."""
        assert self._payload_size is not None
        self._payload_taken += count
        if self._payload_taken == self._payload_size:
            self._payload_size = None
            self._payload_taken = 0

    def _end_of_stream_in_payload(self) -> IncompleteFrameError:
        """The transport ended while the channel was reading a payload itself."""
        assert self._payload_size is not None
        self._eof = True
        done = HEADER_SIZE + self._payload_taken + self._buffered
        exc = IncompleteFrameError(done, HEADER_SIZE + self._payload_size)
        self._fail(exc)
        return exc

    def _unread_payload(self, data: bytes) -> None:
        """Give back the first bytes of the frame in progress, read but not returned (the read
        was cancelled), so that the next receive returns the whole frame."""
        assert self._payload_taken == len(data)
        self._flush_tail()
        if data:
            self._pieces.appendleft(memoryview(data))
            self._buffered += len(data)
        self._payload_taken = 0

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        self._pieces.clear()
        self._tail.clear()
        self._buffered = 0

    def _take(self, size: int) -> bytes:
        """Remove and return the first ``size`` buffered bytes (all of them are buffered)."""
        if size == 0:
            return b""
        self._flush_tail()
        self._buffered -= size
        pieces = self._pieces
        first = pieces[0]
        if first.nbytes == size:
            pieces.popleft()
            whole = first.obj
            if isinstance(whole, bytes) and len(whole) == size:
                return whole  # the transport delivered exactly this payload: no copy at all
            return first.tobytes()
        if first.nbytes > size:
            pieces[0] = first[size:]
            return first[:size].tobytes()
        taken: list[memoryview] = []
        while size:
            piece = pieces[0]
            if piece.nbytes <= size:
                taken.append(pieces.popleft())
                size -= piece.nbytes
            else:
                taken.append(piece[:size])
                pieces[0] = piece[size:]
                size = 0
        return b"".join(taken)

    @property
    def eof(self) -> bool:
        """True once the peer closed cleanly and every complete frame has been taken."""
        return (
            self._error is None and self._eof and self._payload_size is None and self._buffered == 0
        )

    @property
    def bytes_needed(self) -> int:
        """How many more bytes would complete the frame in progress (0 if one is complete).

        A good size to ask the transport for; a hint, not a promise about frame boundaries.
        """
        if self._payload_size is None:
            if self._buffered < HEADER_SIZE:
                return HEADER_SIZE - self._buffered
            size: int = _HEADER.unpack(self._peek(HEADER_SIZE))[0]
            return max(0, HEADER_SIZE + size - self._buffered)
        return max(0, self._payload_size - self._payload_taken - self._buffered)

    def _peek(self, size: int) -> bytes:
        self._flush_tail()
        collected = bytearray()
        for piece in self._pieces:
            collected += piece[: size - len(collected)]
            if len(collected) == size:
                break
        return bytes(collected)

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet returned in a frame (headers included)."""
        header = HEADER_SIZE if self._payload_size is not None else 0
        return self._buffered + header


class _ConflictDetector:
    """Raises BusyResourceError when two tasks use the same direction of a channel at once."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._held = False

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(f"another task is already {self._what} this channel")
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False


class FramedChannel(trio.abc.Channel[bytes]):
    """A :class:`trio.abc.Channel` of frame payloads over a :class:`trio.abc.Stream`.

    ``await send(payload)`` writes one frame; ``await receive()`` returns one payload; ``async
    for payload in channel`` reads until the peer closes. One task may send while another
    receives; two tasks sending (or two receiving) at once get :exc:`trio.BusyResourceError`.

    Cancellation: a cancelled :meth:`receive` loses nothing (bytes already read stay in the
    decoder). A cancelled or failed :meth:`send` may have written part of a frame, so the channel
    is then broken, as :class:`trio.SSLStream` is: every later call raises
    :exc:`trio.BrokenResourceError`.

    Args:
        transport_stream: the byte stream to frame. It belongs to the channel from now on:
            closing the channel closes it.
        max_frame_size: the largest payload this side accepts and agrees to send, in bytes.
        receive_chunk_size: the least this channel asks the transport for in one read.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        receive_chunk_size: int = 64 * 1024,
    ) -> None:
        if receive_chunk_size < 1:
            raise ValueError("receive_chunk_size must be at least 1")
        self.transport_stream: Final = transport_stream
        self.max_frame_size: Final = _check_max_frame_size(max_frame_size)
        self._receive_chunk_size = min(receive_chunk_size, _MAX_RECEIVE_SIZE)
        self._decoder = FrameDecoder(max_frame_size=max_frame_size)
        self._send_conflict = _ConflictDetector("sending on")
        self._receive_conflict = _ConflictDetector("receiving on")
        self._closed = False
        # Why the channel broke: a failed send breaks both directions (the stream's state is
        # unknown); a framing error in what was received breaks only receiving, so that the
        # receiver can still tell its peer what went wrong before closing (as h11 allows).
        self._broken: BaseException | None = None
        self._receive_broken: BaseException | None = None

    def _check_usable(self, *, receiving: bool = False) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this channel was closed")
        cause = self._broken or (self._receive_broken if receiving else None)
        if cause is not None:
            raise trio.BrokenResourceError("this channel is broken") from cause

    async def send(self, value: Buffer) -> None:
        """Send ``value`` as one frame. ``b""`` sends an empty frame.

        Raises:
            LocalProtocolError: ``value`` is longer than ``max_frame_size``; nothing was sent and
                the channel stays usable.
            trio.BusyResourceError: another task is sending on this channel.
            trio.BrokenResourceError: the channel or its transport is broken.
            trio.ClosedResourceError: the channel was closed.
        """
        await self.send_parts(value)

    async def send_parts(self, *parts: Buffer) -> None:
        """Send one frame whose payload is the concatenation of ``parts``, without joining them.

        Small parts are joined with the header into one write; large ones are written as they
        are, so a file chunk in a reused buffer is never copied. Raises as :meth:`send` does.
        """
        await self.send_frames(parts)

    async def send_frames(self, *frames: Sequence[Buffer]) -> None:
        """Send several frames, each given as its parts (as for :meth:`send_parts`), in as few
        writes as possible: small frames sent together cost one system call, and reach the
        peer together. Raises as :meth:`send` does; if one frame is too large, none is sent.
        """
        with self._send_conflict:
            self._check_usable()
            headers = []
            for parts in frames:
                size = sum(memoryview(part).nbytes for part in parts)
                if size > self.max_frame_size:
                    # Checkpoint first, so that every path through send is a checkpoint.
                    await trio.lowlevel.checkpoint()
                    raise LocalProtocolError(
                        f"a frame of {size} bytes is larger than the limit of "
                        f"{self.max_frame_size} bytes"
                    )
                headers.append(encode_header(size))
            try:
                for write in _coalesce(zip(headers, frames, strict=True)):
                    await self.transport_stream.send_all(write)
            except BaseException as exc:
                # Some unknown part of a frame may have gone out: the peer's framing is lost.
                if not self._closed:
                    self._broken = exc
                raise

    async def send_file(self, prefix: Buffer, fd: int, offset: int, count: int) -> int:
        """Send one frame whose payload is ``prefix`` followed by ``count`` bytes of the open
        file ``fd`` from ``offset``; return how many of them came from the file.

        On a plain TCP stream (:class:`trio.SocketStream`) the file's bytes go with
        :func:`os.sendfile`, from the page cache to the socket without passing through Python;
        on any other stream (TLS included) they are read in a worker thread and sent. If the
        file ends first (it was truncated meanwhile), the frame is completed with zero bytes,
        so that the framing holds: the return value is then less than ``count`` and the caller
        must tell its peer that the content is wrong.

        Raises:
            OSError: the file could not be read; part of the frame may have gone out, so the
                channel is broken.
            LocalProtocolError, trio.BusyResourceError, trio.BrokenResourceError,
                trio.ClosedResourceError: as for :meth:`send` (``LocalProtocolError`` also for
                a negative ``offset`` or ``count``).
        """
        with self._send_conflict:
            self._check_usable()
            size = memoryview(prefix).nbytes + count
            if count < 0 or offset < 0:
                await trio.lowlevel.checkpoint()
                raise LocalProtocolError(f"cannot send {count} bytes from offset {offset}")
            if size > self.max_frame_size:
                await trio.lowlevel.checkpoint()
                raise LocalProtocolError(
                    f"a frame of {size} bytes is larger than the limit of "
                    f"{self.max_frame_size} bytes"
                )
            head = encode_header(size) + bytes(prefix)
            stream = self.transport_stream
            try:
                if isinstance(stream, trio.SocketStream):
                    sent = await _sendfile(stream.socket, head, fd, offset, count)
                else:
                    sent = 0
                    await stream.send_all(head)
                if sent < count:  # no sendfile, or it is not supported for this file
                    data = await trio.to_thread.run_sync(os.pread, fd, count - sent, offset + sent)
                    await stream.send_all(data + bytes(count - sent - len(data)))
                    sent += len(data)
            except BaseException as exc:
                if not self._closed:
                    self._broken = exc
                raise
            return sent

    async def receive(self) -> bytes:
        """Wait for the next frame and return its payload.

        Raises:
            trio.EndOfChannel: the peer closed the stream cleanly, on a frame boundary (raised
                again on every later call).
            FrameTooLargeError: the peer announced a frame over ``max_frame_size``.
            IncompleteFrameError: the stream ended inside a frame.

        After either, ``receive`` raises :exc:`trio.BrokenResourceError`, but ``send`` still
        works, so that the peer can be told why the connection is being closed.
            trio.BusyResourceError: another task is receiving on this channel.
            trio.BrokenResourceError: the channel or its transport is broken.
            trio.ClosedResourceError: the channel was closed.
        """
        with self._receive_conflict:
            self._check_usable(receiving=True)
            # The checkpoint comes before a frame is taken from the decoder, so a cancellation
            # never loses one.
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            while True:
                try:
                    payload = self._decoder.next_frame()
                except (FrameTooLargeError, IncompleteFrameError) as exc:
                    self._receive_broken = exc
                    raise
                if payload is not None:
                    if not waited:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return payload
                if self._decoder.eof:
                    if not waited:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    raise trio.EndOfChannel
                want = max(self._decoder.bytes_needed, self._receive_chunk_size)
                data = await self.transport_stream.receive_some(min(want, _MAX_RECEIVE_SIZE))
                waited = True
                self._decoder.receive_data(data)

    def receive_nowait(self) -> bytes:
        """Return the next frame's payload if it has arrived whole already, without reading
        from the transport (as :meth:`trio.MemoryReceiveChannel.receive_nowait` does): a
        receiver can take the requests a peer pipelined, as a batch.

        Raises:
            trio.WouldBlock: no whole frame is buffered (also at the end of the stream: then
                :meth:`receive` raises what it raises).
            FrameTooLargeError, trio.BusyResourceError, trio.BrokenResourceError,
                trio.ClosedResourceError: as for :meth:`receive`.
        """
        with self._receive_conflict:
            self._check_usable(receiving=True)
            try:
                payload = self._decoder.next_frame()
            except (FrameTooLargeError, IncompleteFrameError) as exc:
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
            trio.EndOfChannel, FrameTooLargeError, IncompleteFrameError, trio.BusyResourceError,
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
        with self._receive_conflict:
            self._check_usable(receiving=True)
            await trio.lowlevel.checkpoint_if_cancelled()
            decoder = self._decoder
            try:
                waited = await self._receive_header()
                size = decoder._start_frame()
                assert size is not None
                filled = decoder._take_payload_into(view[:size])
                try:
                    while filled < size:
                        count = await self._receive_straight_into(view[filled:size])
                        waited = True
                        if count == 0:
                            raise decoder._end_of_stream_in_payload()
                        decoder._payload_read(count)
                        filled += count
                except BaseException:
                    # Cancelled, or the transport failed (and may recover): the bytes taken
                    # go back, so that the next receive returns the whole frame, or nothing.
                    if decoder._error is None:
                        decoder._unread_payload(bytes(view[:filled]))
                    raise
            except (FrameTooLargeError, IncompleteFrameError) as exc:
                self._receive_broken = exc
                raise
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return size

    async def _receive_header(self) -> bool:
        """Receive until the decoder has the next frame's header; return whether it waited.

        Raises:
            trio.EndOfChannel: the peer closed cleanly on a frame boundary.
        """
        waited = False
        while self._decoder._start_frame() is None:
            if self._decoder.eof:
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                raise trio.EndOfChannel
            data = await self.transport_stream.receive_some(self._receive_chunk_size)
            waited = True
            self._decoder.receive_data(data)
        return waited

    async def _receive_straight_into(self, view: memoryview) -> int:
        """Read from the transport into ``view``, around the decoder; 0 means end of stream."""
        stream = self.transport_stream
        if isinstance(stream, trio.SocketStream):
            with _socket_errors_as_stream_errors():
                return await stream.socket.recv_into(view)
        data = await stream.receive_some(view.nbytes)
        view[: len(data)] = data
        return len(data)

    async def send_eof(self) -> None:
        """Close the sending direction only: the peer's ``receive`` raises ``EndOfChannel`` once it
        has taken every frame, and this side can go on receiving.

        Raises:
            TypeError: the transport cannot half-close (:class:`trio.SSLStream` cannot).
            trio.BusyResourceError: another task is sending on this channel.
            trio.BrokenResourceError, trio.ClosedResourceError: as for :meth:`send`.
        """
        if not isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            raise TypeError(f"{type(self.transport_stream).__name__} cannot half-close")
        with self._send_conflict:
            self._check_usable()
            await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        """Close the channel and its transport. Idempotent; closes even if cancelled.

        Tasks blocked in :meth:`send` or :meth:`receive` wake with
        :exc:`trio.ClosedResourceError` (raised by the transport).
        """
        self._closed = True
        await self.transport_stream.aclose()


def _coalesce(frames: Iterable[tuple[bytes, Sequence[Buffer]]]) -> list[Buffer]:
    """Group headers and parts into as few writes as possible without copying big parts."""
    writes: list[Buffer] = []
    pending = bytearray()
    for header, parts in frames:
        pending += header
        for part in parts:
            if memoryview(part).nbytes <= _JOIN_THRESHOLD:
                pending += part
            else:
                if pending:
                    writes.append(pending)
                    pending = bytearray()
                writes.append(part)
    if pending:
        writes.append(pending)
    return writes


@contextmanager
def _socket_errors_as_stream_errors() -> Iterator[None]:
    """Raise what :class:`trio.SocketStream` raises for the socket errors it translates."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOTSOCK):
            raise trio.ClosedResourceError("the socket was closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


async def _sendfile(
    sock: trio.socket.SocketType, head: bytes, fd: int, offset: int, count: int
) -> int:
    """Send ``head`` then up to ``count`` bytes of file ``fd`` from ``offset`` on ``sock``;
    return how many file bytes went (fewer if the file ended or sendfile cannot read it)."""
    view = memoryview(head)
    with _socket_errors_as_stream_errors():
        while view:
            # MSG_MORE holds the header back until the file's bytes follow (trio sets
            # TCP_NODELAY, which would send it alone).
            view = view[await sock.send(view, socket.MSG_MORE if count else 0) :]
    sent = 0
    while sent < count:
        try:
            done = os.sendfile(sock.fileno(), fd, offset + sent, count - sent)
        except BlockingIOError:
            with _socket_errors_as_stream_errors():
                await trio.lowlevel.wait_writable(sock)
            continue
        except OSError as exc:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("the socket was closed") from None
            if exc.errno in _SOCKET_ERRNOS:
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            if sent == 0 and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                break  # a file sendfile cannot read (some file systems): the caller reads it
            raise  # the file's own error (EIO, EBADF...): an OSError, as from a read
        if done == 0:
            break  # the file ended early
        sent += done
    return sent


# What os.sendfile raises for the socket's sake (anything else concerns the file).
_SOCKET_ERRNOS: Final = frozenset(
    {errno.EPIPE, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ETIMEDOUT}
)
