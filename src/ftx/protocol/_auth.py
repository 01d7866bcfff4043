"""Shared-token authentication, by challenge and response (feature ``auth-hmac-sha256``). Sans-IO.

Both sides know a token; it never crosses the wire. After the HELLOs, the server sends a random
32-byte nonce (CHALLENGE), the client answers with its own nonce and a proof (AUTH), and the
server, once the proof checks out, proves in turn that it knows the token too (AUTH_OK)::

    client proof = HMAC-SHA256(token, "ftx-auth-v1 client" 0x00 server_nonce client_nonce)
    server proof = HMAC-SHA256(token, "ftx-auth-v1 server" 0x00 server_nonce client_nonce)

The two labels keep one side's proof from ever being replayed as the other's; the server's fresh
nonce keeps an old client proof from being replayed at all; the client's nonce keeps a server
from choosing everything that is signed. Proofs are compared with :func:`hmac.compare_digest`.
The server sends its proof only to a client that proved itself, so it is not an oracle.

What this does not do: protect the rest of the session. Without TLS, a man in the middle can
relay the exchange and then read or change what follows; use it with TLS (``docs/protocol.md``
§6.1). A captured exchange lets an attacker test guesses of the token offline, so tokens must be
long and random (:data:`MIN_TOKEN_BYTES`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
from typing import Final

from ftx.errors import AuthenticationError, LocalProtocolError, RemoteProtocolError
from ftx.protocol.messages import Auth, AuthOk, Challenge, Message

__all__ = [
    "AUTH_FEATURE",
    "MIN_TOKEN_BYTES",
    "NONCE_BYTES",
    "ClientAuthState",
    "ClientAuthenticator",
    "ServerAuthState",
    "ServerAuthenticator",
    "check_token",
    "client_proof",
    "load_token",
    "server_proof",
]

AUTH_FEATURE: Final = "auth-hmac-sha256"
NONCE_BYTES: Final = 32
MIN_TOKEN_BYTES: Final = 16
_CLIENT_LABEL: Final = b"ftx-auth-v1 client\x00"
_SERVER_LABEL: Final = b"ftx-auth-v1 server\x00"


def _proof(label: bytes, token: bytes, server_nonce: str, client_nonce: str) -> str:
    message = label + bytes.fromhex(server_nonce) + bytes.fromhex(client_nonce)
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def client_proof(token: bytes, server_nonce: str, client_nonce: str) -> str:
    """The client's proof for these nonces (hex), as 64 lowercase hex digits."""
    return _proof(_CLIENT_LABEL, token, server_nonce, client_nonce)


def server_proof(token: bytes, server_nonce: str, client_nonce: str) -> str:
    """The server's proof for these nonces (hex), as 64 lowercase hex digits."""
    return _proof(_SERVER_LABEL, token, server_nonce, client_nonce)


def check_token(token: str | bytes) -> bytes:
    """``token`` as the HMAC key: its UTF-8 bytes.

    Raises:
        ValueError: it is shorter than :data:`MIN_TOKEN_BYTES` bytes (too easy to guess from a
            captured exchange).
    """
    key = token.encode("utf-8") if isinstance(token, str) else bytes(token)
    if len(key) < MIN_TOKEN_BYTES:
        raise ValueError(
            f"the token is {len(key)} bytes long; use at least {MIN_TOKEN_BYTES} random bytes, "
            "e.g. from: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return key


def load_token(path: str | None, environ: dict[str, str] | None = None) -> bytes | None:
    """The token from the file at ``path`` (surrounding whitespace removed) or, without one,
    from the ``FTX_TOKEN`` environment variable (empty or unset: no token).

    Raises:
        OSError: the file cannot be read.
        ValueError: the token is too short, or not UTF-8.
    """
    if path is not None:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8").strip()
        if not text:
            raise ValueError(f"{path} is empty")
        return check_token(text)
    value = (os.environ if environ is None else environ).get("FTX_TOKEN", "").strip()
    return check_token(value) if value else None


class ServerAuthenticator:
    """The server's side: makes the challenge, checks the client's proof, proves itself.

    Args:
        token: the shared token (see :func:`check_token`).
        nonce: the server nonce to use, for tests; a fresh random one by default.
    """

    def __init__(self, token: str | bytes, *, nonce: bytes | None = None) -> None:
        self._token = check_token(token)
        self._nonce = (nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)).hex()

    def challenge(self) -> Challenge:
        return Challenge(self._nonce)

    def verify(self, auth: Auth) -> AuthOk | None:
        """The server's proof if the client's is right, else ``None``."""
        expected = client_proof(self._token, self._nonce, auth.nonce)
        if not hmac.compare_digest(expected, auth.proof):
            return None
        return AuthOk(server_proof(self._token, self._nonce, auth.nonce))


class ClientAuthenticator:
    """The client's side: answers the challenge, checks the server's proof.

    Args:
        token: the shared token (see :func:`check_token`).
        nonce: the client nonce to use, for tests; a fresh random one by default.
    """

    def __init__(self, token: str | bytes, *, nonce: bytes | None = None) -> None:
        self._token = check_token(token)
        self._nonce = (nonce if nonce is not None else secrets.token_bytes(NONCE_BYTES)).hex()
        self._server_nonce: str | None = None

    def respond(self, challenge: Challenge) -> Auth:
        self._server_nonce = challenge.nonce
        return Auth(self._nonce, client_proof(self._token, challenge.nonce, self._nonce))

    def verify(self, ok: AuthOk) -> None:
        """Check the server's proof.

        Raises:
            AuthenticationError: it is wrong: the server does not know the token.
        """
        if self._server_nonce is None:  # pragma: no cover - the protocol orders the messages
            raise AuthenticationError("no challenge was answered")
        expected = server_proof(self._token, self._server_nonce, self._nonce)
        if not hmac.compare_digest(expected, ok.proof):
            raise AuthenticationError("the server does not know the token: its proof is wrong")


