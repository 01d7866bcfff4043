"""The four scenarios: the data each one makes, and the methods (server + client) it compares.

(a) one big file to disk; (b) many small files in a tree; (c) many concurrent downloads of a
1 MiB file; (d) start-up time. Each scenario makes its data once; ``run.py`` runs the methods.
A client is an argv template: ``{port}`` is the server's port, ``{dir}`` a fresh directory for
the run.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import baselines as bl
from procs import ClientRun, ServerSpec

MiB = 1 << 20
Check = Callable[[Path, ClientRun], "str | None"]


@dataclass(frozen=True)
class Settings:
    tmp: Path  # data and on-disk destinations
    fast: Path  # destinations where the disk should not matter (tmpfs when available)
    tools: dict[str, str | None]
    size: int
    files: int
    dirs: int
    connections: int
    requests: int
    concurrency: tuple[int, ...]
    wrk_seconds: float
    ftx_features: dict[str, bool]  # see baselines.ftx_features
    # Median start-up (wall s) of each Method.startup command, measured in the same run.
    startups: dict[tuple[str, ...], float] = field(default_factory=dict)
    rss_size: int | None = None  # scenario a's extra size for the flat-RSS rows (--rss-size)

    def tool(self, name: str) -> str:
        return self.tools.get(name) or name

    def available(self) -> dict[str, bool]:
        """What ``Method.needs`` may name: external tools, and "ftx FEATURE"."""
        features = {f"ftx {name}": have for name, have in self.ftx_features.items()}
        return {**{name: path is not None for name, path in self.tools.items()}, **features}


@dataclass(frozen=True)
class Method:
    """One way of doing a scenario's work, run once per round."""

    group: str  # the table's scenario cell; ratios are computed within a group
    name: str
    client: Sequence[str]
    server: ServerSpec | None = None
    needs: tuple[str, ...] = ()  # external tools and ftx features (Settings.available)
    work: float = 0.0  # per run, in units of `unit` x seconds; 0: time only
    unit: str = ""
    prepare: Callable[[Path], None] | None = None  # before the run, not timed
    check: Check | None = None  # after the run, not timed: a warning, or None
    rate: Callable[[ClientRun], float | None] | None = None  # instead of work / wall time
    reference: bool = False
    out_base: Path | None = None  # where its run directories go, if not under Settings.tmp
    # A command whose wall time is the client's start-up (``ftx --version`` for ftx): the
    # start-up-excluded rate is work / (wall - its median in the same run). Empty: none.
    startup: Sequence[str] = ()

    def argv(self, port: int, run_dir: Path) -> list[str]:
        return [
            arg.replace("{port}", str(port)).replace("{dir}", str(run_dir)) for arg in self.client
        ]


@dataclass
class Scenario:
    key: str
    methods: list[Method]
    notes: list[str] = field(default_factory=list)
    runs: int | None = None  # None: --runs
    # Keep every run's output until the scenario ends. Deleting thousands of files just before
    # the next method creates thousands makes ext4's inode allocator crawl (it skips inodes
    # freed in the last seconds), and whoever runs next pays: 2.2 s became 4.9 s for ftx and
    # 0.56 s became 4 s for rsync, measured here.
    keep_outputs: bool = False

    def drop_unavailable(self, available: dict[str, bool]) -> None:
        """Remove the methods that need what is missing, saying so in the notes."""
        kept = []
        for method in self.methods:
            missing = [need for need in method.needs if not available.get(need)]
            if missing:
                self.notes.append(f"skipped {method.name!r}: no {', '.join(missing)} here")
            else:
                kept.append(method)
        self.methods = kept


