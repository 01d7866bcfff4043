"""Resuming interrupted downloads: continue from DEST.part only if the server's file is the same."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
import trio
import xxhash

import ftx
import ftx.fs
import ftx.server._downloads
from conftest import FakeConnection, FakeServer, serving
from ftx.fs import file_identity
from ftx.protocol.messages import Data, FileEnd, FileHeader, Get

SIZE = 8 * 1024 * 1024 + 4321


async def serve_one_file(tmp_path: Path, start_server: object, seed: int) -> tuple[str, int, bytes]:
    """Serve ``data.bin`` (SIZE random bytes from ``seed``) from ``tmp_path / "served"``."""
    served = tmp_path / "served"
    served.mkdir()
    content = random.Random(seed).randbytes(SIZE)
    (served / "data.bin").write_bytes(content)
    host, port = await start_server(served)  # type: ignore[operator]
    return host, port, content


async def download_until(host: str, port: int, dest: Path, stop_after: int) -> None:
    """Start a download and cancel it once ``stop_after`` bytes have arrived."""
    with trio.CancelScope() as scope:

        def progress(done: int, total: int) -> None:
            if done >= stop_after:
                scope.cancel()

        async with ftx.connect(host, port) as client:
            await client.get("data.bin", dest, progress=progress)
    assert scope.cancelled_caught


async def test_interrupted_download_resumes_from_the_part(
    tmp_path: Path, start_server: object
) -> None:
    host, port, content = await serve_one_file(tmp_path, start_server, 1)
    dest = tmp_path / "data.bin"
    with trio.fail_after(30):
        await download_until(host, port, dest, 3 * 1024 * 1024)
        assert not dest.exists()
        held = (tmp_path / "data.bin.part").stat().st_size
        assert 0 < held < SIZE
        assert (tmp_path / "data.bin.part.resume").exists()
        seen: list[int] = []
        async with ftx.connect(host, port) as client:
            result = await client.get("data.bin", dest, progress=lambda d, t: seen.append(d))
    assert seen[0] == held, "the progress starts at the resumed offset"
    assert dest.read_bytes() == content
    assert result.digest is not None
    assert not (tmp_path / "data.bin.part").exists()
    assert not (tmp_path / "data.bin.part.resume").exists()


@pytest.mark.parametrize(
    ("choice", "verify", "algorithm"),
    [("cryptographic", True, "blake3"), ("fast", False, None)],
)
async def test_a_resume_may_verify_differently_from_the_start(
    tmp_path: Path, start_server: object, choice: str, verify: bool, algorithm: str | None
) -> None:
    # The start was verified with xxh3-128 (the default): a resume with BLAKE3 hashes the kept
    # bytes again, and one without verification keeps them as they are.
    host, port, content = await serve_one_file(tmp_path, start_server, 4)
    dest = tmp_path / "data.bin"
    with trio.fail_after(30):
        await download_until(host, port, dest, 3 * 1024 * 1024)
        held = (tmp_path / "data.bin.part").stat().st_size
        seen: list[int] = []
        async with ftx.connect(host, port, ftx.ClientConfig(digest=choice)) as client:  # type: ignore[arg-type]
            result = await client.get(
                "data.bin", dest, verify=verify, progress=lambda d, t: seen.append(d)
            )
    assert 0 < held < SIZE
    assert seen[0] == held, "resumed, not started again"
    assert dest.read_bytes() == content
    assert result.digest_algorithm == algorithm
    if algorithm == "blake3":
        assert result.digest == blake3.blake3(content).hexdigest()


async def test_file_changed_since_the_interruption_restarts_from_zero(
    tmp_path: Path, start_server: object
) -> None:
    host, port, _ = await serve_one_file(tmp_path, start_server, 2)
    served = tmp_path / "served"
    dest = tmp_path / "data.bin"
    with trio.fail_after(30):
        await download_until(host, port, dest, 3 * 1024 * 1024)
        # Same size, same modification time, new content: only the identity tells.
        stat = (served / "data.bin").stat()
        new = random.Random(3).randbytes(SIZE)
        (served / "data.bin").write_bytes(new)
        os.utime(served / "data.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
        seen: list[int] = []
        async with ftx.connect(host, port) as client:
            await client.get("data.bin", dest, progress=lambda d, t: seen.append(d))
    assert seen[0] == 0, "a changed file is fetched from the start"
    assert dest.read_bytes() == new


async def test_resume_off_starts_from_zero(tmp_path: Path, start_server: object) -> None:
    host, port, content = await serve_one_file(tmp_path, start_server, 4)
    dest = tmp_path / "data.bin"
    with trio.fail_after(30):
        await download_until(host, port, dest, 2 * 1024 * 1024)
        seen: list[int] = []
        async with ftx.connect(host, port) as client:
            await client.get("data.bin", dest, resume=False, progress=lambda d, t: seen.append(d))
    assert seen[0] == 0
    assert dest.read_bytes() == content


async def test_a_corrupted_part_fails_verification_and_is_fetched_again_from_zero(
    tmp_path: Path, start_server: object
) -> None:
    # docs/protocol.md, section 9.5 (issue 17): a resumed download that does not verify is
    # not published, and is started again from zero, once, as uploads are (section 18.4).
    host, port, content = await serve_one_file(tmp_path, start_server, 5)
    dest = tmp_path / "data.bin"
    with trio.fail_after(30):
        await download_until(host, port, dest, 3 * 1024 * 1024)
        kept = (tmp_path / "data.bin.part").stat().st_size
        with (tmp_path / "data.bin.part").open("r+b") as part:
            part.seek(1000)
            part.write(b"corrupted on the local disk")
        seen: list[int] = []
        async with ftx.connect(host, port) as client:
            result = await client.get("data.bin", dest, progress=lambda d, t: seen.append(d))
    assert seen[0] == kept > 0, "the first attempt resumed from the part"
    assert 0 in seen[1:], "the second attempt started from zero"
    assert result.size == len(content)
    assert dest.read_bytes() == content
    assert not (tmp_path / "data.bin.part").exists()


async def test_a_resume_that_fails_verification_twice_is_an_integrity_error(
    tmp_path: Path, fake_server: Callable[..., FakeServer]
) -> None:
    # The restart from zero happens once: a server whose digests never match gets an
    # IntegrityError, and nothing is published.
    content = random.Random(8).randbytes(2 * 1024 * 1024)
    identity = "1" * 32
    offsets: list[int] = []

    def behaviour(conn: FakeConnection) -> None:
        conn.handshake()
        while True:
            get = conn.receive()
            assert isinstance(get, Get)
            offsets.append(get.offset)
            size = len(content)
            conn.send(FileHeader(get.request_id, size, 0, identity, get.offset, 0o644, get.digest))
            for start in range(get.offset, size, 512 * 1024):
                conn.send(Data(content[start : start + 512 * 1024]))
            conn.send(FileEnd(get.request_id, "0" * 64))

    fake = fake_server(behaviour)
    dest = tmp_path / "data.bin"
    part = tmp_path / "data.bin.part"
    part.write_bytes(content[: 1024 * 1024])
    record = {"version": 1, "path": "data.bin", "identity": identity, "size": len(content)}
    (tmp_path / "data.bin.part.resume").write_text(json.dumps({**record, "digest": "sha256"}))
    with trio.fail_after(30):
        async with ftx.connect("127.0.0.1", fake.port) as client:
            with pytest.raises(ftx.IntegrityError):
                await client.get("data.bin", dest)
    assert offsets == [1024 * 1024, 0]
    assert not dest.exists()
    assert not part.exists()


async def test_a_cut_transfer_leaves_its_digest_for_the_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server finishes hashing a file whose client went away (from its own disk), so the
    # resume that follows does not make it re-read the part the client already has.
    served = tmp_path / "served"
    served.mkdir()
    content = random.Random(6).randbytes(48 * 1024 * 1024)
    (served / "data.bin").write_bytes(content)
    file_reads: list[int] = []
    real_read_into = ftx.fs.OpenedFile.read_into

    def spy(self: ftx.fs.OpenedFile, buffer: bytearray | memoryview, offset: int) -> int:
        file_reads.append(offset)
        return real_read_into(self, buffer, offset)

    dest = tmp_path / "data.bin"
    with trio.fail_after(30):
        async with serving(served) as (server, port):
            await download_until("127.0.0.1", port, dest, 3 * 1024 * 1024)
            key = f"xxh3-128:{file_identity(os.stat(served / 'data.bin'))}"
            with trio.fail_after(20):  # the cut connection's task is finishing the digest
                while not server._resources.digests.get(key):  # noqa: ASYNC110 - bounded polling
                    await trio.sleep(0.01)
            monkeypatch.setattr(ftx.fs.OpenedFile, "read_into", spy)
            async with ftx.connect("127.0.0.1", port) as client:
                resumed = await client.get("data.bin", dest)
    assert dest.read_bytes() == content
    assert resumed.digest == xxhash.xxh3_128(content).hexdigest()
    # Plain TCP sends with sendfile: with the digest known, the server reads nothing itself.
    assert file_reads == [], "the resume made the server read the file to hash it"
