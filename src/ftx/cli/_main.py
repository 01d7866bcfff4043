"""The ``ftx`` command: ``ftx serve``, ``ftx get``, ``ftx ls`` and ``ftx put``.

The only module that knows about argparse and tqdm. User mistakes and remote errors print one
line on stderr and exit with a code from :class:`ExitCode`; there are no tracebacks for them.
"""

from __future__ import annotations

import argparse
import enum
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import trio

import ftx
from ftx.client._tree import DEFAULT_JOBS
from ftx.errors import (
    ConnectionLostError,
    FtxError,
    IntegrityError,
    LocalFileError,
    RemoteError,
    RemoteProtocolError,
)
from ftx.protocol import ErrorCode
from ftx.server import DEFAULT_PORT

DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_RETRIES: Final = 3
_MAX_RETRY_DELAY: Final = 30.0


class ExitCode(enum.IntEnum):
    """What ``ftx`` exits with; documented in docs/user-guide.md."""

    OK = 0
    FAILURE = 1  # anything not listed below, e.g. an internal server error
    USAGE = 2  # bad arguments, a directory that cannot be served
    NETWORK = 3  # cannot connect or listen, connection lost, timed out
    NOT_FOUND = 4  # the server has no such file, or refuses the path
    PERMISSION = 5  # the server may not read the file, or accepts no uploads
    INTEGRITY = 6  # the data did not verify, or the file changed during the transfer
    PROTOCOL = 7  # the peer does not speak ftx, or not a version we speak
    LOCAL_FILE = 8  # the destination (here, or on the server for put) exists or is full
    BUSY = 9  # the server is busy or shutting down: try again later
    INTERRUPTED = 130  # Ctrl-C


_REMOTE_EXIT_CODES: Final[dict[str, ExitCode]] = {
    ErrorCode.NOT_FOUND: ExitCode.NOT_FOUND,
    ErrorCode.NOT_A_FILE: ExitCode.NOT_FOUND,
    ErrorCode.OUTSIDE_ROOT: ExitCode.NOT_FOUND,
    ErrorCode.BAD_REQUEST: ExitCode.NOT_FOUND,
    ErrorCode.PERMISSION_DENIED: ExitCode.PERMISSION,
    ErrorCode.CHANGED: ExitCode.INTEGRITY,
    ErrorCode.BUSY: ExitCode.BUSY,
    ErrorCode.SHUTTING_DOWN: ExitCode.BUSY,
    ErrorCode.UNSUPPORTED_VERSION: ExitCode.PROTOCOL,
    ErrorCode.READ_ONLY: ExitCode.PERMISSION,
    ErrorCode.EXISTS: ExitCode.LOCAL_FILE,
    ErrorCode.TOO_LARGE: ExitCode.LOCAL_FILE,
    ErrorCode.NO_SPACE: ExitCode.LOCAL_FILE,
    ErrorCode.DIGEST_MISMATCH: ExitCode.INTEGRITY,
}


class CliError(Exception):
    """A failure to report in one line, with the exit code to use."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped.

    Names and messages that come from a server go through this before reaching the terminal,
    so that escape sequences in them cannot rewrite what the user sees.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT`` or a bare IPv6 address."""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"{text!r}: expected [IPV6] or [IPV6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a host name, an IPv4 address, or a bare IPv6 address (several colons)
        host, port_text = text, ""
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r}: the host is missing")
    return Address(host, _port(port_text) if port_text else DEFAULT_PORT)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def _positive_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ftx",
        description="Fast, verified file transfer. Serve a directory with 'ftx serve DIR'; "
        "fetch a file from it with 'ftx get HOST PATH'.",
        epilog="Run 'ftx COMMAND --help' for the options of a command. "
        "Exit codes are listed in docs/user-guide.md.",
    )
    parser.add_argument("--version", action="version", version=f"ftx {ftx.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve the files under a directory (read-only unless --writable)",
        description="Serve the regular files under DIR, read-only unless --writable, until "
        "interrupted (Ctrl-C). "
        "Nothing outside DIR is ever served: symbolic links that lead out are refused.",
    )
    serve.add_argument("directory", metavar="DIR", help="the directory to serve")
    serve.add_argument(
        "--host",
        default=None,
        help="the address to listen on (default: every interface, IPv4 and IPv6)",
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"the TCP port to listen on; 0 picks a free one (default: {DEFAULT_PORT})",
    )
    from ftx.cli._serve import add_serve_options  # imported here: it imports this module

    add_serve_options(serve)
    _add_verbosity(serve)

    get = commands.add_parser(
        "get",
        help="download a file",
        description="Download the file at PATH from the ftx server at HOST. It is written to "
        "DEST.part, verified against the server's digest of the whole file, and only then "
        "renamed to DEST.",
    )
    get.add_argument("address", metavar="HOST[:PORT]", type=parse_address, help=_ADDRESS_HELP)
    get.add_argument(
        "paths",
        metavar="PATH",
        nargs="+",
        help="the file's path on the server; several paths (or -r) save into a directory",
    )
    get.add_argument(
        "-r",
        "--recursive",
        action="store_true",
        help="fetch directories with everything under them (symbolic links are skipped)",
    )
    get.add_argument(
        "-j",
        "--jobs",
        type=_positive_count,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"with several files or -r: connections used at once (default: {DEFAULT_JOBS})",
    )
    get.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per file on standard output, instead of the bar",
    )
    get.add_argument(
        "-p",
        "--preserve",
        action="store_true",
        help="also give files the server's permission bits (modification times always are)",
    )
    get.add_argument(
        "-o",
        "--output",
        metavar="DEST",
        help="where to save it: a file name, or an existing directory "
        "(default: the file's name, in the current directory)",
    )
    get.add_argument(
        "-f", "--force", action="store_true", help="replace DEST if it exists (once verified)"
    )
    get.add_argument(
        "--retries",
        type=_count,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="after a lost connection, reconnect and resume up to N times, waiting 1, 2, 4... "
        f"seconds (default: {DEFAULT_RETRIES})",
    )
    get.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start from zero even if DEST.part holds the start of the same file",
    )
    add_digest_option(get)
    _add_timeout(get)
    _add_connection_options(get)
    _add_verbosity(get)

    ls = commands.add_parser(
        "ls",
        help="list a directory on the server",
        description="List the entries of the directory at PATH on the server (default: the "
        "served directory itself).",
    )
    ls.add_argument("address", metavar="HOST[:PORT]", type=parse_address, help=_ADDRESS_HELP)
    ls.add_argument("path", metavar="PATH", nargs="?", default="", help="the directory to list")
    ls.add_argument(
        "-l", "--long", action="store_true", help="show type, permissions, size and time"
    )
    ls.add_argument(
        "--json", action="store_true", help="print the entries as one JSON array, for scripts"
    )
    _add_timeout(ls)
    _add_connection_options(ls)
    _add_verbosity(ls)
    from ftx.cli._put import add_put_parser  # imported here: it imports this module

    add_put_parser(commands)
    return parser


