"""Where a server is: :class:`Address`, and how the command line spells it
(``HOST[:PORT]``)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Final

from ftx._port import DEFAULT_PORT

ADDRESS_HELP: Final = (
    "the server, e.g. 192.168.1.7, example.org:4000 or [::1]:4000 (default port: FTX_PORT "
    f"if set, else {DEFAULT_PORT})"
)


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT`` or a bare IPv6 address."""
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise argparse.ArgumentTypeError(f"{text!r}: expected [IPV6] or [IPV6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a host name, an IPv4 address, or a bare IPv6 address (several colons)
        host, port_text = text, ""
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r}: the host is missing")
    return Address(host, parse_port(port_text) if port_text else default_port())


def default_port() -> int:
    """The port of a ``HOST`` given without one: ``FTX_PORT`` if set, else the default."""
    text = os.environ.get("FTX_PORT", "").strip()
    if not text:
        return DEFAULT_PORT
    try:
        return parse_port(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"FTX_PORT: {exc}") from None


def parse_port(text: str) -> int:
    """A TCP port number, 0 to 65535."""
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)
