"""Shared-token authentication (feature ``auth-hmac-sha256``): the proofs, the sans-IO exchange
in both state machines, every way it can go wrong, then real servers and ``ftx`` commands.

The token must never cross the wire (a recording relay checks), comparisons are constant-time,
failures are logged and slowed down, and a client with a token trusts only a server that proves
it knows it too. Every wait bounded.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

import ftx
from conftest import SMALL_TEXT, serving
from ftx.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol import ClientProtocol, ErrorCode, ServerProtocol, _auth
from ftx.protocol._auth import (
    AUTH_FEATURE,
    ClientAuthenticator,
    ServerAuthenticator,
    client_proof,
    load_token,
    server_proof,
)
from ftx.protocol.messages import (
    Auth,
    AuthOk,
    Challenge,
    Error,
    Get,
    Hello,
    Kind,
    ListDir,
    Message,
    decode_message,
    encode_message,
)
from ftx.server._session import AUTH_FAILURE_DELAY

TOKEN = "correct horse battery staple"
OTHER = "incorrect horse battery staple"
LOOPBACK = "127.0.0.1"
SERVER_NONCE = bytes(range(32))
CLIENT_NONCE = bytes(range(32, 64))


def join(parts: tuple[Buffer, ...]) -> bytes:
    return b"".join(bytes(part) for part in parts)


def raw(message: Message) -> bytes:
    return join(encode_message(message))


# ------------------------------------------------------------------------------ the proofs


def test_the_proofs_are_the_documented_hmacs() -> None:
    """docs/protocol.md §6.1 gives this vector: another implementation can check itself."""
    ns, nc = SERVER_NONCE.hex(), CLIENT_NONCE.hex()
    key = TOKEN.encode()
    assert client_proof(key, ns, nc) == (
        "5ff9e9b48074f046740cb07f202f65c0cc78f93d30f086b8bd3e8f457c6a1591"
    )
    assert server_proof(key, ns, nc) == (
        "14a4d265669cf8abb28fd624df54e7aba75fc1450d030a8fe52dc8e1fc7e850d"
    )
    independent = hmac.new(key, b"ftx-auth-v1 client\x00" + SERVER_NONCE + CLIENT_NONCE, "sha256")
    assert client_proof(key, ns, nc) == independent.hexdigest()


def test_nonces_are_fresh_and_random() -> None:
    challenges = {ServerAuthenticator(TOKEN).challenge().nonce for _ in range(50)}
    answers = {ClientAuthenticator(TOKEN).respond(Challenge("00" * 32)).nonce for _ in range(50)}
    assert len(challenges) == len(answers) == 50
    assert all(len(nonce) == 64 for nonce in challenges | answers)


@pytest.mark.parametrize("token", ["", "short", "fifteen chars!!"])
def test_short_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        ServerAuthenticator(token)
    with pytest.raises(ValueError, match="at least 16"):
        ClientAuthenticator(token)


def test_proofs_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    original = hmac.compare_digest

    def compare_digest(a: str, b: str) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(_auth.hmac, "compare_digest", compare_digest)
    server = ServerAuthenticator(TOKEN, nonce=SERVER_NONCE)
    client = ClientAuthenticator(TOKEN, nonce=CLIENT_NONCE)
    ok = server.verify(client.respond(server.challenge()))
    assert ok is not None
    client.verify(ok)
    assert len(calls) == 2  # the server's check of the client, the client's check of the server


# ------------------------------------------------------------ the exchange, sans-IO


def with_token(
    client_token: str | None, server_token: str | None
) -> tuple[ClientProtocol, ServerProtocol]:
    client = ClientProtocol(auth=ClientAuthenticator(client_token) if client_token else None)
    server = ServerProtocol(auth=ServerAuthenticator(server_token) if server_token else None)
    return client, server


def hellos(client: ClientProtocol, server: ServerProtocol) -> None:
    assert server.receive(join(client.send(client.local_hello))) == client.local_hello
    reply = server.hello_reply()
    assert client.receive(join(server.send(reply))) == reply


def exchange(client: ClientProtocol, server: ServerProtocol) -> Auth:
    """The whole token exchange; returns the client's AUTH."""
    hellos(client, server)
    challenge = server.auth.challenge()
    assert client.receive(join(server.send(challenge))) == challenge
    answer = client.auth_answer()
    assert server.receive(join(client.send(answer))) == answer
    assert not server.auth.rejected
    ok = server.auth.ok()
    assert client.receive(join(server.send(ok))) == ok
    return answer


