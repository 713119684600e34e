"""Paired out-of-fold comparison of two fracture recipes, for the levers table of
docs/fracture-model-card.md.

    python scripts/fracture_lever_diff.py A/oof_predictions.csv B/oof_predictions.csv ../shared/data/msk/fracatlas

Both CSVs come from ``xraytriage cv`` with the same folds (same split seed and images; checked),
so every film is scored by both recipes' fold models that never saw its group. Prints, within
each resolution kind and pooled, AUC(A) - AUC(B) with a bootstrap over FracAtlas groups (the
patient key) resampling the same groups for both: paired, so it is far tighter than comparing
the two AUCs' own intervals.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from xraytriage.data.registry import load_dataset  # noqa: E402
from xraytriage.evaluate.bootstrap import paired_bootstrap_difference  # noqa: E402

LABEL = "Fracture"


def lever_diff(oof_a: str, oof_b: str, root: str, n_boot: int = 1000) -> dict[str, dict[str, float]]:
    data = load_dataset("fracatlas", root=root)
    meta = data.table.set_index("path")[["resolution", "group"]]
    a = pd.read_csv(oof_a).set_index("path")
    b = pd.read_csv(oof_b).set_index("path")
    both = a.index.intersection(b.index)
    if (a.loc[both, "fold"] != b.loc[both, "fold"]).any():
        raise SystemExit(f"{oof_a} and {oof_b} were made with different folds: not a paired comparison")
    frame = pd.DataFrame(
        {"y": a.loc[both, LABEL], "a": a.loc[both, f"prob_{LABEL}"], "b": b.loc[both, f"prob_{LABEL}"]}
    ).join(meta)
    out = {}
    for kind in ("small", "large", "pooled"):
        rows = frame if kind == "pooled" else frame[frame["resolution"] == kind]
        out[kind] = paired_bootstrap_difference(
            rows["y"].to_numpy(), rows["a"].to_numpy(), rows["b"].to_numpy(),
            groups=rows["group"].to_numpy(), n_boot=n_boot, seed=0,
        )  # fmt: skip
    return out


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    for kind, r in lever_diff(*sys.argv[1:4]).items():
        print(
            f"{kind:<7} AUC(A) - AUC(B) = {r['difference']:+.3f} "
            f"(95% CI {r['low']:+.3f} to {r['high']:+.3f}, p {r['p_value']:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
