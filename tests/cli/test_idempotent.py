"""The same command twice succeeds twice: a destination that already holds the file (the
server's size and modification time) is up to date, exit 0, for one file as for several
(issue 16.2 and 17.8)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cli_helpers import LOCAL_FILE, OK, ftx_run, one_error_line
from conftest import SAMPLE_FILES, ServerStarter


def _served(tmp_path: Path) -> Path:
    root = tmp_path / "served"
    shutil.copytree(SAMPLE_FILES, root)
    return root


def test_get_one_file_twice(tmp_path: Path, start_ftx_server: ServerStarter) -> None:
    server = start_ftx_server(_served(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    first = ftx_run("get", server.address, "hello.txt", cwd=out)
    assert first.returncode == OK, first.stderr
    again = ftx_run("get", server.address, "/hello.txt", cwd=out)
    assert again.returncode == OK, again.stderr
    assert again.stderr == "hello.txt is up to date (the server's size and time)\n"
    as_json = ftx_run("get", "--json", server.address, "hello.txt", cwd=out)
    assert json.loads(as_json.stdout) == {
        "path": "hello.txt",
        "status": "skipped",
        "reason": "up to date",
    }
    # A different file there is not the same: refused, and left alone.
    (out / "hello.txt").write_bytes(b"mine")
    line = one_error_line(ftx_run("get", server.address, "hello.txt", cwd=out), LOCAL_FILE)
    assert "already exists (use --force to replace)" in line
    assert (out / "hello.txt").read_bytes() == b"mine"
    assert sorted(os.listdir(out)) == ["hello.txt"]


def test_get_r_twice(tmp_path: Path, start_ftx_server: ServerStarter) -> None:
    server = start_ftx_server(_served(tmp_path))
    out = tmp_path / "out"
    assert ftx_run("get", "-r", server.address, "nested", "-o", str(out)).returncode == OK
    again = ftx_run("get", "-r", server.address, "nested", "-o", str(out))
    assert again.returncode == OK, again.stderr
    assert "0 file(s) saved" in again.stderr
    assert "2 already up to date" in again.stderr


def test_put_one_file_twice(tmp_path: Path, start_ftx_server: ServerStarter) -> None:
    """Issue 17.8 and the Ctrl-C of 16.2: a single-file put whose file the server already
    stored (the client died before the final answer, or this is simply a re-run) said
    "already exists", exit 8."""
    root = tmp_path / "served"
    root.mkdir()
    server = start_ftx_server(root, "--writable")
    local = tmp_path / "report.bin"
    local.write_bytes(os.urandom(3 << 20))
    first = ftx_run("put", server.address, str(local))
    assert first.returncode == OK, first.stderr
    again = ftx_run("put", server.address, str(local))
    assert again.returncode == OK, again.stderr
    assert again.stderr == (
        f"{local} is up to date on the server, as report.bin (same size and time)\n"
    )
    as_json = ftx_run("put", "--json", server.address, str(local))
    assert as_json.returncode == OK, as_json.stderr
    assert json.loads(as_json.stdout) == {
        "path": str(local),
        "status": "skipped",
        "reason": "up to date",
    }
    # A different file under that name is not up to date: refused.
    local.write_bytes(b"changed")
    line = one_error_line(ftx_run("put", server.address, str(local)), LOCAL_FILE)
    assert "exists" in line
    assert (root / "report.bin").stat().st_size == 3 << 20


def _same_size_and_time(path: Path, content: bytes) -> None:
    """Change ``path``'s content, keeping its size and modification time."""
    st = path.stat()
    assert len(content) == st.st_size
    path.write_bytes(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_checksum_compares_content_too(tmp_path: Path, start_ftx_server: ServerStarter) -> None:
    """16.2: "(and, with --checksum, its digest)": size and time alone can be fooled."""
    server = start_ftx_server(_served(tmp_path))
    out = tmp_path / "out"
    out.mkdir()
    assert ftx_run("get", server.address, "hello.txt", cwd=out).returncode == OK
    assert ftx_run("get", "-r", server.address, "nested", "-o", "tree", cwd=out).returncode == OK
    same = ftx_run("get", "-c", "-v", server.address, "hello.txt", cwd=out)
    assert same.returncode == OK, same.stderr
    assert "digest matches the server's" in same.stderr
    assert same.stderr.endswith("hello.txt is up to date (the server's size and time)\n")
    hello = (out / "hello.txt").read_bytes()
    _same_size_and_time(out / "hello.txt", hello.swapcase())
    assert ftx_run("get", server.address, "hello.txt", cwd=out).returncode == OK  # fooled
    line = one_error_line(ftx_run("get", "--checksum", server.address, "hello.txt", cwd=out), 8)
    assert "already exists" in line
    fixed = ftx_run("get", "--checksum", "-f", server.address, "hello.txt", cwd=out)
    assert fixed.returncode == OK, fixed.stderr
    assert (out / "hello.txt").read_bytes() == hello
    # Several files (-r): the same rule.
    notes = out / "tree" / "nested" / "notes.md"
    _same_size_and_time(notes, notes.read_bytes().swapcase())
    tree = ftx_run("get", "-r", "-c", server.address, "nested", "-o", "tree", cwd=out)
    assert tree.returncode == LOCAL_FILE, tree.stderr
    assert "notes.md" in tree.stderr
    assert "1 already up to date, 1 failed" in tree.stderr


def test_put_checksum(tmp_path: Path, start_ftx_server: ServerStarter) -> None:
    root = tmp_path / "served"
    root.mkdir()
    server = start_ftx_server(root, "--writable")
    local = tmp_path / "a.txt"
    local.write_bytes(b"abc\n" * 100)
    assert ftx_run("put", server.address, str(local)).returncode == OK
    assert ftx_run("put", "--checksum", server.address, str(local)).returncode == OK
    _same_size_and_time(root / "a.txt", b"xyz\n" * 100)
    assert ftx_run("put", server.address, str(local)).returncode == OK  # fooled
    line = one_error_line(ftx_run("put", "-c", server.address, str(local)), LOCAL_FILE)
    assert "exists" in line
