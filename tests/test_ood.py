"""The out-of-distribution score: features from the network itself (torch and ONNX alike), the
reference statistics, the worklist's ood_score and warning, and the age range of the scope."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xraytriage.errors import ConfigError
from xraytriage.models import Checkpoint, ModelConfig, build_model, load_checkpoint
from xraytriage.models.features import WithFeatures
from xraytriage.models.inference import OnnxPredictor, TorchPredictor
from xraytriage.models.ood import OodReference, fit_reference, ood_warning
from xraytriage.preprocess import PreprocessContract
from xraytriage.scope import age_in_years, age_warning


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAYTRIAGE_CACHE", str(tmp_path / "cache"))


def test_reference_warns_about_the_set_share_of_its_own_images_and_far_ones():
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    mixing = np.diag(np.linspace(1, 4, 16)) @ rotation  # SDs 1..4 in a rotated basis
    train = rng.normal(size=(2000, 16)) @ mixing  # correlated features, as a network's are
    reference = fit_reference(train, percentile=99)
    assert np.mean(reference.scores(train) >= 1) == pytest.approx(0.01, abs=0.002)
    fresh = rng.normal(size=(2000, 16)) @ mixing  # same population, unseen
    assert np.mean(reference.scores(fresh) >= 1) < 0.03
    u, variances, _ = np.linalg.svd(np.cov(train.T))
    wide, narrow = u[:, 0], u[:, -1]
    step = 8 * np.sqrt(variances[-1])  # 8 SD along the direction the training images vary least in
    shifted = fresh + step * narrow
    assert np.mean(reference.scores(shifted) >= 1) > 0.9
    # Mahalanobis, not Euclidean: the same move along the widest direction is hardly noticed
    assert np.mean(reference.scores(fresh + step * wide) >= 1) < 0.15
    again = OodReference.from_dict(reference.to_dict())
    np.testing.assert_allclose(again.scores(shifted[:5]), reference.scores(shifted[:5]), rtol=1e-6)


def test_reference_rejects_bad_input():
    with pytest.raises(ConfigError, match="at least"):
        fit_reference(np.zeros((10, 4)))
    reference = fit_reference(np.random.default_rng(0).normal(size=(200, 4)))
    with pytest.raises(ConfigError, match="4 feature dimensions"):
        reference.scores(np.zeros((2, 5)))
    assert ood_warning(None) is None and ood_warning(0.99) is None
    assert "unlike the training images" in ood_warning(1.5)


@pytest.mark.parametrize("backbone", ["resnet10", "densenet121", "vgg_like"])
def test_features_are_the_classifier_input(backbone):
    net = build_model(ModelConfig(backbone=backbone, num_classes=3, width=0.25, dropout=0.2)).eval()
    x = torch.randn(2, 1, 64, 64)
    logits, features = WithFeatures(net)(x)
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.testing.assert_close(linear(features), logits)
    torch.testing.assert_close(logits, net(x))  # the hook leaves the network as it was
    assert not net._forward_pre_hooks and not linear._forward_pre_hooks


def _checkpoint() -> Checkpoint:
    torch.manual_seed(3)
    cfg = ModelConfig(backbone="resnet10", num_classes=3, width=0.25)
    net = build_model(cfg).eval()
    return Checkpoint(
        model=cfg,
        label_names=["Effusion", "Pneumothorax", "No Finding"],
        preprocess=PreprocessContract(size=32),
        state_dict={k: v.clone() for k, v in net.state_dict().items()},
    )


def test_onnx_export_gives_the_same_features_and_old_exports_are_redone(tmp_path):
    import onnx

    from xraytriage.models.onnx_export import export_onnx, onnx_matches

    checkpoint = _checkpoint()
    path = export_onnx(checkpoint, tmp_path / "m.onnx")
    batch = np.random.default_rng(0).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    t_logits, t_features = TorchPredictor(checkpoint).predict_with_features(batch)
    o_logits, o_features = OnnxPredictor(path, checkpoint=checkpoint).predict_with_features(batch)
    np.testing.assert_allclose(o_logits, t_logits, atol=1e-4)
    np.testing.assert_allclose(o_features, t_features, atol=1e-4)
    assert onnx_matches(path, checkpoint)
    # an export from before the features output (no "outputs" metadata) no longer matches
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != "xraytriage.outputs"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(path))
    assert not onnx_matches(path, checkpoint)


def test_checkpoint_keeps_its_reference_and_an_older_one_has_none(tmp_path):
    checkpoint = _checkpoint()
    assert checkpoint.ood_reference() is None
    reference = fit_reference(np.random.default_rng(0).normal(size=(100, 64)))
    checkpoint.ood = reference.to_dict()
    loaded = load_checkpoint(checkpoint.save(tmp_path / "c.pt"))
    assert loaded.ood_reference().threshold == pytest.approx(reference.threshold)
    assert loaded.ood_reference().dim == 64


def test_triage_rows_carry_ood_score_on_both_backends(tiny_checkpoint, synthetic_dir, shared_data, tmp_path):
    from xraytriage.cli.site_scoring import score_images
    from xraytriage.triage import TriageEngine, TriageOptions
    from xraytriage.triage.worklist import read_worklist_csv, write_worklist

    train = sorted((synthetic_dir / "images").glob("*.png"))
    checkpoint = Checkpoint.from_dict(tiny_checkpoint.to_dict())
    reference = fit_reference(score_images(checkpoint, train, workers=0).features)
    inputs = [*train[:4], *sorted((shared_data / "nih" / "images").glob("*.png"))[:4]]
    scored = score_images(checkpoint, inputs, workers=0)
    distances = reference.distances(scored.features)
    # the warning line between the inputs' distances: some rows warned, some not
    reference.threshold = float(np.median(distances))
    checkpoint.ood = reference.to_dict()
    expected = {p: d / reference.threshold for p, d in zip(scored.paths, distances, strict=True)}
    scores = {}
    for predictor in (TorchPredictor(checkpoint), OnnxPredictor(checkpoint)):
        engine = TriageEngine(predictor, TriageOptions(workers=0, progress=False))
        result = engine.run(inputs)
        scores[predictor.name] = {r.path: r.ood_score for r in result.rows}
        warned = [row.ood_score >= 1 for row in result.rows]
        assert any(warned) and not all(warned)
        for row, flag in zip(result.rows, warned, strict=True):
            assert flag == ("unlike the training images" in row.warnings)
    for name in ("torch", "onnx"):
        assert scores[name].keys() == expected.keys()
        for path, value in expected.items():
            assert scores[name][path] == pytest.approx(value, rel=1e-3)
    write_worklist(result.rows, tmp_path, checkpoint.label_names)
    written = read_worklist_csv(tmp_path / "worklist.csv")
    assert sorted(r["ood_score"] for r in written) == pytest.approx(sorted(expected.values()), rel=1e-4)


def test_rows_without_a_reference_or_with_errors_have_no_ood_score(tiny_checkpoint, synthetic_dir, tmp_path):
    from xraytriage.triage import TriageEngine, TriageOptions

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    engine = TriageEngine(TorchPredictor(tiny_checkpoint), TriageOptions(workers=0, progress=False))
    rows = engine.run([next((synthetic_dir / "images").glob("*.png")), bad]).rows
    assert [r.ood_score for r in rows] == [None, None]
    assert rows[1].to_dict()["ood_score"] is None


@pytest.mark.parametrize(
    ("value", "years"),
    [
        ("045Y", 45.0),
        ("006M", 0.5),
        ("002W", 14 / 365.25),
        ("003D", 3 / 365.25),
        ("45", 45.0),
        ("", None),
        ("abc", None),
    ],
)
def test_dicom_age_strings(value, years):
    assert age_in_years(value) == (None if years is None else pytest.approx(years))


def test_age_outside_the_scope_is_warned_about():
    scope = {"body_parts": ["CHEST"], "views": ["PA", "AP"], "age_years": [9, 90]}
    assert "patient age 3 y" in age_warning("003Y", scope)
    assert "0.5 y" in age_warning("006M", scope)
    assert age_warning("045Y", scope) is None
    assert age_warning("", scope) is None  # no age in the header: nothing to judge
    assert age_warning("003Y", {"body_parts": ["CHEST"]}) is None  # no age range: none checked


def test_a_child_dicom_is_scored_with_a_warning(tiny_checkpoint, shared_data, tmp_path):
    import pydicom

    from xraytriage.triage import TriageEngine, TriageOptions

    ds = pydicom.dcmread(shared_data / "dicom" / "siim_cr_chest_pa.dcm")
    files = []
    for age in ("004Y", "050Y"):
        ds.PatientAge = age
        ds.StudyInstanceUID = pydicom.uid.generate_uid()
        files.append(tmp_path / f"age-{age}.dcm")
        ds.save_as(files[-1])
    checkpoint = Checkpoint.from_dict(tiny_checkpoint.to_dict())
    checkpoint.scope = {**checkpoint.scope, "age_years": [9, 90]}
    engine = TriageEngine(TorchPredictor(checkpoint), TriageOptions(workers=0, progress=False))
    rows = {r.path: r for r in engine.run(files).rows}
    child, adult = rows[str(files[0])], rows[str(files[1])]
    assert child.ok and child.abnormal is not None  # scored, never dropped
    assert "PatientAge 004Y" in child.warnings
    assert "PatientAge" not in adult.warnings


def test_bundled_model_ships_its_ood_reference_and_training_ages(shared_data):
    """The bundled model's reference separates real pediatric films (another hospital,
    children) from NIH films; the NIH ones are its training images (so this shows the shipped
    reference works; docs/deploying.md has the full measurement)."""
    from xraytriage.cli.common import default_model_path
    from xraytriage.cli.site_scoring import score_images
    from xraytriage.stats import roc_auc

    checkpoint = load_checkpoint(default_model_path())
    reference = checkpoint.ood_reference()
    assert reference is not None and reference.images >= len(checkpoint.training_images)
    low, high = checkpoint.scope["age_years"]
    assert 0 < low < 18 < 60 < high  # a child of 4 is outside, an adult inside
    assert age_warning("004Y", checkpoint) and age_warning("045Y", checkpoint) is None
    rng = np.random.default_rng(0)
    children = sorted((shared_data / "pediatric").rglob("*.jpeg")) + sorted(
        (shared_data / "pediatric").rglob("*.jpg")
    )
    adults = sorted((shared_data / "nih" / "images-c").glob("*.png"))
    picked = [*rng.choice(children, 30, replace=False), *rng.choice(adults, 30, replace=False)]
    scored = score_images(checkpoint, picked, workers=0)
    assert len(scored.paths) == 60
    scores = reference.scores(scored.features)
    is_child = np.array(["pediatric" in p for p in scored.paths])
    assert roc_auc(is_child, scores) >= 0.85
    assert np.mean(scores[~is_child] >= 1) <= 0.1
