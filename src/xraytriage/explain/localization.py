"""Localisation benchmark as in Wang et al. (CVPR 2017, ChestX-ray8, Table 3), plus a chance level.

For every ground-truth box of finding c on an image, the boxes predicted from *c's* heatmap on
that image are compared with it:

- **IoU** = |GT ∩ P| / |GT ∪ P|; **IoBB** = |GT ∩ P| / |P| (intersection over the *predicted*
  box, Wang et al.'s "intersection over the detected B-Box area"). A GT box is *localised* at
  threshold T when some predicted box has IoU > T (resp. IoBB > T), strictly, as in the paper.
  Accuracy = localised GT boxes / GT boxes of that finding.
- **AFP** (average false positives) = predicted boxes matching no GT box of that finding at T,
  summed, divided by the number of images with GT boxes of that finding.
- **Pointing game** (Zhang et al. 2016): the heatmap's maximum pixel lies inside the GT box.
  An all-zero map points nowhere (a miss).
- **Random control**: the same computation on heatmaps that carry no information: seeded
  random fields at the explainer's own feature-map resolution, rectified and mapped to the
  image through the same geometry, so they have the same smoothness and blob sizes as real
  maps. The model's numbers mean something only by how far they sit above this line: big
  boxes are "localised" at IoBB 0.1 by almost any blob.

Thresholds: IoBB 0.1, 0.25, 0.5, 0.75, 0.9 and IoU 0.1 ... 0.7, the rows of Wang et al.'s
Table 3. ``Mean`` is the unweighted mean over findings (each finding counts once).
"""

from __future__ import annotations

import logging
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xraytriage.errors import ConfigError, ImageReadError
from xraytriage.explain.boxes import Box, boxes_from_heatmap, prior_for
from xraytriage.explain.geometry import map_to_original
from xraytriage.labels import canonical_label
from xraytriage.preprocess import PreprocessContract

log = logging.getLogger(__name__)

IOBB_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)
IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
SOURCES = ("model", "random")


# --- box geometry -------------------------------------------------------------------------
def _intersection(a: Box, b: Box) -> float:
    iw = min(a.x + a.w, b.x + b.w) - max(a.x, b.x)
    ih = min(a.y + a.h, b.y + b.h) - max(a.y, b.y)
    return iw * ih if iw > 0 and ih > 0 else 0.0


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    inter = _intersection(a, b)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def box_iobb(truth: Box, predicted: Box) -> float:
    """Intersection over the *predicted* box's area (Wang et al.'s IoBB)."""
    return _intersection(truth, predicted) / predicted.area if predicted.area > 0 else 0.0


def pointing_hit(heatmap: np.ndarray, truth: Box) -> bool:
    """Whether the heatmap's maximum pixel (its centre) lies inside ``truth``; all-zero -> False."""
    heatmap = np.asarray(heatmap)
    if heatmap.size == 0 or not float(heatmap.max()) > 0:
        return False
    row, col = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    cx, cy = col + 0.5, row + 0.5
    return truth.x <= cx <= truth.x + truth.w and truth.y <= cy <= truth.y + truth.h


# --- one (image, finding) case --------------------------------------------------------------
@dataclass
class CaseScore:
    """Scores of one finding on one image: per GT box hits, and false positives, per threshold."""

    image: str
    finding: str
    source: str
    hits: dict[tuple[str, float], list[bool]]  # (metric, T) -> one flag per GT box
    false_positives: dict[tuple[str, float], int]
    pointing: list[bool]
    best_iou: list[float]
    best_iobb: list[float]


