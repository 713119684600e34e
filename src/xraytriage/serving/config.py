"""Typed settings of ``xraytriage serve``: what the command line sets, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from xraytriage.errors import ConfigError
from xraytriage.models.published import BUNDLED_FRACTURE_MODEL, BUNDLED_ROUTER, resolve_model

TOKEN_ENV = "XRAYTRIAGE_TOKEN"
MB = 1024 * 1024
__all__ = ["DEFAULT_DATA_DIR", "DicomSettings", "ServeConfig", "read_token"]

DEFAULT_DATA_DIR = Path("out/serve")
"""``serve``'s data folder when none is given: the one ``make serve`` uses (ignored by git)."""


@dataclass
class ServeConfig:
    """Settings of one service. ``data_dir`` holds the blobs, derived pictures and (by default)
    the SQLite database; ``db_url`` may point elsewhere (any SQLAlchemy URL, e.g. PostgreSQL)."""

    data_dir: Path = DEFAULT_DATA_DIR
    db_url: str | None = None
    model_path: Path | None = None
    backend: str = "onnx"
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    workers: int = 2
    """Inference threads; 0 accepts and stores uploads but processes nothing (maintenance)."""
    batch_size: int = 16
    heatmaps: bool = True
    """Draw heatmaps of each study's listed findings in the background (others on demand)."""
    heatmap_findings: int = 4
    max_file_bytes: int = 64 * MB
    max_files: int = 100
    """Most files in one upload request."""
    display_size: int = 1024
    """Longest side of the pictures the pages show (the model sees its own input size). Larger
    images are decoded reduced to at least this size, for the model and the pictures alike."""
    max_pixels: int = 36_000_000
    """Largest image accepted (6000 x 6000; real radiographs are at most ~4300 x 4300): checked
    from the header at upload, C-STORE and every decode, frames and bit depth included."""
    min_free_mb: float = 100.0
    """Free space kept in reserve in the data folder: below it uploads get 507 and /healthz
    reports degraded storage."""
    heatmap_threads: int = 1
    """Threads that draw heatmaps (requests and the background worker share them)."""
    heatmap_queue: int = 64
    """Most heatmap jobs waiting at once; a request beyond it gets 503 (retry later)."""
    heatmap_wait_seconds: float = 120.0
    """How long a heatmap request waits for its job before answering 503."""
    poll_seconds: float = 1.0
    dicom: DicomSettings | None = None
    allowed_hosts: tuple[str, ...] = ()
    """Host names (besides 127.0.0.1, localhost, [::1] and the bound address) the service answers
    to; ``*`` turns the check off. Without a token the check is always on (DNS rebinding)."""
    drift_window: int = 500
    """The drift monitor counts flag rates over this many most recent triaged studies."""
    drift_min_studies: int = 100
    """Studies the drift monitor waits for before judging a departure."""
    hide_identifiers: bool = False
    """Leave patient ID, accession number, age, sex and study date out of every page, API
    answer and CSV (shared screens); views and body parts stay."""
    retention_days: float | None = None
    """Remove studies (images, pictures, rows; not audit entries) nothing happened to for this
    many days; None keeps everything."""
    retention_every_s: float = 3600.0
    """How often the retention check runs."""
    db_timeout_s: float = 30.0
    """How long one database call waits for a SQLite lock or a PostgreSQL connection."""
    db_retry_seconds: float = 30.0
    """How long the worker retries a database call through an outage (with back-off) before it
    sets its work aside and waits for the database (requests answer 503 meanwhile)."""
    header_timeout_s: float = 10.0
    """A connection whose request headers are not complete after this long is closed (408)."""
    idle_timeout_s: float = 30.0
    """A request whose body sends nothing for this long is closed (slow clients)."""
    route: bool = False
    """Body-part routing (docs/routing.md): the router sends each image to ``model_path`` (the
    chest model) or the fracture model; ``serve`` turns it on unless ``--no-route`` or a
    ``--model`` without ``--route``."""
    router_path: Path | None = None
    """The body-part router (default: the bundled one)."""
    fracture_model_path: Path | None = None
    """The routed fracture model (default: the bundled one)."""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.max_files < 1 or self.max_file_bytes < 1:
            raise ConfigError("upload limits must be positive")
        if self.max_pixels < 1 or self.heatmap_threads < 1 or self.heatmap_queue < 1:
            raise ConfigError("the pixel limit and the heatmap pool must be positive")
        if self.min_free_mb < 0:
            raise ConfigError(f"the free-space reserve must be >= 0 MB, got {self.min_free_mb}")
        if self.drift_window < 1 or not 1 <= self.drift_min_studies <= self.drift_window:
            raise ConfigError(
                f"drift window ({self.drift_window}) and minimum ({self.drift_min_studies}) must satisfy "
                "1 <= minimum <= window"
            )
        if (
            min(self.header_timeout_s, self.idle_timeout_s, self.db_timeout_s) <= 0
            or self.db_retry_seconds < 0
        ):
            raise ConfigError("the header and idle timeouts must be positive")
        if self.retention_days is not None and self.retention_days <= 0:
            raise ConfigError(f"--retention-days must be positive, got {self.retention_days}")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("the API token must be at least 8 characters")

    @property
    def model_file(self) -> Path:
        """The checkpoint to serve: ``model_path`` (a file or a name, ``models.published.
        resolve_model``'s rule), else the bundled model."""
        return resolve_model(self.model_path)

    @property
    def routed_models(self) -> list[tuple[str, Path]]:
        """(name, checkpoint) of every routed model, the service's own first."""
        return [
            ("chest", self.model_file),
            ("fracture", Path(self.fracture_model_path or BUNDLED_FRACTURE_MODEL)),
        ]

    @property
    def router_file(self) -> Path:
        return Path(self.router_path or BUNDLED_ROUTER)

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'xraytriage.db').resolve()}"

    @property
    def min_free_bytes(self) -> int:
        return int(self.min_free_mb * MB)

    @property
    def max_request_bytes(self) -> int:
        return self.max_files * self.max_file_bytes + MB


@dataclass
class DicomSettings:
    """The DICOM node: a Storage SCP, and where results go (C-STORE SCU)."""

    port: int = 11112
    ae_title: str = "XRAYTRIAGE"
    host: str | None = None
    """Interface to listen on (default: the web service's host)."""
    allowed_calling_aes: frozenset[str] | None = None
    called_ae_titles: frozenset[str] | None = None
    """Called AE titles the node answers to; None = ``ae_title`` only."""
    max_associations: int = 32
    """Concurrent associations; beyond it a transient reject (local limit exceeded)."""
    destination: str | None = None
    """``AE@host:port`` of the PACS that receives the SC and SR results; None keeps them local."""
    quiet_seconds: float = 10.0
    """A study is complete when no new image arrived for this long."""
    sc_jpeg: bool = False
    """Secondary Captures as lossy JPEG Baseline (~10-20x smaller) instead of uncompressed."""


def read_token(token_file: Path | None) -> str | None:
    """The bearer token from a file (first line) or ``$XRAYTRIAGE_TOKEN``; None when neither is set."""
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise ConfigError(f"{token_file}: cannot read the token file: {exc.strerror}") from None
        if not text or not text[0].strip():
            raise ConfigError(f"{token_file}: the token file is empty")
        return text[0].strip()
    value = os.environ.get(TOKEN_ENV, "").strip()
    return value or None
