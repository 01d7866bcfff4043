"""How ``ftx get`` and ``ftx ls`` connect: TCP or TLS (verified or pinned), the handshake,
and the one-line reasons when that fails."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import ssl

import trio

import ftx
from ftx._tls import client_context, normalize_fingerprint, open_tls_stream
from ftx.cli._address import Address
from ftx.cli._errors import CliError, ExitCode
from ftx.cli._output import printable
from ftx.errors import (
    AuthenticationError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from ftx.protocol import ErrorCode, load_token

logger = logging.getLogger("ftx.cli")


def _fingerprint(text: str) -> str:
    try:
        return normalize_fingerprint(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add the TLS and token options of a command that connects to a server."""
    security = parser.add_argument_group("security")
    security.add_argument(
        "--tls",
        action="store_true",
        default=os.environ.get("FTX_TLS", "").strip().lower() in ("1", "yes", "true"),
        help="connect with TLS, verifying the server's certificate against the system's "
        "trusted authorities and the host name (default: FTX_TLS=1 in the environment)",
    )
    security.add_argument(
        "--cafile",
        metavar="FILE",
        default=os.environ.get("FTX_CAFILE") or None,
        help="with TLS, trust only the certificate authorities in FILE (PEM); implies --tls "
        "(default: FTX_CAFILE)",
    )
    security.add_argument(
        "--fingerprint",
        type=_fingerprint,
        metavar="SHA256",
        default=os.environ.get("FTX_FINGERPRINT") or None,
        help="with TLS, accept only the server certificate with this SHA-256 fingerprint, as "
        "'ftx serve' prints it (for a self-signed certificate); implies --tls "
        "(default: FTX_FINGERPRINT)",
    )
    security.add_argument(
        "--token-file",
        metavar="FILE",
        help="prove to the server that we know the token in FILE, and have it prove the same "
        "(default: the FTX_TOKEN environment variable, if set); the token never crosses the wire",
    )


async def connect_client(args: argparse.Namespace) -> ftx.Client:
    """Connect to ``args.address`` as the options say and shake hands.

    Raises:
        CliError: the server cannot be reached (``NETWORK``), or could not prove who it is, or
            does not speak TLS as asked (``PROTOCOL``).
        RemoteError, RemoteProtocolError, ConnectionLostError: from the handshake.
    """
    address: Address = args.address
    fingerprint: str | None = getattr(args, "fingerprint", None)
    cafile: str | None = getattr(args, "cafile", None)
    tls = getattr(args, "tls", False) or fingerprint is not None or cafile is not None
    context = _context(cafile) if tls and fingerprint is None else None
    token = token_from(getattr(args, "token_file", None))
    config = ftx.ClientConfig(
        idle_timeout=args.timeout,
        token=token,
        digest=getattr(args, "digest", "fast"),
        rate_limit=_shared_rate_limit(args),
    )
    logger.debug(
        "connecting to %s%s%s",
        address,
        " with TLS" if tls else "",
        f", certificate pinned to {fingerprint}" if fingerprint else "",
    )
    try:
        with trio.fail_after(args.timeout):
            if tls:
                stream: trio.abc.Stream = await open_tls_stream(
                    address.host, address.port, context, fingerprint=fingerprint
                )
            else:
                stream = await trio.open_tcp_stream(address.host, address.port)
    except trio.TooSlowError:
        raise CliError(
            f"cannot connect to {address}: no answer within {args.timeout:g} seconds",
            ExitCode.NETWORK,
        ) from None
    except OSError as exc:
        raise CliError(_describe_connect_error(exc, address), ExitCode.NETWORK) from None
    except (AuthenticationError, RemoteProtocolError) as exc:
        raise CliError(f"{address}: {exc}", ExitCode.PROTOCOL) from None
    client = ftx.Client(stream, config)
    try:
        await client.handshake()
    except RemoteError as exc:
        await trio.aclose_forcefully(client)
        if exc.code == ErrorCode.TLS_REQUIRED:
            raise CliError(
                f"{address} requires TLS: add --tls (with --fingerprint or --cafile for a "
                "self-signed certificate)",
                ExitCode.PROTOCOL,
            ) from None
        if exc.code == ErrorCode.UNAUTHORIZED:
            advice = "check the token" if token else "give one with --token-file or FTX_TOKEN"
            said = printable(exc.message)
            if "--token-file" not in said:  # (an ftx server gives that advice itself)
                said += f" ({advice})"
            raise CliError(f"{address} refused us: {said}", ExitCode.PERMISSION) from None
        raise
    except AuthenticationError as exc:
        await trio.aclose_forcefully(client)
        raise CliError(f"{address}: {exc}", ExitCode.PROTOCOL) from None
    except LocalProtocolError as exc:  # a --digest the server does not compute
        await trio.aclose_forcefully(client)
        raise CliError(f"{address}: {exc}: choose another --digest", ExitCode.PROTOCOL) from None
    except BaseException:
        await trio.aclose_forcefully(client)
        raise
    return client


def token_from(path: str | None) -> bytes | None:
    """The token of ``--token-file`` (or ``FTX_TOKEN``), or ``None``.

    Raises:
        CliError: the file cannot be read, or the token is too short (``USAGE``).
    """
    try:
        return load_token(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        where = path if path is not None else "FTX_TOKEN"
        reason = exc.strerror if isinstance(exc, OSError) else exc
        raise CliError(f"cannot use the token from {where}: {reason}", ExitCode.USAGE) from None


def _context(cafile: str | None) -> ssl.SSLContext:
    try:
        return client_context(cafile)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(
            f"cannot use {cafile} as certificate authorities: {exc.strerror or exc}",
            ExitCode.USAGE,
        ) from None


def _leaf_errors(exc: BaseException) -> list[BaseException]:
    """The individual errors behind a failed connection attempt (trio tries every address)."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return [leaf for sub in cause.exceptions for leaf in _leaf_errors(sub) or [sub]]
    return [exc]


def _describe_connect_error(exc: OSError, address: Address) -> str:
    errors = _leaf_errors(exc)
    prefix = f"cannot connect to {address}"
    if any(isinstance(error, socket.gaierror) for error in errors):
        return f"{prefix}: unknown host {address.host!r}"
    if any(isinstance(error, ConnectionRefusedError) for error in errors):
        return f"{prefix}: connection refused (is 'ftx serve' running there, on that port?)"
    numbers = {getattr(error, "errno", None) for error in errors}
    if numbers & {errno.ENETUNREACH, errno.EHOSTUNREACH}:
        return f"{prefix}: the host is unreachable from here"
    if errno.ETIMEDOUT in numbers:
        return f"{prefix}: timed out"
    return f"{prefix}: {exc.strerror or exc}"


def _shared_rate_limit(args: argparse.Namespace) -> ftx.RateLimit | None:
    """The command's ``--limit-rate``, one :class:`~ftx.RateLimit` shared by all of its
    connections (made on first use and kept in ``args``)."""
    rate: int | None = getattr(args, "limit_rate", None)
    if rate is None:
        return None
    shared: ftx.RateLimit | None = getattr(args, "shared_rate_limit", None)
    if shared is None:
        shared = args.shared_rate_limit = ftx.RateLimit(rate)
    return shared
