"""A worker thread that owns the socket while a large stream of frames comes in.

``FramedChannel.receive_span`` hands the channel's socket (and its decoder, so nothing buffered
is lost) to a worker thread; there ``begin_frame`` and ``read_payload_into`` take each frame's
payload piece by piece, straight from the socket into one small buffer, and each piece is
hashed while it is still in the CPU's cache. The event loop only waits. Afterwards the channel
is the event loop's again: the frame sent after the big ones is received as usual.

Run it: ``python framed_span.py``.
"""

from __future__ import annotations

import hashlib
import os

import trio

from ftx.framing import BlockingReceiver, FramedChannel, IdleClock

FRAMES = 16
FRAME_SIZE = 1 << 20


async def main() -> None:
    left, right = trio.socket.socketpair()
    sender = FramedChannel(trio.SocketStream(left))
    receiver = FramedChannel(trio.SocketStream(right), max_frame_size=FRAME_SIZE)
    payload = os.urandom(FRAME_SIZE)
    expected = hashlib.sha256(payload * FRAMES).hexdigest()

    def take_all(span: BlockingReceiver) -> tuple[int, str]:
        """Runs in the worker thread: every frame, a piece at a time. Returns the bytes taken
        and their digest."""
        digest = hashlib.sha256()
        window = memoryview(bytearray(256 * 1024))
        taken = 0
        for _ in range(FRAMES):
            span.begin_frame()  # the header is in: the frame's size is known
            while count := span.read_payload_into(window):
                digest.update(window[:count])
                taken += count
        return taken, digest.hexdigest()

    async def send_all() -> None:
        for _ in range(FRAMES):
            await sender.send(payload)
        await sender.send(b"the end")

    async with sender, receiver, trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        # The span fails with SpanStalledError if fewer than 65536 bytes move in 10 seconds;
        # cancelling it wakes the thread at once.
        taken, digest = await receiver.receive_span(take_all, IdleClock(10, 65536))
        verdict = "matches" if digest == expected else "DIFFERS"
        print(f"took {taken} bytes in a worker thread; digest {verdict}")
        print(f"then, on the event loop: {(await receiver.receive()).decode()}")


if __name__ == "__main__":
    trio.run(main)
