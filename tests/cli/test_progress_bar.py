"""What a person sees on a terminal (a pseudo-terminal read back through a terminal emulator)
while ftx transfers: the bar in IEC units with its rate at any width, messages on lines of
their own, the last frame showing the totals, resumed transfers said and timed on what moved
(issue 16.3, 16.4 and 16.5)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import trio

import ftx
from cli_helpers import OK, ftx_run, in_terminal
from conftest import SAMPLE_FILES, ServerStarter
from ftx.cli._progress import ProgressBar

BAR = re.compile(r"(\d+)%")
IEC_RATE = re.compile(r"\d+\.\d (B|KiB|MiB|GiB)/s")


def _bar_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if BAR.search(line)]


@pytest.mark.parametrize("columns", [100, 40])
def test_one_file(tmp_path: Path, start_ftx_server: ServerStarter, columns: int) -> None:
    server = start_ftx_server(SAMPLE_FILES)
    code, screen = in_terminal(
        ["get", server.address, "random-3MiB.bin"], columns=columns, cwd=tmp_path
    )
    assert code == OK, screen
    bars = _bar_lines(screen)
    assert len(bars) == 1, screen  # redrawn in place, never a line per frame
    bar = bars[0]
    assert "100%" in bar
    assert "3.0/3.0 MiB" in bar
    assert IEC_RATE.search(bar), bar  # the rate survives at 40 columns
    assert "MB" not in bar.replace("MiB", "")
    assert len(bar) < columns
    assert "3MiB.bin" in bar  # the label is shortened from its start
    saved = "\n".join(screen[screen.index(bar) + 1 :])
    assert saved.replace("\n", "").startswith("saved random-3MiB.bin (3.0 MiB in ")


@pytest.mark.parametrize("columns", [100, 40])
def test_several_files(tmp_path: Path, start_ftx_server: ServerStarter, columns: int) -> None:
    root = tmp_path / "served"
    shutil.copytree(SAMPLE_FILES / "nested", root)
    shutil.copy(SAMPLE_FILES / "random-3MiB.bin", root)
    os.mkfifo(root / "fifo")
    server = start_ftx_server(root)
    code, screen = in_terminal(
        ["get", "-r", server.address, "/", "-o", "copy"], columns=columns, cwd=tmp_path
    )
    assert code == OK, screen
    assert "skipped fifo: not a regular file" in screen  # a line of its own
    bars = _bar_lines(screen)
    assert len(bars) == 1, screen
    bar = bars[0]
    assert bar.startswith("3/3 files 100%"), bar  # the last frame; the FIFO is not a file
    assert IEC_RATE.search(bar), bar
    assert len(bar) < columns
    assert screen[screen.index(bar) + 1].startswith("3 file(s) saved (3.0 MiB in ")
    assert screen.index("skipped fifo: not a regular file") < screen.index(bar)


async def _interrupt(port: int, path: str, dest: Path, after: int) -> None:
    """Download ``path`` to ``dest`` and stop once ``after`` bytes arrived: the part file and
    its resume record stay, as after a lost connection."""

    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        if done >= after:
            raise Stop

    async with ftx.connect("127.0.0.1", port) as client:
        try:
            await client.get(path, dest, progress=progress)
        except Stop:
            return
    raise AssertionError("the download was not interrupted")


@pytest.mark.parametrize("columns", [100])
def test_a_resumed_download_says_so(
    tmp_path: Path, start_ftx_server: ServerStarter, columns: int
) -> None:
    root = tmp_path / "served"
    root.mkdir()
    (root / "r.bin").write_bytes(os.urandom(8 << 20))
    server = start_ftx_server(root)
    out = tmp_path / "out"
    out.mkdir()
    trio.run(_interrupt, server.port, "r.bin", out / "r.bin", 5 << 20)
    held = (out / "r.bin.part").stat().st_size
    assert held >= 5 << 20
    code, screen = in_terminal(["get", server.address, "r.bin"], columns=columns, cwd=out)
    assert code == OK, screen
    said = "".join(screen[1:])
    resumed = f"{held / 2**20:.1f} MiB"
    moved = f"{((8 << 20) - held) / 2**20:.1f} MiB"
    assert said.startswith(f"saved r.bin (8.0 MiB, resumed at {resumed}: {moved} in "), said
    assert (out / "r.bin").read_bytes() == (root / "r.bin").read_bytes()
    # --json says it too.
    (out / "r.bin").unlink()
    trio.run(_interrupt, server.port, "r.bin", out / "r.bin", 5 << 20)
    result = ftx_run("get", "--json", server.address, "r.bin", cwd=out)
    assert result.returncode == OK, result.stderr
    assert json.loads(result.stdout)["offset"] >= 5 << 20


@pytest.mark.parametrize("quiet", [["-q"], []])
def test_no_bar_means_no_progress_reports(
    tmp_path: Path,
    start_ftx_server: ServerStarter,
    monkeypatch: pytest.MonkeyPatch,
    quiet: list[str],
) -> None:
    """Without a bar (``-q``, or stderr not a terminal, as under pytest) ``ftx get`` gives the
    download no progress callback at all: on the bulk path each report wakes the event loop
    from the receiving thread, ~1,000 wake-ups per GiB for nothing (issue 13)."""
    from ftx.cli import main

    server = start_ftx_server(SAMPLE_FILES)
    given: list[object] = []
    real_get = ftx.Client.get

    async def get(self: ftx.Client, *args: object, **kwargs: object) -> ftx.Download:
        given.append(kwargs.get("progress", "missing"))
        return await real_get(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ftx.Client, "get", get)
    dest = tmp_path / "copy.bin"
    assert main(["get", server.address, "random-3MiB.bin", "-o", str(dest), *quiet]) == OK
    assert given == [None]
    assert dest.read_bytes() == (SAMPLE_FILES / "random-3MiB.bin").read_bytes()


def test_a_shown_bar_is_the_progress_callback() -> None:
    """A bar that is shown is what the download reports to; one that is not, nothing."""
    shown = ProgressBar(enabled=True, label="x")
    assert shown.callback == shown.update
    assert ProgressBar(enabled=False, label="x").callback is None


@pytest.mark.parametrize("columns", [100, 40])
def test_a_tree_upload_has_one_bar(
    tmp_path: Path, start_ftx_server: ServerStarter, columns: int
) -> None:
    # put -r sends small files in its stream and large ones (here 3 MiB) by PUT after it: one
    # bar counts both, redrawn in place, and its last frame shows the totals.
    source = tmp_path / "tree"
    shutil.copytree(SAMPLE_FILES / "nested", source)
    shutil.copy(SAMPLE_FILES / "random-3MiB.bin", source)
    served = tmp_path / "served"
    served.mkdir()
    server = start_ftx_server(served, "--writable")
    code, screen = in_terminal(["put", "-r", server.address, "tree"], columns=columns, cwd=tmp_path)
    assert code == OK, screen
    files = sum(len(names) for _, _, names in os.walk(source))
    bars = _bar_lines(screen)
    assert len(bars) == 1, screen
    bar = bars[0]
    assert bar.startswith(f"{files}/{files} files 100%"), bar
    assert IEC_RATE.search(bar), bar
    assert len(bar) < columns
    assert (served / "tree" / "random-3MiB.bin").read_bytes() == (
        SAMPLE_FILES / "random-3MiB.bin"
    ).read_bytes()


def test_a_tree_upload_shows_no_bar_when_quiet_or_not_on_a_terminal(
    tmp_path: Path, start_ftx_server: ServerStarter
) -> None:
    source = tmp_path / "tree"
    shutil.copytree(SAMPLE_FILES / "nested", source)
    served = tmp_path / "served"
    served.mkdir()
    server = start_ftx_server(served, "--writable")
    code, screen = in_terminal(
        ["put", "-r", "-q", server.address, "tree"], columns=100, cwd=tmp_path
    )
    assert code == OK, screen
    assert not _bar_lines(screen), screen
    other = tmp_path / "other"
    shutil.copytree(SAMPLE_FILES / "nested", other)
    done = ftx_run("put", "-r", server.address, str(other))
    assert done.returncode == OK, done.stderr
    assert "%" not in done.stderr, done.stderr  # stderr is not a terminal: no bar
    assert (served / "other").is_dir()
