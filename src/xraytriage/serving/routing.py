"""Body-part routing in the service: each stored image to the model whose scope covers it.

The same rule as ``triage --route`` (:mod:`xraytriage.triage.routing`): the router reads the
image, the DICOM BodyPartExamined is checked against it, and the image goes to the first model
whose checkpoint scope lists the body part (the chest model, the fracture model), or becomes
an error "no model for this body part (...)". The first model is the service's own
(``--model``): its heatmaps, drift monitor and ``/api/v1/model`` stay its; the others only
score. Every model keeps its own preprocessing, calibration and operating points; a study's
``urgency`` puts its priority on the first model's scale (docs/routing.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xraytriage.scope import scope_problem
from xraytriage.triage.engine import ImageResult, TriageEngine
from xraytriage.triage.routing import BodyPartDecision, RoutedModel, RoutedTriage


@dataclass(frozen=True)
class RoutedScore:
    """One image after routing: its model's result, or why no model read it."""

    path: str
    decision: BodyPartDecision | None
    model: str = ""
    result: ImageResult | None = None
    error: str = ""


class ServiceRouting:
    """The router and the routed models of one service (built from its settings)."""

    def __init__(self, routed: RoutedTriage) -> None:
        if not routed.models:
            raise ValueError("routing needs at least one model")
        self.routed = routed

    @property
    def models(self) -> Sequence[RoutedModel]:
        return self.routed.models

    @property
    def primary(self) -> RoutedModel:
        """The service's own model (``--model``): heatmaps, drift and the SC pictures are its."""
        return self.routed.models[0]

    def engine_of(self, name: str) -> TriageEngine:
        """The engine of a routed model by name; the primary one for ``""`` (images scored
        before routing was turned on) or a name this service no longer has."""
        for model in self.routed.models:
            if model.name == name:
                return model.engine
        return self.primary.engine

    def accepts(self, header: dict) -> str | None:
        """Intake: None when some model's scope takes a file with this header (a hand goes to
        the fracture model), else the primary model's refusal (a lateral chest view...)."""
        problems = [scope_problem(header, m.engine.checkpoint) for m in self.routed.models]
        return None if any(p is None for p in problems) else problems[0]

    def score(self, paths: Sequence[str]) -> list[RoutedScore]:
        """Route ``paths`` (one decode each for the router) and score each with its model."""
        decisions, errors = self.routed.route(paths)
        out = [RoutedScore(path, None, error=error) for path, error in errors.items()]
        groups, no_model = self.routed.assign(paths, decisions)
        out += [RoutedScore(path, decisions[path], error=error) for path, error in no_model.items()]
        for model in self.routed.models:
            mine = groups.get(model.name, [])
            parts = {p: decisions[p].body_part for p in mine}  # the pixels chose over the header
            for result in model.engine.iter_results(mine, body_parts=parts):
                out.append(RoutedScore(result.path, decisions[result.path], model.name, result))
        return out


__all__ = ["RoutedScore", "ServiceRouting"]
