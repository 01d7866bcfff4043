"""The ftx message types: one frozen class per message (:func:`~ftx.protocol._record.record`),
and the kinds that name them on the wire. Re-exported by
:mod:`ftx.protocol.messages`, which encodes and decodes them."""

from __future__ import annotations

import enum

from ftx.framing import Buffer
from ftx.protocol._record import record
from ftx.protocol._tree_types import (
    TreeMessage,
)

__all__ = [
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
    "Hello",
    "Kind",
    "ListDir",
    "ListEnd",
    "ListEntries",
    "MakeDir",
    "Message",
    "Put",
    "Ready",
]


class Kind(enum.IntEnum):
    """The first byte of every frame payload."""

    HELLO = 0x01
    ERROR = 0x02
    CHALLENGE = 0x03
    AUTH = 0x04
    AUTH_OK = 0x05
    GET = 0x10
    LIST = 0x11
    PUT = 0x12
    MKDIR = 0x13
    FILE = 0x20
    DATA = 0x21
    END = 0x22
    READY = 0x23
    DONE = 0x24
    ENTRIES = 0x30
    LIST_END = 0x31
    TREE = 0x50  # tree streams (feature "tree"): ftx.protocol._tree_types
    TREE_DIR = 0x51
    TREE_FILES = 0x52
    TREE_FILE = 0x53
    TREE_SKIP = 0x54
    TREE_END = 0x55
    TREE_HAVE = 0x56
    TREE_HAVE_END = 0x57
    TREE_SAME = 0x58
    TREE_PUT = 0x59  # tree uploads (feature "tree-put"): ftx.protocol._tree_types
    TREE_ASK = 0x5A
    TREE_PUT_END = 0x5B
    TREE_STORED = 0x5C
    BLOCKS = 0x60
    BLOCK_LIST = 0x61
    BLOCK_PROGRESS = 0x62


class EntryType(enum.StrEnum):
    """What a directory entry is. Symbolic links are reported as such, not followed."""

    FILE = "file"
    DIRECTORY = "dir"
    SYMLINK = "symlink"
    OTHER = "other"


@record
class Hello:
    """The first message in each direction.

    The client lists every major version it speaks in ``versions``; the server answers with the
    one it chose, alone. ``features`` names optional extensions; only those both sides list are
    in use. ``max_frame_size`` is the largest frame payload the sender accepts;
    ``max_data_frame_size``, if given, the largest DATA payload it accepts once the feature
    ``large-data`` is in use (docs/protocol.md, section 20).
    """

    versions: tuple[int, ...]
    features: frozenset[str] = frozenset()
    max_frame_size: int = 1 << 20
    agent: str = ""
    max_data_frame_size: int | None = None


@record
class Get:
    """Ask for the regular file at ``path``, from byte ``offset`` on.

    With ``identity`` set, the server refuses with ``changed`` unless the file still has that
    identity (how a resume makes sure it continues the same file). ``digest`` names the digest
    algorithm for the end message, or is ``None`` for no digest. ``length`` (feature
    ``ranges``) asks for at most that many bytes from ``offset`` on; such a ranged GET asks for
    no digest (the bytes are checked against the file's block digests, :class:`Blocks`).
    """

    request_id: int
    path: str
    offset: int = 0
    identity: str | None = None
    digest: str | None = "sha256"
    length: int | None = None


@record
class ListDir:
    """Ask for the entries of the directory at ``path`` ("" is the served root)."""

    request_id: int
    path: str


@record
class FileHeader:
    """The answer to :class:`Get`: ``size - offset`` bytes of DATA follow, then :class:`FileEnd`.

    ``identity`` is an opaque token that changes whenever the file changes.
    """

    request_id: int
    size: int
    mtime_ns: int
    identity: str
    offset: int = 0
    mode: int = 0o644
    digest: str | None = "sha256"


@record
class Data:
    """A chunk of file content (no request id: it belongs to the file being sent, by the server
    answering a GET or by the client uploading after READY)."""

    data: Buffer


