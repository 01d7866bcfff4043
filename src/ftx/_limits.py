"""What one connection may cost the server: its count, its time, and its silences.

A peer that connects and says nothing, or trickles a request a byte at a time, or asks for a large
file and then stops reading, would otherwise hold a connection slot, a task and a buffer forever
(rsync's CVE-2026-70464; the HTTP/2 "data dribble" attacks). :class:`Limits` bounds each of these:

- ``max_connections``: connections served at once; one more is refused with ``busy``.
- ``handshake_timeout``: an absolute deadline from accept to the end of the handshake (TLS,
  HELLO and authentication included).
- ``idle_timeout``: how long the server waits for each complete request (so a request trickled
  in slower than that is cut off), and how long one write may go without progress.

A write makes progress when the peer accepts :data:`WRITE_PROGRESS_UNIT` bytes (or the rest of
the write): :class:`SendDeadlineStream` sends in pieces of that size, each with its own deadline,
and cancels the piece that stalls. A client that reads slower than that unit per idle period is
cut off; a healthy large transfer never is, however long it takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import trio

from ftx.framing import Buffer

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "WRITE_PROGRESS_UNIT",
    "Limits",
    "SendDeadlineStream",
    "WriteStalledError",
    "transport_of",
]

DEFAULT_MAX_CONNECTIONS: Final = 100
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
DEFAULT_IDLE_TIMEOUT: Final = 60.0
WRITE_PROGRESS_UNIT: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's per-connection limits (see the module documentation).

    Raises:
        ValueError: ``max_connections`` is below 1, or a timeout is not a positive number
            (``math.inf`` switches a deadline off).
    """

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        for name in ("handshake_timeout", "idle_timeout"):
            value = getattr(self, name)
            if math.isnan(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")


class WriteStalledError(trio.BrokenResourceError):
    """The peer accepted no data for the whole idle period: the write was cancelled, and the
    stream is unusable (part of the data may have gone out)."""


class SendDeadlineStream(trio.abc.Stream):
    """Wraps a stream so that every :meth:`send_all` must keep making progress.

    Data is handed to the transport in pieces of :data:`WRITE_PROGRESS_UNIT` bytes; a piece
    that is not accepted within ``idle_timeout`` seconds is cancelled and
    :exc:`WriteStalledError` raised. Receiving is passed through unchanged: read deadlines are
    per message, and belong to the caller.
    """

    def __init__(self, transport_stream: trio.abc.Stream, idle_timeout: float) -> None:
        self.transport_stream: Final = transport_stream
        self.idle_timeout: Final = idle_timeout

    async def send_all(self, data: Buffer) -> None:
        """Send ``data``; raises as the transport does, or :exc:`WriteStalledError`."""
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        start = 0
        while True:
            piece = view[start : start + WRITE_PROGRESS_UNIT]
            with trio.move_on_after(self.idle_timeout) as scope:
                await self.transport_stream.send_all(piece)
            if scope.cancelled_caught:
                raise WriteStalledError(
                    f"the peer accepted no data for {self.idle_timeout:g} seconds"
                )
            start += WRITE_PROGRESS_UNIT
            if start >= view.nbytes:
                return

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.transport_stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        """Half-close the transport, if it can (a TCP stream can; a TLS stream cannot).

        Raises:
            TypeError: the transport cannot half-close.
        """
        if not isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            raise TypeError(f"{type(self.transport_stream).__name__} cannot half-close")
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


def transport_of(stream: trio.abc.Stream) -> trio.abc.Stream:
    """The innermost stream under wrappers that expose ``transport_stream`` (TLS, deadlines)."""
    while isinstance(inner := getattr(stream, "transport_stream", None), trio.abc.Stream):
        stream = inner
    return stream
