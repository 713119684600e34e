"""Training images/s and ONNX inference ms/image of recipe variants, measured side by side.

    .venv/bin/python bench/bench_recipe_cost.py                                  # 128/w0.5, 160/w0.5, 128/w1.0
    .venv/bin/python bench/bench_recipe_cost.py --variant 128:0.5 --variant 192:0.5 --rounds 5

Why side by side: on a shared CPU the load changes minute by minute, so the per-epoch img/s a
CV logs does not compare across runs started at different times. Here every variant (input
size x ResNet-10 width) takes one timed turn per round, round-robin, so all of them see the
same load, and the ratio to the first variant is the cost column of the model card's ablation
table. Training = the trainer's step on random data (channels-last, bf16 autocast where the CPU
has it, AdamW, masked BCE over 16 outputs, batch 32); inference = the bare network exported to
ONNX, one image per call on one intra-op thread (how ``predict --backend onnx`` runs a study).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from xraytriage.models.factory import ModelConfig, build_model  # noqa: E402


def parse_variant(text: str) -> tuple[int, float]:
    size, _, width = text.partition(":")
    return int(size), float(width or 0.5)


class Variant:
    """One (size, width) network with its optimiser and ONNX session, timed a turn at a time."""

    def __init__(self, size: int, width: float, batch: int, workdir: Path) -> None:
        import onnxruntime as ort

        torch.manual_seed(0)
        self.size, self.width, self.batch = size, width, batch
        self.net = build_model(ModelConfig(backbone="resnet10", num_classes=16, in_channels=1, width=width))
        self.net = self.net.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.net.parameters(), 1e-3)
        self.x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
        self.y = (torch.rand(batch, 16) > 0.8).float()
        self.train_ips: list[float] = []
        self.infer_ms: list[float] = []
        path = workdir / f"r10-{size}-{width}.onnx"
        self.net.eval()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                self.net, (torch.zeros(1, 1, size, size),), str(path), input_names=["x"], dynamo=False
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.image = np.random.default_rng(0).standard_normal((1, 1, size, size)).astype(np.float32)
        self.params = sum(p.numel() for p in self.net.parameters())
        self.onnx_bytes = path.stat().st_size

    @property
    def name(self) -> str:
        return f"resnet10 w{self.width:g} @ {self.size} px"

    def train_step(self) -> None:
        self.net.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.net(self.x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), self.y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def turn(self, steps: int, calls: int) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            self.train_step()
        self.train_ips.append(steps * self.batch / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(calls):
            self.session.run(None, {"x": self.image})
        self.infer_ms.append((time.perf_counter() - start) / calls * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", action="append", type=parse_variant, help="SIZE:WIDTH (repeatable)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per turn")
    parser.add_argument("--calls", type=int, default=20, help="timed inference calls per turn")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    specs = args.variant or [(128, 0.5), (160, 0.5), (128, 1.0)]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [Variant(size, width, args.batch_size, Path(tmp)) for size, width in specs]
        for run in runs:  # warm-up, untimed
            run.train_step()
            run.session.run(None, {"x": run.image})
        for _ in range(args.rounds):
            for run in runs:
                run.turn(args.steps, args.calls)
    base = runs[0]
    rows = []
    for run in runs:
        ips, ms = float(np.median(run.train_ips)), float(np.median(run.infer_ms))
        rows.append(
            {
                "variant": run.name,
                "params": run.params,
                "onnx_mb": round(run.onnx_bytes / 1e6, 2),
                "train_img_s": round(ips, 1),
                "train_cost_x": round(np.median(base.train_ips) / ips, 2),
                "infer_ms": round(ms, 2),
                "infer_cost_x": round(ms / np.median(base.infer_ms), 2),
            }
        )
        print(
            f"{run.name:24s} {run.params / 1e6:5.2f} M params  ONNX {rows[-1]['onnx_mb']:5.2f} MB  "
            f"train {ips:6.1f} img/s ({rows[-1]['train_cost_x']:.2f}x time)  "
            f"inference {ms:6.2f} ms/image ({rows[-1]['infer_cost_x']:.2f}x)"
        )
    print(f"torch threads {torch.get_num_threads()}, {args.rounds} rounds, medians")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