# --- data -------------------------------------------------------------------------------------


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for offset in range(0, size, 8 * MiB):
            block = os.urandom(min(8 * MiB, size - offset))
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def make_tree(root: Path, files: int, dirs: int, size: int = 4096) -> list[str]:
    """``files`` random files of ``size`` bytes spread over ``dirs`` directories."""
    paths = [f"d{index % dirs:03d}/f{index:05d}.bin" for index in range(files)]
    for directory in range(dirs):
        (root / f"d{directory:03d}").mkdir(parents=True, exist_ok=True)
    for path in paths:
        (root / path).write_bytes(os.urandom(size))
    return paths


def warm(path: Path, fincore: str | None) -> None:
    """Make sure ``path`` is in the page cache: ask fincore, read it through if not all is."""
    size = path.stat().st_size
    if fincore is not None:
        command = [fincore, "--bytes", "--noheadings", "--output", "RES", str(path)]
        output = subprocess.run(command, capture_output=True, text=True, check=False).stdout
        if output.strip().isdigit() and int(output) >= size:
            return
    buffer = bytearray(MiB)
    with open(path, "rb", buffering=0) as source:
        while source.readinto(buffer):
            pass


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:g} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# --- (a) one big file -------------------------------------------------------------------------


def big_file(settings: Settings) -> Scenario:
    data = settings.tmp / "data" / "a"
    source = data / "big.bin"
    make_file(source, settings.size)

    def prepare(run_dir: Path) -> None:
        os.sync()  # the previous run's output is deleted and no longer in flight
        warm(source, settings.tools.get("fincore"))

    def check(run_dir: Path, run: ClientRun) -> str | None:
        dest = run_dir / "big.bin"
        got = dest.stat().st_size if dest.exists() else None
        return None if got == settings.size else f"saved {got} bytes, not {settings.size}"

    to_file = partial(
        Method,
        f"a: 1 file, {human(settings.size)}",
        work=settings.size / MiB,
        unit="MiB/s",
        prepare=prepare,
        check=check,
    )
    to_null = partial(to_file, check=None)
    ftx, ftx_server, dest = bl.ftx_command(), bl.ftx_server(data), "{dir}/big.bin"
    warm_server = bl.ftx_server(data, warm_up="big.bin")
    big = [bl.PYTHON, bl.FTX_LIB, "big", "{port}", "big.bin", dest]
    big_null = [*big[:-1], os.devnull]  # verified all the same, nothing written
    py, http = bl.pylimit_server(data), bl.http_server(data)
    nginx = bl.nginx_server(settings.tool("nginx"), data, settings.tmp / "nginx")
    rsync = bl.rsync_server(settings.tool("rsync"), data, settings.tmp / "rsyncd")
    curl = settings.tool("curl")
    # `ftx get --help` imports what `ftx get` needs (trio, the client) and stops: since the
    # command imports lazily, `ftx --version` (the choice) no longer does, and would
    # leave most of ftx's start-up in the "start-up out" rate.
    ftx_up, py_up = [*ftx, "get", "--help"], [bl.PYTHON, "-c", "pass"]
    curl_up, rsync_up = [curl, "--version"], [settings.tool("rsync"), "--version"]
    methods = [
        to_file("ftx get (CLI, digest)",
                [*ftx, "get", "127.0.0.1:{port}", "big.bin", "-o", dest, "-q"], ftx_server),
        to_file("ftx lib, digest", big, ftx_server),
        to_file("ftx lib, no digest", [*big, "--no-verify"], ftx_server),
        to_file("ftx lib, BLAKE3 digest", [*big, "--cryptographic"], ftx_server,
                needs=("ftx digest choice",)),
        to_file("python sendfile/recv_into -> file", bl.pylimit_get("big.bin", dest), py,
                reference=True),
        to_file("python ... -> file+fsync", bl.pylimit_get("big.bin", dest, fsync=True), py),
        to_file("ftx lib, digest -> tmpfs", big, ftx_server, out_base=settings.fast),
        to_file("python ... -> tmpfs", bl.pylimit_get("big.bin", dest), py,
                out_base=settings.fast),
        to_null("python ... -> /dev/null", bl.pylimit_get("big.bin", "/dev/null"), py),
        to_null("ftx lib, digest -> /dev/null", big_null, ftx_server),
        to_null("ftx lib, no digest -> /dev/null", [*big_null, "--no-verify"], ftx_server),
        to_null("ftx lib, digest, server warm -> /dev/null", big_null, warm_server),
        to_null("ftx lib, no digest, server warm -> /dev/null", [*big_null, "--no-verify"],
                warm_server),
        to_file("http.server + curl -> file", bl.curl_get(curl, "big.bin", dest), http,
                needs=("curl",)),
        to_null("http.server + curl -> /dev/null", bl.curl_get(curl, "big.bin", "/dev/null"),
                http, needs=("curl",)),
        to_file("nginx + curl -> file", bl.curl_get(curl, "big.bin", dest), nginx,
                needs=("nginx", "curl")),
        to_null("nginx + curl -> /dev/null", bl.curl_get(curl, "big.bin", "/dev/null"), nginx,
                needs=("nginx", "curl")),
        to_file("rsync daemon -> file", bl.rsync_get(settings.tool("rsync"), "big.bin", dest),
                rsync, needs=("rsync",)),
        to_null("iperf3 -R (memory to memory)", bl.iperf3_get(settings.tool("iperf3"),
                settings.size), bl.iperf3_server(settings.tool("iperf3")), needs=("iperf3",)),
    ]  # fmt: skip
    # The library client's own start-up (python, import ftx, trio) is ftx_lib.py's "features".
    lib_up = [bl.PYTHON, bl.FTX_LIB, "features"]
    starts = {"ftx get": ftx_up, "ftx lib": lib_up, "python": py_up, "http.server": curl_up}
    starts |= {"nginx": curl_up, "rsync": rsync_up}

    def startup_of(name: str) -> list[str]:
        return next((up for key, up in starts.items() if name.startswith(key)), [])

    methods = [replace(m, startup=startup_of(m.name)) for m in methods]
    methods += tls_methods(settings, data, to_file, to_null, ftx_up, curl_up)
    if settings.rss_size:
        methods += flat_rss_methods(settings, data, lib_up, py_up)
    if settings.fast == settings.tmp:  # no tmpfs: drop the rows that need one
        methods = [m for m in methods if "tmpfs" not in m.name]
    notes = [
        "a: to a file on disk unless marked; ftx fsyncs it (and its directory) before the "
        "rename, like the '+fsync' row; the tmpfs rows leave the disk out; wall time includes "
        "each client's start-up (see d)",
        "a: 'server warm': the server had sent the file once before the timed run (verified, "
        "to /dev/null, untimed), as a running server has, so it knows the file's digest; the "
        "other ftx rows start from a fresh server, which hashes the file as it sends it; the "
        "digest's cost is compared to /dev/null (verified, nothing written), where it weighs "
        "most and the disk's noise does not drown it",
        "a: 'start-up out' = work / (wall - the median wall of the row's start-up command, "
        "measured in this run: ftx get --help for the CLI (it imports trio and the client, as "
        "ftx get does; ftx --version no longer does), ftx_lib.py features (python, import "
        "ftx and trio) for the library client, python -c pass for the pair, curl --version "
        "for curl, rsync --version for rsync); 'CPU s/GiB' = user + system CPU of "
        "the client and of the server's process tree while the client ran, per GiB: the "
        "figure to trust on a busy machine (wall times move with the load, CPU much less)",
    ]
    return Scenario("a", methods, notes)


