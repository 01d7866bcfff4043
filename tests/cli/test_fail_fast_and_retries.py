"""Mistakes fail at once; what is worth waiting for is retried, by every command (issue 16.1,
issue 17.6, 17.7 and 17.10). Servers here really refuse (``--max-connections 1`` and a held
connection), really stop (SIGTERM with ``--grace``) and really restart on the same port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cli_helpers import NETWORK, OK, free_port, ftx_run, held_connection, one_error_line
from conftest import ENV, PYTHON_M_FTX, BigFile, ServerProcess, ServerStarter

FAST = ["--retry-delay", "0.2"]


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["get", "no-such-host.invalid", "hello.txt"], id="get-unknown-host"),
        pytest.param(["get", "-r", "no-such-host.invalid", "/"], id="get-r-unknown-host"),
        pytest.param(["ls", "no-such-host.invalid"], id="ls-unknown-host"),
        pytest.param(["put", "no-such-host.invalid", "f.txt"], id="put-unknown-host"),
        pytest.param(["get", "127.0.0.1:{port}", "hello.txt"], id="get-refused"),
        pytest.param(["put", "127.0.0.1:{port}", "f.txt"], id="put-refused"),
    ],
)
def test_a_mistake_fails_at_once_in_one_line(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "f.txt").write_bytes(b"to send\n")
    port = str(free_port())
    args = [part.replace("{port}", port) for part in command]
    started = time.monotonic()
    result = ftx_run(*args, "--retries", "5", cwd=tmp_path)
    elapsed = time.monotonic() - started
    line = one_error_line(result, NETWORK)
    assert "unknown host" in line or "connection refused" in line
    assert "retrying" not in result.stderr
    assert elapsed < 5, elapsed  # was 1 + 2 + 4 + ... seconds of back-off
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]


def _served(tmp_path: Path, *files: str) -> Path:
    root = tmp_path / "served"
    (root / "up").mkdir(parents=True)
    for name in files:
        (root / name).write_bytes(name.encode() * 100)
    return root


def _release_later(held: object, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, held.close)  # type: ignore[attr-defined]
    timer.start()
    return timer


def test_put_retries_a_busy_server(tmp_path: Path, start_ftx_server: ServerStarter) -> None:
    """Issue 17.6: `put --retries` used to exit 9 at once on `busy`."""
    server = start_ftx_server(_served(tmp_path), "--writable", "--max-connections", "1")
    local = tmp_path / "f.txt"
    local.write_bytes(b"uploaded once the server has room\n" * 100)
    with held_connection(server.port) as held:
        timer = _release_later(held, 1.0)
        result = ftx_run("put", server.address, str(local), "--to", "up", "--retries", "8", *FAST)
        timer.join()
    assert result.returncode == OK, result.stderr
    assert re.search(r"\[busy\]; retrying in \d+\.\d s \(1 of 8\)", result.stderr)
    assert (tmp_path / "served" / "up" / "f.txt").read_bytes() == local.read_bytes()


def test_ls_retries_a_busy_server_and_one_that_restarts(
    tmp_path: Path, start_ftx_server: ServerStarter
) -> None:
    """Issue 17.10: `ls` had no --retries. Here it is refused as busy, then the server stops
    (SIGTERM) and starts again on the same port: it keeps trying, and lists."""
    root = _served(tmp_path, "a.txt", "b.txt")
    port = str(free_port())
    first = start_ftx_server(root, "--port", port, "--max-connections", "1", "--grace", "0.5")
    with held_connection(first.port):
        ls = subprocess.Popen(
            [*PYTHON_M_FTX, "ls", first.address, "--retries", "20", *FAST],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=ENV,
            text=True,
        )
        try:
            assert ls.stderr is not None
            refused = ls.stderr.readline()  # refused as busy once, and waiting to try again
            assert "[busy]; retrying" in refused, refused
            first.process.send_signal(signal.SIGTERM)
            first.process.wait(timeout=10)
            start_ftx_server(root, "--port", port)
            stdout, stderr = ls.communicate(timeout=30)
        finally:
            if ls.poll() is None:
                ls.kill()
                ls.wait()
    assert ls.returncode == OK, stderr
    assert stdout.splitlines() == ["a.txt", "b.txt", "up/"]
    assert "Traceback" not in stderr


def _tree(tmp_path: Path, big_file: BigFile, directories: int) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    os.link(big_file.path, root / "big.bin")
    for index in range(directories):
        sub = root / f"d{index:03d}"
        sub.mkdir()
        (sub / "f.txt").write_bytes(f"{index}\n".encode())
    return root


def test_get_r_survives_a_graceful_stop_and_a_restart(
    tmp_path: Path, big_file: BigFile, start_ftx_server: ServerStarter
) -> None:
    """Issue 17.7: a listing refused by a graceful stop (SIGTERM, --grace) was reported as a
    failed file ("1 failed ... [shutting-down]", exit 9) even once every file was saved."""
    directories = 300
    root = _tree(tmp_path, big_file, directories)
    port = str(free_port())
    first: ServerProcess = start_ftx_server(root, "--port", port, "--grace", "1", "-q")
    out = tmp_path / "out"
    get = subprocess.Popen(
        [*PYTHON_M_FTX, "get", "-r", first.address, "/", "-o", str(out), "--retries", "10", *FAST],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=ENV,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and get.poll() is None:
            if out.is_dir() and len(os.listdir(out)) >= 20:  # listing under way
                break
            time.sleep(0.01)
        first.process.send_signal(signal.SIGTERM)
        first.process.wait(timeout=15)
        start_ftx_server(root, "--port", port, "-q")
        _, stderr = get.communicate(timeout=60)
    finally:
        if get.poll() is None:
            get.kill()
            get.wait()
    assert get.returncode == OK, stderr
    assert "failed" not in stderr
    assert "Traceback" not in stderr
    assert (out / "big.bin").stat().st_size == big_file.size
    for index in range(directories):
        assert (out / f"d{index:03d}" / "f.txt").read_bytes() == f"{index}\n".encode()
    assert not list(out.rglob("*.part"))
