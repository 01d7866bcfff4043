"""FramedChannel: the conformance checker over real transports, then each row of the contract."""

from __future__ import annotations

import ast
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trustme
from trio.testing import (
    MemoryReceiveStream,
    MemorySendStream,
    assert_checkpoints,
    lockstep_stream_pair,
    memory_stream_pair,
    memory_stream_pump,
    open_stream_to_socket_listener,
    wait_all_tasks_blocked,
)

import ftx.framing
from ftx.errors import FrameTooLargeError, IncompleteFrameError, LocalProtocolError
from ftx.framing import FRAME_SIZE_LIMIT, FramedChannel, encode_frame, encode_header
from ftx.testing import ChannelPair, check_framed_channel

# ---------------------------------------------------------------------------------------------
# Transports and makers


class RecordingStream(trio.abc.HalfCloseableStream):
    """Wraps a stream, records each write and read request, and can inject transport errors.

    ``fail_send`` is raised by the ``send_all`` call that follows ``fail_after_writes`` successful
    writes; ``fail_receive`` by the next ``receive_some``. Without faults it passes
    everything through.
    """

    def __init__(self, inner: trio.abc.HalfCloseableStream) -> None:
        self.inner = inner
        self.writes: list[bytes] = []
        self.read_requests: list[int | None] = []
        self.fail_send: BaseException | None = None
        self.fail_after_writes = 0
        self.fail_receive: BaseException | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.fail_send is not None and len(self.writes) >= self.fail_after_writes:
            await trio.lowlevel.checkpoint()
            raise self.fail_send
        await self.inner.send_all(data)
        self.writes.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self.read_requests.append(max_bytes)
        if self.fail_receive is not None:
            await trio.lowlevel.checkpoint()
            raise self.fail_receive
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def recording_pair(
    make: Callable[[], tuple[trio.StapledStream, trio.StapledStream]] = memory_stream_pair,
) -> tuple[RecordingStream, RecordingStream]:
    a, b = make()
    return RecordingStream(a), RecordingStream(b)


def hand_driven(**kwargs: int) -> tuple[FramedChannel, MemorySendStream, MemoryReceiveStream]:
    """A channel whose transport the test drives by hand: read what it wrote, feed what it reads."""
    outgoing, incoming = MemorySendStream(), MemoryReceiveStream()
    return FramedChannel(trio.StapledStream(outgoing, incoming), **kwargs), outgoing, incoming


def framed(pair: tuple[trio.abc.Stream, trio.abc.Stream], **kwargs: int) -> ChannelPair:
    return FramedChannel(pair[0], **kwargs), FramedChannel(pair[1], **kwargs)


async def memory_channels() -> ChannelPair:
    return framed(memory_stream_pair())


async def lockstep_channels() -> ChannelPair:
    return framed(lockstep_stream_pair())


async def tcp_channels() -> ChannelPair:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        client = await open_stream_to_socket_listener(listeners[0])
        server = await listeners[0].accept()
    return framed((client, server))


CA = trustme.CA()
SERVER_CTX = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
CA.issue_cert("localhost").configure_cert(SERVER_CTX)
CLIENT_CTX = ssl.create_default_context()
CA.configure_trust(CLIENT_CTX)


async def tls_over(pair: tuple[trio.abc.Stream, trio.abc.Stream]) -> tuple[trio.SSLStream, ...]:
    client = trio.SSLStream(pair[0], CLIENT_CTX, server_hostname="localhost")
    server = trio.SSLStream(pair[1], SERVER_CTX, server_side=True)
    async with trio.open_nursery() as nursery:  # lockstep transports need both sides at once
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return client, server


async def tls_memory_channels() -> ChannelPair:
    client, server = await tls_over(memory_stream_pair())
    return framed((client, server))


async def tls_lockstep_channels() -> ChannelPair:
    client, server = await tls_over(lockstep_stream_pair())
    return framed((client, server))


# ---------------------------------------------------------------------------------------------
# The conformance checker over each transport


