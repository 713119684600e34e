"""Routing accuracy of the body-part router on its held-out images (docs/routing.md).

    python scripts/routing_accuracy.py runs/router/train/val_predictions.csv runs/router/body_parts.csv

The router's training run holds out 20% of the patients (NIH, pediatric) and FracAtlas groups;
its ``val_predictions.csv`` scores those images. Each goes through the same rule as
``triage --route`` (:func:`xraytriage.triage.routing.decide_body_part`, no DICOM header: PNG and
JPEG files have none), and is counted right when it reaches the right model: chest films the
chest model, FracAtlas films the fracture model ("both ways"). Body-part accuracy within
FracAtlas is reported too (it does not change the model, every MSK part goes to the same one).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from xraytriage.triage.routing import decide_body_part

PARTS = ["CHEST", "HAND", "LEG", "HIP", "SHOULDER"]
MSK = {"HAND", "LEG", "HIP", "SHOULDER"}


def routing_table(val_csv: str, table_csv: str) -> pd.DataFrame:
    val = pd.read_csv(val_csv)
    collection = pd.read_csv(table_csv).set_index("path")["collection"]
    probs = val[[f"prob_{p}" for p in PARTS]].to_numpy()
    model_of = {"CHEST": "chest", **dict.fromkeys(MSK, "fracture")}  # as triage --route builds it
    decided = [decide_body_part(row, PARTS, model_of=model_of).body_part for row in probs]
    truth_chest = val["CHEST"].to_numpy() == 1
    out = pd.DataFrame(
        {
            "path": val["path"],
            "collection": val["path"].map(collection),
            "truth": np.where(truth_chest, "chest", "msk"),
            "decided": decided,
        }
    )
    out["routed_to"] = [("chest" if d == "CHEST" else "fracture" if d in MSK else "none") for d in decided]
    out["right_model"] = (out["truth"] == "chest") == (out["routed_to"] == "chest")
    out.loc[out["routed_to"] == "none", "right_model"] = False
    true_part = [max((p for p in PARTS[1:] if r[p] == 1), key=lambda p: r[f"prob_{p}"], default="CHEST")
                 for _, r in val.iterrows()]  # fmt: skip
    multi = val[PARTS[1:]].sum(axis=1).to_numpy() > 1
    out["right_part"] = [
        d == t or (m and d in MSK) for d, t, m in zip(decided, true_part, multi, strict=True)
    ]
    return out


def markdown(t: pd.DataFrame) -> str:
    lines = ["| held-out images | n | routed to the right model | wrong |", "|---|---:|---:|---:|"]
    for name, part in [("chest (NIH + pediatric)", t[t.truth == "chest"]), ("MSK (FracAtlas)", t[t.truth == "msk"]),
                       ("all", t)]:  # fmt: skip
        right = int(part["right_model"].sum())
        lines.append(
            f"| {name} | {len(part)} | {right} ({100 * right / max(len(part), 1):.2f}%) | {len(part) - right} |"
        )
    lines += ["", "| collection | n | right model | right body part |", "|---|---:|---:|---:|"]
    for name, part in t.groupby("collection"):
        lines.append(
            f"| {name} | {len(part)} | {100 * part['right_model'].mean():.2f}% | {100 * part['right_part'].mean():.2f}% |"
        )
    wrong = t[~t["right_model"]]
    if len(wrong):
        lines += [
            "",
            "Misrouted: "
            + ", ".join(f"{p.split('/')[-1]} ({d})" for p, d in zip(wrong.path, wrong.decided, strict=True)),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(routing_table(sys.argv[1], sys.argv[2])))
