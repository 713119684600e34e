"""``xraytriage export``: a checkpoint as an ONNX model (uint8 input, normalisation inside)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.cli.common import add_model_argument, resolve_model_path
from xraytriage.models.onnx_format import DEFAULT_CALIBRATION, DEFAULT_OPSET, DEFAULT_PARITY

PARITY_TOLERANCE = 1e-4


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX and check it against PyTorch",
        description=(
            "Write an ONNX model whose input is the uint8 N x S x S output of the preprocessing "
            "contract's stage 1 (normalisation runs inside the graph) and whose output is the logits; "
            "labels, the preprocessing contract and calibration travel in its metadata. Then compare "
            "it with PyTorch on the same images and print the largest difference."
        ),
    )
    add_model_argument(p)
    p.add_argument("--output", "-o", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    q = p.add_argument_group(
        "int8 twin",
        "also write a statically quantised int8 model (what --backend onnx-int8 uses), calibrated on "
        "real radiographs through the checkpoint's preprocessing and checked against float32 on others",
    )
    q.add_argument(
        "--int8", type=Path, metavar="IMAGES", help="folder (or file) of radiographs to calibrate on"
    )
    q.add_argument("--int8-output", type=Path, help="int8 file (default: OUTPUT with .int8.onnx)")
    q.add_argument("--calibration-count", type=int, default=DEFAULT_CALIBRATION,
                   help=f"images that calibrate the activation ranges (default {DEFAULT_CALIBRATION})")  # fmt: skip
    q.add_argument("--parity-count", type=int, default=DEFAULT_PARITY,
                   help=f"other images the int8 model is checked on (default {DEFAULT_PARITY})")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.models.onnx_export import export_onnx
    from xraytriage.models.parity import check_parity

    model_path = resolve_model_path(args.model)
    checkpoint = load_checkpoint(model_path)
    path = export_onnx(checkpoint, args.output, opset=args.opset)
    diff = check_parity(checkpoint, path)
    print(
        f"exported {checkpoint.name} ({checkpoint.model.backbone}, {checkpoint.preprocess.size} px) to {path}"
    )
    print(
        f"parity with PyTorch: max abs difference {diff['logits']:.2e} (logits), {diff['probabilities']:.2e} (probabilities)"
    )
    if diff["probabilities"] > PARITY_TOLERANCE:
        print(f"error: ONNX and PyTorch disagree by more than {PARITY_TOLERANCE:g}")
        return 1
    if args.int8 is not None:
        return write_int8(args, checkpoint, path)
    return 0


def write_int8(args: argparse.Namespace, checkpoint, fp32_path: Path) -> int:
    """Quantise ``fp32_path``: calibration and parity images are different files of ``--int8``,
    in a fixed shuffled order (so a folder sorted by class or date does not calibrate on one kind)."""
    import numpy as np

    from xraytriage.errors import MissingFileError
    from xraytriage.io import iter_input_files
    from xraytriage.models.quantize import (
        int8_sibling,
        load_calibration_images,
        quantize_onnx,
        read_quantization,
    )

    if not args.int8.exists():
        raise MissingFileError(args.int8, "calibration images")
    files = sorted(str(f) for f in iter_input_files([args.int8]))
    order = np.random.default_rng(0).permutation(len(files))
    files = [files[i] for i in order]
    calibration, names, used = load_calibration_images(files, checkpoint, args.calibration_count)
    parity, _, _ = load_calibration_images(files[used:], checkpoint, args.parity_count)
    output = args.int8_output or int8_sibling(fp32_path)
    quantize_onnx(checkpoint, fp32_path, output, calibration, names, parity, source=str(args.int8))
    report = (read_quantization(output) or {}).get("parity", {})
    print(
        f"int8 twin {output}: calibrated on {len(calibration)} images of {args.int8}; on {report.get('images', 0)} "
        f"others P(abnormal) rank correlation {report.get('abnormal_rank_correlation')}, study flags agree on "
        f"{100 * report.get('study_flag_agreement', float('nan')):.1f}%, finding flags on "
        f"{100 * report.get('finding_flag_agreement', float('nan')):.1f}%, max probability difference "
        f"{report.get('max_abs_probability')}"
    )
    return 0
