"""The ftx messages and their encoding inside frames. Sans-IO.

Every frame payload starts with one *kind* byte. DATA carries raw file bytes after it; every other
kind carries a UTF-8 JSON object. Kinds from 0x80 up are extensions that a receiver which does
not know them ignores; an unknown kind below 0x80 is a protocol error. Unknown JSON fields are
ignored. ``docs/protocol.md`` is the full specification.

:func:`decode_message` raises :class:`~ftx.errors.RemoteProtocolError` for anything malformed and
nothing else; :func:`encode_message` returns the payload as a tuple of buffers, so that file
bytes go out without being copied (see :meth:`ftx.framing.FramedChannel.send_parts`).
"""

from __future__ import annotations

import json
from typing import Any, Final

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.framing import Buffer
from ftx.protocol._blocks import MAX_BLOCKS
from ftx.protocol._digests import DIGEST_HEX_DIGITS, is_hex_digest
from ftx.protocol._fields import MISSING, as_bool, as_int, as_str, member
from ftx.protocol._json_body import MAX_JSON_DEPTH, check_unread_members, parse_body
from ftx.protocol._message_types import (
    Auth,
    AuthOk,
    BlockList,
    BlockProgress,
    Blocks,
    Challenge,
    Data,
    Done,
    Entry,
    EntryType,
    Error,
    FileEnd,
    FileHeader,
    Get,
    Hello,
    Kind,
    ListDir,
    ListEnd,
    ListEntries,
    MakeDir,
    Message,
    Put,
    Ready,
)
from ftx.protocol._tree_codec import TREE_KINDS, decode_tree, encode_tree
from ftx.protocol._tree_types import (
    HaveRecord,
    TreeAsk,
    TreeDir,
    TreeEnd,
    TreeFile,
    TreeFiles,
    TreeGet,
    TreeHave,
    TreeHaveEnd,
    TreePut,
    TreePutEnd,
    TreeRecord,
    TreeSame,
    TreeSkip,
    TreeStored,
)

__all__ = [
    "DATA_PREFIX",
    "MAX_JSON_DEPTH",
    "MAX_PATH_BYTES",
    "Auth",
    "AuthOk",
    "BlockList",
    "BlockProgress",
    "Blocks",
    "Challenge",
    "Data",
    "Done",
    "Entry",
    "EntryType",
    "Error",
    "FileEnd",
    "FileHeader",
    "Get",
    "HaveRecord",
    "Hello",
    "Kind",
    "ListDir",
    "ListEnd",
    "ListEntries",
    "MakeDir",
    "Message",
    "Put",
    "Ready",
    "TreeAsk",
    "TreeDir",
    "TreeEnd",
    "TreeFile",
    "TreeFiles",
    "TreeGet",
    "TreeHave",
    "TreeHaveEnd",
    "TreePut",
    "TreePutEnd",
    "TreeRecord",
    "TreeSame",
    "TreeSkip",
    "TreeStored",
    "decode_message",
    "encode_message",
]

MAX_PATH_BYTES: Final = 4096
_MAX_INT: Final = (1 << 63) - 1
_MAX_SHORT_STRING: Final = 256
_MAX_MESSAGE_CHARS: Final = 4096
_MAX_FEATURES: Final = 64
_FIRST_EXTENSION_KIND: Final = 0x80


DATA_PREFIX: Final = bytes([Kind.DATA])
_TREE_TYPES: Final = (
    TreeSame,
    TreeGet,
    TreeDir,
    TreeFiles,
    TreeFile,
    TreeSkip,
    TreeEnd,
    TreeHave,
    TreeHaveEnd,
    TreePut,
    TreeAsk,
    TreePutEnd,
    TreeStored,
)


def encode_message(message: Message) -> tuple[Buffer, ...]:
    """Return the frame payload for ``message``, as buffers to send back to back.

    The payload is checked with the same rules :func:`decode_message` applies, so that nothing
    is sent that a conforming peer would have to reject. The free text of an :class:`Error` has
    any lone surrogate (an undecodable file name, say) escaped rather than refused.

    Raises:
        LocalProtocolError: a field is out of range or a string is not valid Unicode.
    """
    if isinstance(message, Data):
        return (DATA_PREFIX, message.data)
    if isinstance(message, _TREE_TYPES):
        return encode_tree(message)
    if isinstance(message, Error):
        text = message.message.encode("utf-8", "backslashreplace").decode("utf-8")
        if len(text) > _MAX_MESSAGE_CHARS:  # e.g. quoting a very long path: shorten, not fail
            text = text[: _MAX_MESSAGE_CHARS - 1] + "\u2026"
        message = Error(message.request_id, message.code, text)
    kind, body = _to_json(message)
    try:
        encoded = _JSON_ENCODER.encode(body)
        payload = bytes([kind]) + encoded.encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        raise LocalProtocolError(f"cannot encode {type(message).__name__}: {exc}") from None
    try:
        # The decoder's own checks, run on the object just encoded: what JSON would give back
        # (str, int, bool, None, list, dict) without the cost of parsing it again.
        _from_json(kind, body)
    except RemoteProtocolError as exc:
        name = type(message).__name__
        raise LocalProtocolError(f"refusing to send an invalid {name}: {exc}") from None
    return (payload,)


