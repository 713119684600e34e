"""The pictures of stored images, drawn once and kept beside the blob: the display picture,
heatmaps (map PNG + a row with the box) and the overlay/layer pictures the API serves.

Every drawing is a job on :class:`~xraytriage.serving.job_pool.HeatmapJobs` (one small
shared pool; one job per image and item, shared by everyone who wants it). The background
worker, the API and the DICOM node all ask here.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from xraytriage.explain.methods import method_name
from xraytriage.serving import decode
from xraytriage.serving.job_pool import HeatmapJobs
from xraytriage.serving.records import HeatmapRecord
from xraytriage.serving.rendering import (
    display_size_for,
    finding_file_part,
    heat_layer_png,
    heat_to_display,
    load_png,
    overlay_image,
    png_bytes,
    save_png,
    scale_box,
    to_display,
)
from xraytriage.serving.repository import Repository
from xraytriage.serving.storage import BlobStore, StorageMonitor, is_storage_error, write_atomic

log = logging.getLogger(__name__)
DISPLAY = "\x00display"
"""Pseudo-finding: the display picture is drawn by the same coalesced job pool as heatmaps."""


class Drawings:
    def __init__(
        self,
        repo: Repository,
        store: BlobStore,
        storage: StorageMonitor,
        checkpoint,
        max_pixels: int,
        display_size: int,
        threads: int,
        max_pending: int,
    ) -> None:
        self.repo = repo
        self.store = store
        self.storage = storage
        self.checkpoint = checkpoint
        self.max_pixels = max_pixels
        self.display_size = display_size
        self.jobs = HeatmapJobs(self._draw_job, threads, max_pending)
        self._explainer = None
        self._explainer_lock = threading.Lock()

    @property
    def explainer(self):
        """The heatmap network (a PyTorch copy of the model), built on first use."""
        with self._explainer_lock:
            if self._explainer is None:
                from xraytriage.explain import Explainer

                self._explainer = Explainer(self.checkpoint)
            return self._explainer

    # --- where the pictures are --------------------------------------------------------------
    def display_file(self, image_id: str) -> Path:
        return self.store.derived(image_id) / "display.png"

    def display_path(self, image_id: str) -> Path:
        """The display PNG of an image, drawn on first use (by the coalesced job pool)."""
        path = self.display_file(image_id)
        if not path.is_file():
            self.jobs.run(image_id, [DISPLAY])
        return path

    def heat_path(self, image_id: str, finding: str) -> Path:
        return self.store.derived(image_id) / f"heat_{finding_file_part(finding)}.png"

    def picture_path(self, image_id: str, finding: str, style: str) -> Path:
        """The finished heatmap picture the API serves: ``overlay`` (radiograph, heat, box,
        label) or ``layer`` (transparent colour layer)."""
        return self.store.derived(image_id) / f"{style}_{finding_file_part(finding)}.png"

    @staticmethod
    def picture_item(finding: str, style: str) -> str:
        """Job item for a finished picture of a finding (see :meth:`_draw`)."""
        return f"{finding}\x00{style}"

    def overlay(
        self,
        image_id: str,
        heatmap: HeatmapRecord,
        size: tuple[int, int],
        label: str,
        display: np.ndarray | None = None,
    ) -> PILImage.Image:
        """A drawn heatmap over the display image, with its box (``size`` = the original
        width, height the box is in) and ``label``; pass ``display`` when already loaded."""
        if display is None:
            display = load_png(self.display_path(image_id))
        heat = load_png(self.heat_path(image_id, heatmap.finding))
        return overlay_image(
            display,
            heat,
            scale_box(heatmap.box, *size, display.shape),
            label,
            finding=heatmap.finding,
            probability=heatmap.probability,
            threshold=heatmap.threshold,
            method=self.method_for(heatmap.finding),
        )

    def method_for(self, finding: str) -> str:
        """What draws ``finding``'s map and box with this checkpoint ("localiser" for the findings
        its box-supervised localiser covers, else "Grad-CAM"), without building the network."""
        return method_name(self.checkpoint.get_localiser(), finding)

    # --- asking for pictures -----------------------------------------------------------------
    def missing(self, image_id: str, items: list[str]) -> list[str]:
        """Which job items still have to be drawn for one image: :data:`DISPLAY`, a finding
        (its map and box) or :meth:`picture_item` (a finding's overlay or layer picture)."""
        have = self.repo.heatmaps_of(image_id)
        missing = []
        for item in items:
            finding, _, style = item.partition("\x00")
            if item == DISPLAY:
                done = self.display_file(image_id).is_file()
            else:
                done = finding in have and self.heat_path(image_id, finding).is_file()
                done = done and (not style or self.picture_path(image_id, finding, style).is_file())
            if not done:
                missing.append(item)
        return missing

    def futures(self, image_id: str, items: list[str]) -> list[Future]:
        """Jobs to wait on until ``items`` of one image are drawn (none when they are);
        :class:`~xraytriage.errors.HeatmapQueueFull` when too many wait."""
        missing = self.missing(image_id, items)
        return self.jobs.submit(image_id, missing) if missing else []

    def ensure(self, image_id: str, findings: list[str]) -> list[HeatmapRecord]:
        """Heatmaps (map PNG + box row) of ``findings`` on one image; draws only the missing
        ones, sharing the job with anyone already drawing them. Blocks."""
        missing = self.missing(image_id, findings)
        if missing:
            self.jobs.run(image_id, missing)
        have = self.repo.heatmaps_of(image_id)
        return [have[f] for f in findings if f in have]

    def pending(self) -> int:
        return self.jobs.pending()

    def shutdown(self) -> None:
        self.jobs.shutdown()

    # --- drawing (on the job pool) -----------------------------------------------------------
    def _draw_job(self, image_id: str, items: list[str]) -> None:
        try:
            self._draw(image_id, items)
        except Exception as exc:
            if is_storage_error(exc):
                self.storage.note(exc)
            raise

    def _draw(self, image_id: str, items: list[str]) -> None:
        """One job: read the image once, reduced to the display size, and draw what is missing
        of ``items`` (display picture, maps and boxes, overlay or layer pictures)."""
        from xraytriage.explain import explain_image

        missing = self.missing(image_id, items)  # another job may have drawn them meanwhile
        if not missing:
            return
        log.info("image %s…: drawing %s", image_id[:12], ", ".join(i.replace("\x00", " ") for i in missing))
        have = self.repo.heatmaps_of(image_id)
        image = self.repo.image(image_id)
        size = (image.width or 1, image.height or 1) if image is not None else (1, 1)
        findings = list(dict.fromkeys(item.partition("\x00")[0] for item in missing if item != DISPLAY))
        maps = [f for f in findings if f not in have or not self.heat_path(image_id, f).is_file()]
        if maps or not self.display_file(image_id).is_file():
            radiograph = decode.read_reduced(
                str(self.store.path(image_id)), self.max_pixels, self.display_size
            )
            width = int(radiograph.meta.get("width", radiograph.width))
            height = int(radiograph.meta.get("height", radiograph.height))
            shape = display_size_for(height, width, self.display_size)
            if not self.display_file(image_id).is_file():
                save_png(self.display_file(image_id), to_display(radiograph.pixels, self.display_size))
            if maps:
                sx, sy = width / radiograph.width, height / radiograph.height
                explanations = explain_image(self.explainer, radiograph, maps)
                del radiograph
                now = time.time()
                for e in explanations:  # the picture first: a row never points at a missing file
                    save_png(self.heat_path(image_id, e.finding), heat_to_display(e.heatmap, shape))
                drawn = [
                    HeatmapRecord(
                        image_id=image_id,
                        finding=e.finding,
                        probability=float(e.probability),
                        threshold=float(e.threshold),
                        box=e.box.scaled(sx, sy).to_dict() if e.box is not None else None,
                        created_at=now,
                    )
                    for e in explanations
                ]
                self.repo.save_heatmaps(drawn)
                have.update({h.finding: h for h in drawn})
        for item in missing:
            finding, _, style = item.partition("\x00")
            if style and finding in have:
                self._draw_picture(image_id, have[finding], style, size)

    def _draw_picture(self, image_id: str, heatmap: HeatmapRecord, style: str, size: tuple[int, int]) -> None:
        """The overlay (radiograph, heat, box, label) or the transparent layer, kept as a file."""
        from xraytriage.explain.overlay import overlay_label

        if style == "layer":
            data = heat_layer_png(
                load_png(self.heat_path(image_id, heatmap.finding)), finding=heatmap.finding
            )
        else:
            label = overlay_label(heatmap.finding, heatmap.probability, heatmap.threshold)
            data = png_bytes(self.overlay(image_id, heatmap, size, label))
        write_atomic(self.picture_path(image_id, heatmap.finding, style), data, durable=False)


__all__ = ["DISPLAY", "Drawings"]
