"""`ftx put -r` as one tree stream (docs/protocol.md section 23), as a user runs it: a server
killed mid-tree and restarted, a client stopped with Ctrl-C and run again (each re-run sends
only what is missing), and a server without tree uploads (sent file by file instead)."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trio

import ftx.server._session
from cli_helpers import ftx_run
from conftest import ENV, PYTHON_M_FTX, ServerStarter, kill_mid_run, serving

FILES, DIRS = 5000, 25


def make_tree(top: Path, files: int = FILES, dirs: int = DIRS) -> dict[str, bytes]:
    made: dict[str, bytes] = {}
    for d in range(dirs):
        (top / f"d{d:02}").mkdir(parents=True)
    for i in range(files):
        relative = f"d{i % dirs:02}/f{i:05}"
        made[relative] = f"{i}\n".encode() * 20
        (top / relative).write_bytes(made[relative])
    return made


def stored(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "ftx-upload-part" not in p.name
    }


def summary(stderr: str) -> tuple[int, int]:
    """(sent, up to date) from the summary line."""
    found = re.search(
        r"(\d+) file\(s\) sent .*?(?:, (\d+) already up to date)?(?:, \d+ failed)?$", stderr, re.M
    )
    assert found, stderr
    return int(found[1]), int(found[2] or 0)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if "ftx-upload-part" in p.name]


def test_a_server_killed_mid_tree_and_restarted_gets_the_rest(
    start_ftx_server: ServerStarter, tmp_path: Path
) -> None:
    local = tmp_path / "tree"
    made = make_tree(local)
    root = tmp_path / "root"
    root.mkdir()
    first = start_ftx_server(root, "--writable")
    code, _, stderr = kill_mid_run(
        [*PYTHON_M_FTX, "put", "-r", first.address, str(local), "--retries", "5"],
        first,
        lambda: any(root.rglob("f*")),  # (the first group commit landed)
        lambda: start_ftx_server(root, "--writable", "--port", str(first.port)),
    )
    assert code == 0, stderr
    assert "retrying" in stderr
    assert stored(root / "tree") == made
    sent, up_to_date = summary(stderr)
    assert sent + up_to_date >= FILES  # (some counted on both sides of the kill)
    # The parts of files the killed server had not published were taken over by the re-run.
    assert leftovers(root) == []


def test_ctrl_c_mid_tree_then_a_rerun_sends_only_the_rest(
    start_ftx_server: ServerStarter, tmp_path: Path
) -> None:
    local = tmp_path / "tree"
    made = make_tree(local)
    root = tmp_path / "root"
    root.mkdir()
    server = start_ftx_server(root, "--writable")
    run = subprocess.Popen(
        [*PYTHON_M_FTX, "put", "-r", server.address, str(local)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=ENV,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not any(root.rglob("f*")) and time.monotonic() < deadline:
            time.sleep(0.005)
        interrupted = run.poll() is None
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    if interrupted:
        assert run.returncode in (0, 130), stderr
        assert "Traceback" not in stderr
    landed = len(stored(root / "tree"))
    again = ftx_run("put", "-r", server.address, str(local), timeout=60)
    assert again.returncode == 0, again.stderr
    sent, up_to_date = summary(again.stderr)
    assert (sent, up_to_date) == (FILES - landed, landed)
    assert stored(root / "tree") == made


async def test_a_server_without_tree_uploads_is_sent_file_by_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An older server: it accepts uploads but does not list the feature tree-put.
    monkeypatch.setattr(ftx.server._session, "TREE_PUT_FEATURE", "example.org/none")
    local = tmp_path / "tree"
    made = make_tree(local, 30, 3)
    root = tmp_path / "root"
    root.mkdir()
    with caplog.at_level("INFO", logger="ftx.access"):
        async with serving(root, writable=True) as (_, port):
            with trio.fail_after(60):
                result = await trio.run_process(
                    [*PYTHON_M_FTX, "put", "-r", f"127.0.0.1:{port}", str(local)],
                    env=ENV,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
    assert result.returncode == 0, result.stderr
    assert stored(root / "tree") == made
    ops = {r.access["op"] for r in caplog.records if hasattr(r, "access")}  # type: ignore[attr-defined]
    assert ops == {"MKDIR", "PUT"}  # (no TREE_PUT: the client never sent one)
