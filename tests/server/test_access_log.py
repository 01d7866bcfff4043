"""The access log: one record per request on the ``ftx.access`` logger (peer, operation, path,
bytes, duration, result), human-readable by default and JSON with ``--log-format json``.

In-process servers with ``caplog`` for the content of the records, however an answer ends;
``ftx serve`` in a subprocess for what reaches standard error. Every wait bounded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import ftx
from conftest import MEDIUM_SIZE, SMALL_TEXT, BigFile, serving
from ftx.framing import FrameDecoder, encode_frame
from ftx.protocol.messages import FileEnd, Get, Hello, Message, decode_message, encode_message
from ftx.server._access_log import AccessRecord, JsonFormatter

LOOPBACK = "127.0.0.1"


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.access for r in caplog.records if r.name == "ftx.access"]  # type: ignore[attr-defined]


async def wait_for_records(caplog: pytest.LogCaptureFixture, count: int) -> list[dict[str, Any]]:
    with trio.fail_after(10):
        while len(records := access_records(caplog)) < count:  # noqa: ASYNC110 - bounded poll
            await trio.sleep(0.01)
    return records


def frame(message: Message) -> bytes:
    return encode_frame(b"".join(bytes(part) for part in encode_message(message)))


# ------------------------------------------------------------------ what each record says


async def test_one_record_per_request_with_its_outcome(
    served_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ftx.access")
    async with serving(served_root) as (_server, port):
        with trio.fail_after(20):
            async with ftx.connect(LOOPBACK, port) as client:
                local = client._channel.transport_stream.socket.getsockname()  # type: ignore[attr-defined]
                await client.get("small.txt", tmp_path / "small.txt")
                await client.list("sub")
                with pytest.raises(ftx.RemoteError):
                    await client.get("nope.txt", tmp_path / "nope.txt")
                with pytest.raises(ftx.RemoteError):
                    await client.get("../secret.txt", tmp_path / "out.txt")
        records = await wait_for_records(caplog, 4)
    ok, listing, missing, outside = records
    peer = f"{local[0]}:{local[1]}"
    assert ok["peer"] == listing["peer"] == peer
    assert ok["op"] == "GET"
    assert ok["path"] == "small.txt"
    assert ok["bytes"] == ok["size"] == len(SMALL_TEXT)
    assert ok["offset"] == 0
    assert ok["result"] == "ok"
    assert 0 <= ok["duration"] < 10
    assert (listing["op"], listing["path"], listing["entries"], listing["result"]) == (
        "LIST",
        "sub",
        3,
        "ok",
    )
    assert (missing["result"], missing["bytes"]) == ("not-found", 0)
    assert "nope.txt" in missing["message"]
    assert outside["result"] == "outside-root"
    human = [r.getMessage() for r in caplog.records if r.name == "ftx.access"]
    assert re.fullmatch(
        rf"{re.escape(peer)} GET 'small.txt' 27 bytes in \d+\.\d{{3}} s: ok", human[0]
    )
    assert human[1].startswith(f"{peer} LIST 'sub' 3 entries in ")
    assert human[2].endswith(": not-found (\"no such file or directory: 'nope.txt'\")")


async def test_a_resumed_transfer_records_its_offset(
    served_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ftx.access")
    async with serving(served_root) as (_server, port):
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            async with stream:
                await stream.send_all(frame(Hello((1,))) + frame(Get(1, "medium.bin", offset=1000)))
                decoder = FrameDecoder()
                end: list[FileEnd] = []
                while not end:
                    decoder.receive_data(await stream.receive_some(1 << 20))
                    while (payload := decoder.next_frame()) is not None:
                        message = decode_message(payload)
                        if isinstance(message, FileEnd):
                            end.append(message)
                records = await wait_for_records(caplog, 1)
    (record,) = records
    assert record["offset"] == 1000
    assert record["size"] == MEDIUM_SIZE
    assert record["bytes"] == MEDIUM_SIZE - 1000
    assert record["result"] == "ok"
    human = next(r.getMessage() for r in caplog.records if r.name == "ftx.access")
    assert " from byte 1000 " in human


@pytest.mark.parametrize("ending", ["client closes", "client stops reading", "server shuts down"])
async def test_a_transfer_cut_short_is_recorded_with_how_it_ended(
    served_root: Path, big_file: BigFile, caplog: pytest.LogCaptureFixture, ending: str
) -> None:
    caplog.set_level(logging.INFO, logger="ftx.access")
    async with serving(served_root, idle_timeout=0.5) as (server, port):
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            try:
                await stream.send_all(frame(Hello((1,))) + frame(Get(1, "big.bin")))
                await stream.receive_some(1 << 16)  # the transfer has begun
                if ending == "client closes":
                    await stream.aclose()
                elif ending == "server shuts down":
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(server.shutdown, 0)
                        while await stream.receive_some(1 << 20):
                            pass
                records = await wait_for_records(caplog, 1)
            finally:
                await trio.aclose_forcefully(stream)
    (record,) = records
    expected = {
        "client closes": "lost",
        "client stops reading": "timeout",
        "server shuts down": "shutting-down",
    }[ending]
    assert record["result"] == expected
    assert record["bytes"] < big_file.size  # whole DATA frames handed to the system
    assert record["size"] == big_file.size


# ------------------------------------------------------------------------------- formats


def _emitted(path: str, **fields: Any) -> logging.LogRecord:
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger = logging.getLogger("ftx.access")
    handler = Keep(logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        record = AccessRecord("[::1]:4000", "GET", path, 10.0, bytes=5, size=5, offset=0)
        for name, value in fields.items():
            setattr(record, name, value)
        record.log(10.25)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    (emitted,) = captured
    return emitted


def test_json_lines_have_every_field() -> None:
    line = JsonFormatter().format(_emitted("a.txt"))
    entry = json.loads(line)
    assert entry.pop("time").endswith("Z") or "+00:00" in line
    assert entry == {
        "event": "access",
        "peer": "[::1]:4000",
        "op": "GET",
        "path": "a.txt",
        "bytes": 5,
        "duration": 0.25,
        "result": "ok",
        "offset": 0,
        "size": 5,
    }


def test_other_log_records_are_json_too() -> None:
    record = logging.LogRecord("ftx.server", logging.WARNING, __file__, 1, "x %s", ("y",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["event"], entry["level"], entry["logger"], entry["message"]) == (
        "log",
        "warning",
        "ftx.server",
        "x y",
    )


HOSTILE = "evil\nGET 'forged.txt' 5 bytes in 0.001 s: ok\x1b[2J\u202e.txt"


def test_a_hostile_path_cannot_forge_a_line_in_either_format() -> None:
    record = _emitted(HOSTILE, result="not-found", message=f"no such file: {HOSTILE!r}")
    for line in (record.getMessage(), JsonFormatter().format(record)):
        assert "\n" not in line
        assert "\x1b" not in line
        assert "\u202e" not in line
    assert json.loads(JsonFormatter().format(record))["path"] == HOSTILE
    assert "\\n" in record.getMessage()
    assert "\\x1b" in record.getMessage()


# ---------------------------------------------------------------------- ftx serve, stderr


def serve_and_get(root: Path, tmp_path: Path, *options: str) -> list[str]:
    """Run ``ftx serve`` with ``options``, fetch small.txt and a missing file, stop it with
    SIGTERM; return its standard error lines."""
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "ftx", "serve", str(root), "--host", LOOPBACK]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [*command, "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().rsplit(":", 1)[1].strip()
        for path in ("small.txt", "nope.txt"):
            subprocess.run(
                [sys.executable, "-m", "ftx", "get", f"{LOOPBACK}:{port}", path, "-q"],
                cwd=tmp_path,
                capture_output=True,
                timeout=20,
                check=False,
            )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    return log.read_text().splitlines()


def test_serve_logs_human_readable_lines_by_default(served_root: Path, tmp_path: Path) -> None:
    lines = serve_and_get(served_root, tmp_path)
    assert any(f"GET 'small.txt' {len(SMALL_TEXT)} bytes in " in line for line in lines), lines
    assert any(line.endswith(": ok") for line in lines), lines
    assert any("GET 'nope.txt' 0 bytes in " in line and ": not-found" in line for line in lines)


def test_serve_logs_json_lines_with_log_format_json(served_root: Path, tmp_path: Path) -> None:
    lines = serve_and_get(served_root, tmp_path, "--log-format", "json")
    entries = [json.loads(line) for line in lines]  # every line is JSON
    access = [entry for entry in entries if entry["event"] == "access"]
    assert [(e["path"], e["result"], e["bytes"]) for e in access] == [
        ("small.txt", "ok", len(SMALL_TEXT)),
        ("nope.txt", "not-found", 0),
    ]
    assert all(e["op"] == "GET" and e["peer"].startswith(f"{LOOPBACK}:") for e in access)
    assert any(entry.get("message") == "stopped" for entry in entries)


def test_serve_quiet_logs_no_transfers(served_root: Path, tmp_path: Path) -> None:
    lines = serve_and_get(served_root, tmp_path, "-q")
    assert not [line for line in lines if "GET" in line], lines
