"""The ``ftx`` command: ``ftx serve``, ``ftx get``, ``ftx ls`` and ``ftx put``.

This module builds the parser and dispatches to the commands; what they share is in
``_address``, ``_errors``, ``_options``, ``_output``, ``_progress`` and ``_retry``. The package
is the only one that knows about argparse and tqdm. User mistakes and remote errors print one
line on stderr and exit with a code from :class:`ExitCode`; there are no tracebacks for them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

import trio

import ftx
from ftx.cli._address import ADDRESS_HELP, parse_address, parse_port
from ftx.cli._connect import add_connection_options
from ftx.cli._errors import ExitCode, describe
from ftx.cli._get import get_command, ls_command
from ftx.cli._options import (
    add_digest_option,
    add_timeout,
    add_verbosity,
    parse_count,
    parse_positive_count,
)
from ftx.cli._output import say
from ftx.cli._put import add_put_parser, put_command
from ftx.cli._retry import DEFAULT_RETRIES
from ftx.cli._serve import add_serve_options, serve_command
from ftx.cli._tree import get_tree
from ftx.client import DEFAULT_JOBS
from ftx.server import DEFAULT_PORT


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
        type=parse_port,
        default=DEFAULT_PORT,
        help=f"the TCP port to listen on; 0 picks a free one (default: {DEFAULT_PORT})",
    )
    add_serve_options(serve)
    add_verbosity(serve)

    get = commands.add_parser(
        "get",
        help="download a file",
        description="Download the file at PATH from the ftx server at HOST. It is written to "
        "DEST.part, verified against the server's digest of the whole file, and only then "
        "renamed to DEST.",
    )
    get.add_argument("address", metavar="HOST[:PORT]", type=parse_address, help=ADDRESS_HELP)
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
        type=parse_positive_count,
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
        type=parse_count,
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
    add_timeout(get)
    add_connection_options(get)
    add_verbosity(get)

    ls = commands.add_parser(
        "ls",
        help="list a directory on the server",
        description="List the entries of the directory at PATH on the server (default: the "
        "served directory itself).",
    )
    ls.add_argument("address", metavar="HOST[:PORT]", type=parse_address, help=ADDRESS_HELP)
    ls.add_argument("path", metavar="PATH", nargs="?", default="", help="the directory to list")
    ls.add_argument(
        "-l", "--long", action="store_true", help="show type, permissions, size and time"
    )
    ls.add_argument(
        "--json", action="store_true", help="print the entries as one JSON array, for scripts"
    )
    add_timeout(ls)
    add_connection_options(ls)
    add_verbosity(ls)
    add_put_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ftx`` command line; return the exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    commands: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
        "serve": serve_command,
        "get": _get,
        "ls": ls_command,
        "put": put_command,
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
                say(args, "ftx: stopped")
                return ExitCode.OK
            print("ftx: interrupted", file=sys.stderr)
            return ExitCode.INTERRUPTED
        message, code = describe(exc, args)
        print(f"ftx: {message}", file=sys.stderr)
        return code
    return ExitCode.OK


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, alone or (as trio often delivers it) inside a nursery's exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


async def _get(args: argparse.Namespace) -> None:
    """``ftx get``: one file, or several (or ``-r``) as a batch."""
    if args.recursive or len(args.paths) > 1:
        await get_tree(args)
        return
    await get_command(args)
