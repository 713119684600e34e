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
- **Random same-size control**: each method's own predicted boxes moved to uniformly random
  places in the image (their sizes kept; the pointing game uses the first moved box's centre),
  seeded per (method, image, finding, repeat). A method's numbers mean something only by how far
  they sit above its control: big boxes are "localised" at IoBB 0.1 almost anywhere.
- **Confidence intervals**: patient-level bootstrap (patients resampled with replacement).

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

from xraytriage.data.boxes import GroundTruth, index_images, load_ground_truth, patient_of  # noqa: F401 - re-exported
from xraytriage.errors import ConfigError, ImageReadError
from xraytriage.explain.boxes import Box, boxes_from_heatmap, prior_for
from xraytriage.geometry import map_to_original
from xraytriage.labels import canonical_label
from xraytriage.preprocess import PreprocessContract
from xraytriage.sanitize import write_csv

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
    method: str = "model"
    patient: str = ""


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


KEY_COLUMNS = ["method", "source", "finding", "metric", "threshold"]
TABLE_COLUMNS = [*KEY_COLUMNS, "accuracy", "ci_low", "ci_high", "afp", "boxes", "images"]


def summarize(cases: Iterable[CaseScore], n_boot: int = 0, seed: int = 0) -> pd.DataFrame:
    """Long table: method, source (model | random), finding, metric, threshold, accuracy with a
    patient-level bootstrap 95% CI (``n_boot`` > 0), afp, boxes, images; plus ``Mean`` rows (the
    unweighted mean over findings, its CI from the same resamples)."""
    cases = list(cases)
    patients = sorted({c.patient or c.image.split("#")[0] for c in cases})
    pindex = {p: i for i, p in enumerate(patients)}
    hits: dict[tuple, np.ndarray] = {}
    counts: dict[tuple, np.ndarray] = {}
    fp: dict[tuple, int] = defaultdict(int)
    images: dict[tuple, set[str]] = defaultdict(set)

    def add(key: tuple, patient: str, flags: list[bool]) -> None:
        if key not in hits:
            hits[key], counts[key] = np.zeros(len(patients)), np.zeros(len(patients))
        hits[key][pindex[patient]] += sum(flags)
        counts[key][pindex[patient]] += len(flags)

    for case in cases:
        patient = case.patient or case.image.split("#")[0]
        for (metric, t), flags in case.hits.items():
            key = (case.method, case.source, case.finding, metric, t)
            add(key, patient, flags)
            fp[key] += case.false_positives[(metric, t)]
            images[key].add(case.image)
        key = (case.method, case.source, case.finding, "pointing", np.nan)
        add(key, patient, case.pointing)
        images[key].add(case.image)
    if not hits:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    weights = (
        np.random.default_rng(seed).multinomial(
            len(patients), np.full(len(patients), 1 / len(patients)), size=n_boot
        )
        if n_boot > 0
        else None
    )
    boot: dict[tuple, np.ndarray] = {}
    rows = []
    for key in hits:
        method, source, finding, metric, t = key
        n = counts[key].sum()
        bkey = (method, source, finding, metric, _tkey(t))
        if weights is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                boot[bkey] = (weights @ hits[key]) / (weights @ counts[key])
        low, high = _interval(boot.get(bkey))
        n_images = len(images[key])
        rows.append(
            {
                "method": method, "source": source, "finding": finding, "metric": metric, "threshold": t,
                "accuracy": float(hits[key].sum() / n) if n else np.nan, "ci_low": low, "ci_high": high,
                "afp": fp[key] / n_images if metric != "pointing" and n_images else np.nan,
                "boxes": int(n), "images": n_images,
            }
        )  # fmt: skip
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    means = []
    for (method, source, metric), part in table.groupby(["method", "source", "metric"], sort=False):
        for t in {_tkey(v): v for v in part["threshold"].tolist()}.values():
            same = part[part["threshold"].isna()] if pd.isna(t) else part[part["threshold"] == t]
            keys = [(method, source, f, metric, _tkey(t)) for f in same["finding"]]
            stack = np.vstack([boot[k] for k in keys]) if weights is not None else None
            low, high = _interval(np.nanmean(stack, axis=0) if stack is not None else None)
            means.append(
                {
                    "method": method, "source": source, "finding": "Mean", "metric": metric, "threshold": t,
                    "accuracy": float(same["accuracy"].mean()), "ci_low": low, "ci_high": high,
                    "afp": float(same["afp"].mean()), "boxes": int(same["boxes"].sum()),
                    "images": int(same["images"].sum()),
                }
            )  # fmt: skip
    table = pd.concat([table, pd.DataFrame(means, columns=TABLE_COLUMNS)], ignore_index=True)
    order = {"IoBB": 0, "IoU": 1, "pointing": 2}
    table["_m"] = table["metric"].map(order)
    table["_f"] = table["finding"].eq("Mean")
    table = table.sort_values(["method", "source", "_m", "threshold", "_f", "finding"]).drop(
        columns=["_m", "_f"]
    )
    return table.reset_index(drop=True)


def _tkey(threshold) -> str:
    """A dictionary key for a threshold (NaN, the pointing game's, never equals itself)."""
    return "-" if pd.isna(threshold) else f"{float(threshold):g}"


def _interval(values: np.ndarray | None) -> tuple[float, float]:
    if values is None:
        return np.nan, np.nan
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.nan, np.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def markdown_table(table: pd.DataFrame) -> str:
    """Wang et al.-style tables, one per method: one row per (metric, T), one column per finding;
    cells ``accuracy [95% CI] (random same-size control)``, AFP rows likewise."""
    if table.empty:
        return "_no ground-truth boxes were evaluated_\n"
    if "method" not in table.columns:
        table = table.assign(method="model")
    out = []
    for method in dict.fromkeys(table["method"]):
        part = table[table["method"] == method]
        if table["method"].nunique() > 1:
            out.append(f"### {method}\n")
        out.append(_method_markdown(part))
    return "\n".join(out)


def _method_markdown(table: pd.DataFrame) -> str:
    findings = [*sorted(set(table["finding"]) - {"Mean"}), "Mean"]
    model = table[table["source"] == "model"].set_index(["metric", "threshold", "finding"])
    rand = table[table["source"] == "random"].set_index(["metric", "threshold", "finding"])

    def cell(frame: pd.DataFrame, key: tuple, column: str, ci: bool = False) -> str:
        try:
            value = frame.loc[key, column]
        except KeyError:
            return "–"
        if pd.isna(value):
            return "–"
        text = f"{value:.2f}"
        if ci and "ci_low" in frame.columns and not pd.isna(frame.loc[key, "ci_low"]):
            text += f" [{frame.loc[key, 'ci_low']:.2f}, {frame.loc[key, 'ci_high']:.2f}]"
        return text

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
                f"{cell(model, (metric, t, f), column, column == 'accuracy')} ({cell(rand, (metric, t, f), column)})"
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


# --- random control (seeding) -----------------------------------------------------------------------
def case_seed(seed: int, image: str, finding: str, repeat: int) -> int:
    """Order-independent seed for one (image, finding, repeat): the control is reproducible."""
    return zlib.crc32(f"{seed}|{image}|{finding}|{repeat}".encode())


# --- map sources: the methods compared ---------------------------------------------------------
class CamSource:
    """Grad-CAM / Grad-CAM++ maps of a classifier (an :class:`~xraytriage.explain.Explainer`)."""

    def __init__(self, explainer) -> None:
        if getattr(explainer, "localiser", None) is not None:
            raise ConfigError(
                "CamSource needs an Explainer with method gradcam or gradcam++ (this one uses the localiser)"
            )
        self.explainer = explainer
        self.name = explainer.method
        self.box_threshold = explainer.box_threshold
        outputs = {canonical_label(n) for n in explainer.checkpoint.label_names}
        self._outputs = outputs

    def covers(self, finding: str) -> bool:
        return canonical_label(finding) in self._outputs

    def prior(self, finding: str):
        return prior_for(finding, self.explainer.priors)

    def maps(self, radiograph, findings: Sequence[str]) -> dict[str, np.ndarray]:
        from xraytriage.explain.explainer import explain_image

        out = {}
        for e in explain_image(self.explainer, radiograph, list(findings)):
            out[canonical_label(e.finding)] = e.heatmap
        return out


class LocaliserSource:
    """The box-supervised localiser's maps (:class:`~xraytriage.models.localiser.Localiser`)."""

    name = "localiser"

    def __init__(self, localiser, box_threshold: float | None = None) -> None:
        self.localiser = localiser
        self.box_threshold = float(
            box_threshold if box_threshold is not None else localiser.spec.box_threshold
        )

    def covers(self, finding: str) -> bool:
        return self.localiser.covers(finding)

    def prior(self, finding: str):
        return None

    def maps(self, radiograph, findings: Sequence[str]) -> dict[str, np.ndarray]:
        return self.localiser.maps(radiograph.pixels, findings)


# --- the random same-size control -------------------------------------------------------------
def random_same_size(boxes: Sequence[Box], height: int, width: int, rng: np.random.Generator) -> list[Box]:
    """Each box moved to a uniformly random place inside the image, its size kept: what a method
    that knows only how big the finding tends to be would score."""
    out = []
    for b in boxes:
        w, h = min(b.w, width), min(b.h, height)
        out.append(Box(float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h)), w, h, b.score))
    return out


