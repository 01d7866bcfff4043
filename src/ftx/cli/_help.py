"""``ftx help [TOPIC]`` (what ``--help`` has no room for: exit codes, paths on the server,
retries, environment variables, shell completion) and ``ftx completion SHELL``."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from ftx.cli._errors import ExitCode
from ftx.cli._retry import DEFAULT_RETRIES, DEFAULT_RETRY_DELAY, MAX_RETRY_DELAY

__all__ = ["add_help_parsers", "completion_command", "help_command"]

_EXIT_CODES: Final = {
    ExitCode.OK: "success (a file already up to date counts as success)",
    ExitCode.FAILURE: "any other failure, e.g. an internal error on the server",
    ExitCode.USAGE: "bad arguments, or a directory that cannot be served",
    ExitCode.NETWORK: "cannot connect or listen; connection lost; timed out",
    ExitCode.NOT_FOUND: "no such file on the server, or a path it refuses",
    ExitCode.PERMISSION: "the server may not read (or write) it, accepts no uploads, or "
    "wants a token",
    ExitCode.INTEGRITY: "the digest did not match, or the file changed during the transfer",
    ExitCode.PROTOCOL: "the peer does not speak ftx (or TLS as asked), or could not prove "
    "who it is",
    ExitCode.LOCAL_FILE: "the destination exists (use --force), is not a regular file, or "
    "its disk is full",
    ExitCode.BUSY: "the server is busy or shutting down, after --retries: try again later",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

_TOPICS: Final = {
    "exit-codes": "How ftx exits (every failure also prints one line starting with 'ftx:'):\n\n"
    + "\n".join(f"  {int(code):>3}  {text}" for code, text in _EXIT_CODES.items()),
    "paths": """\
Paths on the server are relative to the directory it serves, with '/' between names. A
leading '/' means that directory too (as in a URL, or an sftp session confined to a
directory), so '', '.', '/' and './' all name the served directory itself, on every command:

  ftx ls HOST /                  the served directory
  ftx get -r HOST / -o mirror    everything in it, into mirror/ (made if missing)
  ftx get HOST /docs/a.txt       the same as docs/a.txt
  ftx put HOST f.txt --to /      into the served directory

'..' that climbs out of the served directory is refused by the server (exit code 4).""",
    "retries": f"""\
A mistake fails at once: a host name that does not resolve, a connection refused or not
answered on the first attempt, a file that does not exist. What is worth waiting for is
retried, up to --retries times in a row (default {DEFAULT_RETRIES}):

  - a connection that was working and got lost (downloads and uploads then resume);
  - after that, a server that refuses connections while it restarts;
  - a server that answers 'busy' or 'shutting-down'.

The first wait is about --retry-delay seconds (default {DEFAULT_RETRY_DELAY:g}), each next one
twice as long, at most {MAX_RETRY_DELAY:g} s, each plus a random part up to --retry-delay, so
that many clients cut off together do not all come back at once. With several files, an
attempt that saved (or sent) a file starts the count again. With -o -, nothing is retried
once bytes are out.""",
    "environment": """\
Defaults for options you would otherwise type every time (an option given on the command
line wins):

  FTX_TOKEN        the shared token (as --token-file gives it); never put it in an option
  FTX_PORT         the port when HOST has none (default 3890), for get, ls and put
  FTX_TLS          1: connect with TLS (--tls)
  FTX_CAFILE       the certificate authorities to trust (--cafile)
  FTX_FINGERPRINT  the server certificate's SHA-256 fingerprint to pin (--fingerprint)""",
    "completion": """\
Tab completion of commands and options, for bash, zsh and fish (through argcomplete):

  bash:  eval "$(ftx completion bash)"        (e.g. in ~/.bashrc)
  zsh:   eval "$(ftx completion zsh)"         (in ~/.zshrc)
  fish:  ftx completion fish | source         (in ~/.config/fish/config.fish)""",
}


def add_help_parsers(commands: Any) -> None:
    """Add ``ftx help`` and ``ftx completion`` to the subcommands of the ``ftx`` parser."""
    help_parser = commands.add_parser(
        "help",
        help="explain a topic: " + ", ".join(_TOPICS),
        description="Explain one of these topics: " + ", ".join(_TOPICS) + ".",
    )
    help_parser.add_argument("topic", nargs="?", choices=list(_TOPICS), help="the topic")
    completion = commands.add_parser(
        "completion",
        help="print the shell code for tab completion (see 'ftx help completion')",
        description="Print the code that makes your shell complete ftx's commands and options.",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), help="your shell")


def help_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the topic asked for, or the list of topics; return the exit code."""
    if args.topic is None:
        parser.print_help()
        print("\ntopics of 'ftx help TOPIC':", ", ".join(_TOPICS))
    else:
        print(_TOPICS[args.topic])
    return ExitCode.OK


def completion_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the completion code for ``args.shell``; return the exit code."""
    from argcomplete import shell_integration

    sys.stdout.write(shell_integration.shellcode([parser.prog], shell=args.shell))
    return ExitCode.OK
