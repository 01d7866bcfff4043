"""How to run every server and client: ftx's (the CLI, and the library programs of ``ftx_lib.py``)
and the programs ftx is compared with:

- the minimal Python pair in ``pylimit.py`` (``socket.sendfile`` / ``recv_into``): the limit of
  plain Python, always available;
- ``python -m http.server`` with curl (or with the trio HTTP client of ``pylimit.py``);
- nginx (``sendfile on``; a generated config in the temp dir; ``daemon off`` and
  ``master_process off``, so it is one foreground process run as the current user), with curl
  or wrk;
- an rsync daemon on loopback (generated ``rsyncd.conf``, ``--no-detach``);
- iperf3 (memory to memory: the TCP loopback ceiling).

Servers listen on 127.0.0.1 only. Whatever is not installed is reported as skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from procs import ServerSpec

PYTHON: Final = sys.executable
HERE: Final = Path(__file__).resolve().parent
PYLIMIT: Final = str(HERE / "pylimit.py")
FTX_LIB: Final = str(HERE / "ftx_lib.py")
EXTERNAL_TOOLS: Final = ("curl", "nginx", "rsync", "iperf3", "wrk", "fincore", "openssl")


def find_tools() -> dict[str, str | None]:
    """The path of each external tool, or ``None`` when it is not installed."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return {tool: shutil.which(tool, path=path) for tool in EXTERNAL_TOOLS}


def ftx_command() -> list[str]:
    """The ``ftx`` console script next to this Python, else ``python -m ftx``."""
    script = Path(PYTHON).parent / "ftx"
    if script.exists():
        return [str(script)]
    found = shutil.which("ftx")
    return [found] if found else [PYTHON, "-m", "ftx"]


def ftx_features() -> dict[str, bool]:
    """Optional features of the ftx being measured: ``recursive`` (``ftx get -r -j``),
    ``max_connections`` (a connection limit that ``ftx.serve`` can raise) and ``digest choice``
    (``ftx.ClientConfig(digest=...)``; ``ftx.connect(digest=...)`` before it)."""
    found = {"recursive": False, "max_connections": False, "digest choice": False}
    get_help = subprocess.run([*ftx_command(), "get", "--help"], capture_output=True, text=True)
    found["recursive"] = "--recursive" in get_help.stdout and "--jobs" in get_help.stdout
    probe = subprocess.run([PYTHON, FTX_LIB, "features"], capture_output=True, text=True)
    if probe.returncode == 0:
        found.update(json.loads(probe.stdout))
    return found


# --- servers ----------------------------------------------------------------------------------


def ftx_server(root: Path, *, warm_up: str | None = None) -> ServerSpec:
    """``ftx serve ROOT``; with ``warm_up``, a file under ROOT that the library client downloads
    (verified, to /dev/null) before each timed run: the server then knows its digest."""
    base = ftx_command()
    return ServerSpec(
        "ftx serve" if warm_up is None else f"ftx serve, {warm_up} downloaded once",
        lambda port: [*base, "serve", str(root), "--host", "127.0.0.1", "--port", str(port), "-q"],
        stop_signal=signal.SIGINT,  # Ctrl-C: ftx serve exits cleanly
        warm_up=None
        if warm_up is None
        else lambda port: [PYTHON, FTX_LIB, "big", str(port), warm_up, os.devnull],
    )


def ftx_tls_server(root: Path, cert: Path, key: Path) -> ServerSpec:
    """``ftx serve ROOT --tls-cert CERT --tls-key KEY``."""
    base = ftx_command()
    return ServerSpec(
        "ftx serve (TLS)",
        lambda port: [
            *(*base, "serve", str(root), "--host", "127.0.0.1", "--port", str(port), "-q"),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
        ],
        stop_signal=signal.SIGINT,
    )


def ftx_lib_server(root: Path, max_connections: int) -> ServerSpec:
    return ServerSpec(
        f"ftx.serve(max_connections={max_connections})",
        lambda port: [PYTHON, FTX_LIB, "serve", str(root), str(port), str(max_connections)],
        stop_signal=signal.SIGINT,
    )


def pylimit_server(root: Path) -> ServerSpec:
    return ServerSpec(
        "python sendfile", lambda port: [PYTHON, PYLIMIT, "serve", str(root), str(port)]
    )


def http_server(root: Path) -> ServerSpec:
    return ServerSpec(
        "http.server",
        lambda port: [
            *(PYTHON, "-m", "http.server", str(port)),
            *("--bind", "127.0.0.1", "--directory", str(root)),
        ],
        stop_signal=signal.SIGINT,
    )


