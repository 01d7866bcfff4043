"""When ``ftx get``, ``ftx ls`` and ``ftx put`` try again, how long they wait, and what they say
meanwhile: one retry loop for every command (:class:`Retrying`, over `stamina`_).

The rule: a mistake fails at once (a host name that does not resolve, a connection refused or
unanswered on the first attempt, a file that does not exist); a connection that was working and
got lost, a server that restarts after that, or a server that answers ``busy`` or
``shutting-down`` is tried again, up to ``--retries`` times in a row without progress, after a
growing wait with a random part (so that many clients cut off together do not all come back at
the same instant).

.. _stamina: https://stamina.hynek.me
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, TypeVar

import ftx
from ftx.cli._connect import connect_client
from ftx.cli._errors import CliError, ExitCode, describe, unwrap
from ftx.cli._options import parse_count, parse_positive_seconds
from ftx.cli._output import say
from ftx.errors import ConnectionLostError, FtxError, RemoteError
from ftx.protocol import ErrorCode

__all__ = ["DEFAULT_RETRIES", "Retrying", "add_retry_options"]

DEFAULT_RETRIES: Final = 3
DEFAULT_RETRY_DELAY: Final = 1.0
MAX_RETRY_DELAY: Final = 30.0
_COME_BACK_LATER: Final = frozenset({ErrorCode.BUSY, ErrorCode.SHUTTING_DOWN})

logger = logging.getLogger("ftx.cli")

if TYPE_CHECKING:
    from stamina.instrumentation import RetryDetails

T = TypeVar("T")


def add_retry_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--retries`` and ``--retry-delay`` to a command that connects."""
    parser.add_argument(
        "--retries",
        type=parse_count,
        default=DEFAULT_RETRIES,
        metavar="N",
        help="when a working connection is lost (and the server then restarts), or the server "
        "is busy or shutting down, try again up to N times in a row; a wrong host or a "
        f"refused first connection fails at once (default: {DEFAULT_RETRIES})",
    )
    parser.add_argument(
        "--retry-delay",
        type=parse_positive_seconds,
        default=DEFAULT_RETRY_DELAY,
        metavar="SECONDS",
        help="wait about this long before the first retry, twice as long before the next, "
        f"and so on (at most {MAX_RETRY_DELAY:g} s), each plus a random part up to SECONDS "
        f"(default: {DEFAULT_RETRY_DELAY:g})",
    )


class _Progressed(Exception):
    """An attempt failed after doing some of the work: try again at once, with a fresh count."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class Retrying:
    """The retry rule of one command, and its connections.

    Args:
        args: the command's options (``--retries``, ``--retry-delay``, ``-q``, ...).
        progress: a count that grows as work gets done (files saved, files sent); a failed
            attempt that made it grow is tried again at once, and the count of attempts in a
            row starts again.
    """

    def __init__(self, args: argparse.Namespace, progress: Callable[[], int] = lambda: 0) -> None:
        self._args = args
        self._progress = progress
        self.reached = False  # the server answered (a handshake, or a refusal) in this command
        self.may_retry: Callable[[], bool] = lambda: True  # e.g. nothing streamed out yet

    async def connect(self) -> ftx.Client:
        """:func:`connect_client`, noting whether the server answered (from then on, a refused
        connection means it is restarting, and is worth another try).

        Raises:
            As :func:`connect_client`.
        """
        try:
            client = await connect_client(self._args)
        except RemoteError as exc:
            self.reached |= exc.code in _COME_BACK_LATER  # it is there, and asks us to wait
            raise
        self.reached = True
        return client

    def worth_retrying(self, exc: BaseException) -> bool:
        """Whether trying again later may succeed where ``exc`` failed."""
        exc = unwrap(exc)
        if not self.may_retry():
            return False
        if isinstance(exc, RemoteError):
            return exc.code in _COME_BACK_LATER
        if isinstance(exc, ConnectionLostError):
            return True  # it was connected: the server went away, or is restarting
        if isinstance(exc, CliError):
            # Cannot connect: a mistake (wrong host or port, nothing running) on the first
            # attempt; a server restarting after a connection to it was lost.
            return exc.code == ExitCode.NETWORK and self.reached
        return False

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it succeeds or fails in a way not worth retrying.

        The first attempt runs without `stamina`_, which is imported (about 10 ms) only when
        there is something to retry: its retry loop then starts from that first failure, as if
        it had run the attempt itself.

        Raises:
            Whatever the last attempt raised.
        """
        failed: BaseException | None = None
        while failed is None:
            before = self._progress()
            try:
                return await attempt()
            except BaseException as exc:
                progressed = self._progress() > before and isinstance(exc, FtxError)
                if progressed and self.worth_retrying(exc):
                    self._say_progressed(exc)
                    continue
                if self._args.retries == 0 or not self.worth_retrying(exc):
                    raise
                failed = exc
        return await self._retry(attempt, failed)

    async def _retry(self, attempt: Callable[[], Awaitable[T]], failed: BaseException) -> T:
        """The retry loop (over stamina) after the first attempt failed with ``failed``."""
        import stamina
        import stamina.instrumentation

        args = self._args
        stamina.instrumentation.set_on_retry_hooks([self._on_retry])
        replay: BaseException | None = failed
        while True:
            try:
                async for trying in stamina.retry_context(
                    on=self.worth_retrying,
                    attempts=args.retries + 1,
                    timeout=None,
                    wait_initial=args.retry_delay,
                    wait_max=MAX_RETRY_DELAY,
                    wait_jitter=args.retry_delay,
                ):
                    with trying:
                        if replay is not None:  # stamina's first attempt: the one that failed
                            exc, replay = replay, None
                            raise exc
                        before = self._progress()
                        try:
                            return await attempt()
                        except FtxError as exc:
                            if self._progress() > before and self.worth_retrying(exc):
                                raise _Progressed(exc) from exc
                            raise
            except _Progressed as progressed:
                self._say_progressed(progressed.error)

    def _say_progressed(self, error: BaseException) -> None:
        """Say that the attempt that failed with ``error`` is tried again at once."""
        message = describe(error, self._args)[0]
        logger.debug("the attempt made progress before it failed: retrying at once")
        say(self._args, f"{message}; retrying")

    def _on_retry(self, details: RetryDetails) -> None:
        args = self._args
        message = describe(details.caused_by, args)[0]
        say(
            args,
            f"{message}; retrying in {details.wait_for:.1f} s "
            f"({details.retry_num} of {args.retries})",
        )
        logger.debug(
            "retry %d of %d in %.3f s, after %s: %r",
            details.retry_num,
            args.retries,
            details.wait_for,
            type(unwrap(details.caused_by)).__name__,
            unwrap(details.caused_by),
        )
