"""The ``ftx`` command: ``ftx serve``, ``ftx get``, ``ftx ls`` and ``ftx put``.

This module builds the parser and dispatches to the commands; what they share is in
``_address``, ``_errors``, ``_options``, ``_output``, ``_progress`` and ``_retry``. The package
is the only one that knows about argparse and tqdm. User mistakes and remote errors print one
line on stderr and exit with a code from :class:`ExitCode`; there are no tracebacks for them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Final

import ftx

_SERVE_EXAMPLES: Final = """examples:
  ftx serve .                                  this directory, read-only, on port 3890
  ftx serve ~/shared --host 192.168.1.7        on one address only
  ftx serve incoming --writable --port 4000    accept uploads ('ftx put')
  ftx serve files --tls-cert cert.pem --tls-key key.pem --token-file ftx.token
"""
_GET_EXAMPLES: Final = """examples:
  ftx get 192.168.1.7 report.pdf               into the current directory
  ftx get 192.168.1.7 docs/a.txt -o b.txt      as b.txt
  ftx get 192.168.1.7 big.iso -o - | sha256sum to standard output
  ftx get -r 192.168.1.7 photos -o backup      photos/ and everything in it, into backup/
  ftx get -r 192.168.1.7 / -o mirror           everything the server serves
  ftx get --from node1,node2 big.iso           one file from two servers at once
"""
_LS_EXAMPLES: Final = """examples:
  ftx ls 192.168.1.7                           the served directory
  ftx ls -l 192.168.1.7 photos                 with types, sizes and times
  ftx ls --json 192.168.1.7 photos             as one JSON array
"""


# The commands in the order of 'ftx --help', with the line it shows for each. Only the command
# being run is built in full (its module is imported then): 'ftx --version' and 'ftx --help'
# import no command, 'ftx get' not the server. tests/cli/test_startup.py checks that these lines
# are those of the full parser.
_SUMMARIES: Final = {
    "serve": "serve the files under a directory (read-only unless --writable)",
    "get": "download a file",
    "ls": "list a directory on the server",
    "put": "upload files to a writable server",
    "help": "explain a topic: exit-codes, paths, retries, environment, completion",
    "completion": "print the shell code for tab completion (see 'ftx help completion')",
}


def _command(commands: Any, name: str, examples: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples,
        help=_SUMMARIES[name],
        **kwargs,
    )
    return parser


def build_parser(full: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the ``ftx`` command line and its subcommands: every command with all its
    options, or only those named in ``full`` (the others are there by name and summary, enough
    for ``ftx --help``; their modules are not imported)."""
    parser = argparse.ArgumentParser(
        prog="ftx",
        description="Fast, verified file transfer. Serve a directory with 'ftx serve DIR'; "
        "fetch a file from it with 'ftx get HOST PATH'.",
        epilog="Run 'ftx COMMAND --help' for the options of a command, and 'ftx help' for "
        "the exit codes, paths on the server, retries, environment variables and shell "
        "completion.",
    )
    parser.add_argument("--version", action="version", version=f"ftx {ftx.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    builders: dict[str, Callable[[Any], None]] = {
        "serve": _add_serve,
        "get": _add_get,
        "ls": _add_ls,
        "put": _add_put,
        "help": _add_help,  # adds 'help' and 'completion' together
    }
    for name, build in builders.items():
        group = ("help", "completion") if name == "help" else (name,)
        if full is None or not set(group).isdisjoint(full):
            build(commands)
        else:
            for each in group:
                commands.add_parser(each, help=_SUMMARIES[each])
    return parser


def _add_serve(commands: Any) -> None:
    """Add ``ftx serve`` with its options."""
    from ftx._port import DEFAULT_PORT
    from ftx.cli._address import parse_port
    from ftx.cli._options import add_verbosity
    from ftx.cli._serve import add_serve_options

    serve = _command(
        commands,
        "serve",
        _SERVE_EXAMPLES,
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


def _add_get(commands: Any) -> None:
    """Add ``ftx get`` with its options."""
    from ftx.cli._address import ADDRESS_HELP
    from ftx.cli._connect import add_connection_options
    from ftx.cli._options import (
        add_checksum_option,
        add_digest_option,
        add_limit_rate,
        add_source_options,
        add_timeout,
        add_verbosity,
        parse_positive_count,
    )
    from ftx.cli._retry import add_retry_options
    from ftx.client import DEFAULT_JOBS

    get = _command(
        commands,
        "get",
        _GET_EXAMPLES,
        description="Download the file at PATH from the ftx server at HOST. It is written to "
        "DEST.part, verified against the server's digest of the whole file, and only then "
        "renamed to DEST.",
        # (argparse would show "HOST[:PORT] [PATH ...]": PATH is optional to it, see below.)
        usage="%(prog)s [options] HOST[:PORT] PATH [PATH ...]\n"
        "       %(prog)s [options] --from HOST[:PORT],HOST[:PORT],... PATH",
    )
    # (Parsed by resolve_sources: with --from, this first argument is a PATH.)
    get.add_argument("address", metavar="HOST[:PORT]", help=ADDRESS_HELP)
    get.add_argument(
        "paths",
        metavar="PATH",
        nargs="*",
        help="the file's path on the server, relative to the directory it serves ('/' or '.' "
        "is that directory itself); several paths (or -r) save into a directory",
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
        help="print one JSON object per file (failures too) on standard output, instead of the bar",
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
        help="where to save it: a file name, or an existing directory; '-' for standard "
        "output (verified at the end); with several files or -r, a directory, made if "
        "missing (default: the file's name, in the current directory)",
    )
    get.add_argument(
        "-f", "--force", action="store_true", help="replace DEST if it exists (once verified)"
    )
    add_checksum_option(get, where="at the destination")
    add_retry_options(get)
    get.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="start from zero even if DEST.part holds the start of the same file",
    )
    add_source_options(get)
    add_digest_option(get)
    add_limit_rate(get, what="the whole command, all connections together; default: no limit")
    add_timeout(get)
    add_connection_options(get)
    add_verbosity(get)


