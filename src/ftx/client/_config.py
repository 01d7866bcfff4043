"""How a client connection behaves, in one checked object: :class:`ClientConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from ftx._net import DEFAULT_IDLE_TIMEOUT
from ftx._rate import RateLimit
from ftx.framing import DEFAULT_MAX_FRAME_SIZE, FRAME_SIZE_LIMIT
from ftx.protocol import MIN_FRAME_SIZE, DigestChoice, check_digest_choice, check_token

__all__ = ["DEFAULT_JOBS", "ClientConfig"]

DEFAULT_JOBS: Final = 4
"""Connections used at once by a batch (``ftx get -r``, ``ftx put -r``, :func:`ftx.tree.download`).
Here, not in ``_tree``, so that the command line can show it without loading the tree code."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """The settings of a client connection (for :class:`~ftx.Client` and :func:`~ftx.connect`),
    checked when made, so that a bad one fails before anything connects.

    ::

        config = ftx.ClientConfig(token=token, digest="cryptographic")
        async with ftx.connect("files.example.org", ftx.DEFAULT_PORT, config) as client:
            ...

    Attributes:
        max_frame_size: the largest frame accepted from the server, in bytes (at least 65536,
            as the protocol requires).
        idle_timeout: seconds the server may stay silent while an answer is due before
            :exc:`~ftx.errors.ConnectionLostError` is raised (``math.inf`` to wait forever).
        token: a shared token to prove to the server that we know, by challenge and response
            (it never crosses the wire); the server must then prove that it knows it too. Left
            out of the ``repr``.
        digest: which whole-file digest to verify downloads and uploads with (see
            :attr:`ftx.Client.digest_algorithm`): ``"fast"``; ``"cryptographic"`` where a
            collision must be infeasible even to make on purpose; or an algorithm by name
            (``"sha256"``, say, to compare with a published digest), which the server must then
            compute.
        rate_limit: the most bytes per second to send and to receive (each direction), or
            ``None`` for no limit. Connections made with the same :class:`~ftx.RateLimit`
            share it. A limited connection does without the zero-copy paths of plain TCP.
        tree_streams: fetch and send directory trees as one stream (``get -r``, features
            ``tree`` and ``tree-put``) when the server offers it; ``False`` fetches every file
            with its own GET (and :meth:`~ftx.Client.put_tree` sends nothing), as with a server
            that does not.

    Raises:
        ValueError: the token is shorter than 16 bytes, ``digest`` is none of these,
            ``max_frame_size`` is out of range or ``idle_timeout`` is not a positive number.
    """

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    token: str | bytes | None = field(default=None, repr=False)
    digest: DigestChoice = "fast"
    rate_limit: RateLimit | None = None
    tree_streams: bool = True

    def __post_init__(self) -> None:
        check_digest_choice(self.digest)
        if self.token is not None:
            check_token(self.token)
        if not MIN_FRAME_SIZE <= self.max_frame_size <= FRAME_SIZE_LIMIT:
            raise ValueError(
                f"max_frame_size must be between {MIN_FRAME_SIZE} and {FRAME_SIZE_LIMIT}, "
                f"not {self.max_frame_size}"
            )
        if not self.idle_timeout > 0:  # (NaN is not either)
            raise ValueError(f"idle_timeout must be a positive number, not {self.idle_timeout}")
