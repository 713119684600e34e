"""Published models' operating points: what each published threshold cuts, the outputs without
one, the second (ppv80) point, and torch <= 1.2 module pickles. Network traffic goes to a
loopback server only; the networks are small torchvision-layout re-implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from published_support import (
    XRV_LABELS,
    DenseNet,
    FileServer,
    ResNet50,
    module_pickle_bytes,
    randomise,
    registry_entry,
    state_dict_bytes,
    torch12_module_pickle_bytes,
    write_registry,
)
from xraytriage.cli.main import main
from xraytriage.errors import ConfigError, UnsafePickleError, XRayTriageError
from xraytriage.labels import canonical_label
from xraytriage.models import load_checkpoint
from xraytriage.models.published import (
    OPERATING_POINTS,
    fetch_published,
    get_model,
    load_registry,
    model_dir,
    read_manifest,
)
from xraytriage.models.safe_pickle import ModuleState, load_weights_file

XRV_INPUT = {"size": 64, "channels": 1, "resize": "square_crop", "resample": "gaussian", "intensity": "none",
             "mean": 0.5, "std": 1 / 2048}  # fmt: skip
SIGMOID_1 = 1 / (1 + math.exp(-1))


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def _logit(t: float) -> float:
    return math.log(t / (1 - t))


# --- the shipped registry, read against the publishers' code ---------------------------------
def test_resnet50_thresholds_are_read_as_logit_of_the_published_values():
    """torchxrayvision's calibration script applied the sigmoid twice for resnet50-res512-all:
    each published value t is sigmoid(p*), so the cut-off on the probability is logit(t)."""
    entry = load_registry()["resnet50-res512-all"]
    assert entry.threshold_space == "sigmoid_of_probability"
    published = [t for t in (*entry.op_thresholds, *entry.ppv80_thresholds) if t is not None]
    assert all(0.5 <= t <= SIGMOID_1 for t in published)  # what sigmoid(p), p in [0, 1], can give
    assert max(entry.ppv80_thresholds, key=lambda t: t or 0) == pytest.approx(SIGMOID_1, abs=1e-6)
    points = entry.operating_points()
    for name, values in (("youden", entry.op_thresholds), ("ppv80", entry.ppv80_thresholds)):
        for t, cut in zip(values, points[name], strict=True):
            assert (t is None) == (cut is None)
            if t is not None:
                assert cut == pytest.approx(_logit(t), abs=1e-12) and 0 <= cut <= 1
                assert _sigmoid(cut) == pytest.approx(t, abs=1e-9)
    youden = [c for c in points["youden"] if c is not None]
    assert max(youden) < 0.2  # taken as probabilities (0.50-0.54) they would flag almost nothing
    for low, high in zip(points["youden"], points["ppv80"], strict=True):
        assert (low is None and high is None) or low < high  # the high-precision point is stricter


def test_outputs_without_a_published_threshold_are_not_converted():
    registry = load_registry()
    resnet = registry["resnet50-res512-all"]
    dropped = [resnet.labels[i] for i in range(len(resnet.labels)) if i not in resnet.valid_outputs]
    assert dropped == ["Lung Lesion", "Enlarged Cardiomediastinum"]
    assert all(resnet.dropped_reason(resnet.labels.index(x)) == "no threshold published" for x in dropped)
    for entry in registry.values():
        for i, label in enumerate(entry.labels):
            has_threshold = entry.op_thresholds is None or entry.op_thresholds[i] is not None
            assert (i in entry.valid_outputs) == bool(label.strip() and has_threshold), (entry.name, label)


def test_densenet_thresholds_are_probabilities_and_ppv80_is_carried_where_published():
    registry = load_registry()
    with_ppv80 = sorted(name for name, e in registry.items() if e.ppv80_thresholds is not None)
    assert with_ppv80 == ["densenet121-res224-all", "resnet50-res512-all"]
    for name, entry in registry.items():
        if not name.startswith("densenet121-res224"):
            continue
        assert entry.threshold_space == "probability"
        values = [t for t in entry.op_thresholds if t is not None]
        assert values and max(values) < 0.5  # a twice-applied sigmoid gives >= 0.5
        assert entry.operating_points()["youden"] == list(entry.op_thresholds)  # verbatim
        assert "thresholds" in entry.sources and "max(tpr - fpr)" in entry.sources["thresholds"]
    dn = registry["densenet121-res224-all"]
    assert all(p > y for y, p in zip(dn.op_thresholds, dn.ppv80_thresholds, strict=True))
    assert set(OPERATING_POINTS) == {"youden", "ppv80"}


def test_chexnet_is_cited_from_the_publishers_master():
    chexnet = load_registry()["chexnet-arnoweng"]
    cited = " ".join(chexnet.sources.values())
    assert "63c159f973ecaef5c6de85597de60d6729fc87b4" in cited and "(master)" in cited
    assert "288f562" not in cited and "modules/densenet.py" not in cited  # an unmerged PR's files


def test_the_cli_offers_every_operating_point():
    from xraytriage.cli.models import OPERATING_POINT_CHOICES

    assert set(OPERATING_POINT_CHOICES) == set(OPERATING_POINTS)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"threshold_space": "sigmoid_of_probability"}, r"op_thresholds value 0\.1 is not a cut-off"),
        ({"threshold_space": "logits"}, "threshold_space must be one of"),
        ({"ppv80_thresholds": [0.9, 0.9]}, "2 ppv80_thresholds for 6 labels"),
        ({"ppv80_thresholds": [1.5] * 6}, r"ppv80_thresholds value 1\.5"),
    ],
)
def test_registry_refuses_thresholds_that_do_not_fit(tmp_path, change, message):
    entry = registry_entry("x", "https://e/w.pt", "state_dict", "resnet50", XRV_LABELS, XRV_INPUT, **change)
    with pytest.raises(ConfigError, match=rf"model x: {message}"):
        load_registry(write_registry(tmp_path / "r.json", [entry]))


# --- conversion: the decisions the publisher calibrated ---------------------------------------
@pytest.fixture(scope="module")
def resnet():
    return randomise(ResNet50(len(XRV_LABELS)), 2)


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


def _batch(n: int, seed: int) -> torch.Tensor:
    from xraytriage.preprocess import PreprocessContract

    contract = PreprocessContract.from_dict(dict(XRV_INPUT))
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 64, 64), dtype=np.uint8)
    return torch.from_numpy(contract.normalize(pixels))


def _double_sigmoid_entry(server, tmp_path, net, name="xrv-res"):
    """A resnet50-res512-all-like entry: values calibrated the publisher's way (sigmoid applied to
    the sigmoid output, Youden / precision points taken there), one labelled output without any."""
    with torch.no_grad():
        p = torch.sigmoid(net.logits(_batch(32, 1))).double().numpy()
    twice = _sigmoid(p)  # model_calibrate.py: 1/(1+exp(-x)) on get_model(apply_sigmoid=True) outputs
    labels = ["Atelectasis", "Consolidation", "", "Pneumothorax", "Edema", "Lung Lesion"]
    youden = [None if i in (2, 5) else float(np.quantile(twice[:, i], 0.5)) for i in range(6)]
    ppv80 = [None if i in (2, 5) else float(np.quantile(twice[:, i], 0.9)) for i in range(6)]
    server.files[f"/{name}/weights.pt"] = state_dict_bytes(net)
    entry = registry_entry(
        name, f"{server.url}/{name}/weights.pt", "state_dict", "resnet50", labels, XRV_INPUT,
        op_thresholds=youden, ppv80_thresholds=ppv80, threshold_space="sigmoid_of_probability",
    )  # fmt: skip
    registry = write_registry(tmp_path / "registry.json", [entry])
    return get_model(name, load_registry(registry)), registry, youden, ppv80


def test_converted_thresholds_decide_as_the_publisher_calibrated(server, tmp_path, resnet):
    entry, _, youden, _ = _double_sigmoid_entry(server, tmp_path, resnet)
    ckpt = load_checkpoint(fetch_published(entry, cache=tmp_path / "cache", progress=False))
    valid = [0, 1, 3, 4]  # "" (not trained) and Lung Lesion (no threshold) are gone
    assert ckpt.label_names == [canonical_label(entry.labels[i]) for i in valid]
    assert ckpt.train_config["imported_from"]["valid_outputs"] == valid
    assert ckpt.train_config["imported_from"]["operating_point"] == "youden"
    x = _batch(24, 2)  # images other than the ones the cut-offs were set on
    with torch.no_grad():
        logits = ckpt.build_model()(x).numpy()
        source = resnet.logits(x)[:, valid].double().numpy()
    np.testing.assert_allclose(logits, source, rtol=1e-5, atol=1e-5)
    probs = ckpt.probabilities(logits)
    ours = probs >= np.array([ckpt.threshold(n) for n in ckpt.label_names])
    publisher = _sigmoid(_sigmoid(source)) >= np.array([youden[i] for i in valid])
    np.testing.assert_array_equal(ours, publisher)
    assert 0.2 < ours.mean() < 0.8  # a real decision, not all or nothing
    naive = probs >= np.array([youden[i] for i in valid])  # the published values taken as is
    assert (naive != publisher).mean() > 0.15  # ... decide otherwise: the test tells them apart
    # P(abnormal) is the noisy-OR of the converted findings only
    expected = 1 - np.prod(1 - probs.astype(np.float64), axis=1)
    np.testing.assert_allclose(ckpt.abnormal_probability(probs), expected, rtol=1e-5)


def test_ppv80_is_selectable_and_reconverts_without_a_download(server, tmp_path, resnet, capsys):
    _, registry, youden, ppv80 = _double_sigmoid_entry(server, tmp_path, resnet, name="pick")
    cache = tmp_path / "cache"
    base = ["models", "fetch", "pick", "--registry", str(registry), "--cache", str(cache), "--no-progress"]
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "calibrate --model pick --site-normals" in out and "before clinical use" in out
    assert "Lung Lesion (no threshold published)" in out
    path = model_dir("pick", cache) / "model.pt"
    first = load_checkpoint(path)
    assert first.thresholds["Atelectasis"] == pytest.approx(_logit(youden[0]))
    assert main([*base, "--operating-point", "ppv80"]) == 0
    assert "'ppv80'" in capsys.readouterr().out
    second = load_checkpoint(path)
    for label, i in (("Atelectasis", 0), ("Consolidation", 1), ("Pneumothorax", 3), ("Edema", 4)):
        assert second.thresholds[label] == pytest.approx(_logit(ppv80[i]))
        assert second.thresholds[label] > first.thresholds[label]
    points = second.train_config["imported_from"]["operating_points"]
    assert set(points) == {"youden", "ppv80"} and points["youden"] == first.thresholds
    assert read_manifest(model_dir("pick", cache))["operating_point"] == "ppv80"
    assert len(server.requests) == 1  # downloaded once, converted twice


def test_a_point_the_publisher_did_not_publish_is_a_clear_error(server, tmp_path, capsys):
    net = randomise(DenseNet(len(XRV_LABELS)), 4)
    server.files["/plain/weights.pt"] = module_pickle_bytes(net, legacy=False)
    entry = registry_entry("plain", f"{server.url}/plain/weights.pt", "module_pickle", "densenet121",
                           XRV_LABELS, XRV_INPUT)  # fmt: skip
    registry = write_registry(tmp_path / "r.json", [entry])
    args = ["models", "fetch", "plain", "--registry", str(registry), "--cache", str(tmp_path / "c"),
            "--no-progress", "--operating-point", "ppv80"]  # fmt: skip
    assert main(args) == 2
    assert "plain: its publisher gives no 'ppv80' thresholds (published: youden)" in capsys.readouterr().err
    assert server.requests == []  # refused before any download


# --- torch <= 1.2 module pickles ---------------------------------------------------------------
def test_a_module_pickled_by_torch_1_2_loads_as_data(tmp_path, monkeypatch):
    """Old whole-module files carry ``_backend`` per module, pickled as a call of
    torch.nn.backends.thnn._get_thnn_function_backend(): allowed, answered with None."""
    from xraytriage.models import safe_pickle
    from xraytriage.models.import_weights import convert_torchvision_state

    net = randomise(DenseNet(len(XRV_LABELS)), 5)
    path = tmp_path / "old.pt"
    path.write_bytes(torch12_module_pickle_bytes(net))
    data = path.read_bytes()
    assert b"torch.nn.backends.thnn" in data and b"_get_thnn_function_backend" in data
    assert not data.startswith(b"PK")  # the legacy layout, not a zip archive
    loaded = load_weights_file(path)
    assert isinstance(loaded, ModuleState) and loaded.state["_backend"] is None
    assert "_non_persistent_buffers_set" not in loaded.state  # as torch 1.2 wrote it
    cfg, state = convert_torchvision_state(loaded.state_dict(), "densenet121", str(path))
    from xraytriage.models.factory import build_model

    model = build_model(cfg)
    model.load_state_dict(state)
    x = _batch(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), net.logits(x), rtol=1e-5, atol=1e-5)
    # the entry is what lets it through: without it the same file is refused, naming the call
    monkeypatch.delitem(safe_pickle._FUNCTIONS, ("torch.nn.backends.thnn", "_get_thnn_function_backend"))
    with pytest.raises(UnsafePickleError, match=r"old\.pt: refused.*_get_thnn_function_backend"):
        load_weights_file(path)


def test_only_the_backend_marker_of_that_module_is_allowed(tmp_path):
    """(Raw protocol-2 pickles: GLOBAL, arguments, REDUCE; torch 2 no longer has the class.)"""
    other = tmp_path / "other.pt"
    other.write_bytes(b"\x80\x02ctorch.nn.backends.thnn\nTHNNFunctionBackend\n)R.")
    with pytest.raises(UnsafePickleError, match=r"other\.pt: refused.*thnn\.THNNFunctionBackend"):
        load_weights_file(other)
    # the marker takes no arguments: a call with one is not a weights file
    called = tmp_path / "args.pt"
    called.write_bytes(
        b"\x80\x02ctorch.nn.backends.thnn\n_get_thnn_function_backend\nX\x01\x00\x00\x00x\x85R."
    )
    with pytest.raises(XRayTriageError, match=r"args\.pt: not a readable torch weights file"):
        load_weights_file(called)
