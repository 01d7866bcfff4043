"""The start-up of the ``ftx`` command (issues 13 and 14): each command imports only what it
needs. ``ftx get`` never loads the server, ``ftx --version`` and ``ftx --help`` load no command
at all, and the light parser they use says exactly what the full one says. Nor does a command
load what only another path uses: ``ftx get`` of one file not the tree, upload or several-source
code, a re-run of ``get -r`` or ``put -r`` not the other direction, ``ftx serve`` no client
module, and none of them `stamina` unless an attempt failed and is retried. (:mod:`ssl` and
attrs cannot be left out: trio imports both.)

Each check runs ``ftx`` in a fresh interpreter and reads ``sys.modules`` at its exit, as
tests/test_architecture.py does for ``import ftx.framing``.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import ENV, StartServer
from ftx.cli import build_parser

TIMEOUT = 30

# Runs ``ftx ARGS`` (given as JSON in argv[1]) in this interpreter, then prints, as the last line
# of stderr, the ftx modules and top-level packages it loaded: at exit, whatever way it exits.
_PROBE = """
import atexit, json, sys
def report():
    loaded = sorted(m for m in sys.modules if m.startswith("ftx") or "." not in m)
    print("\\nLOADED " + json.dumps(loaded), file=sys.stderr)
atexit.register(report)
from ftx.cli import main
sys.exit(main(json.loads(sys.argv[1])))
"""


def _loaded(result: subprocess.CompletedProcess[str]) -> set[str]:
    line = result.stderr.rstrip().rsplit("\n", 1)[-1]
    assert line.startswith("LOADED "), result.stderr
    return set(json.loads(line.removeprefix("LOADED ")))


def _probe_command(*args: str) -> list[str]:
    return [sys.executable, "-c", _PROBE, json.dumps(list(args))]


def _run(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    result = subprocess.run(
        _probe_command(*args), capture_output=True, text=True, env=ENV, timeout=TIMEOUT
    )
    return result, _loaded(result)


async def _run_async(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``ftx ARGS`` in a fresh interpreter, from a trio test (whose server runs meanwhile)."""
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            _probe_command(*args),
            env=ENV,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    completed = subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )
    assert completed.returncode == 0, completed.stderr
    return completed, _loaded(completed)


def _under(loaded: set[str], *packages: str) -> set[str]:
    """The modules of ``loaded`` that are ``packages`` or in them."""
    return {m for m in loaded if any(m == p or m.startswith(p + ".") for p in packages)}


# What only some paths use: the tree download, uploads, tree uploads, several sources, ranges.
_TREE_GET = {"ftx.client._tree", "ftx.client._tree_stream", "ftx.client._tree_disk"}
_UPLOADS = {"ftx.client._upload", "ftx.client._tree_put", "ftx.client._tree_put_local"}
_SOURCES = {"ftx.client._multisource", "ftx.client._multisource_plan", "ftx.client._ranges"}


async def test_ftx_get_does_not_import_the_server(
    start_server: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "tiny.txt").write_bytes(b"tiny\n")
    host, port = await start_server(root)
    target = tmp_path / "got.txt"
    _, loaded = await _run_async("get", f"{host}:{port}", "tiny.txt", "-o", str(target), "-q")
    assert target.read_bytes() == b"tiny\n"
    assert {"ftx.client", "ftx.cli._get"} <= loaded  # the probe sees what the command loaded
    assert not _under(loaded, "ftx.server")
    # Nor the commands it does not run.
    assert not {"ftx.cli._serve", "ftx.cli._put", "ftx.cli._tree"} & loaded


async def test_ftx_get_of_one_file_loads_only_its_own_path(
    start_server: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "tiny.txt").write_bytes(b"tiny\n")
    host, port = await start_server(root)
    target = tmp_path / "got.txt"
    _, loaded = await _run_async("get", f"{host}:{port}", "tiny.txt", "-o", str(target), "-q")
    assert {"ftx.client._client", "ftx.client._receive", "ftx.protocol.messages"} <= loaded
    assert not (_TREE_GET | _UPLOADS | _SOURCES | {"ftx.fs"}) & loaded
    assert not _under(loaded, "stamina", "tenacity", "tqdm")  # nothing retried, no bar (-q)
    # Again, up to date this time: still no tree code (its Skipped is imported when needed).
    _, again = await _run_async("get", f"{host}:{port}", "tiny.txt", "-o", str(target), "-q")
    assert "ftx.client._tree_disk" in again
    assert not ({"ftx.client._tree", "ftx.client._tree_stream"} | _UPLOADS) & again


