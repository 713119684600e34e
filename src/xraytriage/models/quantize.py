"""The int8 twin of an exported ONNX model: static QDQ quantisation (per-channel int8 weights,
uint8 activations) calibrated on real radiographs put through the checkpoint's own stage 1, then
checked against the float32 export on other real radiographs before it is kept.

Why int8: on a CPU with VNNI (AVX512-VNNI / AVX-VNNI / AMX) ONNX Runtime's int8 convolutions do
about twice the work per cycle of float32 ones. What it does not speed up: the normalisation in
front of the network (uint8 -> float, kept float32), DenseNet's pre-activation BatchNorm (it
follows a concatenation and precedes a ReLU, so it cannot be folded into a convolution; it runs
as float32 between a dequantise and a quantise) and the concatenations (pure memory traffic).
``bench/bench_triage.py --backends onnx,onnx-int8`` measures the end-to-end gain.

The int8 file carries the float32 export's metadata plus ``xraytriage.quantization`` (JSON):
scheme, how many and which images calibrated it, and the parity check's figures.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xraytriage.errors import ImageReadError, QuantizationError
from xraytriage.io import read_radiograph
from xraytriage.models.checkpoint import Checkpoint
from xraytriage.models.onnx_format import (
    INPUT_NAME,
    INT8_SUFFIX,
    META_PREFIX,
)

log = logging.getLogger(__name__)

QUANT_KEY = f"{META_PREFIX}quantization"
MIN_RANK_CORRELATION = 0.98
"""Below this Spearman correlation of P(abnormal) (int8 vs float32) the twin is refused."""
QUANTIZED_OPS = (
    "Conv",
    "Gemm",
    "MatMul",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Concat",
)
"""BatchNormalization (DenseNet's pre-activation norms: no int8 kernel), the input's normalisation
and the head's Flatten stay float32; every convolution and the classifier run in int8."""


def int8_sibling(checkpoint_path: str | Path) -> Path:
    """Where a checkpoint's shipped int8 twin lives: ``model.pt`` -> ``model.int8.onnx``."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + INT8_SUFFIX)


def load_calibration_images(
    paths: Sequence[str | Path], checkpoint: Checkpoint, limit: int
) -> tuple[np.ndarray, list[str], int]:
    """Up to ``limit`` readable images of ``paths`` through the checkpoint's stage 1:
    ``(N, S, S)`` uint8, their file names, and how many paths were used (read or skipped).
    Unreadable files are skipped with a warning that names them."""
    images, names = [], []
    used = 0
    for path in paths:
        if len(images) >= limit:
            break
        used += 1
        try:
            pixels = read_radiograph(path, max_side=4 * int(checkpoint.preprocess.size)).pixels
        except ImageReadError as exc:
            log.warning("quantisation: skipping %s", exc)
            continue
        images.append(checkpoint.preprocess.to_uint8(pixels))
        names.append(Path(path).name)
    size = int(checkpoint.preprocess.size)
    return (np.stack(images) if images else np.zeros((0, size, size), np.uint8)), names, used


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _logits(session, images: np.ndarray, batch: int = 16) -> np.ndarray:
    parts = [session.run(None, {INPUT_NAME: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    return np.concatenate(parts).astype(np.float32)


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x))
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (ties broken by position; enough for continuous scores)."""
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(np.asarray(a)), _ranks(np.asarray(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def parity_report(checkpoint: Checkpoint, fp32_logits: np.ndarray, int8_logits: np.ndarray) -> dict[str, Any]:
    """How the int8 twin's ranking and decisions compare with float32 on the same images:
    P(abnormal) rank correlation, agreement of the study flag and of every finding's flag at the
    checkpoint's thresholds, and the largest probability difference."""
    p32, p8 = checkpoint.probabilities(fp32_logits), checkpoint.probabilities(int8_logits)
    a32, a8 = checkpoint.abnormal_probability(p32), checkpoint.abnormal_probability(p8)
    thresholds = np.array([checkpoint.threshold(n) for n in checkpoint.label_names], np.float32)
    study = checkpoint.study_flag_threshold
    flags32 = a32 >= study if study is not None else (p32 >= thresholds).any(axis=1)
    flags8 = a8 >= study if study is not None else (p8 >= thresholds).any(axis=1)
    return {
        "images": len(fp32_logits),
        "abnormal_rank_correlation": round(spearman(a32, a8), 5),
        "study_flag_agreement": round(float(np.mean(flags32 == flags8)), 5),
        "finding_flag_agreement": round(float(np.mean((p32 >= thresholds) == (p8 >= thresholds))), 5),
        "max_abs_probability": round(float(np.max(np.abs(p32 - p8))), 5),
        "max_abs_abnormal": round(float(np.max(np.abs(a32 - a8))), 5),
    }


class _Batches:
    """The calibration data reader ONNX Runtime's quantiser pulls from."""

    def __init__(self, images: np.ndarray, batch: int = 8) -> None:
        self._items = iter([{INPUT_NAME: images[i : i + batch]} for i in range(0, len(images), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - min-max calibration reads once
        raise NotImplementedError


def quantize_onnx(
    checkpoint: Checkpoint,
    fp32_path: str | Path,
    output: str | Path,
    calibration: np.ndarray,
    calibration_names: Sequence[str],
    parity: np.ndarray,
    source: str = "",
    min_rank_correlation: float = MIN_RANK_CORRELATION,
) -> Path:
    """Write the int8 twin of ``fp32_path`` to ``output`` (atomically) and return its path.

    ``calibration``/``parity``: ``(N, S, S)`` uint8 stage-1 images, different ones. Raises
    :class:`QuantizationError` when there is nothing to calibrate on or the twin ranks images
    differently from float32 (rank correlation of P(abnormal) below ``min_rank_correlation``).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, output = Path(fp32_path), Path(output)
    if len(calibration) == 0:
        raise QuantizationError(
            f"{output}: no readable calibration images{f' in {source}' if source else ''}"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="xraytriage-int8-"))
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        prepared = work / "prepared.onnx"
        # folds each Conv -> BatchNorm pair and cleans the graph before the quantiser sees it
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(work / "int8.onnx"),
            _Batches(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(QUANTIZED_OPS),
        )
        report = {}
        if len(parity):
            fp32_logits = _logits(_session(fp32_path), parity)
            int8_logits = _logits(_session(work / "int8.onnx"), parity)
            report = parity_report(checkpoint, fp32_logits, int8_logits)
            corr = report["abnormal_rank_correlation"]
            if not corr >= min_rank_correlation:
                raise QuantizationError(
                    f"{output}: the int8 model ranks images unlike float32 (P(abnormal) rank correlation "
                    f"{corr} < {min_rank_correlation} on {len(parity)} images); keep --backend onnx"
                )
        model = onnx.load(str(work / "int8.onnx"))
        original = onnx.load(str(fp32_path), load_external_data=False)
        del model.metadata_props[:]
        for prop in original.metadata_props:
            model.metadata_props.add(key=prop.key, value=prop.value)
        quant = {
            "scheme": "static QDQ, per-channel int8 weights, uint8 activations, min-max calibration",
            "quantized_ops": list(QUANTIZED_OPS),
            "calibration_images": len(calibration),
            "calibration_source": source,
            "calibration_files": list(calibration_names),
            "parity": report,
        }
        model.metadata_props.add(key=QUANT_KEY, value=json.dumps(quant))
        model.producer_name = original.producer_name
        onnx.save(model, str(tmp))
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    log.info("int8 twin %s: %s", output, json.dumps(quant["parity"]))
    return output


def read_quantization(path: str | Path) -> dict[str, Any] | None:
    """The ``xraytriage.quantization`` record of an ONNX file (None: a float32 export)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == QUANT_KEY:
            return json.loads(prop.value)
    return None
