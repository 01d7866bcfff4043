"""Issue 15, item 3: the client's real address behind a balancer (PROXY protocol v1 and v2,
docs/protocol.md, section 3.2), read only from the addresses allowed to send it."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import socket
import ssl
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

import ftx
from conftest import SMALL_TEXT, serving
from ftx.errors import RemoteProtocolError
from ftx.server._proxy import read_proxy_header
from ftx.server._proxy_header import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    ProxyHeader,
    encode_v1,
    encode_v2,
    header_length,
    parse_proxy_header,
)

LOOPBACK = "127.0.0.1"
CLIENT = ("203.0.113.7", 40123)
SERVER = ("192.0.2.1", 3890)

# ------------------------------------------------------------------ the sans-IO parser


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 40123 3890\r\n", (1, CLIENT)),
        (b"PROXY TCP6 2001:db8::1 2001:db8::2 5 6\r\n", (1, ("2001:db8::1", 5))),
        (b"PROXY UNKNOWN\r\n", (1, None)),
        (b"PROXY UNKNOWN ff 1.2.3.4 1 2\r\n", (1, None)),
        (encode_v2(CLIENT, SERVER), (2, CLIENT)),
        (encode_v2(("2001:db8::7", 1), ("2001:db8::8", 2)), (2, ("2001:db8::7", 1))),
        (encode_v2(CLIENT, SERVER, tlvs=b"\x04\x00\x03abc"), (2, CLIENT)),
        (encode_v2(None, SERVER), (2, None)),  # LOCAL: the balancer's own health check
    ],
)
def test_valid_headers(data: bytes, expected: tuple[int, tuple[str, int] | None]) -> None:
    assert header_length(data) == len(data)
    for cut in range(1, min(len(data), 16)):
        assert header_length(data[:cut]) is None
    assert parse_proxy_header(data) == ProxyHeader(expected[0], len(data), expected[1])


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x00\x00\x00\x40\x01", "not a PROXY"),  # an ftx frame
        (b"\x16\x03\x01", "not a PROXY"),  # TLS
        (b"PROXZ", "not a PROXY"),
        (b"PROXY " + b"x" * V1_MAX_LENGTH, "longer than 107"),
        (b"PROXY UNKNOWN\n", "CRLF"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c", "version 3"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c", "command 2"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", "over"),
        (b"\r\n\r\n\x00\r\nQUET", "not a PROXY"),
    ],
)
def test_bad_starts_are_refused_early(data: bytes, error: str) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        header_length(data)


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40123\r\n",
        b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 70000 2\r\n",
        b"PROXY TCP4 203.0.113.07 192.0.2.1 1 2\r\n",
        b"PROXY TCP4  203.0.113.7 192.0.2.1 1 2\r\n",
        b"PROXY UDP4 203.0.113.7 192.0.2.1 1 2\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04abcd",  # too short for two addresses
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x12\x00\x0c" + bytes(12),  # DGRAM
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x41\x00\x00",  # family 4
    ],
)
def test_malformed_headers_are_refused(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_proxy_header(data)


addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(lambda a: str(a))
).flatmap(lambda host: st.tuples(st.just(host), st.integers(0, 65535)))


@given(addresses, st.booleans(), st.binary(max_size=40))
def test_any_encoded_header_parses_back(source: tuple[str, int], v2: bool, rest: bytes) -> None:
    destination = ("::1", 1) if ":" in source[0] else ("127.0.0.1", 1)
    data = encode_v2(source, destination) if v2 else encode_v1(source, destination)
    assert len(data) <= (V2_MAX_LENGTH if v2 else V1_MAX_LENGTH)
    for cut in range(len(data)):
        assert header_length(data[:cut]) in (None, len(data))
    assert header_length(data + rest) == len(data)  # the client's bytes are not taken
    header = parse_proxy_header(data)
    assert header.source == source


@given(st.binary(max_size=300))
def test_any_bytes_give_a_length_or_a_protocol_error(data: bytes) -> None:
    try:
        length = header_length(data)
    except RemoteProtocolError:
        return
    if length is not None and length <= len(data):
        with contextlib.suppress(RemoteProtocolError):
            parse_proxy_header(data[:length])


# ------------------------------------------------------------------ reading from a socket


async def test_the_header_is_read_to_its_last_byte_and_no_further() -> None:
    header = encode_v1(CLIENT, SERVER)
    for pieces in ([header + b"ftx!"], [header[:3], header[3:20], header[20:] + b"ftx!"]):
        a, b = trio.socket.socketpair()
        with a, b:
            reader = trio.SocketStream(a)

            async def write(b: trio.socket.SocketType = b, pieces: list[bytes] = pieces) -> None:
                for piece in pieces:
                    await b.send(piece)
                    await trio.sleep(0.01)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(write)
                with trio.fail_after(5):
                    got = await read_proxy_header(reader)
            assert got.source == CLIENT
            assert await a.recv(100) == b"ftx!"


# ------------------------------------------------------------------ a server behind a balancer


async def client_with_header(port: int, header: bytes, **config: object) -> ftx.Client:
    stream = await trio.open_tcp_stream(LOOPBACK, port)
    await stream.send_all(header)
    return ftx.Client(stream, ftx.ClientConfig(**config))  # type: ignore[arg-type]


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
async def test_the_access_log_names_the_client_the_header_carries(
    served_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, encode
) -> None:
    caplog.set_level(logging.INFO, logger="ftx.access")
    async with serving(served_root, proxy_protocol_from=("127.0.0.0/8",)) as (_server, port):
        with trio.fail_after(20):
            async with await client_with_header(port, encode(CLIENT, SERVER)) as client:
                await client.handshake()
                await client.get("small.txt", tmp_path / "small.txt")
            with trio.fail_after(10):
                while not [r for r in caplog.records if r.name == "ftx.access"]:  # noqa: ASYNC110
                    await trio.sleep(0.01)
    assert (tmp_path / "small.txt").read_bytes() == SMALL_TEXT
    record = next(r for r in caplog.records if r.name == "ftx.access")
    assert record.access["peer"] == "203.0.113.7:40123"  # type: ignore[attr-defined]


async def test_a_balancer_without_a_header_is_refused(
    served_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(served_root, proxy_protocol_from=("127.0.0.1",)) as (_server, port):
        with trio.fail_after(20):
            with pytest.raises((ftx.ConnectionLostError, ftx.ProtocolError, OSError)):
                async with ftx.connect(LOOPBACK, port) as client:
                    await client.get("small.txt", tmp_path / "small.txt")
            # ... and the server goes on serving the others.
            async with await client_with_header(port, encode_v2(CLIENT, SERVER)) as client:
                await client.handshake()
                await client.get("small.txt", tmp_path / "small.txt")
    assert "refused: not a PROXY protocol header" in caplog.text


async def test_a_header_from_an_address_not_allowed_is_refused(
    served_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(served_root, proxy_protocol_from=("10.0.0.0/8",)) as (_server, port):
        with trio.fail_after(20):
            for header in (encode_v1(CLIENT, SERVER), encode_v2(CLIENT, SERVER)):
                client = await client_with_header(port, header)
                with pytest.raises((ftx.ConnectionLostError, ftx.ProtocolError)):
                    async with client:
                        await client.handshake()
            # A client from there that sends no header is served as always.
            async with ftx.connect(LOOPBACK, port) as plain:
                await plain.get("small.txt", tmp_path / "small.txt")
    assert caplog.text.count("a PROXY header from an address not allowed") == 2
    assert "203.0.113.7" not in caplog.text


async def test_a_wrong_token_is_logged_with_the_carried_address(
    served_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options = {"proxy_protocol_from": ("127.0.0.1/32",), "token": "s" * 32}
    async with serving(served_root, **options) as (_server, port):
        with trio.fail_after(20):
            client = await client_with_header(port, encode_v2(CLIENT, SERVER), token="t" * 32)
            with pytest.raises(ftx.FtxError):
                async with client:
                    await client.handshake()
            with trio.fail_after(10):
                while "authentication failed" not in caplog.text:  # noqa: ASYNC110
                    await trio.sleep(0.01)
    assert "203.0.113.7:40123: authentication failed" in caplog.text


async def test_a_header_that_never_ends_is_bounded_by_the_handshake_deadline(
    served_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ftx.server")
    options = {"proxy_protocol_from": ("127.0.0.1",), "handshake_timeout": 0.3}
    async with serving(served_root, **options) as (_server, port):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            await stream.send_all(b"PROXY TCP4 1.2")
            assert await stream.receive_some() == b""  # closed by the server
            await stream.aclose()
    assert "no PROXY header within 0.3 s" in caplog.text


def test_networks_are_checked() -> None:
    config = ftx.ServerConfig(proxy_protocol_from=("10.1.2.3/8", "::1"))  # type: ignore[arg-type]
    assert [str(n) for n in config.proxy_protocol_from] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="nope"):
        ftx.ServerConfig(proxy_protocol_from=("nope",))  # type: ignore[arg-type]


# ------------------------------------------------------------------ the fuzz target, briefly


def fuzz_runner() -> ModuleType:
    """fuzz/fuzz_decoders.py, loaded once (as tests/protocol/test_fuzz.py loads it)."""
    if "fuzz_decoders" not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_decoders.py"
        spec = importlib.util.spec_from_file_location("fuzz_decoders", path)
        assert spec is not None, path
        assert spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while being made
        spec.loader.exec_module(module)
    return sys.modules["fuzz_decoders"]


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 2**32 - 1))
def test_the_fuzz_target_finds_nothing_in_mutated_headers(rng, seed: int) -> None:
    runner = fuzz_runner()
    payloads = runner.mutate_payloads(runner.proxy_seeds(), rng, runner.proxy_seeds())
    _, finding = runner.run_case(runner.TARGETS["proxy"], runner.Case(payloads, seed), True)
    assert finding is None, f"{finding.oracle}: {finding.detail}"


async def test_the_balancers_own_health_checks_are_not_logged_as_lost(
    served_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ftx.server")
    async with serving(served_root, proxy_protocol_from=("127.0.0.1",)) as (server, port):
        with trio.fail_after(10):
            for header in (encode_v2(None, SERVER), encode_v2(CLIENT, SERVER)):
                async with await client_with_header(port, header) as client:
                    await client.handshake()
                    # Reset, as HAProxy ends its checks.
                    sock = client._channel.transport_stream.socket  # type: ignore[attr-defined]
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                while server.connections:  # noqa: ASYNC110 - bounded
                    await trio.sleep(0.01)
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    assert len(lost) == 1, lost
    assert lost[0].startswith("203.0.113.7:40123: ")  # the real client's, not the check's


async def test_the_header_comes_before_tls(
    served_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(LOOPBACK).configure_cert(context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    caplog.set_level(logging.INFO, logger="ftx.access")
    options = {"proxy_protocol_from": ("127.0.0.1",), "ssl_context": context}
    async with serving(served_root, **options) as (_server, port):
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            await stream.send_all(encode_v2(CLIENT, SERVER))
            tls = trio.SSLStream(stream, client_context, server_hostname=LOOPBACK)
            async with ftx.Client(tls) as client:
                await client.handshake()
                await client.get("small.txt", tmp_path / "small.txt")
            while not [r for r in caplog.records if r.name == "ftx.access"]:  # noqa: ASYNC110
                await trio.sleep(0.01)
    assert (tmp_path / "small.txt").read_bytes() == SMALL_TEXT
    record = next(r for r in caplog.records if r.name == "ftx.access")
    assert record.access["peer"] == "203.0.113.7:40123"  # type: ignore[attr-defined]


async def test_the_header_counts_against_the_handshake_deadline(served_root: Path) -> None:
    options = {"proxy_protocol_from": ("127.0.0.1",), "handshake_timeout": 1.0}
    async with serving(served_root, **options) as (_server, port):
        with trio.fail_after(10):
            stream = await trio.open_tcp_stream(LOOPBACK, port)
            began = trio.current_time()
            await trio.sleep(0.7)
            await stream.send_all(encode_v2(CLIENT, SERVER))  # then no HELLO
            while await stream.receive_some():
                pass
            elapsed = trio.current_time() - began
            await stream.aclose()
    assert 0.95 < elapsed < 1.5, elapsed  # one deadline from the connection (two: 1.7 s)