class _Phase(enum.Enum):
    OFF = enum.auto()  # no token: the feature is not in use
    WAITING = enum.auto()  # the HELLOs are not both known yet
    CHALLENGE = enum.auto()  # server: CHALLENGE due; client: CHALLENGE awaited
    ANSWER = enum.auto()  # server: AUTH awaited; client: AUTH due
    CONFIRM = enum.auto()  # server: AUTH_OK due; client: AUTH_OK awaited
    DONE = enum.auto()
    REFUSED = enum.auto()  # server: the client did not offer the feature
    REJECTED = enum.auto()  # server: the client's proof was wrong


class ServerAuthState:
    """Where the server is in the exchange; used by :class:`ftx.protocol.ServerProtocol`.

    Raises :exc:`~ftx.errors.LocalProtocolError` for a message sent out of turn and
    :exc:`~ftx.errors.RemoteProtocolError` for one received out of turn.
    """

    def __init__(self, authenticator: ServerAuthenticator | None) -> None:
        self._authenticator = authenticator
        self._phase = _Phase.OFF if authenticator is None else _Phase.WAITING
        self._ok: AuthOk | None = None

    @property
    def done(self) -> bool:
        """Whether requests may flow: no token required, or the client proved it knows it."""
        return self._phase in (_Phase.OFF, _Phase.DONE)

    @property
    def refused(self) -> bool:
        """A token is required and the client's HELLO did not offer the feature."""
        return self._phase is _Phase.REFUSED

    @property
    def rejected(self) -> bool:
        """The client's proof was wrong."""
        return self._phase is _Phase.REJECTED

    def start(self, client_offers: bool) -> None:
        if self._phase is _Phase.WAITING:
            self._phase = _Phase.CHALLENGE if client_offers else _Phase.REFUSED

    def challenge(self) -> Challenge:
        if self._authenticator is None or self._phase is not _Phase.CHALLENGE:
            raise LocalProtocolError("no CHALLENGE is due")
        return self._authenticator.challenge()

    def ok(self) -> AuthOk:
        if self._ok is None or self._phase is not _Phase.CONFIRM:
            raise LocalProtocolError("no AUTH_OK is due")
        return self._ok

    def sent(self, message: Challenge | AuthOk) -> None:
        if isinstance(message, Challenge) and message == self.challenge():
            self._phase = _Phase.ANSWER
        elif isinstance(message, AuthOk) and message == self.ok():
            self._phase = _Phase.DONE
        else:
            raise LocalProtocolError(f"{type(message).__name__} is not the one due")

    def receive(self, message: Message) -> None:
        if self._phase is not _Phase.ANSWER or self._authenticator is None:
            raise RemoteProtocolError(f"expected nothing but AUTH, got {type(message).__name__}")
        if not isinstance(message, Auth):
            raise RemoteProtocolError(f"expected AUTH, got {type(message).__name__}")
        self._ok = self._authenticator.verify(message)
        self._phase = _Phase.REJECTED if self._ok is None else _Phase.CONFIRM


class ClientAuthState:
    """Where the client is in the exchange; used by :class:`ftx.protocol.ClientProtocol`."""

    def __init__(self, authenticator: ClientAuthenticator | None) -> None:
        self._authenticator = authenticator
        self._phase = _Phase.OFF if authenticator is None else _Phase.WAITING
        self._answer: Auth | None = None

    @property
    def done(self) -> bool:
        """Whether requests may be sent: no token, or the server proved it knows it."""
        return self._phase in (_Phase.OFF, _Phase.DONE)

    def start(self, server_offers: bool) -> None:
        """Called with the server's HELLO.

        Raises:
            AuthenticationError: we hold a token and the server does not ask for it: it could
                not prove that it knows it, so it is not trusted.
        """
        if self._phase is not _Phase.WAITING:
            return
        if not server_offers:
            raise AuthenticationError(
                f"the server does not ask for a token ({AUTH_FEATURE}), so it cannot prove it "
                "is the server that holds it; refusing to go on"
            )
        self._phase = _Phase.CHALLENGE

    def answer(self) -> Auth:
        if self._answer is None or self._phase is not _Phase.ANSWER:
            raise LocalProtocolError("no AUTH is due")
        return self._answer

    def sent(self, message: Auth) -> None:
        if message != self.answer():
            raise LocalProtocolError("AUTH is sent once, as answer() gives it")
        self._phase = _Phase.CONFIRM

    def receive(self, message: Challenge | AuthOk) -> None:
        """Raises :exc:`RemoteProtocolError` out of turn, :exc:`AuthenticationError` for a
        wrong server proof."""
        authenticator = self._authenticator
        if authenticator is None:
            pass  # no token: neither message is expected
        elif isinstance(message, Challenge) and self._phase is _Phase.CHALLENGE:
            self._answer = authenticator.respond(message)
            self._phase = _Phase.ANSWER
            return
        elif isinstance(message, AuthOk) and self._phase is _Phase.CONFIRM:
            authenticator.verify(message)
            self._phase = _Phase.DONE
            return
        raise RemoteProtocolError(f"unexpected {type(message).__name__}")
