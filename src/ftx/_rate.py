"""Bandwidth limits (``--limit-rate``): a token bucket, and a stream that keeps to it.

A :class:`TokenBucket` is sans-IO: it is told how many bytes went and answers how long to wait
before the next ones may go. A :class:`RateLimitedStream` wraps a trio stream and waits that long
between pieces of what it sends and receives, so the peer is slowed by TCP's own flow control.
The wrapper hides the socket from the framing layer, so its zero-copy paths (sendfile, reading
the socket directly) are not used on a limited connection: a limited transfer is not the one
that needs them.

Imported by the client and by the server alike; it imports nothing of ftx.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import trio

__all__ = [
    "MIN_RATE",
    "RateLimit",
    "RateLimitedStream",
    "TokenBucket",
]

# The lowest limit accepted, in bytes per second: a peer must take a whole frame of 1 MiB (the
# reference server's DATA chunk) within its 60-second idle deadline, with room to spare.
MIN_RATE: Final = 32 * 1024

# What a bucket lets through at once (and so the longest piece of a send or a receive): about
# 1/50 s of the rate, between these bounds. Smaller pieces keep the rate even; larger ones cost
# fewer sleeps.
_MIN_PIECE: Final = 4 * 1024
_MAX_PIECE: Final = 256 * 1024


class RateLimit:
    """A bandwidth limit of ``rate`` bytes per second in each direction, for
    :class:`~ftx.ClientConfig`: every connection made with the same ``RateLimit`` shares it
    (``ftx get -r -j 8 --limit-rate 50M`` moves at most 50 MiB/s in all).

    Raises:
        ValueError: ``rate`` is below :data:`MIN_RATE` (32 KiB/s).
    """

    def __init__(self, rate: int) -> None:
        if rate < MIN_RATE:
            raise ValueError(f"a rate below {MIN_RATE} bytes per second is not supported")
        self.rate = rate
        self.send = TokenBucket(rate)
        self.receive = TokenBucket(rate)

    def __repr__(self) -> str:
        return f"RateLimit({self.rate})"

    def wrap(self, stream: trio.abc.Stream) -> RateLimitedStream:
        """``stream``, limited by this limit in both directions."""
        return RateLimitedStream(stream, self.send, self.receive)


class TokenBucket:
    """A limit of ``rate`` bytes per second, with bursts of at most :attr:`burst` bytes.

    :meth:`delay` is told of bytes as they go and answers how long the caller must wait before
    more may go, so that in any span of ``t`` seconds at most ``burst + rate * t`` bytes go.
    It keeps no clock of its own beyond the ``clock`` given (``time.monotonic``: one bucket may
    be shared by connections of several :func:`trio.run` calls). Not thread-safe; a bucket
    shared by connections of one trio run is fine.

    Raises:
        ValueError: ``rate`` is not positive.
    """

    def __init__(self, rate: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"a rate must be positive, not {rate}")
        self.rate = rate
        self.burst = min(_MAX_PIECE, max(_MIN_PIECE, rate // 50))
        self._clock = clock
        self._tokens = float(self.burst)
        self._updated = clock()

    def delay(self, count: int) -> float:
        """Take ``count`` bytes from the bucket (it may go into debt); return the seconds to
        wait before anything more may go (0 when the bucket is not in debt)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        self._tokens -= count
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimitedStream(trio.abc.HalfCloseableStream):
    """``stream``, sending through ``send_bucket`` and receiving through ``receive_bucket``
    (either may be ``None``: that direction is not limited).

    A send goes in pieces of at most the bucket's burst, each after the wait the bucket asks
    for; a receive asks the stream for at most a burst and then waits for the bucket. A peer's
    idle deadline keeps counting through these waits: a frame must still cross within it at
    the limited rate (which :data:`MIN_RATE` sees to for frames of 1 MiB and the default 60 s).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        send_bucket: TokenBucket | None,
        receive_bucket: TokenBucket | None,
    ) -> None:
        self.transport_stream = stream
        self._send_bucket = send_bucket
        self._receive_bucket = receive_bucket

    @staticmethod
    async def _wait(seconds: float) -> None:
        if seconds > 0:
            await trio.sleep(seconds)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        bucket = self._send_bucket
        if bucket is None:
            await self.transport_stream.send_all(data)
            return
        view = memoryview(data).cast("B")
        if not view:
            await self.transport_stream.send_all(view)
            return
        for start in range(0, len(view), bucket.burst):
            piece = view[start : start + bucket.burst]
            await self._wait(bucket.delay(len(piece)))
            await self.transport_stream.send_all(piece)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        bucket = self._receive_bucket
        if bucket is None:
            return await self.transport_stream.receive_some(max_bytes)
        size = bucket.burst if max_bytes is None else min(max_bytes, bucket.burst)
        data = await self.transport_stream.receive_some(size)
        await self._wait(bucket.delay(len(data)))
        return data

    async def send_eof(self) -> None:
        """Close the sending direction, if the wrapped stream can.

        Raises:
            TypeError: it cannot (:class:`trio.SSLStream` cannot).
        """
        if not isinstance(self.transport_stream, trio.abc.HalfCloseableStream):
            raise TypeError(f"{type(self.transport_stream).__name__} cannot half-close")
        await self.transport_stream.send_eof()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()