def test_a_full_exchange_then_requests() -> None:
    client, server = with_token(TOKEN, TOKEN)
    assert AUTH_FEATURE in client.local_hello.features
    assert AUTH_FEATURE in server.local_hello.features
    assert not client.authenticated
    exchange(client, server)
    assert client.authenticated
    assert server.auth.done
    request = ListDir(1, "")
    assert server.receive(join(client.send(request))) == request


def test_without_tokens_nothing_changes() -> None:
    client, server = with_token(None, None)
    assert AUTH_FEATURE not in client.local_hello.features | server.local_hello.features
    hellos(client, server)
    assert client.authenticated
    assert server.auth.done
    request = Get(1, "f")
    assert server.receive(join(client.send(request))) == request


def test_a_wrong_token_is_rejected_and_the_server_does_not_prove_itself() -> None:
    client, server = with_token(OTHER, TOKEN)
    hellos(client, server)
    client.receive(join(server.send(server.auth.challenge())))
    server.receive(join(client.send(client.auth_answer())))
    assert server.auth.rejected
    with pytest.raises(LocalProtocolError):
        server.auth.ok()  # no proof for a client that failed: no oracle
    refusal = Error(None, ErrorCode.UNAUTHORIZED, "wrong token")
    with pytest.raises(LocalProtocolError):
        server.send(ListDir(1, ""))  # nothing but the refusal may follow
    assert client.receive(join(server.send(refusal))) == refusal


def test_a_client_without_a_token_is_refused_before_hello() -> None:
    client, server = with_token(None, TOKEN)
    server.receive(join(client.send(client.local_hello)))
    assert server.auth.refused
    with pytest.raises(LocalProtocolError):
        server.auth.challenge()


def test_a_client_with_a_token_refuses_a_server_that_does_not_ask_for_it() -> None:
    client, server = with_token(TOKEN, None)
    server.receive(join(client.send(client.local_hello)))
    with pytest.raises(AuthenticationError, match="does not ask for a token"):
        client.receive(join(server.send(server.hello_reply())))


def test_an_impostor_that_accepts_any_answer_is_caught() -> None:
    """A server without the token can send a CHALLENGE and an AUTH_OK, but not a right proof."""
    impostor_hello = Hello((1,), frozenset({AUTH_FEATURE}))
    # Any guess, even the client's own proof reflected back, is refused.
    reflected = client_proof(TOKEN.encode(), "ab" * 32, CLIENT_NONCE.hex())
    for guess in ("00" * 32, reflected):
        fresh = ClientProtocol(auth=ClientAuthenticator(TOKEN, nonce=CLIENT_NONCE))
        fresh.send(fresh.local_hello)
        fresh.receive(raw(impostor_hello))
        fresh.receive(raw(Challenge("ab" * 32)))
        fresh.send(fresh.auth_answer())
        with pytest.raises(AuthenticationError, match="does not know the token"):
            fresh.receive(raw(AuthOk(guess)))
        assert not fresh.authenticated
        with pytest.raises(LocalProtocolError, match="authenticate first"):
            fresh.send(Get(1, "f"))


def test_a_recorded_answer_cannot_be_replayed() -> None:
    client, server = with_token(TOKEN, TOKEN)
    recorded = exchange(client, server)
    replayed_at = ServerProtocol(auth=ServerAuthenticator(TOKEN))
    attacker = ClientProtocol(auth=ClientAuthenticator(TOKEN))
    replayed_at.receive(join(attacker.send(attacker.local_hello)))
    replayed_at.send(replayed_at.hello_reply())
    replayed_at.send(replayed_at.auth.challenge())  # a fresh nonce
    replayed_at.receive(raw(recorded))
    assert replayed_at.auth.rejected


def test_a_server_proof_does_not_pass_for_a_client_proof() -> None:
    server = ServerAuthenticator(TOKEN, nonce=SERVER_NONCE)
    nonce = CLIENT_NONCE.hex()
    reflected = server_proof(TOKEN.encode(), SERVER_NONCE.hex(), nonce)
    assert server.verify(Auth(nonce, reflected)) is None
    assert server.verify(Auth(nonce, client_proof(TOKEN.encode(), SERVER_NONCE.hex(), nonce)))


