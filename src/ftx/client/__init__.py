"""The ftx client: downloads and uploads, verified end to end, resumable.

:func:`connect` opens a TCP connection; :class:`Client` speaks ftx over any stream; a
:class:`ClientConfig` holds their settings. The private modules, by role: ``_client`` (the file
operations), ``_connection`` (one connection: the handshake, checked messages), ``_config`` (its
settings), ``_receive`` (one GET and its answer into a part file), ``_pipeline`` (many GETs in
flight), ``_upload`` (sending files), ``_tree`` (``get -r`` over several connections),
``_destination`` (where a download may go), ``_partfile`` (``DEST.part`` and resume records)
and ``_flush`` (syncing file systems once at the end).

Every name is imported on first use (PEP 562), so that each command loads only its own part:
``from ftx.client import Client`` does not load the tree or upload modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # `from x import y as y` marks re-exports for type checkers (as in ftx/__init__.py).
    from ftx._rate import RateLimit as RateLimit
    from ftx.client._client import Client as Client
    from ftx.client._client import connect as connect
    from ftx.client._config import DEFAULT_JOBS as DEFAULT_JOBS
    from ftx.client._config import ClientConfig as ClientConfig
    from ftx.client._destination import is_null_device as is_null_device
    from ftx.client._destination import local_destination as local_destination
    from ftx.client._multisource import Source as Source
    from ftx.client._multisource import download_from_sources as download_from_sources
    from ftx.client._receive import Download as Download
    from ftx.client._receive import ProgressCallback as ProgressCallback
    from ftx.client._streams import file_digest as file_digest
    from ftx.client._tree import download as download_tree
    from ftx.client._tree_disk import Skipped as Skipped
    from ftx.client._tree_disk import TreeProgress as TreeProgress
    from ftx.client._tree_put_report import TreePutReport as TreePutReport
    from ftx.client._upload import Planned as Planned
    from ftx.client._upload import Upload as Upload
    from ftx.client._upload import local_name as local_name
    from ftx.client._upload import plan_uploads as plan_uploads
    from ftx.client._upload import remote_join as remote_join

# name -> (the module it is imported from on first use, its name there)
_LAZY: dict[str, tuple[str, str]] = {
    "RateLimit": ("ftx._rate", "RateLimit"),
    "Client": ("ftx.client._client", "Client"),
    "Download": ("ftx.client._receive", "Download"),
    "ProgressCallback": ("ftx.client._receive", "ProgressCallback"),
    "connect": ("ftx.client._client", "connect"),
    "local_destination": ("ftx.client._destination", "local_destination"),
    "ClientConfig": ("ftx.client._config", "ClientConfig"),
    "is_null_device": ("ftx.client._destination", "is_null_device"),
    "Source": ("ftx.client._multisource", "Source"),
    "download_from_sources": ("ftx.client._multisource", "download_from_sources"),
    "file_digest": ("ftx.client._streams", "file_digest"),
    "DEFAULT_JOBS": ("ftx.client._config", "DEFAULT_JOBS"),
    "Skipped": ("ftx.client._tree_disk", "Skipped"),
    "TreeProgress": ("ftx.client._tree_disk", "TreeProgress"),
    "download_tree": ("ftx.client._tree", "download"),
    "TreePutReport": ("ftx.client._tree_put_report", "TreePutReport"),
    "Planned": ("ftx.client._upload", "Planned"),
    "Upload": ("ftx.client._upload", "Upload"),
    "local_name": ("ftx.client._upload", "local_name"),
    "plan_uploads": ("ftx.client._upload", "plan_uploads"),
    "remote_join": ("ftx.client._upload", "remote_join"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'ftx.client' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_JOBS",
    "Client",
    "ClientConfig",
    "Download",
    "Planned",
    "ProgressCallback",
    "RateLimit",
    "Skipped",
    "Source",
    "TreeProgress",
    "TreePutReport",
    "Upload",
    "connect",
    "download_from_sources",
    "download_tree",
    "file_digest",
    "is_null_device",
    "local_destination",
    "local_name",
    "plan_uploads",
    "remote_join",
]
