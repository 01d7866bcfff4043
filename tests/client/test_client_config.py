"""ftx.ClientConfig: one checked object for how a client connection behaves."""

from __future__ import annotations

import dataclasses
import math

import pytest
import trio
import trio.testing

import ftx
import ftx.client
from ftx._net import DEFAULT_IDLE_TIMEOUT
from ftx.client._connection import MAX_DATA_FRAME_SIZE
from ftx.framing import DEFAULT_MAX_FRAME_SIZE, FRAME_SIZE_LIMIT
from ftx.protocol import MIN_FRAME_SIZE

TOKEN = "a token of 32 bytes, long enough"


def test_defaults_are_those_of_the_connection() -> None:
    config = ftx.ClientConfig()
    assert config.max_frame_size == DEFAULT_MAX_FRAME_SIZE
    assert config.idle_timeout == DEFAULT_IDLE_TIMEOUT
    assert config.token is None
    assert config.digest == "fast"
    assert ftx.ClientConfig is ftx.client.ClientConfig
    assert "ClientConfig" in ftx.__all__
    assert "ClientConfig" in ftx.client.__all__


def test_good_values_are_kept() -> None:
    config = ftx.ClientConfig(
        max_frame_size=MIN_FRAME_SIZE, idle_timeout=math.inf, token=TOKEN, digest="sha256"
    )
    assert (config.max_frame_size, config.idle_timeout) == (MIN_FRAME_SIZE, math.inf)
    assert (config.token, config.digest) == (TOKEN, "sha256")
    assert ftx.ClientConfig(max_frame_size=FRAME_SIZE_LIMIT).max_frame_size == FRAME_SIZE_LIMIT
    assert ftx.ClientConfig(token=TOKEN.encode()).token == TOKEN.encode()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"digest": "md5"}, "not 'md5'"),
        ({"digest": ""}, "digest must be one of"),
        ({"token": "too short"}, "at least 16"),
        ({"token": b""}, "at least 16"),
        ({"max_frame_size": MIN_FRAME_SIZE - 1}, "max_frame_size must be between"),
        ({"max_frame_size": FRAME_SIZE_LIMIT + 1}, "max_frame_size must be between"),
        ({"max_frame_size": -1}, "max_frame_size must be between"),
        ({"idle_timeout": 0}, "idle_timeout must be a positive number"),
        ({"idle_timeout": -1.0}, "idle_timeout must be a positive number"),
        ({"idle_timeout": math.nan}, "idle_timeout must be a positive number"),
    ],
)
async def test_a_bad_value_fails_before_connecting(
    settings: dict[str, object], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_connection(*args: object, **kwargs: object) -> trio.SocketStream:
        raise AssertionError("connected with a bad configuration")

    monkeypatch.setattr(trio, "open_tcp_stream", no_connection)
    with pytest.raises(ValueError, match=message):
        async with ftx.connect("127.0.0.1", ftx.DEFAULT_PORT, ftx.ClientConfig(**settings)):  # type: ignore[arg-type]
            pass


def test_it_is_frozen_keyword_only_and_keeps_the_token_out_of_its_repr() -> None:
    config = ftx.ClientConfig(token=TOKEN)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.digest = "sha256"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ftx.ClientConfig(DEFAULT_MAX_FRAME_SIZE)  # type: ignore[misc]
    assert TOKEN not in repr(config)
    assert dataclasses.replace(config, digest="blake3").token == TOKEN


async def test_the_client_announces_the_configured_frame_limit() -> None:
    client_stream, _server_stream = trio.testing.memory_stream_pair()
    config = ftx.ClientConfig(max_frame_size=MIN_FRAME_SIZE + 1)
    async with ftx.Client(client_stream, config) as client:
        assert client._protocol.local_hello.max_frame_size == MIN_FRAME_SIZE + 1
        # The channel takes DATA frames up to the DATA limit (large-data, docs/protocol.md
        # section 20); the protocol holds every other frame to the configured limit.
        assert client._protocol.local_hello.max_data_frame_size == MAX_DATA_FRAME_SIZE
        assert client._channel.max_frame_size == MAX_DATA_FRAME_SIZE