@pytest.mark.parametrize("receive_chunk_size", [1, 7, 65536])
async def test_check_framed_channel_memory(receive_chunk_size: int) -> None:
    async def memory() -> ChannelPair:
        return framed(memory_stream_pair(), receive_chunk_size=receive_chunk_size)

    await check_framed_channel(memory, lockstep_channels)


async def test_check_framed_channel_tcp() -> None:
    await check_framed_channel(tcp_channels)


async def test_check_framed_channel_tls() -> None:
    await check_framed_channel(tls_memory_channels, tls_lockstep_channels)


async def test_check_framed_channel_over_recording_stream() -> None:
    async def recorded() -> ChannelPair:
        return framed(recording_pair())

    await check_framed_channel(recorded)


# Channels that break one rule each: the checker must notice, with AssertionError.


class Wrapper(trio.abc.Channel[bytes]):
    def __init__(self, inner: FramedChannel) -> None:
        self.inner = inner

    async def send(self, value: bytes) -> None:
        await self.inner.send(value)

    async def receive(self) -> bytes:
        return await self.inner.receive()

    async def aclose(self) -> None:
        await self.inner.aclose()


class DropsEmptyFrames(Wrapper):
    async def send(self, value: bytes) -> None:
        if value:
            await self.inner.send(value)
        else:
            await trio.lowlevel.checkpoint()


class ReturnsBytearray(Wrapper):
    async def receive(self) -> bytes:
        return bytearray(await self.inner.receive())  # type: ignore[return-value]


class LosesFrameOnCancel(Wrapper):
    async def receive(self) -> bytes:
        frame = await self.inner.receive()
        await trio.lowlevel.checkpoint()  # a cancellation here drops the frame
        return frame


class IgnoresCancelledAclose(Wrapper):
    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        await self.inner.aclose()


@pytest.mark.parametrize(
    ("wrapper", "message"),
    [
        (DropsEmptyFrames, "frame 1 came back"),
        (ReturnsBytearray, "returned bytearray, not bytes"),
        (LosesFrameOnCancel, "after receives were cancelled"),
        (IgnoresCancelledAclose, "after a cancelled aclose"),
    ],
)
async def test_checker_catches_broken_channels(wrapper: type[Wrapper], message: str) -> None:
    async def maker() -> ChannelPair:
        a, b = framed(memory_stream_pair())
        assert isinstance(a, FramedChannel)
        assert isinstance(b, FramedChannel)
        return wrapper(a), wrapper(b)

    with pytest.raises(AssertionError, match=message):
        await check_framed_channel(maker)


# ---------------------------------------------------------------------------------------------
# The behaviour contract, row by row


async def test_trickle_delivery_one_byte_at_a_time() -> None:
    to_wire, from_wire = MemorySendStream(), MemoryReceiveStream()
    sender = FramedChannel(trio.StapledStream(to_wire, MemoryReceiveStream()))
    receiver = FramedChannel(trio.StapledStream(MemorySendStream(), from_wire))
    frames = [b"abc", b"", b"", bytes(range(200)), b"z"]
    for frame in frames:
        await sender.send(frame)
    ends, offset = [], 0  # the wire offset at which each frame is complete
    for frame in frames:
        offset += 4 + len(frame)
        ends.append(offset)
    got: list[bytes] = []

    async def receive_all() -> None:
        async for frame in receiver:
            got.append(frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive_all)
        for pumped in range(1, offset + 1):
            assert memory_stream_pump(to_wire, from_wire, max_bytes=1)
            await wait_all_tasks_blocked()
            # Every frame whose last byte has arrived is delivered, and none before that.
            assert got == [f for f, end in zip(frames, ends, strict=True) if end <= pumped]
        from_wire.put_eof()
    assert got == frames


async def test_clean_eof_at_boundary_is_end_of_channel_every_time() -> None:
    channel, _, incoming = hand_driven()
    incoming.put_data(encode_frame(b"last"))
    incoming.put_eof()
    assert await channel.receive() == b"last"
    for _ in range(3):
        with assert_checkpoints(), pytest.raises(trio.EndOfChannel):
            await channel.receive()


