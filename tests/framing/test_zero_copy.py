"""FramedChannel's zero-copy paths: ``receive_into`` and ``send_file``.

``receive_into(buffer)`` puts the next payload at the start of a caller's buffer; on a
:class:`trio.SocketStream` it reads most of the payload straight from the socket with
``recv_into``, around the decoder, so the tests check, over memory streams and over real TCP
loopback connections, that this second path keeps the framing exact: any mix of ``receive`` and
``receive_into``, any split of the byte stream, cancellation at any point (nothing lost), and the
same errors as ``receive``.

``send_file(prefix, fd, offset, count)`` sends one frame made of ``prefix`` and a slice of an open
file, with :func:`os.sendfile` on TCP and :func:`os.pread` elsewhere: the tests check what the
peer receives, zero padding when the file is short, the size limit, a closed peer, and a transfer
large enough to fill the socket so that ``sendfile`` has to wait.

Where a test must prove that the fast path really ran, it counts the bytes that went through
``recv_into`` or ``os.sendfile``. The regression tests for four bugs these tests found (an empty
frame, a transport error in a payload, a read-only buffer, an unreadable file) are among them.
"""

from __future__ import annotations

import array
import errno
import fcntl
import itertools
import os
import random
import socket
import termios
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio.testing import (
    MemoryReceiveStream,
    MemorySendStream,
    assert_checkpoints,
    lockstep_stream_pair,
    memory_stream_pair,
    open_stream_to_socket_listener,
    wait_all_tasks_blocked,
)

from ftx.errors import FrameTooLargeError, IncompleteFrameError, LocalProtocolError
from ftx.framing import Buffer, FramedChannel, encode_frame, encode_header

MIB = 1 << 20

PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Transport = Literal["memory", "tcp"]
TRANSPORTS: list[Transport] = ["memory", "tcp"]
ReadHow = Literal["receive", "into-bytearray", "into-memoryview"]
READS: list[ReadHow] = ["receive", "into-bytearray", "into-memoryview"]


# ---------------------------------------------------------------------------------------------
# Transports and helpers


async def tcp_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """Both ends of a fresh TCP connection on 127.0.0.1 (port 0): (client, server)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        client = await open_stream_to_socket_listener(listeners[0])
        server = await listeners[0].accept()
    return client, server


async def stream_pair(
    transport: Transport,
) -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
    """(sending end, receiving end) of a memory stream pair or of a TCP connection."""
    if transport == "tcp":
        return await tcp_stream_pair()
    return memory_stream_pair()


def hand_driven(**kwargs: int) -> tuple[FramedChannel, MemorySendStream, MemoryReceiveStream]:
    """A channel whose transport the test drives by hand: read what it wrote, feed what it reads."""
    outgoing, incoming = MemorySendStream(), MemoryReceiveStream()
    return FramedChannel(trio.StapledStream(outgoing, incoming), **kwargs), outgoing, incoming


def unread_bytes(stream: trio.SocketStream) -> int:
    """Bytes that arrived on the socket and were not read yet (FIONREAD)."""
    count = array.array("i", [0])
    fcntl.ioctl(stream.socket.fileno(), termios.FIONREAD, count)
    return count[0]


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Let every task run until ``predicate()`` holds; fail after about two seconds."""
    for _ in range(500):
        await wait_all_tasks_blocked()
        if predicate():
            return
        await trio.sleep(0.004)
    raise AssertionError(f"timed out waiting until {what}")


async def drained(stream: trio.abc.Stream) -> None:
    """Wait until the task reading ``stream`` has taken everything sent so far and is blocked.

    Memory streams deliver synchronously, so all tasks being blocked is enough; on TCP the
    socket's receive queue must also be empty.
    """
    if isinstance(stream, trio.SocketStream):
        await wait_until(lambda: unread_bytes(stream) == 0, "the reader emptied the socket")
    else:
        await wait_all_tasks_blocked()


