"""The feature ``large-data`` (docs/protocol.md, section 20): DATA frames up to the receiver's
``max_data_frame_size`` when both HELLOs list it; every other frame keeps ``max_frame_size``;
peers without the feature (or without the member) keep the version 1 limits.
"""

from __future__ import annotations

import json

import pytest

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol import LARGE_DATA_FEATURE, ClientProtocol, ServerProtocol
from ftx.protocol.messages import (
    Data,
    FileHeader,
    Get,
    Hello,
    Kind,
    decode_message,
    encode_message,
)

MiB = 1 << 20
LARGE = frozenset({LARGE_DATA_FEATURE})


def join(parts: tuple[Buffer, ...]) -> bytes:
    return b"".join(bytes(part) for part in parts)


def shaken(
    *, client_features: frozenset[str], server_features: frozenset[str], data_limit: int | None
) -> tuple[ClientProtocol, ServerProtocol]:
    client = ClientProtocol(features=client_features, max_data_frame_size=data_limit)
    server = ServerProtocol(features=server_features)
    server.receive(join(client.send(client.local_hello)))
    client.receive(join(server.send(server.hello_reply())))
    get = Get(client.new_request_id(), "f", digest=None)
    server.receive(join(client.send(get)))
    header = FileHeader(get.request_id, 8 * MiB, 0, "1" * 32, 0, 0o644, None)
    client.receive(join(server.send(header)))
    return client, server


def test_both_listing_it_lets_data_frames_grow_to_the_receivers_data_limit() -> None:
    client, server = shaken(client_features=LARGE, server_features=LARGE, data_limit=8 * MiB)
    assert server.peer_max_data_frame_size == 8 * MiB
    payload = join(server.send(Data(bytes(4 * MiB))))
    assert isinstance(client.receive(payload), Data)
    with pytest.raises(LocalProtocolError):
        server.send(Data(bytes(8 * MiB)))  # kind byte + 8 MiB: one byte over


@pytest.mark.parametrize(
    ("client_features", "server_features", "data_limit"),
    [
        pytest.param(LARGE, frozenset(), 8 * MiB, id="an old server"),
        pytest.param(frozenset(), LARGE, None, id="an old client"),
        pytest.param(LARGE, LARGE, None, id="no data limit announced"),
    ],
)
def test_without_the_feature_on_both_sides_data_keeps_the_frame_limit(
    client_features: frozenset[str], server_features: frozenset[str], data_limit: int | None
) -> None:
    client, server = shaken(
        client_features=client_features, server_features=server_features, data_limit=data_limit
    )
    assert server.peer_max_data_frame_size == 1 * MiB
    with pytest.raises(LocalProtocolError):
        server.send(Data(bytes(1 * MiB)))
    payload = bytes([Kind.DATA]) + bytes(2 * MiB)
    with pytest.raises(RemoteProtocolError):
        client.receive(payload)  # what a server that ignored the limit would send


def test_control_frames_keep_the_frame_limit() -> None:
    client, _ = shaken(client_features=LARGE, server_features=LARGE, data_limit=8 * MiB)
    body = json.dumps({"id": 1, "code": "internal", "message": "x" * (2 * MiB)}).encode()
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        client.receive(bytes([Kind.ERROR]) + body)


def test_the_hello_member_is_optional_never_null_and_at_least_the_minimum() -> None:
    plain = Hello((1,), frozenset(), MiB, "a")
    assert b"max_data_frame_size" not in join(encode_message(plain))
    large = Hello((1,), LARGE, MiB, "a", 8 * MiB)
    assert decode_message(join(encode_message(large))) == large
    base = {"protocol": "ftx", "versions": [1], "features": [], "max_frame_size": MiB}
    with pytest.raises(RemoteProtocolError):
        decode_message(
            bytes([Kind.HELLO]) + json.dumps({**base, "max_data_frame_size": None}).encode()
        )
    small = Hello((1,), LARGE, MiB, "s", 1000)
    client = ClientProtocol()
    client.send(client.local_hello)
    with pytest.raises(RemoteProtocolError, match="below the minimum"):
        client.receive(join(encode_message(small)))
