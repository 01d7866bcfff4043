"""`get -r` as one tree stream (feature "tree", docs/protocol.md section 21), against a real
server: the tree arrives whole, a re-run moves no content, --checksum catches a change that kept
size and time, errors are per entry, and an old server is fetched from file by file."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import ftx
import ftx._tree_walk
import ftx.server._session
from conftest import PYTHON_M_FTX, ServerStarter
from ftx.client._tree import Skipped, TreeProgress, download
from tree_helpers import make_tree as make_shared_tree
from tree_helpers import tree_files


def connector(host: str, port: int, **config: object):  # type: ignore[no-untyped-def]
    calls: list[ftx.Client] = []

    @asynccontextmanager
    async def connect() -> AsyncIterator[ftx.Client]:
        async with ftx.connect(host, port, ftx.ClientConfig(**config)) as client:  # type: ignore[arg-type]
            calls.append(client)
            yield client

    connect.calls = calls  # type: ignore[attr-defined]
    return connect


def make_tree(top: Path) -> None:
    make_shared_tree(top, seed=14)
    (top / "a" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (top / "a" / "run.sh").chmod(0o750)


async def test_a_tree_arrives_whole_in_one_stream(
    tmp_path: Path, start_server: object, caplog: pytest.LogCaptureFixture
) -> None:
    served = tmp_path / "served"
    make_tree(served / "top")
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    connect = connector(host, port)
    progress = TreeProgress()
    with caplog.at_level(logging.INFO, logger="ftx.access"), trio.fail_after(60):
        results = await download(
            connect, ["top"], dest, recursive=True, preserve_mode=True, progress=progress
        )
    assert tree_files(dest / "top") == tree_files(served / "top")
    assert (dest / "top" / "empty-dir").is_dir()
    assert not (dest / "top" / "link").exists()
    assert (dest / "top" / "a" / "run.sh").stat().st_mode & 0o777 == 0o750
    skipped = [(path, r.reason) for path, r in results if isinstance(r, Skipped)]
    assert skipped == [("top/link", "a symbolic link (not followed; fetch its target by name)")]
    assert sum(isinstance(r, ftx.Download) for _, r in results) == 306
    assert not list(dest.rglob("*.part*"))
    assert len(connect.calls) == 1  # type: ignore[attr-defined]
    requests = [r.message for r in caplog.records if r.name == "ftx.access"]
    assert len(requests) == 1, requests
    assert " TREE 'top' " in requests[0], requests
    assert progress.files_done == progress.files_found == 306
    assert (
        progress.bytes_done
        == progress.bytes_found
        == sum(len(data) for data, _ in tree_files(served / "top").values())
    )


async def test_a_re_run_moves_no_content(
    tmp_path: Path, start_server: object, caplog: pytest.LogCaptureFixture
) -> None:
    served = tmp_path / "served"
    make_tree(served / "top")
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(60):
        await download(connector(host, port), ["top"], dest, recursive=True)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ftx.access"), trio.fail_after(60):
        again = await download(connector(host, port), ["top"], dest, recursive=True)
    assert not [r for _, r in again if isinstance(r, ftx.Download)]
    reasons = [r.reason for _, r in again if isinstance(r, Skipped)]
    assert reasons.count("up to date") == 306
    (record,) = [r for r in caplog.records if r.name == "ftx.access"]
    assert record.access["bytes"] == 0  # type: ignore[attr-defined]

    # One file changed (new time), one added: only they move.
    (served / "top" / "x.txt").write_bytes(b"y")
    (served / "top" / "a" / "new.txt").write_bytes(b"new")
    (dest / "top" / "x.txt").unlink()
    with trio.fail_after(60):
        third = dict(await download(connector(host, port), ["top"], dest, recursive=True))
    saved = sorted(path for path, r in third.items() if isinstance(r, ftx.Download))
    assert saved == ["top/a/new.txt", "top/x.txt"]
    assert (dest / "top" / "x.txt").read_bytes() == b"y"


async def test_a_re_run_fetches_only_the_files_missing_inside_a_directory(
    tmp_path: Path, start_server: object, caplog: pytest.LogCaptureFixture
) -> None:
    # The server leaves out the files the client has from its listing alone (no worker thread)
    # up to the first it lacks, then walks on: three files missing in the middle of a
    # directory of 300 move; the other 297 there do not. The last directory walked holds
    # files (the names left out there are sent before the end too).
    served = tmp_path / "served"
    make_tree(served / "top")
    (served / "top" / "zz").mkdir()
    for name in ("1", "2", "3"):
        (served / "top" / "zz" / name).write_bytes(name.encode())
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(60):
        await download(connector(host, port), ["top"], dest, recursive=True)
    c = served / "top" / "a" / "b" / "c"
    for name in ("f100", "f200", "f250"):
        (dest / "top" / "a" / "b" / "c" / name).unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ftx.access"), trio.fail_after(60):
        again = dict(await download(connector(host, port), ["top"], dest, recursive=True))
    saved = sorted(path for path, r in again.items() if isinstance(r, ftx.Download))
    assert saved == ["top/a/b/c/f100", "top/a/b/c/f200", "top/a/b/c/f250"]
    reasons = [r.reason for r in again.values() if isinstance(r, Skipped)]
    assert reasons.count("up to date") == 306
    assert not [r for r in again.values() if isinstance(r, ftx.FtxError)]
    assert tree_files(dest / "top") == tree_files(served / "top")
    (record,) = [r for r in caplog.records if r.name == "ftx.access"]
    sizes = sum((c / name).stat().st_size for name in ("f100", "f200", "f250"))
    assert record.access["bytes"] == sizes  # type: ignore[attr-defined]


def test_the_have_list_is_listed_several_pages_at_a_time() -> None:
    from ftx.client._tree_stream import _take_pages
    from ftx.protocol.messages import HaveRecord, TreeHave

    def page(path: str, count: int) -> TreeHave:
        return TreeHave(1, path, tuple(HaveRecord(f"f{i}", 1, 1, None) for i in range(count)))

    pages = iter([page("a", 10), page("b", 10), page("c", 1000), page("d", 3000), page("e", 5)])
    assert [p.path for p in _take_pages(pages, 1)] == ["a"]
    assert [p.path for p in _take_pages(pages, 32)] == ["b", "c", "d"]  # 4,010 records: enough
    assert [p.path for p in _take_pages(pages, 32)] == ["e"]
    assert _take_pages(pages, 32) == []


async def test_checksum_catches_a_change_with_the_same_size_and_time(
    tmp_path: Path, start_server: object
) -> None:
    served = tmp_path / "served"
    make_tree(served / "top")
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    with trio.fail_after(60):
        await download(connector(host, port), ["top"], dest, recursive=True)
    for name in ("a/b/c/f007", "a/b/big.bin"):
        local = dest / "top" / name
        st = local.stat()
        data = bytearray(local.read_bytes())
        data[0] ^= 0xFF
        local.write_bytes(bytes(data))
        os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns))
    with trio.fail_after(60):
        plain = dict(await download(connector(host, port), ["top"], dest, recursive=True))
    assert not [path for path, r in plain.items() if isinstance(r, ftx.FtxError)]
    with trio.fail_after(60):
        checked = dict(
            await download(connector(host, port), ["top"], dest, recursive=True, checksum=True)
        )
    failed = sorted(path for path, r in checked.items() if isinstance(r, ftx.FtxError))
    assert failed == ["top/a/b/big.bin", "top/a/b/c/f007"]  # changed: left alone, reported
    assert "already exists" in str(checked["top/a/b/c/f007"])
    with trio.fail_after(60):
        await download(connector(host, port), ["top"], dest, recursive=True, overwrite=True)
    assert tree_files(dest / "top") == tree_files(served / "top")


async def test_errors_are_per_entry_and_a_re_run_finishes_the_job(
    tmp_path: Path, start_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file the server cannot read (EACCES, made so even for root), and a local directory
    that cannot be made: each reported, the rest saved; a re-run finishes once both are
    fixed."""
    secret_size = 12345
    read_whole = ftx._tree_walk._read_whole
    unreadable = True

    def refusing(fd: int, size: int) -> bytes | None:
        if size == secret_size and unreadable:
            raise PermissionError(errno.EACCES, "permission denied")
        return read_whole(fd, size)

    monkeypatch.setattr(ftx._tree_walk, "_read_whole", refusing)
    served = tmp_path / "served"
    make_tree(served / "top")
    (served / "top" / "a" / "secret").write_bytes(b"s" * secret_size)
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    (dest / "top" / "a" / "b").mkdir(parents=True)
    (dest / "top" / "a" / "b" / "c").write_bytes(b"a file where a directory goes")
    with trio.fail_after(60):
        results = dict(await download(connector(host, port), ["top"], dest, recursive=True))
    failed = {path: r for path, r in results.items() if isinstance(r, ftx.FtxError)}
    assert sorted(failed) == ["top/a/b/c", "top/a/secret"]
    assert isinstance(failed["top/a/secret"], ftx.RemoteError)
    assert failed["top/a/secret"].code == "permission-denied"
    assert (dest / "top" / "a" / "b" / "big.bin").exists()  # the rest went on
    (dest / "top" / "a" / "b" / "c").unlink()
    unreadable = False
    with trio.fail_after(60):
        again = dict(await download(connector(host, port), ["top"], dest, recursive=True))
    assert not [path for path, r in again.items() if isinstance(r, ftx.FtxError)]
    assert tree_files(dest / "top") == tree_files(served / "top")


