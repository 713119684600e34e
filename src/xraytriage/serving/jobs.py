"""The service's three jobs, as functions of what they need: score claimed images, settle a
study, draw a study's heatmaps. The worker (:mod:`~xraytriage.serving.worker`) only claims
work and runs these; start-up settles studies a crash left unsettled with the same function.

Scoring and settling use the triage engine's code (aggregation, priority, thresholds), so the
service ranks exactly as ``xraytriage triage`` does. A storage error (full disk) propagates:
the worker keeps the work aside until a write succeeds again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from xraytriage.scope import low_resolution_warning
from xraytriage.serving.outages import is_database_outage
from xraytriage.serving.picture_store import Drawings
from xraytriage.serving.records import Finding, ImageRecord, ImageScore, Settlement, StudyScores
from xraytriage.serving.repository import Repository
from xraytriage.serving.routing import RoutedScore, ServiceRouting
from xraytriage.serving.states import HeatmapsState, ImageState
from xraytriage.serving.storage import BlobStore, is_storage_error
from xraytriage.triage.engine import ImageResult, TriageEngine
from xraytriage.triage.priority import flag_point
from xraytriage.triage.routing import shared_urgency
from xraytriage.triage.worklist import parse_findings

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 3
"""An image is given up after being in flight this many times (see ``Repository.recover``)."""


@dataclass(frozen=True)
class HeatmapPolicy:
    """Which heatmaps are drawn ahead of time: of each settled study's first ``findings``
    listed findings, when ``enabled`` (others are drawn on request)."""

    enabled: bool = True
    findings: int = 4


def score_images(
    repo: Repository,
    engine: TriageEngine,
    store: BlobStore,
    images: Sequence[ImageRecord],
    settle: Callable[[str], None],
    routing: ServiceRouting | None = None,
) -> int:
    """Read and score claimed images (one engine batch), save each result, then ``settle``
    their studies; returns how many were scored. A failed batch is retried (or given up
    after :data:`MAX_ATTEMPTS`) instead of failing its images. With ``routing`` each image
    goes to the model its body part calls for (or is an error "no model for this body part")."""
    by_path = {str(store.path(image.id)): image for image in images}
    try:
        if routing is None:
            routed = [RoutedScore(r.path, None, "", r) for r in engine.iter_results(list(by_path))]
        else:
            routed = routing.score(list(by_path))
    except Exception as exc:
        log.exception("batch of %d images failed", len(images))
        repo.retry_or_fail(
            [image.id for image in images],
            f"internal error while scoring: {type(exc).__name__}",
            MAX_ATTEMPTS,
        )
        for study_id in sorted({image.study_id for image in images}):
            settle(study_id)
        return 0
    scores = []
    for item in routed:
        image, result = by_path[item.path], item.result
        part = item.decision.body_part if item.decision is not None else ""
        if result is not None and result.ok and result.probabilities is not None:
            labels = list((routing.engine_of(item.model) if routing else engine).checkpoint.label_names)
            probabilities = {n: float(p) for n, p in zip(labels, result.probabilities, strict=True)}
            note = (item.decision.warning,) if item.decision is not None and item.decision.warning else ()
            scores.append(
                ImageScore(
                    image.id,
                    probabilities,
                    result.abnormal,
                    result.site_priority,
                    ood_score=result.ood_score,
                    warnings=(*result.warnings, *note),
                    body_part=part,
                    model=item.model,
                )
            )
        else:
            # the engine names the blob; the user knows the file by the name they gave
            error = (item.error or (result.error if result else "") or "unknown error").replace(
                item.path, image.filename
            )
            scores.append(ImageScore(image.id, error=error, body_part=part, model=item.model))
    repo.save_scores(scores)
    for study_id in sorted({image.study_id for image in images}):
        settle(study_id)
    log.info("scored %d images", len(routed))
    return len(routed)


def decide_study(
    engine: TriageEngine,
    policy: HeatmapPolicy,
    study_id: str,
    images: list[ImageRecord],
    routing: ServiceRouting | None = None,
) -> Settlement:
    """A study's settlement from its settled images: the triage engine's study row (aggregate,
    priority, findings, key image, highest ood_score), the images' caveats (age, OOD, low
    resolution), and whether heatmaps are due. With ``routing`` the study is scored by its
    images' model (the first in routing order when they differ; the others' images are named
    in its warnings), and carries its body part, model and urgency."""
    ok = [image for image in images if image.state == ImageState.DONE]
    error = "; ".join(image.error for image in images if image.state == ImageState.ERROR)
    parts = "+".join(dict.fromkeys(image.routed_body_part for image in images if image.routed_body_part))
    model_name, others = "", []
    if routing is not None and ok:
        names = [m.name for m in routing.models]
        model_name = min((image.model for image in ok), key=lambda n: names.index(n) if n in names else -1)
        others = [image for image in ok if image.model != model_name]
        ok = [image for image in ok if image.model == model_name]
        engine = routing.engine_of(model_name)
    checkpoint = engine.checkpoint
    labels = list(checkpoint.label_names)
    # scored by another model under other settings (routing turned off since): not this one's
    others += [image for image in ok if not set(labels) <= set(image.probabilities)]
    ok = [image for image in ok if set(labels) <= set(image.probabilities)]
    mixed = [
        f"{image.filename}: scored by the {image.model or 'other'} model, not in this study's score"
        for image in others
    ]
    if not ok:
        return Settlement(error or "; ".join(mixed), None, body_part=parts)
    results = [
        ImageResult(
            path=image.id,
            study=study_id,
            probabilities=np.array([image.probabilities[n] for n in labels], dtype=np.float64),
            abnormal=image.abnormal,
            site_priority=image.site_priority,
            warnings=image.warnings,
            ood_score=image.ood_score,
        )
        for image in ok
    ]
    row = engine.study_rows(results)[0]
    size = int(checkpoint.preprocess.size)
    # the images' own caveats (age, OOD; NULL for images scored before migration 0006) and the
    # low-resolution one from the stored size (which those older images lack)
    low = (low_resolution_warning(image.width, image.height, size) for image in ok)
    caveats = [*(w for image in ok for w in image.warnings), *low, *mixed]
    findings = [Finding(name, p) for name, p in parse_findings(row.findings)]
    scores = StudyScores(
        priority=row.priority,
        abnormal=row.abnormal,
        findings=findings,
        probabilities=row.probabilities,
        site_priority=row.site_priority,
        key_image_id=row.path,
        warnings="; ".join(dict.fromkeys(w for w in caveats if w)),
        tier=row.tier,
        flag_reason=row.flag_reason,
        ood_score=row.ood_score,
        urgency=shared_urgency(engine, row, flag_point(routing.primary.engine.checkpoint))
        if routing
        else None,
    )
    # the pictures are drawn by the service's own model: a study another model scored has none
    drawn = routing is None or model_name in ("", routing.primary.name)
    due = policy.enabled and drawn and bool(findings[: policy.findings])
    heatmaps = HeatmapsState.PENDING if due else HeatmapsState.NONE
    return Settlement(error, scores, heatmaps, body_part=parts, model=model_name)


def settle_study(
    repo: Repository,
    engine: TriageEngine,
    policy: HeatmapPolicy,
    study_id: str,
    routing: ServiceRouting | None = None,
) -> None:
    """Aggregate a study once none of its images is waiting (see ``Repository.settle``)."""
    repo.settle(study_id, lambda images: decide_study(engine, policy, study_id, images, routing))


def draw_study_heatmaps(repo: Repository, drawings: Drawings, policy: HeatmapPolicy, study_id: str) -> None:
    """The heatmaps of a claimed study's listed findings on its key image; the study's
    heatmaps end ``done``, or ``error`` when drawing failed (its predictions stand)."""
    target = repo.heatmap_target(study_id, policy.findings)
    if target is None:
        return
    image_id, findings = target
    try:
        drawings.ensure(image_id, findings)
        state = HeatmapsState.DONE
    except Exception as exc:
        if is_storage_error(exc) or is_database_outage(exc):
            raise  # not the picture's fault: the worker sets the study aside and tries again
        log.warning("study %s: heatmaps failed: %s", study_id, type(exc).__name__)
        state = HeatmapsState.ERROR
    repo.finish_heatmaps(study_id, state)


class Jobs:
    """The jobs bound to the service's parts: what the worker and start-up call."""

    def __init__(
        self,
        repo: Repository,
        engine: TriageEngine,
        store: BlobStore,
        drawings: Drawings,
        policy: HeatmapPolicy,
        routing: ServiceRouting | None = None,
    ) -> None:
        self.repo = repo
        self.engine = engine
        self.store = store
        self.drawings = drawings
        self.policy = policy
        self.routing = routing

    def score(self, images: Sequence[ImageRecord]) -> int:
        return score_images(self.repo, self.engine, self.store, images, self.settle, self.routing)

    def settle(self, study_id: str) -> None:
        settle_study(self.repo, self.engine, self.policy, study_id, self.routing)

    def draw(self, study_id: str) -> None:
        draw_study_heatmaps(self.repo, self.drawings, self.policy, study_id)


__all__ = [
    "MAX_ATTEMPTS",
    "HeatmapPolicy",
    "Jobs",
    "decide_study",
    "draw_study_heatmaps",
    "score_images",
    "settle_study",
]
