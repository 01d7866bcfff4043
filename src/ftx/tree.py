"""``ftx get -r`` as a library call: the path the user guide documents, kept stable.

The implementation lives in :mod:`ftx.client` (``ftx.client.download_tree``).
"""

from ftx.client._tree import DEFAULT_JOBS, Skipped, TreeProgress, download

__all__ = ["DEFAULT_JOBS", "Skipped", "TreeProgress", "download"]