def random_point(boxes: Sequence[Box], height: int, width: int) -> tuple[float, float]:
    """Centre of the first box (already placed at random), or the image centre when none."""
    if boxes:
        return boxes[0].x + boxes[0].w / 2, boxes[0].y + boxes[0].h / 2
    return width / 2, height / 2


def point_in(point: tuple[float, float], truth: Box) -> bool:
    x, y = point
    return truth.x <= x <= truth.x + truth.w and truth.y <= y <= truth.y + truth.h


def score_maps(
    image: str,
    patient: str,
    finding: str,
    heat: np.ndarray,
    truths: Sequence[Box],
    method: str,
    box_threshold: float,
    prior=None,
    max_boxes: int = 3,
    random_repeats: int = 5,
    seed: int = 0,
    exclude: np.ndarray | None = None,
) -> tuple[CaseScore, list[CaseScore], list[Box]]:
    """One method's map of one finding on one image: its case, the random same-size control's
    cases (one per repeat) and the predicted boxes."""
    h, w = heat.shape
    kwargs = {"prior": prior, "max_boxes": max_boxes}
    if exclude is not None:
        kwargs["exclude"] = exclude
    predicted = boxes_from_heatmap(heat, box_threshold, **kwargs)
    case = score_case(image, finding, heat, truths, predicted, "model")
    case.method, case.patient = method, patient
    controls = []
    for repeat in range(random_repeats):
        rng = np.random.default_rng(case_seed(seed, f"{method}|{image}", finding, repeat))
        rboxes = random_same_size(predicted, h, w, rng)
        if not rboxes:  # nothing predicted: the control points at a random pixel
            point = (float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        else:
            point = random_point(rboxes, h, w)
        control = score_case(f"{image}#{repeat}", finding, np.zeros((1, 1)), truths, rboxes, "random")
        control.pointing = [point_in(point, t) for t in truths]
        control.method, control.patient = method, patient
        controls.append(control)
    return case, controls, predicted


def box_rows(
    method: str,
    image: str,
    patient: str,
    finding: str,
    truths: Sequence[Box],
    case: CaseScore,
    controls: Sequence[CaseScore],
    predicted: Sequence[Box],
) -> list[dict]:
    """One ``localization_boxes.csv`` row per ground-truth box of one scored case."""
    return [
        {
            "method": method,
            "image": image,
            "patient": patient,
            "finding": finding,
            "x": t.x,
            "y": t.y,
            "w": t.w,
            "h": t.h,
            "best_iou": case.best_iou[i],
            "best_iobb": case.best_iobb[i],
            "pointing": case.pointing[i],
            "random_pointing": float(np.mean([c.pointing[i] for c in controls])) if controls else np.nan,
            "predicted_boxes": len(predicted),
        }
        for i, t in enumerate(truths)
    ]


# --- the benchmark ------------------------------------------------------------------------
@dataclass
class LocalizationResult:
    table: pd.DataFrame
    per_box: pd.DataFrame
    images: int = 0
    skipped_findings: dict[str, int] = field(default_factory=dict)
    missing_images: int = 0
    errors: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)


