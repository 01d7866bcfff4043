"""Conformance checks for framed channels, in the spirit of :mod:`trio.testing`.

:func:`check_framed_channel` runs the behaviour contract of :class:`ftx.framing.FramedChannel`
against any pair of connected :class:`trio.abc.Channel` objects carrying ``bytes`` frames: use it
in your own test suite when you build a ``FramedChannel`` over a transport of your own, or write
another channel that should behave like one. It needs no pytest; a failure raises
:exc:`AssertionError`.
"""

from __future__ import annotations

import random
from contextlib import suppress

import trio
from trio.testing import wait_all_tasks_blocked

from ftx.testing._helpers import (
    _BUSY,
    ChannelMaker,
    ChannelPair,
    _aclose,
    _Buffer,
    _expect,
    _expect_frames,
    _open_pair,
    _receive,
    _receive_unless_blocked,
    _send,
    _send_each,
    _transfer,
)
from ftx.testing._sending import (
    _check_backpressure,
    _check_cancelled_sends,
    _check_sent_frames_go,
)

__all__ = ["ChannelMaker", "ChannelPair", "check_framed_channel"]


async def _check_boundaries(maker: ChannelMaker) -> None:
    big = bytes(range(256)) * 160
    frames: list[_Buffer] = [b"x", b"", b"", b"two", bytearray(b"bytearray"), memoryview(b"view")]
    frames += [memoryview(b"--slice--")[2:7], big, b"", memoryview(bytearray(big))[1:-1]]
    async with _open_pair(maker) as (s, r):
        assert isinstance(s, trio.abc.SendChannel), f"{s!r} is not a trio.abc.SendChannel"
        assert isinstance(r, trio.abc.ReceiveChannel), f"{r!r} is not a trio.abc.ReceiveChannel"
        await _transfer(s, r, frames)
        await _transfer(r, s, [b"the other way", b"", big])


async def _check_busy(maker: ChannelMaker, clogged_maker: ChannelMaker | None) -> None:
    outcomes: list[bytes | str] = []

    async def receive_once(r: trio.abc.ReceiveChannel[bytes]) -> None:
        try:
            outcomes.append(await r.receive())
        except trio.BusyResourceError:
            outcomes.append(_BUSY)

    async with _open_pair(maker) as (s, r), trio.open_nursery() as nursery:
        nursery.start_soon(receive_once, r)
        nursery.start_soon(receive_once, r)
        await wait_all_tasks_blocked()
        assert outcomes == [_BUSY], f"two tasks blocked in receive(): got {outcomes!r}, not Busy"
        await _send(s, b"after busy")
    assert outcomes == [_BUSY, b"after busy"], f"receive after BusyResourceError: {outcomes!r}"

    outcomes.clear()

    async def send_once(s: trio.abc.SendChannel[bytes], frame: bytes) -> None:
        try:
            await s.send(frame)
            outcomes.append(frame)
        except trio.BusyResourceError:
            outcomes.append(_BUSY)

    # A send holds the channel while it waits for the transport, so a second one must see Busy.
    async with _open_pair(clogged_maker or maker) as (s, r):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_once, s, b"1")
            nursery.start_soon(send_once, s, b"2")
            got = await _receive(r)
            await wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # a send left blocked is a failure, reported below
        assert sorted(outcomes, key=str) == sorted([_BUSY, got], key=str), (
            f"two concurrent send() calls: outcomes {outcomes!r}, received {got!r}; "
            "expected one BusyResourceError and the other frame delivered"
        )


async def _check_full_duplex(maker: ChannelMaker) -> None:
    rng = random.Random(0x46545821)

    def random_frames(count: int) -> list[_Buffer]:
        sizes = [
            rng.choice([0, rng.randrange(1, 100), rng.randrange(100, 40_000)]) for _ in range(count)
        ]
        return [rng.randbytes(size) for size in sizes]

    forward, backward = random_frames(200), random_frames(200)
    forward.append(b"<end of forward>")
    backward.append(b"<end of backward>")
    async with _open_pair(maker) as (s, r), trio.open_nursery() as nursery:
        nursery.start_soon(_send_each, s, forward)
        nursery.start_soon(_send_each, r, backward)
        nursery.start_soon(_expect_frames, r, forward, "full duplex, forward")
        nursery.start_soon(_expect_frames, s, backward, "full duplex, backward")


