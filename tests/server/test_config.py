"""The server's settings (:class:`ftx.ServerConfig`), and a session run from them alone.

A :class:`~ftx.server._session.Session` is given the settings and the resources that the
server's connections share, never the server: one is run here over an in-memory stream.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import trio
import trio.testing

import ftx
import ftx.server
from ftx.framing import FramedChannel
from ftx.fs import ServedRoot
from ftx.protocol import ClientProtocol, ErrorCode
from ftx.protocol.messages import (
    Data,
    Entry,
    EntryType,
    Error,
    FileEnd,
    FileHeader,
    Get,
    ListDir,
    ListEnd,
    ListEntries,
    Message,
)
from ftx.server._resources import ServerResources
from ftx.server._session import Session

TOKEN = "a token of more than sixteen bytes"

# ----------------------------------------------------------------------------- ServerConfig


def test_the_defaults_are_those_documented() -> None:
    config = ftx.ServerConfig()
    assert (config.writable, config.allow_overwrite, config.max_upload_size) == (False, False, None)
    assert config.chunk_size == ftx.server.DEFAULT_CHUNK_SIZE == 512 * 1024
    assert config.max_frame_size == 1 << 20
    assert (config.max_connections, config.handshake_timeout, config.idle_timeout) == (
        100,
        10.0,
        60.0,
    )
    assert (config.ssl_context, config.token) == (None, None)


def test_it_is_exported_from_ftx_and_ftx_server() -> None:
    assert ftx.ServerConfig is ftx.server.ServerConfig
    assert "ServerConfig" in ftx.__all__
    assert "ServerConfig" in ftx.server.__all__


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"max_connections": 0}, "max_connections must be"),
        ({"max_connections": -5}, "max_connections must be"),
        ({"handshake_timeout": 0}, "handshake_timeout must be"),
        ({"handshake_timeout": -1.0}, "handshake_timeout must be"),
        ({"handshake_timeout": math.nan}, "handshake_timeout must be"),
        ({"idle_timeout": 0.0}, "idle_timeout must be"),
        ({"idle_timeout": -1}, "idle_timeout must be"),
        ({"idle_timeout": math.nan}, "idle_timeout must be"),
        ({"chunk_size": 0}, "chunk_size must be"),
        ({"chunk_size": -1}, "chunk_size must be"),
        ({"max_frame_size": -1}, "max_frame_size must be"),
        ({"max_frame_size": 1000}, "max_frame_size must be"),  # below the protocol's minimum
        ({"max_frame_size": 1 << 32}, "max_frame_size must be"),
        ({"writable": True, "max_upload_size": -1}, "max_upload_size must be"),
        ({"allow_overwrite": True}, "need writable=True"),
        ({"max_upload_size": 10}, "need writable=True"),
        ({"token": "short"}, "at least 16 random bytes"),
        ({"token": b""}, "at least 16 random bytes"),
    ],
)
def test_each_bad_value_raises_value_error(settings: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ftx.ServerConfig(**settings)  # type: ignore[arg-type]


def test_good_values_are_kept() -> None:
    config = ftx.ServerConfig(
        writable=True,
        allow_overwrite=True,
        max_upload_size=0,
        chunk_size=1,
        max_frame_size=64 * 1024,
        max_connections=1,
        handshake_timeout=math.inf,
        idle_timeout=0.001,
        token=TOKEN.encode(),
    )
    assert config.max_upload_size == 0
    assert config.handshake_timeout == math.inf


def test_it_is_frozen_and_keyword_only() -> None:
    config = ftx.ServerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.writable = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        ftx.ServerConfig(True)  # type: ignore[misc]
    # Settings are changed by making a new config, checked again.
    assert dataclasses.replace(config, max_connections=3).max_connections == 3
    with pytest.raises(ValueError, match="max_connections"):
        dataclasses.replace(config, max_connections=0)


def test_the_token_is_kept_out_of_the_repr() -> None:
    config = ftx.ServerConfig(token=TOKEN)
    assert TOKEN not in repr(config)
    assert "max_connections=100" in repr(config)


def test_a_server_made_with_a_token_requires_it(tmp_path: Path) -> None:
    server = ftx.Server(tmp_path, ftx.ServerConfig(token=TOKEN))
    try:
        assert server.requires_token
        assert server.config.token == TOKEN
    finally:
        server.root.close()
    plain = ftx.Server(tmp_path)
    try:
        assert not plain.requires_token
        assert plain.config == ftx.ServerConfig()
    finally:
        plain.root.close()


# ------------------------------------------------------------------------ a bare session


class Client:
    """A client speaking through the protocol's state machine over an in-memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.channel = FramedChannel(stream)
        self.protocol = ClientProtocol(agent="test")

    async def send(self, message: Message) -> None:
        await self.channel.send_frames(self.protocol.send(message))

    async def receive(self) -> Message:
        while True:
            message = self.protocol.receive(await self.channel.receive())
            if message is not None:
                return message


async def test_a_session_serves_a_memory_stream_from_config_and_resources(
    tmp_path: Path,
) -> None:
    (tmp_path / "hello.txt").write_bytes(b"hello, memory\n" * 1000)
    (tmp_path / "sub").mkdir()
    config = ftx.ServerConfig(chunk_size=4096)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    with ServedRoot(tmp_path) as root, trio.fail_after(10):
        session = Session(config, ServerResources(root, config), server_stream, "memory")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            client = Client(client_stream)
            await client.send(client.protocol.local_hello)
            hello = await client.receive()
            assert hello == client.protocol.peer_hello

            await client.send(Get(1, "hello.txt"))
            header = await client.receive()
            assert isinstance(header, FileHeader)
            assert header.size == 14_000
            content = b""
            while isinstance(message := await client.receive(), Data):
                assert len(message.data) <= 4096  # the config's chunk size
                content += bytes(message.data)
            assert isinstance(message, FileEnd)
            assert content == b"hello, memory\n" * 1000

            await client.send(ListDir(2, ""))
            entries = await client.receive()
            assert isinstance(entries, ListEntries)
            assert sorted((e.name, e.type) for e in entries.entries) == [
                ("hello.txt", EntryType.FILE),
                ("sub", EntryType.DIRECTORY),
            ]
            assert all(isinstance(e, Entry) for e in entries.entries)
            assert await client.receive() == ListEnd(2, 2)

            await client.send(Get(3, "../outside"))
            refused = await client.receive()
            assert isinstance(refused, Error)
            assert (refused.request_id, refused.code) == (3, ErrorCode.OUTSIDE_ROOT)

            await client.channel.send_eof()
        await session.aclose()
