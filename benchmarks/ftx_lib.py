"""Benchmark programs written against ftx's public library API only (``ftx.connect``,
``Client.get``, ``Client.list``, ``ftx.serve``). ``run.py`` starts them as separate processes::

    python ftx_lib.py big PORT PATH DEST [--no-verify | --cryptographic]
        One download on one connection; ``--no-verify`` passes ``verify=False`` (no digest),
        ``--cryptographic`` connects with ``digest="cryptographic"`` (BLAKE3, not XXH3-128).
    python ftx_lib.py tree PORT DEST CONNECTIONS
        Everything under the served root: directories are listed by one client and the files
        fetched by CONNECTIONS clients, each pipelining its requests (``Client.fetch``) from a
        shared queue; one ``sync`` at the end.
    python ftx_lib.py tree-stream PORT DEST
        Everything under the served root into DEST with ``ftx.tree.download`` on one
        connection: one tree stream where the server offers them (issue 14), files already in
        DEST with the server's size and time left out; one ``syncfs`` at the end.
    python ftx_lib.py many PORT PATH COUNT CONCURRENCY DEST_DIR
        COUNT verified downloads of PATH, CONCURRENCY at a time, each on its own connection,
        saved in DEST_DIR and deleted once verified; a download taking over 10 s counts as
        failed. Prints the number of failures.
    python ftx_lib.py serve DIR PORT MAX_CONNECTIONS
        ``ftx.serve`` on 127.0.0.1 with ``max_connections`` (in its ``ftx.ServerConfig``, or
        as a keyword in ftx versions from before it; for versions that limit connections);
        stops on SIGINT.
    python ftx_lib.py features
        Prints the optional features this ftx has, as JSON.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import posixpath
import sys
from collections import Counter
from pathlib import Path
from typing import Final

import trio

import ftx

HOST: Final = "127.0.0.1"
NO_VERIFY, CRYPTOGRAPHIC = "--no-verify", "--cryptographic"
TIMEOUT: Final = 10.0  # seconds per download in `many`, as pylimit's and wrk's timeouts


async def big(port: int, path: str, dest: str, *, verify: bool, cryptographic: bool) -> None:
    if not cryptographic:
        connecting = ftx.connect(HOST, port)
    elif hasattr(ftx, "ClientConfig"):
        connecting = ftx.connect(HOST, port, ftx.ClientConfig(digest="cryptographic"))
    else:  # an ftx without ClientConfig takes the settings as keywords of connect
        connecting = ftx.connect(HOST, port, digest="cryptographic")  # type: ignore[call-arg]
    async with connecting as client:
        await client.get(path, dest, verify=verify, overwrite=True)


async def tree(port: int, dest: Path, connections: int) -> None:
    # One lister feeds CONNECTIONS clients through a memory channel; each client pipelines its
    # requests with Client.fetch, and the files are flushed to disk with one sync at the end.
    send, receive = trio.open_memory_channel[tuple[str, Path]](1024)
    failures: list[str] = []

    def done(path: str, result: object) -> None:
        if isinstance(result, ftx.FtxError):
            failures.append(f"{path}: {result}")

    async def list_everything() -> None:
        async with send, ftx.connect(HOST, port) as client:
            pending = [""]
            while pending:
                directory = pending.pop()
                (dest / directory).mkdir(parents=True, exist_ok=True)
                for entry in await client.list(directory):
                    child = posixpath.join(directory, entry.name)
                    if entry.type is ftx.EntryType.DIRECTORY:
                        pending.append(child)
                    elif entry.type is ftx.EntryType.FILE:
                        try:  # queue a whole listing at once: fetch then sends batches
                            send.send_nowait((child, dest / child))
                        except trio.WouldBlock:
                            await send.send((child, dest / child))

    async def fetch() -> None:
        async with ftx.connect(HOST, port) as client, receive.clone() as items:
            await client.fetch(items, on_done=done, sync=False)

    async with receive, trio.open_nursery() as nursery:
        nursery.start_soon(list_everything)
        for _ in range(connections):
            nursery.start_soon(fetch)
    await trio.to_thread.run_sync(os.sync)
    if failures:
        raise SystemExit(f"{len(failures)} failed, e.g. {failures[0]}")


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
    return {
        "max_connections": hasattr(ftx, "ServerConfig")
        or "max_connections" in inspect.signature(ftx.serve).parameters,
        "digest choice": hasattr(ftx, "ClientConfig")
        or "digest" in inspect.signature(ftx.connect).parameters,
    }


async def serve(root: str, port: int, max_connections: int) -> None:
    if hasattr(ftx, "ServerConfig"):
        config = ftx.ServerConfig(max_connections=max_connections)
        await ftx.serve(root, "127.0.0.1", port, config)
    else:  # an ftx from before ServerConfig: the settings were keywords of serve
        await ftx.serve(root, "127.0.0.1", port, max_connections=max_connections)


async def tree_stream(port: int, dest: Path) -> int:
    from ftx.tree import download  # (the user guide's path of the tree download)

    @contextlib.asynccontextmanager
    async def connect():  # type: ignore[no-untyped-def]
        async with ftx.connect(HOST, port) as client:
            yield client

    results = await download(connect, [""], dest, recursive=True, jobs=1)
    failed = [path for path, result in results if isinstance(result, ftx.FtxError)]
    for path in failed[:5]:
        print(f"failed: {path}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    match argv:
        case ["big", port, path, dest, *flags] if flags in ([], [NO_VERIFY], [CRYPTOGRAPHIC]):
            verify, cryptographic = NO_VERIFY not in flags, CRYPTOGRAPHIC in flags
            trio.run(lambda: big(int(port), path, dest, verify=verify, cryptographic=cryptographic))
        case ["tree", port, dest, connections]:
            trio.run(tree, int(port), Path(dest), int(connections))
        case ["tree-stream", port, dest]:
            return trio.run(tree_stream, int(port), Path(dest))
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
