"""One row per recipe for docs/model-card.md's ablation table, from held-out predictions.

    python scripts/ablation_table.py NAME=PREDICTIONS.csv [NAME=A.csv+B.csv ...] \
        [--root ../shared/data/nih] [--anchors ../shared/data/anchors/chexnet_reproduction_preds.csv]

PREDICTIONS is an ``oof_predictions.csv`` of ``xraytriage cv`` or a fold's ``val_predictions.csv``
(held-out patients either way); ``A.csv+B.csv`` averages the probabilities of several files on
the images they share (an ensemble, still held out when every member is). Every number is
*within collection* (the collections differ in selection, so pooled AUCs reward recognising the
collection): the triage AUC (``Abnormal`` output) in the starter ``images`` and in ``images-c``
and its mean over the collections with both classes; each finding's AUC averaged over the
collections, then over the 14 findings; and the same 14-finding mean on the images the CheXNet
reproduction predicted, next to its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from xraytriage.data.registry import load_dataset  # noqa: E402
from xraytriage.labels import NIH_FINDINGS, canonical_label  # noqa: E402
from xraytriage.stats import grouped_auc  # noqa: E402


def read_predictions(spec: str) -> pd.DataFrame:
    """Probabilities by file name; several files joined by ``+`` are averaged on common images."""
    frames = []
    for part in spec.split("+"):
        frame = pd.read_csv(part)
        frame.index = frame["path"].map(lambda p: Path(p).name)
        frames.append(frame[[c for c in frame.columns if c.startswith("prob_")]])
    common = frames[0].index
    for frame in frames[1:]:
        common = common.intersection(frame.index)
    return sum(f.loc[common] for f in frames) / len(frames)


def findings_mean(
    truth: pd.DataFrame, probs: pd.DataFrame, groups: np.ndarray
) -> tuple[float, dict[str, float]]:
    per = {}
    for name in NIH_FINDINGS:
        result = grouped_auc(truth[name].to_numpy(), probs[f"prob_{name}"].to_numpy(), groups=groups)
        if result["within_mean_auc"] is not None:
            per[name] = result["within_mean_auc"]
    return float(np.mean(list(per.values()))), per


def row(name: str, probs: pd.DataFrame, truth: pd.DataFrame, anchors: pd.DataFrame) -> dict[str, object]:
    truth = truth.loc[probs.index]
    groups = truth["collection"].astype(str).to_numpy()
    abnormal = (truth["No Finding"] == 0).astype(float).to_numpy()
    triage = grouped_auc(abnormal, probs["prob_Abnormal"].to_numpy(), groups=groups)["groups"]
    mean14, per = findings_mean(truth, probs, groups)
    both = probs.index.intersection(anchors.index)
    ours_a, _ = findings_mean(truth.loc[both], probs.loc[both], groups_of(truth, both))
    theirs_a, _ = findings_mean(truth.loc[both], anchors.loc[both], groups_of(truth, both))
    tri = grouped_auc(abnormal, probs["prob_Abnormal"].to_numpy(), groups=groups)
    return {
        "recipe": name,
        "images": len(probs),
        "triage images": triage.get("images", {}).get("auc"),
        "triage images-c": triage.get("images-c", {}).get("auc"),
        "triage mean within": tri["within_mean_auc"],
        "14 findings within": mean14,
        "anchor images": len(both),
        "14 findings (anchor images)": ours_a,
        "CheXNet (same images)": theirs_a,
        **{f"auc {k}": v for k, v in per.items()},
    }


def groups_of(truth: pd.DataFrame, index: pd.Index) -> np.ndarray:
    return truth.loc[index, "collection"].astype(str).to_numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", help="NAME=predictions.csv[+other.csv...]")
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "nih"))
    parser.add_argument("--anchors", default=None, help="CheXNet reproduction predictions CSV")
    parser.add_argument("--csv", type=Path, default=None, help="also write every column here")
    args = parser.parse_args(argv)
    anchors_path = Path(args.anchors or Path(args.root).parent / "anchors" / "chexnet_reproduction_preds.csv")
    nih = load_dataset("nih", root=args.root)
    truth = pd.DataFrame(nih.labels, columns=nih.label_names)
    truth["collection"] = nih.table["collection"].to_numpy()
    truth.index = nih.table["path"].map(lambda p: Path(p).name)
    anchors = pd.read_csv(anchors_path)
    anchors.index = anchors["Image Index"].astype(str)
    anchors = anchors.rename(
        columns={c: "prob_" + canonical_label(c) for c in anchors.columns if c.startswith("prob_")}
    )
    rows = []
    for spec in args.runs:
        name, _, files = spec.partition("=")
        rows.append(row(name, read_predictions(files), truth, anchors))
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)
    head = ["recipe", "images", "triage images", "triage images-c", "triage mean within", "14 findings within",
            "anchor images", "14 findings (anchor images)", "CheXNet (same images)"]  # fmt: skip
    print(markdown(table[head]))
    per_finding = [c for c in table.columns if c.startswith("auc ")]
    print()
    print(markdown(table[["recipe", *per_finding]].rename(columns=lambda c: c.removeprefix("auc "))))
    return 0


def markdown(table: pd.DataFrame) -> str:
    """A Markdown table, floats to 3 decimals (no optional dependency)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "–" if np.isnan(value) else f"{value:.3f}"
        return "–" if value is None else str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in values) + " |" for values in table.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
