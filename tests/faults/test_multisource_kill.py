"""``get --from`` with a replica killed (SIGKILL) in the middle of the transfer: the other one
finishes the file, which is correct, and the dead one is named (issue 15, item 5)."""

from __future__ import annotations

import random
import shutil

import trio

import ftx
from faults_helpers import LOOPBACK, ftx_serve, server_process
from ftx.client import Source, download_from_sources
from ftx.protocol import BASE_BLOCK_SIZE

SIZE = 10 * BASE_BLOCK_SIZE - 1000


def source(port: int, name: str) -> Source:
    async def connect() -> ftx.Client:
        client = ftx.Client(await trio.open_tcp_stream(LOOPBACK, port))
        await client.handshake()
        return client

    return Source(name, connect)


async def test_a_replica_killed_mid_transfer(tmp_path):
    content = random.Random(9).randbytes(SIZE)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "f.bin").write_bytes(content)
    shutil.copy2(tmp_path / "a" / "f.bin", tmp_path / "b" / "f.bin")
    dropped: list[tuple[str, str]] = []
    async with (
        server_process(ftx_serve(tmp_path / "a"), tmp_path / "a.log") as survivor,
        server_process(ftx_serve(tmp_path / "b"), tmp_path / "b.log") as victim,
    ):
        killed_at: list[int] = []

        def progress(done: int, _total: int) -> None:
            if done >= 2 * BASE_BLOCK_SIZE and not killed_at:
                victim.process.kill()  # SIGKILL, with blocks of the file still to come
                killed_at.append(done)

        with trio.fail_after(30):
            result = await download_from_sources(
                [source(survivor.port, "survivor"), source(victim.port, "victim")],
                "f.bin",
                tmp_path / "out.bin",
                progress=progress,
                on_dropped=lambda name, why: dropped.append((name, why)),
            )
    assert killed_at, "the download ended before the kill"
    assert (tmp_path / "out.bin").read_bytes() == content
    assert result.size == SIZE
    assert [name for name, _ in dropped] == ["victim"]