def _entry_to_json(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "type": str(entry.type),
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "mode": entry.mode,
    }


def _to_json(message: Message) -> tuple[Kind, dict[str, Any]]:
    match message:
        case Hello():
            hello = {
                "protocol": "ftx",
                "versions": list(message.versions),
                "features": sorted(message.features),
                "max_frame_size": message.max_frame_size,
                "agent": message.agent,
            }
            if message.max_data_frame_size is not None:
                hello["max_data_frame_size"] = message.max_data_frame_size
            return Kind.HELLO, hello
        case Get():
            get = {
                "id": message.request_id,
                "path": message.path,
                "offset": message.offset,
                "identity": message.identity,
                "digest": message.digest,
            }
            if message.length is not None:  # (absent otherwise: a GET as version 1 wrote it)
                get["length"] = message.length
            return Kind.GET, get
        case ListDir():
            return Kind.LIST, {"id": message.request_id, "path": message.path}
        case FileHeader():
            return Kind.FILE, {
                "id": message.request_id,
                "size": message.size,
                "mtime_ns": message.mtime_ns,
                "identity": message.identity,
                "offset": message.offset,
                "mode": message.mode,
                "digest": message.digest,
            }
        case FileEnd():
            return Kind.END, {"id": message.request_id, "digest": message.digest}
        case ListEntries():
            entries = [_entry_to_json(entry) for entry in message.entries]
            return Kind.ENTRIES, {"id": message.request_id, "entries": entries}
        case ListEnd():
            return Kind.LIST_END, {"id": message.request_id, "count": message.count}
        case Error():
            body = {"id": message.request_id, "code": message.code, "message": message.message}
            return Kind.ERROR, body
        case Challenge():
            return Kind.CHALLENGE, {"nonce": message.nonce}
        case Auth():
            return Kind.AUTH, {"nonce": message.nonce, "proof": message.proof}
        case AuthOk():
            return Kind.AUTH_OK, {"proof": message.proof}
        case Put():
            return Kind.PUT, {
                "id": message.request_id,
                "path": message.path,
                "size": message.size,
                "digest": message.digest,
                "source": message.source,
                "overwrite": message.overwrite,
                "mtime_ns": message.mtime_ns,
            }
        case MakeDir():
            return Kind.MKDIR, {"id": message.request_id, "path": message.path}
        case Ready():
            return Kind.READY, {"id": message.request_id, "offset": message.offset}
        case Done():
            return Kind.DONE, {"id": message.request_id, "created": message.created}
        case Blocks():
            return Kind.BLOCKS, {
                "id": message.request_id,
                "path": message.path,
                "digest": message.digest,
                "identity": message.identity,
            }
        case BlockList():
            return Kind.BLOCK_LIST, {
                "id": message.request_id,
                "size": message.size,
                "mtime_ns": message.mtime_ns,
                "identity": message.identity,
                "digest": message.digest,
                "block_size": message.block_size,
                "blocks": list(message.blocks),
                "file_digest": message.file_digest,
            }
        case BlockProgress():
            return Kind.BLOCK_PROGRESS, {
                "id": message.request_id,
                "size": message.size,
                "hashed": message.hashed,
            }
    raise TypeError(f"not an ftx message: {message!r}")


def decode_message(payload: Buffer) -> Message | None:
    """Decode one frame payload. Returns ``None`` for an extension kind this version ignores.

    Raises:
        RemoteProtocolError: the payload is not a valid message. Nothing else is raised,
            whatever the payload.
    """
    view = memoryview(payload)
    if view.nbytes == 0:
        raise RemoteProtocolError("empty message")
    kind_byte = view[0]
    if kind_byte == Kind.DATA:
        return Data(view[1:])
    try:
        kind = Kind(kind_byte)
    except ValueError:
        if kind_byte >= _FIRST_EXTENSION_KIND:
            return None
        raise RemoteProtocolError(f"unknown message kind 0x{kind_byte:02x}") from None
    if kind in TREE_KINDS:
        return decode_tree(kind, view[1:])
    obj = parse_body(view[1:])
    message = _from_json(kind, obj)
    check_unread_members(kind, obj)
    return message


