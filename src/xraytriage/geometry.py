"""Mapping maps computed on the network input back to the original image's pixel space.

The preprocessing contract resizes an H x W image to S x S by ``squash``, ``letterbox``,
``center_crop``, ``square_crop`` or ``resize_crop`` (see :mod:`xraytriage.preprocess`). A heatmap lives on the network input (or on
a coarser feature grid covering it); users need it on *their* image. For each original pixel
centre we compute where it landed on the input and interpolate the map there, in one bilinear
step straight from the coarse grid: no intermediate S x S image, so no double blurring.
Interpolation is separable, so it is two small matrix products (rows, then columns).
"""

from __future__ import annotations

import numpy as np

from xraytriage.preprocess import PreprocessContract, resize_crop_geometry, square_crop_box


def input_coordinates(contract: PreprocessContract, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the centres of the original rows / columns land on the S x S input (in input pixels).
    The contract's border crop comes first: cropped rows and columns land outside the input."""
    ys, xs = np.arange(height) + 0.5, np.arange(width) + 0.5
    return to_input(contract, height, width, ys, xs)


def cropped_extent(contract: PreprocessContract, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, cropped height, cropped width) of the contract's border crop, as ``crop_border``."""
    share = float(getattr(contract, "border", 0.0) or 0.0)
    if share <= 0:
        return 0, 0, height, width
    dy, dx = int(height * share), int(width * share)
    return dy, dx, max(dy + 1, height - dy) - dy, max(dx + 1, width - dx) - dx


def to_input(
    contract: PreprocessContract, height: int, width: int, ys: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Original-image coordinates (continuous, pixels) -> input coordinates (S x S pixels)."""
    top, left, height, width = cropped_extent(contract, height, width)
    ys, xs = np.asarray(ys, dtype=np.float64) - top, np.asarray(xs, dtype=np.float64) - left
    size = float(contract.size)
    if contract.resize == "squash":
        return ys * size / height, xs * size / width
    if contract.resize == "letterbox":
        scale = size / max(width, height)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        left, top = (int(size) - new_w) // 2, (int(size) - new_h) // 2
        return top + ys * new_h / height, left + xs * new_w / width
    if contract.resize == "square_crop":
        left, top, side = square_crop_box(width, height)
        return (ys - top) * size / side, (xs - left) * size / side
    if contract.resize == "resize_crop":
        new_w, new_h, left, top = resize_crop_geometry(contract, width, height)
        return ys * new_h / height - top, xs * new_w / width - left
    scale = size / min(width, height)  # center_crop
    new_w, new_h = max(int(size), round(width * scale)), max(int(size), round(height * scale))
    left, top = (new_w - int(size)) // 2, (new_h - int(size)) // 2
    return ys * new_h / height - top, xs * new_w / width - left


def _interpolation_matrix(positions: np.ndarray, input_size: float, grid_size: int) -> np.ndarray:
    """Linear-interpolation weights (len(positions) x grid_size) from a grid covering [0, input_size].

    Cell i of the grid is centred at (i + 0.5) * input_size / grid_size; positions outside
    [0, input_size] (cropped away, never seen by the network) get all-zero rows.
    """
    cell = positions * grid_size / input_size - 0.5
    cell = np.clip(cell, 0.0, grid_size - 1)
    low = np.floor(cell).astype(int)
    high = np.minimum(low + 1, grid_size - 1)
    frac = cell - low
    weights = np.zeros((len(positions), grid_size), dtype=np.float32)
    rows = np.arange(len(positions))
    np.add.at(weights, (rows, low), 1.0 - frac)
    np.add.at(weights, (rows, high), frac)
    outside = (positions < 0) | (positions > input_size)
    weights[outside] = 0.0
    return weights


def map_to_original(
    maps: np.ndarray, contract: PreprocessContract, height: int, width: int, normalize: bool = True
) -> np.ndarray:
    """(..., h, w) maps on a grid covering the network input -> (..., height, width) float32.

    With ``normalize`` each map is divided by its maximum so it lies in [0, 1] (an all-zero map
    stays zero: no positive evidence anywhere).
    """
    maps = np.asarray(maps, dtype=np.float32)
    grid_h, grid_w = maps.shape[-2:]
    ys, xs = input_coordinates(contract, height, width)
    rows = _interpolation_matrix(ys, float(contract.size), grid_h)
    cols = _interpolation_matrix(xs, float(contract.size), grid_w)
    out = np.einsum("Hh,...hw,Ww->...HW", rows, maps, cols, optimize=True).astype(np.float32)
    if normalize:
        peak = out.reshape(*out.shape[:-2], -1).max(axis=-1) if out.size else np.zeros(out.shape[:-2])
        peak = np.where(peak > 0, peak, 1.0)[..., None, None]
        out = np.clip(out / peak, 0.0, 1.0)
    return out


def box_to_input(
    contract: PreprocessContract, height: int, width: int, box
) -> tuple[float, float, float, float]:
    """A box ``(x, y, w, h)`` in original pixels -> (x0, y0, x1, y1) on the S x S input, clipped."""
    x, y, w, h = box
    ys, xs = to_input(contract, height, width, np.array([y, y + h]), np.array([x, x + w]))
    size = float(contract.size)
    x0, x1 = (float(np.clip(v, 0, size)) for v in xs)
    y0, y1 = (float(np.clip(v, 0, size)) for v in ys)
    return x0, y0, x1, y1
