"""The whole-file digests of the protocol (docs/protocol.md, section 9.4): the algorithms, the
features that announce them, which one a client chooses, and a fresh hasher for each.
Re-exported by :mod:`ftx.protocol`."""

from __future__ import annotations

import hashlib
from typing import Final, Literal, Protocol

from ftx.errors import LocalProtocolError
from ftx.framing import Buffer

__all__ = [
    "BLAKE3_FEATURE",
    "DIGEST_ALGORITHMS",
    "DIGEST_FEATURES",
    "DIGEST_HEX_DIGITS",
    "XXH3_FEATURE",
    "DigestChoice",
    "Hasher",
    "check_digest_choice",
    "choose_digest",
    "is_hex_digest",
    "new_hasher",
]

DIGEST_ALGORITHMS: Final = frozenset({"sha256", "blake3", "xxh3-128"})
"""The whole-file digests this implementation computes. Every peer supports ``sha256``; a peer
that also computes BLAKE3 or XXH3-128 says so with :data:`BLAKE3_FEATURE` or
:data:`XXH3_FEATURE`."""
DIGEST_HEX_DIGITS: Final = {"sha256": 64, "blake3": 64, "xxh3-128": 32}
"""How many lowercase hexadecimal digits a digest of each algorithm is written with."""
BLAKE3_FEATURE: Final = "digest-blake3"
XXH3_FEATURE: Final = "digest-xxh3-128"
DIGEST_FEATURES: Final = frozenset({BLAKE3_FEATURE, XXH3_FEATURE})
"""The features naming the optional digests: a peer that computes them all lists these."""
DigestChoice = Literal["fast", "cryptographic", "xxh3-128", "blake3", "sha256"]
"""Which digest a client wants: ``"fast"`` (XXH3-128, which only guards against accidents),
``"cryptographic"`` (BLAKE3 or SHA-256, which no one can forge a collision for), or one of
:data:`DIGEST_ALGORITHMS` by name (to compare with a digest published elsewhere)."""
_FEATURE_OF: Final[dict[str, str | None]] = {
    "xxh3-128": XXH3_FEATURE,
    "blake3": BLAKE3_FEATURE,
    "sha256": None,  # every server computes it
}
# Fastest first; "fast" and "cryptographic" end with sha256, so they always find a match.
_PREFERENCES: Final[dict[str, tuple[str, ...]]] = {
    "fast": ("xxh3-128", "blake3", "sha256"),
    "cryptographic": ("blake3", "sha256"),
    **{name: (name,) for name in _FEATURE_OF},
}


class Hasher(Protocol):
    """What :func:`new_hasher` returns: the part of the hashlib interface ftx uses."""

    def update(self, data: Buffer, /) -> object: ...
    def hexdigest(self) -> str: ...


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hash object for one of :data:`DIGEST_ALGORITHMS`.

    Raises:
        ValueError: the algorithm is not one of them.
    """
    # The hash libraries are imported here, so that `ftx --version` and `--help` skip them.
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "xxh3-128":
        import xxhash

        return xxhash.xxh3_128()
    if algorithm == "blake3":
        import blake3

        return blake3.blake3()
    raise ValueError(f"unknown digest algorithm {algorithm!r}")


def is_hex_digest(digest: str, algorithm: str) -> bool:
    """Whether ``digest`` is written as a digest of ``algorithm`` must be: exactly
    :data:`DIGEST_HEX_DIGITS` lowercase hexadecimal digits."""
    return len(digest) == DIGEST_HEX_DIGITS.get(algorithm) and not digest.strip(_HEX)


_HEX: Final = "0123456789abcdef"


def check_digest_choice(choice: str) -> None:
    """Raise :exc:`ValueError` unless ``choice`` is one of :data:`DigestChoice`."""
    if choice not in _PREFERENCES:
        known = ", ".join(repr(name) for name in _PREFERENCES)
        raise ValueError(f"digest must be one of {known}, not {choice!r}")


def choose_digest(features: frozenset[str], choice: DigestChoice = "fast") -> str:
    """The digest algorithm a client verifies with, given the ``features`` both peers list: the
    fastest one the ``choice`` allows that the server computes.

    Raises:
        ValueError: ``choice`` is not one of :data:`DigestChoice`.
        LocalProtocolError: ``choice`` names an algorithm that the server does not compute.
    """
    check_digest_choice(choice)
    offered = [name for name, feature in _FEATURE_OF.items() if feature in features | {None}]
    for name in _PREFERENCES[choice]:
        if name in offered:
            return name
    raise LocalProtocolError(
        f"the server does not compute {choice} digests; it offers {', '.join(offered)}"
    )
