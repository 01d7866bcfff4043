"""Issue 13, goal a5: the client's bulk path over TLS (a worker thread drives the connection's
own TLS session for a big file's DATA) keeps every promise of the plain-TCP one. A scripted
TLS server sends a big file's FILE header and some DATA, then stalls mid-frame, cuts the
connection, or closes TLS cleanly mid-frame: the client ends within 1 s of its idle deadline or
of a cancellation, keeps what it received as a resumable part, never takes a cut for the end of
the file, and leaves no worker thread or descriptor behind after 200 cancellations. After a
span, the same TLS connection carries the next request.
"""

from __future__ import annotations

import os
import random
import ssl
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

import ftx
import ftx.client._receive as receive_module
import ftx.framing._tls_span as tls_span
from ftx.client._bulk import BULK_MIN_SIZE
from ftx.framing import encode_header
from ftx.protocol.messages import Data, FileEnd, FileHeader, Get, Kind, ListDir, ListEnd
from hostile_peers import LOOPBACK, ScriptedConnection, sha256_hex

TIMEOUT = 15
SIZE = 2 * BULK_MIN_SIZE
CHUNK = 256 * 1024
SENT_BEFORE_STALL = 4 * CHUNK
# The content bytes of the frame cut short by the stall: the bulk path writes what arrives as it
# arrives, so the part keeps them too (a resume goes on from there).
CUT_FRAME_BYTES = 1000
HELD_AFTER_STALL = SENT_BEFORE_STALL + CUT_FRAME_BYTES

