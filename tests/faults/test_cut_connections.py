"""Connections cut at chosen bytes (issue 5, deliverable 7): a relay between a real client and a
real server forwards N bytes of the server's answer, then closes (FIN) or resets (RST) the
connection. Whatever N is (inside the first HELLO, inside a later frame header, exactly at a
frame boundary, inside DATA, inside END), the client must never report success on a short or
spliced file: it raises ConnectionLostError (or a RemoteProtocolError) and DEST does not exist.

The offsets are not hard-coded: a session is first recorded through the relay, and split into
frames as the protocol lays them out; each cut then checks that the bytes it let through are
exactly the recorded ones.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

import ftx
from faults_helpers import (
    LOOPBACK,
    OK,
    FrameSpan,
    Hop,
    MiB,
    Plan,
    Relay,
    frame_spans,
    run_ftx,
    sha256_of,
)
from ftx.protocol.messages import Kind

CHUNK = 512 * 1024  # the server's DATA chunk (docs/protocol.md, §15)
SIZE = 3 * CHUNK + 1000  # four DATA frames, the last one short
BOUND = 15.0  # seconds any one download may take; a cut must never make the client hang


@pytest.fixture
def served(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "data.bin").write_bytes(random.Random(99).randbytes(SIZE))
    return root


async def record_session(port: int, nursery: trio.Nursery, dest: Path) -> bytes:
    """Download data.bin through a recording relay; return what the server sent."""
    relay = Relay(port, record=True)
    await relay.start(nursery)
    with trio.fail_after(BOUND):
        async with ftx.connect(LOOPBACK, relay.port) as client:
            await client.get("data.bin", dest)
        await relay.hops[0].done.wait()
    dest.unlink()
    return bytes(relay.hops[0].recorded)


def cut_points(spans: list[FrameSpan]) -> dict[str, int]:
    """Named offsets in the server-to-client stream, from a recorded session's frames."""
    kinds = [span.kind for span in spans]
    assert kinds[0] == Kind.HELLO, kinds
    assert kinds[1] == Kind.FILE, kinds
    assert kinds[-1] == Kind.END, kinds
    hello, file, *data, end = spans
    assert data, "no DATA frame"
    assert all(span.kind == Kind.DATA for span in data), kinds
    assert sum(span.end - span.body - 1 for span in data) == SIZE
    assert len(data) >= 3, "the file should span several DATA frames"
    return {
        "nothing": 0,
        "hello-length": 2,
        "hello-kind": hello.body,
        "hello-body": hello.end - 5,
        "after-hello": hello.end,
        "file-length": file.start + 3,
        "file-body": file.body + 10,
        "after-file": file.end,
        "data-length": data[0].start + 1,
        "inside-first-data": data[0].body + 1 + 1000,
        "between-data": data[0].end,
        "second-data-length": data[1].start + 3,
        "last-data-length": data[-1].start + 2,
        "last-data-byte": data[-1].end - 1,
        "after-all-data": data[-1].end,
        "end-length": end.start + 1,
        "end-kind": end.body,
        "end-body": end.end - 1,
    }


CUTS = [
    "nothing",
    "hello-length",
    "hello-kind",
    "hello-body",
    "after-hello",
    "file-length",
    "file-body",
    "after-file",
    "data-length",
    "inside-first-data",
    "between-data",
    "second-data-length",
    "last-data-length",
    "last-data-byte",
    "after-all-data",
    "end-length",
    "end-kind",
    "end-body",
]


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
@pytest.mark.parametrize("where", CUTS)
async def test_a_cut_connection_is_never_a_success(
    where: str,
    reset: bool,
    tmp_path: Path,
    served: Path,
    start_server: Callable[..., object],
    nursery: trio.Nursery,
) -> None:
    _host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "data.bin"
    recorded = await record_session(port, nursery, dest)
    offset = cut_points(frame_spans(recorded))[where]
    relay = Relay(port, [Plan(cut_after=offset, reset=reset)], record=True)
    await relay.start(nursery)
    with trio.fail_after(BOUND):  # a hang fails the test (TooSlowError is not caught below)
        with pytest.raises((ftx.ConnectionLostError, ftx.RemoteProtocolError)):
            async with ftx.connect(
                LOOPBACK, relay.port, ftx.ClientConfig(idle_timeout=BOUND * 2)
            ) as client:
                await client.get("data.bin", dest)
        await relay.hops[0].done.wait()
    hop = relay.hops[0]
    assert hop.cut, f"the relay did not cut (forwarded {hop.down} of {offset} bytes)"
    assert bytes(hop.recorded) == recorded[:offset], "the cut session differs from the recording"
    assert not dest.exists(), "a cut download was published"


async def test_an_uncut_session_through_the_relay_succeeds(
    tmp_path: Path, served: Path, start_server: Callable[..., object], nursery: trio.Nursery
) -> None:
    """The control for the test above: cutting after the whole answer cuts nothing."""
    _host, port = await start_server(served)  # type: ignore[operator]
    dest = tmp_path / "data.bin"
    recorded = await record_session(port, nursery, dest)
    relay = Relay(port, [Plan(cut_after=len(recorded), reset=True)])
    await relay.start(nursery)
    with trio.fail_after(BOUND):
        async with ftx.connect(LOOPBACK, relay.port) as client:
            await client.get("data.bin", dest)
    assert dest.read_bytes() == (served / "data.bin").read_bytes()


# ------------------------------------------------------------------ retries never splice

BIG = 4 * MiB + 777  # resumable (1 MiB or more)


@pytest.mark.parametrize("replaced", [False, True], ids=["same-file", "replaced-meanwhile"])
async def test_get_retries_after_a_cut_and_never_splices(
    replaced: bool,
    tmp_path: Path,
    start_server: Callable[..., object],
    nursery: trio.Nursery,
) -> None:
    """``ftx get --retries``: the first connection is reset in the middle of the data, the retry
    goes through. It resumes when the file is the same, and starts again from zero when the file
    was replaced in between (same size, same modification time): the result is one version of
    the file, whole, never the start of the old one and the end of the new one."""
    root = tmp_path / "root"
    root.mkdir()
    served = root / "data.bin"
    old = random.Random(1).randbytes(BIG)
    new = random.Random(2).randbytes(BIG)
    served.write_bytes(old)
    _host, port = await start_server(root)  # type: ignore[operator]

    def replace(hop: Hop) -> None:
        if replaced:
            stat = served.stat()
            (root / "new.tmp").write_bytes(new)
            os.utime(root / "new.tmp", ns=(stat.st_atime_ns, stat.st_mtime_ns))
            os.replace(root / "new.tmp", served)

    cut = 2 * MiB + 12345
    relay = Relay(port, [Plan(cut_after=cut, reset=True), Plan()], on_cut=replace)
    await relay.start(nursery)
    dest = tmp_path / "out.bin"
    result = await run_ftx(
        "get", f"{LOOPBACK}:{relay.port}", "data.bin", "-o", str(dest), "--retries", "2"
    )
    assert result.returncode == OK, result.stderr
    assert "retrying" in result.stderr, result.stderr
    assert len(relay.hops) == 2
    expected = new if replaced else old
    assert dest.stat().st_size == BIG
    assert sha256_of(dest) == hashlib.sha256(expected).hexdigest(), (
        "the saved file is not one whole version"
    )
    second = relay.hops[1].down
    if replaced:
        assert second > BIG, "the retry did not start again from zero"
    else:
        assert second < BIG - cut + 64 * 1024, "the retry did not resume"
