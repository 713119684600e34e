"""Markdown tables for docs/model-card.md from `xraytriage evaluate` / `localize-eval` outputs.

    python scripts/model_card_tables.py EVAL_DIR [--localization LOC_DIR] [--checkpoint CKPT] > tables.md

Reads EVAL_DIR/metrics.json (+ comparison.csv when present), so the numbers in the model card
are exactly the ones the evaluation wrote.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from xraytriage.labels import NIH_FINDINGS


def ci(entry: dict) -> str:
    return f"{entry['estimate']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def per_label_table(metrics: dict) -> str:
    labels = metrics["metrics"]["labels"]
    boot = metrics["bootstrap"]["labels"]
    rows = ["| label | n | positives | ROC AUC [95% CI] | PR AUC (AP) [95% CI] |", "|---|---|---|---|---|"]
    for name, m in labels.items():
        if name not in boot:
            continue
        rows.append(
            f"| {name} | {m['n']} | {m['positives']} | {ci(boot[name]['auc'])} | {ci(boot[name]['average_precision'])} |"
        )
    findings = [n for n in NIH_FINDINGS if n in labels and labels[n].get("auc") is not None]
    mean = sum(labels[n]["auc"] for n in findings) / len(findings)
    rows.append(f"| **mean of the {len(findings)} findings** | | | {mean:.3f} | |")
    return "\n".join(rows)


def comparison_table(path: Path, other: str) -> str:
    frame = pd.read_csv(path)
    ours = "auc_ours"
    theirs = next(c for c in frame.columns if c.startswith("auc_") and c != ours)
    rows = [
        f"| label | n | positives | xraytriage AUC | {other} AUC | difference | DeLong p |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in frame.to_dict("records"):
        rows.append(
            f"| {d['label']} | {d['n']} | {d['positives']} | {d[ours]:.3f} | {d[theirs]:.3f} | "
            f"{d['difference']:+.3f} | {d['delong_p']:.3g} |"
        )
    rows.append(
        f"| **mean** | | | {frame[ours].mean():.3f} | {frame[theirs].mean():.3f} | "
        f"{(frame[ours] - frame[theirs]).mean():+.3f} | |"
    )
    return "\n".join(rows)


def triage_table(metrics: dict) -> str:
    t = metrics["triage"]
    top = t["abnormal_found_in_top"]
    lines = [
        f"Priority AUC (abnormal vs No Finding): **{t['priority_auc']:.3f}** on {t['studies']} studies. "
        f"Share of abnormal studies in the first 10% / 20% / 50% of the worklist: "
        f"{top['0.1']:.0%} / {top['0.2']:.0%} / {top['0.5']:.0%}.",
        "",
    ]
    sim = t.get("simulation")
    if sim:
        lines += [
            f"Reading-queue simulation ({sim['studies']} studies over {sim['day_minutes']:.0f} min, one reader, "
            f"utilisation {sim['utilisation']:.0%}): waiting time in minutes.",
            "",
            "| order | abnormal mean | abnormal max | normal mean | normal max |",
            "|---|---|---|---|---|",
        ]
        for order in sim["orders"]:
            w = sim["waits"][order]
            lines.append(
                f"| {order} | {w['abnormal']['mean']:.1f} | {w['abnormal']['max']:.1f} | "
                f"{w['normal']['mean']:.1f} | {w['normal']['max']:.1f} |"
            )
    return "\n".join(lines)


def thresholds_table(checkpoint: Path) -> str:
    from xraytriage.models import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    rows = ["| label | threshold | calibration |", "|---|---|---|"]
    for name in ckpt.label_names:
        cal = ckpt.calibration.get(name, {})
        desc = ", ".join(f"{k}={v:.3f}" for k, v in cal.items() if k != "method")
        rows.append(f"| {name} | {ckpt.threshold(name):.3f} | {cal.get('method', '-')} {desc} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("eval_dir", type=Path)
    parser.add_argument("--other", default="CheXNet reproduction")
    parser.add_argument("--localization", type=Path)
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_args()
    metrics = json.loads((args.eval_dir / "metrics.json").read_text())
    print(f"### Per label ({metrics['images']} images, {metrics['patients']} patients)\n")
    print(per_label_table(metrics))
    if (args.eval_dir / "comparison.csv").is_file():
        print("\n### Side by side with the anchor\n")
        print(comparison_table(args.eval_dir / "comparison.csv", args.other))
    print("\n### Triage\n")
    print(triage_table(metrics))
    if args.checkpoint:
        print("\n### Operating thresholds and calibration of the shipped model\n")
        print(thresholds_table(args.checkpoint))
    if args.localization and (args.localization / "localization.md").is_file():
        print("\n### Localisation (NIH boxes)\n")
        print((args.localization / "localization.md").read_text())


if __name__ == "__main__":
    main()
