"""FramedChannel's sending rules: the direct socket path, send_nowait / flush, what a cancelled
send guarantees, backpressure; and the conformance checks for them (ftx.testing).

Over a real socket pair the kernel's buffers are made small, so that "the socket is full" is
reached with a few hundred KiB, and each test stops by itself (bounded loops, fail_after).
"""

from __future__ import annotations

import math
import socket

import pytest
import trio
from trio.testing import lockstep_stream_pair, memory_stream_pair, wait_all_tasks_blocked

import ftx.testing
from ftx.errors import LocalProtocolError
from ftx.framing import FramedChannel, encode_frame
from ftx.testing import ChannelPair, check_framed_channel

SMALL_BUFFER = 16 * 1024


def socket_channels(**kwargs: int) -> tuple[FramedChannel, FramedChannel, socket.socket]:
    """Two channels over a Unix socket pair with small kernel buffers; also the receiving end's
    socket, to look at what arrived without the channel."""
    a, b = socket.socketpair()
    for sock in (a, b):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    left = trio.SocketStream(trio.socket.from_stdlib_socket(a))
    right = trio.SocketStream(trio.socket.from_stdlib_socket(b))
    return FramedChannel(left, **kwargs), FramedChannel(right, **kwargs), b


async def socketpair_channels() -> ChannelPair:
    sender, receiver, _ = socket_channels()
    return sender, receiver


def readable_now(sock: socket.socket) -> bytes:
    """What the socket holds, without waiting."""
    try:
        return sock.recv(1 << 20, socket.MSG_DONTWAIT | socket.MSG_PEEK)
    except BlockingIOError:
        return b""


async def test_check_framed_channel_over_a_socket_pair() -> None:
    await check_framed_channel(socketpair_channels)


async def test_a_small_frame_is_one_write_and_one_yield() -> None:
    sender, receiver, raw = socket_channels()
    async with sender, receiver:
        with trio.testing.assert_checkpoints():
            await sender.send(b"hello")
        assert readable_now(raw) == encode_frame(b"hello")
        assert sender.pending_bytes == 0


async def test_send_nowait_queues_without_io_and_flush_writes_them_together() -> None:
    sender, receiver, raw = socket_channels(send_buffer_size=100)
    async with sender, receiver:
        with trio.testing.assert_no_checkpoints():
            sender.send_nowait(b"one")
            sender.send_nowait(bytearray(b"two"))
            sender.send_nowait(b"")
        assert readable_now(raw) == b""  # nothing written yet
        assert sender.pending_bytes == 7 + 7 + 4
        await sender.flush()
        assert sender.pending_bytes == 0
        assert readable_now(raw) == b"".join(map(encode_frame, [b"one", b"two", b""]))
        assert [await receiver.receive() for _ in range(3)] == [b"one", b"two", b""]


async def test_send_nowait_refuses_past_the_buffer_size_and_queues_nothing() -> None:
    sender, receiver, _ = socket_channels(send_buffer_size=20)
    async with sender, receiver:
        sender.send_nowait(bytes(10))  # 14 bytes queued
        with pytest.raises(trio.WouldBlock):
            sender.send_nowait(bytes(3))  # 7 more would make 21
        assert sender.pending_bytes == 14
        sender.send_nowait(bytes(2))  # exactly 20
        with pytest.raises(LocalProtocolError):
            sender.send_nowait(bytes(sender.max_frame_size + 1))
        await sender.send(b"last")  # the queued frames go first
        assert [await receiver.receive() for _ in range(3)] == [bytes(10), bytes(2), b"last"]
        assert sender.send_buffer_size == 20


async def test_send_nowait_while_another_task_sends_is_busy() -> None:
    sender = FramedChannel(lockstep_stream_pair()[0])
    async with sender, trio.open_nursery() as nursery:
        nursery.start_soon(sender.send, b"blocked")
        await wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            sender.send_nowait(b"x")
        nursery.cancel_scope.cancel()


async def test_send_eof_flushes_the_queued_frames_first() -> None:
    sender, receiver, _ = socket_channels()
    async with sender, receiver:
        sender.send_nowait(b"queued")
        await sender.send_eof()
        assert [frame async for frame in receiver] == [b"queued"]
        with pytest.raises(trio.ClosedResourceError):
            await sender.send(b"after eof")


async def test_queued_frames_over_a_memory_stream_go_with_the_next_send() -> None:
    a, b = memory_stream_pair()
    sender, receiver = FramedChannel(a), FramedChannel(b)
    sender.send_nowait(b"1")
    sender.send_nowait(b"2")
    await sender.send(b"3")
    assert [await receiver.receive() for _ in range(3)] == [b"1", b"2", b"3"]


async def test_a_cancelled_send_that_had_not_started_sends_nothing_and_breaks_nothing() -> None:
    sender, receiver, _ = socket_channels()
    async with sender, receiver:
        with trio.CancelScope() as scope:
            scope.cancel()
            await sender.send(b"never")
        assert scope.cancelled_caught
        await sender.send(b"after")
        assert await receiver.receive() == b"after"


