"""End-to-end triage throughput: ONNX Runtime versus PyTorch eager, same cores, same images.

Measures images/s of the whole pipeline (decode PNG + preprocess in a worker process, model
on batches in the main process, study rows) with ``TriageEngine``, for each backbone and
backend in one run, and samples resident memory (main process + decoder workers, from
/proc) as the images stream through, so a long run shows whether memory stays flat.

    .venv/bin/python bench/bench_triage.py                      # DenseNet-121 224 px + compact, 160 images
    .venv/bin/python bench/bench_triage.py --images 10000 --models compact --backends onnx

Networks are randomly initialised (speed does not depend on the weights). Images: the real
NIH 256 px PNGs in ../shared/data/nih/images, the list repeated to reach ``--images``.
``onnx-int8`` quantises on first use (calibrated on the bundled samples; counted as setup, not
in images/s) and prints int8 / fp32 in the same run:

    .venv/bin/python bench/bench_triage.py --models densenet121 --backends onnx,onnx-int8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MODELS = {
    # name: (backbone, width, size)
    "densenet121": ("densenet121", 1.0, 224),
    # the bundled default model's architecture (configs/nih-default-compact.yaml)
    "compact": ("resnet10", 0.5, 128),
}


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    """Child processes (decoder workers, the forkserver and its children), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def total_rss_mib() -> tuple[float, float]:
    """(main process, main + all descendants) resident memory in MiB."""
    me = os.getpid()
    main = rss_mib(me)
    return main, main + sum(rss_mib(p) for p in descendants(me))


class Meter:
    """A progress sink for ``TriageEngine.iter_results`` that samples memory as images complete,
    and CPU time of the main process and its decoder processes (so a run on a loaded machine
    can say how much CPU it actually got)."""

    def __init__(self, total: int, samples: int = 10) -> None:
        self.done = 0
        self.every = max(1, total // samples)
        self.next_sample = self.every
        self.memory: list[dict[str, float]] = []
        self.cpu_start = time.process_time()
        self.child_start = {pid: cpu_seconds(pid) for pid in descendants(os.getpid())}
        self.child_last: dict[int, float] = dict(self.child_start)

    def cpu_used(self) -> float:
        children = sum(t - self.child_start.get(pid, 0.0) for pid, t in self.child_last.items())
        return time.process_time() - self.cpu_start + children

    def update(self, n: int) -> None:
        self.done += n
        for pid in descendants(os.getpid()):  # workers exit at the end: remember their last reading
            self.child_last[pid] = cpu_seconds(pid)
        if self.done >= self.next_sample:
            main, everything = total_rss_mib()
            self.memory.append(
                {"images": self.done, "main_mib": round(main, 1), "total_mib": round(everything, 1)}
            )
            self.next_sample += self.every


def random_checkpoint(name: str):
    import torch

    from xraytriage.labels import NIH_FINDINGS, NO_FINDING
    from xraytriage.models import Checkpoint, ModelConfig, build_model
    from xraytriage.preprocess import PreprocessContract

    backbone, width, size = MODELS[name]
    labels = [*NIH_FINDINGS, NO_FINDING]
    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, num_classes=len(labels), in_channels=1, width=width)
    net = build_model(cfg).eval()
    return Checkpoint(
        model=cfg,
        label_names=labels,
        preprocess=PreprocessContract(size=size),
        state_dict={k: v.clone() for k, v in net.state_dict().items()},
        name=f"bench-{name}",
    )