def _as_sources(methods) -> dict:
    if isinstance(methods, dict):
        return dict(methods)
    if hasattr(methods, "maps"):
        return {methods.name: methods}
    return {methods.method: CamSource(methods)}  # an Explainer


def evaluate_localization(
    methods,
    image_folders: Sequence[str | Path],
    truth: GroundTruth,
    max_boxes: int = 3,
    random_repeats: int = 5,
    seed: int = 0,
    progress: bool = True,
    patients: dict[str, str] | None = None,
    n_boot: int = 1000,
    suppress_markers: bool = True,
) -> LocalizationResult:
    """Run the benchmark for every method in ``methods`` (name -> source with ``maps``,
    ``covers``, ``box_threshold``, ``prior``; or one :class:`~xraytriage.explain.Explainer`) on
    the same GT boxes whose images are found in ``image_folders``, each next to its random
    same-size control. Unreadable images are reported and skipped; a finding no method covers
    is counted in ``skipped_findings``. Raises ConfigError when nothing could be evaluated."""
    from xraytriage.io import read_radiograph
    from xraytriage.progress import progress_bar

    sources = _as_sources(methods)
    files = index_images(image_folders)
    boxes = truth.boxes
    covered = boxes["finding"].map(lambda f: any(src.covers(f) for src in sources.values()))
    skipped = boxes[~covered]["finding"].value_counts().to_dict()
    usable = boxes[covered]
    present = usable[usable["image"].isin(files)]
    missing = int(usable["image"].nunique() - present["image"].nunique())
    if present.empty:
        where = ", ".join(str(f) for f in image_folders)
        raise ConfigError(
            f"nothing to evaluate: none of the {usable['image'].nunique()} images with boxes in {truth.source or 'the box file'} "
            f"for the findings the model covers was found under {where} ({len(files)} image files there)"
        )
    marker_mask = _marker_mask_function() if suppress_markers else None
    cases: list[CaseScore] = []
    per_box: list[dict] = []
    errors: list[str] = []
    groups = list(present.groupby("image", sort=True))
    for image, group in progress_bar(groups, desc="localize", unit="image", disable=not progress):
        try:
            radiograph = read_radiograph(files[image])
        except ImageReadError as exc:
            errors.append(str(exc))
            log.warning("skipped %s", exc)
            continue
        h, w = radiograph.height, radiograph.width
        sx, sy = (w / truth.reference_size, h / truth.reference_size) if truth.reference_size else (1.0, 1.0)
        patient = (patients or {}).get(image) or patient_of(image)
        findings = list(dict.fromkeys(group["finding"]))
        exclude = marker_mask(radiograph.pixels) if marker_mask else None
        for method, src in sources.items():
            wanted = [f for f in findings if src.covers(f)]
            maps = src.maps(radiograph, wanted) if wanted else {}
            for finding in wanted:
                heat = maps.get(canonical_label(finding))
                if heat is None:
                    continue
                rows = group[group["finding"] == finding]
                truths = [Box(r.x, r.y, r.w, r.h).scaled(sx, sy) for r in rows.itertuples()]
                case, controls, predicted = score_maps(
                    image, patient, finding, heat, truths, method, src.box_threshold, src.prior(finding),
                    max_boxes, random_repeats, seed, exclude,
                )  # fmt: skip
                cases.append(case)
                cases.extend(controls)
                per_box += box_rows(method, image, patient, finding, truths, case, controls, predicted)
    if not cases:
        raise ConfigError(
            f"nothing was evaluated: all {len(groups)} images with boxes failed to read ({'; '.join(errors[:3])})"
        )
    return LocalizationResult(
        table=summarize(cases, n_boot=n_boot, seed=seed),
        per_box=pd.DataFrame(per_box),
        images=len({c.image for c in cases if c.source == "model"}),
        skipped_findings={str(k): int(v) for k, v in skipped.items()},
        missing_images=missing,
        errors=errors,
        methods=list(sources),
    )


