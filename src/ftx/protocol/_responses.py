"""The answers to one connection's requests, checked in order: which message may come next.

A request is outstanding from the moment it is sent until its answer is complete (FILE, DATA
and END; entries and LIST_END; READY, the upload and DONE; or an ERROR). Answers come in request
order and never interleave, so DATA and entries need no request id. Shared by both roles through
:mod:`ftx.protocol`: the client checks what it receives, the server what it sends.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final

from ftx.errors import LocalProtocolError, RemoteProtocolError
from ftx.protocol._blocks import block_count, block_size_for, range_end
from ftx.protocol._digests import is_hex_digest
from ftx.protocol._tree_types import TreeAsk, TreePutEnd, TreeStored
from ftx.protocol.messages import (
    BlockList,
    BlockProgress,
    Blocks,
    Data,
    Done,
    Error,
    FileEnd,
    FileHeader,
    Get,
    ListDir,
    ListEnd,
    ListEntries,
    MakeDir,
    Message,
    Put,
    Ready,
    TreeDir,
    TreeEnd,
    TreeFile,
    TreeFiles,
    TreeGet,
    TreeHave,
    TreeHaveEnd,
    TreePut,
    TreeSame,
    TreeSkip,
)

__all__ = [
    "MAX_LIST_ENTRIES",
    "MAX_PENDING_REQUESTS",
    "MAX_TREE_ASKS",
    "Request",
    "Responses",
    "TreeUpload",
]

# How many requests a client may have outstanding (pipelined) at once.
MAX_PENDING_REQUESTS: Final = 1024
# How many entries one LIST answer may hold, in all its pages (a larger directory is answered
# with this many, then ERROR too-large): what a client keeps of a listing stays bounded.
MAX_LIST_ENTRIES: Final = 1_000_000
# How many TREE_ASKs of a tree upload may wait for their answer at once (docs/protocol.md 23).
MAX_TREE_ASKS: Final = 64


class _Phase(enum.Enum):
    AWAIT_HEADER = enum.auto()  # a GET was sent, no FILE yet
    DATA = enum.auto()  # FILE received, DATA bytes still due
    LISTING = enum.auto()  # a LIST was sent, entries may come
    AWAIT_READY = enum.auto()  # a PUT was sent, no READY yet
    UPLOADING = enum.auto()  # READY received: the client's DATA bytes and END are due
    AWAIT_RESULT = enum.auto()  # the client's END (or a MKDIR) was sent: DONE is due
    TREE = enum.auto()  # a TREE was sent: directories, files, skips until TREE_END
    TREE_HEADER = enum.auto()  # TREE_FILE received: the FILE of a large file is due
    AWAIT_BLOCKS = enum.auto()  # a BLOCKS was sent: BLOCK_LIST is due
    PUT_SENDING = enum.auto()  # a TREE_PUT was sent: the client streams until TREE_PUT_END
    PUT_RESULT = enum.auto()  # TREE_PUT_END was sent: the rest of the answer, TREE_END


Request = Get | ListDir | Put | MakeDir | Blocks | TreeGet | TreePut
TreeUpload = TreeDir | TreeFiles | TreeAsk | TreePutEnd
_FIRST_PHASE: Final = {
    TreePut: _Phase.PUT_SENDING,
    Blocks: _Phase.AWAIT_BLOCKS,
    TreeGet: _Phase.TREE,
    Get: _Phase.AWAIT_HEADER,
    ListDir: _Phase.LISTING,
    Put: _Phase.AWAIT_READY,
    MakeDir: _Phase.AWAIT_RESULT,
}


@dataclass(slots=True)
class _Pending:
    request: Request
    phase: _Phase
    remaining: int = 0
    entries_seen: int = 0
    in_tree: bool = False  # a large file of a tree stream: back to TREE after its END
    files: int = 0  # of a tree stream, sent so far
    skipped: int = 0
    unchanged: int = 0
    hashed: int = -1  # of a BLOCKS answer: the last BLOCK_PROGRESS's `hashed`
    size: int = -1  # and its `size`
    # Of a tree upload: the paths asked for, oldest first, whose answer has not ended; the
    # directories and records the client sent; whether a TREE_DIR came yet.
    asks: deque[str] | None = None
    dirs: int = 0
    in_directory: bool = False


class Responses:
    """Tracks the requests one side has outstanding and checks the answers to them in order.

    Shared by both roles: the client checks what it receives, the server what it sends. ``fail``
    is the exception type to raise on a violation (Remote on the client, Local on the server).
    """

    def __init__(self, fail: type[LocalProtocolError] | type[RemoteProtocolError]) -> None:
        self._fail = fail
        self._pending: deque[_Pending] = deque()
        self._ids: set[int] = set()
        # The TREE (with `have`) whose have-list the client is still sending.
        self._have_id: int | None = None
        # The tree upload whose stream the client is still sending.
        self._streaming: _Pending | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, request: Request, fail: type[Exception]) -> None:
        if request.request_id in self._ids:
            raise fail(f"request id {request.request_id} is already in use")
        if len(self._pending) >= MAX_PENDING_REQUESTS:
            raise fail(f"more than {MAX_PENDING_REQUESTS} requests outstanding")
        if self._pending and self._pending[-1].phase in (_Phase.AWAIT_READY, _Phase.UPLOADING):
            raise fail("a request before the END of the upload in progress")
        if self._have_id is not None:
            raise fail("a request before the TREE_HAVE_END of the tree in progress")
        if self._streaming is not None:
            raise fail("a request before the TREE_PUT_END of the tree upload in progress")
        pending = _Pending(request, _FIRST_PHASE[type(request)])
        self._pending.append(pending)
        self._ids.add(request.request_id)
        if isinstance(request, TreePut):
            pending.asks = deque()
            self._streaming = pending
        if isinstance(request, TreeGet) and request.have:
            self._have_id = request.request_id

    def check_have(self, message: TreeHave | TreeHaveEnd, fail: type[Exception]) -> None:
        """Check a TREE_HAVE or TREE_HAVE_END going from the client to the server: it belongs
        to the last TREE sent with ``have``, whose have-list has not ended."""
        if self._have_id is None or message.request_id != self._have_id:
            raise fail(
                f"{type(message).__name__} for request {message.request_id}, which sends none"
            )
        if isinstance(message, TreeHaveEnd):
            self._have_id = None

    def check_tree_upload(self, message: TreeUpload, fail: type[Exception]) -> None:
        """Check a message of a tree upload's stream going from the client to the server: it
        belongs to the last TREE_PUT sent, whose TREE_PUT_END has not been sent; files come
        after a directory, each with a digest of the TREE_PUT's algorithm; at most
        :data:`MAX_TREE_ASKS` asks wait for their answer; the end's counts are right."""
        streaming = self._streaming
        name = type(message).__name__
        if streaming is None or message.request_id != streaming.request.request_id:
            raise fail(f"{name} for request {message.request_id}, which streams no tree")
        request = streaming.request
        assert isinstance(request, TreePut)
        assert streaming.asks is not None
        match message:
            case TreeAsk():
                if len(streaming.asks) >= MAX_TREE_ASKS:
                    raise fail(f"more than {MAX_TREE_ASKS} TREE_ASKs waiting for their answer")
                streaming.asks.append(message.path)
            case TreeDir():
                streaming.dirs += 1
                streaming.in_directory = True
            case TreeFiles():
                if not streaming.in_directory:
                    raise fail("TREE_FILES before the first TREE_DIR of the tree")
                for record in message.records:
                    if record.digest is None or not is_hex_digest(record.digest, request.digest):
                        raise fail(
                            f"the record of {record.name!r} has no {request.digest} digest "
                            "in lowercase hexadecimal"
                        )
                streaming.files += len(message.records)
            case TreePutEnd():
                counts = (message.dirs, message.files)
                if counts != (streaming.dirs, streaming.files):
                    raise fail(
                        f"TREE_PUT_END counts (dirs, files) of {counts} after "
                        f"{(streaming.dirs, streaming.files)}"
                    )
                streaming.phase = _Phase.PUT_RESULT
                self._streaming = None

    @property
    def current(self) -> Request | None:
        return self._pending[0].request if self._pending else None

    def _finish(self) -> None:
        done = self._pending.popleft()
        self._ids.discard(done.request.request_id)

    def check_data(self, size: int) -> None:
        if not self._pending:
            raise self._fail("Data without a request to answer")
        head = self._pending[0]
        if head.phase is not _Phase.DATA:
            raise self._fail("file data outside of a file")
        if size > head.remaining:
            raise self._fail(f"{size} bytes of data where {head.remaining} remained")
        head.remaining -= size

    def check(self, message: Message) -> None:
        if isinstance(message, Error) and message.request_id is None:
            return  # concerns the whole connection; the caller closes
        if not self._pending:
            raise self._fail(f"{type(message).__name__} without a request to answer")
        head = self._pending[0]
        if isinstance(message, Data):
            self.check_data(memoryview(message.data).nbytes)
            return
        request_id = getattr(message, "request_id", None)
        if request_id != head.request.request_id:
            raise self._fail(
                f"{type(message).__name__} for request {request_id} while request "
                f"{head.request.request_id} is being answered"
            )
        if head.phase in (_Phase.PUT_SENDING, _Phase.PUT_RESULT):
            self._check_tree_put(head, message)
            return
        match message, head.phase:
            case Error(), _Phase.UPLOADING:
                raise self._fail("an answer to an upload before the upload's END")
            case Error(), _:
                self._finish()
            case FileHeader(), _Phase.AWAIT_HEADER:
                assert isinstance(head.request, Get)
                if message.offset != head.request.offset or message.offset > message.size:
                    raise self._fail("the file header does not match the requested offset")
                if message.digest != head.request.digest:
                    raise self._fail(
                        f"the file header announces digest {message.digest!r} where "
                        f"{head.request.digest!r} was asked for"
                    )
                head.phase = _Phase.DATA
                end = range_end(message.offset, head.request.length, message.size)
                head.remaining = end - message.offset
            case FileEnd(), _Phase.DATA:
                if head.remaining:
                    raise self._fail(f"the file ended with {head.remaining} bytes still due")
                assert isinstance(head.request, Get | TreeGet)
                _check_end_digest(message.digest, head.request.digest, self._fail)
                if head.in_tree:
                    head.phase, head.in_tree = _Phase.TREE, False
                    head.files += 1
                else:
                    self._finish()
            case TreeDir(), _Phase.TREE:
                pass
            case TreeFiles(), _Phase.TREE:
                assert isinstance(head.request, TreeGet)
                for record in message.records:
                    _check_end_digest(record.digest, head.request.digest, self._fail)
                    if record.digest is None and head.request.digest is not None:
                        raise self._fail(f"no digest for {record.name!r}, where one was asked for")
                head.files += len(message.records)
            case TreeSame(), _Phase.TREE:
                head.unchanged += len(message.names)
            case TreeFile(), _Phase.TREE:
                head.phase = _Phase.TREE_HEADER
            case FileHeader(), _Phase.TREE_HEADER:
                assert isinstance(head.request, TreeGet)
                if message.offset != 0 or message.digest != head.request.digest:
                    raise self._fail("a tree's file header must have offset 0 and its digest")
                head.phase, head.in_tree = _Phase.DATA, True
                head.remaining = message.size
            case TreeSkip(), (_Phase.TREE | _Phase.TREE_HEADER):
                head.phase = _Phase.TREE
                head.skipped += 1
            case TreeSkip(), _Phase.DATA if head.in_tree:
                head.phase, head.in_tree = _Phase.TREE, False  # the file ended early
                head.skipped += 1
            case TreeEnd(), _Phase.TREE:
                counts = (message.files, message.skipped, message.unchanged)
                if counts != (head.files, head.skipped, head.unchanged):
                    raise self._fail(
                        f"the tree ended with counts (files, skipped, unchanged) of {counts} "
                        f"after {(head.files, head.skipped, head.unchanged)}"
                    )
                self._finish()
            case ListEntries(), _Phase.LISTING:
                head.entries_seen += len(message.entries)
                if head.entries_seen > MAX_LIST_ENTRIES:
                    raise self._fail(f"a listing of more than {MAX_LIST_ENTRIES} entries")
            case ListEnd(), _Phase.LISTING:
                if message.count != head.entries_seen:
                    raise self._fail(
                        f"the listing ended with a count of {message.count} after "
                        f"{head.entries_seen} entries"
                    )
                self._finish()
            case Ready(), _Phase.AWAIT_READY:
                assert isinstance(head.request, Put)
                if message.offset > head.request.size:
                    raise self._fail(
                        f"READY offset {message.offset} is beyond the upload's size of "
                        f"{head.request.size}"
                    )
                head.phase = _Phase.UPLOADING
                head.remaining = head.request.size - message.offset
            case Done(), _Phase.AWAIT_RESULT:
                self._finish()
            case BlockProgress(), _Phase.AWAIT_BLOCKS:
                _check_block_progress(message, head, self._fail)
                head.hashed, head.size = message.hashed, message.size
            case BlockList(), _Phase.AWAIT_BLOCKS:
                assert isinstance(head.request, Blocks)
                _check_block_list(message, head.request, self._fail)
                if head.size >= 0 and message.size != head.size:
                    raise self._fail(
                        f"BLOCK_LIST gives a size of {message.size} after BLOCK_PROGRESS gave "
                        f"{head.size}"
                    )
                self._finish()
            case _:
                raise self._fail(f"unexpected {type(message).__name__}")

    def _check_tree_put(self, head: _Pending, message: Message) -> None:
        """An answer to a tree upload (section 23): asks answered in order, ERROR and TREE_END
        only after the client's TREE_PUT_END and the answers to all its asks."""
        asks = head.asks
        assert asks is not None
        done = head.phase is _Phase.PUT_RESULT and not asks
        match message:
            case TreeHave():
                if not asks or message.path != asks[0]:
                    raise self._fail(f"TREE_HAVE for {message.path!r}, which was not asked next")
            case TreeHaveEnd():
                if not asks:
                    raise self._fail("TREE_HAVE_END without a TREE_ASK to answer")
                asks.popleft()
            case TreeStored():
                head.entries_seen += len(message.names)  # (files stored, so far)
            case TreeSkip():
                head.skipped += 1
            case Error() if done:
                self._finish()
            case TreeEnd() if done:
                counts = (message.files, message.skipped, message.unchanged)
                if counts != (head.entries_seen, head.skipped, 0):
                    raise self._fail(
                        f"the tree upload ended with counts (files, skipped, unchanged) of "
                        f"{counts} after {(head.entries_seen, head.skipped, 0)}"
                    )
                self._finish()
            case _:
                raise self._fail(f"unexpected {type(message).__name__} answering a TREE_PUT")

    def check_upload(self, message: Data | FileEnd, fail: type[Exception]) -> None:
        """Check a DATA or END going from the client to the server: they belong to the oldest
        request, a PUT whose READY has arrived, and add up to exactly the bytes it announced."""
        head = self._pending[0] if self._pending else None
        if head is None or head.phase is not _Phase.UPLOADING:
            raise fail(f"{'DATA' if isinstance(message, Data) else 'END'} outside of an upload")
        if isinstance(message, Data):
            size = memoryview(message.data).nbytes
            if size > head.remaining:
                raise fail(f"{size} bytes of upload data where {head.remaining} remained")
            head.remaining -= size
            return
        if message.request_id != head.request.request_id:
            raise fail(
                f"END for request {message.request_id} while request "
                f"{head.request.request_id} is being uploaded"
            )
        if head.remaining:
            raise fail(f"the upload ended with {head.remaining} bytes still due")
        if message.digest is None:
            raise fail("the END of an upload carries no digest")
        head.phase = _Phase.AWAIT_RESULT


