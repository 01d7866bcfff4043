"""A cold BLOCKS on a slow disk (docs/protocol.md, section 22.2, feature ``block-progress``):
the server's BLOCK_PROGRESS messages keep the client's progress deadline from running out while
the server reads the file, and a client that gets none gives up as before."""

from __future__ import annotations

import time

import pytest

import ftx
from ftx.server import _blocks


def slow_reading(monkeypatch: pytest.MonkeyPatch, seconds_per_read: float) -> None:
    """Make the server's hashing read 1 MiB per ``seconds_per_read`` seconds, as a slow disk
    would, reporting after each read."""
    advance = _blocks.BlockHashing.advance

    def slow(self: _blocks.BlockHashing, _seconds: float) -> bool:
        time.sleep(seconds_per_read)
        return advance(self, 0.0)

    monkeypatch.setattr(_blocks.BlockHashing, "advance", slow)


async def test_progress_keeps_a_slow_cold_read_alive(start_server, tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(b"z" * (6 << 20))  # six reads: 1.2 s, the deadline is 0.5 s
    slow_reading(monkeypatch, 0.2)
    config = ftx.ClientConfig(idle_timeout=0.5)
    async with ftx.connect(*await start_server(tmp_path), config=config) as client:
        blocks = await client.block_list("f")
        assert blocks.size == 6 << 20
        assert [entry.name for entry in await client.list()] == ["f"]  # the connection goes on


async def test_without_progress_the_deadline_cuts_the_same_wait(
    start_server, tmp_path, monkeypatch
):
    (tmp_path / "f").write_bytes(b"z" * (6 << 20))
    slow_reading(monkeypatch, 0.2)
    # The server no longer sees the feature in use (as a server without it would).
    monkeypatch.setattr(_blocks, "BLOCK_PROGRESS_FEATURE", "not-a-feature")
    config = ftx.ClientConfig(idle_timeout=0.5)
    async with ftx.connect(*await start_server(tmp_path), config=config) as client:
        with pytest.raises(ftx.ConnectionLostError, match=r"no progress for 0\.5 seconds"):
            await client.block_list("f")