def score_case(
    image: str,
    finding: str,
    heatmap: np.ndarray,
    truths: Sequence[Box],
    predicted: Sequence[Box],
    source: str = "model",
    iobb_thresholds: Sequence[float] = IOBB_THRESHOLDS,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> CaseScore:
    """Compare ``predicted`` boxes (from this finding's ``heatmap``) with the GT boxes."""
    iou = np.array([[box_iou(t, p) for p in predicted] for t in truths]).reshape(len(truths), len(predicted))
    iobb = np.array([[box_iobb(t, p) for p in predicted] for t in truths]).reshape(
        len(truths), len(predicted)
    )
    hits: dict[tuple[str, float], list[bool]] = {}
    fps: dict[tuple[str, float], int] = {}
    for metric, matrix, thresholds in (("IoBB", iobb, iobb_thresholds), ("IoU", iou, iou_thresholds)):
        for t in thresholds:
            matched = matrix > t
            hits[(metric, t)] = [bool(v) for v in matched.any(axis=1)]
            fps[(metric, t)] = int((~matched.any(axis=0)).sum()) if len(predicted) else 0
    return CaseScore(
        image=image,
        finding=finding,
        source=source,
        hits=hits,
        false_positives=fps,
        pointing=[pointing_hit(heatmap, t) for t in truths],
        best_iou=[float(r.max()) if r.size else 0.0 for r in iou],
        best_iobb=[float(r.max()) if r.size else 0.0 for r in iobb],
    )


def summarize(cases: Iterable[CaseScore]) -> pd.DataFrame:
    """Long table: source, finding, metric, threshold, accuracy, afp, boxes, images (+ Mean rows)."""
    acc: dict[tuple, list[bool]] = defaultdict(list)
    fp: dict[tuple, int] = defaultdict(int)
    images: dict[tuple, set[str]] = defaultdict(set)
    for case in cases:
        for (metric, t), flags in case.hits.items():
            key = (case.source, case.finding, metric, t)
            acc[key] += flags
            fp[key] += case.false_positives[(metric, t)]
            images[key].add(case.image)
        key = (case.source, case.finding, "pointing", np.nan)
        acc[key] += case.pointing
        images[key].add(case.image)
    rows = []
    for key, flags in acc.items():
        source, finding, metric, t = key
        n_images = len(images[key])
        rows.append(
            {
                "source": source,
                "finding": finding,
                "metric": metric,
                "threshold": t,
                "accuracy": float(np.mean(flags)) if flags else np.nan,
                "afp": fp[key] / n_images if metric != "pointing" and n_images else np.nan,
                "boxes": len(flags),
                "images": n_images,
            }
        )
    table = pd.DataFrame(
        rows, columns=["source", "finding", "metric", "threshold", "accuracy", "afp", "boxes", "images"]
    )
    if table.empty:
        return table
    means = (
        table.groupby(["source", "metric", "threshold"], dropna=False)
        .agg(
            accuracy=("accuracy", "mean"),
            afp=("afp", "mean"),
            boxes=("boxes", "sum"),
            images=("images", "sum"),
        )
        .reset_index()
        .assign(finding="Mean")
    )
    table = pd.concat([table, means[table.columns]], ignore_index=True)
    order = {"IoBB": 0, "IoU": 1, "pointing": 2}
    table["_m"] = table["metric"].map(order)
    table["_f"] = table["finding"].eq("Mean")
    table = table.sort_values(["source", "_m", "threshold", "_f", "finding"]).drop(columns=["_m", "_f"])
    return table.reset_index(drop=True)


def markdown_table(table: pd.DataFrame) -> str:
    """Wang et al.-style table: one row per (metric, T), one column per finding; cells
    ``model (random)`` accuracy, AFP rows likewise."""
    if table.empty:
        return "_no ground-truth boxes were evaluated_\n"
    findings = [*sorted(set(table["finding"]) - {"Mean"}), "Mean"]
    model = table[table["source"] == "model"].set_index(["metric", "threshold", "finding"])
    rand = table[table["source"] == "random"].set_index(["metric", "threshold", "finding"])

    def cell(frame: pd.DataFrame, key: tuple, column: str) -> str:
        try:
            value = frame.loc[key, column]
        except KeyError:
            return "–"
        return "–" if pd.isna(value) else f"{value:.2f}"

    lines = ["| T | " + " | ".join(findings) + " |", "|---|" + "---|" * len(findings)]
    # NaN != NaN, so the threshold-free pointing rows are deduplicated on a printable key
    unique: dict[tuple[str, str], tuple[str, float]] = {}
    for m, t in zip(table["metric"], table["threshold"], strict=True):
        unique.setdefault((m, repr(t)), (m, t))
    for metric, t in unique.values():
        label = "Pointing game" if metric == "pointing" else f"T({metric})={t:g}"
        for column, suffix in (("accuracy", "Acc."), ("afp", "AFP")):
            if metric == "pointing" and column == "afp":
                continue
            cells = [
                f"{cell(model, (metric, t, f), column)} ({cell(rand, (metric, t, f), column)})"
                for f in findings
            ]
            lines.append(f"| {label} {suffix} | " + " | ".join(cells) + " |")
    counts = table[(table["source"] == "model") & (table["metric"] == "pointing")].set_index("finding")
    lines.append(
        "| GT boxes | "
        + " | ".join(str(int(counts.loc[f, "boxes"])) if f in counts.index else "–" for f in findings)
        + " |"
    )
    return "\n".join(lines) + "\n"


# --- random control -----------------------------------------------------------------------
def random_heatmap(
    rng: np.random.Generator,
    grid_shape: tuple[int, int],
    contract: PreprocessContract,
    height: int,
    width: int,
) -> np.ndarray:
    """An information-free map shaped like a CAM: rectified Gaussian noise on the feature grid,
    mapped to the image like real maps are (same smoothness, same geometry), normalised."""
    field_ = np.maximum(rng.standard_normal(grid_shape).astype(np.float32), 0.0)
    return map_to_original(field_, contract, height, width)


def case_seed(seed: int, image: str, finding: str, repeat: int) -> int:
    """Order-independent seed for one (image, finding, repeat): the control is reproducible."""
    return zlib.crc32(f"{seed}|{image}|{finding}|{repeat}".encode())


# --- ground truth -------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """GT boxes keyed by image file name; ``reference_size`` (NIH: 1024) says the coordinates
    are in that pixel space and are scaled by (image width / reference, height / reference);
    None means they are already in the image's pixels."""

    boxes: pd.DataFrame  # image, finding, x, y, w, h
    reference_size: float | None = None
    source: str = ""


def load_ground_truth(path: str | Path) -> GroundTruth:
    """NIH ``BBox_List_2017.csv(.gz)`` (1024 px space) or a pixel-space ``path, finding, x, y, w, h``
    CSV (as ``make_synthetic_dataset`` writes)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: box file not found")
    try:
        head = pd.read_csv(path, nrows=0)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read box CSV: {exc}") from None
    columns = [str(c).strip() for c in head.columns]
    if columns and columns[0] == "Image Index":
        from xraytriage.data.nih import NIH_BOX_SPACE, read_bbox_list

        boxes = read_bbox_list(path).rename(columns={"image_index": "image"})
        return GroundTruth(boxes[["image", "finding", "x", "y", "w", "h"]], float(NIH_BOX_SPACE), str(path))
    required = {"path", "finding", "x", "y", "w", "h"}
    if not required <= set(columns):
        raise ConfigError(
            f"{path}: expected the NIH BBox_List columns or {', '.join(sorted(required))}; found {', '.join(columns)}"
        )
    table = pd.read_csv(path)
    boxes = pd.DataFrame(
        {
            "image": table["path"].astype(str).map(lambda p: Path(p).name),
            "finding": table["finding"].astype(str).map(canonical_label),
            **{c: pd.to_numeric(table[c], errors="coerce") for c in ("x", "y", "w", "h")},
        }
    ).dropna()
    return GroundTruth(boxes.reset_index(drop=True), None, str(path))


# --- the benchmark ------------------------------------------------------------------------
@dataclass
class LocalizationResult:
    table: pd.DataFrame
    per_box: pd.DataFrame
    images: int = 0
    skipped_findings: dict[str, int] = field(default_factory=dict)
    missing_images: int = 0
    errors: list[str] = field(default_factory=list)


def index_images(folders: Sequence[str | Path]) -> dict[str, Path]:
    """File name -> path for every image under ``folders`` (the first wins on duplicate names)."""
    from xraytriage.io import iter_input_files

    found: dict[str, Path] = {}
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder}: image folder not found")
        for path in iter_input_files([folder]):
            found.setdefault(path.name, path)
    return found


def evaluate_localization(
    explainer,
    image_folders: Sequence[str | Path],
    truth: GroundTruth,
    max_boxes: int = 3,
    random_repeats: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> LocalizationResult:
    """Run the benchmark for ``explainer`` (an :class:`~xraytriage.explain.Explainer`) over the GT
    boxes whose images are found in ``image_folders``. Unreadable images are reported and
    skipped; findings the model does not output are counted in ``skipped_findings``."""
    from tqdm import tqdm

    from xraytriage.explain.explainer import explain_image
    from xraytriage.io import read_radiograph

    files = index_images(image_folders)
    boxes = truth.boxes
    outputs = {canonical_label(n) for n in explainer.checkpoint.label_names}
    skipped = boxes[~boxes["finding"].isin(outputs)]["finding"].value_counts().to_dict()
    usable = boxes[boxes["finding"].isin(outputs)]
    present = usable[usable["image"].isin(files)]
    missing = int(usable["image"].nunique() - present["image"].nunique())
    grid = explainer.feature_shape
    cases: list[CaseScore] = []
    per_box: list[dict] = []
    errors: list[str] = []
    groups = list(present.groupby("image", sort=True))
    for image, group in tqdm(groups, desc="localize", unit="image", disable=not progress):
        try:
            radiograph = read_radiograph(files[image])
        except ImageReadError as exc:
            errors.append(str(exc))
            log.warning("skipped %s", exc)
            continue
        h, w = radiograph.height, radiograph.width
        sx, sy = (w / truth.reference_size, h / truth.reference_size) if truth.reference_size else (1.0, 1.0)
        findings = list(dict.fromkeys(group["finding"]))
        explanations = {e.finding: e for e in explain_image(explainer, radiograph, findings)}
        for finding in findings:
            rows = group[group["finding"] == finding]
            truths = [Box(r.x, r.y, r.w, r.h).scaled(sx, sy) for r in rows.itertuples()]
            prior = prior_for(finding, explainer.priors)
            heat = explanations[explainer.checkpoint.label_names[explainer.class_index(finding)]].heatmap
            predicted = boxes_from_heatmap(heat, explainer.box_threshold, prior=prior, max_boxes=max_boxes)
            model_case = score_case(image, finding, heat, truths, predicted, "model")
            cases.append(model_case)
            random_cases = []
            for repeat in range(random_repeats):
                rng = np.random.default_rng(case_seed(seed, image, finding, repeat))
                rheat = random_heatmap(rng, grid, explainer.contract, h, w)
                rboxes = boxes_from_heatmap(rheat, explainer.box_threshold, prior=prior, max_boxes=max_boxes)
                random_cases.append(score_case(image, finding, rheat, truths, rboxes, "random"))
            cases.extend(_average_repeats(random_cases))
            for i, t in enumerate(truths):
                per_box.append(
                    {
                        "image": image,
                        "finding": finding,
                        "x": t.x,
                        "y": t.y,
                        "w": t.w,
                        "h": t.h,
                        "best_iou": model_case.best_iou[i],
                        "best_iobb": model_case.best_iobb[i],
                        "pointing": model_case.pointing[i],
                        "random_pointing": float(np.mean([c.pointing[i] for c in random_cases]))
                        if random_cases
                        else np.nan,
                        "predicted_boxes": len(predicted),
                    }
                )
    return LocalizationResult(
        table=summarize(cases),
        per_box=pd.DataFrame(per_box),
        images=len({c.image for c in cases if c.source == "model"}),
        skipped_findings={str(k): int(v) for k, v in skipped.items()},
        missing_images=missing,
        errors=errors,
    )


def _average_repeats(repeats: list[CaseScore]) -> list[CaseScore]:
    """Repeats of the random control enter the tally as separate cases with the image name
    suffixed by the repeat, so accuracy averages over repeats while AFP stays per image."""
    out = []
    for r, case in enumerate(repeats):
        out.append(
            CaseScore(
                image=f"{case.image}#{r}",
                finding=case.finding,
                source=case.source,
                hits=case.hits,
                false_positives=case.false_positives,
                pointing=case.pointing,
                best_iou=case.best_iou,
                best_iobb=case.best_iobb,
            )
        )
    return out


def write_localization_report(
    result: LocalizationResult, output: str | Path, title: str = ""
) -> dict[str, Path]:
    """``localization.csv`` (long table), ``localization_boxes.csv`` (per GT box) and
    ``localization.md`` (the Wang et al.-style table with the random control in brackets)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": output / "localization.csv",
        "boxes": output / "localization_boxes.csv",
        "markdown": output / "localization.md",
    }
    result.table.to_csv(paths["csv"], index=False)
    result.per_box.to_csv(paths["boxes"], index=False)
    notes = [
        f"# Localisation{': ' + title if title else ''}",
        "",
        f"{result.images} images, {len(result.per_box)} ground-truth boxes. Cells: model accuracy "
        "(random-heatmap control in brackets); AFP = average false-positive boxes per image. "
        "IoBB/IoU localised when > T (Wang et al., CVPR 2017, Table 3).",
        "",
    ]
    if result.skipped_findings:
        notes.append(
            "Findings the model does not output (boxes skipped): "
            + ", ".join(f"{k} ({v})" for k, v in sorted(result.skipped_findings.items()))
        )
        notes.append("")
    if result.missing_images:
        notes.append(f"{result.missing_images} listed images were not found in the image folders.")
        notes.append("")
    if result.errors:
        notes.append(f"{len(result.errors)} images could not be read: " + "; ".join(result.errors[:5]))
        notes.append("")
    paths["markdown"].write_text("\n".join(notes) + markdown_table(result.table))
    return paths