async def test_a_get_r_rerun_loads_neither_uploads_nor_stamina(
    start_server: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    (root / "tree" / "sub").mkdir(parents=True)
    for name in ("a", "b", "sub/c"):
        (root / "tree" / name).write_text(name)
    host, port = await start_server(root)
    dest = tmp_path / "dest"
    for _ in range(2):  # the second run has nothing to move
        _, loaded = await _run_async("get", "-r", "-q", f"{host}:{port}", "tree", "-o", str(dest))
    assert (dest / "tree" / "sub" / "c").read_text() == "sub/c"
    assert loaded >= _TREE_GET
    assert not (_UPLOADS | _SOURCES) & loaded
    assert not _under(loaded, "stamina", "tenacity", "ftx.server", "ftx.cli._put")


async def test_a_put_r_rerun_loads_neither_tree_downloads_nor_stamina(
    start_server: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    for name in ("a", "sub/b"):
        (local / name).write_text(name)
    host, port = await start_server(root, writable=True)
    for _ in range(2):  # the second run has nothing to move
        _, loaded = await _run_async("put", "-r", "-q", f"{host}:{port}", str(local))
    assert (root / "local" / "sub" / "b").read_text() == "sub/b"
    assert {"ftx.client._tree_put", "ftx.cli._put"} <= loaded
    assert not ({"ftx.client._tree", "ftx.client._tree_stream"} | _SOURCES) & loaded
    assert not _under(loaded, "stamina", "tenacity", "ftx.server", "ftx.cli._get")


def test_ftx_serve_loads_no_client_module(tmp_path: Path) -> None:
    process = subprocess.Popen(
        _probe_command("serve", str(tmp_path), "--host", "127.0.0.1", "--port", "0"),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        ready: list[Any] = []
        while not ready and time.monotonic() < deadline and process.poll() is None:
            ready = select.select([process.stdout], [], [], 0.1)[0]
        assert ready, "no banner from ftx serve"
        assert " serving " in process.stdout.readline()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    loaded = _loaded(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    assert process.returncode == 0, stderr
    assert {"ftx.server", "ftx.cli._serve"} <= loaded
    assert not _under(loaded, "ftx.client", "stamina", "tenacity", "tqdm", "ftx.cli._get")


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("bogus",)])
def test_the_top_level_options_load_no_command(args: tuple[str, ...]) -> None:
    result, loaded = _run(*args)
    assert result.returncode == (2 if args == ("bogus",) else 0), result.stderr
    assert "ftx.cli._main" in loaded
    heavy = {"trio", "ssl", "tqdm", "ftx.client", "ftx.server", "ftx.protocol", "ftx.cli._get"}
    assert not heavy & loaded, heavy & loaded


def test_ftx_get_help_loads_the_client_but_not_the_server() -> None:
    result, loaded = _run("get", "--help")
    assert result.returncode == 0, result.stderr
    assert "--recursive" in result.stdout
    assert "ftx.client" in loaded
    assert not {m for m in loaded if m.startswith(("ftx.server", "ftx.cli._serve"))}


def _summaries(parser: object) -> dict[str, str | None]:
    """Each subcommand's line in ``ftx --help``."""
    commands = next(a for a in parser._actions if a.dest == "command")  # type: ignore[attr-defined]
    return {action.dest: action.help for action in commands._choices_actions}


def test_the_light_parser_says_what_the_full_one_says() -> None:
    full = build_parser()
    light = build_parser(())
    assert light.format_help() == full.format_help()
    assert _summaries(light) == _summaries(full)
    assert list(_summaries(full)) == ["serve", "get", "ls", "put", "help", "completion"]


@pytest.mark.parametrize("command", ["serve", "get", "ls", "put", "help", "completion"])
def test_a_command_built_alone_is_the_full_command(command: str) -> None:
    full = build_parser()
    alone = build_parser({command})
    assert _summaries(alone) == _summaries(full)
    full_sub = next(a for a in full._actions if a.dest == "command").choices[command]
    alone_sub = next(a for a in alone._actions if a.dest == "command").choices[command]
    assert alone_sub.format_help() == full_sub.format_help()
    assert alone_sub._actions[1:], "the command was built with its options"
