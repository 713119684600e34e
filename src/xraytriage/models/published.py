"""Published chest X-ray models: their local cache, verified download and conversion, and the
one ``--model`` rule. The registry itself is read by :mod:`xraytriage.models.registry` (names
re-exported here).

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
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xraytriage import __version__
from xraytriage.errors import ConfigError, MissingFileError, UnknownModelError, XRayTriageError
from xraytriage.models.fetch import ChecksumError, download, sha256_file
from xraytriage.models.registry import (  # noqa: F401 - re-exported: the registry's names stay importable here
    ARCHITECTURES,
    DEFAULT_OPERATING_POINT,
    FORMATS,
    OPERATING_POINTS,
    REGISTRY_FORMAT,
    REGISTRY_PATH,
    THRESHOLD_SPACES,
    PublishedModel,
    get_model,
    load_registry,
)

if TYPE_CHECKING:
    from xraytriage.models.checkpoint import Checkpoint

CHECKPOINT_NAME = "model.pt"
MANIFEST_NAME = "manifest.json"
log = logging.getLogger(__name__)


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
BUNDLED_FRACTURE_MODEL = BUNDLED_MODEL.parents[1] / "fracture_model" / "model.pt"
"""The bundled fracture model (FracAtlas), the MSK half of a routed worklist."""
BUNDLED_ROUTER = BUNDLED_MODEL.parents[1] / "body_part_router" / "model.pt"
"""The bundled body-part router that sends each film to the model whose scope covers it."""


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