def count_recv_into(stream: trio.SocketStream, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of every ``recv_into`` on ``stream``'s socket: the straight-read path."""
    sizes: list[int] = []
    real = stream.socket.recv_into

    async def recv_into(buffer: memoryview, nbytes: int = 0, flags: int = 0) -> int:
        size = await real(buffer, nbytes, flags)
        sizes.append(size)
        return size

    monkeypatch.setattr(stream.socket, "recv_into", recv_into)
    return sizes


@dataclass
class SendfileLog:
    """What went through :func:`os.sendfile` during a test."""

    calls: int = 0
    bytes_sent: int = 0
    would_block: int = 0


@pytest.fixture
def sendfile_log(monkeypatch: pytest.MonkeyPatch) -> SendfileLog:
    """Counts os.sendfile calls, bytes and EAGAINs (it still really sends)."""
    log = SendfileLog()
    real = os.sendfile

    def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        log.calls += 1
        try:
            sent = real(out_fd, in_fd, offset, count)
        except BlockingIOError:
            log.would_block += 1
            raise
        log.bytes_sent += sent
        return sent

    monkeypatch.setattr(os, "sendfile", sendfile)
    return log


def assert_same(got: bytes | bytearray | memoryview, expected: bytes, what: str) -> None:
    """Compare payloads without pytest diffing megabytes: report sizes and first difference."""
    got = bytes(got)
    if got != expected:
        first = next(
            (i for i, (x, y) in enumerate(zip(got, expected, strict=False)) if x != y),
            min(len(got), len(expected)),
        )
        raise AssertionError(
            f"{what}: got {len(got)} bytes, expected {len(expected)}; first difference at "
            f"offset {first}"
        )


class Reader:
    """Reads frames from a channel by ``receive`` or by ``receive_into`` a bytearray or a
    memoryview (a slice in the middle of a larger bytearray). The buffers are reused from frame
    to frame and start full of junk, so stale bytes of an earlier frame would show."""

    def __init__(self, max_frame_size: int) -> None:
        self.array = bytearray(b"\xee" * (max_frame_size + 3))
        self.backing = bytearray(b"\xdd" * (max_frame_size + 20))
        self.view = memoryview(self.backing)[7 : 7 + max_frame_size]

    async def read(self, channel: FramedChannel, how: ReadHow) -> bytes:
        if how == "receive":
            return await channel.receive()
        buffer = self.array if how == "into-bytearray" else self.view
        size = await channel.receive_into(buffer)
        assert 0 <= size <= channel.max_frame_size, size
        return bytes(buffer[:size])


async def deliver(stream: trio.abc.HalfCloseableStream, wire: bytes, sizes: list[int]) -> None:
    """Send ``wire`` in chunks of ``sizes`` (cycled), letting the reader catch up after each
    chunk so that it sees exactly these splits, then close ``stream``."""
    position = 0
    for size in itertools.islice(itertools.cycle(sizes), len(wire)):
        if position >= len(wire):
            break
        await stream.send_all(wire[position : position + size])
        position += size
        await wait_all_tasks_blocked()
    assert position >= len(wire)
    await stream.aclose()


# ---------------------------------------------------------------------------------------------
# receive_into: any split, any mix with receive


SMALL_MAX = 48


def small_payloads(allow_empty: bool) -> st.SearchStrategy[bytes]:
    """Payloads up to SMALL_MAX bytes, with full-size ones (and empty ones) coming up often."""
    some = st.binary(min_size=1, max_size=SMALL_MAX)
    full = st.binary(min_size=SMALL_MAX, max_size=SMALL_MAX)
    return (st.just(b"") | some | full) if allow_empty else (some | full)


PairMaker = Callable[[], tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]]
PAIRS = [memory_stream_pair, lockstep_stream_pair]


async def check_any_mix(pair: PairMaker, data: st.DataObject, *, allow_empty: bool) -> None:
    """Draw payloads, cuts of the byte stream and a read method per frame; deliver the frames
    through ``pair`` in those cuts and check that the reads give back every payload, in order,
    then EndOfChannel."""
    payloads = data.draw(st.lists(small_payloads(allow_empty), max_size=10), label="payloads")
    reads = data.draw(
        st.lists(st.sampled_from(READS), min_size=len(payloads) + 1, max_size=len(payloads) + 1),
        label="reads",
    )
    sizes = data.draw(st.lists(st.integers(1, 3 * SMALL_MAX), min_size=1, max_size=8), label="cuts")
    chunk = data.draw(st.sampled_from([1, 5, 64 * 1024]), label="receive_chunk_size")
    wire = b"".join(encode_frame(p, max_frame_size=SMALL_MAX) for p in payloads)
    sending, receiving = pair()
    channel = FramedChannel(receiving, max_frame_size=SMALL_MAX, receive_chunk_size=chunk)
    reader = Reader(SMALL_MAX)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliver, sending, wire, sizes)
            # Checked as they come, so that a wrong read stops the sender at once.
            for index, how in enumerate(reads[:-1]):
                got = await reader.read(channel, how)
                assert got == payloads[index], f"frame {index} read by {how}"
            with pytest.raises(trio.EndOfChannel):
                await reader.read(channel, reads[-1])
    await channel.aclose()


@pytest.mark.parametrize("pair", PAIRS)
@PROPERTY
@given(data=st.data())
async def test_any_mix_of_receive_and_receive_into_gives_every_payload_in_order(
    pair: PairMaker, data: st.DataObject
) -> None:
    """Whatever the payloads (1 byte to full-size), however the byte stream is split (memory or
    lockstep streams, receive_chunk_size 1, 5 or 64 KiB), and whichever of receive / receive_into
    (reused bytearray or memoryview) reads each frame, the payloads come back exactly and in
    order, then the end of the stream is EndOfChannel for the next read."""
    await check_any_mix(pair, data, allow_empty=False)


@pytest.mark.parametrize("pair", PAIRS)
@PROPERTY
@given(data=st.data())
async def test_any_mix_with_empty_frames_gives_every_payload_in_order(
    pair: PairMaker, data: st.DataObject
) -> None:
    """The same property with empty payloads among the others (regression: receive_into once
    returned the same empty frame for ever)."""
    await check_any_mix(pair, data, allow_empty=True)


# ---------------------------------------------------------------------------------------------
# receive_into over TCP: the recv_into path


def random_parts(payload: bytes, rng: random.Random) -> list[bytes | bytearray | memoryview]:
    """``payload`` cut at up to 3 random points, as a mix of buffer types (for send_parts)."""
    points = sorted(rng.randrange(len(payload) + 1) for _ in range(rng.randrange(4)))
    bounds = [0, *points, len(payload)]
    kinds: list[Callable[[bytes], bytes | bytearray | memoryview]] = [bytes, bytearray, memoryview]
    return [rng.choice(kinds)(payload[a:b]) for a, b in itertools.pairwise(bounds)]