_ADDRESS_HELP: Final = (
    f"the server, e.g. 192.168.1.7, example.org:4000 or [::1]:4000 (default port: {DEFAULT_PORT})"
)


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    group.add_argument("-v", "--verbose", action="store_true", help="print debugging details")


def add_digest_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--digest",
        choices=("fast", "cryptographic", "xxh3-128", "blake3", "sha256"),
        default="fast",
        help="how to check that every byte arrived intact: 'fast' (XXH3-128, as rsync; it "
        "catches any accident), 'cryptographic' (BLAKE3 or SHA-256; a collision cannot be "
        "made even on purpose), or an algorithm by name, e.g. to compare with a published "
        "sha256 (default: fast)",
    )


def _add_connection_options(parser: argparse.ArgumentParser) -> None:
    from ftx.cli._connect import add_connection_options  # imported here: it imports this module

    add_connection_options(parser)


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up when connecting, or when the server stays silent, for this long "
        f"(default: {DEFAULT_TIMEOUT:g})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ftx`` command line; return the exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    commands: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
        "serve": _serve,
        "get": _get,
        "ls": _ls,
        "put": _put,
    }
    try:
        trio.run(commands[args.command], args)
    except BrokenPipeError:
        # The reader went away (`ftx ls ... | head`): stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except BaseException as exc:
        if _interrupted(exc):
            if args.command == "serve":
                _say(args, "ftx: stopped")
                return ExitCode.OK
            print("ftx: interrupted", file=sys.stderr)
            return ExitCode.INTERRUPTED
        message, code = _describe(exc, args)
        print(f"ftx: {message}", file=sys.stderr)
        return code
    return ExitCode.OK


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, alone or (as trio often delivers it) inside a nursery's exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException, args: argparse.Namespace) -> tuple[str, ExitCode]:
    exc = _unwrap(exc)
    match exc:
        case CliError():
            return str(exc), exc.code
        case RemoteError():
            code = _REMOTE_EXIT_CODES.get(exc.code, ExitCode.FAILURE)
            return f"{printable(exc.message)} [{printable(exc.code)}]", code
        case IntegrityError():
            return str(exc), ExitCode.INTEGRITY
        case LocalFileError():
            return str(exc), ExitCode.LOCAL_FILE
        case ConnectionLostError():
            return f"{args.address}: {exc}", ExitCode.NETWORK
        case RemoteProtocolError():
            where = getattr(args, "address", "the peer")
            return f"{where} does not speak the ftx protocol ({exc})", ExitCode.PROTOCOL
        case FtxError():
            return str(exc), ExitCode.FAILURE
        case KeyboardInterrupt():
            return "interrupted", ExitCode.INTERRUPTED
        case OSError():
            return _describe_os_error(exc), ExitCode.FAILURE
    raise exc  # a bug: let the traceback show


def _describe_os_error(exc: OSError) -> str:
    name = f" {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{name}"


# --- ftx serve --------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    from ftx.cli._serve import serve_command  # imported here: it imports this module

    await serve_command(args)


async def _put(args: argparse.Namespace) -> None:
    from ftx.cli._put import put_command  # imported here: it imports this module

    await put_command(args)


# --- ftx get / ls -----------------------------------------------------------------------------


async def _connect(args: argparse.Namespace) -> ftx.Client:
    from ftx.cli._connect import connect_client  # imported here: it imports this module

    return await connect_client(args)


async def _get(args: argparse.Namespace) -> None:
    if args.recursive or len(args.paths) > 1:
        from ftx.cli._tree import get_tree

        await get_tree(args)
        return
    from ftx.cli._get import get_command  # imported here: it imports this module

    await get_command(args)


async def _ls(args: argparse.Namespace) -> None:
    from ftx.cli._get import ls_command  # imported here: it imports this module

    await ls_command(args)


def _human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
