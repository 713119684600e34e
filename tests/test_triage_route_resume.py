"""``triage --route`` with ``--resume`` (an interrupted routed run finishes without routing or
scoring its images again) and ``--explain`` (each study drawn by the model that scored it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from xraytriage.triage.worklist import read_worklist_csv

ASSETS = Path(__file__).resolve().parents[1] / "src" / "xraytriage" / "assets"
pytestmark = pytest.mark.skipif(
    not (ASSETS / "body_part_router" / "model.pt").is_file()
    or not (ASSETS / "fracture_model" / "model.pt").is_file(),
    reason="bundled router/fracture model absent",
)


def _films(shared_data: Path) -> list[Path]:
    """Two NIH chest films and two fractured FracAtlas films (real files)."""
    chest = sorted((shared_data / "nih" / "images-c").glob("*.png"))[:2]
    table = pd.read_csv(shared_data / "msk" / "fracatlas" / "dataset.csv")
    broken = table[(table["fractured"] == 1) & (table["mixed"] == 0)].iloc[::150][:2]
    msk = [shared_data / "msk" / "fracatlas" / "images" / r.folder / r.image_id for r in broken.itertuples()]
    return [*chest, *msk]


def _triage(inputs: Path, out: Path, *extra: str) -> int:
    from xraytriage.cli.main import main

    return main(["triage", str(inputs), "--route", "--backend", "torch", "--workers", "0",
                 "--output", str(out), "--no-progress", *extra])  # fmt: skip


def _rows(out: Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in read_worklist_csv(out / "worklist.csv")}


def test_an_interrupted_routed_run_resumes_where_it_stopped(shared_data, tmp_path, capsys):
    films = _films(shared_data)
    folder = tmp_path / "in"
    folder.mkdir()
    for film in films[::2]:  # one chest and one fracture film: the run that was "interrupted"
        shutil.copy(film, folder / film.name)
    assert _triage(folder, tmp_path / "out") == 0
    for film in films[1::2]:
        shutil.copy(film, folder / film.name)
    capsys.readouterr()
    assert _triage(folder, tmp_path / "out", "--resume") == 0
    assert "resumed: 2 image(s)" in capsys.readouterr().out
    journal = (tmp_path / "out" / "worklist.images.jsonl").read_text().splitlines()
    assert len(journal) == 1 + len(films)  # the header, then each image scored once
    assert {json.loads(line)["extra"]["model"] for line in journal[1:]} == {"chest", "fracture"}
    assert _triage(folder, tmp_path / "fresh") == 0  # the same worklist as one uninterrupted run
    resumed, fresh = _rows(tmp_path / "out"), _rows(tmp_path / "fresh")
    assert set(resumed) == {f.name for f in films}
    for name, row in fresh.items():
        got = resumed[name]
        assert (got["rank"], got["model"], got["body_part"]) == (row["rank"], row["model"], row["body_part"])
        assert got["urgency"] == pytest.approx(row["urgency"], abs=1e-5)
    # another router or model file: the journal is refused, not mixed
    other = tmp_path / "router.pt"
    shutil.copy(ASSETS / "body_part_router" / "model.pt", other)
    with open(other, "ab") as fh:
        fh.write(b"\0")
    assert _triage(folder, tmp_path / "out", "--resume", "--router", str(other)) != 0


def test_routed_explain_draws_each_study_with_its_own_model(shared_data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for film in _films(shared_data):
        shutil.copy(film, folder / film.name)
    assert _triage(folder, tmp_path / "out", "--explain", "--explain-findings", "1") == 0
    rows = [r for r in _rows(tmp_path / "out").values() if r["status"] == "ok" and r["findings"]]
    drawn = sorted(p.name for p in (tmp_path / "out" / "heatmaps").glob("*.png"))
    assert rows, "no study listed a finding: nothing to draw"
    for row in rows:
        first = row["findings"].split(" ")[0] if row["model"] == "fracture" else None
        stem = Path(row["path"]).stem
        mine = [name for name in drawn if name.startswith(f"rank{row['rank']:03d}_{stem}_")]
        assert len(mine) == 1, (row["path"], drawn)
        if first:
            assert mine[0].endswith("_Fracture.png")
