"""Pipelined downloads of many files on one connection (Client.get_many), against a real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

import ftx
from ftx import Download, ErrorCode, LocalFileError, RemoteError


def make_tree(root: Path, directories: int, files_per_directory: int) -> list[str]:
    paths = []
    for d in range(directories):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(files_per_directory):
            path = f"d{d}/f{f}.bin"
            (root / path).write_bytes(os.urandom(f % 7 * 1000 + d))  # some empty files too
            paths.append(path)
    return paths


async def test_many_small_files_arrive_identical(tmp_path: Path, start_server: object) -> None:
    served, dest = tmp_path / "served", tmp_path / "dest"
    paths = make_tree(served, 5, 60)
    host, port = await start_server(served)  # type: ignore[operator]
    for d in range(5):
        (dest / f"d{d}").mkdir(parents=True)
    finished: list[str] = []
    with trio.fail_after(60):
        async with ftx.connect(host, port) as client:
            results = await client.get_many(
                [(p, dest / p) for p in paths],
                window=16,
                on_done=lambda path, _: finished.append(path),
            )
            # The connection is still in step afterwards.
            assert {e.name for e in await client.list("d0")} == {f"f{f}.bin" for f in range(60)}
    assert finished == paths
    assert len(results) == len(paths)
    for path, result in zip(paths, results, strict=True):
        assert isinstance(result, Download), (path, result)
        assert result.dest == dest / path
        assert (dest / path).read_bytes() == (served / path).read_bytes()
        assert (dest / path).stat().st_mtime_ns == (served / path).stat().st_mtime_ns
    assert not list(dest.rglob("*.part"))


async def test_one_failing_file_does_not_stop_the_others(
    tmp_path: Path, start_server: object
) -> None:
    served, dest = tmp_path / "served", tmp_path / "dest"
    served.mkdir()
    dest.mkdir()
    (served / "a.txt").write_bytes(b"a")
    (served / "c.txt").write_bytes(b"c")
    (served / "dir").mkdir()
    (dest / "exists.txt").write_bytes(b"keep me")
    host, port = await start_server(served)  # type: ignore[operator]
    wanted = [
        ("a.txt", dest / "a.txt"),
        ("missing.txt", dest / "missing.txt"),
        ("c.txt", dest / "exists.txt"),  # a local refusal: never requested
        ("../secret", dest / "secret"),
        ("dir", dest / "dir-file"),
        ("c.txt", dest / "c.txt"),
    ]
    with trio.fail_after(30):
        async with ftx.connect(host, port) as client:
            results = await client.get_many(wanted)
    assert [type(r).__name__ for r in results] == [
        "Download",
        "RemoteError",
        "LocalFileError",
        "RemoteError",
        "RemoteError",
        "Download",
    ]
    assert isinstance(results[1], RemoteError)
    assert results[1].code == ErrorCode.NOT_FOUND
    assert isinstance(results[2], LocalFileError)
    assert isinstance(results[3], RemoteError)
    assert results[3].code == ErrorCode.OUTSIDE_ROOT
    assert isinstance(results[4], RemoteError)
    assert results[4].code == ErrorCode.NOT_A_FILE
    assert (dest / "a.txt").read_bytes() == b"a"
    assert (dest / "c.txt").read_bytes() == b"c"
    assert (dest / "exists.txt").read_bytes() == b"keep me"
    assert not (dest / "missing.txt").exists()
    assert not (dest / "secret").exists()
    assert not list(dest.glob("*.part"))


async def test_a_file_whose_part_cannot_be_created_is_skipped_and_the_others_arrive(
    tmp_path: Path, start_server: object
) -> None:
    """A directory where a file's part file should go (so it cannot be created once the answer
    arrives): that file fails with LocalFileError, its data (small, and 5 MiB) is read and
    dropped, and every file pipelined after it arrives whole on the same connection."""
    served, dest = tmp_path / "served", tmp_path / "dest"
    served.mkdir()
    dest.mkdir()
    contents = {f"f{i}.bin": os.urandom(i * 997) for i in range(8)}
    contents["big.bin"] = os.urandom(5 << 20)
    contents["z.bin"] = b"last"
    for name, content in contents.items():
        (served / name).write_bytes(content)
    blocked = {"f3.bin", "big.bin"}
    for name in blocked:
        (dest / f"{name}.part").mkdir()
    host, port = await start_server(served)  # type: ignore[operator]
    names = [f"f{i}.bin" for i in range(4)] + ["big.bin"] + [f"f{i}.bin" for i in range(4, 8)]
    names.append("z.bin")
    with trio.fail_after(30):
        async with ftx.connect(host, port) as client:
            results = await client.get_many([(name, dest / name) for name in names])
            assert {e.name for e in await client.list("")} == set(contents)  # still in step
    for name, result in zip(names, results, strict=True):
        if name in blocked:
            assert isinstance(result, LocalFileError), (name, result)
            assert "Is a directory" in str(result)
            assert not (dest / name).exists()
        else:
            assert isinstance(result, Download), (name, result)
            assert (dest / name).read_bytes() == contents[name]
    assert sorted(p.name for p in dest.glob("*.part")) == sorted(f"{n}.part" for n in blocked)


async def test_a_single_get_whose_part_cannot_be_created_fails_at_once(
    tmp_path: Path, start_server: object
) -> None:
    """Client.get does not read a whole file only to drop it: it fails, and the client closes."""
    served, dest = tmp_path / "served", tmp_path / "dest"
    served.mkdir()
    dest.mkdir()
    (served / "big.bin").write_bytes(os.urandom(5 << 20))
    (dest / "big.bin.part").mkdir()
    host, port = await start_server(served)  # type: ignore[operator]
    with trio.fail_after(30):
        async with ftx.connect(host, port) as client:
            with pytest.raises(LocalFileError, match="Is a directory"):
                await client.get("big.bin", dest / "big.bin")
            with pytest.raises(ftx.ConnectionLostError):
                await client.list("")


async def test_a_file_whose_resume_record_cannot_be_written_is_skipped_and_leaves_nothing(
    tmp_path: Path, start_server: object
) -> None:
    """A 5 MiB download gets a resume record; a directory where it should go makes that file
    fail on its own (its new, empty part removed again), and the next file still arrives."""
    served, dest = tmp_path / "served", tmp_path / "dest"
    served.mkdir()
    dest.mkdir()
    (served / "big.bin").write_bytes(os.urandom(5 << 20))
    (served / "next.txt").write_bytes(b"next")
    (dest / "big.bin.part.resume").mkdir()
    host, port = await start_server(served)  # type: ignore[operator]
    with trio.fail_after(30):
        async with ftx.connect(host, port) as client:
            results = await client.get_many(
                [("big.bin", dest / "big.bin"), ("next.txt", dest / "next.txt")]
            )
    assert isinstance(results[0], LocalFileError), results[0]
    assert isinstance(results[1], Download), results[1]
    assert (dest / "next.txt").read_bytes() == b"next"
    assert sorted(p.name for p in dest.iterdir()) == ["big.bin.part.resume", "next.txt"]
