"""What the commands say: ``--json`` for every outcome, ``-v`` diagnostics, hints and wording
(issue 16.6, 16.7, 16.11), and the habits of the ecosystem: examples in ``--help``, ``ftx
help``, shell completion, environment defaults, a warning for an exposed server (16.13)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import (
    NETWORK,
    NOT_FOUND,
    OK,
    PERMISSION,
    PROTOCOL,
    USAGE,
    free_port,
    ftx_run,
    one_error_line,
)
from conftest import ENV, PYTHON_M_FTX, SAMPLE_FILES, ServerProcess, ServerStarter


@pytest.fixture
def sample(start_ftx_server: ServerStarter) -> ServerProcess:
    return start_ftx_server(SAMPLE_FILES)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


# ------------------------------------------------------------------------------------ --json


def test_json_reports_a_single_file_failure(sample: ServerProcess, work: Path) -> None:
    result = ftx_run("get", "--json", sample.address, "missing.txt", cwd=work)
    assert result.returncode == NOT_FOUND
    record = json.loads(result.stdout)
    assert record["path"] == "missing.txt"
    assert record["status"] == "failed"
    assert record["error"] == "not-found"
    assert record["exit_code"] == NOT_FOUND
    assert result.stderr.startswith("ftx: ")


def test_json_reports_a_failure_to_connect(work: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    for command in (["get", "--json", nobody, "a"], ["get", "-r", "--json", nobody, "/"]):
        result = ftx_run(*command, cwd=work)
        assert result.returncode == NETWORK
        assert [json.loads(line)["error"] for line in result.stdout.splitlines()] == ["network"]
    listing = ftx_run("ls", "--json", nobody)
    assert json.loads(listing.stdout)["status"] == "failed"


def test_put_json(start_ftx_server: ServerStarter, tmp_path: Path) -> None:
    root = tmp_path / "served"
    root.mkdir()
    server = start_ftx_server(root, "--writable")
    (tmp_path / "a.txt").write_bytes(b"a")
    (tmp_path / "b.txt").write_bytes(b"b")
    (root / "b.txt").write_bytes(b"another b")
    result = ftx_run("put", "--json", server.address, "a.txt", "b.txt", cwd=tmp_path)
    assert result.returncode != OK
    records = {record["path"]: record for record in map(json.loads, result.stdout.splitlines())}
    assert records["a.txt"]["status"] == "sent"
    assert records["a.txt"]["size"] == 1
    assert records["b.txt"]["status"] == "failed"
    assert records["b.txt"]["error"] == "exists"
    missing = ftx_run("put", "--json", server.address, "missing.txt", cwd=tmp_path)
    assert json.loads(missing.stdout)["status"] == "failed"
    refused = ftx_run("put", "--json", server.address, "a.txt", "--to", "nowhere", cwd=tmp_path)
    assert json.loads(refused.stdout)["status"] == "failed"


# ---------------------------------------------------------------------------------------- -v


def test_verbose_says_what_happens(sample: ServerProcess, work: Path, tmp_path: Path) -> None:
    result = ftx_run("get", "-v", sample.address, "random-3MiB.bin", cwd=work)
    assert result.returncode == OK, result.stderr
    for said in ("connecting to 127.0.0.1:", "handshake done: server 'ftx/", "digest xxh3-128"):
        assert said in result.stderr
    assert re.search(r"3145728 bytes received; xxh3-128 digest [0-9a-f]{32}", result.stderr)
    again = ftx_run("get", "-v", sample.address, "random-3MiB.bin", cwd=work)
    assert "exists: has the server's size and time" in again.stderr
    listing = ftx_run("ls", "-v", sample.address)
    assert "handshake done" in listing.stderr
    quiet = ftx_run("get", "-q", sample.address, "hello.txt", cwd=work)
    assert (quiet.returncode, quiet.stderr) == (OK, "")


# ------------------------------------------------------------------------------------- hints


def test_a_directory_without_r_says_use_r(sample: ServerProcess, work: Path) -> None:
    line = one_error_line(ftx_run("get", sample.address, "nested", cwd=work), NOT_FOUND)
    assert line.endswith("is a directory (use -r to fetch a directory) [not-a-file]"), line


def test_a_read_only_server_is_said_once(sample: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"a")
    line = one_error_line(ftx_run("put", sample.address, "a.txt", cwd=tmp_path), PERMISSION)
    assert line == (
        f"ftx: {sample.address} does not accept uploads: it must run with "
        "'ftx serve --writable' [read-only]"
    )
    as_json = ftx_run("put", "--json", sample.address, "a.txt", cwd=tmp_path)
    record = json.loads(as_json.stdout)
    assert (record["path"], record["error"], record["exit_code"]) == ("a.txt", "read-only", 5)


def test_put_usage_errors_show_the_usage_of_put(tmp_path: Path) -> None:
    result = ftx_run("put", "127.0.0.1", "a.txt", "--to", "x", "b.txt", "--bogus")
    assert result.returncode == USAGE
    assert result.stderr.startswith("usage: ftx put ")
    assert "ftx put: error: unrecognized arguments: --bogus" in result.stderr


# ------------------------------------------------------------------------ the ecosystem's habits


@pytest.mark.parametrize("command", ["serve", "get", "ls", "put"])
def test_help_has_examples(command: str) -> None:
    result = ftx_run(command, "--help")
    assert result.returncode == OK
    assert "\nexamples:\n  ftx " + command in result.stdout


def test_help_topics() -> None:
    top = ftx_run("--help")
    assert "ftx help" in top.stdout
    assert "docs/user-guide.md" not in top.stdout  # pip does not install it
    codes = ftx_run("help", "exit-codes")
    assert codes.returncode == OK
    assert re.search(r"^\s+9\s+the server is busy", codes.stdout, re.M)
    for topic in ("paths", "retries", "environment", "completion"):
        assert ftx_run("help", topic).returncode == OK


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_code(shell: str) -> None:
    result = ftx_run("completion", shell)
    assert result.returncode == OK, result.stderr
    assert "ftx" in result.stdout
    assert len(result.stdout) > 200


def test_completion_completes(tmp_path: Path) -> None:
    """What bash does on Tab, through argcomplete's protocol."""
    answer = tmp_path / "completions"
    line = "ftx get --ret"
    env = {
        **ENV,
        "_ARGCOMPLETE": "1",
        "_ARGCOMPLETE_IFS": "\n",
        "COMP_LINE": line,
        "COMP_POINT": str(len(line)),
        "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
    }
    subprocess.run(
        [*PYTHON_M_FTX], env=env, timeout=30, check=False, capture_output=True, cwd=tmp_path
    )
    assert sorted(answer.read_text().split()) == ["--retries", "--retry-delay"]