def _check_block_progress(
    message: BlockProgress,
    head: _Pending,
    fail: type[LocalProtocolError] | type[RemoteProtocolError],
) -> None:
    """Each BLOCK_PROGRESS of one answer gives the same ``size``, and a ``hashed`` that grows
    and stays below it (the last bytes are announced by BLOCK_LIST itself): so a server can
    send at most ``size`` of them, and cannot hold a client with them forever."""
    if head.size >= 0 and message.size != head.size:
        raise fail(f"BLOCK_PROGRESS gives a size of {message.size} after {head.size}")
    if message.hashed <= head.hashed or message.hashed >= message.size:
        raise fail(
            f"BLOCK_PROGRESS gives {message.hashed} bytes hashed of {message.size}, after "
            f"{max(head.hashed, 0)}: it must grow, and stay below the size"
        )


def _check_block_list(
    answer: BlockList,
    request: Blocks,
    fail: type[LocalProtocolError] | type[RemoteProtocolError],
) -> None:
    """A BLOCK_LIST must use the algorithm asked for, carry the identity asked for (if one was),
    and cut the file as :func:`~ftx.protocol._blocks.block_size_for` says, one digest a block."""
    if answer.digest != request.digest:
        raise fail(f"BLOCK_LIST uses {answer.digest!r} where {request.digest!r} was asked for")
    if request.identity is not None and answer.identity != request.identity:
        raise fail("BLOCK_LIST names another identity than the one asked for")
    if answer.block_size != block_size_for(answer.size):
        raise fail(
            f"BLOCK_LIST has blocks of {answer.block_size} bytes where a file of "
            f"{answer.size} bytes has blocks of {block_size_for(answer.size)}"
        )
    if len(answer.blocks) != block_count(answer.size, answer.block_size):
        raise fail(
            f"BLOCK_LIST has {len(answer.blocks)} digests for "
            f"{block_count(answer.size, answer.block_size)} blocks"
        )


def _check_end_digest(
    digest: str | None,
    algorithm: str | None,
    fail: type[LocalProtocolError] | type[RemoteProtocolError],
) -> None:
    """END's digest must be written as the GET's algorithm writes it (lowercase hexadecimal, of
    its length), and be ``null`` when the GET asked for none. (A ``null`` where a digest was
    asked for is not a violation: the download simply does not verify, section 9.4.)"""
    if digest is None:
        return
    if algorithm is None:
        raise fail("END carries a digest where the GET asked for none")
    if not is_hex_digest(digest, algorithm):
        raise fail(f"END's digest is not a {algorithm} digest in lowercase hexadecimal")