async def fill(sender: FramedChannel, frame: bytes) -> tuple[list[bytes], list[bool]]:
    """Send ``frame`` (numbered) until the socket is full, each send cancelled once it blocks.
    Return the frames sent, and for each whether its send raised Cancelled."""
    sent: list[bytes] = []
    cancelled: list[bool] = []

    async def cancel_when_blocked(scope: trio.CancelScope) -> None:
        await wait_all_tasks_blocked()
        scope.cancel()

    for index in range(10_000):
        numbered = index.to_bytes(4, "big") + frame
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(cancel_when_blocked, scope)
                await sender.send(numbered)
            nursery.cancel_scope.cancel()
        sent.append(numbered)
        cancelled.append(scope.cancelled_caught)
        if scope.cancelled_caught:
            break
    return sent, cancelled


@pytest.mark.parametrize("size", [100, 5000, 60_000])
async def test_cancelled_sends_lose_no_committed_frame_and_send_no_other(size: int) -> None:
    """Frames whose send returned arrive, whole and in order; a frame whose send raised
    Cancelled never arrives; the channel stays usable."""
    sender, receiver, _ = socket_channels()
    async with sender, receiver:
        with trio.fail_after(20):
            sent, cancelled = await fill(sender, bytes(size))
            assert cancelled[-1], "the socket never filled up"
            assert not any(cancelled[:-1])
            expected = [*sent[:-1], b"next"]
            got: list[bytes] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender.send, b"next")
                for _ in expected:
                    got.append(await receiver.receive())
        assert got == expected


async def test_a_committed_frame_cancelled_mid_write_returns_and_finishes_later() -> None:
    sender, receiver, _ = socket_channels()
    big = bytes(range(256)) * 1000  # far more than the socket buffers hold
    async with sender, receiver:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:

                async def cancel_when_blocked() -> None:
                    await wait_all_tasks_blocked()
                    scope.cancel()

                nursery.start_soon(cancel_when_blocked)
                await sender.send(big)
                returned = True
        assert returned
        assert not scope.cancelled_caught  # committed: send returned instead of raising
        assert 0 < sender.pending_bytes < len(big)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.flush)
            assert await receiver.receive() == big
        assert sender.pending_bytes == 0


async def test_pending_bytes_go_before_the_next_frame() -> None:
    sender, receiver, _ = socket_channels()
    big = bytes(300_000)
    async with sender, receiver:
        with trio.move_on_after(0.05):
            await sender.send(big)  # committed; the rest pending when the deadline passes
        assert sender.pending_bytes > 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.send, b"then this")
            assert await receiver.receive() == big
            assert await receiver.receive() == b"then this"


async def test_a_cancelled_flush_keeps_the_rest_for_later() -> None:
    sender, receiver, _ = socket_channels(send_buffer_size=1 << 20)
    frames = [bytes([n]) * 50_000 for n in range(6)]
    async with sender, receiver:
        for frame in frames:
            sender.send_nowait(frame)
        with trio.move_on_after(0.05) as scope:
            await sender.flush()
        assert scope.cancelled_caught
        assert 0 < sender.pending_bytes < sum(len(f) + 4 for f in frames)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.flush)
            assert [await receiver.receive() for _ in frames] == frames


async def test_aclose_writes_what_the_socket_takes_at_once() -> None:
    sender, receiver, _ = socket_channels()
    sender.send_nowait(b"last words")
    await sender.aclose()
    async with receiver:
        assert [frame async for frame in receiver] == [b"last words"]


# ---------------------------------------------------------------------------------------------
# The conformance checks for sending catch channels that break them


class BuffersSends(trio.abc.Channel[bytes]):
    """Keeps each frame until the next send: what a coalescing channel must not do."""

    def __init__(self, inner: FramedChannel) -> None:
        self.inner = inner

    async def send(self, value: bytes) -> None:
        await self.inner.flush()
        self.inner.send_nowait(value)

    async def receive(self) -> bytes:
        return await self.inner.receive()

    async def aclose(self) -> None:
        await self.inner.aclose()


class SendIgnoresCancellation(BuffersSends):
    async def send(self, value: bytes) -> None:
        with trio.CancelScope(shield=True):
            await self.inner.send(value)


async def test_checker_catches_a_channel_that_keeps_sent_frames() -> None:
    async def maker() -> ChannelPair:
        a, b = memory_stream_pair()
        return BuffersSends(FramedChannel(a)), BuffersSends(FramedChannel(b))

    with pytest.raises(AssertionError, match="left it in a buffer"):
        await check_framed_channel(maker)


async def test_checker_catches_a_send_that_ignores_cancellation() -> None:
    async def maker() -> ChannelPair:
        a, b = memory_stream_pair()
        return SendIgnoresCancellation(FramedChannel(a)), SendIgnoresCancellation(FramedChannel(b))

    with pytest.raises(AssertionError, match="did not raise Cancelled"):
        await check_framed_channel(maker)


class _Unbounded(trio.abc.Channel[bytes]):
    def __init__(
        self, out: trio.MemorySendChannel[bytes], inn: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        self.out, self.inn = out, inn

    async def send(self, value: bytes) -> None:
        await self.out.send(value)

    async def receive(self) -> bytes:
        return await self.inn.receive()

    async def aclose(self) -> None:
        await self.out.aclose()
        await self.inn.aclose()


async def _unbounded_pair() -> ChannelPair:
    forward_send, forward_receive = trio.open_memory_channel[bytes](math.inf)
    back_send, back_receive = trio.open_memory_channel[bytes](math.inf)
    return _Unbounded(forward_send, back_receive), _Unbounded(back_send, forward_receive)


async def test_checker_catches_a_channel_without_backpressure() -> None:
    with pytest.raises(AssertionError, match="no backpressure"):
        await ftx.testing._check_backpressure(_unbounded_pair)
