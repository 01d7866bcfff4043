"""``--limit-rate`` on get, put and serve: curl's syntax, refused below the lowest rate, and a
limited transfer that still arrives whole (issue 15.6)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cli_helpers import OK, USAGE, ftx_run
from conftest import ServerStarter


@pytest.mark.parametrize("command", ["get", "put", "serve"])
@pytest.mark.parametrize(
    ("rate", "why"), [("10K", "below the lowest rate"), ("fast", "not a rate")]
)
def test_a_bad_rate_is_a_usage_error(command: str, rate: str, why: str) -> None:
    args = {"get": ["127.0.0.1:1", "x"], "put": ["127.0.0.1:1", "x"], "serve": ["."]}[command]
    result = ftx_run(command, "--limit-rate", rate, *args)
    assert result.returncode == USAGE
    assert why in result.stderr
    assert "Traceback" not in result.stderr


def test_limited_get_and_put_through_a_limited_server(
    tmp_path: Path, start_ftx_server: ServerStarter
) -> None:
    root = tmp_path / "served"
    root.mkdir()
    data = os.urandom(600_000)
    (root / "f.bin").write_bytes(data)
    server = start_ftx_server(root, "--writable", "--limit-rate", "2M")
    started = time.monotonic()
    got = ftx_run("get", "-q", "--limit-rate", "500K", server.address, "f.bin", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert got.returncode == OK, got.stderr
    assert (tmp_path / "f.bin").read_bytes() == data
    assert elapsed >= (600_000 - 300_000) / (500 * 1024)  # socket buffers may hold some ahead
    (tmp_path / "up.bin").write_bytes(data[::-1])
    put = ftx_run("put", "-q", "--limit-rate", "1.5MiB/s", server.address, "up.bin", cwd=tmp_path)
    assert put.returncode == OK, put.stderr
    assert (root / "up.bin").read_bytes() == data[::-1]
