"""The GPU run, ready before the GPU: every figure issue 28 asks for in one script under 8 minutes.

    python3 bench/gpu_run.py --data .gpu/data/nih --out $OUT        # on the GPU machine (bench/gpu.sh)
    python bench/gpu_run.py --dry-run --out /tmp/gpu-dry             # rehearsal on a CPU: every step, small

Steps, each printing a line when it starts and its figures when it ends (one line per variant or
epoch), the JSON (``gpu_run.json``) rewritten after every step so a stopped run keeps what it had:

1. ``environment``: torch, CUDA, the device (within seconds of the start);
2. ``train_bench``: DenseNet-121 224 px training images/s, eager fp32 / channels_last + bf16 and
   fp16 autocast / torch.compile + bf16 (``bench/bench_train.py``'s own step);
3. ``loader``: the uint8 cache of the carried NIH images built, then read by a DataLoader to the
   device (images/s the training input side can feed);
4. ``train_run``: a short real training run (the trainer, ``amp: auto``) on the carried NIH images,
   one line per epoch with validation AUC and images/s.

Each step has a time budget; a step that would overrun the 8 minutes is skipped and says so. The
dry run uses the CPU, 64 px, batch 2, one or two steps, and torch.compile's ``aot_eager`` backend
(graph capture and autograd without code generation, which would take minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

T0 = time.perf_counter()
BUDGET_S = 8 * 60


def say(text: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {text}", flush=True)


class Run:
    """Results so far, written to JSON after every step."""

    def __init__(self, out: Path, dry_run: bool) -> None:
        self.out = out
        self.data: dict[str, Any] = {"dry_run": dry_run, "steps": {}}
        out.mkdir(parents=True, exist_ok=True)

    def step(self, name: str, fn, budget_s: float, *args) -> None:
        left = BUDGET_S - (time.perf_counter() - T0)
        if left < budget_s * 0.5 and not self.data["dry_run"]:  # a rehearsal runs every step
            say(f"{name}: skipped ({left:.0f} s left of {BUDGET_S} s, needs about {budget_s:.0f} s)")
            self.data["steps"][name] = {"status": "skipped"}
            self.save()
            return
        say(f"{name}: start")
        start = time.perf_counter()
        try:
            result = fn(*args)
            status = "ok"
        except Exception as exc:  # report and go on: one broken step must not cost the others
            traceback.print_exc()
            result, status = {"error": f"{type(exc).__name__}: {exc}"}, "failed"
        seconds = round(time.perf_counter() - start, 1)
        self.data["steps"][name] = {"status": status, "seconds": seconds, **result}
        say(f"{name}: {status} in {seconds} s")
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - T0, 1)
        (self.out / "gpu_run.json").write_text(json.dumps(self.data, indent=1, default=str))


def environment(device) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
    }
    for pkg in ("monai", "pydantic", "onnxruntime"):
        try:
            info[pkg] = __import__(pkg).__version__
        except ImportError:
            info[pkg] = None
    say("environment: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return info


def train_bench(device, args) -> dict[str, Any]:
    import torch

    from bench_train import run_variant

    gpu = device.type == "cuda"
    opts = SimpleNamespace(
        backbone=args.backbone,
        size=args.size,
        batch_size=128 if gpu else 2,
        steps=30 if gpu else 1,
        warmup=10 if gpu else 1,
    )
    variants = [
        {"name": "eager fp32", "channels_last": False, "amp": None, "compile": False},
        {"name": "channels_last + bf16", "channels_last": True, "amp": torch.bfloat16, "compile": False},
    ]
    if gpu:
        variants.append(
            {"name": "channels_last + fp16", "channels_last": True, "amp": torch.float16, "compile": False}
        )
    variants.append({"name": "compile + channels_last + bf16", "channels_last": True, "amp": torch.bfloat16,
                     "compile": True if gpu else "aot_eager"})  # fmt: skip
    rates: dict[str, float] = {}
    for v in variants:
        start = time.perf_counter()
        try:
            rates[v["name"]] = round(run_variant(v, opts, device), 1)
            say(f"  {v['name']:<32} {rates[v['name']]:8.1f} images/s ({time.perf_counter() - start:.0f} s)")
        except Exception as exc:
            say(f"  {v['name']:<32} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    eager = rates.get("eager fp32")
    ratios = {k: round(r / eager, 2) for k, r in rates.items() if eager}
    if ratios:
        say("  ratios to eager fp32: " + ", ".join(f"{k} {r}x" for k, r in ratios.items()))
    return {"backbone": args.backbone, "size": opts.size, "batch_size": opts.batch_size, "steps": opts.steps,
            "images_per_s": rates, "ratio_to_eager_fp32": ratios}  # fmt: skip


def _nih_paths(data: Path, limit: int | None) -> list[str]:
    paths = sorted(str(p) for p in (data / "images").glob("*.png"))
    return paths[:limit] if limit else paths


def loader(device, args, work: Path) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    from xraytriage.data.cache import ImageCache
    from xraytriage.preprocess import PreprocessContract

    paths = _nih_paths(args.data, 16 if args.dry_run else None)
    contract = PreprocessContract(size=args.size)
    cache = ImageCache(work / "cache", contract)
    start = time.perf_counter()
    cache.build(paths, workers=2 if args.dry_run else min(8, os.cpu_count() or 1), progress=False)
    build_rate = len(paths) / (time.perf_counter() - start)
    say(f"  cache of {len(paths)} images at {args.size} px built at {build_rate:.0f} images/s")

    class Rows(Dataset):
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int):
            return torch.from_numpy(np.ascontiguousarray(cache.get(paths[i % len(paths)])))

    n = len(paths) * (1 if args.dry_run else 8)
    gpu = device.type == "cuda"
    batches = DataLoader(Rows(n), batch_size=128 if gpu else 4, num_workers=8 if gpu else 1, pin_memory=gpu,
                         shuffle=True)  # fmt: skip
    start = time.perf_counter()
    seen = 0
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        seen += len(batch)
    if gpu:
        torch.cuda.synchronize()
    rate = seen / (time.perf_counter() - start)
    say(f"  DataLoader from the uint8 cache to {device.type}: {rate:.0f} images/s ({seen} images)")
    return {"images": len(paths), "size": args.size, "cache_build_images_per_s": round(build_rate, 1),
            "loader_images_per_s": round(rate, 1), "loaded": seen}  # fmt: skip


def train_run(device, args, work: Path) -> dict[str, Any]:
    from xraytriage.train.config import TrainConfig
    from xraytriage.train.run import run_training

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    gpu = device.type == "cuda"
    root = args.data
    if args.dry_run:  # the same real images and labels, 64 of them (a folder of links), for speed
        root = work / "nih-dry"
        (root / "images").mkdir(parents=True)
        (root / "meta").symlink_to((args.data / "meta").resolve())
        for path in _nih_paths(args.data, 64):
            (root / "images" / Path(path).name).symlink_to(Path(path).resolve())
    config = TrainConfig.from_dict({
        "name": "gpu-short-run",
        "data": {"kind": "nih", "options": {"root": str(root)}, "add_abnormal": True, "val_fraction": 0.2,
                 "cache": str(work / "train-cache")},
        "preprocess": {"size": args.size, "channels": 1},
        "model": {"backbone": args.backbone},
        "loss": {"name": "bce"},
        "optim": {"name": "adamw", "lr": 1.0e-3 if gpu else 1.0e-4, "weight_decay": 1.0e-4},
        "scheduler": {"name": "cosine", "warmup_epochs": 1},
        "epochs": 5 if gpu else 1,
        "batch_size": 64 if gpu else 2,
        "max_steps_per_epoch": None if gpu else 2,
        "workers": 8 if gpu else 0,
        "device": device.type,
        "amp": "auto",
        "progress": False,
    })  # fmt: skip
    [result] = run_training(config, work / "train-run")
    epochs = [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
         if k in ("epoch", "train_loss", "val_loss", "mean_auc_14_findings", "images_per_s")}
        for row in result.history
    ]  # fmt: skip
    return {"backbone": args.backbone, "size": args.size, "epochs": epochs,
            "best_metrics": {k: round(v, 4) for k, v in result.best_metrics.items() if k.startswith("mean_auc")},
            "images_per_s": round(result.images_per_s, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="rehearse every step on the CPU, small")
    parser.add_argument("--data", type=Path, default=None,
                        help="NIH folder with images/ and meta/ (default .gpu/data/nih, or ../shared/data/nih)")  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu")), help="output folder"
    )
    parser.add_argument("--size", type=int, default=None, help="input size (default 224; 64 in the dry run)")
    parser.add_argument(
        "--backbone", default="densenet121", help="network (default densenet121; tests rehearse a small one)"
    )
    args = parser.parse_args(argv)
    say(f"gpu_run {'dry run on the CPU' if args.dry_run else 'start'}; python {platform.python_version()}")
    if args.data is None:
        carried = REPO / ".gpu" / "data" / "nih"
        args.data = carried if carried.is_dir() else REPO.parent / "shared" / "data" / "nih"
    args.size = args.size or (64 if args.dry_run else 224)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        say("no CUDA device visible to torch: use --dry-run on a CPU")
        return 2
    if torch.cuda.is_available() and not args.dry_run:
        torch.backends.cudnn.benchmark = True
    device = torch.device("cpu" if args.dry_run else "cuda")
    run = Run(args.out, args.dry_run)
    with tempfile.TemporaryDirectory(prefix="gpu-run-") as tmp:
        work = Path(tmp)
        run.step("environment", environment, 5, device)
        run.step("train_bench", train_bench, 150, device, args)
        run.step("loader", loader, 60, device, args, work)
        run.step("train_run", train_run, 150, device, args, work)
    failed = [k for k, v in run.data["steps"].items() if v["status"] != "ok"]
    say(f"done: {len(run.data['steps']) - len(failed)} steps ok{', not ok: ' + ', '.join(failed) if failed else ''}; "
        f"{args.out / 'gpu_run.json'}")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
