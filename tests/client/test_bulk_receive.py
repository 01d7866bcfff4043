"""Issue 13: the client's bulk path (a worker thread owns the socket for a big file's DATA,
and over TLS drives the connection's own TLS session) keeps the meaning of deadlines and
cancellation. A scripted server, over plain TCP and over TLS, sends a big file's FILE header and
some DATA, then stalls in the middle of a frame; the client must end within 1 s of its idle
deadline, or of a cancellation from the trio side, keep what it received as a resumable part,
and leave no worker thread or descriptor behind, even after 200 cancellations. After a span the
same connection carries the next request. Over TLS, a TLS end mid-span is an error, and where
trio is not the version checked the event loop's path is taken.
"""

from __future__ import annotations

import os
import random
import ssl
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme

import ftx
import ftx.client._receive as receive_module
import ftx.framing._tls_span as tls_span
from ftx.client._bulk import BULK_MIN_SIZE
from ftx.client._connection import MAX_DATA_FRAME_SIZE
from ftx.framing import encode_header
from ftx.protocol.messages import Data, FileEnd, FileHeader, Get, Kind, ListDir, ListEnd
from hostile_peers import LOOPBACK, Script, ScriptedConnection, ScriptedServer, sha256_hex

TIMEOUT = 15
SIZE = 2 * BULK_MIN_SIZE
CHUNK = 256 * 1024
SENT_BEFORE_STALL = 4 * CHUNK
# The content bytes of the frame cut short by the stall: the bulk path writes what arrives as it
# arrives, so the part keeps them too (a resume goes on from there).
CUT_FRAME_BYTES = 1000
HELD_AFTER_STALL = SENT_BEFORE_STALL + CUT_FRAME_BYTES
BULK, TLS_SPAN = "bulk path", "TLS span"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class Transport:
    """Plain TCP or TLS, for a scripted server and the client that talks to it."""

    ca: trustme.CA | None

    def server(self, script: Script, *, close_notify: bool = True) -> ScriptedServer:
        context = None
        if self.ca is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(LOOPBACK).configure_cert(context)
        return ScriptedServer(script, context, close_notify=close_notify)

    def connect(self, port: int, **config: object):  # type: ignore[no-untyped-def]
        context = None
        if self.ca is not None:
            context = ssl.create_default_context()
            self.ca.configure_trust(context)
        config_ = ftx.ClientConfig(**config)  # type: ignore[arg-type]
        return ftx.connect(LOOPBACK, port, config_, ssl_context=context)

    @property
    def spans(self) -> list[str]:
        """What :func:`spans` records for one download on the bulk path."""
        return [BULK] if self.ca is None else [BULK, TLS_SPAN]


@pytest.fixture(params=["tcp", "tls"])
def transport(request: pytest.FixtureRequest, ca: trustme.CA) -> Transport:
    return Transport(ca if request.param == "tls" else None)


