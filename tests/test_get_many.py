"""Pipelined downloads of many files on one connection (Client.get_many), against a real server."""

from __future__ import annotations

import os
from pathlib import Path

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
