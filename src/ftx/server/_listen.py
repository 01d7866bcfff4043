"""Accepting TCP connections: socket options, and running out of file descriptors gracefully.

:func:`trio.serve_listeners` already survives ``EMFILE``/``ENFILE``/``ENOMEM``/``ENOBUFS`` from
``accept()``: it logs a traceback and sleeps 100 ms, leaving the new connections waiting in the
listen backlog, where their clients hang until they give up. :func:`accept_loop` instead keeps
one descriptor in reserve; when ``accept()`` fails for want of descriptors it frees the reserve,
accepts one waiting connection, and hands it to a refusal handler (which answers ``busy`` and
closes it), then takes the reserve back. Only when the reserve itself cannot be had does it wait,
as trio does; it logs once per episode, not ten tracebacks a second.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from ftx._net import set_keepalive

__all__ = ["FdReserve", "accept_loop"]

# accept() errors that mean "out of resources, try again later", as in trio.serve_listeners.
_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_RETRY_SECONDS: Final = 0.1

logger = logging.getLogger("ftx.server")

Handler = Callable[[trio.abc.Stream], Awaitable[None]]


class FdReserve:
    """One file descriptor held back, to be freed when ``accept()`` runs out of them."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.take()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def take(self) -> bool:
        """Hold a descriptor (again); return whether one is held."""
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def free(self) -> bool:
        """Give the descriptor back to the system; return whether there was one."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True

    def close(self) -> None:
        self.free()


async def accept_loop(
    listener: trio.abc.Listener[trio.abc.Stream],
    handle: Handler,
    refuse: Handler,
    nursery: trio.Nursery,
    reserve: FdReserve,
) -> None:
    """Accept connections on ``listener`` until cancelled, starting ``handle(stream)`` in
    ``nursery`` for each, with TCP keepalive on.

    When the process runs out of descriptors, waiting connections are accepted one at a time
    with the ``reserve`` and passed to ``refuse(stream)`` instead (see the module docstring).

    Raises:
        OSError: ``accept()`` failed for a reason other than a lack of resources.
    """
    starved = False
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            if not starved:
                logger.warning(
                    "accept() failed: %s; refusing new connections until resources free up",
                    os.strerror(exc.errno or 0),
                )
                starved = True
            if reserve.free():
                try:
                    stream = await listener.accept()
                except OSError as again:
                    if again.errno not in _CAPACITY_ERRNOS:
                        raise
                    reserve.take()
                    await trio.sleep(_RETRY_SECONDS)
                else:
                    nursery.start_soon(_refuse_then_retake, refuse, stream, reserve)
            else:
                await trio.sleep(_RETRY_SECONDS)
                reserve.take()
            continue
        if starved and reserve.held:
            logger.warning("accepting connections again")
            starved = False
        set_keepalive(stream)
        nursery.start_soon(handle, stream)


async def _refuse_then_retake(refuse: Handler, stream: trio.abc.Stream, reserve: FdReserve) -> None:
    try:
        await refuse(stream)
    finally:
        await trio.aclose_forcefully(stream)
        reserve.take()
