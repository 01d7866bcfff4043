"""Encoding and decoding the messages of tree streams (docs/protocol.md section 21). Sans-IO.

Every kind but TREE_FILES has a JSON object for body, under the rules of section 5.2. The body of
TREE_FILES is a 4-byte big-endian length, that many bytes of JSON (the records), then the files'
content back to back: exactly as many bytes as the records' sizes add up to.

Every name and path is checked here, as the decoder reads it: a name is one path component (not
empty, not ``.`` or ``..``, without ``/``, ``\\`` or NUL, at most 255 bytes of UTF-8); a path is
names joined by ``/`` (``""`` for the tree's root), at most 4096 bytes. Anything else is a
protocol violation, so a receiver never meets a name that could lead out of its destination.
"""

from __future__ import annotations

import json
from typing import Any, Final

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol._fields import as_bool, as_int, as_str, member
from ftx.protocol._json_body import check_unread_members, parse_body
from ftx.protocol._message_types import Kind
from ftx.protocol._tree_types import (
    MAX_NAME_BYTES,
    HaveRecord,
    TreeAsk,
    TreeDir,
    TreeEnd,
    TreeFile,
    TreeFiles,
    TreeGet,
    TreeHave,
    TreeHaveEnd,
    TreeMessage,
    TreePut,
    TreePutEnd,
    TreeRecord,
    TreeSame,
    TreeSkip,
    TreeStored,
)

__all__ = [
    "TREE_KINDS",
    "check_name",
    "check_tree_path",
    "decode_tree",
    "encode_tree",
]