@pytest.fixture
def tls(ca: trustme.CA) -> Transport:
    return Transport(ca)


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """One entry per download that took the bulk path, and one per TLS receive span."""
    seen: list[str] = []
    original = receive_module.receive_data_in_thread
    receiver = tls_span.TlsSpanReceiver.__init__

    async def spy(*args: object, **kwargs: object) -> object:
        seen.append(BULK)
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    def init(self: tls_span.TlsSpanReceiver, *args: object, **kwargs: object) -> None:
        seen.append(TLS_SPAN)
        receiver(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(receive_module, "receive_data_in_thread", spy)
    monkeypatch.setattr(tls_span.TlsSpanReceiver, "__init__", init)
    return seen


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def announce_and_start(conn: ScriptedConnection) -> Get:
    """Handshake, read the GET, announce a big file, send its first DATA and half a frame."""
    await conn.handshake()
    get = await conn.receive()
    assert isinstance(get, Get), get
    await conn.send(FileHeader(get.request_id, SIZE, 0, "1" * 32, 0, 0o644, get.digest))
    content = bytes(CHUNK)
    for _ in range(SENT_BEFORE_STALL // CHUNK):
        await conn.send(Data(content))
    await conn.send_raw(encode_header(CHUNK + 1) + bytes([Kind.DATA]) + bytes(CUT_FRAME_BYTES))
    return get


async def stall_mid_data(conn: ScriptedConnection) -> None:
    await announce_and_start(conn)
    await conn.receive()  # silent until the client closes


async def test_a_big_file_takes_the_bulk_path_and_the_connection_goes_on(
    nursery: trio.Nursery, tmp_path: Path, transport: Transport, spans: list[str]
) -> None:
    content = random.Random(1).randbytes(SIZE + 12345)

    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        get = await conn.receive()
        assert isinstance(get, Get)
        await conn.send(FileHeader(get.request_id, len(content), 0, "1" * 32, 0, 0o644, "sha256"))
        # Uneven frames, an empty one and an extension frame among them, and the answer to
        # the next request right behind END (it is read past the span's end).
        position, sizes, turn = 0, [1, 65536, 0, 1 << 19, 3000], 0
        while position < len(content):
            size = sizes[turn % len(sizes)]
            turn += 1
            await conn.send(Data(content[position : position + size]))
            await conn.send_raw(encode_header(4) + b"\x80ext")
            position += size
        await conn.send(FileEnd(get.request_id, sha256_hex(content)))
        listing = await conn.receive()
        assert isinstance(listing, ListDir)
        await conn.send(ListEnd(listing.request_id, 0))
        await conn.receive()

    server = await transport.server(script).start(nursery)
    with trio.fail_after(TIMEOUT):
        async with transport.connect(server.port, digest="sha256") as client:
            result = await client.get("big.bin", tmp_path / "big.bin")
            assert await client.list("") == []  # the same connection, after the span
    assert spans == transport.spans, "the big file did not take the bulk path"
    assert result.size == len(content)
    assert (tmp_path / "big.bin").read_bytes() == content


async def test_a_server_stalling_mid_data_is_cut_off_within_a_second(
    nursery: trio.Nursery, tmp_path: Path, transport: Transport, spans: list[str]
) -> None:
    server = await transport.server(stall_mid_data).start(nursery)
    dest = tmp_path / "big.bin"
    last_progress: list[float] = []

    def progress(done: int, total: int) -> None:
        last_progress.append(trio.current_time())

    with trio.fail_after(TIMEOUT):
        async with transport.connect(server.port, idle_timeout=0.3) as client:
            with pytest.raises(ftx.ConnectionLostError, match=r"no progress for 0\.3 seconds"):
                await client.get("big.bin", dest, progress=progress)
    assert spans == transport.spans
    assert last_progress, "nothing was received before the stall"
    assert trio.current_time() - last_progress[-1] < 0.3 + 1.0
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == HELD_AFTER_STALL  # resumable


async def test_cancelling_from_the_trio_side_ends_within_a_second(
    nursery: trio.Nursery, tmp_path: Path, transport: Transport, spans: list[str]
) -> None:
    server = await transport.server(stall_mid_data).start(nursery)
    dest = tmp_path / "big.bin"
    received = trio.Event()

    def progress(done: int, total: int) -> None:
        if done >= SENT_BEFORE_STALL:
            received.set()

    with trio.fail_after(TIMEOUT):
        async with transport.connect(server.port) as client:
            async with trio.open_nursery() as inner:

                async def get() -> None:
                    await client.get("big.bin", dest, progress=progress)

                inner.start_soon(get)
                await received.wait()
                await trio.sleep(0.1)  # the thread waits on the stalled socket now
                cancelled_at = trio.current_time()
                inner.cancel_scope.cancel()
            assert trio.current_time() - cancelled_at < 1.0
    assert spans == transport.spans
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == HELD_AFTER_STALL
    assert (tmp_path / "big.bin.part.resume").exists()


async def test_200_cancelled_bulk_transfers_leave_no_thread_or_descriptor(
    nursery: trio.Nursery, tmp_path: Path, transport: Transport, spans: list[str]
) -> None:
    server = await transport.server(stall_mid_data).start(nursery)

    async def one(index: int) -> None:
        with trio.CancelScope() as scope:

            def progress(done: int, total: int) -> None:
                if done:
                    scope.cancel()

            async with transport.connect(server.port) as client:
                await client.get("big.bin", tmp_path / f"{index}.bin", progress=progress)
        assert scope.cancelled_caught

    with trio.fail_after(90):
        await one(-1)  # warm-up: trio's thread cache holds an idle worker from now on
        threads, descriptors = threading.active_count(), open_descriptors()
        for index in range(200):
            await one(index)
        for _ in range(100):  # bounded: up to 1 s for the server's side to close too
            if threading.active_count() <= threads and open_descriptors() <= descriptors:
                break
            await trio.sleep(0.01)
    assert spans == transport.spans * 201, "not every transfer took the bulk path"
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
    assert open_descriptors() <= descriptors


async def test_a_progress_callback_that_raises_stops_the_bulk_path_with_its_exception(
    nursery: trio.Nursery, tmp_path: Path, transport: Transport, spans: list[str]
) -> None:
    # The callback runs in the trio thread while the bulk thread waits on a stalled server:
    # its exception must end the download at once (not crash trio, not wait for the deadline).
    server = await transport.server(stall_mid_data).start(nursery)

    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done >= SENT_BEFORE_STALL:
            raise Stop

    with trio.fail_after(TIMEOUT):
        async with transport.connect(server.port) as client:
            started = trio.current_time()
            with pytest.raises(Stop):
                await client.get("big.bin", tmp_path / "big.bin", progress=progress)
            assert trio.current_time() - started < 1.0
    assert spans == transport.spans
    # Whether the thread took the cut frame's bytes before the exception woke it is a race:
    # either way the part holds a prefix of the file, a resume point.
    assert (tmp_path / "big.bin.part").stat().st_size in (SENT_BEFORE_STALL, HELD_AFTER_STALL)


@pytest.mark.parametrize("lie", ["more than announced", "over the data limit", "not data"])
async def test_a_lying_server_on_the_bulk_path_is_a_protocol_error_not_a_file(
    nursery: trio.Nursery, tmp_path: Path, transport: Transport, spans: list[str], lie: str
) -> None:
    # The bulk path checks each DATA frame from its header and kind byte, before it takes any
    # of its content: a frame that breaks the protocol is refused whole, and nothing is saved.
    async def script(conn: ScriptedConnection) -> None:
        get = await announce_and_start(conn)
        await conn.send_raw(bytes(CHUNK - CUT_FRAME_BYTES))  # the cut frame, completed
        if lie == "more than announced":
            left = SIZE - SENT_BEFORE_STALL - CHUNK
            while left > 1000:
                step = min(left - 1000, 1 << 19)
                await conn.send(Data(bytes(step)))
                left -= step
            await conn.send_raw(encode_header(2001) + bytes([Kind.DATA]) + bytes(2000))
        elif lie == "over the data limit":
            await conn.send_raw(encode_header(MAX_DATA_FRAME_SIZE + 1) + bytes([Kind.DATA]))
        else:  # a frame over the 1 MiB limit of frames that are not DATA
            await conn.send_raw(encode_header((1 << 20) + 1) + bytes([Kind.END]) + bytes(1 << 20))
        assert get.request_id
        await conn.receive()

    server = await transport.server(script).start(nursery)
    dest = tmp_path / "big.bin"
    with trio.fail_after(TIMEOUT):
        async with transport.connect(server.port) as client:
            with pytest.raises(ftx.RemoteProtocolError):
                await client.get("big.bin", dest)
    assert spans == transport.spans
    assert not dest.exists()


async def test_where_trio_is_not_the_checked_version_the_event_loop_path_is_taken(
    nursery: trio.Nursery,
    tmp_path: Path,
    tls: Transport,
    spans: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tls_span, "_TRIO_CHECKED", False)
    content = random.Random(2).randbytes(SIZE)

    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        get = await conn.receive()
        assert isinstance(get, Get)
        await conn.send(FileHeader(get.request_id, len(content), 0, "1" * 32, 0, 0o644, "sha256"))
        for position in range(0, len(content), 1 << 19):
            await conn.send(Data(content[position : position + (1 << 19)]))
        await conn.send(FileEnd(get.request_id, sha256_hex(content)))
        await conn.receive()

    server = await tls.server(script).start(nursery)
    with trio.fail_after(TIMEOUT):
        async with tls.connect(server.port, digest="sha256") as client:
            await client.get("big.bin", tmp_path / "big.bin")
    assert spans == []
    assert (tmp_path / "big.bin").read_bytes() == content


@pytest.mark.parametrize("close_notify", [True, False], ids=["close_notify", "cut"])
async def test_a_tls_end_mid_span_is_an_error_not_a_short_file(
    nursery: trio.Nursery, tmp_path: Path, tls: Transport, spans: list[str], close_notify: bool
) -> None:
    server = await tls.server(announce_and_start, close_notify=close_notify).start(nursery)
    dest = tmp_path / "big.bin"
    with trio.fail_after(TIMEOUT):
        async with tls.connect(server.port) as client:
            # A clean TLS close mid-frame is a connection ended inside a frame; a cut, a
            # broken connection (the TLS error says which).
            why = "ended inside a frame" if close_notify else "broke: .*EOF"
            with pytest.raises(ftx.ConnectionLostError, match=why):
                await client.get("big.bin", dest)
    assert spans == tls.spans
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == HELD_AFTER_STALL  # resumable


async def test_a_large_file_of_a_tree_stream_takes_the_bulk_path(
    tmp_path: Path, start_server: object, spans: list[str]
) -> None:
    from ftx.client._tree import download

    served = tmp_path / "served" / "top"
    served.mkdir(parents=True)
    big = random.Random(2).randbytes(BULK_MIN_SIZE + 4321)
    (served / "big.bin").write_bytes(big)
    (served / "small.txt").write_bytes(b"small")
    host, port = await start_server(served.parent)  # type: ignore[operator]

    @asynccontextmanager
    async def connect() -> AsyncIterator[ftx.Client]:
        async with ftx.connect(host, port) as client:
            yield client

    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(TIMEOUT):
        await download(connect, ["top"], dest, recursive=True)
    assert spans == [BULK], "the tree's large file did not take the bulk path"
    assert (dest / "top" / "big.bin").read_bytes() == big
    assert (dest / "top" / "small.txt").read_bytes() == b"small"
