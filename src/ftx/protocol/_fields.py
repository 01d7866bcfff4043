"""The typed readers of JSON members, shared by every decoder of :mod:`ftx.protocol`: each
returns the value if it has the type and range the specification gives (docs/protocol.md,
section 5.2), and raises :class:`~ftx.errors.RemoteProtocolError` naming the member otherwise.
Sans-IO.
"""

from __future__ import annotations

from typing import Any, Final

from ftx.errors import RemoteProtocolError

__all__ = ["MISSING", "as_bool", "as_int", "as_str", "member"]

MISSING: Final = object()
"""The default of :func:`member` for a required member."""


def member(obj: dict[str, Any], name: str, default: object = MISSING) -> Any:
    """``obj[name]``, or ``default`` if it is absent.

    Raises:
        RemoteProtocolError: the member is absent and required (no ``default``).
    """
    value = obj.get(name, default)
    if value is MISSING:
        raise RemoteProtocolError(f"'{name}' is missing")
    return value


def as_int(value: object, name: str, low: int, high: int) -> int:
    """``value``, an integer from ``low`` to ``high`` (JSON ``true`` is not one).

    Raises:
        RemoteProtocolError: it is not.
    """
    # bool is an int subclass in Python, but JSON true is not a number.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RemoteProtocolError(f"'{name}' must be an integer from {low} to {high}")
    return value


def as_str(value: object, name: str, max_chars: int) -> str:
    """``value``, a string of at most ``max_chars`` characters, valid Unicode.

    Raises:
        RemoteProtocolError: it is not (JSON escapes can smuggle in lone surrogates).
    """
    if not isinstance(value, str) or len(value) > max_chars:
        raise RemoteProtocolError(f"'{name}' must be a string of at most {max_chars} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RemoteProtocolError(f"'{name}' is not valid Unicode text") from None
    return value


def as_bool(value: object, name: str) -> bool:
    """``value``, ``true`` or ``false``.

    Raises:
        RemoteProtocolError: it is neither.
    """
    if not isinstance(value, bool):
        raise RemoteProtocolError(f"'{name}' must be true or false")
    return value
