"""The preprocessing contract: one frozen description, stored in every checkpoint and cache.

Two stages, so the expensive one can be cached and the cheap one can run on the accelerator:

1. ``to_uint8(pixels)``: geometry and intensity. float [0,1] HxW from :mod:`xraytriage.io` ->
   optional ``border`` crop (a share of each side: image edges, collimation and burned-in
   markers) -> intensity mapping (``minmax`` stretch, ``percentile`` stretch or ``none``) ->
   resize (``squash`` to size x size, ``letterbox`` keeping aspect and padding with black,
   ``center_crop`` of the short side, ``square_crop``: the centre square of the source, then
   resized, as torchxrayvision's XRayCenterCrop + XRayResizer; ``resize_crop``: the short side
   to ``resize_to``, then the centre size x size, as torchvision's Resize + CenterCrop) with
   the ``resample`` filter (``area`` averaging; ``bilinear``: PIL's antialiased bilinear, what
   torchvision's Resize does to a PIL image; ``gaussian``: skimage.transform.resize's Gaussian
   anti-aliasing then bilinear, what torchxrayvision's XRayResizer does) -> uint8 size x size
   -> optional histogram equalisation at that size (``equalize`` global, ``clahe``
   contrast-limited adaptive).
   Equalising after the resize makes it see the same anatomy per tile whatever the file's
   resolution, and it removes the global brightness/contrast differences between collections
   that a model could otherwise learn instead of disease. This is what the cache stores.
2. ``normalize(batch_uint8)``: uint8 N x H x W (tensor or array) -> float (x/255 - mean)/std,
   repeated to ``channels``. Training, evaluation, ONNX export and serving all call this one
   function, so they cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from xraytriage.errors import ConfigError

ResizeMode = Literal["squash", "letterbox", "center_crop", "square_crop", "resize_crop"]
RESIZE_MODES = ("squash", "letterbox", "center_crop", "square_crop", "resize_crop")
ResampleMode = Literal["area", "bilinear", "gaussian"]
RESAMPLE_MODES = ("area", "bilinear", "gaussian")
IntensityMode = Literal["none", "minmax", "percentile", "equalize", "clahe"]
INTENSITY_MODES = ("none", "minmax", "percentile", "equalize", "clahe")


@dataclass(frozen=True)
class PreprocessContract:
    size: int = 224
    resize: ResizeMode = "squash"
    intensity: IntensityMode = "minmax"
    percentiles: tuple[float, float] = (0.5, 99.5)
    channels: int = 1
    mean: float | tuple[float, ...] = 0.5
    std: float | tuple[float, ...] = 0.25
    """Scalar, or one value per channel (e.g. ImageNet statistics for imported 3-channel weights)."""
    border: float = 0.0
    """Share of the width/height cropped from each side before anything else (0 to 0.25)."""
    clahe_clip: float = 2.0
    """``clahe``: histogram clip limit, in multiples of the mean bin count."""
    clahe_tiles: int = 8
    """``clahe``: tiles per side."""
    version: int = 1
    resample: ResampleMode = "area"
    """Resize filter: ``area`` (box average when shrinking, bilinear when enlarging), ``bilinear``
    (PIL's antialiased bilinear: torchvision's Resize on a PIL image) or ``gaussian``
    (skimage.transform.resize: Gaussian sigma (factor-1)/2, then bilinear at pixel centres,
    outside the image the value that normalises to 0: torchxrayvision's XRayResizer)."""
    resize_to: int = 0
    """``resize_crop``: the short side is first resized to this (0: ``size``), then the centre
    size x size is cut out (torchvision ``Resize(resize_to)`` + ``CenterCrop(size)``)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not 16 <= int(self.size) <= 2048:
            raise ConfigError(f"preprocess.size must be in 16..2048, got {self.size}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"preprocess.resize must be {'|'.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.resample not in RESAMPLE_MODES:
            raise ConfigError(
                f"preprocess.resample must be {'|'.join(RESAMPLE_MODES)}, got {self.resample!r}"
            )
        if int(self.resize_to) and not int(self.size) <= int(self.resize_to) <= 4096:
            raise ConfigError(f"preprocess.resize_to must be 0 or in size..4096, got {self.resize_to}")
        if self.intensity not in INTENSITY_MODES:
            raise ConfigError(
                f"preprocess.intensity must be {'|'.join(INTENSITY_MODES)}, got {self.intensity!r}"
            )
        if not 0.0 <= float(self.border) <= 0.25:
            raise ConfigError(f"preprocess.border must be in 0..0.25, got {self.border}")
        if float(self.clahe_clip) < 1.0 or not 1 <= int(self.clahe_tiles) <= 64:
            raise ConfigError("preprocess.clahe_clip must be >= 1 and clahe_tiles in 1..64")
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocess.channels must be 1 or 3, got {self.channels}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                if len(value) not in (1, self.channels):
                    raise ConfigError(f"preprocess.{key} needs 1 or {self.channels} values, got {len(value)}")
                value = tuple(float(v) for v in value)
                value = value[0] if len(value) == 1 else value
            else:
                value = float(value)
            object.__setattr__(self, key, value)
        if min(_as_tuple(self.std)) <= 0:
            raise ConfigError(f"preprocess.std must be > 0, got {self.std}")
        object.__setattr__(self, "percentiles", tuple(float(p) for p in self.percentiles))

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["percentiles"] = list(self.percentiles)
        for key in ("mean", "std"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessContract:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown preprocess field(s): {', '.join(unknown)}")
        if "percentiles" in known:
            known["percentiles"] = tuple(known["percentiles"])
        return cls(**known)

    def cache_key(self) -> str:
        """Identifies stage 1 (what the cache stores); normalisation does not change it."""
        keys = ["size", "resize", "intensity", "percentiles", "version"]
        if self.border:
            keys.append("border")
        if self.intensity == "clahe":
            keys += ["clahe_clip", "clahe_tiles"]
        if self.resample != "area":
            keys.append("resample")
        if self.resize_to:
            keys.append("resize_to")
        stage1 = {k: self.to_dict()[k] for k in keys}
        return hashlib.sha1(json.dumps(stage1, sort_keys=True).encode()).hexdigest()[:12]

    # --- stage 1 -------------------------------------------------------------------------
    def to_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """float [0,1] HxW -> uint8 size x size."""
        pixels = crop_border(pixels, self.border)
        out = resize_to_uint8(stretch_intensity(pixels, self), self)
        if self.intensity == "equalize":
            return equalize_uint8(out)
        if self.intensity == "clahe":
            return clahe_uint8(out, self.clahe_clip, self.clahe_tiles)
        return out

    # --- stage 2 -------------------------------------------------------------------------
    def normalize(self, batch: Any) -> Any:
        """uint8 (N,H,W) or (N,1,H,W) -> float32 (N,C,H,W); torch in -> torch out, numpy in -> numpy out."""
        return normalize_batch(batch, self)


def _as_tuple(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (float(value),)


def crop_border(pixels: np.ndarray, share: float) -> np.ndarray:
    """Drop ``share`` of the height and width from each side (at least one pixel stays)."""
    if share <= 0:
        return pixels
    h, w = pixels.shape[:2]
    dy, dx = int(h * share), int(w * share)
    return pixels[dy : max(dy + 1, h - dy), dx : max(dx + 1, w - dx)]


def equalize_uint8(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of a uint8 image (a constant image stays as it is)."""
    hist = np.bincount(image.ravel(), minlength=256).astype(np.float64)
    cdf = np.cumsum(hist)
    lo = cdf[np.flatnonzero(hist)[0]] if hist.any() else 0.0
    if cdf[-1] - lo <= 0:
        return image
    lut = np.clip(np.rint((cdf - lo) / (cdf[-1] - lo) * 255.0), 0, 255).astype(np.uint8)
    return lut[image]


def _tile_luts(image: np.ndarray, tiles: int, clip: float) -> tuple[np.ndarray, int, int]:
    """Per-tile equalisation look-up tables with the histogram clipped at ``clip`` x the mean
    bin count and the excess spread evenly (Zuiderveld 1994)."""
    h, w = image.shape
    th, tw = -(-h // tiles), -(-w // tiles)
    padded = np.pad(image, ((0, th * tiles - h), (0, tw * tiles - w)), mode="reflect")
    blocks = padded.reshape(tiles, th, tiles, tw).transpose(0, 2, 1, 3).reshape(tiles * tiles, th * tw)
    offsets = (np.arange(tiles * tiles) * 256)[:, None]
    hist = np.bincount((blocks.astype(np.int64) + offsets).ravel(), minlength=tiles * tiles * 256)
    hist = hist.reshape(tiles * tiles, 256).astype(np.float64)
    limit = max(1.0, clip * th * tw / 256.0)
    excess = np.clip(hist - limit, 0, None).sum(axis=1, keepdims=True)
    hist = np.minimum(hist, limit) + excess / 256.0
    cdf = np.cumsum(hist, axis=1)
    lut = (cdf - cdf[:, :1]) / np.maximum(cdf[:, -1:] - cdf[:, :1], 1e-9) * 255.0
    return lut.reshape(tiles, tiles, 256), th, tw


def _axis_weights(n: int, tile: int, tiles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel along one axis: the two nearest tile centres and the weight of the second."""
    pos = (np.arange(n) + 0.5) / tile - 0.5
    lo = np.clip(np.floor(pos).astype(np.int64), 0, tiles - 1)
    hi = np.clip(lo + 1, 0, tiles - 1)
    weight = np.clip(pos - lo, 0.0, 1.0)
    weight[pos < 0] = 0.0
    return lo, hi, weight


def clahe_uint8(image: np.ndarray, clip: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a uint8 image: each tile's clipped
    histogram is equalised and the tables are interpolated bilinearly between tile centres, so
    there are no seams. Local contrast is normalised: exposure, detector and post-processing
    differences shrink while structure stays."""
    image = np.asarray(image, dtype=np.uint8)
    tiles = max(1, min(int(tiles), *image.shape))
    lut, th, tw = _tile_luts(image, tiles, clip)
    y0, y1, wy = _axis_weights(image.shape[0], th, tiles)
    x0, x1, wx = _axis_weights(image.shape[1], tw, tiles)
    v = image.astype(np.int64)
    top = lut[y0[:, None], x0[None, :], v] * (1 - wx) + lut[y0[:, None], x1[None, :], v] * wx
    bottom = lut[y1[:, None], x0[None, :], v] * (1 - wx) + lut[y1[:, None], x1[None, :], v] * wx
    out = top * (1 - wy[:, None]) + bottom * wy[:, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def stretch_intensity(pixels: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    pixels = np.asarray(pixels, dtype=np.float32)
    if contract.intensity == "none":
        return np.clip(pixels, 0.0, 1.0)
    if contract.intensity in ("minmax", "equalize", "clahe"):
        lo, hi = float(pixels.min()), float(pixels.max())
    else:
        lo, hi = (float(v) for v in np.percentile(pixels, contract.percentiles))
    if hi - lo < 1e-6:
        return np.zeros_like(pixels)
    return np.clip((pixels - lo) / (hi - lo), 0.0, 1.0)


def _resize(image: Image.Image, size: tuple[int, int], contract: PreprocessContract) -> Image.Image:
    if image.size == size:
        return image
    resample = contract.resample
    if resample == "gaussian":
        pad = float(np.mean(_as_tuple(contract.mean)))
        return Image.fromarray(gaussian_resize(np.asarray(image, dtype=np.float32), size, pad), mode="F")
    if resample == "bilinear":
        return image.resize(size, Image.Resampling.BILINEAR)
    # Area averaging (BOX) when shrinking avoids aliasing; bilinear when enlarging.
    shrinking = size[0] <= image.size[0] and size[1] <= image.size[1]
    return image.resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)


def gaussian_resize(pixels: np.ndarray, size: tuple[int, int], pad: float) -> np.ndarray:
    """skimage.transform.resize(order=1, mode='constant', anti_aliasing=True) with ``cval=pad``
    on a float HxW image to ``size`` = (width, height): a Gaussian of sigma (factor-1)/2 per
    shrunk axis (truncated at 4 sigma, the image padded with ``pad``), then bilinear sampling at
    the output pixel centres (grid mode, ``pad`` outside). torchxrayvision pads with 0 in its
    [-1024, 1024] scale, which is ``pad`` = the value that normalises to 0 here."""
    from scipy import ndimage

    arr = np.asarray(pixels, dtype=np.float32)
    out_w, out_h = int(size[0]), int(size[1])
    factors = np.array(arr.shape, dtype=np.float64) / (out_h, out_w)
    if np.any(factors > 1):
        sigma = np.maximum(0.0, (factors - 1.0) / 2.0)
        arr = ndimage.gaussian_filter(arr, sigma, mode="constant", cval=pad)
    out = ndimage.zoom(
        arr,
        (out_h / arr.shape[0], out_w / arr.shape[1]),
        order=1,
        mode="grid-constant",
        cval=pad,
        grid_mode=True,
    )
    return np.asarray(out, dtype=np.float32)


def square_crop_box(width: int, height: int) -> tuple[int, int, int]:
    """torchxrayvision's XRayCenterCrop: (left, top, side) of the centre square."""
    side = min(width, height)
    return width // 2 - side // 2, height // 2 - side // 2, side


def resize_crop_geometry(contract: PreprocessContract, width: int, height: int) -> tuple[int, int, int, int]:
    """torchvision Resize(short) + CenterCrop(size): (resized width, height, crop left, top)."""
    short, size = int(contract.resize_to or contract.size), int(contract.size)
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    new_w, new_h = max(new_w, size), max(new_h, size)
    return new_w, new_h, round((new_w - size) / 2.0), round((new_h - size) / 2.0)


def resize_to_uint8(pixels: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    size = int(contract.size)
    image = Image.fromarray(np.asarray(pixels, dtype=np.float32), mode="F")
    w, h = image.size
    if contract.resize == "squash":
        image = _resize(image, (size, size), contract)
    elif contract.resize == "center_crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = _resize(image, (nw, nh), contract)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    elif contract.resize == "square_crop":
        left, top, side = square_crop_box(w, h)
        image = _resize(image.crop((left, top, left + side, top + side)), (size, size), contract)
    elif contract.resize == "resize_crop":
        nw, nh, left, top = resize_crop_geometry(contract, w, h)
        image = _resize(image, (nw, nh), contract).crop((left, top, left + size, top + size))
    else:  # letterbox
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        resized = _resize(image, (nw, nh), contract)
        image = Image.new("F", (size, size), 0.0)
        image.paste(resized, ((size - nw) // 2, (size - nh) // 2))
    out = np.asarray(image, dtype=np.float32)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def normalize_batch(batch: Any, contract: PreprocessContract) -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    mean = np.asarray(_as_tuple(contract.mean), dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(_as_tuple(contract.std), dtype=np.float32).reshape(1, -1, 1, 1)
    if torch is not None and isinstance(batch, torch.Tensor):
        x = batch
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if contract.channels != x.shape[1]:
            x = x.expand(-1, contract.channels, -1, -1)
        mean_t = torch.from_numpy(mean).to(x.device)
        std_t = torch.from_numpy(std).to(x.device)
        return ((x.float() / 255.0 - mean_t) / std_t).contiguous()
    x = np.asarray(batch)
    if x.ndim == 3:
        x = x[:, None]
    if contract.channels != x.shape[1]:
        x = np.repeat(x, contract.channels, axis=1)
    x = (x.astype(np.float32) / 255.0 - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)
