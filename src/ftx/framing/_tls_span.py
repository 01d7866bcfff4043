"""Thread spans over TLS: a worker thread drives the connection's own :class:`ssl.SSLObject`
(the one inside :class:`trio.SSLStream`, with its two :class:`ssl.MemoryBIO`) over the raw
socket, so that a big file's bytes are encrypted or decrypted without passing through the event
loop. OpenSSL releases the GIL while it works (``SSL_read``, ``SSL_write``), as the socket calls
do.

trio keeps the TLS state in private attributes of :class:`trio.SSLStream` (``_ssl_object``,
``_incoming``, ``_outgoing``, ``_delayed_outgoing``, ``_state``, ``_inner_send_lock``,
``_inner_recv_lock``). :func:`tls_span_state` reads them only for the trio versions in
:data:`CHECKED_TRIO_VERSIONS` (the one place they are pinned), only if each exists with the
type expected, and only while the stream is idle: no task inside it, nothing held back to send,
nothing encrypted and unsent. Anything else gives ``None``, and the caller keeps the event-loop
path. The hand-over back is consistent by construction: plaintext read past the span stays in
the channel's decoder, ciphertext read and not yet decrypted stays in the incoming BIO (where
the stream looks first), and the outgoing BIO is empty whenever a span ends on a frame boundary.

While a TLS span runs, the thread owns the TLS session in both directions (OpenSSL's objects
must not be used by two threads at once): the channel makes its other tasks wait (see
:class:`~ftx.framing.FramedChannel`).
"""

from __future__ import annotations

import select
import ssl
from collections.abc import Sequence
from typing import Final, NamedTuple, cast

import trio

from ftx.framing._blocking import (
    BlockingReceiver,
    BlockingSender,
    IdleClock,
    Wakeup,
    _stream_error,
)
from ftx.framing._decoder import FrameDecoder
from ftx.framing._format import Buffer

__all__ = [
    "CHECKED_TRIO_VERSIONS",
    "TLS_RECEIVE_SIZE",
    "TlsSpanReceiver",
    "TlsSpanSender",
    "TlsSpanState",
    "tls_span_state",
]

CHECKED_TRIO_VERSIONS: Final = ((0, 35),)
"""The (major, minor) versions of trio whose :class:`trio.SSLStream` internals a TLS span was
checked against (by the tests in tests/framing/test_tls_span.py). Any other version keeps the
event-loop path until checked and added here."""

TLS_RECEIVE_SIZE: Final = 512 * 1024
"""The most ciphertext a receiving span reads from the socket at once."""

_WANTED: Final = {
    "_ssl_object": ssl.SSLObject,
    "_incoming": ssl.MemoryBIO,
    "_outgoing": ssl.MemoryBIO,
    "_inner_send_lock": trio.StrictFIFOLock,
    "_inner_recv_lock": trio.Lock,
}


def _trio_checked() -> bool:
    try:
        major, minor = (int(part) for part in trio.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) in CHECKED_TRIO_VERSIONS


_TRIO_CHECKED: Final = _trio_checked()


class TlsSpanState(NamedTuple):
    """What a TLS span drives: the TLS object, its two memory BIOs, and the raw socket."""

    ssl_object: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    socket: trio.socket.SocketType


def tls_span_state(stream: trio.abc.Stream) -> TlsSpanState | None:
    """The TLS state of ``stream`` for a span, if it is a :class:`trio.SSLStream` directly over
    a :class:`trio.SocketStream` whose handshake is done, of a checked trio version, with the
    internals expected, and idle now (see the module); else ``None``. Never raises."""
    if not _TRIO_CHECKED or not isinstance(stream, trio.SSLStream):
        return None
    transport = stream.transport_stream
    if not isinstance(transport, trio.SocketStream):
        return None
    found = vars(stream)
    for name, kind in _WANTED.items():
        if not isinstance(found.get(name), kind):
            return None
    state = found.get("_state")
    handshook = found.get("_handshook")
    if getattr(state, "name", None) != "OK" or not getattr(handshook, "done", False):
        return None
    if "_delayed_outgoing" not in found or found["_delayed_outgoing"] is not None:
        return None  # session tickets held back for the first write (trio does this)
    if found["_inner_send_lock"].locked() or found["_inner_recv_lock"].locked():
        return None
    outgoing: ssl.MemoryBIO = found["_outgoing"]
    if outgoing.pending:
        return None
    return TlsSpanState(found["_ssl_object"], found["_incoming"], outgoing, transport.socket)


def _tls_error(exc: ssl.SSLError) -> trio.BrokenResourceError:
    if isinstance(exc, ssl.SSLEOFError):
        return trio.BrokenResourceError("the TLS connection was cut (no close_notify)")
    return trio.BrokenResourceError(f"TLS error: {exc.reason or exc}")