@pytest.mark.parametrize(
    "early",
    [Get(1, "f"), ListDir(1, ""), Hello((1,))],
    ids=["GET", "LIST", "second HELLO"],
)
def test_nothing_but_auth_is_accepted_before_the_exchange_ends(early: Message) -> None:
    client, server = with_token(TOKEN, TOKEN)
    hellos(client, server)
    server.send(server.auth.challenge())
    with pytest.raises(RemoteProtocolError):
        server.receive(raw(early))


def test_auth_messages_out_of_turn_are_violations() -> None:
    client, server = with_token(None, None)
    hellos(client, server)
    with pytest.raises(RemoteProtocolError):
        server.receive(raw(Auth("00" * 32, "00" * 32)))
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(Challenge("00" * 32)))
    with pytest.raises(LocalProtocolError):
        server.send(Challenge("00" * 32))
    client, server = with_token(TOKEN, TOKEN)
    hellos(client, server)
    with pytest.raises(RemoteProtocolError):
        client.receive(raw(AuthOk("00" * 32)))  # before the CHALLENGE
    with pytest.raises(LocalProtocolError):
        server.send(ListDir(1, ""))  # answers before the exchange
    with pytest.raises(LocalProtocolError):
        server.send(Challenge("11" * 32))  # not the challenge made


def test_auth_messages_round_trip_and_have_their_kinds() -> None:
    nonce, proof = "0123456789abcdef" * 4, "fedcba9876543210" * 4
    for message, kind in [
        (Challenge(nonce), Kind.CHALLENGE),
        (Auth(nonce, proof), Kind.AUTH),
        (AuthOk(proof), Kind.AUTH_OK),
    ]:
        payload = raw(message)
        assert payload[0] == kind
        assert decode_message(payload) == message
    assert (Kind.CHALLENGE, Kind.AUTH, Kind.AUTH_OK) == (0x03, 0x04, 0x05)


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"nonce":"' + b"AB" * 32 + b'"}',
        b'{"nonce":"' + b"ab" * 31 + b'"}',
        b'{"nonce":"' + b"ab" * 33 + b'"}',
        b'{"nonce":"' + b"zz" * 32 + b'"}',
        b'{"nonce":null}',
        b'{"nonce":12}',
    ],
)
def test_malformed_nonces_are_violations(body: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_message(bytes([Kind.CHALLENGE]) + body)


# ---------------------------------------------------------------------------- the token


def test_tokens_come_from_a_file_or_ftx_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert load_token(str(path), {}) == TOKEN.encode()
    assert load_token(str(path), {"FTX_TOKEN": OTHER}) == TOKEN.encode()  # the file wins
    assert load_token(None, {"FTX_TOKEN": OTHER}) == OTHER.encode()
    assert load_token(None, {"FTX_TOKEN": "  "}) is None
    assert load_token(None, {}) is None
    path.write_text("too short\n")
    with pytest.raises(ValueError, match="at least 16"):
        load_token(str(path), {})
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_token(str(path), {})


# -------------------------------------------------------------------- real servers


async def test_the_right_token_gets_files(served_root: Path, tmp_path: Path) -> None:
    async with serving(served_root, token=TOKEN) as (server, port):
        assert server.requires_token
        with trio.fail_after(10):
            async with ftx.connect(LOOPBACK, port, ftx.ClientConfig(token=TOKEN)) as client:
                await client.get("small.txt", tmp_path / "small.txt")
                assert await client.list("sub")
    assert (tmp_path / "small.txt").read_bytes() == SMALL_TEXT


async def test_no_token_is_refused_at_once(served_root: Path) -> None:
    async with serving(served_root, token=TOKEN) as (_server, port):
        start = trio.current_time()
        with trio.fail_after(10), pytest.raises(ftx.RemoteError) as refused:
            async with ftx.connect(LOOPBACK, port):
                pass
    assert refused.value.code == "unauthorized"
    assert "requires a token" in refused.value.message
    assert trio.current_time() - start < AUTH_FAILURE_DELAY


async def test_a_wrong_token_is_refused_slowly_and_logged(
    served_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ftx.server")
    async with serving(served_root, token=TOKEN) as (_server, port):
        start = trio.current_time()
        with trio.fail_after(10), pytest.raises(ftx.RemoteError) as refused:
            async with ftx.connect(LOOPBACK, port, ftx.ClientConfig(token=OTHER)):
                pass
        elapsed = trio.current_time() - start
    assert refused.value.code == "unauthorized"
    assert elapsed >= AUTH_FAILURE_DELAY
    assert any("authentication failed" in r.getMessage() for r in caplog.records)


async def test_a_client_with_a_token_will_not_use_a_server_without_one(served_root: Path) -> None:
    async with serving(served_root) as (_server, port):
        with trio.fail_after(10), pytest.raises(AuthenticationError, match="does not ask"):
            async with ftx.connect(LOOPBACK, port, ftx.ClientConfig(token=TOKEN)):
                pass


async def test_the_handshake_deadline_covers_the_exchange(served_root: Path) -> None:
    """A client that offers the feature and then never answers the CHALLENGE is cut off."""
    async with serving(served_root, token=TOKEN, handshake_timeout=0.5) as (server, port):
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        async with stream:
            hello = Hello((1,), frozenset({AUTH_FEATURE}))
            await stream.send_all(len(raw(hello)).to_bytes(4, "big") + raw(hello))
            received = bytearray()
            with trio.fail_after(5):
                while data := await stream.receive_some(65536):
                    received += data
        assert server.connections == 0
    assert b'"code":"timeout"' in received


async def test_the_token_never_crosses_the_wire(served_root: Path, tmp_path: Path) -> None:
    recorded = bytearray()

    async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                recorded.extend(data)
                await sink.send_all(data)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with serving(served_root, token=TOKEN) as (_server, port):

        async def relay(client: trio.SocketStream) -> None:
            upstream = await trio.open_tcp_stream(LOOPBACK, port)
            async with client, upstream, trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, upstream)
                nursery.start_soon(pump, upstream, client)

        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, relay, 0, host=LOOPBACK))
            relay_port = listeners[0].socket.getsockname()[1]
            with trio.fail_after(10):
                async with ftx.connect(
                    LOOPBACK, relay_port, ftx.ClientConfig(token=TOKEN)
                ) as client:
                    await client.get("small.txt", tmp_path / "small.txt")
            nursery.cancel_scope.cancel()
    assert b"AUTH" not in recorded  # (the kinds are bytes, not names)
    assert SMALL_TEXT in recorded  # the recording works: the file went through in clear
    for form in (
        TOKEN.encode(),
        TOKEN.encode().hex().encode(),
        hashlib.sha256(TOKEN.encode()).hexdigest().encode(),
    ):
        assert form not in recorded


