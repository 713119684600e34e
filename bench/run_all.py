"""Run every benchmark in this folder, one after another, then print every ratio they measured in
one summary (each ratio is against a baseline measured in the same benchmark run).

    python bench/run_all.py [--only cache,triage,int8,train] [--quick]

Run on a quiet machine: the ratios hold under load better than absolute images/s, but not
entirely (int8 and bf16 gain most when the cores are not shared). ``--quick`` gives each
benchmark its smallest honest setting (fewer images / steps) for a first look.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    # name: (script, arguments, arguments with --quick)
    "cache": ("bench_cache.py", [], ["--limit", "200"]),
    "triage": ("bench_triage.py", [], ["--images", "64"]),
    "int8": (
        "bench_triage.py",
        ["--models", "densenet121,compact", "--backends", "onnx,onnx-int8"],
        ["--models", "densenet121", "--backends", "onnx,onnx-int8", "--images", "64"],
    ),
    "explain": ("bench_explain.py", [], []),
    "train": ("bench_train.py", [], []),
    "serve": ("bench_serve.py", [], []),
}
RATIO = re.compile(r"\d+(\.\d+)?x\b")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"


def run(name: str, quick: bool) -> tuple[int, list[str]]:
    """Run one benchmark, echoing its output; returns its exit code and its ratio lines."""
    script, plain, small = BENCHES[name]
    path = Path(__file__).parent / script  # (an absolute script path stays as it is)
    cmd = [sys.executable, str(path), *(small if quick else plain)]
    print(
        f"\n=== {name}: {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))} ===", flush=True
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    ratios = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if RATIO.search(line) and ("/" in line or "ratio" in line or "best" in line):
            ratios.append(line.strip())
    return proc.wait(), ratios


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {', '.join(BENCHES)}")
    parser.add_argument("--quick", action="store_true", help="smallest honest settings")
    args = parser.parse_args()
    names = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    print(f"machine: {machine()}")
    failed, summary = [], []
    for name in names:
        code, ratios = run(name, args.quick)
        if code != 0:
            failed.append(name)
        summary += [f"{name:8s} {r}" for r in ratios]
    print(f"\n=== ratios (each against its baseline in the same run) on {machine()} ===")
    print("\n".join(summary) if summary else "(none printed)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
