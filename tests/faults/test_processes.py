"""Fault tests with real processes and sockets (issue 5, deliverable 7), on the loopback
interface only, every wait bounded:

- ``kill -9`` of the client in the middle of a 64 MiB download, then a re-run that resumes;
- ``kill -9`` of the server in the middle, a clear one-line error, the part kept, a restart, and
  a re-run that resumes;
- the client's disk full (``RLIMIT_FSIZE``): a clear error, nothing at DEST, an existing DEST
  untouched;
- a file the server may not read: a clear error.

Connection cuts at chosen bytes are in test_faults_proxy.py; files changing under the server and
failures injected into one connection handler in test_faults_server.py; idle connections and many
clients against a server short of file descriptors in test_faults_load.py.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from conftest import BigFile
from faults_helpers import (
    ENV,
    LOCAL_FILE,
    LOOPBACK,
    NETWORK,
    OK,
    PERMISSION,
    PYTHON_M_FTX,
    Finished,
    MiB,
    Plan,
    Relay,
    ftx_serve,
    run_ftx,
    server_process,
    sha256_of,
    stop_process,
    wait_for_size,
)

# Slow enough that "the middle of the download" lasts seconds, not milliseconds.
THROTTLE = 16 * MiB
# Wait for this much in DEST.part before killing.
KILL_AFTER = 4 * MiB
# Protocol overhead of a resumed download: handshake, FILE, END and DATA headers (a few KiB).
OVERHEAD = 64 * 1024


def served_big_file(tmp_path: Path, big_file: BigFile) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    try:
        os.link(big_file.path, root / "big.bin")
    except OSError:
        shutil.copyfile(big_file.path, root / "big.bin")
    return root


async def start_get(
    port: int, dest: Path, stderr_path: Path, *extra: str
) -> tuple[trio.Process, Path]:
    """Start ``ftx get`` of big.bin in the background."""
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [*PYTHON_M_FTX, "get", f"{LOOPBACK}:{port}", "big.bin", "-o", str(dest), *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=ENV,
        )
    return process, stderr_path


# ------------------------------------------------------------------------------ kill -9


async def test_client_killed_mid_download_resumes(
    tmp_path: Path, big_file: BigFile, nursery: trio.Nursery
) -> None:
    root = served_big_file(tmp_path, big_file)
    out = tmp_path / "out"
    out.mkdir()
    dest, part = out / "big.bin", out / "big.bin.part"
    record = out / "big.bin.part.resume"
    async with server_process(ftx_serve(root), tmp_path / "server.log") as server:
        # The first connection is slowed down so that the kill lands in the middle; the re-run
        # goes through the same relay at full speed, which counts the bytes it carries.
        relay = Relay(server.port, [Plan(rate=THROTTLE), Plan()])
        await relay.start(nursery)
        client, _ = await start_get(relay.port, dest, tmp_path / "client.err", "--retries", "0")
        try:
            await wait_for_size(part, KILL_AFTER, client)
            client.kill()
            with trio.fail_after(10):
                await client.wait()
        finally:
            await stop_process(client)
        assert client.returncode == -signal.SIGKILL
        assert not dest.exists(), "a killed download left a file at DEST"
        held = part.stat().st_size
        assert KILL_AFTER <= held < big_file.size
        assert record.exists(), "no resume record beside the part"

        again = await run_ftx(
            "get", f"{LOOPBACK}:{relay.port}", "big.bin", "-o", str(dest), "--json", "-q"
        )
        assert again.returncode == OK, again.stderr
        report = json.loads(again.stdout)
        assert report["status"] == "saved"
        assert report["size"] == big_file.size
    assert sha256_of(dest) == big_file.sha256
    assert not part.exists()
    assert not record.exists()
    resumed = relay.hops[1]
    assert resumed.down <= big_file.size - held + OVERHEAD, (
        f"the re-run carried {resumed.down} bytes: it did not resume from the {held} held"
    )


async def test_client_killed_mid_upload_is_logged_lost_and_resumes(
    tmp_path: Path, big_file: BigFile, nursery: trio.Nursery
) -> None:
    # Issue 17, item 9: `ftx put` killed in the middle of a DATA frame (the relay keeps it
    # blocked in one: the upload direction is slowed) was logged `internal`; it is `lost`, and
    # the part is kept for the next run.
    root = tmp_path / "root"
    root.mkdir()
    part = root / "big.bin.ftx-upload-part"
    log = tmp_path / "server.log"
    async with server_process(ftx_serve(root, "--writable"), log) as server:
        relay = Relay(server.port, [Plan(up_rate=THROTTLE)])
        await relay.start(nursery)
        with (tmp_path / "client.err").open("wb") as stderr:
            client = await trio.lowlevel.open_process(
                [*PYTHON_M_FTX, "put", f"{LOOPBACK}:{relay.port}", str(big_file.path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=ENV,
            )
        try:
            await wait_for_size(part, KILL_AFTER, client)
            client.kill()
            with trio.fail_after(10):
                await client.wait()
        finally:
            await stop_process(client)
        with trio.fail_after(10):
            while " PUT " not in log.read_text():  # noqa: ASYNC110 - bounded poll of a file
                await trio.sleep(0.02)
        (line,) = [line for line in log.read_text().splitlines() if " PUT " in line]
        assert line.endswith(": lost"), line
        assert "internal" not in log.read_text()
        assert "connection lost" in log.read_text()
        held = part.stat().st_size
        assert KILL_AFTER <= held < big_file.size

        again = await run_ftx("put", server.address, str(big_file.path), "-q")
        assert again.returncode == OK, again.stderr
    assert sha256_of(root / "big.bin") == big_file.sha256
    assert not part.exists()


async def test_server_killed_mid_download_fails_cleanly_and_resumes_after_restart(
    tmp_path: Path, big_file: BigFile, nursery: trio.Nursery
) -> None:
    root = served_big_file(tmp_path, big_file)
    out = tmp_path / "out"
    out.mkdir()
    dest, part = out / "big.bin", out / "big.bin.part"
    async with server_process(ftx_serve(root), tmp_path / "server-1.log") as server:
        relay = Relay(server.port, [Plan(rate=THROTTLE)])
        await relay.start(nursery)
        client, stderr = await start_get(
            relay.port, dest, tmp_path / "client.err", "--retries", "0", "--timeout", "20"
        )
        try:
            await wait_for_size(part, KILL_AFTER, client)
            server.process.kill()
            with trio.fail_after(25):
                await client.wait()
        finally:
            await stop_process(client)
    assert client.returncode is not None
    result = Finished(client.returncode, "", stderr.read_text(errors="replace"))
    line = result.one_line_error(NETWORK)
    assert "closed" in line or "broke" in line, line
    assert not dest.exists()
    held = part.stat().st_size
    assert KILL_AFTER <= held < big_file.size, "the part was not kept"
    assert (out / "big.bin.part.resume").exists()

    async with server_process(ftx_serve(root), tmp_path / "server-2.log") as restarted:
        relay = Relay(restarted.port)
        await relay.start(nursery)
        again = await run_ftx("get", f"{LOOPBACK}:{relay.port}", "big.bin", "-o", str(dest), "-q")
        assert again.returncode == OK, again.stderr
    assert sha256_of(dest) == big_file.sha256
    assert not part.exists()
    assert relay.hops[0].down <= big_file.size - held + OVERHEAD, "no resume after the restart"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


async def test_get_with_retries_survives_a_server_restart(
    tmp_path: Path, big_file: BigFile, nursery: trio.Nursery
) -> None:
    """The server is killed in the middle and started again on the same port: ``ftx get`` (with
    its default retries) reconnects by itself, resumes, and saves the right file."""
    root = served_big_file(tmp_path, big_file)
    out = tmp_path / "out"
    out.mkdir()
    dest, part = out / "big.bin", out / "big.bin.part"
    port = free_port()
    serve = ftx_serve(root)
    serve[serve.index("--port") + 1] = str(port)
    relay = Relay(port, [Plan(rate=THROTTLE), Plan()])
    await relay.start(nursery)
    async with server_process(serve, tmp_path / "server-1.log") as server:
        client, stderr = await start_get(relay.port, dest, tmp_path / "client.err")
        try:
            await wait_for_size(part, KILL_AFTER, client)
            server.process.kill()
            with trio.fail_after(10):
                await server.process.wait()
        except BaseException:
            await stop_process(client)
            raise
    try:
        async with server_process(serve, tmp_path / "server-2.log"):
            with trio.fail_after(30):
                await client.wait()
    finally:
        await stop_process(client)
    log = stderr.read_text(errors="replace")
    assert client.returncode == OK, log
    assert "retrying" in log, log
    assert "Traceback" not in log
    assert sha256_of(dest) == big_file.sha256
    assert not part.exists()
    resumed = [hop for hop in relay.hops[1:] if hop.down]
    assert len(resumed) == 1, relay.hops
    assert resumed[0].down < big_file.size - KILL_AFTER + OVERHEAD, "the retry did not resume"


# ----------------------------------------------------------------------------- disk full


def file_size_limit(limit: int) -> Callable[[], None]:
    """A preexec_fn: files may not grow past ``limit`` bytes, and write() fails with EFBIG
    (SIGXFSZ ignored) instead of the process being killed."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


