"""``ftx get -r`` as a library call: the path the user guide documents, kept stable.

The implementation lives in :mod:`ftx.client` (``ftx.client.download_tree``).
"""

from ftx.client import DEFAULT_JOBS, Skipped, TreeProgress
from ftx.client import download_tree as download

__all__ = ["DEFAULT_JOBS", "Skipped", "TreeProgress", "download"]