def tls_methods(
    settings: Settings,
    data: Path,
    to_file: Callable[..., Method],
    to_null: Callable[..., Method],
    ftx_up: list[str],
    curl_up: list[str],
) -> list[Method]:
    """Scenario a over TLS: ftx serve --tls-cert against nginx with ssl on and curl over
    https, with a self-signed certificate for 127.0.0.1 made here (openssl)."""
    openssl = settings.tools.get("openssl")
    if not openssl:
        return []
    tls = settings.tmp / "tls"
    tls.mkdir(exist_ok=True)
    cert, key = tls / "cert.pem", tls / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    group = f"a-tls: 1 file, {human(settings.size)}, TLS"

    def tls_file(*args: Any, **kwargs: Any) -> Method:
        return replace(to_file(*args, **kwargs), group=group)

    def tls_null(*args: Any, **kwargs: Any) -> Method:
        return replace(to_null(*args, **kwargs), group=group)

    ftx, dest = bl.ftx_command(), "{dir}/big.bin"
    server = bl.ftx_tls_server(data, cert, key)
    get = [*ftx, "get", "--cafile", str(cert), "127.0.0.1:{port}", "big.bin", "-q", "-o"]
    work = settings.tmp / "nginx-tls"
    nginx = bl.nginx_server(settings.tool("nginx"), data, work, tls=(cert, key))
    curl = settings.tool("curl")
    return [
        tls_file("ftx get (CLI, digest, TLS)", [*get, dest], server, startup=ftx_up),
        tls_null("ftx get (CLI, digest, TLS) -> /dev/null", [*get, os.devnull], server,
                 startup=ftx_up),
        tls_file("nginx ssl + curl https -> file", bl.curl_get(curl, "big.bin", dest, cafile=cert),
                 nginx, needs=("nginx", "curl"), startup=curl_up),
        # Like for like with ftx, which flushes the file before it is published: sync FILE
        # (coreutils) fsyncs it once curl is done.
        tls_file("nginx ssl + curl https -> file+sync",
                 ["sh", "-c", f'"$0" "$@" && sync "{dest}"',
                  *bl.curl_get(curl, "big.bin", dest, cafile=cert)],
                 nginx, needs=("nginx", "curl"), startup=curl_up),
        tls_null("nginx ssl + curl https -> /dev/null",
                 bl.curl_get(curl, "big.bin", os.devnull, cafile=cert), nginx,
                 needs=("nginx", "curl"), startup=curl_up, reference=True),
    ]  # fmt: skip


