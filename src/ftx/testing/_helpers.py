"""What the checks of :mod:`ftx.testing` share: the maker types, and sends, receives and
closes that check their own part of the contract (checkpoints, types) as they go."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TypeAlias, cast

import trio
from trio.testing import assert_checkpoints, wait_all_tasks_blocked

ChannelPair: TypeAlias = tuple[trio.abc.Channel[bytes], trio.abc.Channel[bytes]]
ChannelMaker: TypeAlias = Callable[[], Awaitable[ChannelPair]]
"""An async function of no arguments returning a connected ``(sender, receiver)`` pair."""

_Buffer: TypeAlias = bytes | bytearray | memoryview
_BUSY = "busy"


@asynccontextmanager
async def _open_pair(maker: ChannelMaker) -> AsyncIterator[ChannelPair]:
    sender, receiver = await maker()
    try:
        yield sender, receiver
    finally:
        try:
            await trio.aclose_forcefully(sender)
        finally:
            await trio.aclose_forcefully(receiver)


@contextmanager
def _expect(
    expected: type[BaseException] | tuple[type[BaseException], ...], doing: str
) -> Iterator[None]:
    """Fail unless the block raises ``expected`` (not wrapped in a group)."""
    names = " or ".join(
        e.__name__ for e in (expected if isinstance(expected, tuple) else (expected,))
    )
    try:
        yield
    except expected:
        return
    except Exception as exc:
        raise AssertionError(f"{doing}: expected {names}, got {exc!r}") from exc
    raise AssertionError(f"{doing}: expected {names}, but nothing was raised")


async def _send(channel: trio.abc.SendChannel[bytes], value: _Buffer) -> None:
    # A framed channel must take any bytes-like object, though Channel[bytes] only promises bytes.
    send = cast("Callable[[_Buffer], Awaitable[object]]", channel.send)
    with assert_checkpoints():
        result = await send(value)
    assert result is None, f"send() returned {result!r}, expected None"


async def _receive(channel: trio.abc.ReceiveChannel[bytes]) -> bytes:
    with assert_checkpoints():
        frame = await channel.receive()
    assert isinstance(frame, bytes), f"receive() returned {type(frame).__name__}, not bytes"
    return frame


class _Blocked(AssertionError):
    """A receive blocked where it should not have."""


async def _receive_unless_blocked(channel: trio.abc.ReceiveChannel[bytes]) -> bytes:
    """Receive, failing instead of hanging if the call blocks (every task waits)."""

    async def cancel_when_blocked(scope: trio.CancelScope) -> None:
        await wait_all_tasks_blocked()
        scope.cancel()

    outcome: bytes | Exception | None = None
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_when_blocked, scope)
            try:
                outcome = await _receive(channel)
            except Exception as exc:  # re-raised below, outside the nursery's group
                outcome = exc
            nursery.cancel_scope.cancel()
    if outcome is None:
        raise _Blocked("receive() blocked where it should have returned or raised")
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


async def _aclose(channel: trio.abc.AsyncResource) -> None:
    with assert_checkpoints():
        await channel.aclose()


async def _send_each(channel: trio.abc.SendChannel[bytes], frames: list[_Buffer]) -> None:
    for frame in frames:
        await _send(channel, frame)


async def _expect_frames(
    channel: trio.abc.ReceiveChannel[bytes], frames: list[_Buffer], what: str
) -> None:
    for index, frame in enumerate(frames):
        got = await _receive(channel)
        assert got == bytes(frame), (
            f"{what}: frame {index} came back as {got[:40]!r} ({len(got)} bytes), "
            f"expected {bytes(frame)[:40]!r} ({len(bytes(frame))} bytes)"
        )


async def _transfer(
    sender: trio.abc.SendChannel[bytes],
    receiver: trio.abc.ReceiveChannel[bytes],
    frames: list[_Buffer],
) -> None:
    """Send ``frames`` while receiving them concurrently (the channel may have no buffer)."""
    frames = [*frames, b"<end of transfer>"]  # a lost last frame fails instead of hanging
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_send_each, sender, frames)
        await _expect_frames(receiver, frames, "transfer")


async def _cancel_when_blocked(scope: trio.CancelScope) -> None:
    await wait_all_tasks_blocked()
    scope.cancel()
