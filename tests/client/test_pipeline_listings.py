"""Pipelined downloads look their destination directories up once
(``ftx.client._pipeline._Listings``):
what a stale listing can and cannot get wrong."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import trio

import ftx
from ftx import Download, LocalFileError
from ftx.client._partfile import PartFile
from ftx.client._pipeline import _Listings

TIMEOUT = 30


# --------------------------------------------------------------------------- the listing itself


def test_a_name_missing_from_an_existing_directory_is_a_new_file(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_bytes(b"old")
    listings = _Listings()
    assert listings.new_file(tmp_path / "new.txt") == tmp_path / "new.txt"
    assert listings.new_file(str(tmp_path / "other.txt")) == tmp_path / "other.txt"
    assert listings.new_file(tmp_path / "old.txt") is None  # exists: the usual checks


def test_a_name_with_a_part_file_is_looked_up_to_resume(tmp_path: Path) -> None:
    (tmp_path / "half.bin.part").write_bytes(b"the start")
    long_name = "x" * 255  # its part file has a shortened name: the one PartFile uses
    PartFile(tmp_path / long_name).part_path.write_bytes(b"the start")
    listings = _Listings()
    assert listings.new_file(tmp_path / "half.bin") is None
    assert listings.new_file(tmp_path / long_name) is None
    assert listings.new_file(tmp_path / "half") is not None  # no half.part


@pytest.mark.parametrize("name", ["sub/", "sub/.", "sub/..", "missing/f.txt", "file.txt/f.txt"])
def test_anything_else_is_looked_up_the_usual_way(tmp_path: Path, name: str) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "file.txt").write_bytes(b"not a directory")
    assert _Listings().new_file(os.path.join(tmp_path, name)) is None


def test_the_listing_is_taken_once(tmp_path: Path) -> None:
    listings = _Listings()
    assert listings.new_file(tmp_path / "a") is not None
    (tmp_path / "a").write_bytes(b"made after the listing")
    assert listings.new_file(tmp_path / "a") is not None  # stale, on purpose: see below


# --------------------------------------------------------------------------- end to end


async def serve(tmp_path: Path, start_server: object, files: dict[str, bytes]) -> tuple[str, int]:
    served = tmp_path / "served"
    served.mkdir()
    for name, content in files.items():
        (served / name).write_bytes(content)
    return await start_server(served)  # type: ignore[operator, no-any-return]


@pytest.mark.parametrize("overwrite", [False, True])
async def test_a_file_made_after_the_listing_is_never_replaced_unasked(
    tmp_path: Path, start_server: object, overwrite: bool
) -> None:
    host, port = await serve(tmp_path, start_server, {"a.txt": b"a", "b.txt": b"b"})
    dest = tmp_path / "dest"
    dest.mkdir()
    results: dict[str, Download | ftx.FtxError] = {}
    first_done = trio.Event()
    send, receive = trio.open_memory_channel[tuple[str, Path]](0)

    def done(path: str, result: Download | ftx.FtxError) -> None:
        results[path] = result
        first_done.set()

    async def feed() -> None:
        async with send:
            await send.send(("a.txt", dest / "a.txt"))  # the listing of dest is taken for it
            await first_done.wait()
            (dest / "b.txt").write_bytes(b"someone else's")
            await send.send(("b.txt", dest / "b.txt"))

    with trio.fail_after(TIMEOUT):
        async with ftx.connect(host, port) as client, trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            await client.fetch(receive, on_done=done, overwrite=overwrite, window=4)
    assert isinstance(results["a.txt"], Download)
    assert (dest / "a.txt").read_bytes() == b"a"
    if overwrite:
        assert isinstance(results["b.txt"], Download)
        assert (dest / "b.txt").read_bytes() == b"b"
    else:
        assert isinstance(results["b.txt"], LocalFileError)
        assert "exists" in str(results["b.txt"])
        assert (dest / "b.txt").read_bytes() == b"someone else's"
        # As whenever publishing is refused, the verified copy stays in its part file.
        assert (dest / "b.txt.part").read_bytes() == b"b"
        (dest / "b.txt.part").unlink()
    assert sorted(os.listdir(dest)) == ["a.txt", "b.txt"]


async def test_a_part_in_the_listing_is_resumed(tmp_path: Path, start_server: object) -> None:
    content = random.Random(5).randbytes(4 << 20)
    host, port = await serve(tmp_path, start_server, {"big.bin": content, "small.txt": b"s"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(TIMEOUT):
        with trio.CancelScope() as scope:

            def cut(done: int, total: int) -> None:
                if done >= 1 << 20:
                    scope.cancel()

            async with ftx.connect(host, port) as client:
                await client.get("big.bin", dest / "big.bin", progress=cut)
        held = (dest / "big.bin.part").stat().st_size
        assert 0 < held < len(content)
        starts: dict[int, int] = {}

        def progress(done: int, total: int) -> None:
            starts.setdefault(total, done)

        async with ftx.connect(host, port) as client:
            results = await client.get_many(
                [("small.txt", dest / "small.txt"), ("big.bin", dest / "big.bin")],
                progress=progress,
            )
    assert all(isinstance(result, Download) for result in results), results
    assert starts[len(content)] == held, "resumed from the part, not started again"
    assert (dest / "big.bin").read_bytes() == content
    assert (dest / "small.txt").read_bytes() == b"s"
    assert sorted(os.listdir(dest)) == ["big.bin", "small.txt"]


async def test_an_existing_directory_as_destination_is_saved_into(
    tmp_path: Path, start_server: object
) -> None:
    host, port = await serve(tmp_path, start_server, {"a.txt": b"a"})
    (tmp_path / "into").mkdir()
    with trio.fail_after(TIMEOUT):
        async with ftx.connect(host, port) as client:
            (result,) = await client.get_many([("a.txt", tmp_path / "into")])
    assert isinstance(result, Download)
    assert result.dest == tmp_path / "into" / "a.txt"
    assert (tmp_path / "into" / "a.txt").read_bytes() == b"a"