def _add_ls(commands: Any) -> None:
    """Add ``ftx ls`` with its options."""
    from ftx.cli._address import ADDRESS_HELP, parse_address
    from ftx.cli._connect import add_connection_options
    from ftx.cli._options import add_timeout, add_verbosity
    from ftx.cli._retry import add_retry_options

    ls = _command(
        commands,
        "ls",
        _LS_EXAMPLES,
        description="List the entries of the directory at PATH on the server (default: the "
        "served directory itself).",
    )
    ls.add_argument("address", metavar="HOST[:PORT]", type=parse_address, help=ADDRESS_HELP)
    ls.add_argument(
        "path",
        metavar="PATH",
        nargs="?",
        default="",
        help="the directory to list, relative to the served directory ('/' or '.' is that "
        "directory itself)",
    )
    ls.add_argument(
        "-l", "--long", action="store_true", help="show type, permissions, size and time"
    )
    ls.add_argument(
        "--json", action="store_true", help="print the entries as one JSON array, for scripts"
    )
    add_retry_options(ls)
    add_timeout(ls)
    add_connection_options(ls)
    add_verbosity(ls)


def _add_put(commands: Any) -> None:
    """Add ``ftx put`` with its options."""
    from ftx.cli._put import add_put_parser

    add_put_parser(commands)


def _add_help(commands: Any) -> None:
    """Add ``ftx help`` and ``ftx completion``."""
    from ftx.cli._help import add_help_parsers

    add_help_parsers(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ftx`` command line; return the exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    # The command is the first word that is not an option ('ftx' itself takes no values).
    command = next((word for word in words if not word.startswith("-")), None)
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (see 'ftx help completion')
        import argcomplete

        parser = build_parser()
        argcomplete.autocomplete(parser)
    else:
        parser = build_parser({command} if command in _SUMMARIES else ())
    args = _parse(parser, words)
    if args.command in ("help", "completion"):
        from ftx.cli._help import completion_command, help_command

        return (help_command if args.command == "help" else completion_command)(args, parser)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; return the exit code. Its module is imported only now."""
    import trio

    from ftx.cli._errors import ExitCode, describe, error_name, unwrap
    from ftx.cli._output import say

    _configure_logging(args)
    try:
        trio.run(_runner(args.command), args)
    except BaseException as exc:
        if isinstance(unwrap(exc), BrokenPipeError):
            # The reader went away (`ftx ls ... | head`): stop quietly, as other tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return ExitCode.OK
        if _interrupted(exc):
            if args.command == "serve":
                say(args, "ftx: stopped")
                return ExitCode.OK
            print("ftx: interrupted", file=sys.stderr)
            return ExitCode.INTERRUPTED
        message, code = describe(exc, args)
        if getattr(args, "json", False) and not getattr(args, "json_reported", False):
            failure = {
                "path": getattr(args, "path", None),
                "status": "failed",
                "error": error_name(exc, code),
                "exit_code": int(code),
                "message": message,
            }
            print(json.dumps(failure), flush=True)
        print(f"ftx: {message}", file=sys.stderr)
        return code
    return ExitCode.OK


def _runner(command: str) -> Callable[[argparse.Namespace], Awaitable[None]]:
    """The function that runs ``command`` (not ``help`` or ``completion``)."""
    if command == "serve":
        from ftx.cli._serve import serve_command

        return serve_command
    if command == "ls":
        from ftx.cli._get import ls_command

        return ls_command
    if command == "put":
        from ftx.cli._put import put_command

        return put_command
    return _get


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The options, with a command's paths allowed after its options too (``ftx get HOST a -o
    DIR b``, as cp and scp take them); a mistake is reported with that command's usage."""
    args, extra = parser.parse_known_args(argv)
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    command: argparse.ArgumentParser = commands.choices[args.command] if args.command else parser
    if extra:
        rest = argv[argv.index(args.command) + 1 :]
        args = command.parse_intermixed_args(rest, argparse.Namespace(command=args.command))
    if args.command == "get":
        from ftx.cli._options import resolve_sources

        resolve_sources(args, command.error)
    return args


def _configure_logging(args: argparse.Namespace) -> None:
    """Log on stderr (above any progress bar): ``-v`` shows ftx's diagnostics, ``-q`` only
    warnings and errors; ``ftx serve`` also logs each request (its access log) by default."""
    import logging

    from ftx.cli._output import TerminalLogHandler

    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = TerminalLogHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, handlers=[handler])
    logging.getLogger("ftx").setLevel(level)


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, alone or (as trio often delivers it) inside a nursery's exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


async def _get(args: argparse.Namespace) -> None:
    """``ftx get``: one file, or several (or ``-r``) as a batch."""
    from ftx.cli._errors import CliError, ExitCode

    if args.recursive or len(args.paths) > 1:
        if args.output == "-":
            raise CliError(
                "-o - takes one file: several files (or -r) need a directory", ExitCode.USAGE
            )
        from ftx.cli._tree import get_tree

        await get_tree(args)
        return
    from ftx.cli._get import get_command

    await get_command(args)