TlsScript = Callable[[ScriptedConnection], Awaitable[None]]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LOOPBACK).configure_cert(context)
    return context


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per download that took the bulk path, and one per TLS receive span."""
    seen: list[int] = []
    original = receive_module.receive_data_in_thread
    receiver = tls_span.TlsSpanReceiver.__init__

    async def spy(*args: object, **kwargs: object) -> object:
        seen.append(1)
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    def init(self: tls_span.TlsSpanReceiver, *args: object, **kwargs: object) -> None:
        seen.append(2)
        receiver(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(receive_module, "receive_data_in_thread", spy)
    monkeypatch.setattr(tls_span.TlsSpanReceiver, "__init__", init)
    return seen


class TlsScriptedServer:
    """A TLS server in the test's nursery that runs ``script`` on every connection; with
    ``close_notify=False`` it cuts the TCP connection at the end of the script, without a TLS
    close."""

    def __init__(self, script: TlsScript, context: ssl.SSLContext, *, close_notify: bool = True):
        self.script = script
        self.context = context
        self.close_notify = close_notify
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> TlsScriptedServer:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host=LOOPBACK))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _handle(self, tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, self.context, server_side=True)
        try:
            await self.script(ScriptedConnection(stream))
            if self.close_notify:
                await stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: what the test checks is on its side
        finally:
            await trio.aclose_forcefully(tcp)


def connect(port: int, ca: trustme.CA, **config: object):  # type: ignore[no-untyped-def]
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return ftx.connect(
        LOOPBACK,
        port,
        ftx.ClientConfig(**config),  # type: ignore[arg-type]
        ssl_context=context,
    )


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


async def test_a_big_file_over_tls_takes_the_span_and_the_connection_goes_on(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA, server_context: ssl.SSLContext,
    spans: list[int],
) -> None:  # fmt: skip
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

    server = await TlsScriptedServer(script, server_context).start(nursery)
    with trio.fail_after(TIMEOUT):
        async with connect(server.port, ca, digest="sha256") as client:
            result = await client.get("big.bin", tmp_path / "big.bin")
            assert await client.list("") == []  # the same TLS connection, after the span
    assert spans == [1, 2], "the big file did not take the TLS span"
    assert result.size == len(content)
    assert (tmp_path / "big.bin").read_bytes() == content


async def test_where_trio_is_not_the_checked_version_the_event_loop_path_is_taken(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA, server_context: ssl.SSLContext,
    spans: list[int], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
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

    server = await TlsScriptedServer(script, server_context).start(nursery)
    with trio.fail_after(TIMEOUT):
        async with connect(server.port, ca, digest="sha256") as client:
            await client.get("big.bin", tmp_path / "big.bin")
    assert spans == []
    assert (tmp_path / "big.bin").read_bytes() == content


@pytest.mark.parametrize("close_notify", [True, False], ids=["close_notify", "cut"])
async def test_a_tls_end_mid_span_is_an_error_not_a_short_file(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA, server_context: ssl.SSLContext,
    spans: list[int], close_notify: bool,
) -> None:  # fmt: skip
    server = TlsScriptedServer(announce_and_start, server_context, close_notify=close_notify)
    await server.start(nursery)
    dest = tmp_path / "big.bin"
    with trio.fail_after(TIMEOUT):
        async with connect(server.port, ca) as client:
            # A clean TLS close mid-frame is a connection ended inside a frame; a cut, a
            # broken connection (the TLS error says which).
            why = "ended inside a frame" if close_notify else "broke: .*EOF"
            with pytest.raises(ftx.ConnectionLostError, match=why):
                await client.get("big.bin", dest)
    assert spans == [1, 2]
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == HELD_AFTER_STALL  # resumable


async def test_a_tls_server_stalling_mid_data_is_cut_off_within_a_second(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA, server_context: ssl.SSLContext,
    spans: list[int],
) -> None:  # fmt: skip
    server = await TlsScriptedServer(stall_mid_data, server_context).start(nursery)
    dest = tmp_path / "big.bin"
    last_progress: list[float] = []

    def progress(done: int, total: int) -> None:
        last_progress.append(trio.current_time())

    with trio.fail_after(TIMEOUT):
        async with connect(server.port, ca, idle_timeout=0.3) as client:
            with pytest.raises(ftx.ConnectionLostError, match=r"no progress for 0\.3 seconds"):
                await client.get("big.bin", dest, progress=progress)
    assert spans == [1, 2]
    assert last_progress, "nothing was received before the stall"
    assert trio.current_time() - last_progress[-1] < 0.3 + 1.0
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == HELD_AFTER_STALL


async def test_cancelling_a_tls_span_from_the_trio_side_ends_within_a_second(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA, server_context: ssl.SSLContext,
    spans: list[int],
) -> None:  # fmt: skip
    server = await TlsScriptedServer(stall_mid_data, server_context).start(nursery)
    dest = tmp_path / "big.bin"
    received = trio.Event()

    def progress(done: int, total: int) -> None:
        if done >= SENT_BEFORE_STALL:
            received.set()

    with trio.fail_after(TIMEOUT):
        async with connect(server.port, ca) as client:
            async with trio.open_nursery() as inner:

                async def get() -> None:
                    await client.get("big.bin", dest, progress=progress)

                inner.start_soon(get)
                await received.wait()
                await trio.sleep(0.1)  # the thread waits on the stalled socket now
                cancelled_at = trio.current_time()
                inner.cancel_scope.cancel()
            assert trio.current_time() - cancelled_at < 1.0
    assert spans == [1, 2]
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == HELD_AFTER_STALL
    assert (tmp_path / "big.bin.part.resume").exists()


async def test_200_cancelled_tls_spans_leave_no_thread_or_descriptor(
    nursery: trio.Nursery, tmp_path: Path, ca: trustme.CA, server_context: ssl.SSLContext,
    spans: list[int],
) -> None:  # fmt: skip
    server = await TlsScriptedServer(stall_mid_data, server_context).start(nursery)

    async def one(index: int) -> None:
        with trio.CancelScope() as scope:

            def progress(done: int, total: int) -> None:
                if done:
                    scope.cancel()

            async with connect(server.port, ca) as client:
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
    assert spans.count(2) == 201, "not every transfer took the TLS span"
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
    assert open_descriptors() <= descriptors
