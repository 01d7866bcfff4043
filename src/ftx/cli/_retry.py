"""When ``ftx get`` and ``ftx put`` try again after a failure, and how long they wait at most."""

from __future__ import annotations

from typing import Final

from ftx.cli._errors import CliError, ExitCode
from ftx.errors import ConnectionLostError, RemoteError
from ftx.protocol import ErrorCode

DEFAULT_RETRIES: Final = 3
MAX_RETRY_DELAY: Final = 30.0


def worth_retrying(exc: ConnectionLostError | CliError | RemoteError) -> bool:
    """A lost or refused connection, or a server that is busy or restarting: trying again
    later (and resuming) may succeed. Anything else would fail the same way again."""
    if isinstance(exc, RemoteError):
        return exc.code in (ErrorCode.BUSY, ErrorCode.SHUTTING_DOWN)
    if isinstance(exc, CliError):
        return exc.code == ExitCode.NETWORK
    return True