# Made once: json.dumps with options builds a new encoder on every call.
_JSON_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _from_json(kind: Kind, obj: dict[str, Any]) -> Message:
    match kind:
        case Kind.HELLO:
            if obj.get("protocol") != "ftx":
                raise RemoteProtocolError("the peer does not speak the ftx protocol")
            versions = obj.get("versions")
            if not isinstance(versions, list) or not 1 <= len(versions) <= _MAX_FEATURES:
                raise RemoteProtocolError("'versions' must be a non-empty list")
            features = obj.get("features", [])
            if not isinstance(features, list) or len(features) > _MAX_FEATURES:
                raise RemoteProtocolError("'features' must be a list")
            return Hello(
                versions=tuple(as_int(v, "versions", 0, 1 << 16) for v in versions),
                features=frozenset(as_str(f, "features", _MAX_SHORT_STRING) for f in features),
                max_frame_size=_int(obj, "max_frame_size", 0, (1 << 32) - 1),
                agent=_str(obj, "agent", _MAX_SHORT_STRING, default=""),
                max_data_frame_size=(
                    _int(obj, "max_data_frame_size", 0, (1 << 32) - 1)
                    if "max_data_frame_size" in obj
                    else None
                ),
            )
        case Kind.GET:
            return Get(
                request_id=_request_id(obj),
                path=_path(obj),
                offset=_int(obj, "offset", 0, _MAX_INT, default=0),
                identity=_optional_str(obj, "identity"),
                digest=_optional_str(obj, "digest", default="sha256"),
                length=None if obj.get("length") is None else _int(obj, "length", 0, _MAX_INT),
            )
        case Kind.LIST:
            return ListDir(request_id=_request_id(obj), path=_path(obj))
        case Kind.FILE:
            return FileHeader(
                request_id=_request_id(obj),
                size=_int(obj, "size", 0, _MAX_INT),
                mtime_ns=_int(obj, "mtime_ns", -_MAX_INT, _MAX_INT),
                identity=_str(obj, "identity", _MAX_SHORT_STRING),
                offset=_int(obj, "offset", 0, _MAX_INT, default=0),
                mode=_int(obj, "mode", 0, 0o7777, default=0o644),
                digest=_optional_str(obj, "digest"),
            )
        case Kind.END:
            return FileEnd(request_id=_request_id(obj), digest=_optional_str(obj, "digest"))
        case Kind.ENTRIES:
            raw_entries = obj.get("entries")
            if not isinstance(raw_entries, list):
                raise RemoteProtocolError("'entries' must be a list")
            entries = tuple(_entry(raw) for raw in raw_entries)
            return ListEntries(request_id=_request_id(obj), entries=entries)
        case Kind.LIST_END:
            return ListEnd(request_id=_request_id(obj), count=_int(obj, "count", 0, _MAX_INT))
        case Kind.ERROR:
            raw_id = obj.get("id")
            return Error(
                request_id=None if raw_id is None else _request_id(obj),
                code=_str(obj, "code", _MAX_SHORT_STRING),
                message=_str(obj, "message", _MAX_MESSAGE_CHARS, default=""),
            )
        case Kind.CHALLENGE:
            return Challenge(nonce=_hex256(obj, "nonce"))
        case Kind.AUTH:
            return Auth(nonce=_hex256(obj, "nonce"), proof=_hex256(obj, "proof"))
        case Kind.AUTH_OK:
            return AuthOk(proof=_hex256(obj, "proof"))
        case Kind.PUT:
            raw_mtime = obj.get("mtime_ns")
            return Put(
                request_id=_request_id(obj),
                path=_path(obj),
                size=_int(obj, "size", 0, _MAX_INT),
                digest=_str(obj, "digest", _MAX_SHORT_STRING, default="sha256"),
                source=_optional_str(obj, "source"),
                overwrite=_bool(obj, "overwrite", default=False),
                mtime_ns=None if raw_mtime is None else _int(obj, "mtime_ns", -_MAX_INT, _MAX_INT),
            )
        case Kind.MKDIR:
            return MakeDir(request_id=_request_id(obj), path=_path(obj))
        case Kind.READY:
            return Ready(request_id=_request_id(obj), offset=_int(obj, "offset", 0, _MAX_INT))
        case Kind.DONE:
            return Done(request_id=_request_id(obj), created=_bool(obj, "created", default=True))
        case Kind.BLOCKS:
            return Blocks(
                request_id=_request_id(obj),
                path=_path(obj),
                digest=_str(obj, "digest", _MAX_SHORT_STRING),
                identity=_optional_str(obj, "identity"),
            )
        case Kind.BLOCK_LIST:
            return _block_list(obj)
        case Kind.BLOCK_PROGRESS:
            return BlockProgress(
                request_id=_request_id(obj),
                size=_int(obj, "size", 0, _MAX_INT),
                hashed=_int(obj, "hashed", 0, _MAX_INT),
            )
        case Kind.DATA:  # pragma: no cover - handled before JSON parsing
            raise AssertionError("DATA has no JSON body")
        case _:  # pragma: no cover - the tree kinds, decoded by decode_tree
            raise AssertionError(f"{kind!r} is decoded elsewhere")


