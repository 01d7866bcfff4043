"""`ftx get --retries` waits and tries again when the server is busy or shutting down."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FakeConnection, FakeServer
from ftx.protocol.messages import Data, Error, FileEnd, FileHeader, Get, Hello

CONTENT = b"served on the second try\n"


@pytest.mark.parametrize("code", ["busy", "shutting-down"])
def test_get_retries_a_busy_server(tmp_path: Path, code: str) -> None:
    attempts: list[str] = []

    def behaviour(conn: FakeConnection) -> None:
        if not attempts:
            attempts.append("refused")
            assert isinstance(conn.receive(), Hello)
            conn.send(Error(None, code, "try again later"))
            return
        attempts.append("served")
        conn.handshake()
        request = conn.receive()
        assert isinstance(request, Get)
        assert request.digest == "sha256"
        conn.send(FileHeader(request.request_id, len(CONTENT), 0, "i" * 32, digest="sha256"))
        conn.send(Data(CONTENT))
        conn.send(FileEnd(request.request_id, hashlib.sha256(CONTENT).hexdigest()))
        conn.receive()  # until the client closes

    server = FakeServer(behaviour)
    try:
        result = subprocess.run(
            [
                *[sys.executable, "-m", "ftx", "get", f"127.0.0.1:{server.port}", "f.txt"],
                *["--retry-delay", "0.2"],
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert attempts == ["refused", "served"]
    # The first wait: --retry-delay, plus a random part up to as much again (jitter).
    assert re.search(rf"\[{code}\]; retrying in 0\.[234] s \(1 of 3\)", result.stderr)
    assert (tmp_path / "f.txt").read_bytes() == CONTENT
