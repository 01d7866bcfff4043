"""``ftx serve``: its options beyond DIR/--host/--port (among them ``--writable``,
``--allow-overwrite`` and ``--max-upload-size``), and running the server from the command line
(listening, the start-up banner, limits)."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import math
import os
import resource
import shlex
import signal
import socket
import ssl
from pathlib import Path
from typing import Final

import trio

import ftx
from ftx._tls import file_fingerprint, server_context
from ftx.cli._address import Address
from ftx.cli._balancer import add_balancer_options, check_balancer_options
from ftx.cli._connect import token_from
from ftx.cli._errors import CliError, ExitCode
from ftx.cli._options import (
    add_limit_rate,
    parse_positive_count,
    parse_positive_seconds,
    parse_size,
)
from ftx.cli._output import say
from ftx.server import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    JsonFormatter,
)

# Descriptors a served connection may hold at once (its socket, a file or directory being read).
_FDS_PER_CONNECTION: Final = 2
_FDS_SPARE: Final = 32
DEFAULT_GRACE: Final = 10.0

logger = logging.getLogger("ftx.server")


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``ftx serve`` beyond DIR, --host and --port."""
    parser.add_argument(
        "--grace",
        type=_seconds,
        default=DEFAULT_GRACE,
        metavar="SECONDS",
        help="on SIGINT (Ctrl-C) or SIGTERM, stop accepting and let transfers in progress "
        "finish for this long, then stop them; a second signal stops them at once "
        f"(default: {DEFAULT_GRACE:g})",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="how to write the log on standard error, one line per transfer and per event: "
        "for people (text), or one JSON object per line (default: text)",
    )
    security = parser.add_argument_group("security")
    security.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="serve over TLS with the certificate (chain) in FILE, PEM; its SHA-256 "
        "fingerprint is printed at start, for clients to pin",
    )
    security.add_argument(
        "--tls-key",
        metavar="FILE",
        help="the private key of --tls-cert, PEM (default: in the --tls-cert file)",
    )
    security.add_argument(
        "--token-file",
        metavar="FILE",
        help="serve only clients that prove they know the token in FILE (default: the "
        "FTX_TOKEN environment variable, if set); the token never crosses the wire",
    )
    add_upload_serve_options(parser)
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-connections",
        type=parse_positive_count,
        default=DEFAULT_MAX_CONNECTIONS,
        metavar="N",
        help="serve at most N connections at once; more are told the server is busy "
        f"(default: {DEFAULT_MAX_CONNECTIONS})",
    )
    limits.add_argument(
        "--handshake-timeout",
        type=parse_positive_seconds,
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection that has not completed its handshake in this time "
        f"(default: {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )
    limits.add_argument(
        "--idle-timeout",
        type=parse_positive_seconds,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close a connection that sends no complete request, or accepts no data, for this "
        f"long (default: {DEFAULT_IDLE_TIMEOUT:g})",
    )
    limits.add_argument(
        "--backlog",
        type=parse_positive_count,
        default=None,
        metavar="N",
        help="the length of the queue of connections waiting to be accepted "
        "(default: the system's maximum)",
    )
    add_limit_rate(parser, what="each connection, each way; default: no limit")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


def add_upload_serve_options(parser: argparse.ArgumentParser) -> None:
    """Add the upload options of ``ftx serve``."""
    uploads = parser.add_argument_group("uploads")
    uploads.add_argument(
        "--writable",
        action="store_true",
        help="accept uploads ('ftx put') into DIR; without it the server is read-only",
    )
    uploads.add_argument(
        "--allow-overwrite",
        action="store_true",
        help="with --writable: let 'ftx put --force' replace existing files",
    )
    uploads.add_argument(
        "--max-upload-size",
        type=parse_size,
        metavar="SIZE",
        help="with --writable: refuse files larger than SIZE (e.g. 500M, 2G; default: no limit)",
    )
    add_balancer_options(parser)


def check_upload_options(args: argparse.Namespace) -> None:
    """Check that the upload options make sense together.

    Raises:
        CliError: ``--allow-overwrite`` or ``--max-upload-size`` without ``--writable``.
    """
    if not args.writable and (args.allow_overwrite or args.max_upload_size is not None):
        raise CliError("--allow-overwrite and --max-upload-size need --writable", ExitCode.USAGE)


def open_server(args: argparse.Namespace) -> tuple[ftx.Server, Path]:
    """The :class:`ftx.Server` the options describe, and the resolved directory it serves.

    Raises:
        CliError: ``DIR`` is not a directory that can be served.
    """
    root = Path(args.directory)
    if not root.is_dir():
        raise CliError(f"cannot serve {root}: not a directory", ExitCode.USAGE)
    context = _tls_context(args)
    token = token_from(args.token_file)
    if token is not None:
        _check_token_file(args.token_file)
    check_upload_options(args)
    check_balancer_options(args)
    try:
        config = ftx.ServerConfig(
            max_connections=args.max_connections,
            handshake_timeout=args.handshake_timeout,
            idle_timeout=args.idle_timeout,
            writable=args.writable,
            allow_overwrite=args.allow_overwrite,
            max_upload_size=args.max_upload_size,
            ssl_context=context,
            token=token,
            identity=args.identity,
            proxy_protocol_from=tuple(args.proxy_protocol_from),
            state_dir=args.state_dir,
            limit_rate=args.limit_rate,
        )
        server = ftx.Server(root, config)
    except OSError as exc:
        raise CliError(f"cannot serve {root}: {exc.strerror}", ExitCode.USAGE) from None
    except ValueError as exc:  # e.g. a --state-dir inside DIR
        raise CliError(f"cannot serve {root}: {exc}", ExitCode.USAGE) from None
    # Warned once the server can be made, so that a refused start says one line only.
    if token is not None and context is None:
        logger.warning(
            "a token without TLS keeps strangers out, but what is transferred can still be "
            "read, and changed, on the way: add --tls-cert to protect it"
        )
    if context is None and token is None and not _loopback_only(args.host):
        logger.warning(
            "listening on %s with neither TLS nor a token: anyone who can reach it can read "
            "%s%s, and see what is transferred; add --tls-cert and --token-file, or --host "
            "127.0.0.1 to stay on this machine ('ftx help' for more)",
            args.host or "every interface",
            root,
            " and write into it" if args.writable else "",
        )
    return server, root.resolve()


def _loopback_only(host: str | None) -> bool:
    """Whether ``--host`` keeps the server on this machine (a loopback address or name)."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() in ("localhost", "localhost.localdomain")


def _check_token_file(path: str | None) -> None:
    """Warn when others may read the token file, as ssh does for keys."""
    if path is None:
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o077:
        logger.warning(
            "%s can be read by others (mode %o): 'chmod 600 %s'", path, mode & 0o777, path
        )


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None:
        if args.tls_key is not None:
            raise CliError("--tls-key needs --tls-cert", ExitCode.USAGE)
        return None
    try:
        return server_context(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(
            f"cannot use {args.tls_cert} as the TLS certificate: {exc.strerror or exc}",
            ExitCode.USAGE,
        ) from None


async def serve_command(args: argparse.Namespace) -> None:
    """Run ``ftx serve`` until SIGINT or SIGTERM, then shut down gracefully."""
    if args.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    server, root = open_server(args)
    try:
        try:
            listeners = await trio.open_tcp_listeners(
                args.port, host=args.host, backlog=args.backlog
            )
        except OSError as exc:
            raise CliError(describe_listen_error(exc, args), ExitCode.NETWORK) from None
        async with trio.open_nursery() as nursery:
            await nursery.start(_shut_down_on_signals, server, args)
            _print_banner(args, root, listeners)
            _check_descriptor_limit(args.max_connections)
            await server.serve_listeners(listeners)  # returns once shut down
            nursery.cancel_scope.cancel()
    finally:
        server.root.close()
    if args.log_format == "json":
        logger.warning("stopped")
    else:
        say(args, "ftx: stopped")


async def _shut_down_on_signals(
    server: ftx.Server,
    args: argparse.Namespace,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """On the first SIGINT or SIGTERM, shut the server down with ``--grace``; on the next, at
    once. (Installed before the banner is printed, so no signal is missed.)"""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async with trio.open_nursery() as nursery:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not server.closing:
                    logger.warning(
                        "%s: stopping; transfers in progress may finish within %g s "
                        "(send it again to stop them now)",
                        name,
                        args.grace,
                    )
                    nursery.start_soon(server.shutdown, args.grace)
                else:
                    logger.warning("%s: stopping transfers in progress now", name)
                    nursery.start_soon(server.shutdown, 0)


def _print_banner(
    args: argparse.Namespace, root: Path, listeners: list[trio.SocketListener]
) -> None:
    addresses = [_listener_address(listener) for listener in listeners]
    print(
        f"ftx {ftx.__version__} serving {root} ({'writable' if args.writable else 'read-only'}) "
        "on " + ", ".join(map(str, addresses)),
        flush=True,
    )
    example = _example_file(root)
    port = addresses[0].port
    host = args.host if args.host not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
    options = ""
    if args.tls_cert is not None:
        fingerprint = file_fingerprint(args.tls_cert)
        print(f"TLS certificate SHA-256 fingerprint: {fingerprint}", flush=True)
        options = f"--fingerprint {fingerprint} "
    if args.token_file is not None:
        options += f"--token-file {shlex.quote(args.token_file)} "
    print(f"get a file with:  ftx get {options}{Address(host, port)} {example}", flush=True)
    if args.token_file is None and os.environ.get("FTX_TOKEN", "").strip():
        print("(with the same FTX_TOKEN in its environment)", flush=True)
    if host == "127.0.0.1" and args.host is None:
        print("(from another machine, use this machine's address instead of 127.0.0.1)")


def _check_descriptor_limit(max_connections: int) -> None:
    """Warn when the open-file limit cannot carry ``max_connections`` connections."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections * _FDS_PER_CONNECTION + _FDS_SPARE
    if soft != resource.RLIM_INFINITY and soft < needed:
        logger.warning(
            "the limit on open files (%d) is low for --max-connections %d (about %d needed): "
            "connections beyond it will be refused; raise it with 'ulimit -n'",
            soft,
            max_connections,
            needed,
        )


def _listener_address(listener: trio.SocketListener) -> Address:
    host, port = listener.socket.getsockname()[:2]
    return Address(host, port)


def _example_file(root: Path) -> str:
    try:
        names = sorted(entry.name for entry in os.scandir(root) if entry.is_file())
    except OSError:
        names = []
    visible = [name for name in names if not name.startswith(".")]
    return shlex.quote((visible or ["FILE"])[0])


def describe_listen_error(exc: OSError, args: argparse.Namespace) -> str:
    where = f"port {args.port}" + (f" on {args.host}" if args.host else "")
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: it is already in use (pick another with --port)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {args.host} is not an address of this machine"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: unknown host {args.host!r}"
    return f"cannot listen on {where}: {exc.strerror or exc}"