async def test_disk_full_is_a_clear_error_and_nothing_reaches_dest(
    tmp_path: Path, served_root: Path, start_server: Callable[..., object], big_file: BigFile
) -> None:
    host, port = await start_server(served_root)  # type: ignore[operator]
    dest = tmp_path / "big.bin"
    full = await run_ftx(
        "get", f"{host}:{port}", "big.bin", "-o", str(dest), preexec_fn=file_size_limit(8 * MiB)
    )
    line = full.one_line_error(LOCAL_FILE)
    assert os.strerror(errno.EFBIG) in line, line
    assert not dest.exists()
    # What was written is a sound prefix: once there is room again, the download resumes.
    part = tmp_path / "big.bin.part"
    assert part.stat().st_size <= 8 * MiB
    again = await run_ftx("get", f"{host}:{port}", "big.bin", "-o", str(dest), "-q")
    assert again.returncode == OK, again.stderr
    assert sha256_of(dest) == big_file.sha256


async def test_disk_full_leaves_an_existing_dest_untouched(
    tmp_path: Path, served_root: Path, start_server: Callable[..., object]
) -> None:
    host, port = await start_server(served_root)  # type: ignore[operator]
    dest = tmp_path / "big.bin"
    dest.write_bytes(b"the precious old copy\n")
    before = dest.stat()
    full = await run_ftx(
        "get",
        f"{host}:{port}",
        "big.bin",
        "-o",
        str(dest),
        "-f",
        preexec_fn=file_size_limit(2 * MiB),
    )
    full.one_line_error(LOCAL_FILE)
    assert dest.read_bytes() == b"the precious old copy\n"
    after = dest.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


