"""``triage --explain``: heatmap overlays of the findings listed in the top worklist rows.

Chooses the rows and names the files; the pictures come from a :class:`HeatmapPainter` handed
in by the caller (the CLI builds one on the explain module's ``Explainer``), so triage does not
depend on explain. Each row's key image (the study's most suspicious image) is explained for
the findings the row lists. Files: ``rank003_<image>_<Finding>.png`` so they sort in worklist order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from xraytriage.sanitize import file_slug
from xraytriage.triage.worklist import WorklistRow, parse_findings

log = logging.getLogger(__name__)

DEFAULT_MAX_FINDINGS = 4
"""Heatmaps per study: the seed tool's "Heatmap_top4"."""


def listed_findings(row: WorklistRow) -> list[str]:
    """Finding names of a row's ``findings`` text ("Effusion 0.81; Mass 0.64" -> [Effusion, Mass])."""
    return [name for name, _ in parse_findings(row.findings)]


def _file_part(text: str) -> str:
    return file_slug(text, keep=".+-", fallback="image")


@dataclass(frozen=True)
class Overlay:
    """One finding's heatmap of one image, ready to be written where the worklist wants it."""

    finding: str
    save: Callable[[Path], Path]
    """Writes the picture to the given path and returns it."""


class HeatmapPainter(Protocol):
    """Explains images as overlays. The CLI hands in one built on :mod:`xraytriage.explain`;
    triage itself draws nothing."""

    def start(self) -> None:
        """Called once, before the first image, and only when there is one (loads the network)."""

    def paint(self, image_path: str, findings: Sequence[str]) -> Sequence[Overlay]:
        """The listed ``findings`` of one image; raising skips the row."""


def write_heatmaps(
    painter: HeatmapPainter,
    rows: Sequence[WorklistRow],
    output_dir: str | Path,
    top: int = 15,
    max_findings: int = DEFAULT_MAX_FINDINGS,
) -> list[Path]:
    """Overlays for the listed findings of the first ``top`` triaged rows; returns the files written.

    At most ``max_findings`` per row, the most probable first (the seed tool's "Heatmap_top4"):
    sensitivity-leaning thresholds can list many findings, and a reader looks at the top few.

    A row whose image cannot be explained is logged and skipped (the worklist is already written).
    """
    chosen = [r for r in rows if r.ok and r.findings][: max(0, top)]
    if not chosen:
        return []
    painter.start()
    output_dir = Path(output_dir)
    written: list[Path] = []
    for row in chosen:
        try:
            overlays = painter.paint(row.path, listed_findings(row)[: max(0, max_findings)])
        except Exception as exc:  # never lose the worklist over a picture
            log.warning("cannot explain %s: %s", row.path, exc)
            continue
        stem = _file_part(Path(row.path).stem)
        for overlay in overlays:
            written.append(
                overlay.save(output_dir / f"rank{row.rank:03d}_{stem}_{_file_part(overlay.finding)}.png")
            )
    return written
