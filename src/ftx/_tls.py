"""TLS for ftx, with :class:`trio.SSLStream`: contexts, certificate fingerprints, and opening a
connection on either side.

A client verifies the server like a browser does (a certificate chain to a trusted CA, for the
host name it dialled), or, for a self-signed certificate, *pins* it: it accepts exactly the
certificate whose SHA-256 fingerprint it was given (the server prints it at start), and nothing
else. Either way a passive listener sees nothing and an active one cannot stand in for the
server.

A server with TLS answers a client that speaks plain ftx (its first byte is not a TLS
handshake record) with a plain connection-level ``tls-required`` ERROR, so that the mistake is
reported as such rather than as a broken connection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from typing import Final

import trio

from ftx.errors import AuthenticationError, ConnectionLostError, RemoteProtocolError

__all__ = [
    "PrefixedStream",
    "accept_tls",
    "certificate_fingerprint",
    "client_context",
    "file_fingerprint",
    "normalize_fingerprint",
    "open_tls_stream",
    "pinning_context",
    "server_context",
]

_TLS_HANDSHAKE_RECORD: Final = 0x16  # the first byte of every TLS ClientHello
_PEM_CERTIFICATE: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL
)


def server_context(cert_file: str, key_file: str | None = None) -> ssl.SSLContext:
    """A server context presenting the certificate chain in ``cert_file`` (PEM), with the
    private key in ``key_file`` (or in ``cert_file`` too). TLS 1.2 or later.

    Raises:
        OSError: a file cannot be read.
        ssl.SSLError: the files do not hold a certificate and its matching key.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def client_context(cafile: str | None = None) -> ssl.SSLContext:
    """A client context that verifies the server's certificate and host name, against the
    system's trusted CAs or only those in ``cafile`` (PEM). TLS 1.2 or later.

    Raises:
        OSError, ssl.SSLError: ``cafile`` cannot be read or holds no certificate.
    """
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def pinning_context() -> ssl.SSLContext:
    """A client context that accepts any certificate *during the handshake*: to be used only
    with a fingerprint, checked by :func:`open_tls_stream` before anything is sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def certificate_fingerprint(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate, as 64 lowercase hex digits."""
    return hashlib.sha256(der).hexdigest()


def file_fingerprint(cert_file: str) -> str:
    """The fingerprint of the first (the server's own) certificate in a PEM file.

    Raises:
        OSError: the file cannot be read.
        ValueError: it holds no PEM certificate.
    """
    with open(cert_file, encoding="ascii", errors="replace") as file:
        match = _PEM_CERTIFICATE.search(file.read())
    if match is None:
        raise ValueError(f"no PEM certificate in {cert_file}")
    return certificate_fingerprint(ssl.PEM_cert_to_DER_cert(match.group(0)))


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lowercase hex digits, from hex written with or without
    colons or spaces, in any case (``openssl x509 -fingerprint -sha256`` prints
    ``AB:CD:...``), optionally prefixed ``sha256:`` or ``SHA256=``.

    Raises:
        ValueError: it is not 32 bytes of hex.
    """
    value = text.strip()
    for prefix in ("sha256:", "sha256="):
        if value.lower().startswith(prefix):
            value = value[len(prefix) :]
    value = re.sub(r"[:\s]", "", value).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return value


async def open_tls_stream(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    server_hostname: str | None = None,
    fingerprint: str | None = None,
) -> trio.SSLStream[trio.SocketStream]:
    """Connect over TCP and complete a TLS handshake that authenticates the server.

    With ``fingerprint``, the server's certificate must have that SHA-256 fingerprint (see
    :func:`normalize_fingerprint`); no CA or host name check is made unless ``ssl_context``
    asks for one. Without it, ``ssl_context`` (default: :func:`client_context`) verifies the
    chain and ``server_hostname`` (default: ``host``).

    Raises:
        OSError: the TCP connection could not be made.
        AuthenticationError: the certificate did not verify, or is not the pinned one.
        RemoteProtocolError: the TLS handshake failed otherwise (the server may not use TLS).
        ConnectionLostError: the server closed the connection during the handshake.
        ValueError: ``fingerprint`` is malformed.
    """
    expected = normalize_fingerprint(fingerprint) if fingerprint is not None else None
    if ssl_context is None:
        ssl_context = pinning_context() if expected is not None else client_context()
    tcp = await trio.open_tcp_stream(host, port)
    try:
        stream = trio.SSLStream(tcp, ssl_context, server_hostname=server_hostname or host)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            raise _handshake_error(exc, host) from exc
        if expected is not None:
            der = stream.getpeercert(binary_form=True)
            seen = certificate_fingerprint(der) if der else ""
            if not hmac.compare_digest(seen, expected):
                raise AuthenticationError(
                    f"the TLS certificate of {host} is not the pinned one "
                    f"(its SHA-256 fingerprint is {seen or 'missing'})"
                )
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return stream


def _handshake_error(exc: trio.BrokenResourceError, host: str) -> Exception:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return AuthenticationError(
            f"the TLS certificate of {host} did not verify: {cause.verify_message}"
        )
    if isinstance(cause, ssl.SSLError) and not isinstance(cause, ssl.SSLEOFError):
        reason = cause.reason or str(cause)
        return RemoteProtocolError(
            f"the TLS handshake with {host} failed ({reason}): does the server use TLS?"
        )
    return ConnectionLostError(f"{host} closed the connection during the TLS handshake")


class PrefixedStream(trio.abc.Stream):
    """A stream that returns ``prefix`` (bytes already read from ``transport_stream``) before
    reading on from it."""

    def __init__(self, transport_stream: trio.abc.Stream, prefix: bytes) -> None:
        self.transport_stream: Final = transport_stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.transport_stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport_stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


async def accept_tls(
    stream: trio.abc.Stream, ssl_context: ssl.SSLContext
) -> tuple[trio.abc.Stream, bool] | None:
    """Start the server side of a connection that should use TLS.

    Reads the first byte: a TLS handshake record gives ``(SSLStream, True)``, with the
    handshake done; anything else gives ``(stream, False)``, the byte put back, so that the
    caller can tell a plain ftx client that TLS is required. ``None`` if the peer closed first.

    Raises:
        trio.BrokenResourceError: the TLS handshake failed (its ``__cause__`` says why).
    """
    first = await stream.receive_some(1)
    if not first:
        return None
    prefixed = PrefixedStream(stream, bytes(first))
    if first[0] != _TLS_HANDSHAKE_RECORD:
        return prefixed, False
    tls: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(prefixed, ssl_context, server_side=True)
    await tls.do_handshake()
    if not prefixed._prefix:
        # The byte put back was read by the handshake: the TLS stream runs straight over the
        # TCP stream from now on, which a thread span can drive (ftx.framing).
        tls.transport_stream = stream
    return tls, True
