"""Options that several commands share (verbosity, ``--digest``, ``--timeout``), and the
argparse types of their numbers."""

from __future__ import annotations

import argparse
from typing import Final

DEFAULT_TIMEOUT: Final = 30.0


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
