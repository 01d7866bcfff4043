"""Options that several commands share (verbosity, ``--digest``, ``--timeout``), and the
argparse types of their numbers."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Final, NoReturn

from ftx._rate import MIN_RATE
from ftx.cli._address import Address, parse_address

DEFAULT_TIMEOUT: Final = 30.0

_SIZE: Final = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_count(text: str) -> int:
    """A whole number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def parse_positive_count(text: str) -> int:
    """A whole number, 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def parse_positive_seconds(text: str) -> float:
    """A number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    group.add_argument("-v", "--verbose", action="store_true", help="print debugging details")


def add_digest_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--digest",
        choices=("fast", "cryptographic", "xxh3-128", "blake3", "sha256"),
        default="fast",
        help="how to check that every byte arrived intact: 'fast' (XXH3-128, as rsync; it "
        "catches any accident), 'cryptographic' (BLAKE3 or SHA-256; a collision cannot be "
        "made even on purpose), or an algorithm by name, e.g. to compare with a published "
        "sha256 (default: fast)",
    )


def add_checksum_option(parser: argparse.ArgumentParser, *, where: str) -> None:
    parser.add_argument(
        "-c",
        "--checksum",
        action="store_true",
        help=f"a file already {where} with the same size and modification time is up to date "
        "only if its digest is the same too (the server computes it; the local file is read)",
    )


def add_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=parse_positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up when connecting, or when the server stays silent, for this long "
        f"(default: {DEFAULT_TIMEOUT:g})",
    )


def parse_sources(text: str) -> list[Address]:
    """``HOST1[:PORT],HOST2[:PORT],...``: the servers of ``ftx get --from`` (at least one, each
    at most once)."""
    addresses = [parse_address(part.strip()) for part in text.split(",") if part.strip()]
    if not addresses:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST[:PORT],HOST[:PORT],...")
    if len(set(addresses)) != len(addresses):
        raise argparse.ArgumentTypeError(f"{text!r}: a server is named twice")
    return addresses


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """``ftx get``'s ``--from`` and ``--segments``: one file from several servers at once."""
    parser.add_argument(
        "--from",
        dest="sources",
        type=parse_sources,
        metavar="HOST[:PORT],...",
        help="fetch one file from all these servers at once (replicas holding the same file), "
        "each block verified as it arrives: a server sending bad bytes is named and dropped, "
        "its part fetched from the others. The HOST[:PORT] argument is then left out",
    )
    parser.add_argument(
        "--segments",
        type=parse_positive_count,
        default=1,
        metavar="N",
        help="fetch one file over N connections to each server at once (default: 1)",
    )


def resolve_sources(args: argparse.Namespace, error: Callable[[str], NoReturn]) -> None:
    """After parsing ``ftx get``: with ``--from``, the first positional argument was a path
    (there is no HOST argument), and ``args.address`` becomes the first source; without it,
    it is the HOST[:PORT] argument, parsed here. ``error`` reports a usage mistake."""
    if args.sources:
        args.paths = [args.address, *args.paths]
        args.address = args.sources[0]
        if args.recursive or len(args.paths) > 1:
            error("--from fetches one file: give one PATH, without -r")
        if args.output == "-":
            error("--from saves to a file: -o - is not supported")
        return
    if not args.paths:
        error("the following arguments are required: PATH")
    try:
        args.address = parse_address(args.address)
    except argparse.ArgumentTypeError as exc:
        error(f"argument HOST[:PORT]: {exc}")
    if args.segments > 1 and (args.recursive or len(args.paths) > 1 or args.output == "-"):
        error("--segments fetches one file: give one PATH, without -r or -o -")


def parse_size(text: str) -> int:
    """``123``, ``10K``, ``1.5G``, ``2MiB``: a number of bytes (units are powers of 1024)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500M, 2G, 1048576)")
    return int(float(match["number"]) * _UNITS[match["unit"].lower()])


def parse_rate(text: str) -> int:
    """``50M``, ``800K``, ``2MiB/s``: bytes per second, as curl's ``--limit-rate`` reads them
    (units are powers of 1024), at least :data:`~ftx._rate.MIN_RATE`."""
    spoken = text.strip()
    try:
        rate = parse_size(spoken.removesuffix("/s").removesuffix("/S"))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate (e.g. 50M, 800K: bytes per second)"
        ) from None
    if rate < MIN_RATE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is below the lowest rate supported, {MIN_RATE // 1024}K"
        )
    return rate


def add_limit_rate(parser: argparse.ArgumentParser, *, what: str) -> None:
    """Add ``--limit-rate``, which limits ``what``."""
    parser.add_argument(
        "--limit-rate",
        type=parse_rate,
        metavar="RATE",
        help=f"move at most RATE bytes per second ({what}); K, M and G multiply by 1024, "
        f"as in curl: 50M, 800K (at least {MIN_RATE // 1024}K)",
    )
