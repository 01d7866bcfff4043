"""An echo server and a client that talk in length-prefixed frames with ftx's FramedChannel.

Run it from a checkout with ftx installed::

    python docs/examples/framed_echo.py

It starts the server on 127.0.0.1 (on a port the system picks), connects, sends a few frames
(an empty one and one built from several buffers among them), prints what comes back, and exits
with status 0. See docs/embedding.md for the API it uses.
"""

from __future__ import annotations

import functools
import sys

import trio

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import FramedChannel

# Both ends agree on the largest payload; the receiver enforces it as each header arrives.
MAX_FRAME_SIZE = 64 * 1024


async def echo_handler(stream: trio.SocketStream) -> None:
    """Serve one connection: send every frame back until the client has sent its last one."""
    channel = FramedChannel(stream, max_frame_size=MAX_FRAME_SIZE)
    try:
        async with channel:  # closes the connection when the client is done
            async for frame in channel:  # ends when the client half-closes (send_eof)
                await channel.send(frame)
    except (RemoteProtocolError, trio.BrokenResourceError) as exc:
        # A client that breaks the framing, or vanishes, ends its own connection only: an
        # exception escaping a serve_tcp handler would stop the whole server.
        print(f"server: dropped a connection: {exc!r}", file=sys.stderr)


async def run_client(port: int) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with FramedChannel(stream, max_frame_size=MAX_FRAME_SIZE) as channel:
        for payload in [b"hello, frames", b"", bytes([0, 1, 2, 255])]:
            await channel.send(payload)
            reply = await channel.receive()
            assert reply == payload
            print(f"sent {payload!r}, got back {reply!r}")

        # One frame from several buffers, written without joining them first.
        block = bytearray(b"x" * 40_000)  # e.g. a chunk of a file, in a reused buffer
        await channel.send_parts(b"chunk 7:", memoryview(block), b":end")
        reply = await channel.receive()
        assert reply == b"chunk 7:" + block + b":end"
        print(f"sent 3 parts as one frame, got back {len(reply)} bytes: {reply[:9]!r}...")

        # Too large for the agreed limit: refused here, nothing sent, the channel still usable.
        try:
            await channel.send(bytes(MAX_FRAME_SIZE + 1))
        except LocalProtocolError as exc:
            print(f"refused before sending: {exc}")

        await channel.send_eof()  # "no more frames from me"; replies can still arrive
        leftovers = [frame async for frame in channel]  # until the server closes
        print(f"server closed the connection; {len(leftovers)} frames left over")


async def main() -> None:
    async with trio.open_nursery() as nursery:
        # Port 0: the system picks a free port; nursery.start returns once the server listens.
        serve = functools.partial(trio.serve_tcp, echo_handler, 0, host="127.0.0.1")
        listeners: list[trio.SocketListener] = await nursery.start(serve)
        port: int = listeners[0].socket.getsockname()[1]
        print(f"echo server listening on 127.0.0.1:{port}")
        await run_client(port)
        nursery.cancel_scope.cancel()  # stop the server
    print("done")


if __name__ == "__main__":
    trio.run(main)
