"""Thread spans over TLS (ftx.framing._tls_span): a worker thread drives the TLS session that
trio's SSLStream holds. The session is handed over only where trio's internals are the ones
checked and the stream is idle; while a span owns it, the channel's other direction waits (and
then works); closing the channel wakes the span first; and the stream is consistent after it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import pytest
import trio
import trustme

import ftx.framing._tls_span as tls_span
from ftx.framing import BlockingReceiver, FramedChannel, IdleClock, SpanInterruptedError

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def pair(ca: trustme.CA) -> AsyncIterator[tuple[FramedChannel, FramedChannel]]:
    """Two framed channels over TLS over a TCP socket pair, handshakes done."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LOOPBACK).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    left, right = trio.socket.socketpair()
    client = trio.SSLStream(trio.SocketStream(left), client_context, server_hostname=LOOPBACK)
    server = trio.SSLStream(trio.SocketStream(right), server_context, server_side=True)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
    a, b = FramedChannel(client), FramedChannel(server)
    # A first exchange (TLS 1.3 servers hold their session tickets back until they write).
    with trio.fail_after(5):
        await b.send(b"hello")
        assert await a.receive() == b"hello"
        await a.send(b"hello")
        assert await b.receive() == b"hello"
    yield a, b
    await trio.aclose_forcefully(a)
    await trio.aclose_forcefully(b)


def receive_frames(count: int):  # type: ignore[no-untyped-def]
    def work(receiver: BlockingReceiver) -> list[bytes]:
        buffer = memoryview(bytearray(1 << 20))
        return [bytes(buffer[: receiver.receive_into(buffer)]) for _ in range(count)]

    return work


async def test_a_span_reads_frames_and_leaves_what_follows_to_the_event_loop(
    pair: tuple[FramedChannel, FramedChannel],
) -> None:
    a, b = pair
    assert a.spans_supported
    frames = [bytes([n]) * (n * 40000) for n in range(1, 8)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.send_frames, *[[f] for f in frames], [b"after"], [b"and more"])
            got = await a.receive_span(receive_frames(len(frames)), IdleClock(5, 1))
        assert got == frames
        assert await a.receive() == b"after"  # read past the span: kept for the event loop
        assert await a.receive() == b"and more"
        await a.send(b"still works")  # both directions, after the span
        assert await b.receive() == b"still works"


async def test_a_send_during_a_receive_span_waits_for_it_then_goes(
    pair: tuple[FramedChannel, FramedChannel],
) -> None:
    a, b = pair
    order: list[str] = []

    async def send_meanwhile() -> None:
        await trio.sleep(0.05)  # the span runs now
        await a.send(b"request")
        order.append("sent")

    async def serve() -> None:
        await trio.sleep(0.2)
        await b.send(b"answer")
        assert await b.receive() == b"request"
        order.append("received")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_meanwhile)
            nursery.start_soon(serve)
            assert await a.receive_span(receive_frames(1), IdleClock(5, 1)) == [b"answer"]
            order.append("span ended")
    assert order[0] == "span ended", order
    assert sorted(order) == ["received", "sent", "span ended"]


async def test_closing_the_channel_wakes_its_span(
    pair: tuple[FramedChannel, FramedChannel],
) -> None:
    a, _b = pair
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def close_soon() -> None:
                await trio.sleep(0.1)
                await a.aclose()

            nursery.start_soon(close_soon)
            with pytest.raises(SpanInterruptedError):
                await a.receive_span(receive_frames(1), IdleClock(60, 1))


async def test_the_session_is_not_handed_over_unless_checked_and_idle(
    pair: tuple[FramedChannel, FramedChannel], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _b = pair
    stream = a.transport_stream
    assert isinstance(stream, trio.SSLStream)
    assert tls_span.tls_span_state(stream) is not None
    with monkeypatch.context() as patch:
        patch.setattr(tls_span, "_TRIO_CHECKED", False)
        assert tls_span.tls_span_state(stream) is None
        assert not a.spans_supported
        with pytest.raises(TypeError):
            await a.receive_span(receive_frames(1), IdleClock(5, 1))
    with monkeypatch.context() as patch:  # trio renamed or retyped an attribute
        patch.setattr(stream, "_outgoing", object(), raising=True)
        assert tls_span.tls_span_state(stream) is None
    with monkeypatch.context() as patch:  # session tickets held back for the next write
        patch.setattr(stream, "_delayed_outgoing", b"tickets", raising=True)
        assert tls_span.tls_span_state(stream) is None
    lock = vars(stream)["_inner_send_lock"]
    async with lock:  # a task is inside send_all
        assert tls_span.tls_span_state(stream) is None
    assert tls_span.tls_span_state(stream) is not None
