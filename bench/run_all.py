"""Run every benchmark in this folder, one after another (each prints its own ratios).

    python bench/run_all.py [--only cache,triage]

Run on a quiet machine: every figure is a ratio against a baseline measured in the same run,
but absolute images/s depend on what else the cores are doing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCHES = ("cache", "triage", "explain", "train", "serve")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {', '.join(BENCHES)}")
    args = parser.parse_args()
    failed = []
    for name in [b.strip() for b in args.only.split(",") if b.strip()]:
        script = Path(__file__).with_name(f"bench_{name}.py")
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.call([sys.executable, str(script)]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
