"""Published models: the registry, fetch (verify, resume, refuse), safe loading, conversion,
and ``--model NAME`` in the commands. All network traffic goes to a loopback server."""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from published_support import (
    CHEXNET_LABELS,
    XRV_LABELS,
    CheXNetWrapper,
    DenseNet,
    FileServer,
    ResNet50,
    chexnet_tar_bytes,
    module_pickle_bytes,
    randomise,
    registry_entry,
    state_dict_bytes,
    write_registry,
)
from xraytriage.cli.main import main
from xraytriage.errors import XRayTriageError
from xraytriage.labels import canonical_label
from xraytriage.models import load_checkpoint
from xraytriage.models.fetch import ChecksumError, DownloadError
from xraytriage.models.published import (
    CHECKPOINT_NAME,
    fetch_published,
    get_model,
    load_model,
    load_registry,
    model_dir,
    read_manifest,
)
from xraytriage.models.safe_pickle import UnsafePickleError, load_weights_file

XRV_INPUT = {"size": 64, "channels": 1, "resize": "square_crop", "resample": "gaussian", "intensity": "none",
             "mean": 0.5, "std": 1 / 2048}  # fmt: skip
CHEXNET_INPUT = {"size": 64, "channels": 3, "resize": "resize_crop", "resize_to": 73, "resample": "bilinear",
                 "intensity": "none", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # fmt: skip


@pytest.fixture(scope="module")
def sources():
    """The source networks and their files, built once."""
    xrv = randomise(DenseNet(len(XRV_LABELS)), 1)
    resnet = randomise(ResNet50(len(XRV_LABELS)), 2)
    chexnet = randomise(CheXNetWrapper(len(CHEXNET_LABELS)), 3)
    return {
        "xrv-zip": (xrv, module_pickle_bytes(xrv, legacy=False), "module_pickle", "densenet121", XRV_LABELS, XRV_INPUT),
        "xrv-legacy": (xrv, module_pickle_bytes(xrv, legacy=True), "module_pickle", "densenet121", XRV_LABELS, XRV_INPUT),
        "xrv-resnet": (resnet, state_dict_bytes(resnet), "state_dict", "resnet50", XRV_LABELS, XRV_INPUT),
        "chexnet": (chexnet, chexnet_tar_bytes(chexnet), "checkpoint_dict", "densenet121", CHEXNET_LABELS, CHEXNET_INPUT),
    }  # fmt: skip


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


def _serve(server, tmp_path, sources, key, name=None, **extra):
    """Put ``key``'s file on the server and a registry entry for it in a registry file."""
    _, data, fmt, arch, labels, input_ = sources[key]
    name = name or key
    server.files[f"/{name}/weights.pt"] = data
    entry = registry_entry(name, f"{server.url}/{name}/weights.pt", fmt, arch, labels, input_, **extra)
    registry = write_registry(tmp_path / f"registry-{name}.json", [entry])
    return get_model(name, load_registry(registry)), registry


# --- the shipped registry -------------------------------------------------------------------
def test_registry_lists_the_publishers_models():
    registry = load_registry()
    for key in ("all", "nih", "pc", "chex", "rsna", "mimic_nb", "mimic_ch"):
        entry = registry[f"densenet121-res224-{key}"]
        assert entry.architecture == "densenet121" and entry.input.size == 224 and entry.input.channels == 1
        assert entry.url.startswith("https://github.com/mlmed/torchxrayvision/releases/download/v1/")
        assert entry.format == "module_pickle" and len(entry.labels) == 18
        assert entry.input.resize == "square_crop" and entry.input.resample == "gaussian"
        ends = entry.input.normalize(np.array([[[0, 255]]], np.uint8))[0, 0, 0]
        np.testing.assert_allclose(ends, [-1024, 1024])
        # an output without a label has no threshold; every labelled one of these has one
        for label, threshold in zip(entry.labels, entry.op_thresholds, strict=True):
            assert (threshold is None) == (not label), (entry.name, label)
    assert registry["densenet121-res224-rsna"].valid_outputs == [8, 16]
    resnet = registry["resnet50-res512-all"]
    assert resnet.architecture == "resnet50" and resnet.input.size == 512 and resnet.format == "state_dict"
    chexnet = [e for e in registry.values() if e.name.startswith("chexnet")]
    assert chexnet and chexnet[0].input.channels == 3 and len(chexnet[0].labels) == 14
    assert chexnet[0].input.resize == "resize_crop" and chexnet[0].input.resize_to == 256
    for entry in registry.values():
        assert (
            entry.licence
            and entry.citation
            and entry.sources.get("weights")
            and entry.sources.get("preprocessing")
        )


def test_models_list_shows_every_entry_with_source_and_licence(capsys):
    assert main(["models", "list", "--wide"]) == 0
    out = capsys.readouterr().out
    for entry in load_registry().values():
        assert entry.name in out and entry.url in out and entry.licence in out


def test_registry_errors_name_the_file_and_entry(tmp_path):
    from xraytriage.errors import ConfigError

    bad = registry_entry("x", "ftp://example/w.pt", "state_dict", "resnet50", ["A"], XRV_INPUT)
    with pytest.raises(ConfigError, match=r"registry\.json: model x: url must be http"):
        load_registry(write_registry(tmp_path / "registry.json", [bad]))
    bad = registry_entry("y", "https://e/w.pt", "state_dict", "vit", ["A"], XRV_INPUT)
    with pytest.raises(ConfigError, match="model y: architecture"):
        load_registry(write_registry(tmp_path / "registry.json", [bad]))


# --- fetch + convert, per published format --------------------------------------------------
@pytest.mark.parametrize("key", ["xrv-zip", "xrv-legacy", "xrv-resnet", "chexnet"])
def test_fetch_converts_each_format_to_the_same_function(server, tmp_path, sources, key):
    net, _, _, _, labels, _ = sources[key]
    entry, _ = _serve(server, tmp_path, sources, key)
    path = fetch_published(entry, cache=tmp_path / "cache", progress=False)
    assert "torchxrayvision" not in sys.modules  # the publisher's classes were never imported
    ckpt = load_checkpoint(path)
    valid = [i for i, label in enumerate(labels) if label]
    assert ckpt.label_names == [canonical_label(labels[i]) for i in valid]
    assert ckpt.preprocess.to_dict() == entry.input.to_dict()
    assert ckpt.train_config["imported_from"]["valid_outputs"] == valid
    assert ckpt.train_config["imported_from"]["licence"] == entry.licence
    assert ckpt.thresholds == {canonical_label(labels[i]): pytest.approx(0.1 + 0.01 * i) for i in valid}
    x = torch.from_numpy(
        ckpt.preprocess.normalize(np.random.default_rng(5).integers(0, 256, (2, 64, 64), dtype=np.uint8))
    )
    with torch.no_grad():
        expected = net.logits(x)[:, valid]
        got = ckpt.build_model()(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if key == "chexnet":  # the publisher's own output is the sigmoid
        probs = ckpt.probabilities(got.numpy())
        np.testing.assert_allclose(probs, net(x)[:, valid].detach().numpy(), atol=1e-5)
    manifest = read_manifest(model_dir(entry.name, tmp_path / "cache"))
    raw = model_dir(entry.name, tmp_path / "cache") / "weights.pt"
    assert manifest["sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert manifest["sha256_source"] == "recorded at first download"


def test_a_second_fetch_reuses_and_reverifies(server, tmp_path, sources):
    entry, _ = _serve(server, tmp_path, sources, "xrv-resnet")
    path = fetch_published(entry, cache=tmp_path / "cache", progress=False)
    stamp = path.stat().st_mtime_ns
    assert fetch_published(entry, cache=tmp_path / "cache", progress=False) == path
    assert len(server.requests) == 1 and path.stat().st_mtime_ns == stamp  # no download, no reconversion


def test_published_checksum_mismatch_is_refused_and_removed(server, tmp_path, sources):
    data = sources["xrv-resnet"][1]
    entry, _ = _serve(server, tmp_path, sources, "xrv-resnet", sha256="0" * 64)
    with pytest.raises(ChecksumError, match="refused and removed"):
        fetch_published(entry, cache=tmp_path / "cache", progress=False)
    assert not any(model_dir(entry.name, tmp_path / "cache").glob("weights.pt*"))
    good, _ = _serve(server, tmp_path, sources, "xrv-resnet", sha256=hashlib.sha256(data).hexdigest())
    fetch_published(good, cache=tmp_path / "cache", progress=False)
    manifest = read_manifest(model_dir(good.name, tmp_path / "cache"))
    assert manifest["sha256_source"] == "published"


def test_recorded_checksum_is_verified_on_every_later_use(server, tmp_path, sources, monkeypatch):
    entry, _ = _serve(server, tmp_path, sources, "xrv-zip", name="tofu")
    cache = tmp_path / "cache"
    fetch_published(entry, cache=cache, progress=False)
    raw = model_dir("tofu", cache) / "weights.pt"
    corrupted = bytearray(raw.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    raw.write_bytes(bytes(corrupted))
    with pytest.raises(ChecksumError, match="refused and removed"):
        fetch_published(entry, cache=cache, progress=False)
    assert not raw.exists()
    fetch_published(entry, cache=cache, progress=False)  # downloaded anew, verified against the record
    assert raw.is_file()
    # the converted checkpoint too, when a command uses it by name
    monkeypatch.setenv("XRAYTRIAGE_CACHE", str(cache))
    assert load_model("tofu").name == "tofu"
    converted = model_dir("tofu", cache) / CHECKPOINT_NAME
    converted.write_bytes(converted.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ChecksumError, match="converted checkpoint of tofu"):
        load_model("tofu")
    assert not converted.exists()


def test_a_cut_download_resumes_where_it_stopped(server, tmp_path, sources):
    data = sources["xrv-legacy"][1]
    entry, _ = _serve(server, tmp_path, sources, "xrv-legacy", name="cut")
    server.cut["/cut/weights.pt"] = len(data) // 3
    with pytest.raises(DownloadError, match="run the command again to resume"):
        fetch_published(entry, cache=tmp_path / "cache", progress=False)
    part = model_dir("cut", tmp_path / "cache") / "weights.pt.part"
    assert part.stat().st_size == len(data) // 3
    path = fetch_published(entry, cache=tmp_path / "cache", progress=False)
    assert server.requests[-1] == ("/cut/weights.pt", f"bytes={len(data) // 3}-")
    raw = model_dir("cut", tmp_path / "cache") / "weights.pt"
    assert raw.read_bytes() == data and not part.exists() and path.is_file()


def test_offline_is_a_clear_error_naming_the_url(tmp_path, sources):
    with FileServer() as srv:
        url = srv.url  # a port nobody listens on once the server is gone
    entry = registry_entry("off", f"{url}/w.pt", "state_dict", "resnet50", ["A"], XRV_INPUT)
    entry = get_model("off", load_registry(write_registry(tmp_path / "r.json", [entry])))
    with pytest.raises(DownloadError) as info:
        fetch_published(entry, cache=tmp_path / "cache", progress=False)
    assert f"{url}/w.pt" in str(info.value) and "internet" in str(info.value)
    assert (
        main(["models", "fetch", "off", "--registry", str(tmp_path / "r.json"), "--cache", str(tmp_path)])
        == 2
    )


# --- safe loading ---------------------------------------------------------------------------
class _RunsCode:
    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("how", ["torch-zip", "torch-legacy", "raw-pickle"])
@pytest.mark.parametrize("func", [os.system, eval])
def test_a_pickle_that_runs_code_is_refused(server, tmp_path, how, func):
    marker = tmp_path / "pwned"
    payload = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').close()"
    evil = {"state_dict": {"w": torch.zeros(2)}, "x": _RunsCode(func, payload)}
    path = tmp_path / "evil.pt"
    if how == "raw-pickle":  # (pickle.dumps of a tensor names torch's own unsafe loader: keep it out)
        path.write_bytes(pickle.dumps({"x": evil["x"]}, protocol=2))
    else:
        torch.save(evil, path, _use_new_zipfile_serialization=how == "torch-zip")
    name = "system" if func is os.system else "eval"
    with pytest.raises(UnsafePickleError, match=rf"evil\.pt: refused to load: .*{name}"):
        load_weights_file(path)
    assert not marker.exists()
    # the same through fetch: refused, nothing converted
    server.files["/evil.pt"] = path.read_bytes()
    entry = registry_entry("evil", f"{server.url}/evil.pt", "module_pickle", "densenet121", ["A"], XRV_INPUT)
    entry = get_model("evil", load_registry(write_registry(tmp_path / "r.json", [entry])))
    with pytest.raises(UnsafePickleError):
        fetch_published(entry, cache=tmp_path / "cache", progress=False)
    assert not marker.exists() and not (model_dir("evil", tmp_path / "cache") / CHECKPOINT_NAME).exists()


def test_an_unknown_module_class_is_refused(tmp_path):
    import collections

    class Stranger(torch.nn.Module):
        pass

    Stranger.__module__, Stranger.__qualname__ = "collections", "Stranger"
    collections.Stranger = Stranger
    try:
        torch.save(Stranger(), tmp_path / "m.pt")
    finally:
        del collections.Stranger
    with pytest.raises(UnsafePickleError, match=r"collections\.Stranger"):
        load_weights_file(tmp_path / "m.pt")


# --- using a fetched model by name ------------------------------------------------------------
@pytest.fixture
def fetched(server, tmp_path, sources, monkeypatch):
    """A converted torchxrayvision-like model in a temporary cache, used by name."""
    _, registry = _serve(server, tmp_path, sources, "xrv-zip", name="tiny-xrv")
    cache = tmp_path / "cache"
    assert main(["models", "fetch", "tiny-xrv", "--registry", str(registry), "--cache", str(cache),
                 "--no-progress"]) == 0  # fmt: skip
    monkeypatch.setenv("XRAYTRIAGE_CACHE", str(cache))
    return cache


def test_model_name_works_where_a_checkpoint_path_does(fetched, tmp_path, shared_data):
    from xraytriage.cli.common import resolve_model_path

    assert resolve_model_path(Path("tiny-xrv")) == model_dir("tiny-xrv", fetched) / CHECKPOINT_NAME
    images = sorted((shared_data / "nih" / "images").glob("*.png"))[:3]
    out = tmp_path / "out"
    args = ["triage", *map(str, images), "--model", "tiny-xrv", "--output", str(out), "--backend", "torch"]
    assert main([*args, "--no-progress"]) == 0
    worklist = (out / "worklist.csv").read_text()
    assert all(p.name in worklist for p in images)
    with pytest.raises(
        XRayTriageError, match=r"no-such-model: checkpoint file or model name not found.*tiny-xrv"
    ):
        load_model("no-such-model")
    with pytest.raises(XRayTriageError, match=r"not fetched yet.*models fetch densenet121-res224-nih"):
        load_model("densenet121-res224-nih")


@pytest.mark.slow
def test_serve_starts_with_a_fetched_model_name(fetched, tmp_path):
    """(torch backend: the ONNX export of a converted contract is covered in
    test_preprocess_published; exporting here would only slow the start on a busy machine)"""
    import httpx

    from serve_support import running_server

    with running_server(
        tmp_path / "srv", "--model", "tiny-xrv", "--backend", "torch", env={"XRAYTRIAGE_CACHE": str(fetched)}
    ) as srv:
        info = httpx.get(srv.url + "/api/v1/model", timeout=30).json()
    assert info["name"] == "tiny-xrv" and info["file"] == CHECKPOINT_NAME
    assert info["labels"] == [canonical_label(x) for x in XRV_LABELS if x]


@pytest.mark.slow
def test_calibrate_fits_a_fetched_model_to_site_data(fetched, tmp_path, shared_data):
    """The deployment path: a site's labelled images -> the fetched model's predictions ->
    ``calibrate --model NAME`` -> a checkpoint with the site's thresholds."""
    import pandas as pd

    from xraytriage.io import read_radiograph
    from xraytriage.labels import NIH_FINDINGS

    ckpt = load_model("tiny-xrv")
    meta = pd.read_csv(shared_data / "nih" / "meta" / "Data_Entry_2017_v2020.csv.gz")
    images = sorted((shared_data / "nih" / "images").glob("*.png"))[:40]
    rows = meta.set_index("Image Index").loc[[p.name for p in images]]
    batch = np.stack([ckpt.preprocess.to_uint8(read_radiograph(p).pixels) for p in images])
    with torch.no_grad():
        probs = ckpt.probabilities(
            ckpt.build_model()(torch.from_numpy(ckpt.preprocess.normalize(batch))).numpy()
        )
    frame = {"image": [p.name for p in images]}
    for j, name in enumerate(ckpt.label_names):
        assert name in NIH_FINDINGS
        frame[f"prob_{name}"] = probs[:, j]
        frame[name] = [float(name in str(f).split("|")) for f in rows["Finding Labels"]]
    csv = tmp_path / "site_predictions.csv"
    pd.DataFrame(frame).to_csv(csv, index=False)
    out = tmp_path / "site.pt"
    code = main(["calibrate", "--model", "tiny-xrv", "--predictions", str(csv), "--output", str(out),
                 "--operating-point", "youden"])  # fmt: skip
    assert code == 0
    calibrated = load_checkpoint(out)
    assert calibrated.calibration and set(calibrated.thresholds) >= set(ckpt.label_names)
    assert calibrated.train_config["imported_from"]["registry"] == "tiny-xrv"


@pytest.mark.slow
def test_import_weights_reads_a_whole_pickled_module_with_the_publishers_input(tmp_path, sources):
    """``import-weights`` (a local file) uses the same safe loader and the preset's contract."""
    net, data, *_ = sources["xrv-legacy"]
    weights = tmp_path / "xrv.pt"
    weights.write_bytes(data)
    out = tmp_path / "imported.pt"
    labels = ",".join(label or f"unused{i}" for i, label in enumerate(XRV_LABELS))
    args = [
        "import-weights",
        str(weights),
        "--preset",
        "torchxrayvision",
        "--labels",
        labels,
        "--output",
        str(out),
    ]
    assert main(args) == 0
    ckpt = load_checkpoint(out)
    assert ckpt.preprocess.resize == "square_crop" and ckpt.preprocess.resample == "gaussian"
    x = torch.randn(1, 1, 64, 64) * 500
    with torch.no_grad():
        torch.testing.assert_close(ckpt.build_model()(x), net.logits(x), rtol=1e-5, atol=1e-4)
