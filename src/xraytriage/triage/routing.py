"""Body-part routing: every image goes to the model whose scope covers it.

A hospital sends every CR/DX film, not only chests; a chest model given a hand answers with
chest findings. The router is a small image classifier (a checkpoint whose labels are body
parts: ``CHEST, HAND, LEG, HIP, SHOULDER``) combined with the DICOM header's
BodyPartExamined where there is one:

- the image's body part is the router's most probable label when it reaches
  ``min_confidence``; otherwise, when the parts one model covers reach it together (noisy-OR:
  "a limb, hand or leg"), that model's most probable part, with a note; otherwise the
  header's (when it names one), otherwise unknown;
- a header that names another part than a confident router is reported on the row
  (``warnings``) and the image decides: headers are often missing or wrong;
- the image then goes to the first model whose scope (``Checkpoint.scope['body_parts']``)
  lists that part, or becomes an error row "no model for this body part".

Each model scores its images with its own engine (its preprocessing, calibration and operating
points); the rows of all models form one worklist, each row naming its ``body_part`` and the
``model`` that scored it, ordered by :func:`shared_urgency`: each model's priority on the first
(reference, chest) model's scale, its own flag point mapped onto the reference's. Like the engine, this module imports no
deep-learning library: predictors are handed in.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xraytriage.io import iter_input_files
from xraytriage.models.predictor import Predictor
from xraytriage.scope import body_part_term
from xraytriage.triage.engine import ImageResult, Prepared, TriageEngine, TriageOptions, TriageResult
from xraytriage.triage.grouping import study_key
from xraytriage.triage.journal import Journal
from xraytriage.triage.priority import flag_point, on_reference_scale
from xraytriage.triage.worklist import WorklistRow, sort_worklist

MIN_CONFIDENCE = 0.5
NO_MODEL = "no model for this body part"
UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class BodyPartDecision:
    """Where one image goes: its body part, what the image and the header said, and a
    warning when they disagree."""

    body_part: str
    image_part: str
    image_confidence: float
    header_part: str
    warning: str = ""


def decide_body_part(
    probabilities: Sequence[float] | np.ndarray,
    labels: Sequence[str],
    header_part: str = "",
    min_confidence: float = MIN_CONFIDENCE,
    model_of: Mapping[str, str] | None = None,
) -> BodyPartDecision:
    """Combine the router's probabilities with the DICOM BodyPartExamined (may be empty).

    ``model_of`` (body part -> model name) lets an image whose exact part is unsure still be
    routed when the parts one model covers are together probable enough (their noisy-OR):
    the router may not know hand from leg and still know it is a limb."""
    probs = np.asarray(probabilities, dtype=np.float64)
    parts = [body_part_term(name) for name in labels]
    best = int(np.argmax(probs))
    confidence = float(probs[best])
    image_part = parts[best]
    header = body_part_term(header_part) if header_part else ""
    note = ""
    if confidence < min_confidence and model_of:
        grouped = _model_probabilities(probs, parts, model_of)
        model, p_model = max(grouped.items(), key=lambda item: item[1], default=("", 0.0))
        if p_model >= min_confidence:
            covered = [j for j, part in enumerate(parts) if model_of.get(part) == model]
            best = max(covered, key=lambda j: probs[j])
            image_part, confidence = parts[best], p_model
            note = f"body part uncertain: a {model} film (p={p_model:.2f}), most likely {image_part} (p={probs[best]:.2f})"
    if confidence >= min_confidence:
        warning = note
        if header and header != image_part:
            warning = "; ".join(filter(None, [note, (
                f"body part: DICOM BodyPartExamined says {header_part.strip()}, the image looks like "
                f"{image_part} (p={confidence:.2f}); routed as {image_part}"
            )]))  # fmt: skip
        return BodyPartDecision(image_part, image_part, confidence, header, warning)
    if header:
        return BodyPartDecision(header, image_part, confidence, header)
    return BodyPartDecision(UNKNOWN, image_part, confidence, header)


def _model_probabilities(
    probs: np.ndarray, parts: Sequence[str], model_of: Mapping[str, str]
) -> dict[str, float]:
    """P(the image belongs to each model): noisy-OR of the probabilities of the parts it covers."""
    out: dict[str, float] = {}
    for model in dict.fromkeys(model_of.values()):
        covered = [probs[j] for j, part in enumerate(parts) if model_of.get(part) == model]
        out[model] = float(1.0 - np.prod(1.0 - np.asarray(covered))) if covered else 0.0
    return out


@dataclass
class RoutedModel:
    """A model in the routing table: a name for the worklist and its engine."""

    name: str
    engine: TriageEngine

    @property
    def body_parts(self) -> list[str]:
        scope = self.engine.checkpoint.scope or {}
        return [body_part_term(b) for b in scope.get("body_parts") or []]


class RoutedTriage:
    """Route each image by body part, score it with its model, one worklist for all."""

    def __init__(
        self,
        router: Predictor,
        models: Sequence[RoutedModel],
        options: TriageOptions | None = None,
        min_confidence: float = MIN_CONFIDENCE,
        prepare: Any = None,
    ) -> None:
        self.options = options or TriageOptions()
        # ``prepare``: the router's decode step (the service's, with its pixel limits)
        self.router = TriageEngine(router, self.options, **({"prepare": prepare} if prepare else {}))
        self.labels = list(router.checkpoint.label_names)
        self.models = list(models)
        self.min_confidence = min_confidence
        self.model_of = {part: m.name for m in reversed(self.models) for part in m.body_parts}
        self.reference_point = flag_point(self.models[0].engine.checkpoint) if self.models else None
        """The first model's flag point: every model's urgency is on its scale."""

    def model_for(self, body_part: str) -> RoutedModel | None:
        """The first model whose scope lists ``body_part`` (an empty scope takes nothing here:
        a model that does not say what it reads is never chosen by routing)."""
        for model in self.models:
            if body_part in model.body_parts:
                return model
        return None

    def assign(
        self, paths: Iterable[str], decisions: dict[str, BodyPartDecision]
    ) -> tuple[dict[str, list[str]], dict[str, str]]:
        """The routed ``paths`` (those with a decision) per model name, in order, and the error
        "no model for this body part (...)" per path whose body part no model's scope covers."""
        by_model: dict[str, list[str]] = {}
        no_model: dict[str, str] = {}
        for path in paths:
            decision = decisions.get(path)
            if decision is None:
                continue
            model = self.model_for(decision.body_part)
            if model is None:
                no_model[path] = f"{path}: {NO_MODEL} ({decision.body_part.lower()})"
            else:
                by_model.setdefault(model.name, []).append(path)
        return by_model, no_model

    def route(self, paths: Iterable[str]) -> tuple[dict[str, BodyPartDecision], dict[str, str]]:
        """Body part per readable path, and the error per unreadable one (one decode each)."""
        decisions: dict[str, BodyPartDecision] = {}
        errors: dict[str, str] = {}
        batch: list[Prepared] = []

        def flush() -> None:
            if not batch:
                return
            logits = self.router.predictor.predict_logits(np.stack([p.image for p in batch]))
            probs = self.router.checkpoint.probabilities(logits)
            for prepared, row in zip(batch, probs, strict=True):
                header = str(prepared.meta.get("body_part") or "")
                decisions[prepared.path] = decide_body_part(
                    row, self.labels, header, self.min_confidence, self.model_of
                )
            batch.clear()

        for prepared in self.router.iter_prepared(paths):
            if prepared.error is not None:
                errors[prepared.path] = prepared.error
                continue
            batch.append(prepared)
            if len(batch) >= self.options.batch_size:
                flush()
        flush()
        return decisions, errors

    def run(self, inputs: Iterable[str | Path], journal: Journal | None = None) -> TriageResult:
        """Route and score every image under ``inputs``. With a ``journal`` (``triage --route
        --resume``) each scored image is written down with its body part and model, and the
        images a resumed journal already holds are neither routed nor scored again."""
        paths = [str(p) for p in iter_input_files(inputs)]
        start = time.perf_counter()
        previous = list(journal.previous) if journal is not None else []
        extras = journal.previous_extra if journal is not None else {}
        done_before: dict[str, list[ImageResult]] = {}
        decisions: dict[str, BodyPartDecision] = {}
        for result in previous:
            extra = extras.get(result.path) or {}
            if extra.get("model") in {m.name for m in self.models} and result.path in paths:
                decisions[result.path] = BodyPartDecision(**extra["decision"])
                done_before.setdefault(extra["model"], []).append(result)
        todo = [p for p in paths if p not in decisions]
        new_decisions, errors = self.route(todo)
        decisions.update(new_decisions)
        rows: list[WorklistRow] = []
        for path, error in errors.items():
            rows.append(WorklistRow.error_row(study_key(path, None, self.options.study_from), path, error))
        by_model, no_model = self.assign(todo, decisions)
        for path, error in no_model.items():
            row = WorklistRow.error_row(study_key(path, None, self.options.study_from), path, error)
            row.body_part = decisions[path].body_part
            rows.append(row)
        ok = 0
        interrupted = False
        for model in self.models:
            results: list[ImageResult] = list(done_before.get(model.name, []))
            try:
                mine = by_model.get(model.name, []) if not interrupted else []
                parts = {p: decisions[p].body_part for p in mine}  # the pixels chose over the header
                for result in model.engine.iter_results(mine, body_parts=parts):
                    if journal is not None:
                        decision = asdict(decisions[result.path])
                        journal.append(result, {"model": model.name, "decision": decision})
                    results.append(result)
            except KeyboardInterrupt:
                interrupted = True
            if not results:
                continue
            ok += sum(1 for r in results if r.ok)
            for row in model.engine.study_rows(results):
                rows.append(self._label(row, model, decisions))
        labels: list[str] = []
        for model in self.models:
            labels.extend(n for n in model.engine.checkpoint.label_names if n not in labels)
        return TriageResult(
            rows=sort_worklist(rows),
            label_names=labels,
            images_total=len(paths) if not interrupted else ok + len(errors),
            images_ok=ok,
            seconds=time.perf_counter() - start,
            backend=getattr(self.router.predictor, "name", ""),
            extra={
                "routing": routing_summary(decisions, errors, self),
                "resumed": len(paths) - len(todo),
                "interrupted": interrupted,
                "inputs": len(paths),
            },
        )

    def _label(
        self, row: WorklistRow, model: RoutedModel, decisions: Mapping[str, BodyPartDecision]
    ) -> WorklistRow:
        """A model's study row named with its model, body part, urgency and routing notes."""
        row.model = model.name
        row.urgency = shared_urgency(model.engine, row, self.reference_point)
        parts = dict.fromkeys(decisions[p].body_part for p in row.image_paths if p in decisions)
        row.body_part = "+".join(parts)
        notes = [decisions[p].warning for p in row.image_paths if p in decisions and decisions[p].warning]
        if notes:
            row.warnings = "; ".join(filter(None, [row.warnings, *dict.fromkeys(notes)]))
        return row


