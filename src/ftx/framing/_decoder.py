"""The sans-IO half of :mod:`ftx.framing`: the frame header, and :class:`FrameDecoder`
(bytes in, frame payloads out; no I/O, so it can be fuzzed)."""

from __future__ import annotations

import struct
from collections import deque
from typing import Final

from ftx.errors import FrameTooLargeError, IncompleteFrameError, LocalProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "FRAME_SIZE_LIMIT",
    "HEADER_SIZE",
    "Buffer",
    "FrameDecoder",
    "check_max_frame_size",
    "encode_frame",
    "encode_header",
]

HEADER_SIZE: Final = 4
DEFAULT_MAX_FRAME_SIZE: Final = 1 << 20
FRAME_SIZE_LIMIT: Final = (1 << 32) - 1

_HEADER: Final = struct.Struct(">I")
# Received pieces smaller than this are copied together rather than kept one by one.
_SMALL_PIECE: Final = 64 * 1024

Buffer = bytes | bytearray | memoryview


def check_max_frame_size(max_frame_size: int) -> int:
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
        self.max_frame_size: Final = check_max_frame_size(max_frame_size)
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
