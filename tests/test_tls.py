"""TLS: a verified server (trustme CA, host name), a pinned one (SHA-256 fingerprint), and
every way it can fail: wrong CA, wrong name, wrong pin, TLS against plain and plain against TLS.

Real servers on 127.0.0.1; a recording relay checks that a passive listener sees no file
content; ``ftx serve``/``ftx get`` in subprocesses for the command line. Every wait bounded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme
import xxhash

import ftx
import ftx.framing._tls_span
from conftest import SMALL_TEXT, serving
from ftx._tls import certificate_fingerprint, file_fingerprint, normalize_fingerprint
from ftx.errors import AuthenticationError, RemoteProtocolError
from ftx.fs import OpenedFile

LOOPBACK = "127.0.0.1"
SECRET = b"the content of this file must never cross the wire in clear " * 1000


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert(LOOPBACK, "localhost")


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def fingerprint_of(cert: trustme.LeafCert) -> str:
    return certificate_fingerprint(
        ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    )


def serving_tls(
    root: Path, cert: trustme.LeafCert | None, **options: object
) -> AbstractAsyncContextManager[tuple[ftx.Server, int]]:
    context = server_context(cert) if cert is not None else None
    return serving(root, ssl_context=context, **options)


@pytest.fixture
def root(served_root: Path) -> Path:
    (served_root / "secret.bin").write_bytes(SECRET)
    return served_root


# ---------------------------------------------------------------- verified and pinned


async def test_a_verified_tls_download(
    root: Path, tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    async with serving_tls(root, server_cert) as (_server, port):
        with trio.fail_after(20):
            async with ftx.connect(LOOPBACK, port, ssl_context=client_context(ca)) as client:
                result = await client.get("secret.bin", tmp_path / "secret.bin")
                names = {entry.name for entry in await client.list("")}
    assert (tmp_path / "secret.bin").read_bytes() == SECRET
    assert result.digest is not None
    assert "secret.bin" in names


async def test_a_large_tls_download_reads_short_and_cold_chunks_whole(
    root: Path,
    tmp_path: Path,
    ca: trustme.CA,
    server_cert: trustme.LeafCert,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under TLS there is no sendfile: each chunk is read, then sent. Page-cache reads may be
    short, or decline (not cached): every chunk must still be read whole, and the digest (from
    the worker thread that hashes the file meanwhile) must match what arrived. This is the
    event-loop path, which a big file takes where a thread span cannot drive the TLS session
    (here: as with a trio version whose internals were not checked)."""
    monkeypatch.setattr(ftx.framing._tls_span, "_TRIO_CHECKED", False)
    cached = OpenedFile.read_cached_into
    calls = [0]

    def read_cached_into(self: OpenedFile, buffer: memoryview, offset: int) -> int | None:
        calls[0] += 1
        if calls[0] % 3 == 0:
            return None  # as if not cached: a worker thread reads it
        return cached(self, buffer[:1000], offset)  # short

    monkeypatch.setattr(OpenedFile, "read_cached_into", read_cached_into)
    dest = tmp_path / "big.bin"
    async with serving_tls(root, server_cert) as (_server, port):
        with trio.fail_after(60):
            async with ftx.connect(LOOPBACK, port, ssl_context=client_context(ca)) as client:
                result = await client.get("big.bin", dest)
    content = (root / "big.bin").read_bytes()
    assert dest.read_bytes() == content
    assert result.digest == xxhash.xxh3_128(content).hexdigest()
    assert calls[0] > 64  # the short reads were really taken


async def test_a_pinned_tls_download(
    root: Path, tmp_path: Path, server_cert: trustme.LeafCert
) -> None:
    pin = fingerprint_of(server_cert).upper()  # any case, with or without colons
    pin = ":".join(pin[i : i + 2] for i in range(0, 64, 2))
    async with serving_tls(root, server_cert) as (_server, port):
        with trio.fail_after(20):
            async with ftx.connect(LOOPBACK, port, fingerprint=pin) as client:
                await client.get("small.txt", tmp_path / "small.txt")
    assert (tmp_path / "small.txt").read_bytes() == SMALL_TEXT


async def test_a_passive_listener_sees_no_content(
    root: Path, tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    """Everything between client and server goes through a relay that records it: with TLS
    the file content is nowhere in the recording; without, it is (so the check can fail)."""
    for tls in (True, False):
        recorded = bytearray()
        async with (
            serving_tls(root, server_cert if tls else None) as (_server, port),
            relay(port, recorded) as relay_port,
        ):
            with trio.fail_after(20):
                context = client_context(ca) if tls else None
                async with ftx.connect(LOOPBACK, relay_port, ssl_context=context) as client:
                    await client.get("secret.bin", tmp_path / f"secret-{tls}.bin")
        assert (tmp_path / f"secret-{tls}.bin").read_bytes() == SECRET
        assert len(recorded) > len(SECRET)
        assert (SECRET[:64] in recorded) is not tls
        assert (b"secret.bin" in recorded) is not tls  # the path is hidden too


@asynccontextmanager
async def relay(port: int, recorded: bytearray) -> AsyncIterator[int]:
    """A TCP relay on 127.0.0.1 to ``port`` that appends every byte, both ways, to
    ``recorded``."""

    async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                recorded.extend(data)
                await sink.send_all(data)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def handle(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(LOOPBACK, port)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream)
            nursery.start_soon(pump, upstream, client)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host=LOOPBACK))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- failures