def flat_rss_methods(
    settings: Settings, data: Path, ftx_up: list[str], py_up: list[str]
) -> list[Method]:
    """A bigger file (--rss-size, e.g. 4G) to /dev/null: peak RSS must not grow with the size."""
    assert settings.rss_size
    name = "huge.bin"
    make_file(data / name, settings.rss_size)
    group = f"a-rss: 1 file, {human(settings.rss_size)}"
    null = partial(Method, group, work=settings.rss_size / MiB, unit="MiB/s")
    return [
        null("ftx lib, digest -> /dev/null",
             [bl.PYTHON, bl.FTX_LIB, "big", "{port}", name, os.devnull], bl.ftx_server(data),
             startup=ftx_up),
        null("python ... -> /dev/null", bl.pylimit_get(name, os.devnull), bl.pylimit_server(data),
             reference=True, startup=py_up),
    ]  # fmt: skip


# --- (b) many small files ---------------------------------------------------------------------

MIXED_FILES = 5000
MIXED_SEED = 14


def make_mixed_tree(root: Path, files: int = MIXED_FILES, seed: int = MIXED_SEED) -> int:
    """``files`` files with sizes drawn log-normally (median 4 KiB, sigma 2, kept between
    100 bytes and 8 MiB) in directories nested 4 deep (5 x 4 x 3 x 3), placed at random: the
    sizes and the layout come from ``seed``, the content from os.urandom. Returns the bytes."""
    rng = random.Random(seed)
    leaves = [
        f"p{a}/q{b}/r{c}/s{d}"
        for a in range(5)
        for b in range(4)
        for c in range(3)
        for d in range(3)
    ]
    total = 0
    for index in range(files):
        size = int(min(8 * MiB, max(100, rng.lognormvariate(math.log(4096), 2.0))))
        depth = rng.randint(1, 4)
        directory = "/".join(rng.choice(leaves).split("/")[:depth])
        path = root / directory / f"f{index:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        total += size
    return total


