"""Thread spans of :mod:`ftx.framing`: a worker thread that owns a plain-TCP socket for a while
(the frames of one big file, say), with blocking loops that release the GIL for every byte
moved, while the event loop only waits for it.

:class:`BlockingReceiver` reads frames with the channel's own :class:`FrameDecoder` (so bytes
buffered before the span, or read past its end, are never lost) and puts payloads straight into
a caller's buffer with ``recv_into``; :class:`BlockingSender` writes frame headers and payloads
(from a buffer, or from a file with ``sendfile``). Both wait with ``poll`` on the socket *and*
a :class:`Wakeup` descriptor, so the trio side can interrupt them within milliseconds
(:func:`run_span` does on cancellation), and on an :class:`IdleClock`, so a peer that stops
moving bytes is cut off as the event loop's deadlines would cut it off.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import trio

from ftx.errors import FtxError
from ftx.framing._decoder import FrameDecoder
from ftx.framing._format import Buffer
from ftx.framing._reader import MAX_RECEIVE_SIZE

if TYPE_CHECKING:
    import outcome

__all__ = [
    "BlockingReceiver",
    "BlockingSender",
    "IdleClock",
    "SpanInterruptedError",
    "SpanStalledError",
    "Wakeup",
    "run_span",
]

T = TypeVar("T")

_MSG_MORE: Final = getattr(socket, "MSG_MORE", 0)
_POLL_ERRORS: Final = select.POLLERR | select.POLLHUP | select.POLLNVAL


class SpanInterruptedError(FtxError):
    """The trio side woke the thread (it was cancelled): the span stopped at once."""


class SpanStalledError(FtxError):
    """The peer moved too few bytes within the idle period (see :class:`IdleClock`)."""


class Wakeup:
    """A descriptor the trio side signals to wake a thread waiting in ``poll`` (an eventfd on
    Linux, else a pipe). Closed by :meth:`close`; :meth:`set` may be called any number of
    times, from any thread."""

    def __init__(self) -> None:
        if hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._read_fd, self._write_fd = fd, fd
        else:  # pragma: no cover - not Linux
            self._read_fd, self._write_fd = os.pipe()
            os.set_blocking(self._write_fd, False)
        self.is_set = False

    def fileno(self) -> int:
        """The descriptor to poll for readability."""
        return self._read_fd

    def set(self) -> None:
        """Wake the thread (now, or at its next wait)."""
        self.is_set = True
        # Failing only if already signalled (the counter or pipe is full): awake anyway.
        with contextlib.suppress(OSError):
            os.write(self._write_fd, (1).to_bytes(8, "little"))

    def close(self) -> None:
        """Close the descriptors."""
        os.close(self._read_fd)
        if self._write_fd != self._read_fd:
            os.close(self._write_fd)


class IdleClock:
    """The progress deadline of a span: at least ``unit`` bytes must move within every
    ``idle_timeout`` seconds of waiting for the peer (``spent`` of which are used up already).
    Thread-confined: only the span's thread uses it while it runs."""

    def __init__(self, idle_timeout: float, unit: int, spent: float = 0.0) -> None:
        self.idle_timeout = idle_timeout
        self.unit = unit
        self.deadline = time.monotonic() + max(0.0, idle_timeout - spent)
        self.since_progress = 0

    def moved(self, count: int) -> None:
        """Count ``count`` bytes moved; a unit of them restarts the deadline."""
        self.since_progress += count
        if self.since_progress >= self.unit:
            self.since_progress = 0
            self.deadline = time.monotonic() + self.idle_timeout

    def progressed(self) -> None:
        """Restart the deadline (e.g. a whole message other than data arrived)."""
        self.since_progress = 0
        self.deadline = time.monotonic() + self.idle_timeout

    @property
    def spent(self) -> float:
        """The seconds of the idle period used up since the last progress."""
        return max(0.0, self.idle_timeout - (self.deadline - time.monotonic()))


class _Span:
    """A socket owned by the span's thread: a duplicate of the channel's descriptor (so that
    a close by another task cannot hand its number to another file meanwhile), and the waits."""

    def __init__(self, sock: socket.socket, wakeup: Wakeup, clock: IdleClock, events: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.wakeup = wakeup
        self.clock = clock
        self._poller = select.poll()
        self._poller.register(self.fd, events)
        self._poller.register(wakeup.fileno(), select.POLLIN)

    def check_awake(self) -> None:
        """Raise :exc:`SpanInterruptedError` if the trio side asked the span to stop."""
        if self.wakeup.is_set:
            raise SpanInterruptedError("the transfer was interrupted")

    def wait(self) -> None:
        """Wait (GIL released) until the socket is ready, the span is woken, or the deadline.

        Raises:
            SpanInterruptedError: woken by the trio side.
            SpanStalledError: the idle deadline passed.
        """
        while True:
            self.check_awake()
            left = self.clock.deadline - time.monotonic()
            if left <= 0:
                raise SpanStalledError(
                    f"the peer moved no data for {self.clock.idle_timeout:g} seconds"
                )
            ready = self._poller.poll(min(left, 3600.0) * 1000 + 1)
            for fd, _events in ready:
                if fd == self.wakeup.fileno():
                    raise SpanInterruptedError("the transfer was interrupted")
            if ready:
                return  # readiness, or an error the next call reports

    def watch(self, events: int) -> None:
        """Wait for ``events`` on the socket from now on (see :meth:`wait`)."""
        self._poller.modify(self.fd, events | _POLL_ERRORS)

    def close(self) -> None:
        self.sock.close()


def _stream_error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno in (errno.EBADF, errno.ENOTSOCK):
        return trio.ClosedResourceError("the socket was closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


def duplicate(sock: trio.socket.SocketType) -> socket.socket:
    """A stdlib socket on a duplicate of ``sock``'s descriptor (non-blocking, as trio's)."""
    return socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))


