"""The ftx wire protocol, sans-IO: messages, connection state, authentication and digests.

:class:`ClientProtocol` and :class:`ServerProtocol` hold one side's state of one connection (in
the style of h11); :mod:`ftx.protocol.messages` encodes and decodes the messages themselves.
Nothing here does I/O: the client and the server do it around these objects.
"""

from ftx.protocol._auth import ClientAuthenticator, ServerAuthenticator, check_token, load_token
from ftx.protocol._blocks import (
    BASE_BLOCK_SIZE,
    BLOCK_PROGRESS_FEATURE,
    MAX_BLOCKS,
    block_count,
    block_size_for,
    overflows,
    range_end,
)
from ftx.protocol._client_side import ClientProtocol
from ftx.protocol._connection import (
    BLAKE3_FEATURE,
    DIGEST_ALGORITHMS,
    DIGEST_FEATURES,
    LARGE_DATA_FEATURE,
    MAX_LIST_ENTRIES,
    MAX_PENDING_REQUESTS,
    MAX_TREE_ASKS,
    MIN_FRAME_SIZE,
    PORTABLE_IDENTITY_FEATURE,
    PROTOCOL_VERSION,
    RANGES_FEATURE,
    SUPPORTED_VERSIONS,
    TREE_FEATURE,
    TREE_PUT_FEATURE,
    UPLOAD_FEATURE,
    XXH3_FEATURE,
    DigestChoice,
    ErrorCode,
    Hasher,
    check_digest_choice,
    choose_digest,
    new_hasher,
)
from ftx.protocol._server_side import ServerProtocol

__all__ = [
    "BASE_BLOCK_SIZE",
    "BLAKE3_FEATURE",
    "BLOCK_PROGRESS_FEATURE",
    "DIGEST_ALGORITHMS",
    "DIGEST_FEATURES",
    "LARGE_DATA_FEATURE",
    "MAX_BLOCKS",
    "MAX_LIST_ENTRIES",
    "MAX_PENDING_REQUESTS",
    "MAX_TREE_ASKS",
    "MIN_FRAME_SIZE",
    "PORTABLE_IDENTITY_FEATURE",
    "PROTOCOL_VERSION",
    "RANGES_FEATURE",
    "SUPPORTED_VERSIONS",
    "TREE_FEATURE",
    "TREE_PUT_FEATURE",
    "UPLOAD_FEATURE",
    "XXH3_FEATURE",
    "ClientAuthenticator",
    "ClientProtocol",
    "DigestChoice",
    "ErrorCode",
    "Hasher",
    "ServerAuthenticator",
    "ServerProtocol",
    "block_count",
    "block_size_for",
    "check_digest_choice",
    "check_token",
    "choose_digest",
    "load_token",
    "new_hasher",
    "overflows",
    "range_end",
]
