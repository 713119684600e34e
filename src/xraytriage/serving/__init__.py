"""The web service: upload, worklist, study pages, REST API, persistence, background workers.

``xraytriage serve`` runs :func:`create_app` under uvicorn. The pieces: ``config`` (settings),
``states`` (life cycles), ``db`` (tables) with ``migrations`` (Alembic), ``repository`` (the
only code that reads and writes them; ``records`` out; its worklist order from
``worklist_sql``), ``storage`` (content-addressed blobs), ``intake`` (content checks before an
upload is acknowledged), ``jobs`` (score, settle, draw), ``worker`` (the loop that runs them),
``picture_store`` (pictures drawn once and kept; ``rendering`` draws them, on the
``job_pool``), ``service`` (wires them; ingest), ``queries``/``record_json``/``schemas`` (what
the API and pages read, and its shape), ``api`` (REST), ``pages`` (HTML), ``auth`` (token,
size limits), ``dicom_node``.
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
