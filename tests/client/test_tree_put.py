"""`put -r` as one tree stream (feature "tree-put", docs/protocol.md section 23), against a real
server: the tree lands whole, a re-run moves no content, errors are per entry, an interrupted
upload is finished by a re-run, and a server without the feature is not sent the stream."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trio

import ftx
from ftx.client import TreePutReport
from ftx.errors import FtxError, LocalFileError
from tree_helpers import make_tree as make_shared_tree
from tree_helpers import tree_files


def make_tree(top: Path) -> None:
    make_shared_tree(top, seed=23)


class Recorder(TreePutReport):
    pass


def recorder() -> tuple[TreePutReport, dict[str, list[object]]]:
    seen: dict[str, list[object]] = {"stored": [], "failed": [], "skipped": [], "unchanged": []}
    report = TreePutReport(
        stored=lambda path, size: seen["stored"].append(path),
        failed=lambda path, error: seen["failed"].append((path, error)),
        skipped=lambda local, reason: seen["skipped"].append((local, reason)),
        unchanged=lambda path: seen["unchanged"].append(path),
    )
    return report, seen


async def put(
    host: str, port: int, local: Path, remote: str, **options: bool
) -> tuple[TreePutReport, dict[str, list[object]]]:
    report, seen = recorder()
    async with ftx.connect(host, port) as client:
        done = await client.put_tree(local, remote, report=report, **options)
    assert done is report
    return report, seen


async def test_a_tree_lands_whole_and_a_rerun_moves_nothing(
    tmp_path: Path, start_server: object, caplog: pytest.LogCaptureFixture
) -> None:
    local = tmp_path / "local"
    make_tree(local)
    served = tmp_path / "served"
    served.mkdir()
    host, port = await start_server(served, writable=True)  # type: ignore[operator]
    with trio.fail_after(60):
        report, seen = await put(host, port, local, "up")
    assert tree_files(served / "up") == tree_files(local)
    assert (served / "up" / "empty-dir").is_dir()
    assert not (served / "up" / "link").exists()
    assert (report.files, report.failures) == (len(tree_files(local)), 0)
    # The totals a progress bar draws: every file found is done, large ones (PUT after the
    # stream) included, and nothing is left queued or in flight.
    size = sum(len(content) for content, _ in tree_files(local).values())
    assert (report.files_found, report.files_done) == (report.files, report.files)
    assert (report.bytes_found, report.bytes_done) == (size, size)
    assert (report.queued, report.queued_bytes, report.sending) == (0, 0, {})
    assert report.listing_done
    assert not report.in_flight
    assert not report.sizes
    assert [reason for _, reason in seen["skipped"]] == ["a symbolic link (not followed)"]
    assert not [p for p in served.rglob("*") if "ftx-upload-part" in p.name]
    # The re-run sends no content: every file is up to date, the server received no bytes.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ftx.access"), trio.fail_after(60):
        report, seen = await put(host, port, local, "up")
    assert (report.files, report.failures) == (0, 0)
    assert report.up_to_date == len(tree_files(local))
    records = [r.access for r in caplog.records if hasattr(r, "access")]  # type: ignore[attr-defined]
    assert [(r["op"], r["bytes"]) for r in records] == [("TREE_PUT", 0)]


async def test_errors_are_per_entry_and_the_stream_goes_on(
    tmp_path: Path, start_server: object
) -> None:
    local = tmp_path / "local"
    make_tree(local)
    served = tmp_path / "served"
    (served / "up" / "a").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (served / "up" / "a" / "b").symlink_to(outside)  # a link where a directory should be
    (served / "up" / "x.txt").write_bytes(b"other")  # exists, differs: refused without force
    host, port = await start_server(served, writable=True)  # type: ignore[operator]
    with trio.fail_after(60):
        report, seen = await put(host, port, local, "up")
    assert list(outside.iterdir()) == []
    failed = dict(seen["failed"])  # type: ignore[arg-type]
    assert "exists" in str(failed["up/x.txt"])
    assert "up/a/b" in failed
    assert (served / "up" / "x.txt").read_bytes() == b"other"
    assert (
        served / "up" / "a" / "caf\u00e9 \u2014 menu.txt"
    ).read_bytes() == "\u00e9t\u00e9".encode()
    assert (served / "up" / "empty.bin").exists()
    assert report.failures >= 3


async def test_force_replaces_when_the_server_allows_it(
    tmp_path: Path, start_server: object
) -> None:
    local = tmp_path / "local"
    (local / "d").mkdir(parents=True)
    (local / "d" / "f").write_bytes(b"new")
    served = tmp_path / "served"
    (served / "up" / "d").mkdir(parents=True)
    (served / "up" / "d" / "f").write_bytes(b"old content")
    host, port = await start_server(served, writable=True)  # type: ignore[operator]
    report, _ = await put(host, port, local, "up", overwrite=True)
    assert report.failures == 1  # the server does not replace files
    assert (served / "up" / "d" / "f").read_bytes() == b"old content"
    host, port = await start_server(served, writable=True, allow_overwrite=True)  # type: ignore[operator]
    report, _ = await put(host, port, local, "up", overwrite=True)
    assert (report.failures, report.files) == (0, 1)
    assert (served / "up" / "d" / "f").read_bytes() == b"new"


async def test_checksum_catches_a_change_that_kept_size_and_time(
    tmp_path: Path, start_server: object
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "f").write_bytes(b"abc")
    served = tmp_path / "served"
    served.mkdir()
    host, port = await start_server(served, writable=True, allow_overwrite=True)  # type: ignore[operator]
    await put(host, port, local, "up")
    st = (local / "f").stat()
    (local / "f").write_bytes(b"xyz")
    os.utime(local / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    report, _ = await put(host, port, local, "up")
    assert report.up_to_date == 1
    report, _ = await put(host, port, local, "up", checksum=True)
    assert report.failures == 1  # differs: refused without --force
    report, _ = await put(host, port, local, "up", checksum=True, overwrite=True)
    assert report.files == 1
    assert (served / "up" / "f").read_bytes() == b"xyz"


async def test_a_read_only_server_refuses_the_tree(tmp_path: Path, start_server: object) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "f").write_bytes(b"abc")
    served = tmp_path / "served"
    served.mkdir()
    host, port = await start_server(served)  # type: ignore[operator]
    async with ftx.connect(host, port) as client:
        assert await client.put_tree(local, "up") is None
    assert list(served.iterdir()) == []


async def test_a_missing_parent_refuses_the_whole_tree(
    tmp_path: Path, start_server: object
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "f").write_bytes(b"abc")
    served = tmp_path / "served"
    served.mkdir()
    host, port = await start_server(served, writable=True)  # type: ignore[operator]
    async with ftx.connect(host, port) as client:
        with pytest.raises(FtxError, match=r"not-found|no such"):
            await client.put_tree(local, "missing/up")
        assert await client.list("") == []  # the connection is still usable


async def test_parts_left_by_uploads_cut_short_are_taken_over(
    tmp_path: Path, start_server: object
) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "a").write_bytes(b"new a")
    (local / "b").write_bytes(b"new b")
    served = tmp_path / "served"
    (served / "up").mkdir(parents=True)
    # A PUT cut short left a part and its resume record; a publish cut short between its link
    # and its unlink left a part that is the very file at the name.
    (served / "up" / "a.ftx-upload-part").write_bytes(b"half of an old a")
    (served / "up" / "a.ftx-upload-part.resume").write_text('{"version":1,"source":"x","size":9}')
    (served / "up" / "b").write_bytes(b"old b")
    os.link(served / "up" / "b", served / "up" / "b.ftx-upload-part")
    host, port = await start_server(served, writable=True, allow_overwrite=True)  # type: ignore[operator]
    report, _ = await put(host, port, local, "up", overwrite=True)
    assert (report.files, report.failures) == (2, 0)
    assert (served / "up" / "a").read_bytes() == b"new a"
    assert (served / "up" / "b").read_bytes() == b"new b"
    assert sorted(p.name for p in (served / "up").iterdir()) == ["a", "b"]


async def test_a_local_root_that_cannot_be_read_sends_nothing(
    tmp_path: Path, start_server: object
) -> None:
    (tmp_path / "file").write_bytes(b"not a directory")
    served = tmp_path / "served"
    served.mkdir()
    host, port = await start_server(served, writable=True)  # type: ignore[operator]
    async with ftx.connect(host, port) as client:
        with pytest.raises(LocalFileError):
            await client.put_tree(tmp_path / "file", "up")
        with pytest.raises(LocalFileError):
            await client.put_tree(tmp_path / "missing", "up")
        assert await client.list("") == []  # nothing was sent; the connection is usable


@pytest.mark.parametrize("extra", ["connects", "refused"])
async def test_large_files_go_side_by_side_over_extra_connections(
    tmp_path: Path, start_server: object, extra: str
) -> None:
    # Six large files (a PUT each, after the stream): with jobs=3 two more connections share
    # them. One that cannot connect leaves its share to the tree's own connection.
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    for index in range(6):
        (local / "sub" / f"big{index}.bin").write_bytes(os.urandom(300 * 1024 + index))
    (local / "small.txt").write_bytes(b"small")
    served = tmp_path / "served"
    served.mkdir()
    host, port = await start_server(served, writable=True)  # type: ignore[operator]
    opened: list[ftx.Client] = []

    async def connect() -> ftx.Client:
        if extra == "refused":
            raise ftx.ConnectionLostError("refused, as a busy server would")
        client = ftx.Client(await trio.open_tcp_stream(host, port))
        await client.handshake()
        opened.append(client)
        return client

    report, seen = recorder()
    with trio.fail_after(60):
        async with ftx.connect(host, port) as client:
            done = await client.put_tree(local, "up", report=report, jobs=3, connect=connect)
    assert done is report
    assert tree_files(served / "up") == tree_files(local)
    assert (report.files, report.failures) == (7, 0)
    assert sorted(seen["stored"]) == sorted(
        ["up/small.txt", *(f"up/sub/big{index}.bin" for index in range(6))]
    )
    assert len(opened) == (2 if extra == "connects" else 0)
    if opened:  # the extra connections did send some of the six (each PUT takes a request id)
        assert any(client._protocol._next_id > 1 for client in opened)
    assert all(client._closed for client in opened)  # send_large_files closes what it opens
    assert (report.queued, report.sending) == (0, {})
