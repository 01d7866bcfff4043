"""Issue 13: the client's bulk path (a worker thread owns the socket for a big file's DATA)
keeps the meaning of deadlines and cancellation. A scripted server sends a big file's FILE
header and some DATA, then stalls in the middle of a frame; the client must end within 1 s of
its idle deadline, or of a cancellation from the trio side, keep what it received as a
resumable part, and leave no worker thread or descriptor behind, even after 200 cancellations.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import ftx
from ftx.client._bulk import BULK_MIN_SIZE
from ftx.framing import encode_header
from ftx.protocol.messages import Data, FileEnd, FileHeader, Get, Kind
from hostile_peers import LOOPBACK, ScriptedConnection, ScriptedServer, sha256_hex

TIMEOUT = 15
SIZE = 2 * BULK_MIN_SIZE
CHUNK = 256 * 1024
SENT_BEFORE_STALL = 4 * CHUNK
# The content bytes of the frame cut short by the stall: the bulk path writes what arrives as it
# arrives, so the part keeps them too (a resume goes on from there).
CUT_FRAME_BYTES = 1000
HELD_AFTER_STALL = SENT_BEFORE_STALL + CUT_FRAME_BYTES


async def stall_mid_data(conn: ScriptedConnection) -> None:
    """Announce a big file, send the start of its DATA and half a frame, then say nothing."""
    await conn.handshake()
    get = await conn.receive()
    assert isinstance(get, Get), get
    await conn.send(FileHeader(get.request_id, SIZE, 0, "1" * 32, 0, 0o644, get.digest))
    content = bytes(CHUNK)
    for _ in range(SENT_BEFORE_STALL // CHUNK):
        await conn.send(Data(content))
    await conn.send_raw(encode_header(CHUNK + 1) + bytes([Kind.DATA]) + bytes(CUT_FRAME_BYTES))
    await conn.receive()  # silent until the client closes


def connect(port: int, **config: object):  # type: ignore[no-untyped-def]
    return ftx.connect(LOOPBACK, port, ftx.ClientConfig(**config))  # type: ignore[arg-type]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_big_file_takes_the_bulk_path_and_is_saved(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = random.Random(1).randbytes(SIZE + 12345)
    spans: list[int] = []

    async def script(conn: ScriptedConnection) -> None:
        await conn.handshake()
        get = await conn.receive()
        assert isinstance(get, Get)
        await conn.send(FileHeader(get.request_id, len(content), 0, "1" * 32, 0, 0o644, "sha256"))
        # Uneven frames, an empty one and an extension frame among them.
        position, sizes, turn = 0, [1, 65536, 0, 1 << 19, 3000], 0
        while position < len(content):
            size = sizes[turn % len(sizes)]
            turn += 1
            await conn.send(Data(content[position : position + size]))
            await conn.send_raw(encode_header(4) + b"\x80ext")
            position += size
        await conn.send(FileEnd(get.request_id, sha256_hex(content)))
        await conn.receive()

    import ftx.client._receive as receive_module

    original = receive_module.receive_data_in_thread

    async def spy(*args: object, **kwargs: object) -> object:
        spans.append(1)
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(receive_module, "receive_data_in_thread", spy)
    server = await ScriptedServer(script).start(nursery)
    with trio.fail_after(TIMEOUT):
        async with connect(server.port, digest="sha256") as client:
            result = await client.get("big.bin", tmp_path / "big.bin")
    assert spans == [1], "the big file did not take the bulk path"
    assert result.size == len(content)
    assert (tmp_path / "big.bin").read_bytes() == content


async def test_a_server_stalling_mid_data_is_cut_off_within_a_second(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await ScriptedServer(stall_mid_data).start(nursery)
    dest = tmp_path / "big.bin"
    last_progress: list[float] = []

    def progress(done: int, total: int) -> None:
        last_progress.append(trio.current_time())

    with trio.fail_after(TIMEOUT):
        async with connect(server.port, idle_timeout=0.3) as client:
            with pytest.raises(ftx.ConnectionLostError, match=r"no progress for 0\.3 seconds"):
                await client.get("big.bin", dest, progress=progress)
    assert last_progress, "nothing was received before the stall"
    assert trio.current_time() - last_progress[-1] < 1.0
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == HELD_AFTER_STALL  # resumable


async def test_cancelling_from_the_trio_side_ends_within_a_second(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await ScriptedServer(stall_mid_data).start(nursery)
    dest = tmp_path / "big.bin"
    received = trio.Event()

    def progress(done: int, total: int) -> None:
        if done >= SENT_BEFORE_STALL:
            received.set()

    with trio.fail_after(TIMEOUT):
        async with connect(server.port) as client:
            async with trio.open_nursery() as inner:

                async def get() -> None:
                    await client.get("big.bin", dest, progress=progress)

                inner.start_soon(get)
                await received.wait()
                await trio.sleep(0.1)  # the thread waits on the stalled socket now
                cancelled_at = trio.current_time()
                inner.cancel_scope.cancel()
            assert trio.current_time() - cancelled_at < 1.0
    assert not dest.exists()
    assert (tmp_path / "big.bin.part").stat().st_size == HELD_AFTER_STALL
    assert (tmp_path / "big.bin.part.resume").exists()


async def test_200_cancelled_bulk_transfers_leave_no_thread_or_descriptor(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await ScriptedServer(stall_mid_data).start(nursery)

    async def one(index: int) -> None:
        with trio.CancelScope() as scope:

            def progress(done: int, total: int) -> None:
                if done:
                    scope.cancel()

            async with connect(server.port) as client:
                await client.get("big.bin", tmp_path / f"{index}.bin", progress=progress)
        assert scope.cancelled_caught

    with trio.fail_after(60):
        await one(-1)  # warm-up: trio's thread cache holds an idle worker from now on
        threads, descriptors = threading.active_count(), open_descriptors()
        for index in range(200):
            await one(index)
        for _ in range(100):  # bounded: up to 1 s for the server's side to close too
            if threading.active_count() <= threads and open_descriptors() <= descriptors:
                break
            await trio.sleep(0.01)
    assert threading.active_count() <= threads, [t.name for t in threading.enumerate()]
    assert open_descriptors() <= descriptors


async def test_a_progress_callback_that_raises_stops_the_bulk_path_with_its_exception(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    # The callback runs in the trio thread while the bulk thread waits on a stalled server:
    # its exception must end the download at once (not crash trio, not wait for the deadline).
    server = await ScriptedServer(stall_mid_data).start(nursery)

    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done >= SENT_BEFORE_STALL:
            raise Stop

    with trio.fail_after(TIMEOUT):
        async with connect(server.port) as client:
            started = trio.current_time()
            with pytest.raises(Stop):
                await client.get("big.bin", tmp_path / "big.bin", progress=progress)
            assert trio.current_time() - started < 1.0
    # Whether the thread took the cut frame's bytes before the exception woke it is a race:
    # either way the part holds a prefix of the file, a resume point.
    assert (tmp_path / "big.bin.part").stat().st_size in (SENT_BEFORE_STALL, HELD_AFTER_STALL)


async def test_a_large_file_of_a_tree_stream_takes_the_bulk_path(
    tmp_path: Path, start_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ftx.client._receive as receive_module
    from ftx.client._tree import download

    served = tmp_path / "served" / "top"
    served.mkdir(parents=True)
    big = random.Random(2).randbytes(BULK_MIN_SIZE + 4321)
    (served / "big.bin").write_bytes(big)
    (served / "small.txt").write_bytes(b"small")
    spans: list[int] = []
    original = receive_module.receive_data_in_thread

    async def spy(*args: object, **kwargs: object) -> object:
        spans.append(1)
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(receive_module, "receive_data_in_thread", spy)
    host, port = await start_server(served.parent)  # type: ignore[operator]

    @asynccontextmanager
    async def connect() -> AsyncIterator[ftx.Client]:
        async with ftx.connect(host, port) as client:
            yield client

    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(TIMEOUT):
        await download(connect, ["top"], dest, recursive=True)
    assert spans == [1], "the tree's large file did not take the bulk path"
    assert (dest / "top" / "big.bin").read_bytes() == big
    assert (dest / "top" / "small.txt").read_bytes() == b"small"
