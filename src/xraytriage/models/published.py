"""The registry of published chest X-ray models, and their local cache.

``published_models.json`` (shipped in the package) lists, per model: the download URL, the
SHA-256 when the publisher gives one, the file format, the architecture, the publisher's
label order (empty = an output they did not train), their operating thresholds (verbatim, with
what they cut: ``threshold_space``; see :data:`OPERATING_POINTS`), the exact input contract
(:class:`~xraytriage.preprocess.PreprocessContract` fields), licence, citation, the numbers they
report, and the source files each of these was taken from.

Nothing is downloaded at import or implicitly: :func:`fetch_published` runs only when the user
asks (``xraytriage models fetch NAME``). The cache (``$XRAYTRIAGE_CACHE`` or
``~/.cache/xraytriage``, or ``--cache DIR``) holds per model::

    models/NAME/<publisher's file name>   the download, verified
    models/NAME/model.pt                  the converted xraytriage checkpoint
    models/NAME/manifest.json             url, sha256 (published, or recorded at first download),
                                          size, the converted checkpoint's sha256

Every later use verifies the hashes again; a file that does not match is refused and removed.
``--model NAME`` anywhere a checkpoint path is accepted resolves to ``models/NAME/model.pt``
(:func:`resolve_model_name`).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xraytriage import __version__
from xraytriage.errors import ConfigError, MissingFileError, UnknownModelError, XRayTriageError
from xraytriage.models.fetch import ChecksumError, download, sha256_file
from xraytriage.preprocess import PreprocessContract

if TYPE_CHECKING:
    from xraytriage.models.checkpoint import Checkpoint

REGISTRY_FORMAT = "xraytriage-published-models"
REGISTRY_PATH = Path(__file__).with_name("published_models.json")
ARCHITECTURES = ("densenet121", "resnet50")
FORMATS = ("module_pickle", "state_dict", "checkpoint_dict")
CHECKPOINT_NAME = "model.pt"
MANIFEST_NAME = "manifest.json"
THRESHOLD_SPACES = ("probability", "sigmoid_of_probability")
"""What a model's published threshold values cut: the sigmoid probability p itself, or sigmoid(p)
(torchxrayvision's resnet50-res512-all: its calibration script applied the sigmoid twice, so the
cut-off on p is logit(value))."""
OPERATING_POINTS = {
    "youden": (
        "the publisher's op_threshs: max(sensitivity - false-positive rate) per finding on the "
        "publisher's own data (for its DenseNets mostly their training images); low cut-offs, so "
        "'flag if any finding' over many findings flags most studies"
    ),
    "ppv80": (
        "the publisher's ppv80_thres: the cut-off where precision first exceeds 0.8 on the "
        "publisher's own data; far fewer flags, lower sensitivity"
    ),
}
"""Operating points a published model may carry (name -> what it means); ``youden`` is the default."""
DEFAULT_OPERATING_POINT = "youden"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedModel:
    name: str
    url: str
    architecture: str
    format: str
    labels: tuple[str, ...]
    input: PreprocessContract
    licence: str
    citation: str
    publisher: str = ""
    description: str = ""
    sha256: str | None = None
    size_bytes: int | None = None
    op_thresholds: tuple[float | None, ...] | None = None
    ppv80_thresholds: tuple[float | None, ...] | None = None
    threshold_space: str = "probability"
    reported: str = ""
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1] or "weights"

    @property
    def valid_outputs(self) -> list[int]:
        """Indices of the outputs the publisher trained and evaluated: a non-empty label and, where
        the publisher gives operating thresholds, a threshold (resnet50-res512-all's Lung Lesion and
        Enlarged Cardiomediastinum have none and AUC 0.5 in its BENCHMARKS.md: no training data)."""
        return [
            i
            for i, label in enumerate(self.labels)
            if label.strip() and (self.op_thresholds is None or self.op_thresholds[i] is not None)
        ]

    def dropped_reason(self, index: int) -> str:
        """Why output ``index`` is not converted ('' when it is)."""
        if not self.labels[index].strip():
            return "not trained"
        if self.op_thresholds is not None and self.op_thresholds[index] is None:
            return "no threshold published"
        return ""

    def check_operating_point(self, name: str) -> None:
        """Raise ConfigError unless ``name`` is a known point this model publishes (a model that
        publishes none accepts the default: its findings keep 0.5)."""
        if name not in OPERATING_POINTS:
            raise ConfigError(f"unknown operating point {name!r}: one of {', '.join(OPERATING_POINTS)}")
        points = self.operating_points()
        if name not in points and (points or name != DEFAULT_OPERATING_POINT):
            raise ConfigError(
                f"{self.name}: its publisher gives no {name!r} thresholds "
                f"(published: {', '.join(points) or 'none'})"
            )

    def operating_points(self) -> dict[str, list[float | None]]:
        """Each published operating point as cut-offs on the sigmoid probability, per source output
        (None: none for that output): the published values, or logit(value) where the publisher's
        values are sigmoid(p) (``threshold_space``)."""
        out: dict[str, list[float | None]] = {}
        for name, values in (("youden", self.op_thresholds), ("ppv80", self.ppv80_thresholds)):
            if values is not None:
                out[name] = [None if t is None else _to_probability(t, self.threshold_space) for t in values]
        return out

    def provenance(self) -> dict[str, Any]:
        """What a converted checkpoint records about where it came from."""
        return {
            "registry": self.name,
            "publisher": self.publisher,
            "url": self.url,
            "format": self.format,
            "architecture": self.architecture,
            "licence": self.licence,
            "citation": self.citation,
            "reported": self.reported,
            "sources": dict(self.sources),
            "source_outputs": list(self.labels),
            "valid_outputs": self.valid_outputs,
            "op_thresholds": list(self.op_thresholds) if self.op_thresholds else None,
            "ppv80_thresholds": list(self.ppv80_thresholds) if self.ppv80_thresholds else None,
            "threshold_space": self.threshold_space,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> PublishedModel:
        name = str(data.get("name", "")).strip()
        ctx = f"{where}: model {name or '?'}"
        for key in ("name", "url", "architecture", "format", "labels", "input", "licence", "citation"):
            if not data.get(key):
                raise ConfigError(f"{ctx}: missing {key!r}")
        if data["architecture"] not in ARCHITECTURES:
            raise ConfigError(
                f"{ctx}: architecture must be one of {ARCHITECTURES}, got {data['architecture']!r}"
            )
        if data["format"] not in FORMATS:
            raise ConfigError(f"{ctx}: format must be one of {FORMATS}, got {data['format']!r}")
        if not str(data["url"]).startswith(("https://", "http://")):
            raise ConfigError(f"{ctx}: url must be http(s), got {data['url']!r}")
        labels = tuple(str(x) for x in data["labels"])
        if not any(label.strip() for label in labels):
            raise ConfigError(f"{ctx}: no valid output (every label is empty)")
        space = str(data.get("threshold_space") or "probability")
        if space not in THRESHOLD_SPACES:
            raise ConfigError(f"{ctx}: threshold_space must be one of {THRESHOLD_SPACES}, got {space!r}")
        thresholds = _threshold_list(data, "op_thresholds", labels, space, ctx)
        ppv80 = _threshold_list(data, "ppv80_thresholds", labels, space, ctx)
        sha = data.get("sha256")
        if sha is not None and (
            len(str(sha)) != 64 or any(c not in "0123456789abcdef" for c in str(sha).lower())
        ):
            raise ConfigError(f"{ctx}: sha256 must be 64 hex digits")
        try:
            contract = PreprocessContract.from_dict(dict(data["input"]))
        except ConfigError as exc:
            raise ConfigError(f"{ctx}: input: {exc}") from None
        known = set(cls.__dataclass_fields__) | {"note"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{ctx}: unknown field(s) {', '.join(unknown)}")
        return cls(
            name=name,
            url=str(data["url"]),
            architecture=str(data["architecture"]),
            format=str(data["format"]),
            labels=labels,
            input=contract,
            licence=str(data["licence"]),
            citation=str(data["citation"]),
            publisher=str(data.get("publisher", "")),
            description=str(data.get("description", "")),
            sha256=str(sha).lower() if sha else None,
            size_bytes=int(data["size_bytes"]) if data.get("size_bytes") else None,
            op_thresholds=thresholds,
            ppv80_thresholds=ppv80,
            threshold_space=space,
            reported=str(data.get("reported", "")),
            sources={str(k): str(v) for k, v in (data.get("sources") or {}).items()},
        )


def _to_probability(value: float, space: str) -> float:
    if space == "sigmoid_of_probability":
        return math.log(value / (1.0 - value))
    return value


def _threshold_list(
    data: dict[str, Any], key: str, labels: tuple[str, ...], space: str, ctx: str
) -> tuple[float | None, ...] | None:
    """A published threshold list, checked: one per label, each a cut-off its space can hold
    (sigmoid(p) for p in [0, 1] lies in [0.5, sigmoid(1)]: a value outside says the space is wrong)."""
    values = data.get(key)
    if values is None:
        return None
    if len(values) != len(labels):
        raise ConfigError(f"{ctx}: {len(values)} {key} for {len(labels)} labels")
    out = tuple(None if t is None else float(t) for t in values)
    low, high = (0.5, 1.0 / (1.0 + math.exp(-1.0))) if space == "sigmoid_of_probability" else (0.0, 1.0)
    bad = [t for t in out if t is not None and not (low <= t <= high)]
    if bad:
        raise ConfigError(
            f"{ctx}: {key} value {bad[0]} is not a cut-off on {space.replace('_', ' ')} "
            f"(must lie in [{low:.4g}, {high:.4g}])"
        )
    return out


def load_registry(path: str | Path | None = None) -> dict[str, PublishedModel]:
    """The registry by model name (the shipped one, or ``path``)."""
    path = Path(path) if path else REGISTRY_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: model registry not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable model registry ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise ConfigError(f"{path}: not an xraytriage model registry (format {REGISTRY_FORMAT!r} expected)")
    models: dict[str, PublishedModel] = {}
    for item in data.get("models") or []:
        entry = PublishedModel.from_dict(item, str(path))
        if entry.name in models:
            raise ConfigError(f"{path}: model {entry.name} listed twice")
        models[entry.name] = entry
    return models


def get_model(name: str, registry: dict[str, PublishedModel] | None = None) -> PublishedModel:
    registry = registry if registry is not None else load_registry()
    if name not in registry:
        raise ConfigError(
            f"unknown published model {name!r}; `xraytriage models list` shows: {', '.join(registry)}"
        )
    return registry[name]


# --- cache ---------------------------------------------------------------------------------
def cache_root(override: str | Path | None = None) -> Path:
    """``override``, else ``$XRAYTRIAGE_CACHE``, else ``~/.cache/xraytriage``."""
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("XRAYTRIAGE_CACHE") or Path.home() / ".cache" / "xraytriage").expanduser()


def model_dir(name: str, cache: str | Path | None = None) -> Path:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(f"not a model name: {name!r}")
    return cache_root(cache) / "models" / name


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise XRayTriageError(
            f"{path}: unreadable manifest ({exc}); delete {directory} and fetch again"
        ) from None
    return data if isinstance(data, dict) else {}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(directory / MANIFEST_NAME)


def _verify(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        path.unlink(missing_ok=True)
        raise ChecksumError(
            f"{path}: {what} does not match its SHA-256 (expected {expected}, got {actual}); "
            "the file was refused and removed. Run `xraytriage models fetch` again to download it anew."
        )


def fetch_published(
    entry: PublishedModel,
    cache: str | Path | None = None,
    progress: bool = True,
    operating_point: str = DEFAULT_OPERATING_POINT,
) -> Path:
    """Download (or reuse), verify and convert ``entry``; returns the converted checkpoint, whose
    thresholds are the published ``operating_point`` (another one re-converts, no download)."""
    from xraytriage.models.import_weights import import_published
    from xraytriage.models.safe_pickle import load_weights_file

    entry.check_operating_point(operating_point)
    directory = model_dir(entry.name, cache)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(directory)
    if manifest.get("url") not in (None, entry.url):
        log.warning("%s: the registry URL changed since the last fetch; downloading anew", entry.name)
        manifest = {}
    raw = directory / entry.file_name
    expected = entry.sha256 or manifest.get("sha256")
    source = "published" if entry.sha256 else ("recorded at first download" if expected else "")
    if raw.is_file():
        if expected:
            _verify(raw, expected, f"the downloaded {entry.name} weights")
        digest = expected or sha256_file(raw)
    else:
        digest = download(entry.url, raw, sha256=expected, progress=progress)
    if not source:
        source = "recorded at first download"
        log.info(
            "%s: no published checksum; recorded SHA-256 %s, verified on every later use", entry.name, digest
        )
    manifest.update(
        name=entry.name,
        url=entry.url,
        file=raw.name,
        sha256=digest,
        sha256_source=source,
        size_bytes=raw.stat().st_size,
        downloaded=manifest.get("downloaded") or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    write_manifest(directory, manifest)
    checkpoint_path = directory / CHECKPOINT_NAME
    if (
        checkpoint_path.is_file()
        and manifest.get("converted_sha256") == sha256_file(checkpoint_path)
        and manifest.get("converted_by") == __version__
        and manifest.get("converted_from") == digest
        and manifest.get("operating_point", DEFAULT_OPERATING_POINT) == operating_point
    ):
        return checkpoint_path
    checkpoint = import_published(
        load_weights_file(raw), entry, source=str(raw), operating_point=operating_point
    )
    checkpoint.save(checkpoint_path)
    manifest.update(
        operating_point=operating_point,
        converted=CHECKPOINT_NAME,
        converted_sha256=sha256_file(checkpoint_path),
        converted_from=digest,
        converted_by=__version__,
    )
    write_manifest(directory, manifest)
    return checkpoint_path


def looks_like_model_name(value: str) -> bool:
    """A bare name (no folder, no checkpoint suffix): what ``--model NAME`` may mean."""
    return (
        bool(value)
        and not value.startswith(".")
        and not any(c in value for c in "/\\")
        and not value.lower().endswith((".pt", ".pth", ".tar", ".onnx", ".ckpt"))
    )


def resolve_model_name(value: str | Path, cache: str | Path | None = None) -> Path | None:
    """The converted checkpoint of fetched model ``value``, verified against its recorded hash;
    None when ``value`` is not a model name. A registry name that is not fetched yet is an
    error that says how to fetch it."""
    text = str(value)
    if not looks_like_model_name(text):
        return None
    directory = model_dir(text, cache)
    checkpoint = directory / CHECKPOINT_NAME
    if checkpoint.is_file():
        recorded = read_manifest(directory).get("converted_sha256")
        if not recorded:
            raise XRayTriageError(
                f"{checkpoint}: no recorded checksum; run `xraytriage models fetch {text}` again"
            )
        _verify(checkpoint, recorded, f"the converted checkpoint of {text}")
        return checkpoint
    try:
        registry = load_registry()
    except ConfigError:
        registry = {}
    if text in registry:
        raise XRayTriageError(
            f"published model {text!r} is not fetched yet (looked in {directory}): run "
            f"`xraytriage models fetch {text}` (it downloads {registry[text].url})"
        )
    return None


# --- the one --model rule ------------------------------------------------------------------
BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "default_model" / "model.pt"
"""The model shipped inside the package."""
BUNDLED_NAME = "nih-default-compact"
"""The bundled model's name (its checkpoint's, which the web page's header shows)."""
DEFAULT_NAMES = ("default", BUNDLED_NAME)
"""What ``--model`` accepts for the bundled model (leaving ``--model`` out means the same)."""