async def _check_close(maker: ChannelMaker) -> None:
    # A clean close of the sender: the receiver drains the frames, then EndOfChannel for good.
    frames: list[_Buffer] = [b"last", b"", bytes(30_000)]

    async def send_then_close(s: trio.abc.SendChannel[bytes]) -> None:
        await _send_each(s, frames)
        await _aclose(s)

    async with _open_pair(maker) as (s, r):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_then_close, s)
            await wait_all_tasks_blocked()  # let the sender get as far as it can first
            await _expect_frames(r, frames, "frames sent before aclose()")
            for attempt in range(3):
                with _expect(trio.EndOfChannel, f"receive() #{attempt} after the peer closed"):
                    await _receive(r)
        with _expect(trio.ClosedResourceError, "send() after aclose()"):
            await _send(s, b"")
        with _expect(trio.ClosedResourceError, "receive() after aclose()"):
            await _receive(s)
        await _aclose(s)  # closing again is fine

    # Closing the receiver: it is closed, and the sender breaks sooner or later, for good.
    async with _open_pair(maker) as (s, r):
        await _aclose(r)
        await _aclose(r)
        with _expect(trio.ClosedResourceError, "receive() after aclose()"):
            await _receive(r)
        with _expect(trio.ClosedResourceError, "send() after aclose()"):
            await _send(r, b"x")
        with _expect(trio.BrokenResourceError, "send() to a closed peer"):
            for _ in range(10_000):
                await _send(s, bytes(1000))
        with _expect(trio.BrokenResourceError, "send() again on a channel broken by its peer"):
            await _send(s, b"")
        with _expect(trio.BrokenResourceError, "receive() on a channel broken by its peer"):
            await _receive(s)


async def _check_close_wakes(maker: ChannelMaker, clogged_maker: ChannelMaker | None) -> None:
    woken: list[bool] = []

    async def receive_expecting_closed(r: trio.abc.ReceiveChannel[bytes]) -> None:
        with _expect(trio.ClosedResourceError, "receive() blocked while the channel was closed"):
            await r.receive()
        woken.append(True)

    async def send_expecting_closed(s: trio.abc.SendChannel[bytes]) -> None:
        # A TLS transport reports its inner stream's closing as BrokenResourceError.
        with _expect(
            (trio.ClosedResourceError, trio.BrokenResourceError),
            "send() blocked while the channel was closed",
        ):
            await s.send(b"stuck")
        woken.append(True)

    async with _open_pair(maker) as (_, r), trio.open_nursery() as nursery:
        nursery.start_soon(receive_expecting_closed, r)
        await wait_all_tasks_blocked()
        await _aclose(r)
        await wait_all_tasks_blocked()
        assert woken, "aclose() did not wake the task blocked in receive()"
    if clogged_maker is not None:
        async with _open_pair(clogged_maker) as (s, _), trio.open_nursery() as nursery:
            nursery.start_soon(send_expecting_closed, s)
            await wait_all_tasks_blocked()
            # Forcefully, as trio's own stream checks do: a graceful close (a TLS close_notify)
            # may wait for the blocked send, and the peer of a clogged pair never reads.
            await trio.aclose_forcefully(s)
            await wait_all_tasks_blocked()
            assert len(woken) == 2, "aclose() did not wake the task blocked in send()"


async def _check_cancellation(maker: ChannelMaker) -> None:
    async def cancel_when_blocked(scope: trio.CancelScope) -> None:
        await wait_all_tasks_blocked()
        scope.cancel()

    async with _open_pair(maker) as (s, r), trio.open_nursery() as nursery:
        # Cancelled while blocked: nothing is lost.
        with trio.CancelScope() as scope:
            nursery.start_soon(cancel_when_blocked, scope)
            await r.receive()
        assert scope.cancelled_caught, "a blocked receive() was not cancelled"
        pending: list[_Buffer] = [b"one", b"two"]
        nursery.start_soon(_send_each, s, pending)
        await _expect_frames(r, [b"one"], "receive() after a cancelled receive()")
        await wait_all_tasks_blocked()
        # A frame may already be buffered: receive() must still check for cancellation.
        with trio.CancelScope() as scope:
            scope.cancel()
            await r.receive()
        assert scope.cancelled_caught, "receive() with a frame ready ignored a cancelled scope"
        await _expect_frames(r, [b"two"], "receive() after a cancelled receive()")

    # Cancel receives at random points of a stream of frames: still every frame, in order.
    rng = random.Random(0x4354)
    frames: list[_Buffer] = [rng.randbytes(rng.randrange(0, 40_000)) for _ in range(40)]
    received: list[bytes] = []

    async def send_then_close(s: trio.abc.SendChannel[bytes]) -> None:
        await _send_each(s, frames)
        await _aclose(s)  # a lost frame then shows as EndOfChannel instead of a hang

    async def cancel_after(scope: trio.CancelScope, yields: int) -> None:
        for _ in range(yields):
            await trio.lowlevel.checkpoint()
        scope.cancel()

    async with _open_pair(maker) as (s, r), trio.open_nursery() as nursery:
        nursery.start_soon(send_then_close, s)
        with suppress(trio.EndOfChannel):
            while True:
                with trio.CancelScope() as scope:
                    nursery.start_soon(cancel_after, scope, rng.randrange(0, 6))
                    received.append(await r.receive())
    expected = [bytes(frame) for frame in frames]
    lost = [i for i, frame in enumerate(expected) if received[i : i + 1] != [frame]]
    assert received == expected, (
        f"{len(received)} frames arrived of {len(frames)} sent, frames {lost} differ, "
        "after receives were cancelled at random points"
    )

    # A cancelled aclose() still closes.
    async with _open_pair(maker) as (s, r):
        for channel in (r, s):
            with trio.CancelScope() as scope:
                scope.cancel()
                await channel.aclose()
        with _expect(trio.ClosedResourceError, "receive() after a cancelled aclose()"):
            await _receive_unless_blocked(r)
        with _expect(trio.ClosedResourceError, "send() after a cancelled aclose()"):
            await _send(s, b"x")