class BlockingReceiver:
    """Receives frames in a worker thread, through the channel's own decoder.

    Args:
        decoder: the channel's decoder (the trio side does not touch it meanwhile).
        sock: the channel's socket (a duplicate is used).
        wakeup: what the trio side signals to interrupt.
        clock: the progress deadline.
        chunk_size: the least asked of the socket when reading headers.
    """

    def __init__(
        self,
        decoder: FrameDecoder,
        sock: trio.socket.SocketType,
        wakeup: Wakeup,
        clock: IdleClock,
        chunk_size: int,
    ) -> None:
        self._decoder = decoder
        self._span = _Span(duplicate(sock), wakeup, clock, select.POLLIN | _POLL_ERRORS)
        self._chunk_size = chunk_size
        self.clock = clock
        self.mid_frame = False
        """True while part of a frame's payload has been handed out by :meth:`read_payload_into`
        and the rest has not: a span that ends so leaves the channel unusable."""

    def close(self) -> None:
        self._span.close()

    def check_awake(self) -> None:
        """Raise :exc:`SpanInterruptedError` if the trio side asked the span to stop."""
        self._span.check_awake()

    def wake(self) -> None:
        """Interrupt the span (from any thread): its next wait or check raises
        :exc:`SpanInterruptedError`."""
        self._span.wakeup.set()

    def receive_into(self, view: memoryview) -> int:
        """Block until the next frame is in; put its payload at the start of ``view`` (at least
        the decoder's ``max_frame_size`` long) and return its size. Interrupted (or failing)
        inside a payload, the bytes taken go back to the decoder: the channel stays at a
        frame boundary.

        Raises:
            SpanInterruptedError, SpanStalledError: see :meth:`_Span.wait`.
            trio.EndOfChannel: the peer closed cleanly on a frame boundary.
            RemoteProtocolError: from the decoder (IncompleteFrameError at a cut).
            trio.BrokenResourceError, trio.ClosedResourceError: from the socket.
        """
        decoder = self._decoder
        span = self._span
        while (size := decoder._start_frame()) is None:
            if decoder.eof:
                raise trio.EndOfChannel
            want = min(max(decoder.bytes_needed, self._chunk_size), MAX_RECEIVE_SIZE)
            data = self._read(want)
            decoder.receive_data(data)
            if data:
                span.clock.moved(len(data))
        filled = decoder._take_payload_into(view[:size])
        try:
            while filled < size:
                count = self._read_into(view[filled:size])
                if count == 0:
                    raise decoder._end_of_stream_in_payload()
                decoder._payload_read(count)
                filled += count
                span.clock.moved(count)
        except BaseException:
            if decoder._error is None:
                decoder._unread_payload(bytes(view[:filled]))
            raise
        return size

    def begin_frame(self) -> tuple[int, int | None]:
        """Block until the next frame's header, and its first payload byte if it has one, are
        in; return the payload size and that byte (``None`` for an empty frame). Nothing of the
        payload is taken: :meth:`receive_into` then returns the whole frame, or
        :meth:`read_payload_into` hands it out piece by piece.

        Raises:
            As :meth:`receive_into`.
        """
        decoder = self._decoder
        while True:
            size = decoder._start_frame()
            if size is not None and (size == 0 or decoder._buffered > 0):
                return size, (decoder._peek(1)[0] if size else None)
            if decoder.eof:
                raise trio.EndOfChannel
            if size is None:
                want = min(max(decoder.bytes_needed, self._chunk_size), MAX_RECEIVE_SIZE)
            else:  # only the first payload byte is wanted here: read no more than a header would
                want = self._chunk_size
            data = self._read(want)
            if not data and size is not None:
                raise decoder._end_of_stream_in_payload()
            decoder.receive_data(data)
            if data:
                self._span.clock.moved(len(data))

    def read_payload_into(self, view: memoryview) -> int:
        """Put the next bytes of the frame in progress (begun by :meth:`begin_frame`) at the
        start of ``view``: at most ``view.nbytes``, never past the frame's end, once some are
        in. Return how many (0 once the frame is complete). Bytes handed out do not go back:
        until the frame's last byte is read, :attr:`mid_frame` is true, and a span that ends so
        breaks the channel (its caller closes the connection).

        Raises:
            As :meth:`receive_into` (IncompleteFrameError if the stream ends in the payload).
        """
        decoder = self._decoder
        size = decoder._payload_size
        if size is None:
            return 0
        left = size - decoder._payload_taken
        view = view[:left]
        count = decoder._take_payload_into(view)  # what the decoder holds already
        if not count and left:
            count = self._read_into(view)
            if count == 0:
                raise decoder._end_of_stream_in_payload()
            decoder._payload_read(count)
            self._span.clock.moved(count)
        self.mid_frame = decoder._payload_size is not None
        return count

    def _read(self, size: int) -> bytes:
        """At most ``size`` bytes from the stream, once some are in (``b""`` at its end)."""
        span = self._span
        while True:
            try:
                return span.sock.recv(size)
            except BlockingIOError:
                span.wait()
            except OSError as exc:
                raise _stream_error(exc) from exc

    def _read_into(self, view: memoryview) -> int:
        """Read into ``view`` once some bytes are in; return how many (0 at the end)."""
        span = self._span
        while True:
            try:
                return span.sock.recv_into(view)
            except BlockingIOError:
                span.wait()
            except OSError as exc:
                raise _stream_error(exc) from exc


