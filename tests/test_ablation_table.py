"""scripts/ablation_table.py: the model card's round-3 rows from held-out prediction files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation_table.py"


def _script():
    spec = importlib.util.spec_from_file_location("ablation_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_perfect_inverted_and_averaged_predictions_score_as_they_should(shared_data, tmp_path, capsys):
    from xraytriage.data.registry import load_dataset
    from xraytriage.labels import NIH_FINDINGS

    nih = load_dataset("nih", root=str(shared_data / "nih"))
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"path": nih.table["path"]})
    for j, name in enumerate(nih.label_names):
        frame[f"prob_{name}"] = np.nan_to_num(nih.labels[:, j]) * 0.5 + rng.uniform(0, 0.4, len(frame))
    frame["prob_Abnormal"] = 1 - frame["prob_No Finding"]
    perfect = tmp_path / "perfect.csv"
    frame.to_csv(perfect, index=False)
    inverted = frame.copy()
    inverted[[c for c in frame.columns if c.startswith("prob_")]] *= -1
    flipped = tmp_path / "inverted.csv"
    inverted.to_csv(flipped, index=False)
    out = tmp_path / "table.csv"
    assert _script().main([f"p={perfect}", f"i={flipped}", f"avg={perfect}+{flipped}", "--root",
                           str(shared_data / "nih"), "--csv", str(out)]) == 0  # fmt: skip
    table = pd.read_csv(out).set_index("recipe")
    assert table.loc["p", "images"] == len(nih)
    assert table.loc["p", "14 findings within"] == 1.0 and table.loc["p", "triage mean within"] == 1.0
    assert table.loc["i", "14 findings within"] == 0.0
    assert table.loc["avg", "14 findings within"] == 0.5  # p + (-p) = 0 everywhere: ties
    anchors = pd.read_csv(shared_data / "anchors" / "chexnet_reproduction_preds.csv")
    assert table.loc["p", "anchor images"] == len(anchors)
    assert 0.5 < table.loc["p", "CheXNet (same images)"] < 1.0
    assert {f"auc {n}" for n in NIH_FINDINGS} >= {c for c in table.columns if c.startswith("auc ")}
    assert "| p |" in capsys.readouterr().out
