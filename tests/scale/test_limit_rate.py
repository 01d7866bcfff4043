"""Bandwidth limits: the token bucket (sans-IO, on a fake clock), the stream that keeps to it
(on trio's virtual clock), and real transfers limited by the client, by the server, and both
ways (issue 15.6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

import ftx
from conftest import StartServer
from ftx._rate import MIN_RATE, RateLimitedStream, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_lets_a_burst_through_then_asks_for_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000_000, clock=clock)
    assert bucket.burst == 20_000  # 1/50 s of the rate
    assert bucket.delay(20_000) == 0.0  # the first burst is free
    assert bucket.delay(10_000) == pytest.approx(0.01)  # then 10,000 bytes cost 10 ms
    clock.now += 0.01
    assert bucket.delay(1_000_000) == pytest.approx(1.0)  # a second's worth: a second
    clock.now += 5.0  # idle for long: the credit is capped at one burst
    assert bucket.delay(bucket.burst) == 0.0
    assert bucket.delay(1) > 0.0


def test_burst_bounds_and_bad_rates() -> None:
    assert TokenBucket(MIN_RATE).burst == 4096
    assert TokenBucket(10**10).burst == 256 * 1024
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="below 32768"):
        ftx.RateLimit(MIN_RATE - 1)
    with pytest.raises(ValueError, match="limit_rate must be at least 32768"):
        ftx.ServerConfig(limit_rate=1000)


async def _pump(limited_sends: bool, total: int, rate: int) -> float:
    """Send ``total`` bytes through a memory stream pair limited on one side; check that they
    all arrived, in order; return the virtual seconds it took."""
    left, right = trio.testing.memory_stream_pair()
    bucket = TokenBucket(rate, clock=trio.current_time)
    limited = RateLimitedStream(
        left if limited_sends else right,
        bucket if limited_sends else None,
        None if limited_sends else bucket,
    )
    sender = limited if limited_sends else left
    receiver = right if limited_sends else limited
    payload = os.urandom(total)
    received = bytearray()
    started = trio.current_time()

    async def send() -> None:
        await sender.send_all(payload)
        await sender.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while chunk := await receiver.receive_some(65536):
            received += chunk
    assert bytes(received) == payload
    return trio.current_time() - started


@pytest.mark.parametrize("limited_sends", [True, False], ids=["send", "receive"])
def test_a_limited_stream_keeps_to_the_rate(limited_sends: bool) -> None:
    rate, total = 1_000_000, 3_000_000

    async def main() -> float:
        return await _pump(limited_sends, total, rate)

    clock = trio.testing.MockClock(autojump_threshold=0)
    elapsed = trio.run(main, clock=clock)
    # At most one burst (20,000 bytes) ahead of the rate, and not much behind it.
    assert (total - 20_000) / rate <= elapsed <= total / rate * 1.05


async def test_a_limited_stream_passes_everything_else_on() -> None:
    left, right = trio.testing.memory_stream_pair()
    limited = RateLimitedStream(left, None, None)
    await limited.send_all(b"as is")
    assert await right.receive_some() == b"as is"
    await right.send_all(b"back")
    assert await limited.receive_some() == b"back"
    await limited.send_all(b"")
    await limited.wait_send_all_might_not_block()
    await limited.send_eof()
    assert await right.receive_some() == b""
    await limited.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await left.send_all(b"x")


async def test_a_stream_that_cannot_half_close_says_so() -> None:
    left, _right = trio.testing.lockstep_stream_pair()
    not_half_closeable = trio.StapledStream(left, left)  # half-closeable; wrap one that is not
    plain = _NoHalfClose(not_half_closeable)
    with pytest.raises(TypeError, match="cannot half-close"):
        await RateLimitedStream(plain, None, None).send_eof()


class _NoHalfClose(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- real transfers on loopback ----------------------------------------------------------------
# Only lower bounds on time are asserted (a limit may not be beaten; a loaded machine may be
# slower than the limit); the benchmark measures how close to the limit a transfer stays.

SIZE = 1_200_000
RATE = 1_000_000


def _file(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(SIZE))
    return root


async def test_a_client_limit_holds_a_download_back(
    tmp_path: Path, start_server: StartServer
) -> None:
    root = _file(tmp_path)
    host, port = await start_server(root)
    config = ftx.ClientConfig(rate_limit=ftx.RateLimit(RATE), idle_timeout=5)
    started = trio.current_time()
    async with ftx.connect(host, port, config) as client:
        await client.get("big.bin", tmp_path / "copy.bin")
    elapsed = trio.current_time() - started
    assert (tmp_path / "copy.bin").read_bytes() == (root / "big.bin").read_bytes()
    assert elapsed >= (SIZE - 256 * 1024) / RATE  # the server's socket buffers hold some ahead


async def test_a_server_limit_holds_each_connection_back(
    tmp_path: Path, start_server: StartServer
) -> None:
    root = _file(tmp_path)
    host, port = await start_server(root, limit_rate=RATE)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:  # two connections: each gets the whole rate
        for n in range(2):

            async def fetch(n: int = n) -> None:
                async with ftx.connect(host, port) as client:
                    await client.get("big.bin", tmp_path / f"copy{n}.bin")

            nursery.start_soon(fetch)
    elapsed = trio.current_time() - started
    for n in range(2):
        assert (tmp_path / f"copy{n}.bin").read_bytes() == (root / "big.bin").read_bytes()
    assert elapsed >= (SIZE - 20_000) / RATE
    assert elapsed < 2 * (SIZE / RATE) + 1.0  # not shared: both ran at the rate at once


async def test_a_shared_client_limit_is_shared_by_its_connections_and_uploads(
    tmp_path: Path, start_server: StartServer
) -> None:
    root = tmp_path / "served"
    root.mkdir()
    host, port = await start_server(root, writable=True)
    sources = [tmp_path / f"up{n}.bin" for n in range(2)]
    for source in sources:
        source.write_bytes(os.urandom(SIZE // 2))
    config = ftx.ClientConfig(rate_limit=ftx.RateLimit(RATE))
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for source in sources:

            async def put(source: Path = source) -> None:
                async with ftx.connect(host, port, config) as client:
                    await client.put(source, source.name)

            nursery.start_soon(put)
    elapsed = trio.current_time() - started
    for source in sources:
        assert (root / source.name).read_bytes() == source.read_bytes()
    # 1.2 MB in all through one limit of 1 MB/s (less one burst).
    assert elapsed >= (SIZE - 20_000) / RATE


@pytest.mark.parametrize("side", ["client", "server"])
async def test_a_limit_holds_a_file_big_enough_for_the_bulk_path(
    side: str, tmp_path: Path, start_server: StartServer
) -> None:
    # Past the bulk path's threshold (8 MiB), a worker thread would own the socket: a limited
    # connection must not take that path, or the limit would not hold.
    size, rate = 9 << 20, 8 << 20
    root = tmp_path / "served"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(size))
    host, port = await start_server(root, **({"limit_rate": rate} if side == "server" else {}))
    limit = ftx.RateLimit(rate) if side == "client" else None
    started = trio.current_time()
    async with ftx.connect(host, port, ftx.ClientConfig(rate_limit=limit)) as client:
        await client.get("big.bin", tmp_path / "copy.bin")
    elapsed = trio.current_time() - started
    assert (tmp_path / "copy.bin").read_bytes() == (root / "big.bin").read_bytes()
    assert elapsed >= (size - (256 << 10)) / rate
