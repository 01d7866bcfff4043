"""ftx: verified, resumable file transfer over trio, with an embeddable framing layer.

The public API is re-exported here, and imported on first use (PEP 562), so that importing a
subpackage alone stays light: ``import ftx.framing`` loads neither the client, the server nor
:mod:`ssl`. The packages, by role and from the bottom up: :mod:`ftx.errors`, :mod:`ftx.framing`,
:mod:`ftx.protocol` and :mod:`ftx.fs`, then :mod:`ftx.server` and :mod:`ftx.client`, then
:mod:`ftx.cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ftx._version import __version__ as __version__
from ftx.errors import AuthenticationError as AuthenticationError
from ftx.errors import ConnectionLostError as ConnectionLostError
from ftx.errors import FrameTooLargeError as FrameTooLargeError
from ftx.errors import FtxError as FtxError
from ftx.errors import IncompleteFrameError as IncompleteFrameError
from ftx.errors import IntegrityError as IntegrityError
from ftx.errors import LocalFileError as LocalFileError
from ftx.errors import LocalProtocolError as LocalProtocolError
from ftx.errors import ProtocolError as ProtocolError
from ftx.errors import RemoteError as RemoteError
from ftx.errors import RemoteProtocolError as RemoteProtocolError

if TYPE_CHECKING:
    # `from x import y as y` marks re-exports for type checkers (trio does the same).
    from ftx.client import Client as Client
    from ftx.client import ClientConfig as ClientConfig
    from ftx.client import Download as Download
    from ftx.client import ProgressCallback as ProgressCallback
    from ftx.client import RateLimit as RateLimit
    from ftx.client import Upload as Upload
    from ftx.client import connect as connect
    from ftx.framing import FramedChannel as FramedChannel
    from ftx.framing import FrameDecoder as FrameDecoder
    from ftx.protocol import ErrorCode as ErrorCode
    from ftx.protocol.messages import Entry as Entry
    from ftx.protocol.messages import EntryType as EntryType
    from ftx.server import DEFAULT_PORT as DEFAULT_PORT
    from ftx.server import Server as Server
    from ftx.server import ServerConfig as ServerConfig
    from ftx.server import serve as serve

# name -> the module it is imported from on first use
_LAZY = {
    "Client": "ftx.client",
    "ClientConfig": "ftx.client",
    "Download": "ftx.client",
    "ProgressCallback": "ftx.client",
    "Upload": "ftx.client",
    "connect": "ftx.client",
    "FramedChannel": "ftx.framing",
    "FrameDecoder": "ftx.framing",
    "ErrorCode": "ftx.protocol",
    "Entry": "ftx.protocol.messages",
    "EntryType": "ftx.protocol.messages",
    "RateLimit": "ftx.client",
    "DEFAULT_PORT": "ftx.server",
    "Server": "ftx.server",
    "ServerConfig": "ftx.server",
    "serve": "ftx.server",
}


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'ftx' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_PORT",
    "AuthenticationError",
    "Client",
    "ClientConfig",
    "ConnectionLostError",
    "Download",
    "Entry",
    "EntryType",
    "ErrorCode",
    "FrameDecoder",
    "FrameTooLargeError",
    "FramedChannel",
    "FtxError",
    "IncompleteFrameError",
    "IntegrityError",
    "LocalFileError",
    "LocalProtocolError",
    "ProgressCallback",
    "ProtocolError",
    "RateLimit",
    "RemoteError",
    "RemoteProtocolError",
    "Server",
    "ServerConfig",
    "Upload",
    "__version__",
    "connect",
    "serve",
]
