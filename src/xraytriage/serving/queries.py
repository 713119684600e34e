"""What the API and the pages read, in one place: the worklist (JSON and CSV) and a study.

Both the REST handlers and the HTML pages call these (a page embeds the same JSON the API
returns), so neither calls the other. Each takes what it needs explicitly: the repository,
the checkpoint (labels, thresholds) and whether identifiers are hidden.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from xraytriage.errors import UnknownFinding
from xraytriage.labels import canonical_label
from xraytriage.serving.record_json import study_detail, study_summary, worklist_csv
from xraytriage.serving.repository import Repository

CheckpointOf = Callable[[str], Any]
"""A routed service's checkpoint of a study's ``model`` (``TriageService.checkpoint_of``)."""


def known_finding(checkpoint, finding: str | None, others: Sequence[Any] = ()) -> str | None:
    """The model's own spelling of ``finding`` (any case, spaces or underscores), or None for
    no filter; :class:`UnknownFinding` naming the model's findings when it has no such one.
    ``others``: the routed service's other models, whose findings count too."""
    if finding is None:
        return None
    models = [checkpoint, *others]
    names = {canonical_label(n): n for ckpt in reversed(models) for n in ckpt.label_names}
    key = canonical_label(finding)
    if key not in names:
        listed = ", ".join(n for ckpt in models for n in ckpt.findings)
        raise UnknownFinding(f"unknown finding {finding!r}; this model's are: {listed}")
    return names[key]


def _flag_at(checkpoint, checkpoint_of: CheckpointOf | None) -> Callable[[Any], float | None]:
    """Each study's own model's study threshold (routed services: the model that scored it)."""
    if checkpoint_of is None:
        return lambda study: checkpoint.study_flag_threshold
    return lambda study: (checkpoint_of(study.model) if study.model else checkpoint).study_flag_threshold


def worklist_json(
    repo: Repository,
    checkpoint,
    hide_identifiers: bool,
    queue: Callable[[], dict[str, int]],
    status: str | None = None,
    finding: str | None = None,
    state: str | None = None,
    limit: int = 500,
    offset: int = 0,
    checkpoint_of: CheckpointOf | None = None,
    findings: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One page of the worklist (``finding``: a name :func:`known_finding` returned;
    ``checkpoint_of``/``findings``: a routed service's models and all their findings)."""
    page = repo.worklist(status, finding, state, limit, offset)
    flag_at = _flag_at(checkpoint, checkpoint_of)
    return {
        "total": page.total,
        "items": [
            study_summary(study, rank, images, hide_identifiers, flag_at(study))
            for study, rank, images in page.rows
        ],
        "labels": list(findings if findings is not None else checkpoint.findings),
        "queue": queue(),
        "identifiers_hidden": hide_identifiers,
    }


def worklist_csv_text(
    repo: Repository,
    checkpoint,
    hide_identifiers: bool,
    status: str | None = None,
    finding: str | None = None,
    state: str | None = None,
    checkpoint_of: CheckpointOf | None = None,
    label_names: Sequence[str] | None = None,
) -> str:
    """The worklist as CSV; a routed service's adds ``urgency``, ``body_part`` and ``model``."""
    rows = repo.worklist(status, finding, state).rows
    labels = list(label_names if label_names is not None else checkpoint.label_names)
    routed = checkpoint_of is not None
    return worklist_csv(rows, labels, hide_identifiers, _flag_at(checkpoint, checkpoint_of), routed=routed)


def study_json(
    repo: Repository,
    checkpoint,
    hide_identifiers: bool,
    study_id: str,
    checkpoint_of: CheckpointOf | None = None,
) -> dict[str, Any] | None:
    """The study page's data (read with the checkpoint of the model that scored the study);
    None when there is no such study."""
    view = repo.study_view(study_id)
    if view is None:
        return None
    if checkpoint_of is not None and view.study.model:
        checkpoint = checkpoint_of(view.study.model)
    return study_detail(view, checkpoint, hide_identifiers)


__all__ = ["known_finding", "study_json", "worklist_csv_text", "worklist_json"]
