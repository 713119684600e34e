"""Where the time goes in float32 and int8 ONNX Runtime, by operator type, in one run: what int8
speeds up (convolutions) and what it does not (BatchNorm between concatenations, Concat itself,
the quantise/dequantise pairs it adds).

    .venv/bin/python bench/bench_int8_ops.py                     # DenseNet-121 224 px, batch 16
    .venv/bin/python bench/bench_int8_ops.py --model compact --json ops.json

Random weights (speed does not depend on them); the int8 twin is made as ``--backend onnx-int8``
makes it (calibrated on the bundled sample radiographs). ORT's own profiler times every node; the
table sums them per operator type over the timed runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))


def profile(path: Path, batch: np.ndarray, runs: int, threads: int) -> tuple[float, dict[str, float]]:
    """(mean seconds per run, milliseconds per run by op type)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    options.profile_file_prefix = str(Path("/tmp") / f"ort-profile-{os.getpid()}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: batch}
    session.run(None, feed)  # warm-up (also profiled; dropped below by counting only the last runs)
    start = time.perf_counter()
    for _ in range(runs):
        session.run(None, feed)
    seconds = (time.perf_counter() - start) / runs
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    by_op: dict[str, float] = defaultdict(float)
    for event in events:
        args = event.get("args", {})
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            by_op[args.get("op_name", "?")] += event["dur"] / 1000.0
    total_runs = runs + 1
    return seconds, {k: v / total_runs for k, v in by_op.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="densenet121", help="densenet121 or compact (bench_triage's MODELS)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("XRAYTRIAGE_CACHE", str(Path("/tmp") / "xraytriage-bench-cache"))
    from bench_triage import random_checkpoint
    from xraytriage.models.inference import resolve_int8_file, resolve_onnx_file

    checkpoint = random_checkpoint(args.model)
    fp32, int8 = resolve_onnx_file(checkpoint), resolve_int8_file(checkpoint, min_rank_correlation=-1.0)
    size = int(checkpoint.preprocess.size)
    batch = np.random.default_rng(0).integers(0, 256, (args.batch_size, size, size), dtype=np.uint8)
    results = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        seconds, ops = profile(path, batch, args.runs, args.threads)
        results[name] = {"images_per_s": args.batch_size / seconds, "ms_by_op": ops}
    print(
        f"{args.model}, batch {args.batch_size}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"model only: fp32 {results['fp32']['images_per_s']:.1f} images/s, int8 {results['int8']['images_per_s']:.1f}"
          f" images/s = {results['int8']['images_per_s'] / results['fp32']['images_per_s']:.2f}x")  # fmt: skip
    ops = sorted(set(results["fp32"]["ms_by_op"]) | set(results["int8"]["ms_by_op"]),
                 key=lambda k: -max(results["fp32"]["ms_by_op"].get(k, 0), results["int8"]["ms_by_op"].get(k, 0)))  # fmt: skip
    print(f"{'operator':<28}{'fp32 ms':>10}{'int8 ms':>10}")
    for op in ops:
        a, b = results["fp32"]["ms_by_op"].get(op, 0.0), results["int8"]["ms_by_op"].get(op, 0.0)
        if max(a, b) >= 0.5:
            print(f"{op:<28}{a:>10.1f}{b:>10.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
