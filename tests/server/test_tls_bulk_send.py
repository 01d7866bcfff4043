"""Issue 13, goal a5: the server's bulk path over TLS (one worker-thread span per big file that
drives the connection's TLS session: each chunk read once, hashed and encrypted there). Real
servers on 127.0.0.1: both sides take their span and the digest is right from a fresh server,
a warm one and for a resume, with the same TLS connection used again after each span; a file
changed during the span is detected; a TLS client that stops reading mid-DATA is cut off within
a second of the idle deadline, and the thread ends with it; where trio's internals are not the
ones checked, the event-loop path serves the file just as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import ssl
import threading
from pathlib import Path

import pytest
import trio
import trustme

import ftx
import ftx.framing._tls_span as tls_span
from ftx.framing import FrameDecoder, encode_frame
from ftx.fs import file_identity
from ftx.protocol import ErrorCode
from ftx.protocol.messages import FileHeader, Get, Hello, Message, decode_message, encode_message
from ftx.server._bulk import BULK_MIN_SIZE
from ftx.server._session import FAREWELL_SECONDS

LOOPBACK = "127.0.0.1"
SIZE = 3 * BULK_MIN_SIZE + 4321


def frame(message: Message) -> bytes:
    return encode_frame(b"".join(bytes(part) for part in encode_message(message)))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LOOPBACK).configure_cert(context)
    return context


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "root"
    served.mkdir()
    (served / "big.bin").write_bytes(random.Random(17).randbytes(SIZE))
    return served


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """'send' for each TLS send span the server starts, 'receive' for each the client does."""
    seen: list[str] = []
    sender, receiver = tls_span.TlsSpanSender.__init__, tls_span.TlsSpanReceiver.__init__

    def send(self: tls_span.TlsSpanSender, *args: object, **kwargs: object) -> None:
        seen.append("send")
        sender(self, *args, **kwargs)  # type: ignore[arg-type]

    def receive(self: tls_span.TlsSpanReceiver, *args: object, **kwargs: object) -> None:
        seen.append("receive")
        receiver(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tls_span.TlsSpanSender, "__init__", send)
    monkeypatch.setattr(tls_span.TlsSpanReceiver, "__init__", receive)
    return seen


async def serve(
    nursery: trio.Nursery, root: Path, context: ssl.SSLContext, **options: object
) -> tuple[ftx.Server, int]:
    config = ftx.ServerConfig(ssl_context=context, **options)  # type: ignore[arg-type]
    server = ftx.Server(root, config)
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    await nursery.start(server.serve_listeners, listeners)
    return server, listeners[0].socket.getsockname()[1]


async def test_fresh_warm_and_resumed_tls_downloads_take_both_spans(
    nursery: trio.Nursery, root: Path, tmp_path: Path, server_context: ssl.SSLContext,
    client_context: ssl.SSLContext, spans: list[str],
) -> None:  # fmt: skip
    content = (root / "big.bin").read_bytes()
    _, port = await serve(nursery, root, server_context)
    dest = tmp_path / "out.bin"
    config = ftx.ClientConfig(digest="sha256")
    expected = hashlib.sha256(content).hexdigest()
    with trio.fail_after(30):
        async with ftx.connect(LOOPBACK, port, config, ssl_context=client_context) as client:
            for _ in range(2):  # fresh (hashed in the span), then known (cached)
                result = await client.get("big.bin", dest, overwrite=True)
                assert result.digest == expected
            dest.unlink()
            part = tmp_path / "out.bin.part"
            part.write_bytes(content[: 1 << 20])
            record = {
                "version": 1,
                "path": "big.bin",
                "identity": file_identity((root / "big.bin").stat()),
                "size": len(content),
                "digest": "sha256",
            }
            (tmp_path / "out.bin.part.resume").write_text(json.dumps(record))
            resumed = await client.get("big.bin", dest)
            names = [entry.name for entry in await client.list("")]
    assert resumed.digest == expected
    assert dest.read_bytes() == content
    assert names == ["big.bin"]
    assert sorted(spans) == ["receive"] * 3 + ["send"] * 3, spans


async def test_without_the_checked_trio_both_sides_keep_the_event_loop_path(
    nursery: trio.Nursery, root: Path, tmp_path: Path, server_context: ssl.SSLContext,
    client_context: ssl.SSLContext, spans: list[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(tls_span, "_TRIO_CHECKED", False)
    _, port = await serve(nursery, root, server_context)
    dest = tmp_path / "out.bin"
    with trio.fail_after(30):
        async with ftx.connect(LOOPBACK, port, ssl_context=client_context) as client:
            await client.get("big.bin", dest)
    assert spans == []
    assert dest.read_bytes() == (root / "big.bin").read_bytes()


@pytest.mark.parametrize("change", ["truncated", "overwritten-ahead"])
async def test_a_file_changed_during_a_tls_span_is_detected(
    nursery: trio.Nursery, root: Path, tmp_path: Path, server_context: ssl.SSLContext,
    client_context: ssl.SSLContext, spans: list[str], change: str,
) -> None:  # fmt: skip
    served = root / "big.bin"
    _, port = await serve(nursery, root, server_context)
    dest = tmp_path / "out.bin"
    changed: list[int] = []

    def progress(done: int, total: int) -> None:
        if done > 0 and not changed:
            changed.append(done)
            stat = served.stat()
            with served.open("r+b") as file:
                if change == "truncated":
                    file.truncate(stat.st_size // 2)
                else:
                    file.seek(stat.st_size - 8192)
                    file.write(b"\xff" * 4096)
            os.utime(served, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    with trio.fail_after(30):
        async with ftx.connect(LOOPBACK, port, ssl_context=client_context) as client:
            with pytest.raises(ftx.RemoteError) as raised:
                await client.get("big.bin", dest, progress=progress, durable=False)
            names = [entry.name for entry in await client.list("")]  # still usable
    assert changed, "the file was not changed during the transfer"
    assert changed[0] < SIZE // 2, "the change came too late to matter"
    assert raised.value.code == ErrorCode.CHANGED
    assert not dest.exists()
    assert names == ["big.bin"]
    assert spans[:2] == ["send", "receive"] or spans[:2] == ["receive", "send"], spans


async def test_a_tls_client_that_stops_reading_mid_data_is_cut_off_within_a_second(
    nursery: trio.Nursery, root: Path, server_context: ssl.SSLContext,
    client_context: ssl.SSLContext, spans: list[str],
) -> None:  # fmt: skip
    server, port = await serve(nursery, root, server_context, idle_timeout=0.3)
    threads = threading.active_count()
    tcp = await trio.open_tcp_stream(LOOPBACK, port)
    tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    stream = trio.SSLStream(tcp, client_context, server_hostname=LOOPBACK)
    decoder = FrameDecoder()
    await stream.send_all(
        frame(Hello((1,), frozenset(), 1 << 20, "test")) + frame(Get(1, "big.bin"))
    )
    messages: list[Message | None] = []
    with trio.fail_after(10):
        while len(messages) < 2:  # HELLO, FILE
            decoder.receive_data(await stream.receive_some(4096))
            while len(messages) < 2 and (payload := decoder.next_frame()) is not None:
                messages.append(decode_message(payload))
        assert isinstance(messages[1], FileHeader)
        stopped_reading = trio.current_time()
        while server.connections:  # noqa: ASYNC110 - polling server state, bounded
            await trio.sleep(0.01)
    assert trio.current_time() - stopped_reading < 0.3 + 1.0
    assert spans == ["send"], "the file did not go by the TLS span"
    with trio.fail_after(5):
        while threading.active_count() > threads + 1:  # noqa: ASYNC110 - bounded
            await trio.sleep(0.01)
    await trio.aclose_forcefully(stream)


async def test_stopping_the_server_now_interrupts_a_tls_span(
    nursery: trio.Nursery, root: Path, server_context: ssl.SSLContext,
    client_context: ssl.SSLContext, spans: list[str],
) -> None:  # fmt: skip
    server, port = await serve(nursery, root, server_context)
    tcp = await trio.open_tcp_stream(LOOPBACK, port)
    tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    stream = trio.SSLStream(tcp, client_context, server_hostname=LOOPBACK)
    await stream.send_all(
        frame(Hello((1,), frozenset(), 1 << 20, "test")) + frame(Get(1, "big.bin"))
    )
    with trio.fail_after(10):
        await stream.receive_some(4096)  # the answer has begun; then read nothing more
        while not spans:  # noqa: ASYNC110 - bounded
            await trio.sleep(0.01)
        await trio.sleep(0.1)  # the span's thread waits on the full socket now
        started = trio.current_time()
        await server.shutdown(0.0)
    assert server.connections == 0
    assert spans == ["send"]
    # Stopping waits up to FAREWELL_SECONDS for a frame boundary, then cancels the span.
    assert trio.current_time() - started < FAREWELL_SECONDS + 1.0
    await trio.aclose_forcefully(stream)


async def test_a_rate_limited_tls_server_keeps_the_event_loop_path(
    nursery: trio.Nursery, root: Path, tmp_path: Path, server_context: ssl.SSLContext,
    client_context: ssl.SSLContext, spans: list[str],
) -> None:  # fmt: skip
    _, port = await serve(nursery, root, server_context, limit_rate=64 << 20)
    dest = tmp_path / "out.bin"
    with trio.fail_after(30):
        async with ftx.connect(LOOPBACK, port, ssl_context=client_context) as client:
            await client.get("big.bin", dest)
    assert spans == ["receive"]  # the client's span; the server's stream is the rate limiter's
    assert dest.read_bytes() == (root / "big.bin").read_bytes()