def run_one(checkpoint, backend: str, paths: list[str], args) -> dict:
    from xraytriage.models.inference import make_predictor
    from xraytriage.triage import TriageEngine, TriageOptions

    t0 = time.perf_counter()
    if backend == "onnx-int8":  # random weights: nothing to rank, so no ranking check (speed only)
        from xraytriage.models.inference import resolve_int8_file

        resolve_int8_file(checkpoint, min_rank_correlation=-1.0)
    predictor = make_predictor(checkpoint, backend, threads=args.threads)
    setup_s = time.perf_counter() - t0
    options = TriageOptions(batch_size=args.batch_size, workers=args.workers, progress=False)
    engine = TriageEngine(predictor, options)
    list(engine.iter_results(paths[: args.batch_size * 2]))  # warm-up: pools, kernels, caches
    meter = Meter(len(paths))
    start = time.perf_counter()
    results = []
    for result in engine.iter_results(paths, progress=meter):
        results.append(result)
    seconds = time.perf_counter() - start
    cpu = meter.cpu_used()
    rows = engine.study_rows(results)
    ok = sum(1 for r in results if r.ok)
    return {
        "model": checkpoint.name,
        "backbone": checkpoint.model.backbone,
        "size": checkpoint.preprocess.size,
        "backend": backend,
        "images": len(paths),
        "images_ok": ok,
        "studies": len(rows),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(paths) / seconds, 2),
        "setup_s": round(setup_s, 2),
        "cpu_s": round(cpu, 2),
        "cpu_share": round(cpu / seconds / args.cores, 2),
        "images_per_cpu_s": round(len(paths) / cpu, 2),
        "memory": meter.memory,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=160, help="images per measurement (default 160)")
    parser.add_argument("--models", default="densenet121,compact", help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--backends", default="onnx,torch", help="comma list of onnx, onnx-int8, torch")
    parser.add_argument("--threads", type=int, default=2, help="model threads (default 2)")
    parser.add_argument("--cores", type=int, default=2, help="pin everything to this many cores (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="decoder processes (default 1)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "nih" / "images")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))[: args.cores]
    os.sched_setaffinity(0, cores)  # workers inherit it: model and decoding share these cores
    os.environ.setdefault("XRAYTRIAGE_CACHE", str(Path("/tmp") / "xraytriage-bench-cache"))
    import torch

    torch.set_num_threads(args.threads)
    import onnxruntime

    images = sorted(str(p) for p in args.data.glob("*.png"))
    if not images:
        print(f"no PNG images in {args.data}", file=sys.stderr)
        return 1
    paths = (images * (args.images // len(images) + 1))[: args.images]
    load = os.getloadavg()
    print(
        f"{len(paths)} images ({len(images)} distinct NIH 256 px PNGs), cores {cores}, model threads "
        f"{args.threads}, {args.workers} decoder process(es), batch {args.batch_size}; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}; load average at start {load[0]:.1f}"
    )
    results = []
    for name in args.models.split(","):
        checkpoint = random_checkpoint(name.strip())
        for backend in args.backends.split(","):
            result = run_one(checkpoint, backend.strip(), paths, args)
            results.append(result)
            peak = max((m["total_mib"] for m in result["memory"]), default=0.0)
            first = result["memory"][0]["total_mib"] if result["memory"] else 0.0
            print(
                f"{name:12s} {result['size']:4d} px  {backend:9s}  {result['images_per_s']:7.2f} images/s  "
                f"({result['seconds']:.1f} s; setup {result['setup_s']:.1f} s)  "
                f"RSS main+workers {first:.0f} -> peak {peak:.0f} MiB; got {100 * result['cpu_share']:.0f}% of "
                f"{args.cores} cores, {result['images_per_cpu_s']:.2f} images per CPU-second"
            )
        by_backend = {r["backend"]: r for r in results if r["model"] == checkpoint.name}
        if {"onnx", "torch"} <= set(by_backend):
            ratio = by_backend["onnx"]["images_per_s"] / by_backend["torch"]["images_per_s"]
            print(f"{name:12s} ONNX / eager = {ratio:.2f}x")
        if {"onnx", "onnx-int8"} <= set(by_backend):
            ratio = by_backend["onnx-int8"]["images_per_s"] / by_backend["onnx"]["images_per_s"]
            per_cpu = by_backend["onnx-int8"]["images_per_cpu_s"] / by_backend["onnx"]["images_per_cpu_s"]
            print(f"{name:12s} ONNX int8 / fp32 = {ratio:.2f}x end to end ({per_cpu:.2f}x per CPU-second)")
    summary = {
        "images": len(paths),
        "cores": cores,
        "threads": args.threads,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "load_average_start": load,
        "load_average_end": os.getloadavg(),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