TREE_KINDS: Final = frozenset(
    {
        Kind.TREE,
        Kind.TREE_DIR,
        Kind.TREE_FILES,
        Kind.TREE_FILE,
        Kind.TREE_SKIP,
        Kind.TREE_END,
        Kind.TREE_HAVE,
        Kind.TREE_HAVE_END,
        Kind.TREE_SAME,
        Kind.TREE_PUT,
        Kind.TREE_ASK,
        Kind.TREE_PUT_END,
        Kind.TREE_STORED,
    }
)
_MAX_INT: Final = (1 << 63) - 1
_MAX_ID: Final = (1 << 32) - 1
_MAX_PATH_BYTES: Final = 4096
_MAX_SHORT: Final = 256
_MAX_MESSAGE: Final = 4096
_HEADER_LENGTH: Final = 4
_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is one safe path component (see the module's docstring).

    Raises:
        RemoteProtocolError: it is not.
    """
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise RemoteProtocolError(f"{what} {name!r} is not a file name")
    if "/" in name or "\\" in name or "\0" in name:
        raise RemoteProtocolError(f"{what} {name!r} holds a separator or NUL")
    if name.isascii():  # (most names: one byte a character, no surrogates)
        if len(name) > MAX_NAME_BYTES:
            raise RemoteProtocolError(f"{what} is longer than {MAX_NAME_BYTES} bytes")
        return name
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise RemoteProtocolError(f"{what} is not valid Unicode text") from None
    if size > MAX_NAME_BYTES:
        raise RemoteProtocolError(f"{what} is longer than {MAX_NAME_BYTES} bytes")
    return name


def check_tree_path(path: object, what: str = "path") -> str:
    """Return ``path`` if it is ``""`` or safe names joined by ``/``, at most 4096 bytes.

    Raises:
        RemoteProtocolError: it is not.
    """
    if not isinstance(path, str):
        raise RemoteProtocolError(f"'{what}' must be a string")
    if path == "":
        return path
    if len(path) > _MAX_PATH_BYTES or len(path.encode("utf-8", "surrogatepass")) > _MAX_PATH_BYTES:
        raise RemoteProtocolError(f"'{what}' is longer than {_MAX_PATH_BYTES} bytes")
    for part in path.split("/"):
        check_name(part, f"a component of '{what}'")
    return path


def _optional_str(value: object, name: str) -> str | None:
    return None if value is None else as_str(value, name, _MAX_SHORT)


def _id(obj: dict[str, Any]) -> int:
    return as_int(member(obj, "id"), "id", 0, _MAX_ID)


def _plain_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _plain_digest(value: object) -> bool:
    return value is None or (type(value) is str and len(value) <= _MAX_SHORT and value.isascii())


def _plain_record(raw: list[Any]) -> bool:
    """Whether the five values of a record pass the decoder's checks (its common case)."""
    name, size, mtime_ns, mode, digest = raw
    return (
        type(name) is str
        and name.isascii()
        and 0 < len(name) <= MAX_NAME_BYTES
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and _plain_int(size, 0, _MAX_INT)
        and _plain_int(mtime_ns, -_MAX_INT, _MAX_INT)
        and _plain_int(mode, 0, 0o7777)
        and _plain_digest(digest)
    )


def _record(raw: object) -> TreeRecord:
    if type(raw) is list and len(raw) == 5:  # the common case, checked at once
        name, size, mtime_ns, mode, digest = raw
        if (
            _plain_int(size, 0, _MAX_INT)
            and _plain_int(mtime_ns, -_MAX_INT, _MAX_INT)
            and _plain_int(mode, 0, 0o7777)
            and _plain_digest(digest)
        ):
            return TreeRecord(check_name(name), size, mtime_ns, mode, digest)
    if not isinstance(raw, list) or len(raw) != 5:
        raise RemoteProtocolError("a file record must be an array of 5 values")
    name, size, mtime_ns, mode, digest = raw
    return TreeRecord(
        check_name(name),
        as_int(size, "size", 0, _MAX_INT),
        as_int(mtime_ns, "mtime_ns", -_MAX_INT, _MAX_INT),
        as_int(mode, "mode", 0, 0o7777),
        _optional_str(digest, "digest"),
    )


def _have(raw: object) -> HaveRecord:
    if type(raw) is list and len(raw) == 4:  # the common case, checked at once
        name, size, mtime_ns, digest = raw
        if (
            _plain_int(size, 0, _MAX_INT)
            and _plain_int(mtime_ns, -_MAX_INT, _MAX_INT)
            and _plain_digest(digest)
        ):
            return HaveRecord(check_name(name), size, mtime_ns, digest)
    if not isinstance(raw, list) or len(raw) != 4:
        raise RemoteProtocolError("a have record must be an array of 4 values")
    name, size, mtime_ns, digest = raw
    return HaveRecord(
        check_name(name),
        as_int(size, "size", 0, _MAX_INT),
        as_int(mtime_ns, "mtime_ns", -_MAX_INT, _MAX_INT),
        _optional_str(digest, "digest"),
    )


def _from_json(kind: Kind, obj: dict[str, Any]) -> TreeMessage:
    match kind:
        case Kind.TREE:
            return TreeGet(
                request_id=_id(obj),
                path=as_str(member(obj, "path"), "path", _MAX_PATH_BYTES),
                digest=_optional_str(member(obj, "digest", "sha256"), "digest"),
                have=as_bool(member(obj, "have", False), "have"),
                checksum=as_bool(member(obj, "checksum", False), "checksum"),
            )
        case Kind.TREE_DIR:
            return TreeDir(_id(obj), check_tree_path(member(obj, "path")))
        case Kind.TREE_FILE:
            return TreeFile(_id(obj), check_name(member(obj, "name")))
        case Kind.TREE_SKIP:
            return TreeSkip(
                _id(obj),
                check_tree_path(member(obj, "path")),
                as_str(member(obj, "code"), "code", _MAX_SHORT),
                as_str(member(obj, "message", ""), "message", _MAX_MESSAGE),
            )
        case Kind.TREE_END:
            return TreeEnd(
                _id(obj),
                as_int(member(obj, "files"), "files", 0, _MAX_INT),
                as_int(member(obj, "skipped"), "skipped", 0, _MAX_INT),
                as_int(member(obj, "unchanged", 0), "unchanged", 0, _MAX_INT),
            )
        case Kind.TREE_HAVE:
            files = member(obj, "files")
            if not isinstance(files, list):
                raise RemoteProtocolError("'files' must be a list")
            path = check_tree_path(member(obj, "path"))
            return TreeHave(_id(obj), path, tuple(map(_have, files)))
        case Kind.TREE_HAVE_END:
            return TreeHaveEnd(_id(obj))
        case Kind.TREE_SAME:
            names = member(obj, "names")
            if not isinstance(names, list):
                raise RemoteProtocolError("'names' must be a list")
            return TreeSame(_id(obj), tuple(map(check_name, names)))
        case Kind.TREE_PUT:
            return TreePut(
                request_id=_id(obj),
                path=as_str(member(obj, "path"), "path", _MAX_PATH_BYTES),
                digest=as_str(member(obj, "digest", "sha256"), "digest", _MAX_SHORT),
                overwrite=as_bool(member(obj, "overwrite", False), "overwrite"),
                checksum=as_bool(member(obj, "checksum", False), "checksum"),
            )
        case Kind.TREE_ASK:
            return TreeAsk(_id(obj), check_tree_path(member(obj, "path")))
        case Kind.TREE_PUT_END:
            return TreePutEnd(
                _id(obj),
                as_int(member(obj, "dirs"), "dirs", 0, _MAX_INT),
                as_int(member(obj, "files"), "files", 0, _MAX_INT),
            )
        case Kind.TREE_STORED:
            names = member(obj, "names")
            if not isinstance(names, list):
                raise RemoteProtocolError("'names' must be a list")
            path = check_tree_path(member(obj, "path"))
            return TreeStored(_id(obj), path, tuple(map(check_name, names)))
    raise RemoteProtocolError(f"unknown message kind 0x{kind:02x}")  # pragma: no cover


def _files_from(view: memoryview) -> TreeFiles:
    """Decode a TREE_FILES body (after the kind byte)."""
    if view.nbytes < _HEADER_LENGTH:
        raise RemoteProtocolError("TREE_FILES is shorter than its header length")
    length = int.from_bytes(view[:_HEADER_LENGTH], "big")
    if length > view.nbytes - _HEADER_LENGTH:
        raise RemoteProtocolError("TREE_FILES's header runs past the end of the frame")
    obj = parse_body(view[_HEADER_LENGTH : _HEADER_LENGTH + length])
    files = member(obj, "files")
    if not isinstance(files, list):
        raise RemoteProtocolError("'files' must be a list")
    records = tuple(map(_record, files))
    check_unread_members(Kind.TREE_FILES, obj)
    content = view[_HEADER_LENGTH + length :]
    if sum(record.size for record in records) != content.nbytes:
        raise RemoteProtocolError(
            f"TREE_FILES carries {content.nbytes} bytes of content where its records say "
            f"{sum(record.size for record in records)}"
        )
    return TreeFiles(_id(obj), records, content)


def decode_tree(kind: Kind, view: memoryview) -> TreeMessage:
    """Decode the body ``view`` (after the kind byte) of a tree-stream message of ``kind``.

    Raises:
        RemoteProtocolError: it is malformed (nothing else is raised).
    """
    if kind is Kind.TREE_FILES:
        return _files_from(view)
    obj = parse_body(view)
    message = _from_json(kind, obj)
    check_unread_members(kind, obj)
    return message


def _to_json(message: TreeMessage) -> tuple[Kind, dict[str, Any]]:
    match message:
        case TreeGet():
            return Kind.TREE, {
                "id": message.request_id,
                "path": message.path,
                "digest": message.digest,
                "have": message.have,
                "checksum": message.checksum,
            }
        case TreeDir():
            return Kind.TREE_DIR, {"id": message.request_id, "path": message.path}
        case TreeFile():
            return Kind.TREE_FILE, {"id": message.request_id, "name": message.name}
        case TreeSkip():
            text = message.message.encode("utf-8", "backslashreplace").decode("utf-8")
            if len(text) > _MAX_MESSAGE:
                text = text[: _MAX_MESSAGE - 1] + "\u2026"
            return Kind.TREE_SKIP, {
                "id": message.request_id,
                "path": message.path,
                "code": message.code,
                "message": text,
            }
        case TreeEnd():
            return Kind.TREE_END, {
                "id": message.request_id,
                "files": message.files,
                "skipped": message.skipped,
                "unchanged": message.unchanged,
            }
        case TreeHave():
            files = [[f.name, f.size, f.mtime_ns, f.digest] for f in message.files]
            return Kind.TREE_HAVE, {"id": message.request_id, "path": message.path, "files": files}
        case TreeHaveEnd():
            return Kind.TREE_HAVE_END, {"id": message.request_id}
        case TreeSame():
            return Kind.TREE_SAME, {"id": message.request_id, "names": list(message.names)}
        case TreePut():
            return Kind.TREE_PUT, {
                "id": message.request_id,
                "path": message.path,
                "digest": message.digest,
                "overwrite": message.overwrite,
                "checksum": message.checksum,
            }
        case TreeAsk():
            return Kind.TREE_ASK, {"id": message.request_id, "path": message.path}
        case TreePutEnd():
            return Kind.TREE_PUT_END, {
                "id": message.request_id,
                "dirs": message.dirs,
                "files": message.files,
            }
        case TreeStored():
            return Kind.TREE_STORED, {
                "id": message.request_id,
                "path": message.path,
                "names": list(message.names),
            }
        case TreeFiles():  # pragma: no cover - encoded by encode_tree itself
            pass
    raise TypeError(f"not a tree message: {message!r}")


def encode_tree(message: TreeMessage) -> tuple[Buffer, ...]:
    """The frame payload of ``message``, as buffers to send back to back (a TREE_FILES batch's
    content is not copied). Checked with the decoder's rules first.

    Raises:
        LocalProtocolError: a field is out of range, or a name is not safe.
    """
    try:
        if isinstance(message, TreeFiles):
            records = [
                [record.name, record.size, record.mtime_ns, record.mode, record.digest]
                for record in message.records
            ]
            header = {"id": message.request_id, "files": records}
            for raw in records:
                if not _plain_record(raw):
                    _record(raw)  # raises, saying what is wrong
            as_int(message.request_id, "id", 0, _MAX_ID)
            if sum(r.size for r in message.records) != memoryview(message.content).nbytes:
                raise RemoteProtocolError("the content does not match the records' sizes")
            encoded = _ENCODER.encode(header).encode("utf-8")
            prefix = bytes([Kind.TREE_FILES]) + len(encoded).to_bytes(_HEADER_LENGTH, "big")
            return (prefix + encoded, message.content)
        kind, body = _to_json(message)
        _from_json(kind, body)
        return (bytes([kind]) + _ENCODER.encode(body).encode("utf-8"),)
    except (RemoteProtocolError, ValueError, UnicodeEncodeError) as exc:
        name = type(message).__name__
        raise LocalProtocolError(f"refusing to send an invalid {name}: {exc}") from None
