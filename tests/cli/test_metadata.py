"""Metadata: modification times always, permission bits with --preserve, ls --json."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import trio

import ftx
from conftest import PYTHON_M_FTX, ServerStarter


async def test_mode_is_kept_only_when_asked(tmp_path: Path, start_server: object) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "tool.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(served / "tool.sh", 0o4750)  # set-user-ID must never be copied
    os.utime(served / "tool.sh", ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    host, port = await start_server(served)  # type: ignore[operator]
    with trio.fail_after(30):
        async with ftx.connect(host, port) as client:
            await client.get("tool.sh", tmp_path / "plain.sh")
            await client.get("tool.sh", tmp_path / "kept.sh", preserve_mode=True)
    assert (tmp_path / "kept.sh").stat().st_mode & 0o7777 == 0o750
    assert (tmp_path / "plain.sh").stat().st_mode & 0o111 == 0, "defaults without --preserve"
    for name in ("plain.sh", "kept.sh"):
        assert (tmp_path / name).stat().st_mtime_ns == 1_600_000_000_123_456_789


def test_ls_json_and_get_json(tmp_path: Path, start_ftx_server: ServerStarter) -> None:
    served = tmp_path / "served"
    (served / "sub").mkdir(parents=True)
    (served / "a.txt").write_bytes(b"abc")
    address = start_ftx_server(served).address
    listing = subprocess.run(
        [*PYTHON_M_FTX, "ls", address, "--json"], capture_output=True, text=True, timeout=30
    )
    assert listing.returncode == 0, listing.stderr
    entries = json.loads(listing.stdout)
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [
        ("a.txt", "file", 3),
        ("sub", "dir", 0),
    ]
    got = subprocess.run(
        [*PYTHON_M_FTX, "get", address, "a.txt", "-o", str(tmp_path / "a.txt"), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert got.returncode == 0, got.stderr
    record = json.loads(got.stdout)
    assert record["status"] == "saved"
    assert record["size"] == 3
    assert record["digest_algorithm"] == "xxh3-128"
    assert (tmp_path / "a.txt").read_bytes() == b"abc"
