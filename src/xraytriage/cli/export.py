"""``xraytriage export``: a checkpoint as an ONNX model (uint8 input, normalisation inside)."""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.cli.common import add_model_argument, resolve_model_path
from xraytriage.models.onnx_format import DEFAULT_OPSET

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
    return 0