class BlockingSender:
    """Sends frames in a worker thread. A frame cut short (interrupted, stalled, failed) leaves
    the stream mid-frame: :attr:`mid_frame` then says the channel is broken.

    Args:
        sock: the channel's socket (a duplicate is used); nothing may be pending on it.
        wakeup: what the trio side signals to interrupt.
        clock: the write-progress deadline.
    """

    def __init__(self, sock: trio.socket.SocketType, wakeup: Wakeup, clock: IdleClock) -> None:
        self._span = _Span(duplicate(sock), wakeup, clock, select.POLLOUT | _POLL_ERRORS)
        self.clock = clock
        self.mid_frame = False

    can_sendfile = True
    """Whether :meth:`sendfile` hands file pages to the socket (False where every byte must be
    encrypted first: use :meth:`send`)."""

    def close(self) -> None:
        self._span.close()

    def check_awake(self) -> None:
        """Raise :exc:`SpanInterruptedError` if the trio side asked the span to stop."""
        self._span.check_awake()

    def send(self, parts: Sequence[Buffer], *, more: bool = False) -> None:
        """Write ``parts`` (whole frames, or the start of one if ``more``: then the kernel holds
        a short tail back for what follows).

        Raises:
            SpanInterruptedError, SpanStalledError, trio.BrokenResourceError,
            trio.ClosedResourceError: as for :meth:`BlockingReceiver.receive_into`.
        """
        span = self._span
        views = [memoryview(part).cast("B") for part in parts]
        flags = _MSG_MORE if more else 0
        while views:
            try:
                sent = span.sock.sendmsg(views, (), flags)
            except BlockingIOError:
                span.wait()
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            self.mid_frame = True
            span.clock.moved(sent)
            while views and sent >= views[0].nbytes:
                sent -= views[0].nbytes
                views.pop(0)
            if views:
                views[0] = views[0][sent:]
        self.mid_frame = more

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """Write ``count`` bytes of file ``fd`` from ``offset`` with ``os.sendfile``; return
        how many went (fewer if the file ended: the frame is then incomplete).

        Raises:
            OSError: the file could not be read.
            SpanInterruptedError, SpanStalledError, trio.BrokenResourceError,
            trio.ClosedResourceError: as for :meth:`send`.
        """
        span = self._span
        done = 0
        while done < count:
            try:
                sent = os.sendfile(span.fd, fd, offset + done, count - done)
            except BlockingIOError:
                span.wait()
                continue
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EIO):
                    raise  # the file's own error
                raise _stream_error(exc) from exc
            if sent == 0:
                return done
            self.mid_frame = True
            done += sent
            span.clock.moved(sent)
        self.mid_frame = False
        return done


async def run_span(work: Callable[[Wakeup], T], wakeup: Wakeup | None = None) -> T:
    """Run ``work(wakeup)`` in a worker thread and wait for it. Cancelled (or interrupted by
    Ctrl-C), it signals ``wakeup`` and still waits for the thread (which returns within
    milliseconds, raising :exc:`SpanInterruptedError`), then raises the cancellation: no thread
    outlives the call, and nothing it uses is closed under it.

    ``wakeup`` (made here if not given) is closed once the thread has ended.

    Raises:
        Whatever ``work`` raises; trio.Cancelled as above.
    """
    if wakeup is None:
        wakeup = Wakeup()
    done = trio.Event()
    result: list[outcome.Outcome[T]] = []
    token = trio.lowlevel.current_trio_token()

    def deliver(value: outcome.Outcome[T]) -> None:
        result.append(value)
        token.run_sync_soon(done.set)

    try:
        trio.lowlevel.start_thread_soon(lambda: work(wakeup), deliver)
    except BaseException:
        wakeup.close()
        raise
    try:
        try:
            await done.wait()
        except BaseException:
            wakeup.set()
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
    finally:
        if done.is_set():
            wakeup.close()
    return result[0].unwrap()
