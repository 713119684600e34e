"""What the API and the pages read, in one place: the worklist (JSON and CSV) and a study.

Both the REST handlers and the HTML pages call these (a page embeds the same JSON the API
returns), so neither calls the other. Each takes what it needs explicitly: the repository,
the checkpoint (labels, thresholds) and whether identifiers are hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from xraytriage.errors import UnknownFinding
from xraytriage.labels import canonical_label
from xraytriage.serving.record_json import study_detail, study_summary, worklist_csv
from xraytriage.serving.repository import Repository


def known_finding(checkpoint, finding: str | None) -> str | None:
    """The model's own spelling of ``finding`` (any case, spaces or underscores), or None for
    no filter; :class:`UnknownFinding` naming the model's findings when it has no such one."""
    if finding is None:
        return None
    names = {canonical_label(n): n for n in checkpoint.label_names}
    key = canonical_label(finding)
    if key not in names:
        raise UnknownFinding(
            f"unknown finding {finding!r}; this model's are: {', '.join(checkpoint.findings)}"
        )
    return names[key]


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
) -> dict[str, Any]:
    """One page of the worklist (``finding``: a name :func:`known_finding` returned)."""
    page = repo.worklist(status, finding, state, limit, offset)
    flag_at = checkpoint.study_flag_threshold
    return {
        "total": page.total,
        "items": [
            study_summary(study, rank, images, hide_identifiers, flag_at) for study, rank, images in page.rows
        ],
        "labels": list(checkpoint.findings),
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
) -> str:
    rows = repo.worklist(status, finding, state).rows
    return worklist_csv(rows, checkpoint.label_names, hide_identifiers, checkpoint.study_flag_threshold)


def study_json(repo: Repository, checkpoint, hide_identifiers: bool, study_id: str) -> dict[str, Any] | None:
    """The study page's data; None when there is no such study."""
    view = repo.study_view(study_id)
    return None if view is None else study_detail(view, checkpoint, hide_identifiers)


__all__ = ["known_finding", "study_json", "worklist_csv_text", "worklist_json"]
