"""The Python API the CLI, the triage engine and the web service call.

    explainer = Explainer(checkpoint, method="gradcam")     # once: builds the network, finds the layer
    for path in paths:
        for e in explain_image(explainer, read_radiograph(path), "top"):
            e.finding, e.probability, e.heatmap (H x W in [0, 1], the file's pixels), e.box

One forward pass per image (or per batch) gives the probabilities that choose the findings and
the activations every requested finding's map is taken from (see :mod:`.cam`). Every image's
burned-in markers and border bands are found once (:func:`.markers.marker_mask`, kept as
``e.markers``) and no box is put on them; the heatmap itself is left as the network made it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from xraytriage.errors import ConfigError
from xraytriage.explain.boxes import Box, SizePrior, best_box, load_size_priors, prior_for
from xraytriage.explain.cam import GradCAM, check_method
from xraytriage.explain.layers import find_target_layer
from xraytriage.explain.markers import marker_mask
from xraytriage.explain.methods import CAM_NAMES, LOCALISER_METHODS, method_name
from xraytriage.geometry import input_coordinates, map_to_original
from xraytriage.io import Radiograph
from xraytriage.labels import canonical_label
from xraytriage.models.checkpoint import Checkpoint

MAX_TOP_FINDINGS = 4
"""``top`` explains at most this many findings above threshold (the seed tool's "Heatmap_top4")."""

FindingSpec = str | Sequence[str]
"""``"top"``, ``"all"``, a comma-separated string of names, or a list of names."""


@dataclass
class Explanation:
    """One finding on one image: its map and box live in the pixel space of the image given."""

    finding: str
    probability: float
    threshold: float
    heatmap: np.ndarray = field(repr=False)
    box: Box | None = None
    method: str = "Grad-CAM"
    """What drew the map and box: "localiser" (box-supervised) or "Grad-CAM" / "Grad-CAM++"."""
    markers: np.ndarray | None = field(default=None, repr=False)
    """Bool H x W: burned-in markers and border bands of the image (no box there), or None."""

    @property
    def above_threshold(self) -> bool:
        return self.probability >= self.threshold


@dataclass
class PreparedImage:
    """What the network sees (uint8 S x S), the size of the image the user gave and its
    marker mask at that size (None when marker suppression is off)."""

    uint8: np.ndarray
    height: int
    width: int
    localiser_input: np.ndarray | None = None
    """The localiser's own input (its contract, from the original pixels), when it has one."""
    markers: np.ndarray | None = field(default=None, repr=False)


class Explainer:
    """A checkpoint's network set up for explanations; construct once, reuse for every image.

    ``layer`` overrides the automatic target layer (see :mod:`.layers`); ``size_prior`` turns on
    the NIH size prior for boxes; ``box_threshold`` is the fraction of the map's maximum the
    plain box search keeps; ``suppress_markers`` (default on) keeps boxes off burned-in text,
    side letters and border bands. Calls are serialised by a lock, so one instance can serve
    threads.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        method: str = "auto",
        layer: str | None = None,
        size_prior: bool = False,
        box_threshold: float = 0.5,
        device: str = "cpu",
        priors: dict[str, SizePrior] | None = None,
        suppress_markers: bool = True,
    ) -> None:
        if not 0.0 < box_threshold < 1.0:
            raise ConfigError(f"box threshold must be in (0, 1), got {box_threshold}")
        self.checkpoint = checkpoint
        self.contract = checkpoint.preprocess
        self.device = torch.device(device)
        model = checkpoint.build_model().to(self.device)
        self.layer = find_target_layer(
            model, checkpoint.model.backbone, layer, input_size=int(self.contract.size)
        )
        self.localiser = None
        if method.strip().lower() in LOCALISER_METHODS:
            self.localiser = checkpoint.get_localiser()
            if self.localiser is None and method.strip().lower() != "auto":
                raise ConfigError(
                    f"{checkpoint.name} has no localiser; attach one with `xraytriage localiser attach` "
                    "or choose --method gradcam"
                )
            method = "gradcam"
        self.method = check_method(method)
        self.cam = GradCAM(model, self.layer, self.method)
        self.box_threshold = float(box_threshold)
        self.priors = (priors if priors is not None else load_size_priors()) if size_prior else None
        self.suppress_markers = bool(suppress_markers)
        self._lock = threading.Lock()
        self._feature_shape: tuple[int, int] | None = None

    def method_for(self, finding: str) -> str:
        """The name of what draws ``finding``'s map and box: the localiser for the findings it
        covers (when this explainer uses it), else the CAM method."""
        return method_name(self.localiser, finding, self.method)

    # --- inputs --------------------------------------------------------------------------
    def prepare(
        self, image: Radiograph | np.ndarray, original_size: tuple[int, int] | None = None
    ) -> PreparedImage:
        """Radiograph or array -> network input + the (height, width) maps are returned in.

        A :class:`Radiograph` or a float array in [0, 1] is an original image: preprocessed by
        the checkpoint's contract, maps come back at its size. A uint8 array of the contract's
        S x S is taken as already preprocessed (the triage cache); give ``original_size`` =
        (height, width) to get maps in the original file's pixels, else they are S x S (its
        markers are then found on the network input and mapped back). Any other uint8 array is
        an original 8-bit image.
        """
        size = int(self.contract.size)
        if isinstance(image, Radiograph):
            pixels = image.pixels
        else:
            array = np.asarray(image)
            if array.ndim != 2:
                raise ConfigError(f"expected a 2-D grayscale image, got shape {array.shape}")
            if array.dtype == np.uint8 and array.shape == (size, size):
                height, width = original_size or (size, size)
                markers = (
                    self._input_markers(array, int(height), int(width)) if self.suppress_markers else None
                )
                return PreparedImage(array, int(height), int(width), markers=markers)
            pixels = array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        localiser_input = (
            self.localiser.spec.preprocess.to_uint8(pixels) if self.localiser is not None else None
        )
        markers = marker_mask(pixels) if self.suppress_markers else None
        return PreparedImage(
            self.contract.to_uint8(pixels),
            int(pixels.shape[0]),
            int(pixels.shape[1]),
            localiser_input=localiser_input,
            markers=markers,
        )

    def _input_markers(self, uint8: np.ndarray, height: int, width: int) -> np.ndarray:
        """Markers found on the S x S network input, at the original (height, width)."""
        mask = marker_mask(uint8)
        if mask.shape == (height, width):
            return mask
        size = int(self.contract.size)
        ys, xs = input_coordinates(self.contract, height, width)
        rows = np.clip(ys.astype(int), 0, size - 1)
        cols = np.clip(xs.astype(int), 0, size - 1)
        return mask[np.ix_(rows, cols)]

    def class_index(self, finding: str) -> int:
        names = [canonical_label(n) for n in self.checkpoint.label_names]
        key = canonical_label(finding)
        if key not in names:
            raise ConfigError(
                f"finding {finding!r} is not an output of this model; it has: {', '.join(self.checkpoint.label_names)}"
            )
        return names.index(key)

    def select_findings(self, probabilities: np.ndarray, findings: FindingSpec) -> list[str]:
        """Names to explain for one image's calibrated probabilities (L,)."""
        ckpt = self.checkpoint
        if isinstance(findings, str) and findings.strip().lower() == "top":
            above = [
                (float(probabilities[ckpt.label_names.index(n)]), n)
                for n in ckpt.findings
                if probabilities[ckpt.label_names.index(n)] >= ckpt.threshold(n)
            ]
            return [n for _, n in sorted(above, key=lambda pn: -pn[0])[:MAX_TOP_FINDINGS]]
        if isinstance(findings, str) and findings.strip().lower() == "all":
            return list(ckpt.findings)
        names = [n.strip() for n in findings.split(",")] if isinstance(findings, str) else list(findings)
        return [ckpt.label_names[self.class_index(n)] for n in names if n]

    @property
    def feature_shape(self) -> tuple[int, int]:
        """(h, w) of the target layer's map at the contract's input size."""
        if self._feature_shape is None:
            size = int(self.contract.size)
            x = self.contract.normalize(torch.zeros(1, size, size, dtype=torch.uint8)).to(self.device)
            with self._lock:
                cam_pass = self.cam.forward(x)
            self._feature_shape = tuple(cam_pass.activation.shape[-2:])  # type: ignore[assignment]
        return self._feature_shape  # type: ignore[return-value]

    # --- explanations --------------------------------------------------------------------
    def explain_prepared(
        self, images: Sequence[PreparedImage], findings: FindingSpec = "top"
    ) -> list[list[Explanation]]:
        """Explanations for a batch: one forward pass, one head backward per distinct finding."""
        if not images:
            return []
        batch = np.stack([img.uint8 for img in images])
        x = self.contract.normalize(torch.as_tensor(batch)).to(self.device)
        with self._lock:
            cam_pass = self.cam.forward(x)
            logits = cam_pass.logits.detach().cpu().numpy()
            if self._feature_shape is None:
                self._feature_shape = tuple(cam_pass.activation.shape[-2:])  # type: ignore[assignment]
            probs = self.checkpoint.probabilities(logits)
            chosen = [self.select_findings(p, findings) for p in probs]
            located = [
                {n for n in names if img.localiser_input is not None and self.method_for(n) == "localiser"}
                for img, names in zip(images, chosen, strict=True)
            ]
            union = sorted(
                {
                    self.class_index(n)
                    for names, loc in zip(chosen, located, strict=True)
                    for n in names
                    if n not in loc
                }
            )
            maps = cam_pass.maps_for(union).cpu().numpy() if union else None
            localiser_maps = self._localiser_maps(images, located)
        column = {c: i for i, c in enumerate(union)}
        results: list[list[Explanation]] = []
        for i, (img, names) in enumerate(zip(images, chosen, strict=True)):
            cam_names = [n for n in names if n not in located[i]]
            heat_of: dict[str, np.ndarray] = dict(localiser_maps[i])
            if cam_names:
                cam_heat = map_to_original(
                    maps[i, [column[self.class_index(n)] for n in cam_names]],
                    self.contract,
                    img.height,
                    img.width,
                )
                heat_of.update(zip(cam_names, cam_heat, strict=True))
            row = []
            for name in names:
                c, heat, method = self.class_index(name), heat_of[name], self.method_for(name)
                if name in located[i]:
                    box = best_box(heat, self.localiser.spec.box_threshold, exclude=img.markers)
                else:
                    method = CAM_NAMES.get(self.method, self.method)
                    box = best_box(
                        heat, self.box_threshold, prior_for(name, self.priors), exclude=img.markers
                    )
                row.append(
                    Explanation(
                        name,
                        float(probs[i, c]),
                        self.checkpoint.threshold(name),
                        heat,
                        box,
                        method=method,
                        markers=img.markers,
                    )
                )
            results.append(row)
        return results

    def _localiser_maps(
        self, images: Sequence[PreparedImage], located: Sequence[set[str]]
    ) -> list[dict[str, np.ndarray]]:
        """Per image, the localiser's maps (original size) of the findings it draws there."""
        out: list[dict[str, np.ndarray]] = [{} for _ in images]
        rows = [i for i, names in enumerate(located) if names]
        if not rows or self.localiser is None:
            return out
        spec = self.localiser.spec
        maps = self.localiser.input_maps(np.stack([images[i].localiser_input for i in rows]))
        for k, i in enumerate(rows):
            names = sorted(located[i])
            channels = [spec.findings.index(canonical_label(n)) for n in names]
            heats = map_to_original(maps[k, channels], spec.preprocess, images[i].height, images[i].width)
            out[i] = dict(zip(names, heats, strict=True))
        return out

    def probabilities(self, image: Radiograph | np.ndarray) -> dict[str, float]:
        """Calibrated probabilities of one image (no maps)."""
        prepared = self.prepare(image)
        x = self.contract.normalize(torch.as_tensor(prepared.uint8[None])).to(self.device)
        with self._lock, torch.no_grad():
            logits = self.cam.model(x).cpu().numpy()
        probs = self.checkpoint.probabilities(logits)[0]
        return {n: float(p) for n, p in zip(self.checkpoint.label_names, probs, strict=True)}


def explain_image(
    explainer: Explainer,
    image: Radiograph | np.ndarray,
    findings: FindingSpec = "top",
    original_size: tuple[int, int] | None = None,
) -> list[Explanation]:
    """Explanations of ``findings`` for one image (see :meth:`Explainer.prepare` for inputs).

    ``"top"`` gives the findings at or above their operating threshold, most probable first, at
    most four, and an empty list when none is; ``"all"`` every finding output; or name them.
    """
    return explainer.explain_prepared([explainer.prepare(image, original_size)], findings)[0]
