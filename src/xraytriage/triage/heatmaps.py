"""``triage --explain``: heatmap overlays of the findings listed in the top worklist rows.

Uses the explain module's API (``Explainer``, ``explain_image``, ``save_findings_overlay``) on
each row's key image (the study's most suspicious image), for the findings the row lists. Files:
``rank003_<image>_<Finding>.png`` so they sort in worklist order; each has the legend (method,
colour scale, finding, probability, threshold) to the right of the image.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from xraytriage.triage.worklist import WorklistRow, parse_findings

log = logging.getLogger(__name__)


def listed_findings(row: WorklistRow) -> list[str]:
    """Finding names of a row's ``findings`` text ("Effusion 0.81; Mass 0.64" -> [Effusion, Mass])."""
    return [name for name, _ in parse_findings(row.findings)]


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "image"


def write_heatmaps(
    checkpoint,
    rows: Sequence[WorklistRow],
    output_dir: str | Path,
    top: int = 15,
    method: str = "gradcam",
    max_findings: int = 4,
) -> list[Path]:
    """Overlays for the listed findings of the first ``top`` triaged rows; returns the files written.

    At most ``max_findings`` per row, the most probable first (the seed tool's "Heatmap_top4"):
    sensitivity-leaning thresholds can list many findings, and a reader looks at the top few.

    A row whose image cannot be explained is logged and skipped (the worklist is already written).
    """
    from xraytriage.explain import Explainer, explain_image
    from xraytriage.explain.overlay import OverlayItem, method_label, save_findings_overlay
    from xraytriage.io import read_radiograph

    chosen = [r for r in rows if r.ok and r.findings][: max(0, top)]
    if not chosen:
        return []
    explainer = Explainer(checkpoint, method=method)
    legend_method = method_label(explainer.method)
    output_dir = Path(output_dir)
    written: list[Path] = []
    for row in chosen:
        try:
            radiograph = read_radiograph(row.path)
            findings = listed_findings(row)[: max(0, max_findings)]
            explanations = explain_image(explainer, radiograph, findings)
        except Exception as exc:  # never lose the worklist over a picture
            log.warning("cannot explain %s: %s", row.path, exc)
            continue
        stem = _file_part(Path(row.path).stem)
        for explanation in explanations:
            name = f"rank{row.rank:03d}_{stem}_{_file_part(explanation.finding)}.png"
            item = OverlayItem(
                explanation.finding,
                explanation.probability,
                explanation.threshold,
                explanation.heatmap,
                [explanation.box] if explanation.box is not None else [],
            )
            written.append(save_findings_overlay(output_dir / name, radiograph.pixels, [item], legend_method))
    return written
