"""Whole directories and several files at once: ftx.client._tree.download and `ftx get -r`."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

import ftx
from conftest import PYTHON_M_FTX, ServerStarter
from ftx.client._tree import Skipped, download
from ftx.framing import FramedChannel
from ftx.protocol import ServerProtocol
from ftx.protocol.messages import Entry, EntryType, Hello, ListDir, ListEnd, ListEntries


def connector(host: str, port: int, *, streams: bool = True):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def connect() -> AsyncIterator[ftx.Client]:
        async with ftx.connect(host, port, ftx.ClientConfig(tree_streams=streams)) as client:
            yield client

    return connect


def tree_files(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


async def test_recursive_download_is_identical(tmp_path: Path, start_server: object) -> None:
    served = tmp_path / "served"
    top = served / "top"
    (top / "a" / "b").mkdir(parents=True)
    (top / "empty-dir").mkdir()
    (top / "x.txt").write_bytes(b"x")
    (top / "empty.bin").write_bytes(b"")
    (top / "a" / "caf\u00e9 \u2014 menu.txt").write_bytes("\u00e9t\u00e9".encode())
    (top / "a" / "b" / "big.bin").write_bytes(random.Random(1).randbytes(3 * 1024 * 1024))
    (top / "link").symlink_to("x.txt")
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(30):
        results = await download(connector(host, port), ["top"], dest, recursive=True, jobs=3)
    assert tree_files(dest / "top") == tree_files(top)
    assert (dest / "top" / "empty-dir").is_dir()
    assert not (dest / "top" / "link").exists(), "symbolic links are not followed"
    skipped = [r for _, r in results if isinstance(r, Skipped)]
    assert [s.path for s in skipped] == ["top/link"]
    assert not list(dest.rglob("*.part*"))
    mtime = (top / "a" / "b" / "big.bin").stat().st_mtime_ns
    assert (dest / "top" / "a" / "b" / "big.bin").stat().st_mtime_ns == mtime

    # A second run finds everything up to date and transfers nothing.
    with trio.fail_after(30):
        again = await download(connector(host, port), ["top"], dest, recursive=True)
    assert {r.reason for _, r in again if isinstance(r, Skipped)} == {
        "up to date",
        "a symbolic link (not followed; fetch its target by name)",
    }
    assert not [r for _, r in again if isinstance(r, ftx.Download)]


async def test_many_paths_in_one_directory_list_it_once(
    tmp_path: Path, start_server: object
) -> None:
    """`get -r a b c missing` (say, from a shell glob): the parent is listed once for all of
    them, not once per path; each path is still fetched or refused on its own."""
    served = tmp_path / "served"
    for name in ("a", "b", "c"):
        (served / name).mkdir(parents=True)
        (served / name / "f.txt").write_bytes(name.encode())
    (served / "top.txt").write_bytes(b"top")
    host, port = await start_server(served)  # type: ignore[operator]
    listed: list[str] = []

    @asynccontextmanager
    async def counting() -> AsyncIterator[ftx.Client]:
        # File by file (tree streams list nothing): tests/client/test_tree_stream.py
        config = ftx.ClientConfig(tree_streams=False)
        async with ftx.connect(host, port, config) as client:
            plain_list = client.list

            async def list_counted(path: str = "") -> list[Entry]:
                listed.append(path)
                return await plain_list(path)

            client.list = list_counted  # type: ignore[method-assign]
            yield client

    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(30):
        results = dict(
            await download(
                counting, ["a", "b", "c", "top.txt", "missing"], dest, recursive=True, jobs=2
            )
        )
    assert sorted(listed) == ["", "a", "b", "c"]
    assert tree_files(dest) == {
        "a/f.txt": b"a",
        "b/f.txt": b"b",
        "c/f.txt": b"c",
        "top.txt": b"top",
    }
    assert isinstance(results["missing"], ftx.RemoteError)


async def test_a_server_that_takes_fewer_connections_than_jobs_still_gets_everything(
    tmp_path: Path, start_server: object
) -> None:
    """-j 6 against a server that takes 2 connections (the lister's and one worker's): the
    workers it refuses as busy leave the work to the one it took. With room for the lister
    only, busy is the answer."""
    served = tmp_path / "served"
    for d in range(3):
        (served / "top" / f"d{d}").mkdir(parents=True)
        for f in range(20):
            (served / "top" / f"d{d}" / f"f{f}.txt").write_bytes(f"{d}/{f}".encode())
    host, port = await start_server(served, max_connections=2)  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(30):
        results = await download(connector(host, port), ["top"], dest, recursive=True, jobs=6)
    assert all(isinstance(result, ftx.Download) for _, result in results), results
    assert tree_files(dest / "top") == tree_files(served / "top")

    host, port = await start_server(served, max_connections=1)  # type: ignore[operator]
    again = tmp_path / "again"
    again.mkdir()
    # A tree stream needs one connection only: a server that takes one serves it all.
    with trio.fail_after(30):
        results = await download(connector(host, port), ["top"], again, recursive=True, jobs=3)
    assert tree_files(again / "top") == tree_files(served / "top")
    # File by file, the workers need connections beside the lister's: busy is the answer.
    third = tmp_path / "third"
    third.mkdir()
    slow = connector(host, port, streams=False)
    with trio.fail_after(30), pytest.raises(ftx.RemoteError) as refused:
        await download(slow, ["top"], third, recursive=True, jobs=3)
    assert refused.value.code == ftx.ErrorCode.BUSY


async def test_ten_thousand_small_files(tmp_path: Path, start_server: object) -> None:
    served = tmp_path / "served"
    rng = random.Random(10_000)
    for d in range(100):
        directory = served / "many" / f"d{d:02}"
        directory.mkdir(parents=True)
        for f in range(100):
            (directory / f"f{f:02}.bin").write_bytes(rng.randbytes(rng.randrange(0, 4097)))
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(120):
        results = await download(connector(host, port), ["many"], dest, recursive=True, jobs=4)
    assert len(results) == 10_000
    assert all(isinstance(result, ftx.Download) for _, result in results)
    assert tree_files(dest / "many") == tree_files(served / "many")


class HostileServer:
    """Speaks the protocol correctly, but its listing names try to escape the destination."""

    NAMES = ("../x", "/etc/x", "a/../../x", "nul\0byte", "back\\slash", "..", ".", "")

    async def handle(self, stream: trio.abc.Stream) -> None:
        channel = FramedChannel(stream)
        protocol = ServerProtocol()
        async with channel:
            assert isinstance(protocol.receive(await channel.receive()), Hello)
            await channel.send_parts(*protocol.send(protocol.hello_reply()))
            while True:
                try:
                    request = protocol.receive(await channel.receive())
                except (trio.EndOfChannel, trio.BrokenResourceError):
                    return
                assert isinstance(request, ListDir), f"only listings are asked for: {request}"
                if request.path == "":
                    entries = (Entry("evil", EntryType.DIRECTORY, 0, 0, 0o755),)
                else:
                    entries = tuple(Entry(n, EntryType.FILE, 1, 0, 0o644) for n in self.NAMES)
                await channel.send_parts(*protocol.send(ListEntries(request.request_id, entries)))
                await channel.send_parts(*protocol.send(ListEnd(request.request_id, len(entries))))


async def test_hostile_names_are_refused_and_nothing_escapes(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    serve = partial(trio.serve_tcp, HostileServer().handle, 0, host="127.0.0.1")
    listeners = await nursery.start(serve)
    port = listeners[0].socket.getsockname()[1]
    dest = tmp_path / "deep" / "dest"
    dest.mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    with trio.fail_after(30):
        results = await download(connector("127.0.0.1", port), ["evil"], dest, recursive=True)
    refused = [result for _, result in results if isinstance(result, ftx.LocalFileError)]
    assert len(refused) == len(HostileServer.NAMES)
    assert all("unsafe file name" in str(error) for error in refused)
    created = sorted(set(tmp_path.rglob("*")) - set(before))
    assert created == [dest / "evil"], "only the listed directory itself was created"
    assert not Path("/etc/x").exists()


async def test_existing_symlink_in_dest_is_not_followed(
    tmp_path: Path, start_server: object
) -> None:
    served = tmp_path / "served"
    (served / "top" / "sub").mkdir(parents=True)
    (served / "top" / "sub" / "f.txt").write_bytes(b"payload")
    host, port = await start_server(served)  # type: ignore[operator]
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / "top").mkdir(parents=True)
    (dest / "top" / "sub").symlink_to(outside)  # planted: would lead the download outside
    (served / "top" / "other").mkdir()
    (served / "top" / "other" / "g.txt").write_bytes(b"fine")
    with trio.fail_after(30):
        results = dict(await download(connector(host, port), ["top"], dest, recursive=True))
    assert list(outside.iterdir()) == []
    # Refused and reported; the rest of the tree still arrives.
    refused = results["top/sub"]
    assert isinstance(refused, ftx.LocalFileError)
    assert "not a directory" in str(refused)
    assert (dest / "top" / "other" / "g.txt").read_bytes() == b"fine"


async def test_a_file_where_a_directory_goes_fails_that_directory_only(
    tmp_path: Path, start_server: object
) -> None:
    served = tmp_path / "served"
    for name in ("a", "b", "c"):
        (served / name / "deep").mkdir(parents=True)
        (served / name / "deep" / "f.txt").write_bytes(name.encode())
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    (dest / "c").mkdir(parents=True)
    (dest / "b").write_bytes(b"a file of mine")
    (dest / "c" / "deep").write_bytes(b"another")
    with trio.fail_after(30):
        results = dict(await download(connector(host, port), ["a", "b", "c"], dest, recursive=True))
    assert (dest / "a" / "deep" / "f.txt").read_bytes() == b"a"
    assert (dest / "b").read_bytes() == b"a file of mine"
    assert (dest / "c" / "deep").read_bytes() == b"another"
    assert {path for path, result in results.items() if isinstance(result, ftx.FtxError)} == {
        "b",
        "c/deep",
    }


def test_ctrl_c_in_the_middle_leaves_resumable_parts(
    tmp_path: Path, start_ftx_server: ServerStarter
) -> None:
    served = tmp_path / "served"
    (served / "top").mkdir(parents=True)
    for i in range(8):
        (served / "top" / f"f{i}.bin").write_bytes(random.Random(i).randbytes(24 * 1024 * 1024))
    dest = tmp_path / "dest"
    dest.mkdir()
    address = start_ftx_server(served).address
    get = [*PYTHON_M_FTX, "get", "-r", address, "top", "-o", str(dest), "-j", "2"]
    client = subprocess.Popen(get, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not any(p.stat().st_size > 0 for p in dest.rglob("*.part")):
        assert time.monotonic() < deadline, "no part file appeared"
        assert client.poll() is None, "the download finished before it could be interrupted"
        time.sleep(0.01)
    client.send_signal(signal.SIGINT)
    _, errors = client.communicate(timeout=30)
    assert client.returncode == 130, errors
    parts = list(dest.rglob("*.part"))
    assert parts, "interrupted files keep their parts"
    assert all(Path(f"{part}.resume").exists() for part in parts if part.stat().st_size)
    rerun = subprocess.run(get, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_files(dest / "top") == tree_files(served / "top")
    assert not list(dest.rglob("*.part*"))