def shared_urgency(engine: TriageEngine, row: WorklistRow, reference: float | None) -> float | None:
    """A scored study's urgency on the reference model's scale (None for an error row): its
    model priority (urgency weights included, the site floor not) moved so that its model's
    flag point lands on ``reference``, then the site priority as a floor
    (``triage.priority.on_reference_scale``)."""
    if not row.ok or row.abnormal is None:
        return None
    labels = list(engine.checkpoint.label_names)
    probs = np.array([row.probabilities.get(n, 0.0) for n in labels], dtype=np.float64)
    model_priority = engine.rules.model_priority(row.abnormal, probs)
    return on_reference_scale(model_priority, flag_point(engine.checkpoint), reference, row.site_priority)


def routing_summary(
    decisions: dict[str, BodyPartDecision], errors: dict[str, str], routed: RoutedTriage
) -> dict[str, Any]:
    """Counts per body part and per model, and how many headers disagreed with the image."""
    parts: dict[str, int] = {}
    models: dict[str, int] = {}
    for decision in decisions.values():
        parts[decision.body_part] = parts.get(decision.body_part, 0) + 1
        model = routed.model_for(decision.body_part)
        key = model.name if model is not None else NO_MODEL
        models[key] = models.get(key, 0) + 1
    return {
        "body_parts": parts,
        "models": models,
        "header_disagreements": sum(1 for d in decisions.values() if d.warning),
        "unreadable": len(errors),
    }
