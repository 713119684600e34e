"""The publishers' input contracts: torchxrayvision ([-1024, 1024], 1 channel, centre square,
skimage resize) and CheXNet (ImageNet mean/std on 3 channels, torchvision Resize + CenterCrop).

Each reference below is the publisher's formula written again from their source code, in
numpy (torchxrayvision: utils.normalize, datasets.XRayCenterCrop, datasets.XRayResizer, i.e.
skimage.transform.resize with mode='constant'; arnoweng/CheXNet model.py: PIL convert('RGB'),
transforms.Resize(256), CenterCrop, ToTensor, Normalize), applied to real radiographs and
compared with what the contract feeds the network. Our stage 1 stores uint8, so the bound is
half a grey level (plus the publisher's own uint8 rounding where PIL works in 8 bits).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tool_support import skip_missing
from xraytriage.geometry import map_to_original
from xraytriage.io import read_radiograph
from xraytriage.models import Checkpoint, ModelConfig, build_model, load_checkpoint
from xraytriage.preprocess import PreprocessContract

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
XRV = {"channels": 1, "mean": 0.5, "std": 1 / 2048, "resize": "square_crop", "resample": "gaussian"}
CHEXNET = {
    "channels": 3,
    "mean": tuple(IMAGENET_MEAN),
    "std": tuple(IMAGENET_STD),
    "resize": "resize_crop",
    "resize_to": 256,
    "resample": "bilinear",
    "intensity": "none",
}
HALF_GREY_XRV = 0.5 / 255 * 2048  # half a grey level in torchxrayvision's units


def _real_images(shared_data, per_folder: int = 2) -> list:
    folders = ["nih/images", "nih/fullres", "pediatric/NORMAL", "pediatric/PNEUMONIA"]
    paths = []
    for folder in folders:
        found = sorted((shared_data / folder).glob("*.png")) + sorted((shared_data / folder).glob("*.jpeg"))
        found += sorted((shared_data / folder).glob("*.jpg"))
        paths += found[:per_folder]
    if not paths:
        skip_missing("no real radiographs in the shared data")
    return paths


# --- torchxrayvision, written from its source ----------------------------------------------
def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's truncate=4.0, as skimage calls it
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_axis(a: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """1-D Gaussian along ``axis``, zeros outside (mode='constant', cval=0)."""
    if sigma <= 0:
        return a
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a, pad)
    n = a.shape[axis]
    return sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(len(k)))


def _linear_axis(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Linear interpolation at output pixel centres mapped onto input pixel centres, zeros
    outside (scipy.ndimage.zoom(order=1, grid_mode=True, mode='grid-constant'))."""
    n_in = a.shape[axis]
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    lo = np.floor(pos).astype(int)
    w = pos - lo
    pad = [(0, 0)] * a.ndim
    pad[axis] = (1, 2)
    p = np.pad(a, pad)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    return np.take(p, lo + 1, axis=axis) * (1 - w) + np.take(p, lo + 2, axis=axis) * w


def torchxrayvision_input(path, size: int) -> np.ndarray:
    img = np.asarray(Image.open(path))
    img = (2 * (img.astype(np.float32) / 255) - 1.0) * 1024  # utils.normalize(img, 255)
    if img.ndim == 3:
        img = img.mean(2)  # README: "Make single color channel"
    img = img[None, :, :]
    _, y, x = img.shape  # XRayCenterCrop
    crop = min(y, x)
    startx, starty = x // 2 - crop // 2, y // 2 - crop // 2
    img = img[:, starty : starty + crop, startx : startx + crop].astype(np.float64)
    # XRayResizer: skimage.transform.resize(img, (1, size, size), mode='constant', preserve_range=True)
    factors = np.array(img.shape[1:]) / size
    if np.any(factors > 1):  # anti_aliasing defaults to on when shrinking
        for axis, f in ((1, factors[0]), (2, factors[1])):
            img = _blur_axis(img, max(0.0, (f - 1) / 2), axis)
    img = _linear_axis(_linear_axis(img, size, 1), size, 2)
    return img.astype(np.float32)


# --- CheXNet (arnoweng/CheXNet model.py + torchvision transforms on PIL images) -------------
def chexnet_input(path, short: int = 256, crop: int = 224) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if not ((w <= h and w == short) or (h <= w and h == short)):  # transforms.Resize(256)
        ow, oh = (short, int(short * h / w)) if w < h else (int(short * w / h), short)
        img = img.resize((ow, oh), Image.BILINEAR)
    w, h = img.size  # transforms.CenterCrop(224)
    top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
    img = img.crop((left, top, left + crop, top + crop))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0  # ToTensor
    return (x - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]  # Normalize


def _ours(contract: PreprocessContract, path) -> np.ndarray:
    return contract.normalize(contract.to_uint8(read_radiograph(path).pixels)[None])[0]


