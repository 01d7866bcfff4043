"""How ``ftx`` fails: :class:`CliError`, the exit codes, and :func:`describe`, which turns any
expected failure into one line and an exit code (no traceback)."""

from __future__ import annotations

import argparse
import enum
from typing import Final

from ftx.cli._output import printable
from ftx.errors import (
    ConnectionLostError,
    FtxError,
    IntegrityError,
    LocalFileError,
    RemoteError,
    RemoteProtocolError,
)
from ftx.protocol import ErrorCode


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


class CliError(FtxError):
    """A failure to report in one line, with the exit code to use (and, for ``--json``, the
    server's error code when it said one)."""

    def __init__(self, message: str, code: ExitCode, remote_code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.remote_code = remote_code


def describe(exc: BaseException, args: argparse.Namespace) -> tuple[str, ExitCode]:
    """The one line (without the ``ftx:`` prefix) and the exit code that report ``exc``, with
    unprintable characters escaped (:func:`~ftx.cli._output.printable`).

    Raises:
        BaseException: ``exc`` itself if it is not an expected failure (a bug: its traceback
            should show).
    """
    message, code = _describe(unwrap(exc), args)
    # Server text (a message, a digest, a file name in a local path) reaches most of these:
    # escaped, whichever it is, so that it cannot rewrite the terminal.
    return printable(message), code


def _describe(exc: BaseException, args: argparse.Namespace) -> tuple[str, ExitCode]:
    match exc:
        case CliError():
            return str(exc), exc.code
        case RemoteError():
            code = _REMOTE_EXIT_CODES.get(exc.code, ExitCode.FAILURE)
            if exc.code == ErrorCode.TOO_LARGE and getattr(args, "command", None) == "ls":
                code = ExitCode.FAILURE  # a listing over its limit: nothing local is at fault
            return f"{exc.message}{_hint(exc)} [{exc.code}]", code
        case IntegrityError():
            return printable(str(exc)), ExitCode.INTEGRITY
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


def unwrap(exc: BaseException) -> BaseException:
    """``exc``, or the lone exception inside it (trio's nurseries wrap one failure in a group)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def error_name(exc: BaseException, code: ExitCode) -> str:
    """A short name of what failed, for ``--json``: the server's error code (``not-found``,
    ``busy``, ...) or the kind of exit code (``network``, ``local-file``, ...)."""
    exc = unwrap(exc)
    if isinstance(exc, RemoteError):
        return printable(exc.code)
    if isinstance(exc, CliError) and exc.remote_code is not None:
        return printable(exc.remote_code)
    return code.name.lower().replace("_", "-")


def _hint(exc: RemoteError) -> str:
    """Advice to add to a refusal, where the server's message lacks it."""
    if exc.code == ErrorCode.NOT_A_FILE and exc.message.endswith("is a directory"):
        return " (use -r to fetch a directory)"
    return ""


def _describe_os_error(exc: OSError) -> str:
    name = f" {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or exc}{name}"
