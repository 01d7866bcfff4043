"""``ftx get -r`` after a lost connection: it runs again by itself (``--retries``), and the files
saved before are up to date, the interrupted ones resume."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest

from conftest import PYTHON_M_FTX, ServerStarter, kill_mid_run

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


def get_r(address: str, dest: Path, *options: str) -> list[str]:
    return [*PYTHON_M_FTX, "get", "-r", address, "d0", "d1", "d2", "d3", "-o", str(dest), *options]


def saved_files(dest: Path) -> int:
    return sum(1 for path in dest.rglob("f*.bin"))


@pytest.mark.parametrize("json_lines", [False, True])
def test_get_r_survives_a_killed_server(
    start_ftx_server: ServerStarter, tmp_path: Path, json_lines: bool
) -> None:
    served, dest = tmp_path / "served", tmp_path / "dest"
    contents = make_tree(served)
    # Met again by every attempt: a link that -r skips, and a file here already up to date.
    (served / "d0" / "link").symlink_to("f1.bin")
    (dest / "d0").mkdir(parents=True)
    shutil.copy2(served / "d0" / "f0.bin", dest / "d0" / "f0.bin")
    first = start_ftx_server(served)
    options = ["-j", "4", "--retries", "5"] + (["--json"] if json_lines else [])
    code, stdout, stderr = kill_mid_run(
        get_r(first.address, dest, *options),
        first,
        lambda: saved_files(dest) >= 10,
        lambda: start_ftx_server(served, "--port", str(first.port)),
    )
    assert code == 0, stderr
    assert "retrying" in stderr
    summary = re.search(r"^(\d+) file\(s\) saved .*?(?:, (\d+) already up to date)?$", stderr, re.M)
    assert summary, stderr
    # Files saved before the cut are not counted as up to date; each file is counted once.
    assert (int(summary[1]), int(summary[2] or 0)) == (FILES - 1, 1), stderr
    assert "failed" not in stderr
    if json_lines:  # one line per file, with its one outcome
        records = {}
        for line in stdout.splitlines():
            record = json.loads(line)
            assert record["path"] not in records, line
            records[record["path"]] = record
        assert sorted(records) == sorted([*contents, "d0/link"])
        assert records["d0/link"]["status"] == "skipped"
        assert records["d0/f0.bin"] == {
            "path": "d0/f0.bin",
            "status": "skipped",
            "reason": "up to date",
        }
        saved = {path for path, record in records.items() if record["status"] == "saved"}
        assert saved == set(contents) - {"d0/f0.bin"}
    else:
        assert stderr.count("skipped d0/link") == 1, stderr
    for name, data in contents.items():
        assert (dest / name).read_bytes() == data, name
    assert not [path for path in dest.rglob("*") if path.name.endswith((".part", ".resume"))]


def test_get_r_gives_up_after_its_retries(start_ftx_server: ServerStarter, tmp_path: Path) -> None:
    served, dest = tmp_path / "served", tmp_path / "dest"
    make_tree(served)
    dest.mkdir()
    first = start_ftx_server(served)
    code, _, stderr = kill_mid_run(  # and nobody listens on its port any more
        get_r(first.address, dest, "-j", "2", "--retries", "1"),
        first,
        lambda: saved_files(dest) >= 5,
    )
    assert code == 3, stderr  # network
    # The wait: --retry-delay (1 s), plus a random part up to as much again (jitter).
    assert re.search(r"retrying in (1\.\d|2\.0) s \(1 of 1\)", stderr), stderr
    assert "Traceback" not in stderr
    assert 5 <= saved_files(dest) < FILES