@pytest.mark.parametrize("size", [224, 512])
def test_torchxrayvision_contract_feeds_what_the_publisher_feeds(shared_data, size):
    contract = PreprocessContract(size=size, intensity="none", **XRV)
    for path in _real_images(shared_data):
        expected = torchxrayvision_input(path, size)
        got = _ours(contract, path)
        assert got.shape == expected.shape == (1, size, size), path
        diff = np.abs(got - expected)
        assert diff.max() <= HALF_GREY_XRV + 0.05, f"{path.name}: max difference {diff.max():.3f}"
        assert diff.mean() < HALF_GREY_XRV / 1.5, f"{path.name}: mean difference {diff.mean():.3f}"
        assert expected.min() >= -1024.5 and expected.max() <= 1024.5


def test_chexnet_contract_feeds_what_the_publisher_feeds(shared_data):
    contract = PreprocessContract(size=224, **CHEXNET)
    one_grey = 1.0 / 255 / IMAGENET_STD.min()
    for path in _real_images(shared_data):
        expected = chexnet_input(path)
        got = _ours(contract, path)
        assert got.shape == expected.shape == (3, 224, 224), path
        diff = np.abs(got - expected)
        # PIL resizes 8-bit images in two rounded passes; we round once, from float.
        assert diff.max() <= one_grey + 1e-4, f"{path.name}: max difference {diff.max():.4f}"
        assert diff.mean() < one_grey / 2


def test_reference_formulas_are_not_trivially_equal(shared_data):
    """The parity above could pass for a wrong crop if the images were flat: shifting the
    crop by a few pixels must break it."""
    path = next(p for p in _real_images(shared_data) if Image.open(p).size[0] != Image.open(p).size[1])
    good = PreprocessContract(size=224, intensity="none", **XRV)
    squashed = PreprocessContract(size=224, intensity="none", **{**XRV, "resize": "squash"})
    expected = torchxrayvision_input(path, 224)
    assert np.abs(_ours(good, path) - expected).max() <= HALF_GREY_XRV + 0.05
    assert np.abs(_ours(squashed, path) - expected).max() > 50


def test_new_fields_round_trip_through_checkpoint_and_onnx(tmp_path):
    from xraytriage.models.onnx_export import export_onnx, head_checkpoint, read_onnx_metadata

    contract = PreprocessContract(size=64, **CHEXNET)
    cfg = ModelConfig(backbone="vgg_like", num_classes=2, in_channels=3, width=0.25)
    ckpt = Checkpoint(
        model=cfg,
        label_names=["Effusion", "Mass"],
        preprocess=contract,
        state_dict=build_model(cfg).state_dict(),
    )
    path = ckpt.save(tmp_path / "m.pt")
    loaded = load_checkpoint(path).preprocess
    assert loaded == contract and loaded.resize_to == 256 and loaded.resample == "bilinear"
    onnx_path = export_onnx(load_checkpoint(path), tmp_path / "m.onnx")
    assert head_checkpoint(read_onnx_metadata(onnx_path)).preprocess == contract
    xrv = PreprocessContract(size=64, intensity="none", **XRV)
    assert PreprocessContract.from_dict(json.loads(json.dumps(xrv.to_dict()))) == xrv
    ends = xrv.normalize(np.array([[[0, 255]]], np.uint8))
    np.testing.assert_allclose(ends[0, 0, 0], [-1024.0, 1024.0], rtol=1e-6)
    # The ONNX graph applies the same normalisation as the torch path.
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8)
    net = load_checkpoint(path).build_model()
    with torch.no_grad():
        expected = net(torch.from_numpy(contract.normalize(batch))).numpy()
    np.testing.assert_allclose(
        session.run(None, {session.get_inputs()[0].name: batch})[0], expected, atol=1e-4
    )


def test_default_contract_keeps_its_cache_key():
    """Existing caches stay valid: the new fields enter the key only when they are used."""
    contract = PreprocessContract(size=128, intensity="clahe")
    old = {k: contract.to_dict()[k] for k in ["size", "resize", "intensity", "percentiles", "version"]}
    old |= {"clahe_clip": 2.0, "clahe_tiles": 8}
    expected = hashlib.sha1(json.dumps(old, sort_keys=True).encode()).hexdigest()[:12]
    assert contract.cache_key() == expected
    assert PreprocessContract(size=128, intensity="clahe", resample="gaussian").cache_key() != expected


def test_bad_new_fields_are_clear_errors():
    from xraytriage.errors import ConfigError

    with pytest.raises(ConfigError, match="resample"):
        PreprocessContract(resample="lanczos")
    with pytest.raises(ConfigError, match="resize_to"):
        PreprocessContract(size=224, resize="resize_crop", resize_to=100)


def test_heatmap_geometry_follows_the_new_crops():
    ones = np.ones((8, 8), np.float32)
    square = PreprocessContract(size=64, resize="square_crop")
    heat = map_to_original(ones, square, 100, 200)  # the centre 100 x 100 of a 100 x 200 image
    assert heat[:, :45].max() == 0 and heat[:, 155:].max() == 0 and heat[:, 60:140].min() > 0.9
    crop = PreprocessContract(size=64, resize="resize_crop", resize_to=80)
    heat = map_to_original(ones, crop, 200, 200)  # 200 -> 80, centre 64: 8 px of 80 cut each side
    assert heat[:, :15].max() == 0 and heat[:, 185:].max() == 0 and heat[30:170, 30:170].min() > 0.9
