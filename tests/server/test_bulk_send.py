"""Issue 13: the server's bulk path (one worker-thread span per big file: around sendfile on
plain TCP, hashing in the same pass; over TLS driving the connection's TLS session, each chunk
read once, hashed and encrypted there). Real servers on 127.0.0.1, over plain TCP and over TLS:
the span is used and the digest is right from a fresh server, a warm one and for a resume (the
digest covers the whole file), with the same connection used again after each span; a client
that stops reading mid-DATA is cut off within a second of the idle deadline and the thread ends
with it; a server shut down interrupts the span. Over TLS: a file changed during the span is
detected, and where trio's internals are not the ones checked (or a rate limit applies) the
event loop's path serves the file just as well. On plain TCP: larger DATA frames go only to a
client that asked for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme

import ftx
import ftx.framing._tls_span as tls_span
import ftx.server._downloads as downloads
from ftx.framing import FrameDecoder, encode_frame
from ftx.fs import file_identity
from ftx.protocol import LARGE_DATA_FEATURE, ErrorCode
from ftx.protocol.messages import (
    Data,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    Message,
    decode_message,
    encode_message,
)
from ftx.server._bulk import BULK_MIN_SIZE, SPAN_CHUNK
from ftx.server._session import FAREWELL_SECONDS

LOOPBACK = "127.0.0.1"
SIZE = 3 * BULK_MIN_SIZE + 4321


def frame(message: Message) -> bytes:
    return encode_frame(b"".join(bytes(part) for part in encode_message(message)))


REQUEST = frame(Hello((1,), frozenset(), 1 << 20, "test")) + frame(Get(1, "big.bin"))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class Transport:
    """Plain TCP or TLS, for a real server and the clients that talk to it."""

    ca: trustme.CA | None

    def _client_context(self) -> ssl.SSLContext | None:
        if self.ca is None:
            return None
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    async def serve(
        self, nursery: trio.Nursery, root: Path, **options: object
    ) -> tuple[ftx.Server, int]:
        if self.ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(LOOPBACK).configure_cert(context)
            options["ssl_context"] = context
        server = ftx.Server(root, ftx.ServerConfig(**options))  # type: ignore[arg-type]
        listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
        await nursery.start(server.serve_listeners, listeners)
        return server, listeners[0].socket.getsockname()[1]

    def connect(self, port: int, config: ftx.ClientConfig | None = None):  # type: ignore[no-untyped-def]
        config = ftx.ClientConfig() if config is None else config
        return ftx.connect(LOOPBACK, port, config, ssl_context=self._client_context())

    async def slow_reader(self, port: int) -> trio.abc.Stream:
        """A raw connection with a small receive buffer (so that a server's span soon waits on
        it), TLS done if TLS is on."""
        tcp = await trio.open_tcp_stream(LOOPBACK, port)
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        context = self._client_context()
        if context is None:
            return tcp
        return trio.SSLStream(tcp, context, server_hostname=LOOPBACK)


@pytest.fixture(params=["tcp", "tls"])
def transport(request: pytest.FixtureRequest, ca: trustme.CA) -> Transport:
    return Transport(ca if request.param == "tls" else None)


@pytest.fixture
def tls(ca: trustme.CA) -> Transport:
    return Transport(ca)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    served = tmp_path / "root"
    served.mkdir()
    (served / "big.bin").write_bytes(random.Random(13).randbytes(SIZE))
    return served


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The offsets of the spans the server sends (each a call of send_span_work)."""
    seen: list[int] = []
    original = downloads.send_span_work

    def spy(opened, offset, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(offset)
        return original(opened, offset, *args, **kwargs)

    monkeypatch.setattr(downloads, "send_span_work", spy)
    return seen


@pytest.fixture
def tls_spans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
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


async def test_fresh_warm_and_resumed_downloads_carry_the_whole_files_digest(
    nursery: trio.Nursery,
    root: Path,
    tmp_path: Path,
    transport: Transport,
    spans: list[int],
    tls_spans: list[str],
) -> None:
    content = (root / "big.bin").read_bytes()
    _, port = await transport.serve(nursery, root)
    dest = tmp_path / "out.bin"
    config = ftx.ClientConfig(digest="sha256")
    expected = hashlib.sha256(content).hexdigest()
    with trio.fail_after(30):
        async with transport.connect(port, config) as client:
            for _ in range(2):  # fresh (hashed in the span), then known (cached)
                result = await client.get("big.bin", dest, overwrite=True)
                assert result.digest == expected
            # A resume from 1 MiB: the span sends from there, the digest is still the file's.
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
            names = [entry.name for entry in await client.list("")]  # after the spans
    assert resumed.digest == expected
    assert dest.read_bytes() == content
    assert names == ["big.bin"]
    assert spans == [0, 0, 1 << 20], spans  # the last resumed from the part
    if transport.ca is not None:  # both sides drove the TLS session in a thread
        assert sorted(tls_spans) == ["receive"] * 3 + ["send"] * 3, tls_spans


async def test_a_client_that_stops_reading_mid_data_is_cut_off_within_a_second(
    nursery: trio.Nursery, root: Path, transport: Transport, spans: list[int]
) -> None:
    server, port = await transport.serve(nursery, root, idle_timeout=0.3)
    threads = threading.active_count()
    stream = await transport.slow_reader(port)
    decoder = FrameDecoder()
    await stream.send_all(REQUEST)
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
    assert spans == [0], "the file did not go by the bulk path"
    with trio.fail_after(5):
        while threading.active_count() > threads + 1:  # noqa: ASYNC110 - bounded
            await trio.sleep(0.01)
    await trio.aclose_forcefully(stream)


async def test_stopping_the_server_now_interrupts_a_span(
    nursery: trio.Nursery, root: Path, transport: Transport, spans: list[int]
) -> None:
    server, port = await transport.serve(nursery, root)
    stream = await transport.slow_reader(port)
    await stream.send_all(REQUEST)
    with trio.fail_after(10):
        await stream.receive_some(4096)  # the answer has begun; then read nothing more
        while not spans:  # noqa: ASYNC110 - bounded
            await trio.sleep(0.01)
        await trio.sleep(0.1)  # the span's thread waits on the full socket now
        started = trio.current_time()
        await server.shutdown(0.0)
    assert server.connections == 0
    assert spans == [0]
    # Stopping waits up to FAREWELL_SECONDS for a frame boundary, then cancels the span.
    assert trio.current_time() - started < FAREWELL_SECONDS + 1.0
    await trio.aclose_forcefully(stream)


async def test_without_the_checked_trio_both_sides_keep_the_event_loop_path(
    nursery: trio.Nursery,
    root: Path,
    tmp_path: Path,
    tls: Transport,
    tls_spans: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tls_span, "_TRIO_CHECKED", False)
    _, port = await tls.serve(nursery, root)
    dest = tmp_path / "out.bin"
    with trio.fail_after(30):
        async with tls.connect(port) as client:
            await client.get("big.bin", dest)
    assert tls_spans == []
    assert dest.read_bytes() == (root / "big.bin").read_bytes()


@pytest.mark.parametrize("change", ["truncated", "overwritten-ahead"])
async def test_a_file_changed_during_a_tls_span_is_detected(
    nursery: trio.Nursery,
    root: Path,
    tmp_path: Path,
    tls: Transport,
    tls_spans: list[str],
    change: str,
) -> None:
    served = root / "big.bin"
    _, port = await tls.serve(nursery, root)
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
        async with tls.connect(port) as client:
            with pytest.raises(ftx.RemoteError) as raised:
                await client.get("big.bin", dest, progress=progress, durable=False)
            names = [entry.name for entry in await client.list("")]  # still usable
    assert changed, "the file was not changed during the transfer"
    assert changed[0] < SIZE // 2, "the change came too late to matter"
    assert raised.value.code == ErrorCode.CHANGED
    assert not dest.exists()
    assert names == ["big.bin"]
    assert sorted(tls_spans[:2]) == ["receive", "send"], tls_spans


@pytest.mark.parametrize(
    ("hello", "largest"),
    [
        pytest.param(Hello((1,), frozenset(), 1 << 20, "old"), 512 * 1024, id="old client"),
        pytest.param(
            Hello((1,), frozenset({LARGE_DATA_FEATURE}), 1 << 20, "new", 8 << 20),
            SPAN_CHUNK,
            id="large-data",
        ),
    ],
)
async def test_a_span_sends_larger_data_frames_only_to_a_client_that_asked(
    nursery: trio.Nursery, root: Path, hello: Hello, largest: int
) -> None:
    content = (root / "big.bin").read_bytes()
    _, port = await Transport(None).serve(nursery, root)
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    await stream.send_all(frame(hello) + frame(Get(1, "big.bin", digest=None)))
    decoder = FrameDecoder(max_frame_size=8 << 20)
    sizes: list[int] = []
    data = bytearray()
    with trio.fail_after(10):
        while True:
            payload = decoder.next_frame()
            if payload is None:
                decoder.receive_data(await stream.receive_some(1 << 20))
                continue
            message = decode_message(payload)
            if isinstance(message, Data):
                sizes.append(len(message.data))
                data += message.data
            elif isinstance(message, FileEnd):
                break
    await stream.aclose()
    assert data == content
    assert max(sizes) == largest


async def test_a_rate_limited_tls_server_keeps_the_event_loop_path(
    nursery: trio.Nursery, root: Path, tmp_path: Path, tls: Transport, tls_spans: list[str]
) -> None:
    _, port = await tls.serve(nursery, root, limit_rate=64 << 20)
    dest = tmp_path / "out.bin"
    with trio.fail_after(30):
        async with tls.connect(port) as client:
            await client.get("big.bin", dest)
    assert tls_spans == ["receive"]  # the client's span; the server's stream is the rate limiter's
    assert dest.read_bytes() == (root / "big.bin").read_bytes()