def model_names(cache: str | Path | None = None) -> str:
    """Every name ``--model`` accepts, for an error message: the bundled model's, then the
    registry's with whether each is fetched."""
    try:
        registry = load_registry()
    except ConfigError:
        registry = {}
    models = cache_root(cache) / "models"
    fetched = sorted(p.parent.name for p in models.glob(f"*/{CHECKPOINT_NAME}")) if models.is_dir() else []
    others = [n for n in registry if n not in fetched]
    parts = [f"{' or '.join(DEFAULT_NAMES)} (the bundled model)"]
    if fetched:
        parts.append("fetched: " + ", ".join(fetched))
    if others:
        parts.append("published, `xraytriage models fetch NAME` first: " + ", ".join(others))
    return "; ".join(parts)


def resolve_model(value: str | Path | None, cache: str | Path | None = None) -> Path:
    """The checkpoint file ``--model`` means: nothing, ``default`` or the bundled model's name
    -> the bundled model; an existing file -> itself; a fetched published model's NAME -> its
    verified converted checkpoint. Anything else is an error that lists the valid names (and,
    for a published model not fetched yet, the command that fetches it)."""
    text = "" if value is None else str(value)
    if not text or text in DEFAULT_NAMES:
        if not BUNDLED_MODEL.is_file():
            raise MissingFileError(
                BUNDLED_MODEL,
                "the bundled default model (reinstall xraytriage with its assets, or pass --model)",
            )
        return BUNDLED_MODEL
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))[:5]
        hint = f"; checkpoints in it: {', '.join(inside)}" if inside else ""
        raise ConfigError(f"{path}: --model takes a checkpoint file, not a folder{hint}")
    resolved = resolve_model_name(text, cache)
    if resolved is not None:
        return resolved
    raise UnknownModelError(path, model_names(cache))


def load_model(value: str | Path | None) -> Checkpoint:
    """The checkpoint :func:`resolve_model` names, loaded (``load_checkpoint`` itself reads
    files only)."""
    from xraytriage.models.checkpoint import load_checkpoint

    return load_checkpoint(resolve_model(value))
