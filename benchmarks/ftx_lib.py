"""Benchmark programs written against ftx's public library API only (``ftx.connect``,
``Client.get``, ``Client.list``, ``ftx.serve``). ``run.py`` starts them as separate processes::

    python ftx_lib.py big PORT PATH DEST [--no-verify]
        One download on one connection; ``--no-verify`` passes ``verify=False`` (no digest).
    python ftx_lib.py tree PORT DEST CONNECTIONS
        Everything under the served root: directories are listed and files fetched by
        CONNECTIONS workers, each with its own connection, sharing one queue.
    python ftx_lib.py many PORT PATH COUNT CONCURRENCY DEST_DIR
        COUNT verified downloads of PATH, CONCURRENCY at a time, each on its own connection,
        saved in DEST_DIR and deleted once verified; a download taking over 10 s counts as
        failed. Prints the number of failures.
    python ftx_lib.py serve DIR PORT MAX_CONNECTIONS
        ``ftx.serve`` on 127.0.0.1 with ``max_connections`` (for ftx versions that limit
        connections); stops on SIGINT.
    python ftx_lib.py features
        Prints the optional features this ftx has, as JSON.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import posixpath
import sys
from collections import Counter
from pathlib import Path
from typing import Final

import trio

import ftx

HOST: Final = "127.0.0.1"
TIMEOUT: Final = 10.0  # seconds per download in `many`, as pylimit's and wrk's timeouts


async def big(port: int, path: str, dest: str, *, verify: bool) -> None:
    async with ftx.connect(HOST, port) as client:
        await client.get(path, dest, verify=verify, overwrite=True)


async def tree(port: int, dest: Path, connections: int) -> None:
    send, receive = trio.open_memory_channel[tuple[str, bool]](math.inf)
    pending = 1  # items queued or in progress; the queue closes when it reaches 0
    send.send_nowait(("", True))

    async def worker(client: ftx.Client) -> None:
        nonlocal pending
        async for path, is_dir in receive:
            if is_dir:
                (dest / path).mkdir(parents=True, exist_ok=True)
                for entry in await client.list(path):
                    if entry.type in (ftx.EntryType.DIRECTORY, ftx.EntryType.FILE):
                        child = posixpath.join(path, entry.name)
                        send.send_nowait((child, entry.type is ftx.EntryType.DIRECTORY))
                        pending += 1
            else:
                await client.get(path, dest / path)
            pending -= 1
            if pending == 0:
                await send.aclose()

    async def connected_worker() -> None:
        async with ftx.connect(HOST, port) as client:
            await worker(client)

    async with send, receive, trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(connected_worker)


async def many(port: int, path: str, count: int, concurrency: int, dest: Path) -> int:
    failures: Counter[str] = Counter()
    limiter = trio.CapacityLimiter(concurrency)

    async def one(index: int) -> None:
        async with limiter:
            try:
                with trio.fail_after(TIMEOUT):
                    async with ftx.connect(HOST, port) as client:
                        result = await client.get(path, dest / f"{index}.bin", verify=True)
                os.unlink(result.dest)
            except (OSError, ftx.FtxError, trio.TooSlowError) as exc:
                failures[f"{type(exc).__name__}: {exc}"] += 1

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(one, index)
    total = sum(failures.values())
    for message, times in failures.most_common(3):
        print(f"{times} x {message}", file=sys.stderr)
    print(f"failures={total}")
    return 0  # run.py reads the count and warns


def features() -> dict[str, bool]:
    return {"max_connections": "max_connections" in inspect.signature(ftx.serve).parameters}


async def serve(root: str, port: int, max_connections: int) -> None:
    await ftx.serve(root, "127.0.0.1", port, max_connections=max_connections)


def main(argv: list[str]) -> int:
    match argv:
        case ["big", port, path, dest, *flags] if set(flags) <= {"--no-verify"}:
            trio.run(lambda: big(int(port), path, dest, verify="--no-verify" not in flags))
        case ["tree", port, dest, connections]:
            trio.run(tree, int(port), Path(dest), int(connections))
        case ["many", port, path, count, concurrency, dest]:
            return trio.run(many, int(port), path, int(count), int(concurrency), Path(dest))
        case ["serve", root, port, max_connections]:
            with contextlib.suppress(KeyboardInterrupt):  # SIGINT: the way run.py stops it
                trio.run(serve, root, int(port), int(max_connections))
        case ["features"]:
            print(json.dumps(features()))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
