"""ftx: verified, resumable file transfer over trio, with an embeddable framing layer.

The public API is re-exported here; :mod:`ftx.framing` can also be used on its own.
"""

# `from x import y as y` marks re-exports for type checkers (trio does the same).
from ftx._version import __version__ as __version__
from ftx.client import Client as Client
from ftx.client import Download as Download
from ftx.client import ProgressCallback as ProgressCallback
from ftx.client import connect as connect
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
from ftx.framing import FramedChannel as FramedChannel
from ftx.framing import FrameDecoder as FrameDecoder
from ftx.messages import Entry as Entry
from ftx.messages import EntryType as EntryType
from ftx.protocol import ErrorCode as ErrorCode
from ftx.server import DEFAULT_PORT as DEFAULT_PORT
from ftx.server import Server as Server
from ftx.server import serve as serve
from ftx.upload import Upload as Upload

__all__ = [
    "DEFAULT_PORT",
    "AuthenticationError",
    "Client",
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
    "RemoteError",
    "RemoteProtocolError",
    "Server",
    "Upload",
    "__version__",
    "connect",
    "serve",
]
