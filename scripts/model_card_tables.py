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


def within_collection_table(metrics: dict) -> str:
    """Our out-of-fold triage AUC within every collection, and the anchor's on its images there."""
    grouped = metrics.get("grouped")
    if not grouped:
        return "(no grouped evaluation: run evaluate with --group-by collection)"
    name = next(n for n in grouped["labels"] if n.startswith("triage"))
    ours = grouped["labels"][name]
    anchor = metrics.get("comparison", {}).get("grouped_triage")
    anchor_rows = {r["group"]: r for r in anchor["table"]} if anchor else {}
    other = anchor["names"][1] if anchor else "anchor"
    rows = [
        f"| collection | images | abnormal | xraytriage AUC (all its images) | images with {other} predictions | "
        f"xraytriage AUC (same images) | {other} AUC | DeLong p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for group, g in ours["groups"].items():
        a = anchor_rows.get(group, {})
        auc = "one class" if g["auc"] is None else f"{g['auc']:.3f}" + ("" if g["in_mean"] else " (too few)")

        def fmt(key: str, a: dict = a) -> str:
            value = a.get(key)
            if value is None or value != value or (key == "delong_p" and not a.get("in_mean")):
                return "–"
            return (
                f"{value:.3g}"
                if key == "delong_p"
                else f"{value:.3f}" + ("" if a.get("in_mean") else " (too few)")
            )

        rows.append(
            f"| {group} | {g['n']} | {g['positives']} | {auc} | {a.get('n', 0)} | {fmt('auc_ours')} | "
            f"{fmt('auc_' + other)} | {fmt('delong_p')} |"
        )
    mean_anchor = anchor["mean_within"] if anchor else {}
    rows.append(
        f"| **mean within collections** | | | {ours['within_mean_auc']:.3f} | | "
        f"{(mean_anchor.get('ours') or float('nan')):.3f} | {(mean_anchor.get(other) or float('nan')):.3f} | |"
    )
    rows.append(f"| pooled (confounded: mixes collections) | | | {ours['pooled_auc']:.3f} | | | | |")
    rows.append(f"| the collection alone | | | {ours['group_only_auc']:.3f} | | | | |")
    return "\n".join(rows)


def flag_rates(oof: Path, checkpoint: Path) -> str:
    """Out of fold, at the shipped operating points: how often normal images get flagged."""
    import numpy as np

    from xraytriage.evaluate.calibration import logit
    from xraytriage.evaluate.predictions import read_predictions_csv
    from xraytriage.labels import ABNORMAL, NO_FINDING
    from xraytriage.models import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    frame = read_predictions_csv(oof)
    names = list(ckpt.label_names)
    probs = ckpt.probabilities(logit(frame[["prob_" + n for n in names]].to_numpy(dtype=np.float64)))
    normal = frame["label_" + NO_FINDING].to_numpy() == 1
    findings = ckpt.findings
    idx = [names.index(n) for n in findings]
    any_finding = (probs[:, idx] >= np.array([ckpt.threshold(n) for n in findings])).any(axis=1)
    abnormal = ckpt.abnormal_probability(probs)
    flag = abnormal >= ckpt.study_flag_threshold if ckpt.study_flag_threshold is not None else any_finding
    coll = frame["collection"].astype(str).to_numpy() if "collection" in frame.columns else None
    rows = [
        "| images | normal (No Finding) | normal with any finding flagged | normal studies flagged | abnormal studies flagged (sensitivity) |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, mask: np.ndarray) -> str:
        n, a = mask & normal, mask & ~normal
        return (
            f"| {name} ({mask.sum()}) | {n.sum()} | {any_finding[n].mean():.1%} | {flag[n].mean():.1%} | "
            f"{flag[a].mean():.1%} |"
        )

    rows.append(row("all", np.ones(len(frame), bool)))
    if coll is not None:
        for c in sorted(set(coll)):
            mask = coll == c
            if (mask & normal).sum() >= 5:
                rows.append(row(c, mask))
    shift = ckpt.calibration.get(ABNORMAL, {}).get("shift")
    note = (
        f"P(abnormal) is calibrated to a deployment prevalence (logit shift {shift:+.3f}); the study flag "
        f"is P(abnormal) >= {ckpt.study_flag_threshold:.3f}."
        if shift is not None and ckpt.study_flag_threshold is not None
        else ""
    )
    return "\n".join(rows) + ("\n\n" + note if note else "")


def pediatric_table(eval_dir: Path) -> str:
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    boot = metrics["bootstrap"]["labels"]
    rows = ["| label | n | positives | ROC AUC [95% CI] |", "|---|---|---|---|"]
    for name, m in metrics["metrics"]["labels"].items():
        rows.append(f"| {name} | {m['n']} | {m['positives']} | {ci(boot[name]['auc'])} |")
    return "\n".join(rows)


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
    parser.add_argument(
        "--oof", type=Path, help="out-of-fold predictions (flag rates at the shipped thresholds)"
    )
    parser.add_argument("--pediatric", type=Path, help="evaluate output folder of the pediatric images")
    args = parser.parse_args()
    metrics = json.loads((args.eval_dir / "metrics.json").read_text())
    print("### Triage AUC within each collection (out of fold)\n")
    print(within_collection_table(metrics))
    if args.oof and args.checkpoint:
        print("\n### Flag rates at the shipped operating points (out of fold)\n")
        print(flag_rates(args.oof, args.checkpoint))
    if args.pediatric:
        print("\n### Cross-dataset: pediatric images (Kermany et al.)\n")
        print(pediatric_table(args.pediatric))
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
