"""The ftx client: downloads and uploads, verified end to end, resumable.

:func:`connect` opens a TCP connection; :class:`Client` speaks ftx over any stream; a
:class:`ClientConfig` holds their settings. The private modules, by role: ``_client`` (the file
operations), ``_connection`` (one connection: the handshake, checked messages), ``_config`` (its
settings), ``_receive`` (one GET and its answer into a part file), ``_pipeline`` (many GETs in
flight), ``_upload`` (sending files), ``_tree`` (``get -r`` over several connections),
``_destination`` (where a download may go), ``_partfile`` (``DEST.part`` and resume records)
and ``_flush`` (syncing file systems once at the end).
"""

from ftx._rate import RateLimit
from ftx.client._client import Client, Download, ProgressCallback, connect, local_destination
from ftx.client._config import ClientConfig
from ftx.client._destination import is_null_device
from ftx.client._multisource import Source, download_from_sources
from ftx.client._streams import file_digest
from ftx.client._tree import DEFAULT_JOBS, Skipped, TreeProgress
from ftx.client._tree import download as download_tree
from ftx.client._tree_put import TreePutReport
from ftx.client._upload import Planned, Upload, local_name, plan_uploads, remote_join

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
