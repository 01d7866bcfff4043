"""A receive span that takes a frame piece by piece (BlockingReceiver.begin_frame and
read_payload_into, the bulk path's cache-sized pieces): every byte arrives once and in order,
frames after the span stay with the event loop, and a span that stops inside a frame breaks the
channel's receiving side instead of handing out the rest of a frame as a frame of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftx.framing import (
    BlockingReceiver,
    FramedChannel,
    IdleClock,
    IncompleteFrameError,
    SpanInterruptedError,
    encode_header,
)


async def socket_pair() -> tuple[FramedChannel, FramedChannel]:
    left, right = trio.socket.socketpair()
    return FramedChannel(trio.SocketStream(left)), FramedChannel(trio.SocketStream(right))


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FramedChannel, FramedChannel]]:
    a, b = await socket_pair()
    yield a, b
    await trio.aclose_forcefully(a)
    await trio.aclose_forcefully(b)


def in_pieces(count: int, window: int):  # type: ignore[no-untyped-def]
    """A span's work: ``count`` frames, each as (first byte, the pieces of its payload)."""

    def work(receiver: BlockingReceiver) -> list[tuple[int | None, list[bytes]]]:
        buffer = memoryview(bytearray(window))
        frames = []
        for _ in range(count):
            size, first = receiver.begin_frame()
            pieces = []
            while piece := receiver.read_payload_into(buffer):
                assert piece <= window
                pieces.append(bytes(buffer[:piece]))
            assert sum(map(len, pieces)) == size
            assert not receiver.mid_frame
            frames.append((first, pieces))
        return frames

    return work


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 300_000), min_size=1, max_size=6),
    window=st.integers(1, 70_000),
    whole=st.sets(st.integers(0, 5)),
)
def test_pieces_are_the_frames_bytes_in_order(
    sizes: list[int], window: int, whole: set[int]
) -> None:
    frames = [
        bytes([n % 251 + 1]) + bytes(range(256)) * (size // 256) for n, size in enumerate(sizes)
    ]

    def work(receiver: BlockingReceiver) -> list[bytes]:
        buffer = memoryview(bytearray(max(window, 1 << 20)))
        got = []
        for index, frame in enumerate(frames):
            size, first = receiver.begin_frame()
            assert (size, first) == (len(frame), frame[0])
            if index in whole:  # as the bulk path takes a frame that is not DATA
                got.append(bytes(buffer[: receiver.receive_into(buffer)]))
                continue
            pieces = bytearray()
            while piece := receiver.read_payload_into(buffer[:window]):
                pieces += buffer[:piece]
            got.append(bytes(pieces))
        return got

    async def main() -> None:
        a, b = await socket_pair()
        with trio.fail_after(20):
            async with a, b, trio.open_nursery() as nursery:
                nursery.start_soon(b.send_frames, *[[f] for f in frames], [b"after"])
                assert await a.receive_span(work, IdleClock(10, 1)) == frames
                assert await a.receive() == b"after"  # read past the span: kept

    trio.run(main)


async def test_an_empty_frame_has_no_first_byte(pair: tuple[FramedChannel, FramedChannel]) -> None:
    a, b = pair
    with trio.fail_after(10):
        await b.send(b"")
        await b.send(b"x")
        got = await a.receive_span(in_pieces(2, 16), IdleClock(10, 1))
    assert got == [(None, []), (ord("x"), [b"x"])]


async def test_a_span_that_stops_inside_a_frame_breaks_receiving(
    pair: tuple[FramedChannel, FramedChannel],
) -> None:
    a, b = pair

    class Stop(Exception):
        pass

    def work(receiver: BlockingReceiver) -> None:
        buffer = memoryview(bytearray(10))
        receiver.begin_frame()
        receiver.read_payload_into(buffer)
        raise Stop

    with trio.fail_after(10):
        await b.send(bytes(100))
        await b.send(b"next")
        with pytest.raises(Stop):
            await a.receive_span(work, IdleClock(10, 1))
        # The other 90 bytes of the first frame must not come out as a frame of their own.
        with pytest.raises(trio.BrokenResourceError):
            await a.receive()


async def test_cancelled_waiting_inside_a_frame_breaks_receiving_but_not_before_it(
    pair: tuple[FramedChannel, FramedChannel],
) -> None:
    a, b = pair
    stream = b.transport_stream
    assert isinstance(stream, trio.SocketStream)
    with trio.fail_after(10):
        # Only the header and the first half of a frame: the span waits for the rest.
        await stream.send_all(encode_header(200) + bytes(100))
        with trio.move_on_after(0.2) as scope:
            await a.receive_span(in_pieces(1, 1000), IdleClock(10, 1))
        assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError):
            await a.receive()

    c, d = await socket_pair()
    async with c, d:
        stream = d.transport_stream
        assert isinstance(stream, trio.SocketStream)
        with trio.fail_after(10):
            await stream.send_all(encode_header(200))  # the header, no payload yet
            with trio.move_on_after(0.2) as scope:
                await c.receive_span(in_pieces(1, 1000), IdleClock(10, 1))
            assert scope.cancelled_caught
            await stream.send_all(bytes(200))
            assert await c.receive() == bytes(200)  # nothing was taken: the frame is whole


async def test_the_stream_ending_inside_a_frame_is_an_incomplete_frame(
    pair: tuple[FramedChannel, FramedChannel],
) -> None:
    a, b = pair
    stream = b.transport_stream
    assert isinstance(stream, trio.SocketStream)
    with trio.fail_after(10):
        await stream.send_all(encode_header(200) + bytes(50))
        await stream.send_eof()
        with pytest.raises(IncompleteFrameError):
            await a.receive_span(in_pieces(1, 1000), IdleClock(10, 1))


async def test_a_woken_span_stops_between_pieces(
    pair: tuple[FramedChannel, FramedChannel],
) -> None:
    a, b = pair

    def work(receiver: BlockingReceiver) -> None:
        buffer = memoryview(bytearray(10))
        receiver.begin_frame()
        receiver.read_payload_into(buffer)
        receiver.wake()
        receiver.check_awake()

    with trio.fail_after(10):
        await b.send(bytes(100))
        with pytest.raises(SpanInterruptedError):
            await a.receive_span(work, IdleClock(10, 1))
        with pytest.raises(trio.BrokenResourceError):
            await a.receive()