async def test_async_for_stops_at_end_of_channel() -> None:
    a, b = framed(memory_stream_pair())
    frames = [b"one", b"", b"three" * 1000]
    for frame in frames:
        await a.send(frame)
    await a.aclose()
    assert [frame async for frame in b] == frames


@pytest.mark.parametrize(
    ("wire", "received", "expected"),
    [
        (b"\0\0", 2, 4),  # inside the header
        (encode_header(10) + b"abc", 7, 14),  # inside the payload
        (encode_header(10), 4, 14),  # header only
    ],
)
async def test_peer_closes_mid_frame(wire: bytes, received: int, expected: int) -> None:
    a, b = memory_stream_pair()
    channel = FramedChannel(b)
    await a.send_all(encode_frame(b"whole") + wire)
    await a.aclose()
    assert await channel.receive() == b"whole"
    with pytest.raises(IncompleteFrameError) as excinfo:
        await channel.receive()
    assert (excinfo.value.received, excinfo.value.expected) == (received, expected)
    with pytest.raises(trio.BrokenResourceError) as broken:
        await channel.receive()
    assert broken.value.__cause__ is excinfo.value


@pytest.mark.parametrize(("header", "size"), [(encode_header(101), 101), (b"GET ", 1195725856)])
async def test_frame_too_large_right_after_header(header: bytes, size: int) -> None:
    channel, outgoing, incoming = hand_driven(max_frame_size=100)
    outcome: list[BaseException] = []

    async def receive() -> None:
        try:
            await channel.receive()
        except FrameTooLargeError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        incoming.put_data(header[:3])
        await wait_all_tasks_blocked()
        assert outcome == []  # 3 bytes say nothing yet
        incoming.put_data(header[3:])  # the 4th header byte, and no body at all
        await wait_all_tasks_blocked()
        assert len(outcome) == 1, "FrameTooLargeError must not wait for the body"
        nursery.cancel_scope.cancel()
    error = outcome[0]
    assert isinstance(error, FrameTooLargeError)
    assert (error.size, error.limit) == (size, 100)
    # Receiving is broken from now on, chained to the cause; nothing was written.
    with pytest.raises(trio.BrokenResourceError) as broken:
        await channel.receive()
    assert broken.value.__cause__ is error
    with pytest.raises(trio.WouldBlock):
        outgoing.get_data_nowait()
    # Sending still works, so that the peer can be told why the connection closes.
    await channel.send(b"bye")
    assert outgoing.get_data_nowait() == encode_frame(b"bye")


async def test_frame_too_large_over_tcp_from_a_wrong_protocol_client() -> None:
    client, server = await tcp_channels()
    assert isinstance(client, FramedChannel)
    async with client, server:
        await client.transport_stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(FrameTooLargeError) as excinfo:
            await server.receive()
        assert excinfo.value.size == int.from_bytes(b"GET ", "big")


async def test_send_over_max_frame_size_writes_nothing_and_stays_usable() -> None:
    channel, outgoing, _ = hand_driven(max_frame_size=10)
    with assert_checkpoints(), pytest.raises(LocalProtocolError, match="11 bytes"):
        await channel.send(b"x" * 11)
    with assert_checkpoints(), pytest.raises(LocalProtocolError):
        await channel.send_parts(b"x" * 6, bytearray(5))
    with pytest.raises(trio.WouldBlock):  # nothing was written
        outgoing.get_data_nowait()
    await channel.send(b"y" * 10)  # exactly the limit is fine
    await channel.send_parts(b"ab", memoryview(b"cd"))
    assert outgoing.get_data_nowait() == encode_frame(b"y" * 10) + encode_frame(b"abcd")


async def test_send_empty_frame_is_a_real_frame() -> None:
    channel, outgoing, incoming = hand_driven()
    with assert_checkpoints():
        await channel.send(b"")
    await channel.send_parts()
    assert outgoing.get_data_nowait() == b"\0\0\0\0" * 2
    incoming.put_data(b"\0\0\0\0")
    assert await channel.receive() == b""


