"""Planning uploads as ``ftx put -r`` does: the path the user guide documents, kept stable.

The implementation lives in :mod:`ftx.client`.
"""

from ftx.client import Planned, Upload, plan_uploads

__all__ = ["Planned", "Upload", "plan_uploads"]
