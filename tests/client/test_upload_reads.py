"""How ``ftx put`` reads the local file: a small chunk straight from the page cache in the trio
thread, anything else (or a small chunk not cached) in a worker thread; either way a file that
changes while it is being sent is refused and nothing is stored under its name."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import xxhash

import ftx
from ftx import LocalFileError
from ftx.client._upload import _LocalFile
from ftx.server._writes import UploadTarget

StartServer = Callable[..., Awaitable[tuple[str, int]]]
SMALL = 4096  # one chunk, read in the trio thread when cached
LARGE = 3 * 1024 * 1024 + 17  # several chunks, read in worker threads


def make_source(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    data = random.Random(size).randbytes(size)
    source = tmp_path / f"source-{size}.bin"
    source.write_bytes(data)
    return source, data


def served(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


def test_read_cached_gives_the_bytes_or_none(tmp_path: Path) -> None:
    source, data = make_source(tmp_path, SMALL)
    with _LocalFile(source) as local:
        got = local.read_cached(0, SMALL)
        assert got is None or got == data  # None only where the system cannot tell
        assert local.read_cached(100, 50) in (None, data[100:150])
        assert local.read_cached(SMALL - 10, 20) is None  # past the end: not all there


@pytest.mark.parametrize("size", [SMALL, LARGE])
@pytest.mark.parametrize("cached", [True, False])
async def test_the_file_arrives_whole_however_it_was_read(
    start_server: StartServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    cached: bool,
) -> None:
    threaded_reads: list[int] = []
    read = _LocalFile.read

    def counted_read(local: _LocalFile, position: int, count: int) -> bytes:
        threaded_reads.append(count)
        return read(local, position, count)

    monkeypatch.setattr(_LocalFile, "read", counted_read)
    if not cached:  # as if the file were not in the page cache: every read in a thread
        monkeypatch.setattr(_LocalFile, "read_cached", lambda *args: None)
    root = served(tmp_path)
    source, data = make_source(tmp_path, size)
    _, port = await start_server(root, writable=True)
    async with ftx.connect("127.0.0.1", port) as client:
        result = await client.put(source, "copy.bin")
    assert (root / "copy.bin").read_bytes() == data
    assert result.digest == xxhash.xxh3_128(data).hexdigest()
    if not cached:
        assert sum(threaded_reads) == size  # every byte read by a worker thread's read


@pytest.mark.parametrize(("size", "reader"), [(SMALL, "read_cached"), (LARGE, "read")])
async def test_a_file_changed_while_being_sent_is_not_stored(
    start_server: StartServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    reader: str,
) -> None:
    original = getattr(_LocalFile, reader)

    def read_then_append(local: _LocalFile, position: int, count: int) -> bytes | None:
        chunk = original(local, position, count)
        with open(local.path, "ab") as file:  # someone else writes to it meanwhile
            file.write(b"more")
        return chunk

    monkeypatch.setattr(_LocalFile, reader, read_then_append)
    root = served(tmp_path)
    source, _ = make_source(tmp_path, size)
    _, port = await start_server(root, writable=True)
    async with ftx.connect("127.0.0.1", port) as client:
        with pytest.raises(LocalFileError, match="changed while being sent; nothing was saved"):
            await client.put(source, "copy.bin")
    assert not (root / "copy.bin").exists()


@pytest.mark.parametrize(("size", "resumable"), [(SMALL, False), (1 << 20, True)])
async def test_only_a_file_of_a_mebibyte_or_more_is_offered_for_resume(
    start_server: StartServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    resumable: bool,
) -> None:
    # The server (in this process) writes a resume record only for an upload with a source.
    sources: list[str | None] = []
    original = UploadTarget._write_record

    def spy(target: UploadTarget, source: str | None, size: int) -> None:
        sources.append(source)
        original(target, source, size)

    monkeypatch.setattr(UploadTarget, "_write_record", spy)
    root = served(tmp_path)
    source, data = make_source(tmp_path, size)
    _, port = await start_server(root, writable=True)
    async with ftx.connect("127.0.0.1", port) as client:
        await client.put(source, "copy.bin")
    assert (root / "copy.bin").read_bytes() == data
    assert len(sources) == 1
    assert (sources[0] is not None) is resumable
    assert [p.name for p in root.iterdir()] == ["copy.bin"]  # no part, no record left