# --------------------------------------------------------------------- permission denied


_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_PR_CAPBSET_DROP = 24


def _without_file_privileges() -> Callable[[], None] | None:
    """A preexec_fn that makes a root server subject to file permissions, or ``None`` when the
    tests do not run as root (permissions apply anyway).

    Dropping to uid 65534 is not possible here in general: the interpreter may live under a
    directory only root can enter (/root/.pyenv). Dropping CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH from the bounding set has the same effect on file access.
    """
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
            if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return preexec


async def test_a_file_the_server_may_not_read_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "public.txt").write_bytes(b"anyone may read this\n")
    secret = root / "secret.bin"
    secret.write_bytes(b"nobody may read this\n")
    secret.chmod(0)
    locked = root / "locked"
    locked.mkdir()
    (locked / "inside.txt").write_bytes(b"behind a locked door\n")
    locked.chmod(0)
    out = tmp_path / "out"
    out.mkdir()
    try:
        preexec = _without_file_privileges()
        try:
            server = server_process(ftx_serve(root), tmp_path / "server.log", preexec)
            async with server as running:
                probe = await run_ftx("get", running.address, "secret.bin", "-o", str(out / "p"))
                if probe.returncode == OK:
                    pytest.skip("cannot take file privileges away from the server here")
                line = probe.one_line_error(PERMISSION)
                assert "permission-denied" in line, line
                assert not (out / "p").exists()
                assert not (out / "p.part").exists()
                inside = await run_ftx("get", running.address, "locked/inside.txt", "-o", str(out))
                inside.one_line_error(PERMISSION)
                listing = await run_ftx("ls", running.address, "locked")
                listing.one_line_error(PERMISSION)
                # The server goes on serving what it may read.
                fine = await run_ftx("get", running.address, "public.txt", "-o", str(out), "-q")
                assert fine.returncode == OK, fine.stderr
                assert (out / "public.txt").read_bytes() == b"anyone may read this\n"
                assert running.process.returncode is None
        except subprocess.SubprocessError as exc:  # the preexec_fn failed
            pytest.skip(f"cannot drop file privileges for the server: {exc}")
    finally:
        locked.chmod(0o755)
        secret.chmod(0o644)
