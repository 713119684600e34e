"""Batched inference on preprocessed uint8 images. Backends share one interface:
``predict_logits(uint8 batch N x S x S) -> float32 logits N x L``, and
``predict_with_features(batch) -> (logits, features N x D or None)`` for the
out-of-distribution score (None: an older ONNX export without the features output)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from xraytriage.errors import ConfigError
from xraytriage.models.checkpoint import Checkpoint, load_checkpoint
from xraytriage.models.features import WithFeatures
from xraytriage.models.onnx_export import (
    export_onnx,
    head_checkpoint,
    onnx_matches,
    read_onnx_metadata,
    state_hash,
)
from xraytriage.models.onnx_format import DEFAULT_CALIBRATION, FEATURES_NAME, INPUT_NAME, OUTPUT_NAME
from xraytriage.models.predictor import BACKENDS, DEFAULT_BACKEND
from xraytriage.models.quantize import (
    int8_sibling,
    load_calibration_images,
    quantize_onnx,
    read_quantization,
)
from xraytriage.sanitize import file_slug


class TorchPredictor:
    """PyTorch eager backend (reference for parity tests and the fallback everywhere)."""

    name = "torch"

    def __init__(self, checkpoint: Checkpoint, device: str = "cpu") -> None:
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.model = checkpoint.build_model().to(self.device)
        self.with_features = WithFeatures(self.model)

    @torch.inference_mode()
    def predict_logits(self, batch_uint8: np.ndarray) -> np.ndarray:
        x = self.checkpoint.preprocess.normalize(torch.as_tensor(np.asarray(batch_uint8)).to(self.device))
        return self.model(x).float().cpu().numpy()

    @torch.inference_mode()
    def predict_with_features(self, batch_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = self.checkpoint.preprocess.normalize(torch.as_tensor(np.asarray(batch_uint8)).to(self.device))
        logits, features = self.with_features(x)
        return logits.float().cpu().numpy(), features.float().cpu().numpy()

    def predict_proba(self, batch_uint8: np.ndarray) -> np.ndarray:
        return self.checkpoint.probabilities(self.predict_logits(batch_uint8))


def onnx_cache_dir() -> Path:
    """Where exported ONNX files are kept: ``$XRAYTRIAGE_CACHE/onnx`` or ``~/.cache/xraytriage/onnx``."""
    root = os.environ.get("XRAYTRIAGE_CACHE") or Path.home() / ".cache" / "xraytriage"
    return Path(root) / "onnx"


def resolve_onnx_file(checkpoint: Checkpoint, checkpoint_path: str | Path | None = None) -> Path:
    """The ONNX file for ``checkpoint``, exporting it at most once.

    Order: ``<checkpoint>.onnx`` next to the checkpoint file when its stored weight hash
    matches; else the user cache (keyed by that hash), exported there if absent.
    """
    if checkpoint_path is not None:
        sibling = Path(checkpoint_path).with_suffix(".onnx")
        if sibling.is_file() and onnx_matches(sibling, checkpoint):
            return sibling
    digest = state_hash(checkpoint)
    safe_name = file_slug(checkpoint.name, keep="-_", fallback="model")[:40]
    cached = onnx_cache_dir() / f"{safe_name}-{digest[:16]}.onnx"
    if cached.is_file() and onnx_matches(cached, checkpoint):
        return cached
    logging.getLogger(__name__).info("exporting %s to ONNX once: %s", checkpoint.name, cached)
    return export_onnx(checkpoint, cached)


SAMPLES_DIR = Path(__file__).resolve().parents[1] / "assets" / "samples"
"""The bundled sample radiographs: what an int8 twin made on first use is calibrated on."""
SAMPLES_MIN_RANK_CORRELATION = 0.9


def _is_int8_twin(path: Path, checkpoint: Checkpoint) -> bool:
    return onnx_matches(path, checkpoint) and read_quantization(path) is not None


def resolve_int8_file(
    checkpoint: Checkpoint,
    checkpoint_path: str | Path | None = None,
    min_rank_correlation: float | None = None,
) -> Path:
    """The int8 twin of ``checkpoint``'s ONNX export, quantising it at most once.

    Order: ``<checkpoint>.int8.onnx`` next to the checkpoint when its weight hash matches (the
    bundled model ships one, calibrated on NIH images); else the user cache, made there if
    absent, calibrated on the bundled sample radiographs (``xraytriage export --int8
    IMAGES`` makes one from a site's own images instead). ``min_rank_correlation``
    overrides the parity check's bar (benchmarks of random weights, whose near-constant outputs
    have no ranking to keep).
    """
    if checkpoint_path is not None:
        sibling = int8_sibling(checkpoint_path)
        if sibling.is_file() and _is_int8_twin(sibling, checkpoint):
            return sibling
    fp32 = resolve_onnx_file(checkpoint, checkpoint_path)
    digest = state_hash(checkpoint)
    safe_name = file_slug(checkpoint.name, keep="-_", fallback="model")[:40]
    cached = onnx_cache_dir() / f"{safe_name}-{digest[:16]}.int8.onnx"
    if cached.is_file() and _is_int8_twin(cached, checkpoint):
        return cached
    files = sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in (".png", ".dcm"))
    images, names, _ = load_calibration_images(files, checkpoint, DEFAULT_CALIBRATION)
    logging.getLogger(__name__).info(
        "quantising %s to int8 once (calibrated on %d bundled sample radiographs): %s",
        checkpoint.name, len(images), cached,
    )  # fmt: skip
    # too few samples to keep some apart: the parity check reruns the calibration images
    # ten images: one swapped pair already costs 0.01 of rank correlation, so a looser bar that
    # still catches a broken quantisation (correlation near 0)
    bar = SAMPLES_MIN_RANK_CORRELATION if min_rank_correlation is None else min_rank_correlation
    return quantize_onnx(
        checkpoint, fp32, cached, images, names, images, source="bundled samples", min_rank_correlation=bar
    )


class OnnxPredictor:
    """ONNX Runtime CPU backend; same interface as :class:`TorchPredictor`.

    ``source`` is a :class:`Checkpoint`, a checkpoint file (``.pt``) or an exported ``.onnx``
    file. Normalisation runs inside the graph, so the session is fed the uint8 batch as is.
    Idle threads do not spin by default (``spin=False``): on a small shared CPU the decoder
    processes need those cycles, and under load spinning measured ~20 % slower.
    """

    name = "onnx"

    def __init__(
        self,
        source: Checkpoint | str | Path,
        checkpoint: Checkpoint | None = None,
        intra_op_threads: int | None = None,
        spin: bool = False,
        int8: bool = False,
    ) -> None:
        import onnxruntime as ort  # here, not at the top: ~0.3 s, and the torch backend never needs it

        resolve = resolve_int8_file if int8 else resolve_onnx_file
        if int8:
            self.name = "onnx-int8"
        if isinstance(source, Checkpoint):
            self.checkpoint = source
            self.onnx_path = resolve(source)
        elif Path(source).suffix.lower() == ".onnx":
            self.onnx_path = Path(source)
            self.checkpoint = checkpoint or head_checkpoint(read_onnx_metadata(self.onnx_path))
        else:
            self.checkpoint = checkpoint or load_checkpoint(source)
            self.onnx_path = resolve(self.checkpoint, source)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = INPUT_NAME
        outputs = {o.name for o in self.session.get_outputs()}
        self.output_names = [OUTPUT_NAME] + ([FEATURES_NAME] if FEATURES_NAME in outputs else [])

    def _run(self, batch_uint8: np.ndarray, names: list[str]) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch_uint8, dtype=np.uint8)
        if batch.ndim == 4:  # (N, 1, S, S) -> (N, S, S)
            batch = batch[:, 0]
        return [np.asarray(a, dtype=np.float32) for a in self.session.run(names, {self.input_name: batch})]

    def predict_logits(self, batch_uint8: np.ndarray) -> np.ndarray:
        return self._run(batch_uint8, [OUTPUT_NAME])[0]

    def predict_with_features(self, batch_uint8: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        out = self._run(batch_uint8, self.output_names)
        return out[0], (out[1] if len(out) > 1 else None)

    def predict_proba(self, batch_uint8: np.ndarray) -> np.ndarray:
        return self.checkpoint.probabilities(self.predict_logits(batch_uint8))


def make_predictor(
    checkpoint: Checkpoint | str | Path,
    backend: str = DEFAULT_BACKEND,
    threads: int | None = None,
    checkpoint_path: str | Path | None = None,
) -> TorchPredictor | OnnxPredictor:
    """A predictor for ``checkpoint`` (object or file) on the chosen backend.

    ``threads`` sets ONNX Runtime's intra-op threads, or ``torch.set_num_threads`` for torch.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if not isinstance(checkpoint, Checkpoint):
        checkpoint_path = checkpoint_path or checkpoint
        checkpoint = load_checkpoint(checkpoint)
    if backend == "torch":
        if threads:
            torch.set_num_threads(int(threads))
        return TorchPredictor(checkpoint)
    int8 = backend == "onnx-int8"
    if checkpoint_path is not None:
        return OnnxPredictor(checkpoint_path, checkpoint=checkpoint, intra_op_threads=threads, int8=int8)
    return OnnxPredictor(checkpoint, intra_op_threads=threads, int8=int8)
