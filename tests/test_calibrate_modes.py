"""``calibrate``: one entry point over its modules (predictions, site normals, OOD reference and
age range), and the site calibration counts images as triage flags them (float64, cast once)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from xraytriage.cli.main import main
from xraytriage.cli.site_scoring import ScoredImages
from xraytriage.models import load_checkpoint
from xraytriage.models.checkpoint import Checkpoint
from xraytriage.models.published import BUNDLED_MODEL


def test_scored_images_compare_with_thresholds_as_triage_does():
    p32 = np.float32(0.3)
    threshold = float(p32) + 1e-9  # just above the probability, closer to it than float32 can tell
    model = SimpleNamespace(study_flag_threshold=threshold)
    raw = np.array([p32], dtype=np.float32)
    # the control: a float32 array against a Python float compares in float32, and flags it
    assert bool(Checkpoint.study_flagged(model, raw, [False])[0])
    scored = ScoredImages(["a.png"], raw[:, None], raw, np.zeros((1, 2)))
    assert scored.probabilities.dtype == scored.abnormal.dtype == np.float64
    triage_says = float(p32) >= threshold  # a worklist row holds Python floats
    assert bool(Checkpoint.study_flagged(model, scored.abnormal, [False])[0]) == triage_says is False
    assert bool((scored.probabilities[:, 0] >= threshold)[0]) == triage_says


def test_one_entry_point_runs_the_age_range_mode(tmp_path, capsys):
    out = tmp_path / "aged.pt"
    assert (
        main(["calibrate", "--model", str(BUNDLED_MODEL), "--age-range", "9-89", "--output", str(out)]) == 0
    )
    assert load_checkpoint(out).scope["age_years"] == [9.0, 89.0]
    assert "training ages: 9-89" in capsys.readouterr().out
    assert (
        main(["calibrate", "--model", str(BUNDLED_MODEL), "--age-range", "89-9", "--output", str(out)]) == 2
    )
    assert "--age-range must look like 9-89" in capsys.readouterr().err