async def test_receive_into_over_tcp_gets_large_frames_mostly_by_recv_into(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over a real TCP connection with a 1 MiB limit, frames of many sizes (1 byte to the full
    1 MiB) sent with send_parts in random pieces come back exactly, through receive_into (into a
    reused bytearray or memoryview) mixed with receive; most payload bytes really went through
    the socket's recv_into, and the clean end is EndOfChannel."""
    rng = random.Random(4242)
    sizes = [MIB, 1, 300_001, 65_536, 777_777, 3, MIB - 1, 12_289, MIB, 500_000]
    payloads = [rng.randbytes(size) for size in sizes]
    reads: list[ReadHow] = [rng.choice(READS) for _ in payloads]
    reads[0] = "into-bytearray"  # the largest frames always through receive_into
    reads[-4] = reads[-2] = "into-memoryview"
    client, server = await tcp_stream_pair()
    straight = count_recv_into(server, monkeypatch)
    sender = FramedChannel(client, max_frame_size=MIB)
    receiver = FramedChannel(server, max_frame_size=MIB)
    reader = Reader(MIB)

    async def send_all_frames() -> None:
        for payload in payloads:
            await sender.send_parts(*random_parts(payload, rng))
        await sender.send_eof()

    async with sender, receiver:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all_frames)
                for index, (payload, how) in enumerate(zip(payloads, reads, strict=True)):
                    assert_same(await reader.read(receiver, how), payload, f"frame {index}")
                for how in READS:
                    with pytest.raises(trio.EndOfChannel):
                        await reader.read(receiver, how)
    into_bytes = sum(len(p) for p, how in zip(payloads, reads, strict=True) if how != "receive")
    assert sum(straight) >= into_bytes // 2, "receive_into did not read from the socket itself"


# ---------------------------------------------------------------------------------------------
# receive_into: cancellation loses nothing


PAYLOAD_200K = random.Random(7).randbytes(200_000)


