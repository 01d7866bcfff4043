"""How the command line names a path on the server: one rule for ``get``, ``get -r``, ``ls``
and ``put --to`` (:func:`server_path`)."""

from __future__ import annotations

__all__ = ["server_path"]


def server_path(text: str) -> str:
    """The path to ask the server for, from how the user wrote it.

    A path on the server is relative to the directory it serves, and a leading ``/`` means
    that directory too (as in a URL, or an sftp session confined to a directory): ``""``,
    ``.``, ``/`` and ``./`` all name the served directory itself, ``/nested/`` and
    ``./nested`` are ``nested``. Empty and ``.`` components are dropped; ``..`` is left for the
    server, which refuses any path that climbs out.
    """
    return "/".join(part for part in text.split("/") if part not in ("", "."))