def evaluate_input_maps(
    maps: np.ndarray,
    findings: Sequence[str],
    names: Sequence[str],
    patients: Sequence[str],
    sizes: np.ndarray,
    boxes: pd.DataFrame,
    contract: PreprocessContract,
    method: str = "localiser",
    box_threshold: float = 0.5,
    max_boxes: int = 3,
    random_repeats: int = 5,
    seed: int = 0,
    n_boot: int = 1000,
    progress: bool = True,
) -> LocalizationResult:
    """The benchmark on maps already computed on the network input (N, F, S, S), e.g. a
    localiser's out-of-fold maps: each map is taken to its image's original size, boxed and
    scored against ``boxes`` (``index, finding, x, y, w, h`` in original pixels)."""
    from xraytriage.progress import progress_bar

    cases: list[CaseScore] = []
    per_box: list[dict] = []
    channel = {canonical_label(f): i for i, f in enumerate(findings)}
    for index, group in progress_bar(
        list(boxes.groupby("index", sort=True)), desc=method, disable=not progress
    ):
        index = int(index)
        h, w = (int(v) for v in sizes[index])
        wanted = [f for f in dict.fromkeys(group["finding"]) if canonical_label(f) in channel]
        if not wanted:
            continue
        heats = map_to_original(
            np.asarray(maps[index, [channel[canonical_label(f)] for f in wanted]], dtype=np.float32),
            contract,
            h,
            w,
        )
        for finding, heat in zip(wanted, heats, strict=True):
            rows = group[group["finding"] == finding]
            truths = [Box(r.x, r.y, r.w, r.h) for r in rows.itertuples()]
            case, controls, predicted = score_maps(
                names[index], patients[index], finding, heat, truths, method, box_threshold, None,
                max_boxes, random_repeats, seed,
            )  # fmt: skip
            cases += [case, *controls]
            per_box += box_rows(
                method, names[index], patients[index], finding, truths, case, controls, predicted
            )
    if not cases:
        raise ConfigError("nothing was evaluated: no box of a finding the maps cover")
    return LocalizationResult(
        table=summarize(cases, n_boot=n_boot, seed=seed),
        per_box=pd.DataFrame(per_box),
        images=len({c.image for c in cases if c.source == "model"}),
        methods=[method],
    )


def _marker_mask_function():
    """The burned-in marker detector when this version has one (boxes never land on markers)."""
    try:
        from xraytriage.explain.markers import marker_mask
    except ImportError:
        return None
    return marker_mask


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
    write_csv(result.table, paths["csv"], index=False)
    write_csv(result.per_box, paths["boxes"], index=False)
    notes = [
        f"# Localisation{': ' + title if title else ''}",
        "",
        f"{result.images} images, {result.per_box['patient'].nunique() if 'patient' in result.per_box else '?'} "
        f"patients, {len(result.per_box)} (method, ground-truth box) pairs; methods: {', '.join(result.methods)}. "
        "Cells: accuracy [patient-level bootstrap 95% CI] (random same-size control: the method's own "
        "boxes moved to random places, in brackets); AFP = average false-positive boxes per image. "
        "IoBB/IoU localised when > T (Wang et al., CVPR 2017, Table 3).",
        "",
    ]
    if result.skipped_findings:
        notes.append(
            "Findings no method covers (boxes skipped): "
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
