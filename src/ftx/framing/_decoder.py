"""The sans-IO half of :mod:`ftx.framing`: :class:`FrameDecoder` (bytes in, frame payloads out;
no I/O, so it can be fuzzed) and the stateless encoders."""

from __future__ import annotations

from collections import deque
from typing import Final

from ftx.errors import IncompleteFrameError, LocalProtocolError, RemoteProtocolError
from ftx.framing._format import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_SIZE_LIMIT,
    FTX_FORMAT,
    Buffer,
    FrameFormat,
    check_max_frame_size,
)

__all__ = ["FrameDecoder", "encode_frame", "encode_header"]

# Received pieces smaller than this are copied together rather than kept one by one.
_SMALL_PIECE: Final = 64 * 1024


def encode_header(length: int) -> bytes:
    """Return ftx's 4-byte header announcing a payload of ``length`` bytes.

    Raises:
        LocalProtocolError: ``length`` is negative or does not fit in 32 bits.
    """
    if not 0 <= length <= FRAME_SIZE_LIMIT:
        raise LocalProtocolError(f"a frame cannot carry {length} bytes")
    return FTX_FORMAT.encode_length(length)


def encode_frame(
    payload: Buffer,
    *,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    frame_format: FrameFormat = FTX_FORMAT,
) -> bytes:
    """Return the bytes of one frame carrying ``payload`` (for a format with a prefix,
    ``payload`` starts with the prefix bytes: see :class:`FrameFormat`).

    Raises:
        LocalProtocolError: the receiver would get more than ``max_frame_size`` bytes, or the
            format cannot carry ``payload``.
    """
    size = frame_format.sent_payload_size(memoryview(payload).nbytes)
    if size > max_frame_size:
        raise LocalProtocolError(
            f"a frame of {size} bytes is larger than the limit of {max_frame_size} bytes"
        )
    return frame_format.encode(payload)


