"""Minimal Python transfer programs: what plain Python can do, the baseline ftx is held to.

Run as a script (``run.py`` starts them as separate processes)::

    python pylimit.py serve DIR PORT
        A blocking server, one thread per connection: it reads a path ending in a newline,
        answers with the file's size (8 bytes, big-endian) and ``socket.sendfile`` of the file.
    python pylimit.py get PORT PATH DEST [--fsync]
        A blocking client: ``recv_into`` a 1 MiB buffer and write it to DEST (``/dev/null``
        works); ``--fsync`` flushes DEST to disk at the end, as ftx does.
    python pylimit.py http PORT PATH DIGEST COUNT CONCURRENCY DEST_DIR
        A trio HTTP/1.0 client for scenario (c): COUNT downloads, CONCURRENCY at a time, each
        on its own connection, each body written to a file in DEST_DIR, checked against the
        SHA-256 DIGEST and deleted, as the ftx client does; a download taking over 10 s counts
        as failed. Prints the number of failures.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Final

BUFFER_SIZE: Final = 1 << 20
TIMEOUT: Final = 10.0  # seconds per download in the http client, as wrk --timeout 10s
_SIZE: Final = struct.Struct("!Q")


def serve(root: Path, port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(root, connection), daemon=True).start()


def _serve_one(root: Path, connection: socket.socket) -> None:
    with connection, connection.makefile("rb") as requests:
        for line in requests:
            path = root / line.decode().rstrip("\n")
            with open(path, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                connection.sendall(_SIZE.pack(size))
                connection.sendfile(file)


def get(port: int, path: str, dest: str, *, fsync: bool) -> None:
    buffer = bytearray(BUFFER_SIZE)
    view = memoryview(buffer)
    with socket.create_connection(("127.0.0.1", port)) as sock, open(dest, "wb") as out:
        sock.sendall(path.encode() + b"\n")
        header = _receive_exactly(sock, _SIZE.size)
        (remaining,) = _SIZE.unpack(header)
        while remaining:
            count = sock.recv_into(view, min(BUFFER_SIZE, remaining))
            if not count:
                raise ConnectionError(f"connection closed with {remaining} bytes to go")
            out.write(view[:count])
            remaining -= count
        if fsync:
            out.flush()
            os.fsync(out.fileno())


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed in the header")
        data += chunk
    return data


def http(port: int, path: str, digest: str, count: int, concurrency: int, dest: Path) -> int:
    import trio  # only this client needs it: the sendfile pair stays plain Python

    failures: list[str] = []

    async def one(index: int, limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            try:
                with trio.fail_after(TIMEOUT):
                    await fetch(index)
            except (OSError, ValueError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                failures.append(f"{type(exc).__name__}: {exc}")

    async def fetch(index: int) -> None:
        # Streamed to the file and the hash as it arrives, as the ftx client does.
        hasher, target, head = hashlib.sha256(), dest / f"{index}.bin", b""
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(f"GET /{path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            with open(target, "wb") as out:  # noqa: ASYNC230 - blocking writes, as ftx's client
                while b"\r\n\r\n" not in head:
                    chunk = await stream.receive_some(BUFFER_SIZE)
                    if not chunk:
                        raise ValueError("connection closed in the response header")
                    head += chunk
                head, _, body = head.partition(b"\r\n\r\n")
                if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
                    raise ValueError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
                out.write(body)
                hasher.update(body)
                while chunk := await stream.receive_some(BUFFER_SIZE):
                    out.write(chunk)
                    hasher.update(chunk)
        if hasher.hexdigest() != digest:
            raise ValueError("digest mismatch")
        target.unlink()

    async def main() -> None:
        limiter = trio.CapacityLimiter(concurrency)
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(one, index, limiter)

    trio.run(main)
    for message, times in Counter(failures).most_common(3):
        print(f"{times} x {message}", file=sys.stderr)
    print(f"failures={len(failures)}")
    return 0  # run.py reads the count and warns


def main(argv: list[str]) -> int:
    match argv:
        case ["serve", root, port]:
            serve(Path(root), int(port))
        case ["get", port, path, dest, *flags] if set(flags) <= {"--fsync"}:
            get(int(port), path, dest, fsync="--fsync" in flags)
        case ["http", port, path, digest, count, concurrency, dest]:
            return http(int(port), path, digest, int(count), int(concurrency), Path(dest))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
