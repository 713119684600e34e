"""The worklist order, declared once: an ordered list of (key, direction, null rule).

``triage`` sorts its rows in Python with :func:`sort_key` and the service sorts its studies in
SQL with ``serving.worklist_sql`` (``order_by`` and the "rows ahead of this one" count); both are
built from :data:`WORKLIST_ORDER`, so the two lists cannot drift apart (a test sorts the same
rows both ways).

A key a side does not have ties there: a triage run's rows all arrive together (no
``received_at``), and the service holds one row per study id (no ``path`` to break a tie).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class OrderKey:
    """One sort key: the row value ``name``, highest first when ``descending``; a missing value
    (None) sorts after every value (``nulls="last"``) or before them (``"first"``)."""

    name: str
    descending: bool
    nulls: Literal["first", "last"] = "last"


WORKLIST_ORDER: tuple[OrderKey, ...] = (
    # triage.reasons.tier_rank: 1 for a critical study or one the site marked STAT (these jump the queue)
    OrderKey("queue_first", descending=True),
    # what orders the list (P(abnormal), raised by urgency weights or a site priority)
    OrderKey("priority", descending=True),
    # at equal priority the higher site priority; a study without one sorts below ROUTINE (0.0)
    OrderKey("site_priority", descending=True),
    # then the oldest, then the study key, then the file (ties only in image mode)
    OrderKey("received_at", descending=False),
    OrderKey("study", descending=False),
    OrderKey("path", descending=False),
)
"""Today's order, shared by ``triage.worklist.sort_worklist`` and the service's SQL."""


class _Reversed:
    """Reverses the order of any comparable value (for a descending text key)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        return other.value < self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and other.value == self.value


def sort_key(values: Mapping[str, Any], order: tuple[OrderKey, ...] = WORKLIST_ORDER) -> tuple:
    """A Python sort key for one row from its values by key name (a key not in ``values`` ties)."""
    parts: list[Any] = []
    for key in order:
        if key.name not in values:
            continue
        value = values[key.name]
        missing = value is None
        null_rank = (1 if missing else 0) if key.nulls == "last" else (0 if missing else 1)
        if missing:
            parts.append((null_rank, 0))
        elif key.descending:
            parts.append((null_rank, -value if isinstance(value, int | float) else _Reversed(value)))
        else:
            parts.append((null_rank, value))
    return tuple(parts)


__all__ = ["WORKLIST_ORDER", "OrderKey", "sort_key"]
