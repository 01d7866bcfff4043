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

import struct
from collections import deque
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
            self._error = exc
            self._pieces.clear()
            self._tail.clear()
            self._buffered = 0
            raise

    def _next_frame(self) -> bytes | None:
        if self._payload_size is None:
            if self._buffered < HEADER_SIZE:
                if self._eof and self._buffered:
                    raise IncompleteFrameError(self._buffered, HEADER_SIZE)
                return None
            (size,) = _HEADER.unpack(self._take(HEADER_SIZE))
            if size > self.max_frame_size:
                raise FrameTooLargeError(size, self.max_frame_size)
            self._payload_size = size
        size = self._payload_size
        if self._buffered < size:
            if self._eof:
                raise IncompleteFrameError(HEADER_SIZE + self._buffered, HEADER_SIZE + size)
            return None
        self._payload_size = None
        return self._take(size)

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
        return max(0, self._payload_size - self._buffered)

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
        with self._send_conflict:
            self._check_usable()
            size = sum(memoryview(part).nbytes for part in parts)
            if size > self.max_frame_size:
                # Checkpoint first, so that every path through send is a checkpoint.
                await trio.lowlevel.checkpoint()
                raise LocalProtocolError(
                    f"a frame of {size} bytes is larger than the limit of "
                    f"{self.max_frame_size} bytes"
                )
            try:
                for write in _coalesce(encode_header(size), parts):
                    await self.transport_stream.send_all(write)
            except BaseException as exc:
                # Some unknown part of the frame may have gone out: the peer's framing is lost.
                if not self._closed:
                    self._broken = exc
                raise

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


def _coalesce(header: bytes, parts: tuple[Buffer, ...]) -> list[Buffer]:
    """Group the header and parts into as few writes as possible without copying big parts."""
    writes: list[Buffer] = []
    pending = bytearray(header)
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
