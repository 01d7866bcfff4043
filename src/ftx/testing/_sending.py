"""The checks of what :meth:`send` guarantees: a frame it returned for is on its way, a
cancelled send never cuts a frame short, and sends block when nobody receives."""

from __future__ import annotations

import trio
from trio.testing import wait_all_tasks_blocked

from ftx.testing._helpers import (
    ChannelMaker,
    _Blocked,
    _Buffer,
    _cancel_when_blocked,
    _open_pair,
    _receive_unless_blocked,
    _send,
    _send_each,
)


async def _check_sent_frames_go(maker: ChannelMaker) -> None:
    # A frame send() returned for is on its way: the peer gets it with no further call on the
    # sender (no flush, no other send), even if the sender then only waits.
    async with _open_pair(maker) as (s, r):
        batches: list[list[_Buffer]] = [[b"alone"], [b"one", b"two", bytes(1000)]]
        for frames in batches:
            await _send_each(s, frames)
            for index, frame in enumerate(frames):
                try:
                    got = await _receive_unless_blocked(r)
                except _Blocked:
                    raise AssertionError(
                        f"frame {index} of {len(frames)}, sent with send(), did not reach the "
                        "peer while the sender waited: send() left it in a buffer"
                    ) from None
                assert got == frame, f"after send(): got {got[:40]!r}, expected {frame[:40]!r}"


async def _check_cancelled_sends(maker: ChannelMaker, clogged_maker: ChannelMaker | None) -> None:
    # Cancelled before it could start: Cancelled, the frame never arrives, the channel works.
    async with _open_pair(maker) as (s, r):
        with trio.CancelScope() as scope:
            scope.cancel()
            await s.send(b"cancelled")
        assert scope.cancelled_caught, "send() in a cancelled scope did not raise Cancelled"
        await _send(s, b"after")
        got = await _receive_unless_blocked(r)
        assert got == b"after", f"after a send() cancelled before it began: received {got!r}"
    if clogged_maker is None:
        return
    # Cancelled while blocked: the peer never sees a frame cut short. Either the channel says it
    # is broken, or the next frame arrives whole, after the cancelled one if send() returned
    # (it was committed) and alone if send() raised Cancelled.
    async with _open_pair(clogged_maker) as (s, r):
        big = bytes(range(256)) * 160
        returned = False
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(_cancel_when_blocked, scope)
                await s.send(big)
                returned = True
            nursery.cancel_scope.cancel()
        outcome: list[str] = []

        async def send_next() -> None:
            try:
                await s.send(b"next")
                outcome.append("sent")
            except trio.BrokenResourceError:
                outcome.append("broken")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_next)
            await wait_all_tasks_blocked()
            if outcome != ["broken"]:
                expected = [big, b"next"] if returned else [b"next"]
                for frame in expected:
                    got = await _receive_unless_blocked(r)
                    how = "returned" if returned else "raised Cancelled"
                    assert got == frame, (
                        f"after a send() cancelled while blocked ({how}): received "
                        f"{got[:20]!r} ({len(got)} bytes), expected {frame[:20]!r} "
                        f"({len(frame)} bytes)"
                    )


async def _check_backpressure(clogged_maker: ChannelMaker) -> None:
    # Nobody receives: sends must block sooner or later (memory stays bounded), not return for
    # every frame.
    budget = 16 << 20
    frame = bytes(1000)
    sent = 0

    async def flood(s: trio.abc.SendChannel[bytes]) -> None:
        nonlocal sent
        while sent < budget:
            await s.send(frame)
            sent += len(frame)

    async with _open_pair(clogged_maker) as (s, _), trio.open_nursery() as nursery:
        nursery.start_soon(flood, s)
        await wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert sent < budget, (
        f"send() returned for {budget} bytes of frames that nobody received: no backpressure"
    )
