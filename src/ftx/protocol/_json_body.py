"""The JSON body of a message, as a whole (docs/protocol.md, section 5.2): parsing it, and the
rules that hold for every part of it, members the decoder of :mod:`ftx.protocol.messages`
reads or not: strings are valid Unicode (member names included), integers fit in 64 bits, and
arrays and objects nest at most :data:`MAX_JSON_DEPTH` levels deep. The members a message
defines are checked one by one by that decoder; the rest (which it ignores) here, as a whole.
"""

from __future__ import annotations

import json
from typing import Any, Final

from ftx.errors import RemoteProtocolError
from ftx.protocol._message_types import Kind

__all__ = ["MAX_JSON_DEPTH", "check_unread_members", "parse_body"]

MAX_JSON_DEPTH: Final = 32
"""How deeply arrays and objects may nest in a message body, the top-level object being the
first level."""
# Any integer in a body, in a member this version knows or not, fits in 64 bits (signed).
_MIN_INT: Final = -(1 << 63)
_MAX_INT: Final = (1 << 63) - 1
_MAX_INT_DIGITS: Final = 20  # "-9223372036854775808": longer is out of range, unparsed


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


class _IntegerRangeError(ValueError):
    """An integer literal outside the 64-bit range (raised inside the JSON parser)."""


def _parse_int(literal: str) -> int:
    # Checked before conversion: a literal of many digits costs quadratic time to convert.
    if len(literal) > _MAX_INT_DIGITS:
        raise _IntegerRangeError
    value = int(literal)
    if not _MIN_INT <= value <= _MAX_INT:
        raise _IntegerRangeError
    return value


# Made once: json.loads with options builds a new decoder on every call.
_JSON_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int)


def parse_body(body: memoryview) -> dict[str, Any]:
    """The JSON object that ``body`` (a payload after its kind byte) holds.

    Raises:
        RemoteProtocolError: it is not UTF-8, not JSON, not an object, holds an integer
            outside 64 bits or nests deeper than the C parser goes (deep nesting that parses is
            caught by :func:`check_unread_members`).
    """
    try:
        text = str(body, "utf-8")
        value = _JSON_DECODER.decode(text)
    except _IntegerRangeError:
        raise RemoteProtocolError("an integer in the message is outside the 64-bit range") from None
    except RecursionError:
        raise _too_deep() from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RemoteProtocolError(f"message body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise RemoteProtocolError("message body is not a JSON object")
    return value


def _too_deep() -> RemoteProtocolError:
    return RemoteProtocolError(
        f"the message nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
    )


# The members each kind defines: the decoder checks them one by one, and the rest as a whole.
_MEMBERS: Final[dict[Kind, frozenset[str]]] = {
    Kind.HELLO: frozenset({"protocol", "versions", "features", "max_frame_size", "agent"}),
    Kind.ERROR: frozenset({"id", "code", "message"}),
    Kind.CHALLENGE: frozenset({"nonce"}),
    Kind.AUTH: frozenset({"nonce", "proof"}),
    Kind.AUTH_OK: frozenset({"proof"}),
    Kind.GET: frozenset({"id", "path", "offset", "identity", "digest", "length"}),
    Kind.LIST: frozenset({"id", "path"}),
    Kind.PUT: frozenset({"id", "path", "size", "digest", "source", "overwrite", "mtime_ns"}),
    Kind.MKDIR: frozenset({"id", "path"}),
    Kind.FILE: frozenset({"id", "size", "mtime_ns", "identity", "offset", "mode", "digest"}),
    Kind.END: frozenset({"id", "digest"}),
    Kind.READY: frozenset({"id", "offset"}),
    Kind.DONE: frozenset({"id", "created"}),
    Kind.ENTRIES: frozenset({"id", "entries"}),
    Kind.LIST_END: frozenset({"id", "count"}),
    Kind.BLOCKS: frozenset({"id", "path", "digest", "identity"}),
    Kind.BLOCK_LIST: frozenset(
        {"id", "size", "mtime_ns", "identity", "digest", "block_size", "blocks", "file_digest"}
    ),
    Kind.BLOCK_PROGRESS: frozenset({"id", "size", "hashed"}),
    Kind.TREE: frozenset({"id", "path", "digest", "have", "checksum"}),
    Kind.TREE_DIR: frozenset({"id", "path"}),
    Kind.TREE_FILES: frozenset({"id", "files"}),
    Kind.TREE_FILE: frozenset({"id", "name"}),
    Kind.TREE_SKIP: frozenset({"id", "path", "code", "message"}),
    Kind.TREE_END: frozenset({"id", "files", "skipped", "unchanged"}),
    Kind.TREE_HAVE: frozenset({"id", "path", "files"}),
    Kind.TREE_HAVE_END: frozenset({"id"}),
    Kind.TREE_SAME: frozenset({"id", "names"}),
    Kind.TREE_PUT: frozenset({"id", "path", "digest", "overwrite", "checksum"}),
    Kind.TREE_ASK: frozenset({"id", "path"}),
    Kind.TREE_PUT_END: frozenset({"id", "dirs", "files"}),
    Kind.TREE_STORED: frozenset({"id", "path", "names"}),
}
_ENTRY_MEMBERS: Final = frozenset({"name", "type", "size", "mtime_ns", "mode"})


def check_unread_members(kind: Kind, obj: dict[str, Any]) -> None:
    """Check the members of ``obj`` (the body of a message of ``kind``, its own members already
    checked) that the decoder does not read, names included: strings must be valid Unicode and
    nesting at most :data:`MAX_JSON_DEPTH` deep. (Integers were range-checked while parsing.)

    Raises:
        RemoteProtocolError: a string is not valid Unicode, or the nesting is too deep.
    """
    _check_members(obj, _MEMBERS[kind], 1)
    if kind is Kind.ENTRIES:
        for entry in obj["entries"]:  # a list of objects: _from_json checked it
            _check_members(entry, _ENTRY_MEMBERS, 3)


def _check_members(obj: dict[str, Any], known: frozenset[str], depth: int) -> None:
    if not obj.keys() <= known:
        for name in obj.keys() - known:
            _check_value(name, depth)
            _check_value(obj[name], depth)


def _check_value(value: object, depth: int) -> None:
    """Check ``value``, held in a container at nesting level ``depth``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise RemoteProtocolError("a string in the message is not valid Unicode text") from None
    elif isinstance(value, dict | list):
        if depth >= MAX_JSON_DEPTH:
            raise _too_deep()
        if isinstance(value, dict):
            _check_members(value, frozenset(), depth + 1)
        else:
            for item in value:
                _check_value(item, depth + 1)