def _block_list(obj: dict[str, Any]) -> BlockList:
    """A BLOCK_LIST body: at most MAX_BLOCKS digests, each of the announced algorithm's form
    (the answer's consistency with its request and the file's size is checked by the state
    machine)."""
    algorithm = _str(obj, "digest", _MAX_SHORT_STRING)
    if algorithm not in DIGEST_HEX_DIGITS:
        raise RemoteProtocolError(f"'digest' names an unknown algorithm {algorithm!r}")
    raw_blocks = obj.get("blocks")
    if not isinstance(raw_blocks, list) or len(raw_blocks) > MAX_BLOCKS:
        raise RemoteProtocolError(f"'blocks' must be a list of at most {MAX_BLOCKS} digests")
    blocks = tuple(as_str(raw, "blocks", _MAX_SHORT_STRING) for raw in raw_blocks)
    file_digest = _str(obj, "file_digest", _MAX_SHORT_STRING)
    if not all(is_hex_digest(block, algorithm) for block in (*blocks, file_digest)):
        raise RemoteProtocolError(f"a block digest is not a {algorithm} digest in lowercase hex")
    return BlockList(
        request_id=_request_id(obj),
        size=_int(obj, "size", 0, _MAX_INT),
        mtime_ns=_int(obj, "mtime_ns", -_MAX_INT, _MAX_INT),
        identity=_str(obj, "identity", _MAX_SHORT_STRING),
        digest=algorithm,
        block_size=_int(obj, "block_size", 1, _MAX_INT),
        blocks=blocks,
        file_digest=file_digest,
    )


def _entry(raw: object) -> Entry:
    if not isinstance(raw, dict):
        raise RemoteProtocolError("a directory entry must be a JSON object")
    raw_type = _str(raw, "type", _MAX_SHORT_STRING)
    try:
        entry_type = EntryType(raw_type)
    except ValueError:
        entry_type = EntryType.OTHER  # a type from a later version: show it, do not fail
    return Entry(
        name=_str(raw, "name", MAX_PATH_BYTES),
        type=entry_type,
        size=_int(raw, "size", 0, _MAX_INT, default=0),
        mtime_ns=_int(raw, "mtime_ns", -_MAX_INT, _MAX_INT, default=0),
        mode=_int(raw, "mode", 0, 0o7777, default=0),
    )


def _int(obj: dict[str, Any], name: str, low: int, high: int, default: object = MISSING) -> int:
    return as_int(member(obj, name, default), name, low, high)


def _str(obj: dict[str, Any], name: str, max_chars: int, default: object = MISSING) -> str:
    return as_str(member(obj, name, default), name, max_chars)


def _optional_str(obj: dict[str, Any], name: str, default: str | None = None) -> str | None:
    value = obj.get(name, default)
    return None if value is None else as_str(value, name, _MAX_SHORT_STRING)


def _bool(obj: dict[str, Any], name: str, default: bool) -> bool:
    return as_bool(obj.get(name, default), name)


def _hex256(obj: dict[str, Any], name: str) -> str:
    """A 256-bit value: exactly 64 lowercase hexadecimal digits."""
    value = _str(obj, name, 64)
    if len(value) != 64 or value.strip("0123456789abcdef"):
        raise RemoteProtocolError(f"'{name}' must be 64 lowercase hexadecimal digits")
    return value


def _request_id(obj: dict[str, Any]) -> int:
    return _int(obj, "id", 0, (1 << 32) - 1)


def _path(obj: dict[str, Any]) -> str:
    path = _str(obj, "path", MAX_PATH_BYTES)
    if len(path.encode("utf-8")) > MAX_PATH_BYTES:
        raise RemoteProtocolError(f"'path' is longer than {MAX_PATH_BYTES} bytes")
    return path