def test_environment_defaults(sample: ServerProcess, work: Path) -> None:
    listed = ftx_run("ls", "127.0.0.1", env={"FTX_PORT": str(sample.port)})
    assert listed.returncode == OK, listed.stderr
    assert "hello.txt" in listed.stdout.splitlines()
    bad = ftx_run("ls", "127.0.0.1", env={"FTX_PORT": "http"})
    assert bad.returncode == USAGE
    assert "FTX_PORT" in bad.stderr
    tls = ftx_run("ls", sample.address, "--timeout", "3", env={"FTX_TLS": "1"})
    assert tls.returncode in (PROTOCOL, NETWORK), tls.stderr  # plain server: no TLS spoken
    pin = ftx_run("ls", sample.address, env={"FTX_FINGERPRINT": "nope"})
    assert pin.returncode == USAGE


def _serve_stderr(directory: Path, *options: str) -> str:
    """Start ``ftx serve`` with ``options``, wait for its banner, stop it: its stderr."""
    log = directory.parent / "serve.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*PYTHON_M_FTX, "serve", str(directory), "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=ENV,
        )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # the banner: started
        time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    return log.read_text()


def test_serve_warns_when_exposed_without_protection(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    exposed = _serve_stderr(served, "--host", "0.0.0.0")
    assert "with neither TLS nor a token" in exposed
    assert _serve_stderr(served, "--host", "127.0.0.1").count("neither") == 0
    token = tmp_path / "token"
    token.write_text("x" * 32)
    os.chmod(token, 0o600)
    assert "neither" not in _serve_stderr(served, "--host", "0.0.0.0", "--token-file", str(token))


def test_man_page_is_made_from_the_parser() -> None:
    """What the build runs (pyproject.toml, [tool.build_manpages]) to make man/ftx.1."""
    project = Path(__file__).resolve().parent.parent.parent
    result = subprocess.run(
        [
            *[str(Path(sys.executable).parent / "argparse-manpage"), "--pyfile"],
            *[str(project / "tools" / "manpage.py"), "--function", "build_parser"],
            *["--prog", "ftx", "--project-name", "ftx"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == OK, result.stderr
    assert result.stdout.startswith(".TH FTX")
    for said in ("COMMAND \\fI\\,'ftx get'", "retry\\-delay", "ftx completion"):
        assert said in result.stdout, said


@pytest.mark.parametrize(("command", "expected"), [("ls", 1), ("get", 8), ("put", 8)])
def test_too_large_is_the_listing_not_a_local_file_for_ls(command: str, expected: int) -> None:
    """``too-large`` answers ``ls`` of a directory over 1,000,000 entries (exit 1: nothing local
    is at fault) and a ``put`` over ``--max-upload-size`` (exit 8, with the other refusals of
    what lands on the server)."""
    import argparse

    from ftx.cli._errors import describe
    from ftx.errors import RemoteError

    refusal = RemoteError("too-large", "more than 1000000 entries")
    line, code = describe(refusal, argparse.Namespace(command=command, address="h:1"))
    assert (line, code) == ("more than 1000000 entries [too-large]", expected)