@pytest.mark.parametrize("then", ["into-bytearray", "receive"])
@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param([4], id="header-only"),
        pytest.param([4 + 1000], id="header-and-some-payload"),
        pytest.param([4 + 1000, 50_000, 30_000], id="payload-read-straight-three-cancels"),
    ],
)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_receive_into_cancelled_mid_frame_loses_nothing(
    transport: Transport,
    pieces: list[int],
    then: ReadHow,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A receive_into cancelled while it waits for the rest of a payload (after the header, after
    part of the payload, after reading part of it straight into the buffer, and again after
    each further piece) gives back what it read: once the rest arrives, the next receive_into or
    receive returns the complete payload, and the next frame follows intact."""
    sending, receiving = await stream_pair(transport)
    straight: list[int] = []
    if isinstance(receiving, trio.SocketStream):
        straight = count_recv_into(receiving, monkeypatch)
    channel = FramedChannel(receiving, max_frame_size=MIB)
    reader = Reader(MIB)
    wire = encode_frame(PAYLOAD_200K, max_frame_size=MIB) + encode_frame(b"after")
    position = 0
    async with channel, sending:
        with trio.fail_after(10):
            for index, size in enumerate(pieces):
                done: list[bytes] = []
                async with trio.open_nursery() as nursery:

                    async def read_once(done: list[bytes] = done) -> None:
                        done.append(await reader.read(channel, "into-bytearray"))

                    nursery.start_soon(read_once)
                    await wait_all_tasks_blocked()
                    await sending.send_all(wire[position : position + size])
                    position += size
                    await drained(receiving)
                    if index > 0 and isinstance(receiving, trio.SocketStream):
                        # Later pieces arrive while the payload is being read straight.
                        await wait_until(lambda: sum(straight) > 0, "recv_into was used")
                    nursery.cancel_scope.cancel()
                assert done == [], "the read completed although the payload was incomplete"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sending.send_all, wire[position:])
                assert_same(await reader.read(channel, then), PAYLOAD_200K, "payload")
            assert await reader.read(channel, "into-memoryview") == b"after"
            await sending.send_eof()
            with pytest.raises(trio.EndOfChannel):
                await reader.read(channel, then)


@pytest.mark.parametrize("receive_chunk_size", [1, 64 * 1024])
async def test_receive_into_cancelled_at_every_byte_loses_nothing(receive_chunk_size: int) -> None:
    """Bytes arrive one at a time; after each, a receive_into starts and is cancelled unless it
    completed. Every stream position is a cancellation point; every payload still comes back
    once, whole and in order."""
    channel, _, incoming = hand_driven(max_frame_size=2048, receive_chunk_size=receive_chunk_size)
    frames = [b"first", bytes(range(256)) * 4, b"z", b"last one"]
    wire = b"".join(encode_frame(frame) for frame in frames)
    reader = Reader(2048)
    got: list[bytes] = []
    for byte in wire:
        incoming.put_data(bytes([byte]))
        async with trio.open_nursery() as nursery:

            async def read_once(nursery: trio.Nursery = nursery) -> None:
                got.append(await reader.read(channel, "into-memoryview"))
                nursery.cancel_scope.cancel()

            nursery.start_soon(read_once)
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert got == frames


async def test_receive_into_is_a_checkpoint_and_a_cancelled_call_takes_nothing() -> None:
    """With frames already buffered, receive_into is still a checkpoint, and a call made in a
    cancelled scope raises Cancelled without taking the next frame."""
    channel, _, incoming = hand_driven(max_frame_size=100)
    incoming.put_data(encode_frame(b"one") + encode_frame(b"two"))  # one read takes both
    buffer = bytearray(100)
    with assert_checkpoints():
        size = await channel.receive_into(buffer)
    assert buffer[:size] == b"one"
    with trio.CancelScope() as scope:
        scope.cancel()
        await channel.receive_into(buffer)
    assert scope.cancelled_caught
    with assert_checkpoints():
        size = await channel.receive_into(buffer)
    assert buffer[:size] == b"two"


# ---------------------------------------------------------------------------------------------
# receive_into: errors, as receive raises them


@pytest.mark.parametrize(
    ("cut", "received", "expected"),
    [
        (2, 2, 4),  # inside the header
        (4, 4, 4 + 300_000),  # right after the header
        (4 + 10, 4 + 10, 4 + 300_000),  # a little of the payload (buffered by the decoder)
        (4 + 200_000, 4 + 200_000, 4 + 300_000),  # most of it (read straight on TCP)
    ],
)
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_receive_into_end_of_stream_inside_a_frame(
    transport: Transport, cut: int, received: int, expected: int
) -> None:
    """The peer half-closes inside a frame: receive_into raises IncompleteFrameError with the
    byte counts; receiving is broken from then on (BrokenResourceError chained to it, from both
    receive and receive_into), but sending still works and the peer gets the frame."""
    sending, receiving = await stream_pair(transport)
    peer = FramedChannel(sending, max_frame_size=MIB)
    channel = FramedChannel(receiving, max_frame_size=MIB)
    reader = Reader(MIB)
    payload = (bytes(range(256)) * 1172)[:300_000]
    wire = encode_frame(b"whole") + encode_frame(payload, max_frame_size=MIB)[:cut]

    async def send_cut() -> None:
        await sending.send_all(wire)
        await sending.send_eof()

    async with peer, channel:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_cut)
                assert await reader.read(channel, "into-bytearray") == b"whole"
                with pytest.raises(IncompleteFrameError) as excinfo:
                    await reader.read(channel, "into-memoryview")
            assert (excinfo.value.received, excinfo.value.expected) == (received, expected)
            for how in READS:
                with pytest.raises(trio.BrokenResourceError) as broken:
                    await reader.read(channel, how)
                assert broken.value.__cause__ is excinfo.value
            await channel.send(b"you cut a frame short")
            assert await peer.receive() == b"you cut a frame short"


async def test_receive_into_frame_too_large_right_after_the_header() -> None:
    """A header announcing max_frame_size + 1 raises FrameTooLargeError as soon as its 4th byte
    arrives, without waiting for a body; receiving is broken from then on, sending still works."""
    channel, outgoing, incoming = hand_driven(max_frame_size=100)
    outcome: list[BaseException] = []

    async def receive_into() -> None:
        try:
            await channel.receive_into(bytearray(100))
        except FrameTooLargeError as exc:
            outcome.append(exc)

    header = encode_header(101)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_into)
        incoming.put_data(header[:3])
        await wait_all_tasks_blocked()
        assert outcome == [], "3 header bytes say nothing yet"
        incoming.put_data(header[3:])
        await wait_all_tasks_blocked()
        assert len(outcome) == 1, "FrameTooLargeError must not wait for the body"
        nursery.cancel_scope.cancel()
    error = outcome[0]
    assert isinstance(error, FrameTooLargeError)
    assert (error.size, error.limit) == (101, 100)
    reader = Reader(100)
    for how in READS:
        with pytest.raises(trio.BrokenResourceError) as broken:
            await reader.read(channel, how)
        assert broken.value.__cause__ is error
    await channel.send(b"bye")
    assert outgoing.get_data_nowait() == encode_frame(b"bye")


async def test_receive_into_frame_too_large_over_tcp() -> None:
    """Over TCP, a peer speaking another protocol ("GET / ...") gets FrameTooLargeError with the
    size its first 4 bytes announce."""
    client, server = await tcp_stream_pair()
    async with client, FramedChannel(server) as channel:
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5), pytest.raises(FrameTooLargeError) as excinfo:
            await channel.receive_into(bytearray(channel.max_frame_size))
        assert excinfo.value.size == int.from_bytes(b"GET ", "big")


@pytest.mark.parametrize(
    "small",
    [
        pytest.param(lambda: bytearray(99), id="bytearray"),
        pytest.param(lambda: memoryview(bytearray(500))[:99], id="memoryview"),
        pytest.param(lambda: memoryview(array.array("I", [0] * 24)), id="array-96-bytes"),
        pytest.param(lambda: bytearray(0), id="empty"),
    ],
)
async def test_receive_into_buffer_smaller_than_max_frame_size_is_a_value_error(
    small: Callable[[], bytearray | memoryview],
) -> None:
    """A buffer of fewer than max_frame_size bytes is refused with ValueError, even when the frame
    would fit and even with nothing to read (no waiting); the frame is not consumed."""
    channel, _, incoming = hand_driven(max_frame_size=100)
    with trio.fail_after(1), pytest.raises(ValueError, match="cannot hold a frame of up to 100"):
        await channel.receive_into(small())  # nothing sent: must not block
    incoming.put_data(encode_frame(b"tiny"))
    with pytest.raises(ValueError, match="cannot hold"):
        await channel.receive_into(small())
    buffer = bytearray(100)
    size = await channel.receive_into(buffer)
    assert buffer[:size] == b"tiny"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_receive_into_clean_end_on_a_frame_boundary_is_end_of_channel(
    transport: Transport,
) -> None:
    """The peer closes right after a frame: receive_into returns the frames, then raises
    EndOfChannel on every later call (each a checkpoint), as receive does; a peer that closes
    without sending anything gives EndOfChannel at once."""
    sending, receiving = await stream_pair(transport)
    channel = FramedChannel(receiving, max_frame_size=1000)
    buffer = bytearray(1000)
    async with channel:
        await sending.send_all(encode_frame(b"a" * 1000) + encode_frame(b"last"))
        await sending.aclose()
        with trio.fail_after(5):
            for expected in (b"a" * 1000, b"last"):
                size = await channel.receive_into(buffer)
                assert buffer[:size] == expected
            for _ in range(3):
                with assert_checkpoints(), pytest.raises(trio.EndOfChannel):
                    await channel.receive_into(buffer)
            with pytest.raises(trio.EndOfChannel):
                await channel.receive()
    sending, receiving = await stream_pair(transport)
    await sending.aclose()
    async with FramedChannel(receiving, max_frame_size=1000) as silent:
        with trio.fail_after(5), pytest.raises(trio.EndOfChannel):
            await silent.receive_into(buffer)


async def test_receive_into_busy_when_another_task_receives() -> None:
    """While one task waits in receive_into (or receive), another receive_into or receive raises
    BusyResourceError; the waiting call then gets its frame normally."""
    a, b = lockstep_stream_pair()
    sender, channel = FramedChannel(a, max_frame_size=64), FramedChannel(b, max_frame_size=64)
    reader, other = Reader(64), Reader(64)
    for first in READS:
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def wait_for_frame(how: ReadHow = first, got: list[bytes] = got) -> None:
                got.append(await reader.read(channel, how))

            nursery.start_soon(wait_for_frame)
            await wait_all_tasks_blocked()
            for second in READS:
                with pytest.raises(trio.BusyResourceError):
                    await other.read(channel, second)
            await sender.send(first.encode())
        assert got == [first.encode()]
    await sender.aclose()
    await channel.aclose()


async def test_receive_into_after_aclose_and_aclose_while_reading_straight() -> None:
    """aclose wakes a receive_into blocked in the middle of a payload on TCP (inside recv_into)
    with ClosedResourceError; every later receive_into raises ClosedResourceError."""
    client, server = await tcp_stream_pair()
    channel = FramedChannel(server, max_frame_size=MIB)
    buffer = bytearray(MIB)
    outcome: list[BaseException] = []

    async def read() -> None:
        try:
            await channel.receive_into(buffer)
        except trio.ClosedResourceError as exc:
            outcome.append(exc)

    async with client:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await client.send_all(encode_header(100_000) + bytes(70_000))
                await drained(server)
                await channel.aclose()
    assert len(outcome) == 1
    with pytest.raises(trio.ClosedResourceError):
        await channel.receive_into(buffer)


# ---------------------------------------------------------------------------------------------
# receive_into: buffers


def buffer_makers(size: int) -> dict[str, Callable[[], bytearray | memoryview]]:
    return {
        "bytearray": lambda: bytearray(size),
        "larger bytearray full of junk": lambda: bytearray(b"\xee" * (size + 1000)),
        "memoryview": lambda: memoryview(bytearray(size)),
        "memoryview in the middle": lambda: memoryview(bytearray(b"\xdd" * (size + 50)))[13:],
        "memoryview of a 16-bit array": lambda: memoryview(array.array("H", bytes(size + 2))),
    }


@pytest.mark.parametrize("kind", list(buffer_makers(0)))
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_receive_into_any_writable_buffer(transport: Transport, kind: str) -> None:
    """Bytearrays and memoryviews (a slice with an offset, a view of 16-bit items) all work, with
    one buffer reused for frames of decreasing and increasing sizes: the returned size is the
    payload's, the payload is at the start of the buffer (counted in bytes), whatever the bytes
    after it hold. A frame of exactly max_frame_size is accepted."""
    limit = 100_000
    buffer = buffer_makers(limit)[kind]()
    flat = memoryview(buffer).cast("B")
    rng = random.Random(kind)
    payloads = [rng.randbytes(n) for n in (limit, 70_000, 1, 3, 99_999, 4096, limit)]
    sending, receiving = await stream_pair(transport)
    sender = FramedChannel(sending, max_frame_size=limit)
    channel = FramedChannel(receiving, max_frame_size=limit)

    async def send_all_frames() -> None:
        for payload in payloads:
            await sender.send(payload)

    async with sender, channel:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all_frames)
                for payload in payloads:
                    size = await channel.receive_into(buffer)
                    assert size == len(payload)
                    assert_same(flat[:size], payload, f"{size}-byte payload")


# ---------------------------------------------------------------------------------------------
# receive_into: regressions


async def test_receive_into_empty_frame_is_consumed_once() -> None:
    """Smallest reproducer: frames b"" and b"abc", then end of stream. receive_into must return 0
    once, then 3, then raise EndOfChannel (it once returned 0 for ever)."""
    channel, _, incoming = hand_driven(max_frame_size=16)
    incoming.put_data(encode_frame(b"") + encode_frame(b"abc"))
    incoming.put_eof()
    buffer = bytearray(16)
    sizes = []
    for _ in range(3):
        try:
            sizes.append(await channel.receive_into(buffer))
        except trio.EndOfChannel:
            sizes.append(-1)
    assert sizes == [0, 3, -1]


class FailingOnce(trio.abc.HalfCloseableStream):
    """A stream whose next receive_some raises ``fail`` once (a transient transport error)."""

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.fail: BaseException | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.fail is not None:
            error, self.fail = self.fail, None
            await trio.lowlevel.checkpoint()
            raise error
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize(
    "how",
    [
        "receive",
        "into-bytearray",
    ],
)
async def test_transport_error_mid_payload_then_the_frame_or_broken_never_garbage(
    how: ReadHow,
) -> None:
    """The transport raises once (BrokenResourceError) while a read waits in the middle of a
    payload; the error propagates unchanged. When the transport then delivers the rest, the next
    read must return the frame whole, as receive does (or refuse with BrokenResourceError); it
    must never return other bytes nor raise RuntimeError. The "receive" case is the reference."""
    a, b = memory_stream_pair()
    flaky = FailingOnce(b)
    channel = FramedChannel(flaky, max_frame_size=100, receive_chunk_size=1)
    reader = Reader(100)
    await a.send_all(encode_header(10) + b"01234")
    error = trio.BrokenResourceError("transient")
    outcome: list[BaseException] = []

    async def read_and_fail() -> None:
        try:
            await reader.read(channel, how)
        except trio.BrokenResourceError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_and_fail)
        await wait_all_tasks_blocked()  # five payload bytes taken, waiting for more
        flaky.fail = error  # the waiting receive_some returns b"5"; the next one fails
        await a.send_all(b"5")
    assert len(outcome) == 1
    assert outcome[0] is error, "the transport's error must propagate unchanged"
    await a.send_all(b"6789" + encode_frame(b"next"))
    await a.aclose()
    try:
        first = await reader.read(channel, how)
    except trio.BrokenResourceError:
        return  # refusing is acceptable
    assert first == b"0123456789"
    assert await reader.read(channel, how) == b"next"


async def test_receive_into_read_only_buffer_is_refused_without_losing_the_frame() -> None:
    """A read-only memoryview (of bytes) cannot be written: receive_into must raise (TypeError or
    ValueError) before it takes anything, so that a receive afterwards still gets the frame."""
    channel, _, incoming = hand_driven(max_frame_size=16)
    incoming.put_data(encode_frame(b"hello"))
    incoming.put_eof()
    with pytest.raises((TypeError, ValueError)):
        await channel.receive_into(memoryview(bytes(16)))
    assert await channel.receive() == b"hello"


# ---------------------------------------------------------------------------------------------
# send_file


FILE_SIZE = 300_000


@dataclass
class DataFile:
    path: Path
    fd: int
    content: bytes = field(repr=False)


@pytest.fixture
def data_file(tmp_path: Path) -> Iterator[DataFile]:
    """A 300 000-byte file of random bytes, opened read-only."""
    content = random.Random(99).randbytes(FILE_SIZE)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        yield DataFile(path, fd, content)
    finally:
        os.close(fd)


async def collect(channel: FramedChannel, count: int, into: list[bytes]) -> None:
    """Receive ``count`` frames from ``channel`` into the list ``into``."""
    for _ in range(count):
        into.append(await channel.receive())


async def send_files(
    transport: Transport, fd: int, calls: Sequence[tuple[Buffer, int, int]]
) -> tuple[list[int], list[bytes]]:
    """Make each ``send_file(prefix, fd, offset, count)`` call on a new channel pair; return
    what each call returned, and the frames the other end received."""
    sending, receiving = await stream_pair(transport)
    sender, receiver = FramedChannel(sending), FramedChannel(receiving)
    returned: list[int] = []
    got: list[bytes] = []
    async with sender, receiver:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, receiver, len(calls), got)
                for prefix, offset, count in calls:
                    returned.append(await sender.send_file(prefix, fd, offset, count))
    return returned, got


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_send_file_frames_carry_the_prefix_and_the_file_slice(
    transport: Transport, data_file: DataFile, sendfile_log: SendfileLog
) -> None:
    """Each send_file is one frame: prefix (empty, a few bytes, over 16 KiB; bytes, bytearray or
    memoryview) then exactly ``count`` file bytes from ``offset`` (count 0, 1, the whole file, the
    last bytes), returning ``count``. On TCP the file bytes go through os.sendfile; on a memory
    stream sendfile is never called."""
    content = data_file.content
    cases: list[tuple[bytes | bytearray | memoryview, int, int]] = [
        (b"", 0, 0),
        (b"hdr", 0, 0),
        (b"", 0, 1),
        (b"xy", 5, 1000),
        (bytearray(b"whole:"), 0, FILE_SIZE),
        (memoryview(b"P" * 20_000), 12_345, 100_000),
        (b"", FILE_SIZE - 10, 10),
        (b"", 65_536, 65_536),
        (b"tail", FILE_SIZE - 1, 1),
    ]
    expected = [bytes(p) + content[o : o + c] for p, o, c in cases]
    returned, got = await send_files(transport, data_file.fd, cases)
    assert returned == [count for _, _, count in cases]
    assert len(got) == len(expected)
    for index, (frame, wanted) in enumerate(zip(got, expected, strict=True)):
        assert_same(frame, wanted, f"frame {index} {cases[index][1:]}")
    if transport == "tcp":
        assert sendfile_log.bytes_sent == sum(count for _, _, count in cases)
    else:
        assert sendfile_log.calls == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_send_file_past_the_end_pads_with_zeros_and_keeps_the_framing(
    transport: Transport, data_file: DataFile
) -> None:
    """A file shorter than offset + count: the frame still has prefix + count bytes, the missing
    ones zero, and send_file returns how many came from the file (fewer than count; 0 when the
    offset is at or past the end). The frames after it decode correctly."""
    content = data_file.content
    fd = data_file.fd
    cases = [
        (b"p", FILE_SIZE - 100, 1000, 100),
        (b"", FILE_SIZE, 10, 0),
        (b"far", FILE_SIZE + 5000, 3, 0),
        (b"", 0, FILE_SIZE + 70_000, FILE_SIZE),
    ]
    expected = [p + content[o : o + c] + bytes(c - r) for p, o, c, r in cases]
    expected += [b"next" + content[:10], b"plain"]
    sending, receiving = await stream_pair(transport)
    sender, receiver = FramedChannel(sending), FramedChannel(receiving)
    got: list[bytes] = []
    async with sender, receiver:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, receiver, len(expected), got)
                for prefix, offset, count, from_file in cases:
                    assert await sender.send_file(prefix, fd, offset, count) == from_file
                assert await sender.send_file(b"next", fd, 0, 10) == 10
                await sender.send(b"plain")
    assert len(got) == len(expected)
    for index, (frame, wanted) in enumerate(zip(got, expected, strict=True)):
        assert_same(frame, wanted, f"frame {index}")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_send_file_too_large_is_refused_and_the_channel_stays_usable(
    transport: Transport, data_file: DataFile
) -> None:
    """prefix + count over max_frame_size (or a negative count) raises LocalProtocolError at a
    checkpoint, writes nothing, and leaves the channel usable: a frame of exactly the limit goes
    next and is the first thing the peer receives."""
    fd = data_file.fd
    sending, receiving = await stream_pair(transport)
    sender = FramedChannel(sending, max_frame_size=1000)
    receiver = FramedChannel(receiving, max_frame_size=1000)
    async with sender, receiver:
        for prefix, count in [(b"ab", 999), (b"", 1001), (b"x" * 1001, 0), (b"", -1)]:
            with assert_checkpoints(), pytest.raises(LocalProtocolError):
                await sender.send_file(prefix, fd, 0, count)
        assert await sender.send_file(b"ab", fd, 7, 998) == 998
        await sender.send(b"after")
        with trio.fail_after(5):
            assert await receiver.receive() == b"ab" + data_file.content[7:1005]
            assert await receiver.receive() == b"after"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_send_file_to_a_closed_peer_breaks_the_channel(
    transport: Transport, data_file: DataFile
) -> None:
    """When the peer has closed its end, send_file raises BrokenResourceError (at once on a
    memory stream, once the reset is back on TCP); the channel is then broken: later send and
    send_file raise BrokenResourceError chained to that error."""
    sending, receiving = await stream_pair(transport)
    await receiving.aclose()
    sender = FramedChannel(sending)
    async with sender:

        async def send_until_it_fails() -> None:
            for _ in range(100):  # TCP: the first writes may still be accepted locally
                await sender.send_file(b"pre", data_file.fd, 0, 65_536)
                await trio.sleep(0.001)

        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as excinfo:
            await send_until_it_fails()
        first = excinfo.value
        for operation in (
            lambda: sender.send(b"x"),
            lambda: sender.send_file(b"", data_file.fd, 0, 10),
        ):
            with pytest.raises(trio.BrokenResourceError) as later:
                await operation()
            assert later.value.__cause__ is first


async def test_send_file_large_transfer_waits_while_the_socket_is_full(
    tmp_path: Path, sendfile_log: SendfileLog
) -> None:
    """8 MiB of file in 16 frames of 512 KiB over TCP, with small socket buffers and a reader
    that starts late: os.sendfile hits EAGAIN and send_file waits for the socket to drain, and
    every frame arrives intact (read with receive_into)."""
    chunk = 512 * 1024
    content = random.Random(8).randbytes(8 * MIB)
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    client, server = await tcp_stream_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sender = FramedChannel(client, max_frame_size=chunk + 16)
    receiver = FramedChannel(server, max_frame_size=chunk + 16)
    received = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        async with sender, receiver:

            async def read_late() -> None:
                await trio.sleep(0.2)
                buffer = bytearray(chunk + 16)
                for index in range(16):
                    size = await receiver.receive_into(buffer)
                    assert buffer[:8] == index.to_bytes(8, "big")
                    received.extend(buffer[8:size])

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_late)
                    for index in range(16):
                        prefix = index.to_bytes(8, "big")
                        assert await sender.send_file(prefix, fd, index * chunk, chunk) == chunk
    finally:
        os.close(fd)
    assert_same(received, content, "8 MiB file")
    assert sendfile_log.bytes_sent == len(content)
    assert sendfile_log.would_block > 0, "sendfile never had to wait: the test proves nothing"


async def test_send_file_falls_back_to_reading_when_sendfile_refuses_the_file(
    data_file: DataFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On TCP, when os.sendfile refuses the file outright (EINVAL, as on some file systems), the
    bytes are read and sent instead: the frame is the same."""
    calls: list[int] = []

    def refusing_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        raise OSError(errno.EINVAL, "sendfile not supported for this file")

    monkeypatch.setattr(os, "sendfile", refusing_sendfile)
    client, server = await tcp_stream_pair()
    async with FramedChannel(client) as sender, FramedChannel(server) as receiver:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                got: list[bytes] = []
                nursery.start_soon(collect, receiver, 2, got)
                assert await sender.send_file(b"fb", data_file.fd, 1000, 200_000) == 200_000
                await sender.send(b"then")
    assert calls, "sendfile was not even tried"
    assert_same(got[0], b"fb" + data_file.content[1000:201_000], "fallback frame")
    assert got[1] == b"then"


@pytest.mark.parametrize("transport", ["lockstep", "tcp"])
async def test_cancelled_send_file_breaks_the_channel(transport: str, data_file: DataFile) -> None:
    """A send_file cancelled while blocked (the peer is not reading) may have written part of a
    frame: sending and receiving are broken from then on, chained to the Cancelled; aclose then
    makes them ClosedResourceError."""
    sending: trio.abc.HalfCloseableStream
    receiving: trio.abc.HalfCloseableStream
    if transport == "tcp":
        sending, receiving = await tcp_stream_pair()
        sending.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    else:
        sending, receiving = lockstep_stream_pair()
    channel = FramedChannel(sending)
    async with receiving:
        with trio.move_on_after(0.2) as scope:
            for _ in range(50):  # fill the socket: one of these blocks
                await channel.send_file(b"", data_file.fd, 0, FILE_SIZE)
        assert scope.cancelled_caught
        for operation in (
            lambda: channel.send_file(b"", data_file.fd, 0, 10),
            lambda: channel.send(b"x"),
            channel.receive,
        ):
            with pytest.raises(trio.BrokenResourceError) as broken:
                await operation()
            assert isinstance(broken.value.__cause__, trio.Cancelled)
        await channel.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await channel.send_file(b"", data_file.fd, 0, 10)


async def test_send_file_busy_while_another_task_sends(data_file: DataFile) -> None:
    """While a send_file is blocked, another send_file, send or send_parts raises
    BusyResourceError; the blocked one then completes and its frame is intact."""
    a, b = lockstep_stream_pair()
    channel, peer = FramedChannel(a), FramedChannel(b)
    async with channel, peer, trio.open_nursery() as nursery:
        nursery.start_soon(channel.send_file, b"first", data_file.fd, 0, 50_000)
        await wait_all_tasks_blocked()
        for operation in (
            lambda: channel.send_file(b"", data_file.fd, 0, 1),
            lambda: channel.send(b"x"),
            lambda: channel.send_parts(b"y"),
        ):
            with pytest.raises(trio.BusyResourceError):
                await operation()
        assert_same(await peer.receive(), b"first" + data_file.content[:50_000], "frame")


@pytest.mark.parametrize("transport", TRANSPORTS)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    calls=st.lists(
        st.tuples(
            st.binary(max_size=40),
            st.integers(0, FILE_SIZE + 100),
            st.integers(0, 70_000),
        ),
        min_size=1,
        max_size=6,
    )
)
async def test_send_file_any_prefix_offset_and_count(
    transport: Transport, data_file: DataFile, calls: list[tuple[bytes, int, int]]
) -> None:
    """Random prefixes, offsets (some past the end) and counts: each frame is prefix + the file's
    bytes + zeros for what lies past the end, and the return value is the file's share."""
    content = data_file.content
    returned, got = await send_files(transport, data_file.fd, calls)
    assert returned == [max(0, min(count, FILE_SIZE - offset)) for _, offset, count in calls]
    for frame, (prefix, offset, count) in zip(got, calls, strict=True):
        wanted = prefix + content[offset : offset + count]
        assert_same(frame, wanted + bytes(len(prefix) + count - len(wanted)), "frame")


@pytest.mark.parametrize(
    "transport",
    ["memory", "tcp"],
)
async def test_send_file_from_an_unreadable_fd_is_an_os_error_not_a_closed_channel(
    transport: Transport, tmp_path: Path
) -> None:
    """A file descriptor opened write-only cannot be read: send_file raises OSError(EBADF) (the
    header already went, so the channel is broken afterwards). It must not claim that the socket
    or channel was closed with ClosedResourceError. The "memory" case is the reference."""
    path = tmp_path / "write-only.bin"
    path.write_bytes(b"data" * 100)
    fd = os.open(path, os.O_WRONLY)
    sending, receiving = await stream_pair(transport)
    try:
        async with FramedChannel(sending) as sender, receiving:
            with pytest.raises(OSError, match=os.strerror(errno.EBADF)) as excinfo:
                await sender.send_file(b"", fd, 0, 10)
            assert excinfo.value.errno == errno.EBADF
            with pytest.raises(trio.BrokenResourceError):
                await sender.send(b"x")
    finally:
        os.close(fd)
