"""Load faults (issue 5, deliverable 7): 200 idle or trickling connections and 100 real clients
against an ``ftx serve`` process limited to 256 file descriptors. Every real client gets a
verified file or a clean ``busy`` error (never a silent close), none hangs, the server
process survives, and a canary download gets through while the idle connections are still open
and again once they are gone. Loopback only, every wait bounded.
"""

from __future__ import annotations

import errno
import json
import random
import resource
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import trio

import ftx
from faults_helpers import LOOPBACK, ftx_serve, run_ftx, server_process, sha256_of
from ftx.protocol.messages import Hello, encode_message

IDLE_CONNECTIONS = 200
TRICKLING = 50  # of the idle ones, these send their HELLO one byte at a time
REAL_CLIENTS = 100
DESCRIPTORS = 256
CLIENT_BOUND = 30.0  # seconds: a client still waiting after this is hung

# The limits the server runs with, as ftx serve options and as ftx.ServerConfig fields. Without
# the options (an ftx serve from before they existed), the server is made from the library
# instead, with those of the settings it accepts (as keywords of ftx.serve, before ServerConfig).
LIMIT_OPTIONS = {"--max-connections": "150", "--handshake-timeout": "2", "--idle-timeout": "5"}
SERVE_SCRIPT = """
import functools, inspect, json, logging, sys
import trio, ftx
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
root, wanted = sys.argv[1], json.loads(sys.argv[2])
if hasattr(ftx, "ServerConfig"):
    options = wanted
    serve = functools.partial(ftx.serve, config=ftx.ServerConfig(**options))
else:
    known = inspect.signature(ftx.serve).parameters
    options = {name: value for name, value in wanted.items() if name in known}
    serve = functools.partial(ftx.serve, **options)
async def main():
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(serve, root, "127.0.0.1", 0)
        port = listeners[0].socket.getsockname()[1]
        print(f"options {sorted(options)} on 127.0.0.1:{port}", flush=True)
trio.run(main)
"""
LIMITS = {"max_connections": 150, "handshake_timeout": 2.0, "idle_timeout": 5.0}


async def serve_with_limits(root: Path) -> list[str]:
    usage = await run_ftx("serve", "--help")
    if all(option in usage.stdout for option in LIMIT_OPTIONS):
        return ftx_serve(root, *(part for item in LIMIT_OPTIONS.items() for part in item))
    return [sys.executable, "-c", SERVE_SCRIPT, str(root), json.dumps(LIMITS)]


def descriptor_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return preexec


async def open_idle(port: int, count: int) -> list[trio.SocketStream]:
    streams: list[trio.SocketStream] = []

    async def one() -> None:
        try:
            with trio.fail_after(10):
                streams.append(await trio.open_tcp_stream(LOOPBACK, port))
        except (OSError, trio.TooSlowError):
            pass  # refused at the door is fine too; what matters is the server's behaviour

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return streams


async def trickle(streams: list[trio.SocketStream]) -> None:
    """Send a HELLO one byte every 0.3 s on each stream, until cancelled."""
    hello = b"".join(bytes(part) for part in encode_message(Hello((1,))))
    frame = len(hello).to_bytes(4, "big") + hello
    for position in range(len(frame)):
        for stream in streams:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(frame[position : position + 1])
        await trio.sleep(0.3)


async def fetch(port: int, dest: Path, expected: str) -> str:
    """One real client: returns how it ended ("verified", or the kind of clean error)."""
    try:
        with trio.fail_after(CLIENT_BOUND):
            async with ftx.connect(
                LOOPBACK, port, ftx.ClientConfig(idle_timeout=CLIENT_BOUND - 5)
            ) as client:
                await client.get("file.bin", dest, durable=False)
    except trio.TooSlowError:
        return "HUNG"
    except ftx.RemoteError as exc:
        return f"refused: {exc.code}"
    except ftx.ConnectionLostError as exc:
        return "HUNG" if "sent nothing" in str(exc) else "connection lost"
    except OSError as exc:
        return f"connection error: {errno.errorcode.get(exc.errno or 0, exc)}"
    return "verified" if sha256_of(dest) == expected else "CORRUPT"


CLEAN = {"verified", "connection lost"}
CLEAN_REFUSALS = {"busy", "shutting-down", "timeout", "internal"}


def is_clean(outcome: str) -> bool:
    if outcome in CLEAN or outcome.startswith("connection error"):
        return True
    return outcome.startswith("refused: ") and outcome.removeprefix("refused: ") in CLEAN_REFUSALS


async def canary(port: int, dest: Path, expected: str, bound: float) -> list[str]:
    """Download until one attempt verifies (retrying clean refusals), for at most ``bound`` s."""
    outcomes: list[str] = []
    with trio.move_on_after(bound):
        while True:
            dest.unlink(missing_ok=True)
            outcome = await fetch(port, dest, expected)
            outcomes.append(outcome)
            if outcome == "verified" or not is_clean(outcome):
                break
            await trio.sleep(0.25)
    return outcomes


async def test_idle_connections_and_many_clients_with_few_descriptors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    content = random.Random(256).randbytes(256 * 1024)
    (root / "file.bin").write_bytes(content)
    expected = sha256_of(root / "file.bin")
    out = tmp_path / "out"
    out.mkdir()
    command = await serve_with_limits(root)
    log = tmp_path / "server.log"
    async with server_process(command, log, descriptor_limit(DESCRIPTORS)) as server:
        idle = await open_idle(server.port, IDLE_CONNECTIONS)
        async with trio.open_nursery() as attack:
            attack.start_soon(trickle, idle[:TRICKLING])
            outcomes: list[str] = [""] * REAL_CLIENTS

            async def real(index: int) -> None:
                outcomes[index] = await fetch(server.port, out / f"{index}.bin", expected)

            async with trio.open_nursery() as clients:
                for index in range(REAL_CLIENTS):
                    clients.start_soon(real, index)
            # The attack goes on: the server must still get a download through.
            during = await canary(server.port, out / "canary-during.bin", expected, 15)
            attack.cancel_scope.cancel()
        counts = Counter(outcomes)
        print(f"{command[2:4]}: {len(idle)} idle connections; real clients: {dict(counts)}")
        print(f"canary during the attack: {during}")
        assert server.process.returncode is None, "the server died:\n" + log.read_text()
        # Every real client gets a verified file or a clean "busy": never a silent close.
        unclean = [o for o in outcomes if o not in ("verified", "refused: busy")]
        assert not unclean, (counts, log.read_text()[-3000:])
        assert during[-1:] == ["verified"], during
        for stream in idle:
            await trio.aclose_forcefully(stream)
        after = await canary(server.port, out / "canary-after.bin", expected, 10)
        assert after[-1:] == ["verified"], after
        assert server.process.returncode is None