@record
class FileEnd:
    """The end of a file: ``digest`` is the hex digest of the *whole* file (from byte 0).

    Sent by the server to end a GET's DATA, and by the client to end an upload's DATA.
    """

    request_id: int
    digest: str | None


@record
class Entry:
    """One directory entry. ``name`` is a single path component."""

    name: str
    type: EntryType
    size: int
    mtime_ns: int
    mode: int


@record
class ListEntries:
    """A page of entries answering :class:`ListDir`; more may follow, then :class:`ListEnd`."""

    request_id: int
    entries: tuple[Entry, ...] = ()


@record
class ListEnd:
    """The end of a listing; ``count`` entries were sent in all."""

    request_id: int
    count: int


@record
class Error:
    """A refusal. With a ``request_id`` it ends that request and the connection goes on; with
    ``None`` it concerns the whole connection, which the sender then closes."""

    request_id: int | None
    code: str
    message: str


@record
class Challenge:
    """The server's challenge (feature ``auth-hmac-sha256``): ``nonce`` is 32 random bytes, as
    64 lowercase hex digits. See :mod:`ftx.protocol._auth`."""

    nonce: str


@record
class Auth:
    """The client's answer to :class:`Challenge`: its own ``nonce`` and its ``proof`` that it
    knows the token (both 64 lowercase hex digits)."""

    nonce: str
    proof: str


@record
class AuthOk:
    """The server accepted the client's proof, and proves in turn that it knows the token."""

    proof: str


@record
class Put:
    """Ask to upload a file of ``size`` bytes to ``path`` (feature ``upload``).

    The server answers :class:`Ready` with the offset to send from, the client sends DATA from
    there and :class:`FileEnd` with the ``digest`` of the whole file, and the server answers
    :class:`Done` once the file is verified and in place. ``source`` names the version of the
    local file (``None``: never resume); ``mtime_ns`` is the modification time to give the file.
    """

    request_id: int
    path: str
    size: int
    digest: str = "sha256"
    source: str | None = None
    overwrite: bool = False
    mtime_ns: int | None = None


@record
class MakeDir:
    """Ask to create the directory ``path`` (feature ``upload``); its parent must exist."""

    request_id: int
    path: str


@record
class Ready:
    """The server's go-ahead for a :class:`Put`: send the file from byte ``offset`` (the bytes
    before it are already held, from an interrupted upload of the same source)."""

    request_id: int
    offset: int = 0


@record
class Done:
    """The end of a :class:`Put` (the file is verified and in place) or of a :class:`MakeDir`.
    ``created`` is false when it replaced a file, or when the directory already existed."""

    request_id: int
    created: bool = True


@record
class Blocks:
    """Ask for the block digests of the file at ``path`` (feature ``ranges``): the ``digest``
    algorithm's digest of each block, and of the whole file. With ``identity`` set, the server
    refuses with ``changed`` unless the file still has that identity."""

    request_id: int
    path: str
    digest: str
    identity: str | None = None


@record
class BlockList:
    """The answer to :class:`Blocks`: the file's ``size``, ``mtime_ns`` and ``identity`` (as in
    a FILE header), its ``block_size``, the hex digest of each block in order (``blocks``) and
    of the whole file (``file_digest``), all with the algorithm ``digest``."""

    request_id: int
    size: int
    mtime_ns: int
    identity: str
    digest: str
    block_size: int
    blocks: tuple[str, ...]
    file_digest: str


@record
class BlockProgress:
    """Part of the answer to :class:`Blocks` (feature ``block-progress``), before its
    :class:`BlockList`: the server has read and hashed ``hashed`` bytes of the file of ``size``
    bytes. Sent while a file not seen before is read, so that the client's progress deadline
    does not run out on a large one."""

    request_id: int
    size: int
    hashed: int


Message = (
    Hello
    | Get
    | ListDir
    | FileHeader
    | Data
    | FileEnd
    | ListEntries
    | ListEnd
    | Error
    | Challenge
    | Auth
    | AuthOk
    | Put
    | MakeDir
    | Ready
    | Done
    | Blocks
    | BlockList
    | BlockProgress
    | TreeMessage
)
