"""The start-up of the ``ftx`` command (issues 13 and 14): each command imports only what it
needs. ``ftx get`` never loads the server, ``ftx --version`` and ``ftx --help`` load no command
at all, and the light parser they use says exactly what the full one says.

Each check runs ``ftx`` in a fresh interpreter and reads ``sys.modules`` at its exit, as
tests/test_architecture.py does for ``import ftx.framing``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


async def test_ftx_get_does_not_import_the_server(
    start_server: StartServer, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "tiny.txt").write_bytes(b"tiny\n")
    host, port = await start_server(root)
    target = tmp_path / "got.txt"
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            _probe_command("get", f"{host}:{port}", "tiny.txt", "-o", str(target), "-q"),
            env=ENV,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    completed = subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )
    assert completed.returncode == 0, completed.stderr
    assert target.read_bytes() == b"tiny\n"
    loaded = _loaded(completed)
    assert {"ftx.client", "ftx.cli._get"} <= loaded  # the probe sees what the command loaded
    assert not {m for m in loaded if m == "ftx.server" or m.startswith("ftx.server.")}
    # Nor the commands it does not run.
    assert not {"ftx.cli._serve", "ftx.cli._put", "ftx.cli._tree"} & loaded


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
