"""``ftx serve``'s options for running several servers behind a load balancer: how files are
named for resuming (``--identity``), where digests are kept between runs (``--state-dir``), and
which balancers may tell the client's address (``--proxy-protocol-from``). See docs/deploy.md."""

from __future__ import annotations

import argparse
import ipaddress

from ftx.cli._errors import CliError, ExitCode
from ftx.server import IDENTITY_MODES

__all__ = ["add_balancer_options", "check_balancer_options"]


def add_balancer_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--identity``, ``--state-dir`` and ``--proxy-protocol-from`` to ``parser``."""
    group = parser.add_argument_group("behind a load balancer (docs/deploy.md)")
    group.add_argument(
        "--identity",
        choices=IDENTITY_MODES,
        default="local",
        help="how files are named for resuming: 'local' (this copy only, the default) or "
        "'portable' (path, size and mtime: a download resumes on any replica holding the same "
        "file)",
    )
    group.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the digests of files read whole in DIR (outside the served directory; one "
        "SQLite file, safe to share between servers on this machine), so that a restarted "
        "server does not read a large file again before sending its digest",
    )
    group.add_argument(
        "--proxy-protocol-from",
        nargs="+",
        type=_network,
        default=[],
        metavar="CIDR",
        help="load balancers (addresses or CIDR blocks) whose connections begin with a PROXY "
        "protocol header (HAProxy send-proxy-v2 or send-proxy) naming the real client; a "
        "header from any other address is refused",
    )


def check_balancer_options(args: argparse.Namespace) -> None:
    """Check the values of these options that argparse cannot.

    Raises:
        CliError: ``--state-dir`` is empty.
    """
    if args.state_dir is not None and not args.state_dir.strip():
        raise CliError("--state-dir needs a directory", ExitCode.USAGE)


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an address or CIDR block") from None
