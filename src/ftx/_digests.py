"""The whole-file digests of the protocol (docs/protocol.md, section 9.4): the algorithms, the
features that announce them, which one a client chooses, and a fresh hasher for each.
Re-exported by :mod:`ftx.protocol`."""

from __future__ import annotations

import hashlib
from typing import Final, Literal, Protocol

from ftx.framing import Buffer

__all__ = [
    "BLAKE3_FEATURE",
    "DIGEST_ALGORITHMS",
    "DIGEST_FEATURES",
    "XXH3_FEATURE",
    "DigestChoice",
    "Hasher",
    "choose_digest",
    "new_hasher",
]

DIGEST_ALGORITHMS: Final = frozenset({"sha256", "blake3", "xxh3-128"})
"""The whole-file digests this implementation computes. Every peer supports ``sha256``; a peer
that also computes BLAKE3 or XXH3-128 says so with :data:`BLAKE3_FEATURE` or
:data:`XXH3_FEATURE`."""
BLAKE3_FEATURE: Final = "digest-blake3"
XXH3_FEATURE: Final = "digest-xxh3-128"
DIGEST_FEATURES: Final = frozenset({BLAKE3_FEATURE, XXH3_FEATURE})
"""The features naming the optional digests: a peer that computes them all lists these."""
DigestChoice = Literal["fast", "cryptographic"]
"""Which digest a client prefers: ``"fast"`` (XXH3-128, which only guards against accidents) or
``"cryptographic"`` (BLAKE3 or SHA-256, which no one can forge a collision for)."""
# Fastest first; every server computes sha256, so both lists always end in a match.
_PREFERENCES: Final[dict[str, tuple[tuple[str, str | None], ...]]] = {
    "fast": (("xxh3-128", XXH3_FEATURE), ("blake3", BLAKE3_FEATURE), ("sha256", None)),
    "cryptographic": (("blake3", BLAKE3_FEATURE), ("sha256", None)),
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


def choose_digest(features: frozenset[str], choice: DigestChoice = "fast") -> str:
    """The digest algorithm a client verifies with, given the ``features`` both peers list: the
    fastest one the ``choice`` allows that the server computes.

    Raises:
        ValueError: ``choice`` is neither ``"fast"`` nor ``"cryptographic"``.
    """
    try:
        preferences = _PREFERENCES[choice]
    except KeyError:
        raise ValueError(f"digest must be 'fast' or 'cryptographic', not {choice!r}") from None
    return next(name for name, feature in preferences if feature is None or feature in features)
