"""The state of a pipelined fetch (ftx.client._pipeline.Pipeline): its window's bookkeeping, and
its two sides driven over a scripted connection (a FetchWire with no socket behind it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from ftx.client._partfile import PartFile, ResumeRecord
from ftx.client._pipeline import FetchWire, Pipeline, fetch_files
from ftx.client._receive import Download, GetOptions, ReceiveBuffers
from ftx.errors import FtxError, RemoteError
from ftx.protocol import MIN_FRAME_SIZE, ClientProtocol, ErrorCode
from ftx.protocol.messages import Data, Error, FileEnd, FileHeader, Get, Message

OPTIONS = GetOptions(
    overwrite=False,
    verify=False,
    preserve_mtime=False,
    preserve_mode=False,
    durable=False,
    skip_unwritable=True,
)


class ScriptedWire:
    """A connection that answers each GET as ``answer`` says, and records every write and how
    many requests were in flight (sent, their answer not yet received) after it."""

    digest_algorithm = "sha256"

    def __init__(self, answer: Callable[[Get], list[Message]]) -> None:
        self._answer = answer
        self._protocol = ClientProtocol()
        self._receive_buffers = ReceiveBuffers(MIN_FRAME_SIZE)
        self._closed = False
        self._to_client, self._from_server = trio.open_memory_channel[Message](math.inf)
        self.writes: list[list[Get]] = []
        self.in_flight: list[int] = []
        self._sent = self._answered = 0

    async def _send(self, *messages: Message) -> None:
        requests = [message for message in messages if isinstance(message, Get)]
        assert len(requests) == len(messages)
        self.writes.append(requests)
        self._sent += len(requests)
        self.in_flight.append(self._sent - self._answered)
        for request in requests:
            for answer in self._answer(request):
                self._to_client.send_nowait(answer)
        await trio.lowlevel.checkpoint()

    async def _receive(self, into: bytearray | None = None) -> Message:
        message = await self._from_server.receive()
        if isinstance(message, Error | FileEnd):
            self._answered += 1
        return message

    async def _fail(self) -> None:
        self._closed = True


def not_found(request: Get) -> list[Message]:
    return [Error(request.request_id, ErrorCode.NOT_FOUND, f"no {request.path}")]


def pipeline(window: int) -> Pipeline:
    wire: FetchWire = ScriptedWire(not_found)
    return Pipeline(
        wire, on_done=lambda path, result: None, progress=None, options=OPTIONS, window=window
    )


def test_the_window_fills_with_the_batch_and_refills_once_half_is_answered(
    tmp_path: Path,
) -> None:
    state = pipeline(window=4)
    requests = [(f"f{i}", PartFile(tmp_path / f"f{i}"), 0, None) for i in range(4)]
    assert (state.outstanding, state.window_full()) == (0, False)
    state.batch.extend(requests[:3])
    assert not state.window_full()
    state.batch.append(requests[3])
    assert state.window_full()  # batched requests count
    assert state.take_batch() == requests
    assert (state.batch, state.outstanding, state.window_full()) == ([], 4, True)
    state.answered()
    assert (state.outstanding, state.window_full()) == (3, False)
    assert not state._half_answered.is_set()  # the send side still waits
    state.answered()
    assert state.outstanding == 2
    assert state._half_answered.is_set()  # half of the window is answered: refill it
    assert state.take_batch() == []
    assert state.outstanding == 2


@pytest.mark.parametrize("window", [1, 2, 4, 7])
async def test_requests_go_out_in_batches_and_never_overflow_the_window(
    tmp_path: Path, window: int
) -> None:
    wire = ScriptedWire(not_found)
    paths = [f"f{i}" for i in range(20)]
    send, receive = trio.open_memory_channel[tuple[str, str | Path]](len(paths))
    async with send:
        for path in paths:
            send.send_nowait((path, tmp_path / path))  # all waiting: batches fill up
    results: list[tuple[str, Download | FtxError]] = []
    with trio.fail_after(5):
        directories = await fetch_files(
            wire,
            receive,
            on_done=lambda path, result: results.append((path, result)),
            progress=None,
            options=OPTIONS,
            window=window,
        )
    assert [path for path, _ in results] == paths  # in the order they were taken
    assert all(isinstance(result, RemoteError) for _, result in results)
    assert [get.path for write in wire.writes for get in write] == paths
    assert [get.request_id for write in wire.writes for get in write] == list(range(1, 21))
    assert len(wire.writes[0]) == window  # a full window in one write
    assert all(1 <= len(write) <= window for write in wire.writes)
    assert max(wire.in_flight) <= window
    assert directories == {str(tmp_path)}


async def test_a_resume_refused_as_changed_is_asked_again_from_zero(tmp_path: Path) -> None:
    content = b"the new version\n" * 100
    dest = tmp_path / "file.bin"
    kept = PartFile(dest)  # an interrupted download left 100 bytes and a resume record
    kept.open()
    kept.write(b"x" * 100)
    kept.write_record(ResumeRecord("file.bin", "old-identity", 5000, None))
    kept.close()

    def answer(request: Get) -> list[Message]:
        if request.offset:
            return [Error(request.request_id, ErrorCode.CHANGED, "not the same file")]
        return [
            FileHeader(request.request_id, len(content), 0, "new-identity", digest=None),
            Data(content),
            FileEnd(request.request_id, None),
        ]

    wire = ScriptedWire(answer)
    send, receive = trio.open_memory_channel[tuple[str, str | Path]](1)
    async with send:
        send.send_nowait(("file.bin", dest))
    results: list[Download | FtxError] = []
    with trio.fail_after(5):
        await fetch_files(
            wire,
            receive,
            on_done=lambda path, result: results.append(result),
            progress=None,
            options=OPTIONS,
            window=4,
        )
    assert wire.writes == [
        [Get(1, "file.bin", offset=100, identity="old-identity", digest=None)],
        [Get(2, "file.bin", offset=0, identity=None, digest=None)],
    ]
    [result] = results
    assert isinstance(result, Download)
    assert dest.read_bytes() == content
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file.bin"]
