"""Training images/s of DenseNet-121 at 224 px: eager float32 versus the optimised paths, in one run.

    .venv/bin/python bench/bench_train.py                       # CPU, a couple of minutes
    .venv/bin/python bench/bench_train.py --device cuda         # GPU: fp32 vs channels_last + bf16/fp16 AMP
    .venv/bin/python bench/bench_train.py --device cuda --compile --batch-size 256 --steps 50

Each variant runs the trainer's own step: uint8 batch on the device -> batch augmentation ->
``PreprocessContract.normalize`` -> forward -> masked BCE -> backward -> Adam step (the data are
random uint8 images already on the device, so this measures the model step, not the loader;
``bench_cache.py`` measures the loader side). Warm-up steps are not timed. It prints images/s per
variant and the ratio of the best variant to eager float32, and can write them as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from xraytriage.models.factory import ModelConfig, build_model  # noqa: E402
from xraytriage.preprocess import PreprocessContract  # noqa: E402
from xraytriage.train.augment import BatchAugment  # noqa: E402
from xraytriage.train.config import AugmentConfig, LossConfig, OptimConfig  # noqa: E402
from xraytriage.train.losses import build_loss  # noqa: E402
from xraytriage.train.optim import resolve_amp, use_channels_last  # noqa: E402
from xraytriage.train.trainer import build_optimizer  # noqa: E402


def variants(device: str, compile_too: bool) -> list[dict]:
    out = [{"name": "eager fp32", "channels_last": False, "amp": None, "compile": False}]
    out.append({"name": "channels_last fp32", "channels_last": True, "amp": None, "compile": False})
    out.append(
        {
            "name": "channels_last + bf16 autocast",
            "channels_last": True,
            "amp": torch.bfloat16,
            "compile": False,
        }
    )
    if device == "cuda":
        out.append(
            {
                "name": "channels_last + fp16 autocast",
                "channels_last": True,
                "amp": torch.float16,
                "compile": False,
            }
        )
    if compile_too:
        best_amp = torch.bfloat16
        out.append(
            {
                "name": "compile + channels_last + bf16",
                "channels_last": True,
                "amp": best_amp,
                "compile": True,
            }
        )
    return out


def run_variant(v: dict, args: argparse.Namespace, device: torch.device) -> float:
    torch.manual_seed(0)
    contract = PreprocessContract(size=args.size, channels=1)
    labels = 15
    cfg = ModelConfig(
        backbone=args.backbone, num_classes=labels, in_channels=1, width=getattr(args, "width", 1.0)
    )
    net = build_model(cfg).to(device)
    if v["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    if isinstance(v["compile"], str):  # a named backend (gpu_run.py's dry run: "aot_eager")
        model = torch.compile(net, backend=v["compile"])
    else:
        model = torch.compile(net) if v["compile"] else net
    optimizer = build_optimizer([p for p in net.parameters()], OptimConfig(name="adam", lr=1e-4))
    loss_fn = build_loss(LossConfig(name="bce"), torch.full((labels,), 0.1).numpy()).to(device)
    scaler = torch.amp.GradScaler("cuda") if v["amp"] == torch.float16 else None
    augment = BatchAugment(AugmentConfig(hflip=0.5, rotate=7, translate=0.05))
    images = torch.randint(0, 256, (args.batch_size, args.size, args.size), dtype=torch.uint8, device=device)
    targets = (torch.rand(args.batch_size, labels, device=device) < 0.1).float()
    autocast = (
        (lambda: torch.autocast(device_type=device.type, dtype=v["amp"]))
        if v["amp"] is not None
        else nullcontext
    )

    def step() -> None:
        x = augment(images.unsqueeze(1).float())
        x = contract.normalize(x)
        if v["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    net.train()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--backbone", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--width", type=float, default=1.0, help="width multiplier (the bundled model: resnet10 0.5)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 128 on GPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 30 on GPU)")
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps (default: 1 on CPU, 10 on GPU)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU visible to torch")
    args.batch_size = args.batch_size or (128 if gpu else 8)
    args.steps = args.steps or (30 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if gpu else 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    where = (
        torch.cuda.get_device_name(0)
        if gpu
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.backbone} {args.size}px, batch {args.batch_size}, {args.steps} timed steps on {where} (torch {torch.__version__})"
    )
    auto = resolve_amp("auto", device)
    auto_text = "float32" if auto is None else str(auto).removeprefix("torch.")
    auto_text += " + channels_last" if use_channels_last(None, auto) else ""
    print(f"the trainer's amp: auto picks {auto_text} here")
    results = {}
    for v in variants(args.device, args.compile):
        try:
            rate = run_variant(v, args, device)
        except Exception as exc:  # e.g. bf16 or compile unsupported here: report, keep going
            print(f"  {v['name']:<34} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            continue
        results[v["name"]] = rate
        print(f"  {v['name']:<34} {rate:8.1f} images/s")
    eager = results.get("eager fp32")
    if eager and len(results) > 1:
        best = max(results, key=results.get)
        print(f"best: {best} at {results[best]:.1f} images/s = {results[best] / eager:.2f}x eager fp32")
        bf16 = results.get("channels_last + bf16 autocast")
        if bf16:
            print(f"ratio bf16/fp32 (training): {bf16 / eager:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({
            "device": where, "backbone": args.backbone, "size": args.size, "batch_size": args.batch_size,
            "steps": args.steps, "images_per_s": results, "cpu_count": os.cpu_count(), "amp_auto": auto_text,
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