async def test_cancelled_send_breaks_the_channel() -> None:
    a, b = framed(lockstep_stream_pair())
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send, b"never received")
            await wait_all_tasks_blocked()  # send is blocked: lockstep streams have no buffer
            scope.cancel()
    assert scope.cancelled_caught
    for operation in (lambda: a.send(b"again"), a.receive):
        with pytest.raises(trio.BrokenResourceError) as broken:
            await operation()
        assert isinstance(broken.value.__cause__, trio.Cancelled)
    assert isinstance(a, FramedChannel)
    with pytest.raises(trio.BrokenResourceError):
        await a.send_eof()
    await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.send(b"closed wins over broken")
    await b.aclose()


async def test_transport_error_mid_frame_propagates_unchanged_then_breaks() -> None:
    stream, _peer = recording_pair()
    channel = FramedChannel(stream)
    stream.fail_send = error = trio.BrokenResourceError("the cable was cut")
    stream.fail_after_writes = 1  # the header (joined with a small part) goes out, then boom
    with pytest.raises(trio.BrokenResourceError) as excinfo:
        await channel.send_parts(b"small", bytes(20_000))
    assert excinfo.value is error
    assert stream.writes == [encode_header(20_005) + b"small"]
    for operation in (lambda: channel.send(b"x"), channel.receive):
        with pytest.raises(trio.BrokenResourceError) as broken:
            await operation()
        assert broken.value.__cause__ is error


@pytest.mark.parametrize("error_type", [trio.BrokenResourceError, trio.ClosedResourceError])
async def test_transport_receive_error_propagates_unchanged(error_type: type[Exception]) -> None:
    stream, _ = recording_pair()
    channel = FramedChannel(stream)
    stream.fail_receive = error = error_type("from the transport")
    with pytest.raises(error_type) as excinfo:
        await channel.receive()
    assert excinfo.value is error


async def test_cancelled_receive_loses_nothing_mid_frame() -> None:
    channel, _, incoming = hand_driven(receive_chunk_size=1)
    wire = encode_frame(b"first") + encode_frame(bytes(range(50))) + encode_frame(b"")
    got: list[bytes] = []
    # Feed a byte, start a receive, cancel it unless it finished: every byte is a cancel point.
    for byte in wire:
        incoming.put_data(bytes([byte]))
        async with trio.open_nursery() as nursery:

            async def receive_once(nursery: trio.Nursery = nursery) -> None:
                got.append(await channel.receive())
                nursery.cancel_scope.cancel()

            nursery.start_soon(receive_once)
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert got == [b"first", bytes(range(50)), b""]


async def test_receive_with_a_frame_buffered_is_still_a_checkpoint() -> None:
    channel, _, incoming = hand_driven()
    incoming.put_data(encode_frame(b"one") + encode_frame(b"two"))  # one read takes both
    assert await channel.receive() == b"one"
    with trio.CancelScope() as scope:
        scope.cancel()
        await channel.receive()
    assert scope.cancelled_caught  # Cancelled was raised, and the frame was not taken
    with assert_checkpoints():
        assert await channel.receive() == b"two"


async def test_busy_send_and_busy_receive_but_full_duplex_allowed() -> None:
    a, b = framed(lockstep_stream_pair())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send, b"blocked")
        nursery.start_soon(a.receive)
        await wait_all_tasks_blocked()  # one task in send and one in receive: no conflict
        with pytest.raises(trio.BusyResourceError):
            await a.send(b"second sender")
        with pytest.raises(trio.BusyResourceError):
            await a.receive()
        assert isinstance(a, FramedChannel)
        with pytest.raises(trio.BusyResourceError):
            await a.send_eof()
        assert await b.receive() == b"blocked"
        await b.send(b"reply")
    await a.aclose()
    await b.aclose()


async def test_aclose_wakes_blocked_send_and_receive() -> None:
    a, b = framed(lockstep_stream_pair())
    woken: list[type[BaseException]] = []

    async def expect_closed(operation: Callable[[], Awaitable[object]]) -> None:
        with pytest.raises(trio.ClosedResourceError):
            await operation()
        woken.append(trio.ClosedResourceError)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(expect_closed, lambda: a.send(b"stuck"))
        nursery.start_soon(expect_closed, a.receive)
        await wait_all_tasks_blocked()
        await a.aclose()
    assert len(woken) == 2
    await a.aclose()  # idempotent
    await b.aclose()