def _first_assertion(group: BaseExceptionGroup[BaseException]) -> AssertionError | None:
    for exc in group.exceptions:
        if isinstance(exc, AssertionError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (found := _first_assertion(exc)):
            return found
    return None


async def check_framed_channel(
    channel_maker: ChannelMaker, clogged_channel_maker: ChannelMaker | None = None
) -> None:
    """Check that a pair of channels behaves like :class:`ftx.framing.FramedChannel`.

    Checked: ``send``, ``receive`` and ``aclose`` are checkpoints; frames keep their boundaries
    (empty frames included, ``bytearray`` and ``memoryview`` accepted, ``bytes`` returned); two
    tasks sending or two receiving get :exc:`trio.BusyResourceError`; a task may send while
    another receives, both ways at once; after ``aclose`` both directions raise
    :exc:`trio.ClosedResourceError` and ``aclose`` may be repeated; a clean close delivers every
    frame and then :exc:`trio.EndOfChannel` for good; closing the receiver eventually breaks the
    sender (:exc:`trio.BrokenResourceError`); ``aclose`` wakes a task blocked in ``receive``
    (and, given ``clogged_channel_maker``, a forceful close wakes one blocked in ``send``);
    cancelled receives lose no frame; a cancelled ``aclose`` still closes; a frame ``send``
    returned for reaches the peer with no further call on the sender (nothing is left in a
    buffer waiting for a flush); a ``send`` cancelled before it could start raises
    :exc:`trio.Cancelled`, delivers nothing and leaves the channel usable. Given
    ``clogged_channel_maker``, also: a ``send`` cancelled while blocked never leaves a frame cut
    short (the channel is broken, or the next frame arrives whole, after the cancelled one if
    ``send`` returned), and with nobody receiving, sends block before 16 MiB (backpressure:
    bounded memory). Frames of up to
    40 000 bytes are sent, so the channels must accept at least that much. Each check runs on a
    fresh pair; every pair is closed afterwards.

    Args:
        channel_maker: an async function of no arguments that returns a connected ``(sender,
            receiver)`` pair of :class:`trio.abc.Channel` objects of ``bytes``, each end able to
            send to and receive from the other.
        clogged_channel_maker: ``None``, or a function like ``channel_maker`` whose pair has no
            buffering: ``sender.send`` blocks until ``receiver.receive`` takes the frame (build
            it over :func:`trio.testing.lockstep_stream_pair`).

    Raises:
        AssertionError: the channels break the contract; the message says how.
    """
    try:
        # First: a channel that keeps frames in a buffer would make the later checks hang.
        await _check_sent_frames_go(channel_maker)
        await _check_boundaries(channel_maker)
        await _check_busy(channel_maker, clogged_channel_maker)
        await _check_full_duplex(channel_maker)
        await _check_close(channel_maker)
        await _check_close_wakes(channel_maker, clogged_channel_maker)
        await _check_cancellation(channel_maker)
        await _check_cancelled_sends(channel_maker, clogged_channel_maker)
        if clogged_channel_maker is not None:
            await _check_backpressure(clogged_channel_maker)
    except BaseExceptionGroup as group:
        # Report a failed check in a child task as itself, not wrapped by its nursery.
        failure = _first_assertion(group)
        if failure is None:
            raise
        raise failure from group
