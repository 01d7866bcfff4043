"""Issue 13: the server's bulk path (one worker-thread span per big file around sendfile,
hashing in the same pass). Real servers on 127.0.0.1: the span is used and the digest is right
from a fresh server, a warm one and for a resume (the digest covers the whole file); a client
that stops reading mid-DATA is cut off within a second of the idle deadline and the thread
ends with it; a server shut down interrupts the span.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
from pathlib import Path

import pytest
import trio

import ftx
import ftx.server._downloads as downloads
from ftx.framing import FrameDecoder, encode_frame
from ftx.fs import file_identity
from ftx.protocol import LARGE_DATA_FEATURE
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


async def serve(nursery: trio.Nursery, root: Path, **options: object) -> tuple[ftx.Server, int]:
    server = ftx.Server(root, ftx.ServerConfig(**options))  # type: ignore[arg-type]
    listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
    await nursery.start(server.serve_listeners, listeners)
    return server, listeners[0].socket.getsockname()[1]


async def test_fresh_warm_and_resumed_downloads_carry_the_whole_files_digest(
    nursery: trio.Nursery, root: Path, tmp_path: Path, spans: list[int]
) -> None:
    content = (root / "big.bin").read_bytes()
    _, port = await serve(nursery, root)
    dest = tmp_path / "out.bin"
    config = ftx.ClientConfig(digest="sha256")
    expected = hashlib.sha256(content).hexdigest()
    with trio.fail_after(20):
        async with ftx.connect(LOOPBACK, port, config) as client:
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
    assert resumed.digest == expected
    assert dest.read_bytes() == content
    assert spans[:2] == [0, 0]
    assert spans[2:] == [1 << 20], spans  # resumed from the part


async def test_a_client_that_stops_reading_mid_data_is_cut_off_within_a_second(
    nursery: trio.Nursery, root: Path, spans: list[int]
) -> None:
    server, port = await serve(nursery, root, idle_timeout=0.3)
    threads = threading.active_count()
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
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
    assert spans == [0], "the file did not go by the bulk path"
    with trio.fail_after(5):
        while threading.active_count() > threads + 1:  # noqa: ASYNC110 - bounded
            await trio.sleep(0.01)
    await stream.aclose()


async def test_stopping_the_server_now_interrupts_a_span(
    nursery: trio.Nursery, root: Path, spans: list[int]
) -> None:
    server, port = await serve(nursery, root)
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
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
    # Stopping waits up to FAREWELL_SECONDS for a frame boundary, then cancels the span.
    assert trio.current_time() - started < FAREWELL_SECONDS + 1.0
    await stream.aclose()


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
    _, port = await serve(nursery, root)
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
