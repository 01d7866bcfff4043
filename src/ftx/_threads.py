"""Blocking work started in a worker thread now, waited for later.

:func:`trio.to_thread.run_sync` waits at once; a transfer wants to hash or write one chunk while
it sends or receives the next. hashlib and file writes release the GIL, so the overlap is real.
A :class:`ThreadJob` needs no nursery and is always waited for, even on cancellation: the
buffer or file descriptor it uses must not be reused or closed while it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

if TYPE_CHECKING:
    import outcome  # trio's own dependency: only its type is used here

__all__ = ["ThreadJob"]

T = TypeVar("T")


class ThreadJob(Generic[T]):
    """Runs ``function()`` in a worker thread, starting now; :meth:`result` waits for it."""

    def __init__(self, function: Callable[[], T]) -> None:
        self._done = trio.Event()
        self._outcome: outcome.Outcome[T] | None = None
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[T]) -> None:
            self._outcome = result
            token.run_sync_soon(self._done.set)

        trio.lowlevel.start_thread_soon(function, deliver)

    async def result(self) -> T:
        """Wait for the job (shielded from cancellation: it is short) and return its result or
        raise its exception. A cancellation pending when the job ends is then delivered."""
        with trio.CancelScope(shield=True):
            await self._done.wait()
        await trio.lowlevel.checkpoint_if_cancelled()
        assert self._outcome is not None
        return self._outcome.unwrap()

    async def wait_quietly(self) -> None:
        """Wait for the job to end, ignoring its result: for cleanup after a failure."""
        with trio.CancelScope(shield=True):
            await self._done.wait()
