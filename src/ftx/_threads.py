"""Concurrency helpers: blocking work started in a worker thread now and waited for later, and
tasks run side by side whose failure is raised as itself.

:func:`trio.to_thread.run_sync` waits at once; a transfer wants to hash or write one chunk while
it sends or receives the next. hashlib and file writes release the GIL, so the overlap is real.
A :class:`ThreadJob` needs no nursery and is always waited for, even on cancellation: the
buffer or file descriptor it uses must not be reused or closed while it runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Generic, TypeVar

import trio

if TYPE_CHECKING:
    import outcome  # trio's own dependency: only its type is used here

__all__ = ["ThreadJob", "leaf_exceptions", "run_together", "with_background"]

T = TypeVar("T")


class ThreadJob(Generic[T]):
    """Runs ``function()`` in a worker thread, starting now; :meth:`result` waits for it.

    ``on_done``, if given, is called in the trio thread as soon as the function has returned
    (or raised), whether or not anyone is waiting for the result yet.
    """

    def __init__(
        self, function: Callable[[], T], on_done: Callable[[], object] | None = None
    ) -> None:
        self._done = trio.Event()
        self._outcome: outcome.Outcome[T] | None = None
        token = trio.lowlevel.current_trio_token()

        def finish() -> None:
            self._done.set()
            if on_done is not None:
                on_done()

        def deliver(result: outcome.Outcome[T]) -> None:
            self._outcome = result
            token.run_sync_soon(finish)

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


async def run_together(*functions: Callable[[], Awaitable[None]]) -> None:
    """Run the functions concurrently; if any fails, cancel the others and raise its error
    itself (not wrapped in an exception group: these are the client's documented errors)."""
    try:
        async with trio.open_nursery() as nursery:
            for function in functions:
                nursery.start_soon(function)
    except BaseExceptionGroup as group:
        raise _first_failure(group) from None


async def with_background(
    background: Callable[[], Awaitable[None]], main: Callable[[], Awaitable[T]]
) -> T:
    """Run ``main()`` while ``background()`` runs beside it (a progress display, say: it is
    cancelled once ``main`` returns); return what ``main`` returns. A failure of either is
    raised itself, not wrapped in an exception group."""
    result: list[T] = []

    async def run_main(cancel_scope: trio.CancelScope) -> None:
        result.append(await main())
        cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(background)
            nursery.start_soon(run_main, nursery.cancel_scope)
    except BaseExceptionGroup as group:
        raise _first_failure(group) from None
    return result[0]  # (the nursery ends early only by raising)


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to raise for a nursery's ``group``: its first leaf that is not a
    cancellation (a cancellation only if all are)."""
    leaves = leaf_exceptions(group)
    failures = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    return (failures or leaves)[0]


def leaf_exceptions(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            leaves.extend(leaf_exceptions(exc))
        else:
            leaves.append(exc)
    return leaves
