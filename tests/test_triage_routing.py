"""Body-part routing: the decision rule, the routed worklist columns, and the bundled router
sending real chest and FracAtlas films to the chest and fracture models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xraytriage.triage.routing import NO_MODEL, UNKNOWN, decide_body_part
from xraytriage.triage.worklist import WorklistRow, read_worklist_csv, write_worklist

LABELS = ["CHEST", "HAND", "LEG", "HIP", "SHOULDER"]
ASSETS = Path(__file__).resolve().parents[1] / "src" / "xraytriage" / "assets"
ROUTER = ASSETS / "body_part_router" / "model.pt"
FRACTURE = ASSETS / "fracture_model" / "model.pt"
CHEST = ASSETS / "default_model" / "model.pt"


def test_a_confident_image_decides_and_a_disagreeing_header_is_reported():
    d = decide_body_part([0.02, 0.95, 0.1, 0.0, 0.0], LABELS, header_part="CHEST")
    assert (d.body_part, d.header_part) == ("HAND", "CHEST")
    assert "BodyPartExamined says CHEST" in d.warning and "HAND" in d.warning
    agree = decide_body_part([0.99, 0.0, 0.0, 0.0, 0.0], LABELS, header_part="thorax")  # an alias
    assert agree.body_part == "CHEST" and agree.warning == ""


def test_an_unsure_image_falls_back_to_the_header_then_to_unknown():
    unsure = [0.3, 0.2, 0.4, 0.1, 0.1]
    assert decide_body_part(unsure, LABELS, header_part="Shoulder").body_part == "SHOULDER"
    d = decide_body_part(unsure, LABELS)
    assert d.body_part == UNKNOWN and d.image_part == "LEG" and d.image_confidence == pytest.approx(0.4)
    assert decide_body_part(unsure, LABELS, min_confidence=0.35).body_part == "LEG"


def test_an_unsure_limb_still_reaches_the_model_that_reads_every_limb():
    model_of = {
        "CHEST": "chest",
        "HAND": "fracture",
        "LEG": "fracture",
        "HIP": "fracture",
        "SHOULDER": "fracture",
    }
    probs = [0.05, 0.4, 0.35, 0.02, 0.1]  # hand or leg? a limb for sure: 1 - .6 * .65 * .98 * .9 = 0.66
    d = decide_body_part(probs, LABELS, model_of=model_of)
    assert d.body_part == "HAND" and d.image_confidence == pytest.approx(1 - 0.6 * 0.65 * 0.98 * 0.9)
    assert "body part uncertain" in d.warning
    assert decide_body_part(probs, LABELS).body_part == UNKNOWN  # without the model table: unknown
    weak = [0.3, 0.2, 0.1, 0.05, 0.05]  # a limb with p = 0.34 only, a chest with 0.3: neither
    assert decide_body_part(weak, LABELS, model_of=model_of).body_part == UNKNOWN


def test_routed_rows_write_body_part_and_model_columns(tmp_path):
    ok = WorklistRow(study="a", path="a.png", priority=0.7, abnormal=0.7, flagged=True,
                     probabilities={"Fracture": 0.7}, body_part="HAND", model="fracture")  # fmt: skip
    err = WorklistRow.error_row("b", "b.png", f"b.png: {NO_MODEL} (unknown)")
    err.body_part = UNKNOWN
    csv_path, _ = write_worklist([ok, err], tmp_path, ["Effusion", "Fracture"])
    rows = read_worklist_csv(csv_path)
    assert list(rows[0])[-2:] == ["body_part", "model"]
    assert (rows[0]["body_part"], rows[0]["model"], rows[0]["Effusion"]) == ("HAND", "fracture", None)
    assert rows[1]["body_part"] == UNKNOWN and rows[1]["model"] is None
    plain, _ = write_worklist(
        [WorklistRow(study="c", path="c.png", priority=0.1, abnormal=0.1)], tmp_path / "p", []
    )
    assert "body_part" not in read_worklist_csv(plain)[0]  # unrouted worklists keep their columns


def _mixed_folder(shared_data: Path, folder: Path, n: int = 4) -> dict[str, str]:
    """A few real chest films (NIH, pediatric) and FracAtlas films, with their true kind."""
    folder.mkdir()
    truth = {}
    nih = sorted((shared_data / "nih" / "images-c").glob("*.png"))[:n]
    ped = sorted((shared_data / "pediatric" / "NORMAL").glob("*.jp*g"))[:n]
    table = pd.read_csv(shared_data / "msk" / "fracatlas" / "dataset.csv")
    msk = [
        shared_data / "msk" / "fracatlas" / "images" / r.folder / r.image_id
        for r in table.iloc[::400].itertuples()
    ]
    for path, kind in [*((p, "chest") for p in [*nih, *ped]), *((p, "msk") for p in msk[:n])]:
        shutil.copy(path, folder / path.name)
        truth[path.name] = kind
    return truth


@pytest.mark.skipif(
    not (ROUTER.is_file() and FRACTURE.is_file()), reason="bundled router/fracture model absent"
)
def test_the_bundled_router_sends_chests_and_limbs_to_their_models(shared_data, tmp_path):
    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.models.inference import make_predictor
    from xraytriage.triage import TriageEngine, TriageOptions
    from xraytriage.triage.routing import RoutedModel, RoutedTriage

    truth = _mixed_folder(shared_data, tmp_path / "in")
    options = TriageOptions(batch_size=8, workers=0, progress=False)

    def engine(path):
        return TriageEngine(make_predictor(load_checkpoint(path), "torch"), options)

    router = make_predictor(load_checkpoint(ROUTER), "torch")
    routed = RoutedTriage(
        router, [RoutedModel("chest", engine(CHEST)), RoutedModel("fracture", engine(FRACTURE))], options
    )
    result = routed.run([tmp_path / "in"])
    by_name = {Path(r.path).name: r for r in result.rows}
    assert set(by_name) == set(truth)
    for name, kind in truth.items():
        row = by_name[name]
        assert row.ok, row.error
        assert row.model == ("chest" if kind == "chest" else "fracture"), (name, row.body_part)
        assert (row.body_part == "CHEST") == (kind == "chest")
    fracture_rows = [r for r in result.rows if r.model == "fracture"]
    assert all(set(r.probabilities) == {"Fracture"} for r in fracture_rows)
    assert "Fracture" in result.label_names and "Effusion" in result.label_names

    # without a model for limbs, every MSK film is an error row that says so
    chest_only = RoutedTriage(router, [RoutedModel("chest", engine(CHEST))], options).run([tmp_path / "in"])
    errors = {Path(r.path).name: r for r in chest_only.rows if not r.ok}
    assert set(errors) == {n for n, k in truth.items() if k == "msk"}
    assert all(NO_MODEL in r.error and r.body_part != "CHEST" for r in errors.values())


@pytest.mark.skipif(
    not (ROUTER.is_file() and FRACTURE.is_file()), reason="bundled router/fracture model absent"
)
def test_triage_route_cli_writes_one_worklist_across_models(shared_data, tmp_path):
    from xraytriage.cli.main import main

    truth = _mixed_folder(shared_data, tmp_path / "in", n=2)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code = main(["triage", str(tmp_path / "in"), "--route", "--backend", "torch", "--workers", "0",
                 "--output", str(tmp_path / "out"), "--no-progress"])  # fmt: skip
    assert code == 0
    rows = read_worklist_csv(tmp_path / "out" / "worklist.csv")
    assert {Path(r["path"]).name for r in rows} == {*truth, "broken.png"}
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["rank"] for r in ok] == list(range(1, len(ok) + 1))
    assert np.all(np.diff([r["urgency"] for r in ok]) <= 0)  # one list, on one urgency scale, across models
    assert {r["model"] for r in ok} == {"chest", "fracture"}
    broken = next(r for r in rows if r["path"].endswith("broken.png"))
    assert broken["status"] == "error" and "broken.png" in broken["error"]


def test_routing_accuracy_counts_the_model_each_held_out_film_reaches(tmp_path):
    """scripts/routing_accuracy.py (the docs' routing table) on a hand-made validation file."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "routing_accuracy.py"
    spec = importlib.util.spec_from_file_location("routing_accuracy", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = [  # path, truth (one-hot), router probabilities
        ("c1.png", [1, 0, 0, 0, 0], [0.99, 0.01, 0.0, 0.0, 0.0]),  # chest -> chest
        ("c2.png", [1, 0, 0, 0, 0], [0.2, 0.7, 0.0, 0.0, 0.0]),  # chest -> fracture: wrong
        ("h1.jpg", [0, 1, 0, 0, 0], [0.01, 0.4, 0.35, 0.0, 0.1]),  # unsure limb -> fracture, HAND
        ("l1.jpg", [0, 0, 1, 0, 0], [0.3, 0.1, 0.1, 0.0, 0.0]),  # unknown: wrong
    ]
    val = pd.DataFrame(
        [{"path": p, **dict(zip(LABELS, t, strict=True)), **{f"prob_{n}": q for n, q in zip(LABELS, pr, strict=True)}}
         for p, t, pr in rows]
    )  # fmt: skip
    val.to_csv(tmp_path / "val.csv", index=False)
    pd.DataFrame({"path": [r[0] for r in rows], "collection": ["nih", "nih", "fa", "fa"]}).to_csv(
        tmp_path / "table.csv", index=False
    )
    table = module.routing_table(str(tmp_path / "val.csv"), str(tmp_path / "table.csv"))
    assert table["right_model"].tolist() == [True, False, True, False]
    assert table["decided"].tolist() == ["CHEST", "HAND", "HAND", "UNKNOWN"]
    text = module.markdown(table)
    assert "| chest (NIH + pediatric) | 2 | 1 (50.00%) | 1 |" in text and "l1.jpg (UNKNOWN)" in text
