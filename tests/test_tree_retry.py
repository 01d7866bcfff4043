"""``ftx get -r`` after a lost connection: it runs again by itself (``--retries``), and the files
saved before are up to date, the interrupted ones resume."""

from __future__ import annotations

import random
import re
import subprocess
import time
from pathlib import Path

from conftest import ENV, PYTHON_M_FTX, ServerStarter

FILES = 200


def make_tree(root: Path) -> dict[str, bytes]:
    contents = {}
    for d in range(4):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(FILES // 4):
            data = random.Random(d * 1000 + f).randbytes(512 * 1024)
            (root / f"d{d}" / f"f{f}.bin").write_bytes(data)
            contents[f"d{d}/f{f}.bin"] = data
    return contents


def get_r(address: str, dest: Path, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*PYTHON_M_FTX, "get", "-r", address, "d0", "d1", "d2", "d3", "-o", str(dest), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=ENV,
        text=True,
    )


def saved_files(dest: Path) -> int:
    return sum(1 for path in dest.rglob("f*.bin"))


def test_get_r_survives_a_killed_server(start_ftx_server: ServerStarter, tmp_path: Path) -> None:
    served, dest = tmp_path / "served", tmp_path / "dest"
    contents = make_tree(served)
    dest.mkdir()
    first = start_ftx_server(served)
    get = get_r(first.address, dest, "-j", "4", "--retries", "5")
    try:
        deadline = time.monotonic() + 20
        while saved_files(dest) < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert get.poll() is None, "the download ended before the server could be killed"
        first.process.kill()  # SIGKILL: connections cut mid-file
        first.process.wait(timeout=10)
        start_ftx_server(served, "--port", str(first.port))
        _, stderr = get.communicate(timeout=60)
    finally:
        if get.poll() is None:
            get.kill()
            get.wait()
    assert get.returncode == 0, stderr
    assert "retrying" in stderr
    summary = re.search(r"^(\d+) file\(s\) saved .*?(?:, (\d+) already up to date)?$", stderr, re.M)
    assert summary, stderr
    assert int(summary[2] or 0) == 0, "files saved before the cut are not counted twice"
    assert int(summary[1]) == FILES, stderr
    assert "failed" not in stderr
    for name, data in contents.items():
        assert (dest / name).read_bytes() == data, name
    assert not [path for path in dest.rglob("*") if path.name.endswith((".part", ".resume"))]


def test_get_r_gives_up_after_its_retries(start_ftx_server: ServerStarter, tmp_path: Path) -> None:
    served, dest = tmp_path / "served", tmp_path / "dest"
    make_tree(served)
    dest.mkdir()
    first = start_ftx_server(served)
    get = get_r(first.address, dest, "-j", "2", "--retries", "1")
    try:
        deadline = time.monotonic() + 20
        while saved_files(dest) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        first.process.kill()  # and nobody listens on its port any more
        first.process.wait(timeout=10)
        _, stderr = get.communicate(timeout=60)
    finally:
        if get.poll() is None:
            get.kill()
            get.wait()
    assert get.returncode == 3, stderr  # network
    assert "retrying in 1 s (1 of 1)" in stderr
    assert "Traceback" not in stderr
    assert 5 <= saved_files(dest) < FILES
