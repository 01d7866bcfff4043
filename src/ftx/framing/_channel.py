"""The trio half of :mod:`ftx.framing`: :class:`FramedChannel`, frames over any
:class:`trio.abc.Stream`, with the fast paths of plain TCP (``recv_into``, ``sendfile``).

It drives the :class:`~ftx.framing._decoder.FrameDecoder` through a few private methods that
let a payload be read straight into a caller's buffer.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final

import trio

from ftx.errors import FrameTooLargeError, IncompleteFrameError, LocalProtocolError
from ftx.framing._decoder import (
    DEFAULT_MAX_FRAME_SIZE,
    Buffer,
    FrameDecoder,
    check_max_frame_size,
    encode_header,
)

__all__ = ["FramedChannel"]

# Below this, a frame is joined with its header into one write: two tiny writes on a TCP_NODELAY
# socket would cost two segments. Above it, copying the payload costs more than a second write.
_JOIN_THRESHOLD: Final = 16 * 1024
# Never ask the transport for more than this in one receive_some: the buffer is allocated up front.
_MAX_RECEIVE_SIZE: Final = 1 << 20


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
        self.max_frame_size: Final = check_max_frame_size(max_frame_size)
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

    async def send_frames(self, *frames: Iterable[Buffer]) -> None:
        """Send several frames, each given as its parts (as for :meth:`send_parts`), in as few
        writes as possible: small frames sent together cost one system call, and reach the
        peer together. Raises as :meth:`send` does; if one frame is too large, none is sent.
        """
        if any(isinstance(parts, bytes | bytearray | memoryview) for parts in frames):
            raise TypeError("each frame is a sequence of parts: send_frames((payload,), ...)")
        # Made tuples first: a generator of parts would be used up by counting its size.
        all_parts = [tuple(parts) for parts in frames]
        with self._send_conflict:
            self._check_usable()
            if not all_parts:
                await trio.lowlevel.checkpoint()
            headers = []
            for parts in all_parts:
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
                for write in _coalesce(zip(headers, all_parts, strict=True)):
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
                    data = await trio.to_thread.run_sync(
                        _read_up_to, fd, count - sent, offset + sent
                    )
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
            FrameTooLargeError, IncompleteFrameError, trio.BusyResourceError,
                trio.BrokenResourceError, trio.ClosedResourceError: as for :meth:`receive`.
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


def _read_up_to(fd: int, count: int, offset: int) -> bytes:
    """Read ``count`` bytes of file ``fd`` from ``offset``, fewer only at the end of the file
    (one pread may return less: Linux caps a read near 2 GiB, and not every file is regular)."""
    pieces = []
    while count:
        piece = os.pread(fd, count, offset)
        if not piece:
            break
        pieces.append(piece)
        count -= len(piece)
        offset += len(piece)
    return b"".join(pieces)


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
            view = view[await sock.send(view, _MSG_MORE if count else 0) :]
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
    {
        errno.EPIPE,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
    }
)
# Linux only; elsewhere the header may go in a segment of its own.
_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)
