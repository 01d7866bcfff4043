"""Faults on the server's side (issue 5, deliverable 7), with a real server and real clients
over loopback TCP:

- the served file is truncated, appended to, overwritten in place, replaced (renamed over) or
  deleted while it is being sent: the client gets ``changed`` or a consistent copy of one
  version of the file, never a mix reported as good;
- an exception injected into one connection's handler (the file system layer raising for one
  path, or a read failing in the middle of a file) ends that connection only: a transfer in
  flight on another connection completes, and new connections are served.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

import ftx
from conftest import BigFile
from faults_helpers import LOOPBACK, MiB, Plan, Relay, sha256_of
from ftx.fs import OpenedFile, ServedRoot
from ftx.protocol import ErrorCode

BOUND = 30.0


# ------------------------------------------------------- the served file changes under us


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def append(path: Path) -> None:
    with path.open("ab") as file:
        file.write(b"appended while being sent\n" * 1000)


def overwrite(offset_fraction: float) -> Callable[[Path], None]:
    """Overwrite 4 KiB in place, keeping the size and the modification time."""

    def change(path: Path) -> None:
        stat = path.stat()
        with path.open("r+b") as file:
            file.seek(int(stat.st_size * offset_fraction))
            file.write(b"\xff" * 4096)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    return change


def replace(path: Path) -> None:
    """Rename another file over it: the server keeps the old one open."""
    stat = path.stat()
    new = path.with_name("replacement.tmp")
    new.write_bytes(b"a different file of the same size".ljust(stat.st_size, b"."))
    os.utime(new, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(new, path)


def unlink(path: Path) -> None:
    path.unlink()


# Renaming over the file or deleting it leaves the inode being sent intact, so the old copy is
# a correct result; but its link count, hence its ctime, changes, so ``changed`` is one too.
CHANGES: dict[str, tuple[Callable[[Path], None], bool]] = {
    # name: (the change, whether it writes to the inode being sent)
    "truncated": (truncate, True),
    "appended": (append, True),
    "overwritten-ahead": (overwrite(0.9), True),
    "overwritten-behind": (overwrite(0.0), True),
    "replaced-by-rename": (replace, False),
    "deleted": (unlink, False),
}


def file_digest(path: Path) -> str | None:
    return sha256_of(path) if path.exists() else None


@pytest.mark.parametrize("change", list(CHANGES))
async def test_a_file_changed_during_the_transfer_is_never_a_mix(
    change: str,
    tmp_path: Path,
    big_file: BigFile,
    start_server: Callable[..., object],
) -> None:
    mutate, in_place = CHANGES[change]
    root = tmp_path / "root"
    root.mkdir()
    served = root / "big.bin"
    if in_place:
        shutil.copyfile(big_file.path, served)  # the session's file must stay intact
    else:
        os.link(big_file.path, served)
    host, port = await start_server(root)  # type: ignore[operator]
    dest = tmp_path / "big.bin"
    changed_at: list[int] = []

    def progress(done: int, total: int) -> None:
        if done > 0 and not changed_at:
            changed_at.append(done)
            mutate(served)

    with trio.fail_after(BOUND):
        async with ftx.connect(host, port) as client:
            try:
                result = await client.get("big.bin", dest, progress=progress, durable=False)
            except ftx.RemoteError as exc:
                error: ftx.RemoteError | None = exc
            else:
                error = None
                assert result.size == big_file.size
    assert changed_at, "the file was not changed during the transfer"
    assert changed_at[0] < big_file.size // 4, "the change came too late to matter"
    # One whole version of the file, or nothing at all.
    versions = {big_file.sha256, file_digest(served)}
    if error is None:
        assert sha256_of(dest) in versions, f"{change}: a mix of versions was reported as good"
    else:
        assert error.code == ErrorCode.CHANGED, error
        assert not dest.exists()
    print(f"{change}: {'changed' if error else 'saved'}")


# ------------------------------------------------------------- exceptions in one handler


@pytest.fixture
def victim(served_root: Path) -> Path:
    """A file whose requests fail, in the tests below, inside the server."""
    path = served_root / "victim.bin"
    path.write_bytes(os.urandom(3 * 512 * 1024 + 17))
    return path


async def steady_download(
    port: int, dest: Path, going: trio.Event, finished: list[ftx.Download]
) -> None:
    def progress(done: int, total: int) -> None:
        if done >= 256 * 1024:
            going.set()

    async with ftx.connect(LOOPBACK, port) as client:
        finished.append(await client.get("medium.bin", dest, progress=progress, durable=False))


async def check_isolation(
    host: str,
    port: int,
    served_root: Path,
    tmp_path: Path,
    nursery: trio.Nursery,
    fail: Callable[[ftx.Client], Awaitable[object]],
) -> BaseException:
    """While another connection downloads (slowed down by a relay), run ``fail`` on a
    connection of its own: it must fail (its exception is returned), the other download must
    complete, verified, and the server must go on serving new connections."""
    relay = Relay(port, [Plan(rate=2 * MiB)])
    await relay.start(nursery)
    going = trio.Event()
    finished: list[ftx.Download] = []
    steady_dest = tmp_path / "steady.bin"
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as inner:
            inner.start_soon(steady_download, relay.port, steady_dest, going, finished)
            await going.wait()
            async with ftx.connect(host, port) as client:
                with pytest.raises(ftx.FtxError) as failed:
                    await fail(client)
            assert not finished, "the steady download ended before the failure: no overlap"
        assert finished, "the download on the other connection did not complete"
        assert steady_dest.read_bytes() == (served_root / "medium.bin").read_bytes()
        async with ftx.connect(host, port) as client:
            names = {entry.name for entry in await client.list("")}
            assert "small.txt" in names
            saved = await client.get("small.txt", tmp_path / "after.txt")
        assert saved.dest.read_bytes() == (served_root / "small.txt").read_bytes()
    return failed.value


async def test_an_exception_opening_one_file_ends_that_connection_only(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    served_root: Path,
    victim: Path,
    tmp_path: Path,
    start_server: Callable[..., object],
    nursery: trio.Nursery,
) -> None:
    original = ServedRoot.open_file

    def open_file(self: ServedRoot, path: str) -> OpenedFile:
        if path == victim.name:
            raise RuntimeError("injected failure")
        return original(self, path)

    monkeypatch.setattr(ServedRoot, "open_file", open_file)
    host, port = await start_server(served_root)  # type: ignore[operator]
    dest = tmp_path / "victim.bin"

    async def fail(client: ftx.Client) -> None:
        await client.get(victim.name, dest)

    with caplog.at_level(logging.ERROR, logger="ftx.server"):
        error = await check_isolation(host, port, served_root, tmp_path, nursery, fail)
    assert isinstance(error, ftx.RemoteError), error
    assert error.code == ErrorCode.INTERNAL
    assert "injected" not in error.message, "the server leaked its exception text"
    assert not dest.exists()
    logged = [record for record in caplog.records if record.exc_info]
    assert any("injected failure" in str(r.exc_info[1]) for r in logged if r.exc_info), (
        "the failure was not logged with its traceback"
    )


async def test_a_read_failing_in_the_middle_of_a_file_ends_that_connection_only(
    monkeypatch: pytest.MonkeyPatch,
    served_root: Path,
    victim: Path,
    tmp_path: Path,
    start_server: Callable[..., object],
    nursery: trio.Nursery,
) -> None:
    inode = victim.stat().st_ino
    cached, uncached = OpenedFile.read_cached_into, OpenedFile.read_into

    def broken(self: OpenedFile, offset: int) -> None:
        if self.stat.st_ino == inode and offset > 0:
            raise OSError(5, "injected I/O error")

    def read_cached_into(self: OpenedFile, buffer: memoryview, offset: int) -> int | None:
        broken(self, offset)
        return cached(self, buffer, offset)

    def read_into(self: OpenedFile, buffer: memoryview, offset: int) -> int:
        broken(self, offset)
        return uncached(self, buffer, offset)

    monkeypatch.setattr(OpenedFile, "read_cached_into", read_cached_into)
    monkeypatch.setattr(OpenedFile, "read_into", read_into)
    host, port = await start_server(served_root)  # type: ignore[operator]
    dest = tmp_path / "victim.bin"
    received: list[int] = []

    async def fail(client: ftx.Client) -> None:
        await client.get(victim.name, dest, progress=lambda done, total: received.append(done))

    error = await check_isolation(host, port, served_root, tmp_path, nursery, fail)
    assert isinstance(error, ftx.RemoteError | ftx.ConnectionLostError), error
    assert max(received) > 0, "the failure did not come in the middle of the file"
    assert not dest.exists()


async def test_an_exception_listing_one_directory_ends_that_connection_only(
    monkeypatch: pytest.MonkeyPatch,
    served_root: Path,
    tmp_path: Path,
    start_server: Callable[..., object],
    nursery: trio.Nursery,
) -> None:
    original = ServedRoot.list_directory

    def list_directory(self: ServedRoot, path: str) -> object:
        if path == "sub":
            raise ValueError("injected failure")
        return original(self, path)

    monkeypatch.setattr(ServedRoot, "list_directory", list_directory)
    host, port = await start_server(served_root)  # type: ignore[operator]

    async def fail(client: ftx.Client) -> None:
        await client.list("sub")

    error = await check_isolation(host, port, served_root, tmp_path, nursery, fail)
    assert isinstance(error, ftx.RemoteError), error
    assert error.code == ErrorCode.INTERNAL