class FrameDecoder:
    """Turns a byte stream into frame payloads. Sans-IO: bytes in, frames out.

    Feed what the transport delivers to :meth:`receive_data` (``b""`` for end of stream), then
    call :meth:`next_frame` until it returns ``None``. Once it has raised, the decoder is dead and
    raises the same error again on every later call.

    Args:
        max_frame_size: the largest payload accepted, checked as each header arrives.
        frame_format: the header's layout (:data:`FTX_FORMAT`, ftx's own, by default).

    Raises:
        ValueError: ``max_frame_size`` is negative or more than the format can announce.
    """

    def __init__(
        self,
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        frame_format: FrameFormat = FTX_FORMAT,
    ) -> None:
        self.max_frame_size: Final = check_max_frame_size(max_frame_size, frame_format)
        self.frame_format: Final = frame_format
        self._header_size = frame_format.header_size
        self._strip = frame_format.strip_size
        # For the formats of ftx's shape (a length at offset 0 that counts the payload alone,
        # the header stripped), next_frame parses a header inside the first chunk inline.
        self._unpack_from = frame_format.length_unpacker()
        # What was received and not yet returned, in order: _chunk[_pos:], then each of _more,
        # then _tail. Most frames lie inside _chunk, and leave it as one slice (no other copy);
        # a large one is joined once from the pieces it spans.
        self._chunk = b""
        self._pos = 0
        self._more: deque[bytes] = deque()
        self._tail = bytearray()  # small receives, gathered (one byte per segment stays cheap)
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
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        if size == 0:
            self._eof = True
        elif self._error is None:
            if self._buffered == 0:
                self._chunk = data if type(data) is bytes else bytes(data)
                self._pos = 0
            elif size < _SMALL_PIECE:
                self._tail += data
                if len(self._tail) >= _SMALL_PIECE:
                    self._flush_tail()
            else:
                self._flush_tail()
                self._more.append(data if type(data) is bytes else bytes(data))
            self._buffered += size

    def _flush_tail(self) -> None:
        if self._tail:
            self._more.append(bytes(self._tail))
            self._tail.clear()

    def next_frame(self) -> bytes | None:
        """Return the next complete payload, or ``None`` when more bytes are needed.

        ``None`` is also returned after a clean end of stream (check :attr:`eof`).

        Raises:
            FrameTooLargeError: a header announced more than ``max_frame_size`` bytes. Raised as
                soon as the header is in, whatever follows it.
            RemoteProtocolError: a header announced a length too small for the format.
            IncompleteFrameError: the stream ended inside a header or a payload.
        """
        if self._error is not None:
            raise self._error
        size = self._payload_size
        unpack_from = self._unpack_from
        if size is None and unpack_from is not None:
            chunk, pos = self._chunk, self._pos
            header_size = self._header_size
            if len(chunk) - pos >= header_size:
                (length,) = unpack_from(chunk, pos)
                start = pos + header_size
                end = start + length
                if end <= len(chunk) and length <= self.max_frame_size:
                    self._pos = end
                    self._buffered -= header_size + length
                    return chunk[start:end]
        try:
            if size is None:
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
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise

    def _read_header(self) -> int | None:
        """Read the header of the next frame if it is all in: return the payload size (and
        drop the stripped bytes), else ``None``."""
        header_size = self._header_size
        if self._buffered < header_size:
            if self._eof and self._buffered:
                raise IncompleteFrameError(self._buffered, header_size)
            return None
        chunk, pos = self._chunk, self._pos
        if len(chunk) - pos >= header_size:
            size = self.frame_format.check_header(chunk, self.max_frame_size, pos)
        else:
            size = self.frame_format.check_header(self._peek(header_size), self.max_frame_size)
        self._skip(self._strip)
        self._payload_size = size
        return size

    def _check_not_cut_short(self) -> None:
        if self._eof and self._payload_size is not None:
            done = self._strip + self._payload_taken + self._buffered
            raise IncompleteFrameError(done, self._strip + self._payload_size)

    # The methods below let FramedChannel.receive_into put a payload straight into its caller's
    # buffer, reading most of it from the socket without going through the decoder. They keep
    # the decoder's errors sticky, as next_frame does.

    def _start_frame(self) -> int | None:
        """Like :meth:`next_frame`, but only read the header: return the payload size."""
        if self._error is not None:
            raise self._error
        if self._payload_size is not None:
            return self._payload_size
        try:
            return self._read_header()
        except RemoteProtocolError as exc:
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
        done = self._strip + self._payload_taken + self._buffered
        exc = IncompleteFrameError(done, self._strip + self._payload_size)
        self._fail(exc)
        return exc

    def _unread_payload(self, data: bytes) -> None:
        """Give back the first bytes of the frame in progress, read but not returned (the read
        was cancelled), so that the next receive returns the whole frame."""
        assert self._payload_taken == len(data)
        if data:
            rest = self._chunk[self._pos :]
            if rest:
                self._more.appendleft(rest)
            self._chunk, self._pos = data, 0
            self._buffered += len(data)
        self._payload_taken = 0

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        self._chunk, self._pos = b"", 0
        self._more.clear()
        self._tail.clear()
        self._buffered = 0

    def _next_chunk(self) -> None:
        """Make the next piece the current chunk (the current one is used up)."""
        if not self._more:
            self._flush_tail()
        self._chunk = self._more.popleft() if self._more else b""
        self._pos = 0

    def _skip(self, size: int) -> None:
        """Drop the first ``size`` buffered bytes (all of them are buffered)."""
        self._buffered -= size
        while size:
            if self._pos == len(self._chunk):
                self._next_chunk()
            step = min(size, len(self._chunk) - self._pos)
            self._pos += step
            size -= step

    def _take(self, size: int) -> bytes:
        """Remove and return the first ``size`` buffered bytes (all of them are buffered)."""
        if size == 0:
            return b""
        if self._pos == len(self._chunk):
            self._next_chunk()
        chunk, pos = self._chunk, self._pos
        end = pos + size
        if end <= len(chunk):
            self._buffered -= size
            self._pos = end
            if pos == 0 and end == len(chunk):
                return chunk  # the transport delivered exactly this payload: no copy at all
            return chunk[pos:end]
        taken = [memoryview(chunk)[pos:]]
        self._buffered -= size
        size -= len(chunk) - pos
        while size:
            if not self._more:
                self._flush_tail()
            piece = self._more.popleft()
            if len(piece) <= size:
                taken.append(memoryview(piece))
                size -= len(piece)
                self._chunk, self._pos = b"", 0
            else:
                taken.append(memoryview(piece)[:size])
                self._chunk, self._pos = piece, size
                size = 0
        return b"".join(taken)

    def _peek(self, size: int) -> bytes:
        """The first ``size`` buffered bytes, left in place (all of them are buffered)."""
        self._flush_tail()
        collected = bytearray(self._chunk[self._pos : self._pos + size])
        for piece in self._more:
            if len(collected) >= size:
                break
            collected += piece[: size - len(collected)]
        return bytes(collected)

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
            if self._buffered < self._header_size:
                return self._header_size - self._buffered
            try:
                length = self.frame_format.read_length(self._peek(self._header_size))
                size = self.frame_format.payload_size(length)
            except RemoteProtocolError:
                return 0  # next_frame raises
            return max(0, self._strip + size - self._buffered)
        return max(0, self._payload_size - self._payload_taken - self._buffered)

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet returned in a frame (headers included)."""
        header = self._strip if self._payload_size is not None else 0
        return self._buffered + header