async def test_cancelled_aclose_still_closes() -> None:
    a, b = framed(memory_stream_pair())
    with trio.CancelScope() as scope:
        scope.cancel()
        await a.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await a.send(b"x")
    with pytest.raises(trio.EndOfChannel):  # the transport really was closed
        await b.receive()


async def test_send_parts_is_one_frame_written_without_joining_large_parts() -> None:
    stream, peer = recording_pair()
    sender, receiver = FramedChannel(stream), FramedChannel(peer)
    big1, big2 = bytes(range(256)) * 80, bytearray(b"q" * 20_000)
    parts = [b"ab", big1, bytearray(b"cd"), b"", memoryview(big2)[3:17_003], b"ef"]
    await sender.send_parts(*parts)
    payload = b"".join(bytes(part) for part in parts)
    assert await receiver.receive() == payload
    # Small parts ride with the header or with each other; each large part is a write of its own.
    header = encode_header(len(payload))
    assert stream.writes == [header + b"ab", big1, b"cd", bytes(big2[3:17_003]), b"ef"]
    stream.writes.clear()
    await sender.send(b"x" * 100)  # a small frame is one write
    await sender.send(bytes(20_000))  # a large one is header, then payload
    assert [len(write) for write in stream.writes] == [104, 4, 20_000]


async def test_send_eof_half_closes() -> None:
    a, b = framed(memory_stream_pair())
    assert isinstance(a, FramedChannel)
    await a.send(b"before eof")
    await a.send_eof()
    await a.send_eof()  # idempotent, as HalfCloseableStream.send_eof is
    assert await b.receive() == b"before eof"
    with pytest.raises(trio.EndOfChannel):
        await b.receive()
    await b.send(b"the other direction still works")
    assert await a.receive() == b"the other direction still works"


async def test_send_eof_over_tls_is_a_type_error() -> None:
    a, b = await tls_memory_channels()
    assert isinstance(a, FramedChannel)
    with pytest.raises(TypeError, match="SSLStream cannot half-close"):
        await a.send_eof()
    await a.send(b"still usable")
    assert await b.receive() == b"still usable"
    await a.aclose()
    await b.aclose()


async def test_receive_requests_are_bounded() -> None:
    stream, peer = recording_pair()
    channel = FramedChannel(stream, max_frame_size=3 << 20, receive_chunk_size=16)
    payload = bytes(3 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(FramedChannel(peer, max_frame_size=3 << 20).send, payload)
        assert await channel.receive() == payload
    assert stream.read_requests[0] == 16  # the header: the chunk size, not more
    assert max(r or 0 for r in stream.read_requests) == 1 << 20  # capped, whatever the frame


def test_constructor_validates_its_arguments() -> None:
    stream, _ = memory_stream_pair()
    with pytest.raises(ValueError, match="receive_chunk_size"):
        FramedChannel(stream, receive_chunk_size=0)
    for bad in (-1, FRAME_SIZE_LIMIT + 1):
        with pytest.raises(ValueError, match="max_frame_size"):
            FramedChannel(stream, max_frame_size=bad)
    channel = FramedChannel(stream, max_frame_size=FRAME_SIZE_LIMIT)
    assert channel.max_frame_size == FRAME_SIZE_LIMIT
    assert channel.transport_stream is stream
    assert isinstance(channel, trio.abc.Channel)


def test_the_framing_package_imports_nothing_of_ftx_but_its_errors() -> None:
    """ftx.framing is embedded on its own: besides trio and the standard library, its modules
    import only ftx.errors and each other."""
    package = Path(ftx.framing.__file__).parent
    imported: set[str] = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    ours = {name for name in imported if name == "ftx" or name.startswith("ftx.")}
    own = {f"ftx.framing.{source.stem}" for source in package.glob("_*.py")} - {"__init__"}
    assert ours <= {"ftx.errors", *own}, ours
    assert "ftx.errors" in ours  # the check sees the imports at all
