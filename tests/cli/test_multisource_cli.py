"""``ftx get --from HOST1,HOST2 PATH`` and ``--segments N`` (issue 15, item 5), as the real
program, against real server processes: the file saved and verified, a replica holding other
content named on stderr in one escaped line, a replica that cannot be reached left out, an old
server's fallback said, and the usage mistakes."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import NETWORK, OK, USAGE, free_port, one_error_line
from cli_helpers import ftx_run as ftx_cli
from conftest import ServerStarter
from ftx.protocol import BASE_BLOCK_SIZE

SIZE = 2 * BASE_BLOCK_SIZE + 777


@pytest.fixture(scope="module")
def content() -> bytes:
    return random.Random(5).randbytes(SIZE)


def roots(tmp_path: Path, content: bytes, count: int) -> list[Path]:
    made = []
    for index in range(count):
        root = tmp_path / f"r{index}"
        root.mkdir()
        made.append(root)
    (made[0] / "f.bin").write_bytes(content)
    for root in made[1:]:
        shutil.copy2(made[0] / "f.bin", root / "f.bin")
    return made


def test_get_from_two_servers(start_ftx_server: ServerStarter, tmp_path, content) -> None:
    servers = [
        start_ftx_server(root, "--identity", "portable") for root in roots(tmp_path, content, 2)
    ]
    dest = tmp_path / "out.bin"
    result = ftx_cli(
        "get", "--from", ",".join(s.address for s in servers), "f.bin", "-o", str(dest)
    )
    assert result.returncode == OK, result.stderr
    assert dest.read_bytes() == content
    assert "saved" in result.stderr
    assert "dropped" not in result.stderr


def test_segments_to_one_server(start_ftx_server: ServerStarter, tmp_path, content) -> None:
    (root,) = roots(tmp_path, content, 1)
    server = start_ftx_server(root)
    dest = tmp_path / "out.bin"
    result = ftx_cli("get", server.address, "f.bin", "--segments", "3", "-o", str(dest))
    assert result.returncode == OK, result.stderr
    assert dest.read_bytes() == content


def test_a_bad_replica_is_named_in_one_line(
    start_ftx_server: ServerStarter, tmp_path, content
) -> None:
    made = roots(tmp_path, content, 3)
    bad = bytearray(content)
    bad[BASE_BLOCK_SIZE + 1] ^= 0x55
    mtime = (made[2] / "f.bin").stat().st_mtime_ns
    (made[2] / "f.bin").write_bytes(bad)
    os.utime(made[2] / "f.bin", ns=(mtime, mtime))
    servers = [start_ftx_server(root, "--identity", "portable") for root in made]
    dest = tmp_path / "out.bin"
    sources = ",".join(s.address for s in servers)
    result = ftx_cli("get", "--from", sources, "f.bin", "-o", str(dest), "-q")
    assert result.returncode == OK, result.stderr
    assert dest.read_bytes() == content
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"ftx: dropped source {servers[2].address}: its copy differs from the others' "
        "(1 of 3 blocks differ)"
    ]


def test_a_source_that_cannot_be_reached_is_left_out(
    start_ftx_server: ServerStarter, tmp_path, content
) -> None:
    (root,) = roots(tmp_path, content, 1)
    server = start_ftx_server(root)
    dest = tmp_path / "out.bin"
    result = ftx_cli("get", "--from", f"127.0.0.1:1,{server.address}", "f.bin", "-o", str(dest))
    assert result.returncode == OK, result.stderr
    assert dest.read_bytes() == content
    assert "dropped source 127.0.0.1:1: cannot connect" in result.stderr


def test_no_source_reachable_is_a_network_error(tmp_path) -> None:
    result = ftx_cli("get", "--from", "127.0.0.1:1,127.0.0.1:2", "f.bin", "-o", str(tmp_path / "o"))
    assert result.returncode == NETWORK
    # A mistake fails at once, as for one server: no retries, one line naming both sources.
    line = one_error_line(result, NETWORK)
    assert "no source could be reached" in line
    assert "127.0.0.1:1" in line
    assert "127.0.0.1:2" in line
    assert "retrying" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "127.0.0.1:1", "a", "b"], "--from fetches one file"),
        (["--from", "127.0.0.1:1", "-r", "a"], "--from fetches one file"),
        (["--from", "127.0.0.1:1", "a", "-o", "-"], "-o - is not supported"),
        (["--from", "127.0.0.1:1,127.0.0.1:1", "a"], "named twice"),
        (["--from", ",", "a"], "expected HOST"),
        (["127.0.0.1:1", "a", "b", "--segments", "2"], "--segments fetches one file"),
        (["127.0.0.1:1", "a", "--segments", "0"], "at least 1"),
        (["127.0.0.1:1"], "required: PATH"),
        (["127.0.0.1:x", "a"], "argument HOST[:PORT]"),
    ],
)
def test_usage_mistakes(args: list[str], message: str) -> None:
    result = ftx_cli("get", *args)
    assert result.returncode == USAGE
    assert message in result.stderr


def test_an_old_server_falls_back_to_one_source(tmp_path, content) -> None:
    # A server without the feature 'ranges' (the feature renamed in a server started from a
    # tiny wrapper): the file comes from the first source alone, and stderr says so.
    (root,) = roots(tmp_path, content, 1)
    script = tmp_path / "old_server.py"
    script.write_text(
        "import sys\n"
        "from ftx.server import _session\n"
        "_session.RANGES_FEATURE = 'not-ranges'\n"
        "from ftx.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "serve",
            str(root),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # bounded: until the server listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        dest = tmp_path / "out.bin"
        result = ftx_cli("get", "--from", f"127.0.0.1:{port}", "f.bin", "-o", str(dest))
        assert result.returncode == OK, result.stderr
        assert dest.read_bytes() == content
        assert "no source offers ranged downloads: fetching from 127.0.0.1" in result.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_error_line_of_a_missing_file(
    start_ftx_server: ServerStarter, tmp_path, content
) -> None:
    (root,) = roots(tmp_path, content, 1)
    server = start_ftx_server(root)
    result = ftx_cli("get", "--from", server.address, "missing.bin", "-o", str(tmp_path / "o"))
    line = one_error_line(result, 4)
    assert "missing.bin" in line
