"""The web service: upload, worklist, study pages, REST API, persistence, background workers.

``xraytriage serve`` runs :func:`create_app` under uvicorn. The pieces: ``config`` (settings),
``storage`` (content-addressed blobs), ``db`` (SQLAlchemy tables), ``intake`` (content checks
before an upload is acknowledged), ``service`` (ingest, pictures), ``worker`` (background
inference and heatmaps), ``views`` (rows -> JSON/CSV), ``api`` (REST), ``pages`` (HTML),
``auth`` (token, size limits).
"""

from xraytriage.serving.app import create_app
from xraytriage.serving.config import DicomSettings, ServeConfig, read_token
from xraytriage.serving.service import Accepted, TriageService, UploadRejected

__all__ = [
    "Accepted",
    "DicomSettings",
    "ServeConfig",
    "TriageService",
    "UploadRejected",
    "create_app",
    "read_token",
]