async def test_a_certificate_from_another_ca_is_refused(
    root: Path, server_cert: trustme.LeafCert
) -> None:
    async with serving_tls(root, server_cert) as (_server, port):
        with trio.fail_after(10), pytest.raises(AuthenticationError, match="did not verify"):
            async with ftx.connect(LOOPBACK, port, ssl_context=client_context(trustme.CA())):
                pass


async def test_a_certificate_for_another_name_is_refused(root: Path, ca: trustme.CA) -> None:
    elsewhere = ca.issue_cert("files.example.org")
    async with serving_tls(root, elsewhere) as (_server, port):
        with trio.fail_after(10), pytest.raises(AuthenticationError, match="did not verify"):
            async with ftx.connect(LOOPBACK, port, ssl_context=client_context(ca)):
                pass
        # The same certificate is accepted for the name it carries.
        with trio.fail_after(10):
            async with ftx.connect(
                LOOPBACK, port, ssl_context=client_context(ca), server_hostname="files.example.org"
            ) as client:
                assert await client.list("sub")


async def test_a_wrong_pin_is_refused_before_anything_is_sent(
    server_cert: trustme.LeafCert,
) -> None:
    """An impostor with a valid-looking certificate learns nothing: not even the HELLO."""
    received = bytearray()
    closed = trio.Event()

    async def impostor(stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            while data := await stream.receive_some(65536):
                received.extend(data)
        except trio.BrokenResourceError:
            pass
        closed.set()

    async with trio.open_nursery() as nursery:
        serve = partial(
            trio.serve_ssl_over_tcp, impostor, 0, server_context(server_cert), host=LOOPBACK
        )
        listeners = await nursery.start(serve)
        port = listeners[0].transport_listener.socket.getsockname()[1]
        with trio.fail_after(10):
            with pytest.raises(AuthenticationError, match="not the pinned one"):
                async with ftx.connect(LOOPBACK, port, fingerprint="ab" * 32):
                    pass
            await closed.wait()
        nursery.cancel_scope.cancel()
    assert received == b""


async def test_a_plain_client_is_told_tls_is_required(
    root: Path, server_cert: trustme.LeafCert
) -> None:
    async with serving_tls(root, server_cert) as (_server, port):
        with trio.fail_after(10), pytest.raises(ftx.RemoteError) as refused:
            async with ftx.connect(LOOPBACK, port):
                pass
    assert refused.value.code == "tls-required"


async def test_tls_against_a_plain_server_fails_cleanly(root: Path) -> None:
    async with serving_tls(root, None) as (_server, port):
        with trio.fail_after(10), pytest.raises((RemoteProtocolError, ftx.ConnectionLostError)):
            async with ftx.connect(LOOPBACK, port, fingerprint="ab" * 32):
                pass


async def test_busy_refusals_are_sent_over_tls(
    root: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    context = client_context(ca)
    async with serving_tls(root, server_cert, max_connections=1) as (_server, port):
        with trio.fail_after(10):
            async with ftx.connect(LOOPBACK, port, ssl_context=context):
                with pytest.raises(ftx.RemoteError) as refused:
                    async with ftx.connect(LOOPBACK, port, ssl_context=context):
                        pass
    assert refused.value.code == "busy"


async def test_a_stalled_tls_handshake_meets_the_handshake_deadline(
    root: Path, server_cert: trustme.LeafCert
) -> None:
    async with serving_tls(root, server_cert, handshake_timeout=0.5) as (server, port):
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        async with stream:
            await stream.send_all(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
            with trio.fail_after(5):
                while await stream.receive_some(1024):
                    pass
        assert server.connections == 0


@pytest.mark.parametrize(
    "text",
    [
        "AB" * 32,
        ":".join(["ab"] * 32),
        "sha256:" + "ab" * 32,
        "SHA256=" + ":".join(["AB"] * 32),
        " " + "ab" * 32 + "\n",
    ],
)
def test_fingerprints_are_read_in_the_usual_spellings(text: str) -> None:
    assert normalize_fingerprint(text) == "ab" * 32


@pytest.mark.parametrize("text", ["", "ab" * 31, "ab" * 33, "zz" * 32, "md5:" + "ab" * 32])
def test_malformed_fingerprints_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a SHA-256 fingerprint"):
        normalize_fingerprint(text)


# -------------------------------------------------------------------------- command line


@pytest.fixture
def cert_files(tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert) -> dict[str, Path]:
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server_cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server_cert.private_key_pem.write_to_path(str(files["key"]))
    return files


def ftx_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftx", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_serve_with_tls_and_get_with_pin_or_ca(
    root: Path, tmp_path: Path, cert_files: dict[str, Path]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    command = [sys.executable, "-m", "ftx", "serve", str(root), "--host", LOOPBACK, "--port", "0"]
    process = subprocess.Popen(
        [*command, "--tls-cert", str(cert_files["cert"]), "--tls-key", str(cert_files["key"])],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(3)]
        address = f"{LOOPBACK}:{banner[0].rsplit(':', 1)[1].strip()}"
        expected = file_fingerprint(str(cert_files["cert"]))
        assert banner[1].strip() == f"TLS certificate SHA-256 fingerprint: {expected}"
        assert f"ftx get --fingerprint {expected} {address} " in banner[2]
        pinned = ftx_cli("get", "--fingerprint", expected, address, "small.txt", cwd=out)
        assert pinned.returncode == 0, pinned.stderr
        assert (out / "small.txt").read_bytes() == SMALL_TEXT
        verified = ftx_cli("ls", "--tls", "--cafile", str(cert_files["ca"]), address, cwd=out)
        assert verified.returncode == 0, verified.stderr
        assert "secret.bin" in verified.stdout.split()
        plain = ftx_cli("get", address, "small.txt", "-o", "plain.txt", cwd=out)
        assert plain.returncode == 7, plain.stderr
        assert "requires TLS: add --tls" in plain.stderr
        wrong = ftx_cli("get", "--fingerprint", "00" * 32, address, "small.txt", "-o", "w", cwd=out)
        assert wrong.returncode == 7
        assert "not the pinned one" in wrong.stderr
        assert expected in wrong.stderr  # the actual fingerprint, to compare by hand
        untrusted = ftx_cli("ls", "--tls", address, cwd=out)  # not in the system's CAs
        assert untrusted.returncode == 7
        assert "did not verify" in untrusted.stderr
        assert not (out / "plain.txt").exists()
        assert not (out / "w").exists()
    finally:
        process.terminate()
        process.wait(timeout=15)
        if process.stdout is not None:
            process.stdout.close()


def test_serve_refuses_unusable_certificates(tmp_path: Path, cert_files: dict[str, Path]) -> None:
    missing = ftx_cli(
        "serve", str(tmp_path), "--tls-cert", str(tmp_path / "nope.pem"), cwd=tmp_path
    )
    assert missing.returncode == 2
    assert "cannot use" in missing.stderr
    other_key = tmp_path / "other-key.pem"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    mismatched = ftx_cli(
        "serve",
        str(tmp_path),
        "--tls-cert",
        str(cert_files["cert"]),
        "--tls-key",
        str(other_key),
        cwd=tmp_path,
    )
    assert mismatched.returncode == 2
    key_only = ftx_cli("serve", str(tmp_path), "--tls-key", str(cert_files["key"]), cwd=tmp_path)
    assert key_only.returncode == 2
    assert "--tls-key needs --tls-cert" in key_only.stderr


def test_get_refuses_a_malformed_fingerprint(tmp_path: Path) -> None:
    result = ftx_cli("get", "--fingerprint", "abc", f"{LOOPBACK}:1", "x", cwd=tmp_path)
    assert result.returncode == 2
    assert "not a SHA-256 fingerprint" in result.stderr


def test_the_fingerprint_is_that_of_the_certificate(cert_files: dict[str, Path]) -> None:
    pem = cert_files["cert"].read_text()
    der = ssl.PEM_cert_to_DER_cert(pem)
    assert file_fingerprint(str(cert_files["cert"])) == hashlib.sha256(der).hexdigest()


def make_self_signed(directory: Path) -> str:
    """Run the openssl command of docs/user-guide.md (Security); return the fingerprint openssl
    prints for the certificate."""
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    request = ["openssl", "req", "-x509", *curve, "-nodes", "-days", "825", "-subj", "/CN=ftx"]
    subprocess.run(
        [*request, "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=30
    )
    show = ["openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"]
    printed = subprocess.run(show, check=True, capture_output=True, text=True, timeout=30).stdout
    return printed.split("=", 1)[1]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
async def test_the_documented_self_signed_recipe_works(root: Path, tmp_path: Path) -> None:
    """docs/user-guide.md, Security: the openssl command, the printed fingerprint, the pin."""
    printed = make_self_signed(tmp_path)
    fingerprint = file_fingerprint(str(tmp_path / "cert.pem"))
    assert normalize_fingerprint(printed) == fingerprint
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = ftx.Server(root, ftx.ServerConfig(ssl_context=context))
    try:
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host=LOOPBACK)
            await nursery.start(server.serve_listeners, listeners)
            port = listeners[0].socket.getsockname()[1]
            with trio.fail_after(10):
                async with ftx.connect(LOOPBACK, port, fingerprint=printed) as client:
                    await client.get("small.txt", tmp_path / "small.txt")
            nursery.cancel_scope.cancel()
    finally:
        server.root.close()
    assert (tmp_path / "small.txt").read_bytes() == SMALL_TEXT