# -------------------------------------------------------------------------- command line


def ftx_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftx", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "FTX_TOKEN": "", **(env or {})},
    )


def test_serve_and_get_with_a_token(served_root: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)  # readable by others: ftx serve warns
    out = tmp_path / "out"
    out.mkdir()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "ftx", "serve", str(served_root), "--host", LOOPBACK]
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [*command, "--port", "0", "--token-file", str(token_file)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "FTX_TOKEN": ""},
        )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline(), process.stdout.readline()]
        address = f"{LOOPBACK}:{banner[0].rsplit(':', 1)[1].strip()}"
        assert f"--token-file {token_file}" in banner[1]
        good = ftx_cli("get", "--token-file", str(token_file), address, "small.txt", cwd=out)
        assert good.returncode == 0, good.stderr
        assert (out / "small.txt").read_bytes() == SMALL_TEXT
        from_env = ftx_cli("ls", address, env={"FTX_TOKEN": TOKEN}, cwd=out)
        assert from_env.returncode == 0, from_env.stderr
        none = ftx_cli("ls", address, cwd=out)
        assert none.returncode == 5
        assert "requires a token" in none.stderr
        assert none.stderr.count("--token-file") == 1, none.stderr  # the advice, once
        wrong = ftx_cli("ls", address, env={"FTX_TOKEN": OTHER}, cwd=out)
        assert wrong.returncode == 5
        assert "wrong token (check the token)" in wrong.stderr
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stdout is not None:
            process.stdout.close()
    text = log.read_text()
    assert "can be read by others" in text
    assert "a token without TLS" in text
    assert "authentication failed" in text
    assert TOKEN not in text


def test_a_token_is_never_taken_from_the_command_line(tmp_path: Path) -> None:
    result = ftx_cli("ls", "--token", TOKEN, f"{LOOPBACK}:1", cwd=tmp_path)
    assert result.returncode == 2  # there is no such option


@pytest.mark.parametrize("command", ["serve", "ls"])
def test_a_short_token_is_a_usage_error(tmp_path: Path, command: str) -> None:
    args = [str(tmp_path)] if command == "serve" else [f"{LOOPBACK}:1"]
    result = ftx_cli(command, *args, env={"FTX_TOKEN": "short"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "at least 16" in result.stderr
