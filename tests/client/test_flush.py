"""The final flush of a batch of downloads (ftx.client._flush.sync_file_systems): syncfs once per
file
system that received files, not a sync of the whole machine; errors reported."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest
import trio

import ftx
import ftx.client._flush
from ftx.client._tree import download
from ftx.errors import LocalFileError


class SyncfsSpy:
    """Stands in for the C library's syncfs: records the device of each call."""

    def __init__(self, result: int = 0, error: int = 0) -> None:
        self.devices: list[int] = []
        self._result = result
        self._error = error

    def __call__(self, fd: int) -> int:
        self.devices.append(os.fstat(fd).st_dev)
        if self._error:
            ctypes.set_errno(self._error)
        return self._result


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SyncfsSpy:
    spy = SyncfsSpy()
    monkeypatch.setattr(ftx.client._flush, "_syncfs", lambda: spy)
    monkeypatch.setattr(os, "sync", lambda: pytest.fail("os.sync() flushes the whole machine"))
    return spy


def test_syncfs_is_there_on_linux() -> None:
    if os.uname().sysname != "Linux":
        pytest.skip("syncfs(2) is Linux's")
    assert ftx.client._flush._syncfs() is not None


def test_one_syncfs_per_file_system(tmp_path: Path, spy: SyncfsSpy) -> None:
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    for directory in dirs:
        directory.mkdir()
    others = [path for path in ("/dev/shm", "/proc") if os.path.isdir(path)]
    ftx.client._flush.sync_file_systems([*dirs, tmp_path / "gone", *others, *dirs])
    expected = {os.stat(tmp_path).st_dev} | {os.stat(path).st_dev for path in others}
    assert sorted(spy.devices) == sorted(expected)  # each once, the missing one skipped


def test_a_failed_flush_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ftx.client._flush, "_syncfs", lambda: SyncfsSpy(result=-1, error=errno.EIO))
    with pytest.raises(LocalFileError, match=r"cannot flush .* to disk: Input/output error"):
        ftx.client._flush.sync_file_systems([tmp_path])


def test_without_syncfs_everything_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(ftx.client._flush, "_syncfs", lambda: None)
    monkeypatch.setattr(os, "sync", lambda: calls.append("sync"))
    ftx.client._flush.sync_file_systems([tmp_path])
    assert calls == ["sync"]


async def test_get_many_and_get_r_flush_the_file_systems_they_wrote_to(
    tmp_path: Path, start_server: object, spy: SyncfsSpy
) -> None:
    served, dest = tmp_path / "served", tmp_path / "dest"
    (served / "d").mkdir(parents=True)
    (served / "d" / "f.txt").write_bytes(b"f")
    (dest / "x").mkdir(parents=True)
    host, port = await start_server(served)  # type: ignore[operator]
    with trio.fail_after(30):
        async with ftx.connect(host, port) as client:
            results = await client.get_many([("d/f.txt", dest / "x" / "f.txt")])
            assert isinstance(results[0], ftx.Download)
            assert spy.devices == [os.stat(dest).st_dev]
            spy.devices.clear()
            assert await client.get_many([("d/f.txt", os.devnull)]) != []
            assert spy.devices == []  # nothing saved: nothing to flush

        def connect():  # type: ignore[no-untyped-def]
            return ftx.connect(host, port)

        spy.devices.clear()
        await download(connect, ["d"], dest, recursive=True)
    assert (dest / "d" / "f.txt").read_bytes() == b"f"
    assert spy.devices == [os.stat(dest).st_dev]
