"""Routing in the service (issue 24): a mixed upload (a chest PNG and a FracAtlas JPG) gives
two rows, each scored by the model its body part calls for, with body part, model and urgency
in the database, the API JSON, the worklist page and the CSV; a hand-headed DICOM is accepted
and routed instead of refused; ``serve`` routes by default and ``--model`` alone does not."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest

from serve_support import drain_worker, service_client
from tool_support import skip_missing

ASSETS = Path(__file__).resolve().parents[1] / "src" / "xraytriage" / "assets"
pytestmark = pytest.mark.skipif(
    not (ASSETS / "body_part_router" / "model.pt").is_file()
    or not (ASSETS / "fracture_model" / "model.pt").is_file(),
    reason="bundled router/fracture model absent",
)


def routed_service(tmp_path: Path, **options):
    from xraytriage.serving.config import ServeConfig
    from xraytriage.serving.service import TriageService

    config = ServeConfig(data_dir=tmp_path / "data", workers=0, heatmaps=False, route=True, **options)
    return TriageService(config)


def mixed_films(shared_data: Path) -> tuple[Path, Path]:
    """A real NIH chest PNG and a real fractured FracAtlas hand JPG."""
    chest = sorted((shared_data / "nih" / "images").glob("*.png"))[:1]
    table = pd.read_csv(shared_data / "msk" / "fracatlas" / "dataset.csv")
    hands = table[(table["hand"] == 1) & (table["mixed"] == 0) & (table["fractured"] == 1)]
    if not chest or hands.empty:
        skip_missing("no NIH PNG or FracAtlas hand film in the shared data")
    row = hands.iloc[0]
    return chest[0], shared_data / "msk" / "fracatlas" / "images" / row["folder"] / row["image_id"]


def test_a_mixed_upload_gives_a_chest_row_and_a_fracture_row(tmp_path, shared_data):
    chest, hand = mixed_films(shared_data)
    service = routed_service(tmp_path)
    with service_client(service) as client:
        files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in (chest, hand)]
        response = client.post("/api/v1/images", files=files)
        assert response.status_code == 202, response.text
        drain_worker(service)
        items = {i["name"]: i for i in client.get("/api/v1/worklist").json()["items"]}
        assert set(items) == {chest.name, hand.name}
        got = {name: (i["state"], i["routed_body_part"], i["model"]) for name, i in items.items()}
        assert got == {chest.name: ("done", "CHEST", "chest"), hand.name: ("done", "HAND", "fracture")}
        fracture = client.get(items[hand.name]["api_url"]).json()
        assert [row["name"] for row in fracture["findings_table"]] == ["Fracture"]  # its own model's table
        assert fracture["image_list"][0]["model"] == "fracture"
        chest_study = client.get(items[chest.name]["api_url"]).json()
        assert "Fracture" not in {row["name"] for row in chest_study["findings_table"]}
        # the urgency: the chest study's is its priority; the fracture's is on the chest scale
        assert items[chest.name]["urgency"] == pytest.approx(items[chest.name]["priority"])
        from xraytriage.triage.priority import flag_point, on_reference_scale

        fracture_ckpt, chest_ckpt = service.checkpoint_of("fracture"), service.checkpoint
        expected = on_reference_scale(fracture["priority"], flag_point(fracture_ckpt), flag_point(chest_ckpt))
        assert items[hand.name]["urgency"] == pytest.approx(expected, abs=1e-5)
        assert items[hand.name]["flagged"] == (fracture["abnormal"] >= fracture_ckpt.threshold("Fracture"))
        # ranks follow the urgency, whatever the raw priorities say
        ranked = sorted(items.values(), key=lambda i: i["rank"])
        assert [i["urgency"] for i in ranked] == sorted((i["urgency"] for i in ranked), reverse=True)
        rows = {r["name"]: r for r in csv.DictReader(io.StringIO(client.get("/api/v1/worklist.csv").text))}
        assert (rows[hand.name]["routed_body_part"], rows[hand.name]["model"]) == ("HAND", "fracture")
        assert rows[hand.name]["Fracture"] and not rows[hand.name]["Effusion"]
        assert (rows[chest.name]["routed_body_part"], rows[chest.name]["model"]) == ("CHEST", "chest")
        assert float(rows[hand.name]["urgency"]) == pytest.approx(items[hand.name]["urgency"], abs=1e-5)
        page = client.get("/").text
        assert '"routed_body_part": "HAND"' in page and '"model": "fracture"' in page
        assert client.get("/api/v1/worklist", params={"finding": "fracture"}).status_code == 200
        # the drift monitor counts the chest model's studies only (its expected rates are the chest's)
        assert len(service.repo.recent_outcomes(10)) == 2
        assert len(service.repo.recent_outcomes(10, models=("", "chest"))) == 1
        model = client.get("/api/v1/model").json()
        assert [m["name"] for m in model["routing"]["models"]] == ["chest", "fracture"]
    service.stop()


def test_no_model_for_the_body_part_is_an_error_row(tmp_path, shared_data):
    """Without a model for limbs (the fracture model's scope emptied), a hand film is an error
    row naming its body part, never given chest findings."""
    from xraytriage.models.checkpoint import load_checkpoint

    chest, hand = mixed_films(shared_data)
    limbless = load_checkpoint(ASSETS / "fracture_model" / "model.pt")
    limbless.scope = {"body_parts": ["SKULL"], "views": []}
    path = tmp_path / "skull-only.pt"
    limbless.save(path)
    service = routed_service(tmp_path, fracture_model_path=path)
    for p in (chest, hand):
        service.ingest(p.read_bytes(), p.name)
    drain_worker(service)
    with service_client(service) as client:
        items = {i["name"]: i for i in client.get("/api/v1/worklist").json()["items"]}
    assert items[chest.name]["state"] == "done"
    assert items[hand.name]["state"] == "error"
    assert "no model for this body part (hand)" in items[hand.name]["error"]
    assert items[hand.name]["routed_body_part"] == "HAND" and items[hand.name]["findings"] == []
    service.stop()


def test_serve_routes_by_default_and_model_alone_keeps_one_model(tmp_path):
    from xraytriage.cli.main import build_parser
    from xraytriage.cli.serve import build_config
    from xraytriage.errors import ConfigError

    def config(*extra: str):
        return build_config(build_parser().parse_args(["serve", "--data-dir", str(tmp_path / "d"), *extra]))

    assert config().route is True
    assert config("--no-route").route is False
    bundled = str(ASSETS / "default_model" / "model.pt")
    assert config("--model", bundled).route is False
    assert config("--model", bundled, "--route").route is True
    with pytest.raises(ConfigError):
        config("--no-route", "--route")


def test_a_fracture_heatmap_request_says_who_draws_it(tmp_path, shared_data):
    _, hand = mixed_films(shared_data)
    service = routed_service(tmp_path)
    service.ingest(hand.read_bytes(), hand.name)
    drain_worker(service)
    with service_client(service) as client:
        (item,) = client.get("/api/v1/worklist").json()["items"]
        response = client.get(f"/api/v1/studies/{item['id']}/heatmaps/Fracture.png")
    assert response.status_code == 404 and "--route --explain" in response.text
    service.stop()


def test_a_chest_whose_header_says_hand_is_routed_by_its_pixels(tmp_path, shared_data):
    """A routed service takes a DICOM whose header says HAND (the single-model one refused it:
    test_serve_hospital) and lets the image decide, saying so on the study."""
    import pydicom

    source = shared_data / "dicom" / "siim_cr_chest_pa.dcm"
    if not source.is_file():
        skip_missing(f"{source} is absent")
    ds = pydicom.dcmread(source)
    ds.BodyPartExamined = "HAND"
    path = tmp_path / "hand-header.dcm"
    ds.save_as(path)
    service = routed_service(tmp_path)
    service.ingest(path.read_bytes(), path.name)
    drain_worker(service)
    with service_client(service) as client:
        (item,) = client.get("/api/v1/worklist").json()["items"]
    assert (item["state"], item["routed_body_part"], item["model"]) == ("done", "CHEST", "chest")
    assert any("BodyPartExamined says HAND" in w for w in item["warnings"]), item["warnings"]
    service.stop()


def test_a_study_a_routed_model_scored_survives_routing_turned_off(tmp_path, shared_data):
    """Restarted with --no-route, the service settles a study holding a fracture-scored image
    (a chest image joined it) without crashing: the chest image scores it, the other is named."""
    from xraytriage.serving.config import ServeConfig
    from xraytriage.serving.service import TriageService

    chest, hand = mixed_films(shared_data)
    service = routed_service(tmp_path)
    study_id = service.ingest(hand.read_bytes(), hand.name, study_key="visit-1").study_id
    drain_worker(service)
    assert service.repo.study(study_id).model == "fracture"
    service.stop()
    plain = TriageService(ServeConfig(data_dir=tmp_path / "data", workers=0, heatmaps=False))
    assert plain.ingest(chest.read_bytes(), chest.name, study_key="visit-1").study_id == study_id
    drain_worker(plain)
    study = plain.repo.study(study_id)
    assert (study.state, study.model) == ("done", "")
    assert f"{hand.name}: scored by the fracture model, not in this study's score" in study.warnings
    assert "Fracture" not in study.probabilities and "Effusion" in study.probabilities
    plain.stop()