class _TlsIo:
    """The raw socket side of a TLS span: ciphertext in from the socket, out to it."""

    def __init__(self, state: TlsSpanState) -> None:
        self.ssl = state.ssl_object
        self.incoming = state.incoming
        self.outgoing = state.outgoing
        self._buffer = memoryview(bytearray(TLS_RECEIVE_SIZE))

    def fill(self, receiver_or_sender: BlockingReceiver | BlockingSender) -> None:
        """Read what ciphertext the socket has (waiting for some) into the incoming BIO; its
        end of stream becomes the BIO's.

        Raises:
            SpanInterruptedError, SpanStalledError, trio.BrokenResourceError: see _Span.wait.
        """
        span = receiver_or_sender._span
        span.watch(select.POLLIN)
        buffer = self._buffer
        while True:
            try:
                count = span.sock.recv_into(buffer)
            except BlockingIOError:
                span.wait()
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            if count:
                self.incoming.write(buffer[:count])
            else:
                self.incoming.write_eof()
            return

    def flush(self, receiver_or_sender: BlockingReceiver | BlockingSender) -> None:
        """Send everything the outgoing BIO holds (waiting for the socket as needed).

        Raises:
            SpanInterruptedError, SpanStalledError, trio.BrokenResourceError,
            trio.ClosedResourceError: see _Span.wait.
        """
        if not self.outgoing.pending:
            return
        span = receiver_or_sender._span
        view = memoryview(self.outgoing.read())
        span.watch(select.POLLOUT)
        while view.nbytes:
            try:
                sent = span.sock.send(view)
            except BlockingIOError:
                span.wait()
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            span.clock.moved(sent)
            view = view[sent:]


class TlsSpanReceiver(BlockingReceiver):
    """A :class:`BlockingReceiver` over TLS: frames decrypted by the connection's own
    :class:`ssl.SSLObject` from ciphertext the thread reads off the socket. A clean TLS end
    (``close_notify``) is the end of the stream (inside a frame, an
    :exc:`~ftx.errors.IncompleteFrameError`); a cut without one, or any TLS error, is
    :exc:`trio.BrokenResourceError`."""

    def __init__(
        self,
        decoder: FrameDecoder,
        state: TlsSpanState,
        wakeup: Wakeup,
        clock: IdleClock,
        chunk_size: int,
    ) -> None:
        super().__init__(decoder, state.socket, wakeup, clock, chunk_size)
        self._tls = _TlsIo(state)

    def _read(self, size: int) -> bytes:
        buffer = bytearray(size)
        return bytes(buffer[: self._read_into(memoryview(buffer))])

    def _read_into(self, view: memoryview) -> int:
        """Decrypt into ``view`` what the incoming BIO holds (records of up to 16 KiB each),
        reading ciphertext off the socket first if it holds none; return how many bytes (0 at
        a clean TLS end)."""
        tls = self._tls
        read = tls.ssl.read
        size = view.nbytes
        filled = 0
        while filled < size:
            try:
                # (with a buffer, read returns how many bytes it put there)
                count = cast(int, read(size - filled, view[filled:]))
            except ssl.SSLWantReadError:
                if filled:
                    break  # what was decrypted goes first (it counts as progress)
                tls.flush(self)  # (a post-handshake message may have asked for an answer)
                tls.fill(self)
                continue
            except ssl.SSLError as exc:
                raise _tls_error(exc) from exc
            if not count:
                break  # close_notify
            filled += count
        if tls.outgoing.pending:
            tls.flush(self)
        return filled


class TlsSpanSender(BlockingSender):
    """A :class:`BlockingSender` over TLS: each part encrypted by the connection's own
    :class:`ssl.SSLObject` into its outgoing BIO, then written to the socket. No ``sendfile``
    (:attr:`can_sendfile` is false): send what was read."""

    can_sendfile = False

    def __init__(self, state: TlsSpanState, wakeup: Wakeup, clock: IdleClock) -> None:
        super().__init__(state.socket, wakeup, clock)
        self._tls = _TlsIo(state)

    def send(self, parts: Sequence[Buffer], *, more: bool = False) -> None:
        """Encrypt and write ``parts`` (whole frames, or the start of one if ``more``).

        Raises:
            SpanInterruptedError, SpanStalledError, trio.BrokenResourceError,
            trio.ClosedResourceError: as for :meth:`BlockingSender.send`.
        """
        tls = self._tls
        for part in parts:
            view = memoryview(part).cast("B")
            if not view.nbytes:
                continue  # (SSLObject.write(b"") would mean something else)
            self.mid_frame = True
            try:
                tls.ssl.write(view)
            except ssl.SSLWantReadError:
                raise trio.BrokenResourceError(
                    "the peer started a TLS renegotiation during a transfer"
                ) from None
            except ssl.SSLError as exc:
                raise _tls_error(exc) from exc
            tls.flush(self)
        self.mid_frame = more

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """Not over TLS.

        Raises:
            OSError: always (``EOPNOTSUPP``).
        """
        raise OSError(95, "sendfile cannot send over TLS")