async def test_an_old_server_is_fetched_from_file_by_file(
    tmp_path: Path,
    start_server: object,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that does not list the feature `tree` (as ftx 0.3.0): per-file GETs."""
    monkeypatch.setattr(ftx.server._session, "TREE_FEATURE", "not-tree")
    served = tmp_path / "served"
    make_tree(served / "top")
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    with caplog.at_level(logging.INFO, logger="ftx.access"), trio.fail_after(60):
        await download(connector(host, port), ["top"], dest, recursive=True)
    assert tree_files(dest / "top") == tree_files(served / "top")
    verbs = {r.message.split()[1] for r in caplog.records if r.name == "ftx.access"}
    assert verbs == {"LIST", "GET"}


async def test_tree_streams_can_be_turned_off_and_files_still_fall_back(
    tmp_path: Path, start_server: object
) -> None:
    """A file among the paths (not a directory) goes file by file beside the streams."""
    served = tmp_path / "served"
    make_tree(served / "top")
    (served / "single.txt").write_bytes(b"one")
    host, port = await start_server(served)  # type: ignore[operator]
    for streams in (True, False):
        dest = tmp_path / f"dest-{streams}"
        dest.mkdir()
        with trio.fail_after(60):
            results = dict(
                await download(
                    connector(host, port, tree_streams=streams),
                    ["top", "single.txt", "missing"],
                    dest,
                    recursive=True,
                )
            )
        assert tree_files(dest / "top") == tree_files(served / "top")
        assert (dest / "single.txt").read_bytes() == b"one"
        assert isinstance(results["missing"], ftx.RemoteError)


def test_ctrl_c_mid_tree_then_a_re_run_finishes_it(
    tmp_path: Path, start_ftx_server: ServerStarter
) -> None:
    """A real `ftx get -r` of many small files and some large ones, interrupted once files
    have landed: every file present is whole (with the server's time), and the same command
    run again fetches only the rest."""
    served = tmp_path / "served"
    rng = random.Random(3)
    for d in range(20):
        (served / "top" / f"d{d:02}").mkdir(parents=True)
        for f in range(150):
            (served / "top" / f"d{d:02}" / f"f{f:03}").write_bytes(rng.randbytes(2000))
        (served / "top" / f"d{d:02}" / "big.bin").write_bytes(rng.randbytes(2 * 1024 * 1024))
    dest = tmp_path / "dest"
    dest.mkdir()
    address = start_ftx_server(served).address
    get = [*PYTHON_M_FTX, "get", "-r", address, "top", "-o", str(dest), "--json"]
    client = subprocess.Popen(get, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while sum(1 for _ in dest.rglob("f*")) < 300:
        assert time.monotonic() < deadline, "no files appeared"
        assert client.poll() is None, "the download finished before it could be interrupted"
        time.sleep(0.005)
    client.send_signal(signal.SIGINT)
    _, errors = client.communicate(timeout=30)
    assert client.returncode == 130, errors
    expected = tree_files(served / "top")
    got = {
        name: content
        for name, content in tree_files(dest / "top").items()
        if not name.endswith((".part", ".part.resume"))  # a large file's, for its resume
    }
    assert 300 <= len(got) < len(expected)
    for name, content in got.items():
        assert content == expected[name], name  # whole, verified, with the server's time
    rerun = subprocess.run(get, capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    statuses = [json.loads(line)["status"] for line in rerun.stdout.splitlines()]
    assert statuses.count("skipped") >= 300  # up to date: not sent again
    assert tree_files(dest / "top") == expected
    assert not list(dest.rglob("*.part*"))


async def test_a_directory_swapped_for_a_link_mid_file_does_not_redirect_it(
    tmp_path: Path, start_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large file of a tree is written and published relative to its directory's descriptor:
    another process that swaps that directory for a symbolic link (to somewhere else) while the
    file is on its way does not make ftx write there."""
    from ftx.client import _partfile

    served = tmp_path / "served"
    (served / "top" / "sub").mkdir(parents=True)
    content = random.Random(7).randbytes(1 << 20)  # large: FILE / DATA / END in the stream
    (served / "top" / "sub" / "big.bin").write_bytes(content)
    host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "dest"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    swapped = []
    real_open = _partfile.PartFile.open

    def open_then_swap(self: _partfile.PartFile, *, keep: int = 0) -> None:
        real_open(self, keep=keep)
        if self.dest.name == "big.bin" and not swapped:  # the attacker's move, mid-file
            os.rename(dest / "top" / "sub", dest / "top" / "moved")
            os.symlink(elsewhere, dest / "top" / "sub")
            swapped.append(True)

    monkeypatch.setattr(_partfile.PartFile, "open", open_then_swap)
    with trio.fail_after(60):
        results = await download(connector(host, port), ["top"], dest, recursive=True)
    assert swapped
    assert [type(r) for _, r in results] == [ftx.Download]
    assert list(elsewhere.iterdir()) == []  # nothing went through the link
    assert (dest / "top" / "moved" / "big.bin").read_bytes() == content
    assert not list(dest.rglob("*.part*"))
