"""The bulk path of a download: once the FILE header is in, the DATA of a big file (on plain TCP,
or over TLS: the thread then drives the connection's TLS session) is received by one worker
thread that owns the socket for that span (frames read through the
connection's own decoder, payloads ``recv_into`` one reused buffer, written and hashed there:
all of which release the GIL), while the event loop only waits for it. The frame checks are
the connection's :class:`~ftx.protocol.ClientProtocol` (called from the thread: the trio side
does not touch it meanwhile). Deadlines and cancellation keep their meaning (see
:meth:`ftx.framing.FramedChannel.receive_span`). docs/performance.md describes the design.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol, TypeVar

import trio

from ftx.client._partfile import PartFile
from ftx.errors import RemoteError
from ftx.framing import BlockingReceiver, SpanInterruptedError
from ftx.protocol import ClientProtocol, Hasher
from ftx.protocol.messages import Data, Error, Kind, Message

__all__ = ["BULK_MIN_SIZE", "BulkWire", "bulk_eligible", "receive_data_in_thread"]

T = TypeVar("T")

BULK_MIN_SIZE: Final = 8 << 20
"""Files with at least this much DATA still to come take the bulk path (below, a thread span
costs more than the event loop's per-frame work, and a progress callback that cancels would
often see the thread finish the file first: progress reaches the trio side asynchronously)."""

_DATA_KIND: Final = int(Kind.DATA)

WINDOW: Final = 1 << 20
"""The most of a DATA frame taken from the socket at a time, then written and hashed while it
is still in the CPU's cache (a whole 2 MiB frame is not): this halved the CPU of a 1 GiB
receive to a file in the experiment of docs/performance.md, "Cache-sized pieces"."""


class BulkWire(Protocol):
    """What the bulk path needs of its connection (:class:`ftx.Client` is one)."""

    @property
    def _protocol(self) -> ClientProtocol:
        """The connection's protocol state."""

    @property
    def _spans_supported(self) -> bool:
        """Whether the connection can be handed to a thread now (plain TCP, TLS)."""

    async def _receive_span(self, work: Callable[[BlockingReceiver], T]) -> T:
        """Run ``work`` in a thread that owns the receiving side, with the connection's
        deadline; closes the connection on any failure but a cancellation."""

    def _note_progress(self, message: Message | None) -> None:
        """Restart the read-progress deadline if ``message`` is progress."""

    async def _fail(self) -> None:
        """Close the connection."""


def bulk_eligible(wire: BulkWire, remaining: int) -> bool:
    """Whether the ``remaining`` bytes of DATA of a file go by the bulk path: on plain TCP or
    TLS over TCP (when the connection can be handed over now), for a big enough file; never
    under ``--limit-rate`` (the connection's stream is then the rate limiter's, so
    ``_spans_supported`` is false). The one place for such rules."""
    return remaining >= BULK_MIN_SIZE and wire._spans_supported


async def receive_data_in_thread(
    wire: BulkWire,
    part: PartFile,
    hasher: Hasher | None,
    buffer: bytearray,
    progress: Callable[[int, int], object] | None,
    done: int,
    total: int,
) -> tuple[Message, int]:
    """Receive the DATA of the file whose FILE header was just received, in a worker thread:
    each chunk written to ``part`` (open) and fed to ``hasher``; ``progress(done, total)``
    called in the trio thread now and then. Return the first message that is not DATA (END,
    or a per-request ERROR) and the bytes of the file then held. If it fails before a byte
    of the file is held, the part is discarded.

    Raises:
        Whatever ``progress`` raises (the transfer stops there; the connection is closed).
        RemoteError: the server closed the whole connection with an ERROR.
        LocalFileError: the part file could not be written (the connection is closed).
        ConnectionLostError, RemoteProtocolError: as for the connection's receive.
        trio.Cancelled: the thread was interrupted (and has ended); the connection is at a
            frame boundary, but mid-answer: the caller closes it.
    """
    protocol = wire._protocol
    token = trio.lowlevel.current_trio_token()
    view = memoryview(buffer)

    held = [done]  # the bytes the part holds, as the thread goes
    # One progress report waits in the trio thread at a time (so that a callback that
    # cancels is seen within a chunk or two, and a busy event loop is not flooded).
    report_pending = [False]

    # What the progress callback raised (it runs in the trio thread, by run_sync_soon, where an
    # exception would crash trio): the thread is woken, and the call raises it.
    raised: list[BaseException] = []
    receivers: list[BlockingReceiver] = []

    def report(position: int) -> None:
        report_pending[0] = False
        if progress is None or raised:
            return
        try:
            # The position when the report was queued: what a callback that acts on a given
            # point (cancels, changes the file) is told does not depend on the event loop's lag.
            progress(position, total)
        except BaseException as exc:  # handed to the waiting task, below
            raised.append(exc)
            if receivers:
                receivers[0].wake()
            return
        # Chunks that arrived while this report was pending queued none of their own: report
        # them too, or the last of them would go unreported while the thread waits for more.
        if held[0] > position and not report_pending[0] and receivers:
            report_pending[0] = True
            token.run_sync_soon(report, held[0])

    def take(data: memoryview, position: int) -> int:
        """Write and hash ``data`` (the file's bytes from ``position``); return the new
        position. Called in the thread."""
        part.write(data)
        if hasher is not None:
            hasher.update(data)
        position += data.nbytes
        held[0] = position
        if progress is not None and not report_pending[0]:
            report_pending[0] = True
            token.run_sync_soon(report, position)
        return position

    def work(receiver: BlockingReceiver) -> tuple[Message, int]:
        receivers.append(receiver)
        position = done
        window = view[:WINDOW]
        while True:
            size, kind = receiver.begin_frame()
            if kind == _DATA_KIND and size > 1:
                # DATA is taken piece by piece as it arrives (see WINDOW); the frame is
                # checked as a whole first, as protocol.receive would.
                protocol.receive_data_frame(size)
                receiver.read_payload_into(window[:1])  # the kind byte
                while count := receiver.read_payload_into(window):
                    position = take(window[:count], position)
                    receiver.check_awake()
                continue
            size = receiver.receive_into(view)
            message = protocol.receive(view[:size])
            if message is None:
                continue  # an extension frame
            if not isinstance(message, Data):
                return message, position
            position = take(memoryview(message.data).cast("B"), position)
            receiver.check_awake()

    try:
        try:
            message, position = await wire._receive_span(work)
        finally:
            receivers.clear()  # (a report still pending must not wake a closed span)
    except BaseException as exc:
        if held[0] == 0:
            part.discard()  # nothing worth keeping for a resume
        await wire._fail()  # mid-answer: the rest of it cannot be read any more
        if raised and isinstance(exc, SpanInterruptedError):
            raise raised[0] from None  # the progress callback's own exception
        raise
    if raised:  # the span ended before the thread saw the wake-up
        await wire._fail()
        raise raised[0]
    wire._note_progress(message)
    if isinstance(message, Error) and message.request_id is None:
        await wire._fail()
        raise RemoteError(message.code, message.message)
    if progress is not None:
        progress(position, total)
    return message, position
