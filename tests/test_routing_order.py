"""One urgency scale across models (docs/routing.md): flagged studies of every model before
unflagged ones, critical ones first, and single-model worklists in their old order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xraytriage.triage.priority import flag_point, on_reference_scale
from xraytriage.triage.worklist import WorklistRow, order_score, sort_worklist

CHEST_T, FRACTURE_T = 0.66, 0.164  # the bundled models' flag points (checked below)
ASSETS = Path(__file__).resolve().parents[1] / "src" / "xraytriage" / "assets"


def row(study, priority, model="", flagged=None, tier="routine", site=None, reference=CHEST_T, own=None):
    r = WorklistRow(study=study, path=f"{study}.png", priority=priority, abnormal=priority,
                    flagged=flagged, tier=tier, site_priority=site, model=model)  # fmt: skip
    if model:
        r.urgency = on_reference_scale(priority, own, reference, site)
    return r


def test_the_reference_scale_maps_each_flag_point_onto_the_reference_one():
    assert on_reference_scale(FRACTURE_T, FRACTURE_T, CHEST_T) == pytest.approx(CHEST_T)
    assert on_reference_scale(0.61, CHEST_T, CHEST_T) == 0.61  # the reference model unchanged
    assert on_reference_scale(0.3, None, CHEST_T) == 0.3  # no flag point: not rescaled
    assert (
        on_reference_scale(0.0, FRACTURE_T, CHEST_T) == 0.0
        and on_reference_scale(1.0, FRACTURE_T, CHEST_T) == 1.0
    )
    # odds relative to the own threshold are kept: 2x the fracture threshold odds -> 2x the chest's
    odds = lambda p: p / (1 - p)  # noqa: E731
    p = on_reference_scale(1 / (1 + 1 / (2 * odds(FRACTURE_T))), FRACTURE_T, CHEST_T)
    assert odds(p) == pytest.approx(2 * odds(CHEST_T))
    grid = np.linspace(0.01, 0.99, 50)
    assert np.all(np.diff([on_reference_scale(q, FRACTURE_T, CHEST_T) for q in grid]) > 0)  # monotone
    assert on_reference_scale(0.05, FRACTURE_T, CHEST_T, site_priority=0.8) == 0.8  # a floor, as given


def test_a_flagged_fracture_goes_before_an_unflagged_chest_and_critical_before_both():
    fracture = row("frac", 0.2, "fracture", flagged=True, tier="flagged", own=FRACTURE_T)
    chest = row("chest", 0.61, "chest", flagged=False, own=CHEST_T)
    weak_fracture = row("weak", 0.1, "fracture", flagged=False, own=FRACTURE_T)
    critical = row("crit", 0.3, "chest", flagged=False, tier="critical", own=CHEST_T)
    flagged_chest = row("fchest", 0.9, "chest", flagged=True, tier="flagged", own=CHEST_T)
    ordered = [r.study for r in sort_worklist([weak_fracture, chest, fracture, critical, flagged_chest])]
    assert ordered == ["crit", "fchest", "frac", "chest", "weak"]
    # by priority alone the fracture (0.2) sorted below the unflagged chest (0.61): the old bug
    assert [r.study for r in sorted([fracture, chest], key=lambda r: -r.priority)] == ["chest", "frac"]
    flagged = [r for r in sort_worklist([weak_fracture, chest, fracture, flagged_chest]) if r.flagged]
    assert [r.rank for r in flagged] == [1, 2]


def test_single_model_worklists_keep_their_order():
    rows = [
        row(f"s{i}", p, site=s) for i, (p, s) in enumerate([(0.8, 0.8), (0.9, None), (0.5, None), (0.8, 1.0)])
    ]
    assert all(r.urgency is None for r in rows)
    assert order_score(0.4, None) == 0.4 and order_score(0.4, 0.7) == 0.7
    assert [r.study for r in sort_worklist(rows)] == ["s3", "s1", "s0", "s2"]


def test_the_bundled_models_flag_points():
    from xraytriage.models.checkpoint import load_checkpoint

    chest = load_checkpoint(ASSETS / "default_model" / "model.pt")
    fracture = load_checkpoint(ASSETS / "fracture_model" / "model.pt")
    assert flag_point(chest) == pytest.approx(chest.study_flag_threshold)
    assert flag_point(fracture) == pytest.approx(fracture.threshold("Fracture"))  # flagged by its one finding
    assert flag_point(fracture) < flag_point(chest)  # why their priorities were not comparable
