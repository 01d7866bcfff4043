"""Fault tests with real processes and sockets (issue 5, deliverable 7), on the loopback
interface only, every wait bounded:

- ``kill -9`` of the client in the middle of a 64 MiB download, then a re-run that resumes;
- ``kill -9`` of the server in the middle, a clear one-line error, the part kept, a restart, and
  a re-run that resumes;
- the client's disk full (``RLIMIT_FSIZE``): a clear error, nothing at DEST, an existing DEST
  untouched;
- a file the server may not read: a clear error;
- 200 idle or trickling connections and 100 real clients against a server with 256 file
  descriptors: verified files or clean refusals, never a hang, and the server still serves.

Connection cuts at chosen bytes are in test_faults_proxy.py; files changing under the server and
failures injected into one connection handler in test_faults_server.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

import ftx
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
from ftx.messages import Hello, encode_message

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


# ------------------------------------------------- idle connections, few file descriptors

IDLE_CONNECTIONS = 200
TRICKLING = 50  # of the idle ones, these send their HELLO one byte at a time
REAL_CLIENTS = 100
DESCRIPTORS = 256
CLIENT_BOUND = 30.0  # seconds: a client still waiting after this is hung

# The limits the server runs with, as ftx serve options and as ftx.serve arguments. Without the
# options (an ftx serve from before they existed), the server is made from the library instead,
# with those of the arguments ftx.serve accepts.
LIMIT_OPTIONS = {"--max-connections": "150", "--handshake-timeout": "2", "--idle-timeout": "5"}
SERVE_SCRIPT = """
import functools, inspect, json, logging, sys
import trio, ftx
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
root, wanted = sys.argv[1], json.loads(sys.argv[2])
known = inspect.signature(ftx.serve).parameters
options = {name: value for name, value in wanted.items() if name in known}
async def main():
    async with trio.open_nursery() as nursery:
        serve = functools.partial(ftx.serve, **options)
        listeners = await nursery.start(serve, root, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        print(f"options {sorted(options)} on 127.0.0.1:{port}", flush=True)
trio.run(main)
"""
LIMITS = {"max_connections": 150, "handshake_timeout": 2.0, "idle_timeout": 5.0}


async def serve_with_limits(root: Path) -> list[str]:
    usage = await run_ftx("serve", "--help")
    if all(option in usage.stdout for option in LIMIT_OPTIONS):
        return ftx_serve(root, *(part for item in LIMIT_OPTIONS.items() for part in item))
    return [sys.executable, "-c", SERVE_SCRIPT, str(root), json.dumps(LIMITS)]


def descriptor_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return preexec


async def open_idle(port: int, count: int) -> list[trio.SocketStream]:
    streams: list[trio.SocketStream] = []

    async def one() -> None:
        try:
            with trio.fail_after(10):
                streams.append(await trio.open_tcp_stream(LOOPBACK, port))
        except (OSError, trio.TooSlowError):
            pass  # refused at the door is fine too; what matters is the server's behaviour

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return streams


async def trickle(streams: list[trio.SocketStream]) -> None:
    """Send a HELLO one byte every 0.3 s on each stream, until cancelled."""
    hello = b"".join(bytes(part) for part in encode_message(Hello((1,))))
    frame = len(hello).to_bytes(4, "big") + hello
    for position in range(len(frame)):
        for stream in streams:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(frame[position : position + 1])
        await trio.sleep(0.3)


async def fetch(port: int, dest: Path, expected: str) -> str:
    """One real client: returns how it ended ("verified", or the kind of clean error)."""
    try:
        with trio.fail_after(CLIENT_BOUND):
            async with ftx.connect(LOOPBACK, port, idle_timeout=CLIENT_BOUND - 5) as client:
                await client.get("file.bin", dest, durable=False)
    except trio.TooSlowError:
        return "HUNG"
    except ftx.RemoteError as exc:
        return f"refused: {exc.code}"
    except ftx.ConnectionLostError as exc:
        return "HUNG" if "sent nothing" in str(exc) else "connection lost"
    except OSError as exc:
        return f"connection error: {errno.errorcode.get(exc.errno or 0, exc)}"
    return "verified" if sha256_of(dest) == expected else "CORRUPT"


CLEAN = {"verified", "connection lost"}
CLEAN_REFUSALS = {"busy", "shutting-down", "timeout", "internal"}


def is_clean(outcome: str) -> bool:
    if outcome in CLEAN or outcome.startswith("connection error"):
        return True
    return outcome.startswith("refused: ") and outcome.removeprefix("refused: ") in CLEAN_REFUSALS


async def canary(port: int, dest: Path, expected: str, bound: float) -> list[str]:
    """Download until one attempt verifies (retrying clean refusals), for at most ``bound`` s."""
    outcomes: list[str] = []
    with trio.move_on_after(bound):
        while True:
            dest.unlink(missing_ok=True)
            outcome = await fetch(port, dest, expected)
            outcomes.append(outcome)
            if outcome == "verified" or not is_clean(outcome):
                break
            await trio.sleep(0.25)
    return outcomes


async def test_idle_connections_and_many_clients_with_few_descriptors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    content = random.Random(256).randbytes(256 * 1024)
    (root / "file.bin").write_bytes(content)
    expected = sha256_of(root / "file.bin")
    out = tmp_path / "out"
    out.mkdir()
    command = await serve_with_limits(root)
    log = tmp_path / "server.log"
    async with server_process(command, log, descriptor_limit(DESCRIPTORS)) as server:
        idle = await open_idle(server.port, IDLE_CONNECTIONS)
        async with trio.open_nursery() as attack:
            attack.start_soon(trickle, idle[:TRICKLING])
            outcomes: list[str] = [""] * REAL_CLIENTS

            async def real(index: int) -> None:
                outcomes[index] = await fetch(server.port, out / f"{index}.bin", expected)

            async with trio.open_nursery() as clients:
                for index in range(REAL_CLIENTS):
                    clients.start_soon(real, index)
            # The attack goes on: the server must still get a download through.
            during = await canary(server.port, out / "canary-during.bin", expected, 15)
            attack.cancel_scope.cancel()
        counts = Counter(outcomes)
        print(f"{command[2:4]}: {len(idle)} idle connections; real clients: {dict(counts)}")
        print(f"canary during the attack: {during}")
        assert server.process.returncode is None, "the server died:\n" + log.read_text()
        assert not [o for o in outcomes if not is_clean(o)], (counts, log.read_text()[-3000:])
        assert during[-1:] == ["verified"], during
        for stream in idle:
            await trio.aclose_forcefully(stream)
        after = await canary(server.port, out / "canary-after.bin", expected, 10)
        assert after[-1:] == ["verified"], after
        assert server.process.returncode is None
