"""The messages of tree streams (feature ``tree``, docs/protocol.md section 21): one request
answered with a whole directory tree, small files packed many to a frame.

Only the message classes live here (they are part of :data:`ftx.protocol.messages.Message`); their
encoding is in :mod:`ftx.protocol._tree_codec`.
"""

from __future__ import annotations

from typing import Final

from ftx.framing import Buffer
from ftx.protocol._record import record

__all__ = [
    "MAX_NAME_BYTES",
    "TREE_FEATURE",
    "TREE_PUT_FEATURE",
    "HaveRecord",
    "TreeAsk",
    "TreeDir",
    "TreeEnd",
    "TreeFile",
    "TreeFiles",
    "TreeGet",
    "TreeHave",
    "TreeHaveEnd",
    "TreeMessage",
    "TreePut",
    "TreePutEnd",
    "TreeRecord",
    "TreeSame",
    "TreeSkip",
    "TreeStored",
]

TREE_FEATURE: Final = "tree"
"""Listed by a server that answers TREE and a client that can read the answer."""
MAX_NAME_BYTES: Final = 255
"""The longest name (one path component) a tree stream carries, in UTF-8 bytes."""


@record
class TreeGet:
    """Ask for the whole tree under the directory ``path`` as one stream.

    ``digest`` names the digest of every file (``None``: none). With ``have`` the client sends
    what it already has (:class:`TreeHave` pages, then :class:`TreeHaveEnd`) right after this
    request, and the server leaves out the files it has with the same size and modification
    time (with ``checksum``: the same digest).
    """

    request_id: int
    path: str
    digest: str | None = "sha256"
    have: bool = False
    checksum: bool = False


@record
class TreeDir:
    """A directory of the tree: ``path`` is relative to the tree's root (``""``: the root). The
    files that follow, up to the next :class:`TreeDir`, are in it."""

    request_id: int
    path: str


@record
class TreeRecord:
    """One small file of a :class:`TreeFiles` batch; its ``size`` bytes are in the content."""

    name: str
    size: int
    mtime_ns: int
    mode: int
    digest: str | None


@record
class TreeFiles:
    """Small files of the current directory, whole: ``content`` is their bytes, back to back,
    in the order of ``records``."""

    request_id: int
    records: tuple[TreeRecord, ...]
    content: Buffer = b""


@record
class TreeFile:
    """The file ``name`` of the current directory follows as FILE, DATA and END (or ends early
    with a :class:`TreeSkip`)."""

    request_id: int
    name: str


@record
class TreeSkip:
    """The entry at ``path`` (relative to the tree's root) was not sent, for the reason
    ``code`` (an error code, or ``"symlink"`` / ``"not-a-file"``)."""

    request_id: int
    path: str
    code: str
    message: str = ""


@record
class TreeSame:
    """Files of the current directory left out because the client has them already."""

    request_id: int
    names: tuple[str, ...]


@record
class TreeEnd:
    """The end of a tree: ``files`` sent, ``skipped`` entries reported, ``unchanged`` files
    left out because the client has them (named in TREE_SAME messages)."""

    request_id: int
    files: int
    skipped: int
    unchanged: int = 0


@record
class HaveRecord:
    """One file the client has: its ``name`` in the directory of the page, size, modification
    time, and digest (with ``checksum``; else ``None``)."""

    name: str
    size: int
    mtime_ns: int
    digest: str | None = None


@record
class TreeHave:
    """Files the client has in the directory ``path`` (relative to the tree's root)."""

    request_id: int
    path: str
    files: tuple[HaveRecord, ...] = ()


@record
class TreeHaveEnd:
    """The end of what the client has."""

    request_id: int


# Tree uploads (feature ``tree-put``, docs/protocol.md section 23): the client sends TREE_PUT,
# then TREE_DIR and TREE_FILES (the messages above, the other way) and TREE_ASK, and ends with
# TREE_PUT_END; the server answers asks with TREE_HAVE pages and TREE_HAVE_END, batches with
# TREE_STORED and TREE_SKIP, and the whole with TREE_END.

TREE_PUT_FEATURE: Final = "tree-put"
"""Listed by a server that accepts tree uploads and a client that can send them."""


@record
class TreePut:
    """Store a tree under the directory ``path`` (created if missing; its parent must exist).

    Every file's record carries its ``digest`` (an algorithm name: every file is verified).
    ``overwrite`` asks to replace files that exist; with ``checksum`` the server's have pages
    carry each file's digest.
    """

    request_id: int
    path: str
    digest: str = "sha256"
    overwrite: bool = False
    checksum: bool = False


@record
class TreeAsk:
    """What does the server have in the directory ``path`` of the tree? Answered with
    :class:`TreeHave` pages and a :class:`TreeHaveEnd`."""

    request_id: int
    path: str


@record
class TreePutEnd:
    """The end of a tree upload: ``dirs`` TREE_DIRs and ``files`` records were sent."""

    request_id: int
    dirs: int
    files: int


@record
class TreeStored:
    """Files of the directory ``path`` (of the tree) stored: verified, published and flushed."""

    request_id: int
    path: str
    names: tuple[str, ...]


TreeMessage = (  # every message of the tree streams (both directions)
    TreeGet
    | TreeDir
    | TreeFiles
    | TreeFile
    | TreeSkip
    | TreeEnd
    | TreeHave
    | TreeHaveEnd
    | TreeSame
    | TreePut
    | TreeAsk
    | TreePutEnd
    | TreeStored
)