_NGINX_CONF: Final = """\
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096{ssl};
        root {root};
{ssl_files}    }}
}}
"""


def nginx_server(
    nginx: str, root: Path, work: Path, *, tls: tuple[Path, Path] | None = None
) -> ServerSpec:
    """nginx serving ``root``; with ``tls`` (certificate, key), over https (ssl on)."""
    ssl, ssl_files = "", ""
    if tls is not None:
        ssl = " ssl"
        ssl_files = f"        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n"

    def argv(port: int) -> list[str]:
        work.mkdir(parents=True, exist_ok=True)
        conf = work / "nginx.conf"
        text = _NGINX_CONF.format(work=work, port=port, root=root, ssl=ssl, ssl_files=ssl_files)
        conf.write_text(text)
        return [nginx, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]

    return ServerSpec("nginx" if tls is None else "nginx (ssl)", argv, stop_signal=signal.SIGTERM)


_RSYNCD_CONF: Final = """\
use chroot = no
pid file = {work}/rsyncd.pid
log file = {work}/rsyncd.log
max connections = 0

[data]
    path = {root}
    read only = yes
    uid = {uid}
    gid = {gid}
"""


def rsync_server(rsync: str, root: Path, work: Path) -> ServerSpec:
    def argv(port: int) -> list[str]:
        work.mkdir(parents=True, exist_ok=True)
        conf = work / "rsyncd.conf"
        conf.write_text(_RSYNCD_CONF.format(work=work, root=root, uid=os.getuid(), gid=os.getgid()))
        (work / "rsyncd.pid").unlink(missing_ok=True)
        return [
            *(rsync, "--daemon", "--no-detach", f"--config={conf}"),
            *(f"--port={port}", "--address=127.0.0.1"),
        ]

    return ServerSpec("rsync daemon", argv, stop_signal=signal.SIGTERM)


def iperf3_server(iperf3: str) -> ServerSpec:
    return ServerSpec("iperf3 -s", lambda port: [iperf3, "-s", "-B", "127.0.0.1", "-p", str(port)])


# --- clients: argv templates, "{port}" and "{dir}" (a fresh directory per run) filled in --------


def url(path: str) -> str:
    return f"http://127.0.0.1:{{port}}/{path}"


def curl_get(curl: str, path: str, dest: str, *, cafile: Path | None = None) -> list[str]:
    """curl of one file; with ``cafile``, over https, trusting that certificate."""
    if cafile is None:
        return [curl, "-sS", "--fail", "-o", dest, url(path)]
    https = f"https://127.0.0.1:{{port}}/{path}"
    return [curl, "-sS", "--fail", "--cacert", str(cafile), "-o", dest, https]


def curl_many(curl: str, paths: Sequence[str], config: Path) -> list[str]:
    """One curl for many files, fetched in turn (connections reused where the server allows
    it). The URLs go in a config file, written once; --connect-to sends them to the port."""
    lines = [f'url = "http://127.0.0.1/{path}"\noutput = "{path}"\n' for path in paths]
    config.write_text("".join(lines))
    return [
        *(curl, "-sS", "--fail", "--create-dirs", "--output-dir", "{dir}/tree"),
        *("--connect-to", "127.0.0.1:80:127.0.0.1:{port}", "-K", str(config)),
    ]


def rsync_get(rsync: str, path: str, dest: str, *, fsync: bool = False) -> list[str]:
    flags = ["-a", "--fsync"] if fsync else ["-a"]
    return [rsync, *flags, f"rsync://127.0.0.1:{{port}}/data/{path}", dest]


def wrk_get(wrk: str, path: str, connections: int, seconds: float) -> list[str]:
    """wrk with ``Connection: close``: one connection per request, as the ftx client does."""
    return [
        *(wrk, "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"),
        *("-H", "Connection: close", url(path)),
    ]


def iperf3_get(iperf3: str, size: int) -> list[str]:
    return [iperf3, "-c", "127.0.0.1", "-p", "{port}", "-n", str(size), "-R"]


def pylimit_get(path: str, dest: str, *, fsync: bool = False) -> list[str]:
    return [PYTHON, PYLIMIT, "get", "{port}", path, dest, *(["--fsync"] if fsync else [])]


def pylimit_http(path: str, digest: str, count: int, concurrency: int) -> list[str]:
    return [PYTHON, PYLIMIT, "http", "{port}", path, digest, str(count), str(concurrency), "{dir}"]
