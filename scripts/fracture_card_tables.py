"""The numbers of docs/fracture-model-card.md from the fracture recipe's out-of-fold predictions.

    python scripts/fracture_card_tables.py runs/fracture/cv/oof_predictions.csv \
        ../shared/data/msk/fracatlas src/xraytriage/assets/fracture_model/model.pt > tables.md

Every number is out of fold (each image scored by the fold model that never saw its group):
AUC with 95% CIs from a bootstrap over FracAtlas groups (the patient key), within each
resolution kind and pooled; sensitivity, specificity and Cohen's kappa at the shipped model's
operating point (its calibration applied to the out-of-fold logits); study level on the
multiscan studies; the shortcut audit (how well resolution kind, hardware or body part alone
predict a fracture, and the AUC within each of their groups).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score

from xraytriage.data.registry import load_dataset
from xraytriage.evaluate.bootstrap import bootstrap_metric
from xraytriage.evaluate.study import aggregate_studies, study_metrics
from xraytriage.models.checkpoint import load_checkpoint
from xraytriage.stats import grouped_auc

LABEL = "Fracture"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def tables(oof_csv: str, root: str, checkpoint_path: str) -> dict:
    oof = pd.read_csv(oof_csv)
    data = load_dataset("fracatlas", root=root)
    meta = data.table.set_index("path")[["resolution", "hardware", "body_part", "study_id", "group"]]
    frame = oof.join(meta, on="path").dropna(subset=[f"prob_{LABEL}"])
    y = frame[LABEL].to_numpy(dtype=np.float64)
    checkpoint = load_checkpoint(checkpoint_path)
    p = checkpoint.probabilities(_logit(frame[f"prob_{LABEL}"].to_numpy())[:, None])[:, 0]
    threshold = checkpoint.threshold(LABEL)
    groups = frame["group"].to_numpy()
    out: dict = {"images": len(frame), "fractured": int(y.sum()), "threshold": threshold, "auc": {}}
    for kind in ("small", "large", "pooled"):
        mask = np.ones(len(frame), bool) if kind == "pooled" else (frame["resolution"] == kind).to_numpy()
        ci = bootstrap_metric(y[mask], p[mask], metric="auc", groups=groups[mask], n_boot=1000, seed=0)
        pred = p[mask] >= threshold
        pos, neg = y[mask] == 1, y[mask] == 0
        out["auc"][kind] = {
            "images": int(mask.sum()),
            "fractured": int(pos.sum()),
            "groups": len(set(groups[mask])),
            **ci,
            "sensitivity": float(pred[pos].mean()),
            "specificity": float((~pred[neg]).mean()),
            "kappa": float(cohen_kappa_score(y[mask].astype(int), pred.astype(int))),
        }
    frame = frame.assign(p=p)
    studies = aggregate_studies(frame, ["p"], [LABEL], method="max")
    multi = studies[studies["images"] > 1]
    out["study_level"] = {
        "all_studies": study_metrics(studies[LABEL].to_numpy(), studies["p"].to_numpy(), threshold=threshold),
        "multi_image_studies": study_metrics(
            multi[LABEL].to_numpy(), multi["p"].to_numpy(), threshold=threshold
        ),
    }
    out["shortcuts"] = {}
    for by in ("resolution", "hardware", "body_part"):
        r = grouped_auc(y, p, groups=frame[by].astype(str).to_numpy())
        out["shortcuts"][by] = {
            "group_only_auc": r["group_only_auc"],
            "within_mean_auc": r["within_mean_auc"],
            "pooled_auc": r["pooled_auc"],
            "groups": {
                g: {"n": v["n"], "positives": v["positives"], "auc": v["auc"]} for g, v in r["groups"].items()
            },
        }
    return out


def _auc_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(t: dict) -> str:
    lines = [
        f"Out of fold: {t['images']} images, {t['fractured']} fractured; operating threshold "
        f"{t['threshold']:.3f} (calibrated P(fracture)).",
        "",
        "| resolution kind | images | fractured | groups | AUC (95% CI, group bootstrap) | sensitivity | specificity | kappa |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for kind, r in t["auc"].items():
        lines.append(
            f"| {kind} | {r['images']} | {r['fractured']} | {r['groups']} | {r['estimate']:.3f} "
            f"({r['low']:.3f}-{r['high']:.3f}) | {r['sensitivity']:.3f} | {r['specificity']:.3f} | {r['kappa']:.3f} |"
        )
    lines += ["", "| study level (max over images) | studies | positives | AUC | sensitivity | specificity | kappa |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, r in t["study_level"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {r['studies']} | {r['positives']} | {r['auc']:.3f} | "
            f"{r['sensitivity']:.3f} | {r['specificity']:.3f} | {r['kappa']:.3f} |"
        )
    lines += ["", "| shortcut audit | alone predicts fracture (AUC) | mean AUC within its groups | pooled AUC |",
              "|---|---:|---:|---:|"]  # fmt: skip
    for by, r in t["shortcuts"].items():
        alone = "n/a" if r["group_only_auc"] is None else f"{r['group_only_auc']:.3f}"
        within = "n/a" if r["within_mean_auc"] is None else f"{r['within_mean_auc']:.3f}"
        lines.append(f"| {by} | {alone} | {within} | {r['pooled_auc']:.3f} |")
    for by, r in t["shortcuts"].items():
        cells = ", ".join(
            f"{g} {_auc_text(v['auc'])} ({v['positives']}/{v['n']})" for g, v in r["groups"].items()
        )
        lines.append(f"\nAUC within each {by} (fractured/images): {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    result = tables(*sys.argv[1:4])
    print(markdown(result))
    if len(sys.argv) > 4:
        with open(sys.argv[4], "w") as fh:
            json.dump(result, fh, indent=1, default=float)