def _copy_into(source: Path, run_dir: Path) -> None:
    """The destination of a no-op re-run: a copy of the data with the same times (cp -a)."""
    subprocess.run(["cp", "-a", f"{source}/.", str(run_dir / "tree")], check=True)
    os.sync()


def _count_check(expected: int) -> Check:
    def check(run_dir: Path, run: ClientRun) -> str | None:
        got = sum(len(names) for _, _, names in os.walk(run_dir / "tree"))
        return None if got == expected else f"saved {got} files, not {expected}"

    return check


_RSYNCD_WRITABLE = """\
use chroot = no
pid file = {work}/rsyncd.pid
log file = {work}/rsyncd.log
max connections = 0

[data]
    path = {root}
    read only = no
    uid = {uid}
    gid = {gid}
"""


def _writable_servers(root: Path, rsync: str, work: Path) -> tuple[ServerSpec, ServerSpec]:
    """``ftx serve --writable ROOT`` and an rsync daemon whose module ``data`` takes uploads
    into ROOT (b4: pushing a tree)."""
    base = bl.ftx_command()

    def ftx_argv(port: int) -> list[str]:
        root.mkdir(parents=True, exist_ok=True)
        options = ["--writable", "--host", "127.0.0.1", "--port", str(port), "-q"]
        return [*base, "serve", str(root), *options]

    def rsync_argv(port: int) -> list[str]:
        work.mkdir(parents=True, exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        conf = work / "rsyncd.conf"
        uid, gid = os.getuid(), os.getgid()
        conf.write_text(_RSYNCD_WRITABLE.format(work=work, root=root, uid=uid, gid=gid))
        (work / "rsyncd.pid").unlink(missing_ok=True)
        options = [f"--config={conf}", f"--port={port}", "--address=127.0.0.1"]
        return [rsync, "--daemon", "--no-detach", *options]

    ftx = ServerSpec("ftx serve --writable", ftx_argv, stop_signal=signal.SIGINT)
    return ftx, ServerSpec("rsync daemon (writable)", rsync_argv, stop_signal=signal.SIGTERM)


def _relative_to(base: Path, command: str) -> list[str]:
    """``sh -c COMMAND`` with ``$0`` the run directory and ``$R`` its path below ``base`` (the
    served root), for the clients that push into it."""
    return ["sh", "-c", f'R="${{0#{base}/}}"; exec {command}', "{dir}"]


def small_files(settings: Settings) -> Scenario:
    data = settings.tmp / "data" / "b"
    paths = make_tree(data, settings.files, settings.dirs)
    mixed = settings.tmp / "data" / "b2"
    mixed_bytes = make_mixed_tree(mixed, min(MIXED_FILES, settings.files // 2))
    mixed_files = min(MIXED_FILES, settings.files // 2)
    many = settings.tmp / "data" / "bm"
    many_files = settings.files * 10
    make_tree(many, many_files, settings.dirs * 10, size=16)

    def make_tree_dir(run_dir: Path) -> None:  # ftx get -r -o DIR wants DIR to exist
        (run_dir / "tree").mkdir()
        os.sync()

    def no_op(source: Path) -> Callable[[Path], None]:
        return lambda run_dir: _copy_into(source, run_dir)

    method = partial(
        Method,
        f"b1: {settings.files} x 4 KiB in {settings.dirs} dirs",
        work=settings.files,
        unit="files/s",
        prepare=lambda run_dir: os.sync(),
        check=_count_check(settings.files),
    )
    conns = settings.connections
    rsync_tool = settings.tool("rsync")
    tree = [bl.PYTHON, bl.FTX_LIB, "tree", "{port}", "{dir}/tree", str(conns)]
    stream = [bl.PYTHON, bl.FTX_LIB, "tree-stream", "{port}", "{dir}/tree"]
    cli_tree = [*bl.ftx_command(), "get", "-r", "-q", "127.0.0.1:{port}", "/", "-o", "{dir}/tree"]
    ftx_server = bl.ftx_server(data)
    rsync = bl.rsync_server(rsync_tool, data, settings.tmp / "rsyncd")
    nginx = bl.nginx_server(settings.tool("nginx"), data, settings.tmp / "nginx")
    curl = bl.curl_many(settings.tool("curl"), paths, settings.tmp / "curl-tree.conf")
    rsync_get = bl.rsync_get(rsync_tool, "", "{dir}/tree")
    methods = [
        method("ftx get -r (CLI, one tree stream)", cli_tree, ftx_server,
               needs=("ftx recursive",), prepare=make_tree_dir),
        method("ftx lib, one tree stream", stream, ftx_server, prepare=make_tree_dir),
        method("ftx lib, one tree stream -> tmpfs", stream, ftx_server, prepare=make_tree_dir,
               out_base=settings.fast),
        method(f"ftx lib, per-file GETs, {conns} connections", tree, ftx_server),
        method(f"ftx lib, per-file GETs, {conns} connections -> tmpfs", tree, ftx_server,
               out_base=settings.fast),
        method("rsync daemon", rsync_get, rsync, needs=("rsync",), reference=True),
        method("rsync daemon --fsync", bl.rsync_get(rsync_tool, "", "{dir}/tree",
               fsync=True), rsync, needs=("rsync",)),
        method("rsync daemon -> tmpfs", rsync_get, rsync, needs=("rsync",),
               out_base=settings.fast),
        method("http.server + curl (1 process)", curl, bl.http_server(data), needs=("curl",)),
        method("nginx + curl (1 process, keep-alive)", curl, nginx, needs=("nginx", "curl")),
    ]  # fmt: skip
    # b2: a mixed tree; b3: a re-run with nothing to move; memory: a tree of many files.
    mixed_server = bl.ftx_server(mixed)
    mixed_rsync = bl.rsync_server(rsync_tool, mixed, settings.tmp / "rsyncd-b2")
    b2 = partial(
        Method,
        f"b2: {mixed_files} files, {human(mixed_bytes)}, 100 B-8 MiB, 4 deep",
        work=mixed_files,
        unit="files/s",
        check=_count_check(mixed_files),
    )
    b3 = partial(
        Method,
        f"b3: re-run, {settings.files} files up to date",
        work=settings.files,
        unit="files/s",
        prepare=no_op(data),
        check=_count_check(settings.files),
    )
    many_server = bl.ftx_server(many)
    many_rsync = bl.rsync_server(rsync_tool, many, settings.tmp / "rsyncd-bm")
    memory = partial(
        Method,
        f"b memory: {many_files} x 16 B in {settings.dirs * 10} dirs",
        work=many_files,
        unit="files/s",
        check=_count_check(many_files),
    )
    # b4: pushing b1's tree into a fresh directory of a server on disk, per run.
    pushed = settings.tmp / "pushed"
    ftx_writable, rsync_writable = _writable_servers(pushed, rsync_tool, settings.tmp / "rsyncd-b4")
    ftx_put = " ".join([*bl.ftx_command(), "put", "-r", "-q", "127.0.0.1:{port}", str(data)])
    rsync_push = f"{rsync_tool} -a {data}/ rsync://127.0.0.1:{{port}}/data/$R/"

    def count_pushed(expected: int) -> Check:
        def check(run_dir: Path, run: ClientRun) -> str | None:
            got = sum(len(names) for _, _, names in os.walk(run_dir))
            return None if got == expected else f"stored {got} files, not {expected}"

        return check

    def pushed_before(into: str) -> Callable[[Path], None]:
        """b4 re-runs: the destination holds the tree already, with the same times."""

        def prepare(run_dir: Path) -> None:
            (run_dir / into).mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", f"{data}/.", str(run_dir / into)], check=True)
            os.sync()

        return prepare

    b4 = partial(
        Method,
        f"b4: put -r, {settings.files} x 4 KiB",
        work=settings.files,
        unit="files/s",
        check=count_pushed(settings.files),
        out_base=pushed,
        prepare=lambda run_dir: os.sync(),
    )
    b4_again = partial(
        Method,
        f"b4: put -r re-run, {settings.files} files up to date",
        work=settings.files,
        unit="files/s",
        check=count_pushed(settings.files),
        out_base=pushed,
    )
    ftx_push = _relative_to(pushed, ftx_put + ' --to "$R"')
    ftx_push_per_file = _relative_to(pushed, ftx_put + ' --to "$R" --per-file')
    rsync_pushing = _relative_to(pushed, rsync_push)
    many_put = " ".join([*bl.ftx_command(), "put", "-r", "-q", "127.0.0.1:{port}", str(many)])
    memory_put = partial(
        Method,
        f"b memory: put -r, {many_files} x 16 B in {settings.dirs * 10} dirs",
        work=many_files,
        unit="files/s",
        check=count_pushed(many_files),
        out_base=pushed,
        prepare=lambda run_dir: os.sync(),
    )
    methods += [
        b4("ftx put -r (CLI, one tree stream)", ftx_push, ftx_writable),
        b4("ftx put -r --per-file (CLI, PUT per file)", ftx_push_per_file, ftx_writable),
        b4("rsync push to a daemon", rsync_pushing, rsync_writable,
           needs=("rsync",), reference=True),
        b4_again("ftx put -r (CLI), nothing to move", ftx_push, ftx_writable,
                 prepare=pushed_before(data.name)),
        b4_again("rsync push, nothing to move", rsync_pushing, rsync_writable,
                 needs=("rsync",), reference=True, prepare=pushed_before("")),
        memory_put("ftx put -r (CLI, one tree stream)",
                   _relative_to(pushed, many_put + ' --to "$R"'), ftx_writable),
        memory_put("rsync push to a daemon",
                   _relative_to(pushed, f"{rsync_tool} -a {many}/ rsync://127.0.0.1:{{port}}/data/$R/"),
                   rsync_writable, needs=("rsync",), reference=True),
    ]  # fmt: skip
    methods += [
        b2("ftx get -r (CLI, one tree stream)", cli_tree, mixed_server, prepare=make_tree_dir),
        b2("ftx lib, one tree stream", stream, mixed_server, prepare=make_tree_dir),
        b2("rsync daemon", rsync_get, mixed_rsync, needs=("rsync",), reference=True),
        b3("ftx get -r (CLI), nothing to move", cli_tree, ftx_server),
        b3("ftx lib, nothing to move", stream, ftx_server),
        b3("rsync daemon, nothing to move", rsync_get, rsync, needs=("rsync",), reference=True),
        memory("ftx get -r (CLI, one tree stream)", cli_tree, many_server, prepare=make_tree_dir),
        memory("rsync daemon", rsync_get, many_rsync, needs=("rsync",), reference=True),
    ]
    if settings.fast == settings.tmp:  # no tmpfs: drop the rows that need one
        methods = [m for m in methods if "tmpfs" not in m.name]
    notes = [
        "b: a fresh destination directory per run, on disk unless marked, all deleted at the "
        "end (not between runs: see Scenario.keep_outputs); ftx syncs the disk once at the end "
        "(rsync only with --fsync: an fsync per file)",
        "b3: the destination is a copy of the data made (cp -a, untimed) before each run",
        "b2: sizes log-normal (median 4 KiB, sigma 2) in 100 B-8 MiB, layout from seed "
        f"{MIXED_SEED}",
        "b4: ftx put -r stores every file durably before the command returns (the stream: "
        "a group commit, two syncfs per 2048 files; --per-file: two fsyncs per file); the "
        "rsync daemon flushes nothing (no --fsync)",
        "b4 re-run: the destination is a copy of the data made (cp -a, untimed) before each run",
    ]
    return Scenario("b", methods, notes, keep_outputs=True)


# --- (c) concurrent downloads -----------------------------------------------------------------


def _failures(run: ClientRun) -> int | None:
    found = re.search(r"failures=(\d+)", run.stdout)
    return int(found.group(1)) if found else None


def _wrk_rate(run: ClientRun) -> float | None:
    found = re.search(r"Requests/sec:\s*([\d.]+)", run.stdout)
    return float(found.group(1)) if found else None


def _wrk_check(run_dir: Path, run: ClientRun) -> str | None:
    problems = re.findall(r"(Socket errors:.*|Non-2xx or 3xx responses:.*)", run.stdout)
    return "; ".join(line.strip() for line in problems) or None


def concurrent(settings: Settings) -> Scenario:
    data = settings.tmp / "data" / "c"
    digest = make_file(data / "one.bin", MiB)
    count = settings.requests

    def rate(run: ClientRun) -> float | None:  # successful downloads only
        failures = _failures(run)
        return None if failures is None else (count - failures) / run.wall

    def check(run_dir: Path, run: ClientRun) -> str | None:
        failures = _failures(run)
        if not failures:
            return None
        errors = " ".join(run.stderr.split())[:160]
        return f"{failures} of {count} downloads failed ({errors})"

    ftx_server, http = bl.ftx_server(data), bl.http_server(data)
    nginx = bl.nginx_server(settings.tool("nginx"), data, settings.tmp / "nginx")
    methods = []
    for level in settings.concurrency:
        group = f"c: {count} x 1 MiB, {level} at a time"
        method = partial(
            Method,
            group,
            work=count,
            unit="req/s",
            check=check,
            rate=rate,
            out_base=settings.fast,
        )
        wrk = partial(
            Method,
            group,
            client=bl.wrk_get(settings.tool("wrk"), "one.bin", level, settings.wrk_seconds),
            unit="req/s",
            check=_wrk_check,
            rate=_wrk_rate,
        )
        many = [bl.PYTHON, bl.FTX_LIB, "many", "{port}", "one.bin", str(count), str(level)]
        trio_http = bl.pylimit_http("one.bin", digest, count, level)
        methods += [
            method("ftx lib client, ftx serve", [*many, "{dir}"], ftx_server),
            method(f"ftx lib client, ftx.serve(max_connections={level})", [*many, "{dir}"],
                   bl.ftx_lib_server(data, level), needs=("ftx max_connections",)),
            method("nginx + trio HTTP client", trio_http, nginx, needs=("nginx",),
                   reference=True),
            method("http.server + trio HTTP client", trio_http, http, reference=True),
            wrk("http.server + wrk", server=http, needs=("wrk",)),
            wrk("nginx + wrk", server=nginx, needs=("wrk", "nginx")),
        ]  # fmt: skip
    notes = [
        f"c: each download on its own connection, verified (digest), saved under "
        f"{settings.fast} and deleted; wrk rows: wrk's own req/s over {settings.wrk_seconds:g} s, "
        "'Connection: close', nothing verified or saved"
    ]
    return Scenario("c", methods, notes)


# --- (d) start-up -----------------------------------------------------------------------------


def startup(runs: int) -> Scenario:
    method = partial(Method, "d: start-up")
    methods = [
        method("ftx --version", [*bl.ftx_command(), "--version"]),
        method('python -c "import trio, tqdm"', [bl.PYTHON, "-c", "import trio, tqdm"],
               reference=True),
        method('python -c "pass"', [bl.PYTHON, "-c", "pass"]),
    ]  # fmt: skip
    return Scenario("d", methods, runs=runs)
