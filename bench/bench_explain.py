"""Latency of explaining the top 3 findings of one 224 px radiograph on this CPU.

    .venv/bin/python bench/bench_explain.py [--runs 20] [--threads 2]

Times the whole ``explain_image`` call (preprocess, one forward, three head backwards, maps
back to 224 x 224, boxes) for a randomly initialised DenseNet-121 (224 px, 15 outputs) and the
bundled default model's architecture (ResNet-10 width 0.5 at 128 px, 16 outputs; the
architecture is what sets latency, not the weights). Thresholds are set so that exactly three
findings are above them, so ``"top"`` explains three. For reference it also times MONAI's
``GradCAM`` called once per finding (three forward + three full backward passes).
Prints p50/p95 in milliseconds and the load average, because other processes share the CPU.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import numpy as np
import torch

from xraytriage.explain import Explainer, explain_image
from xraytriage.labels import NIH_FINDINGS, NO_FINDING
from xraytriage.models import Checkpoint, ModelConfig, build_model
from xraytriage.preprocess import PreprocessContract


def _checkpoint(backbone: str, width: float, size: int, labels: list[str]) -> Checkpoint:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, num_classes=len(labels), width=width)
    net = build_model(cfg)
    return Checkpoint(cfg, labels, PreprocessContract(size=size), net.state_dict())


def _image(size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.clip(
        0.5 + 0.2 * np.sin(6 * xx) * np.cos(4 * yy) + 0.05 * rng.standard_normal((size, size)), 0, 1
    )


def _three_above_threshold(checkpoint: Checkpoint, image: np.ndarray) -> None:
    probs = Explainer(checkpoint).probabilities(image)
    ranked = sorted(checkpoint.findings, key=lambda n: -probs[n])
    cut = (probs[ranked[2]] + probs[ranked[3]]) / 2
    checkpoint.thresholds = dict.fromkeys(checkpoint.label_names, cut)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def time_call(fn, runs: int, warmup: int = 2) -> tuple[float, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return _percentiles(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = _image()
    nih = [*NIH_FINDINGS, NO_FINDING]
    print(f"torch {torch.__version__}, {args.threads} threads, load average before: {os.getloadavg()[0]:.2f}")
    for name, backbone, width, size, labels in (
        ("densenet121 (224 px)", "densenet121", 1.0, 224, nih),
        ("default model: resnet10 w0.5 (128 px)", "resnet10", 0.5, 128, [*nih, "Abnormal"]),
    ):
        checkpoint = _checkpoint(backbone, width, size, labels)
        _three_above_threshold(checkpoint, image)
        explainer = Explainer(checkpoint)
        found = explain_image(explainer, image, "top")
        assert len(found) == 3, [e.finding for e in found]
        p50, p95 = time_call(lambda ex=explainer: explain_image(ex, image, "top"), args.runs)
        print(f"{name:38s} layer {explainer.layer:20s} top-3 explain: p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")
        if backbone == "densenet121":
            from monai.visualize import GradCAM as MonaiGradCAM

            net = checkpoint.build_model()
            monai_cam = MonaiGradCAM(copy.deepcopy(net), explainer.layer)
            x = checkpoint.preprocess.normalize(torch.as_tensor(explainer.prepare(image).uint8[None]))
            classes = [checkpoint.label_names.index(e.finding) for e in found]
            p50, p95 = time_call(
                lambda cam=monai_cam, x=x, cs=classes: [cam(x, class_idx=c) for c in cs], args.runs
            )
            print(
                f"{'  reference: MONAI GradCAM x3 (maps only)':38s} {'':26s} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
