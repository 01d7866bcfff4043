"""Issue 13: Ctrl-C (SIGINT) of ``ftx get`` while the bulk path's worker thread holds the socket
leaves a resumable part, and the re-run resumes from it. Real processes on the loopback
interface; the first connection is throttled so that the signal lands mid-DATA.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import trio
import trustme

from conftest import BigFile
from faults_helpers import (
    LOOPBACK,
    OK,
    Plan,
    Relay,
    ftx_serve,
    run_ftx,
    server_process,
    sha256_of,
    stop_process,
    wait_for_size,
)
from test_processes import KILL_AFTER, OVERHEAD, THROTTLE, served_big_file, start_get

INTERRUPTED = 130


async def test_ctrl_c_mid_bulk_transfer_leaves_a_resumable_part(
    tmp_path: Path, big_file: BigFile, nursery: trio.Nursery
) -> None:
    root = served_big_file(tmp_path, big_file)
    out = tmp_path / "out"
    out.mkdir()
    dest, part = out / "big.bin", out / "big.bin.part"
    async with server_process(ftx_serve(root), tmp_path / "server.log") as server:
        relay = Relay(server.port, [Plan(rate=THROTTLE), Plan()])
        await relay.start(nursery)
        client, stderr = await start_get(relay.port, dest, tmp_path / "client.err")
        try:
            await wait_for_size(part, KILL_AFTER, client)
            client.send_signal(signal.SIGINT)
            with trio.fail_after(10):
                await client.wait()
        finally:
            await stop_process(client)
        assert client.returncode == INTERRUPTED, stderr.read_text()
        assert stderr.read_text().strip().endswith("ftx: interrupted")
        assert not dest.exists()
        held = part.stat().st_size
        assert KILL_AFTER <= held < big_file.size
        again = await run_ftx(
            "get", f"{LOOPBACK}:{relay.port}", "big.bin", "-o", str(dest), "--json", "-q"
        )
        assert again.returncode == OK, again.stderr
        assert json.loads(again.stdout)["status"] == "saved"
    assert sha256_of(dest) == big_file.sha256
    assert relay.hops[1].down <= big_file.size - held + OVERHEAD, "it did not resume"


async def test_ctrl_c_mid_tls_span_leaves_a_resumable_part(
    tmp_path: Path, big_file: BigFile, nursery: trio.Nursery
) -> None:
    """The same over TLS, where the worker threads drive the TLS session on both sides."""
    ca = trustme.CA()
    cert, cafile = tmp_path / "server.pem", tmp_path / "ca.pem"
    ca.issue_cert(LOOPBACK).private_key_and_cert_chain_pem.write_to_path(str(cert))
    ca.cert_pem.write_to_path(str(cafile))
    root = served_big_file(tmp_path, big_file)
    out = tmp_path / "out"
    out.mkdir()
    dest, part = out / "big.bin", out / "big.bin.part"
    serve = ftx_serve(root, "--tls-cert", str(cert))
    async with server_process(serve, tmp_path / "server.log") as server:
        relay = Relay(server.port, [Plan(rate=THROTTLE), Plan()])
        await relay.start(nursery)
        tls = ("--cafile", str(cafile))
        client, stderr = await start_get(relay.port, dest, tmp_path / "client.err", *tls)
        try:
            await wait_for_size(part, KILL_AFTER, client)
            client.send_signal(signal.SIGINT)
            with trio.fail_after(10):
                await client.wait()
        finally:
            await stop_process(client)
        assert client.returncode == INTERRUPTED, stderr.read_text()
        assert stderr.read_text().strip().endswith("ftx: interrupted")
        assert not dest.exists()
        held = part.stat().st_size
        assert KILL_AFTER <= held < big_file.size
        again = await run_ftx(
            "get", f"{LOOPBACK}:{relay.port}", "big.bin", "-o", str(dest), "--json", "-q", *tls
        )
        assert again.returncode == OK, again.stderr
        assert json.loads(again.stdout)["status"] == "saved"
    assert sha256_of(dest) == big_file.sha256
    rest = big_file.size - held
    records = rest // 16384 * 32  # TLS: up to 32 bytes of each 16 KiB record's are framing
    assert relay.hops[1].down <= rest + OVERHEAD + records, "it did not resume"
