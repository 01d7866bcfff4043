"""Ranges of a file sent with FramedChannel's fast paths over a local TCP connection.

Run it from a checkout with ftx installed::

    python docs/examples/framed_file.py

The client asks for three ranges of a file in one write (``send_frames``); the server takes the
requests that arrived together as a batch (``receive`` then ``receive_nowait``) and answers each
with frames whose payload is an 8-byte offset followed by the file's bytes (``send_file``:
``os.sendfile`` on plain TCP), then an empty frame. The client receives every frame into one
reused buffer (``receive_into``: ``recv_into`` from the socket), checks each byte against the
file, and exits with status 0. See docs/embedding.md for the API it uses.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import tempfile

import trio

from ftx.errors import RemoteProtocolError
from ftx.framing import FramedChannel

MAX_FRAME_SIZE = 1 << 20  # both ends agree on it
CHUNK = 256 * 1024  # file bytes per frame; with the 8-byte prefix, well under the limit
FILE_SIZE = 3 * 1024 * 1024 + 123
# (offset, count) ranges the client asks for; the last one runs to the end of the file.
RANGES = [(0, 1000), (5, 2 * CHUNK + 17), (FILE_SIZE - 700_000, 700_000)]


def request(offset: int, count: int) -> bytes:
    return offset.to_bytes(8, "big") + count.to_bytes(8, "big")


async def serve_file(fd: int, stream: trio.SocketStream) -> None:
    """Answer batches of range requests until the client half-closes."""
    try:
        async with FramedChannel(stream, max_frame_size=MAX_FRAME_SIZE) as channel:
            while True:
                try:
                    batch = [await channel.receive()]
                except trio.EndOfChannel:
                    break
                while True:  # the requests that arrived with the first one, without waiting
                    try:
                        batch.append(channel.receive_nowait())
                    except trio.WouldBlock:
                        break
                print(f"server: took {len(batch)} request(s) in one batch")
                for payload in batch:
                    offset = int.from_bytes(payload[:8], "big")
                    end = offset + int.from_bytes(payload[8:], "big")
                    for start in range(offset, end, CHUNK):
                        count = min(CHUNK, end - start)
                        prefix = start.to_bytes(8, "big")
                        if await channel.send_file(prefix, fd, start, count) < count:
                            # The file shrank: the frame was padded with zeros. A real protocol
                            # must tell its peer; this example only has to stop.
                            raise RuntimeError("the file ended early")
                    await channel.send(b"")  # end of this range
    except (RemoteProtocolError, trio.BrokenResourceError) as exc:
        print(f"server: dropped a connection: {exc!r}", file=sys.stderr)


async def fetch_ranges(port: int, content: bytes) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with FramedChannel(stream, max_frame_size=MAX_FRAME_SIZE) as channel:
        # Three frames of one part each, in one write.
        await channel.send_frames(*[[request(offset, count)] for offset, count in RANGES])
        await channel.send_eof()  # no more requests; the answers can still arrive
        buffer = bytearray(MAX_FRAME_SIZE)  # reused for every frame
        for offset, count in RANGES:
            received = frames = 0
            while (size := await channel.receive_into(buffer)) > 0:
                start = int.from_bytes(buffer[:8], "big")
                data = memoryview(buffer)[8:size]  # valid until the next receive_into
                assert start == offset + received
                assert data == content[start : start + len(data)]
                received += len(data)
                frames += 1
            assert received == count
            print(f"client: {count} bytes from offset {offset} in {frames} frame(s), all correct")


async def main(fd: int, content: bytes) -> None:
    async with trio.open_nursery() as nursery:
        handler = functools.partial(serve_file, fd)
        serve = functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        listeners: list[trio.SocketListener] = await nursery.start(serve)
        port: int = listeners[0].socket.getsockname()[1]
        await fetch_ranges(port, content)
        nursery.cancel_scope.cancel()  # stop the server
    print("done")


if __name__ == "__main__":
    content = random.Random(7).randbytes(FILE_SIZE)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "data.bin")
        with open(path, "wb") as file:
            file.write(content)
        fd = os.open(path, os.O_RDONLY)
        try:
            trio.run(main, fd, content)
        finally:
            os.close(fd)
