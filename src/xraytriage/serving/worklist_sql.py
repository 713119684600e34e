"""The worklist order (``triage.worklist_order.WORKLIST_ORDER``) in SQL: the ``ORDER BY`` of the
worklist and the "studies ahead of this one" condition that counts a study's rank.

Both are built from the one spec, with the columns the caller binds to its key names, so the
service lists studies exactly as ``triage`` sorts rows (a test sorts the same rows both ways).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, case, false, or_
from sqlalchemy.sql.elements import ColumnElement

from xraytriage.triage.reasons import STAT, TIER_CRITICAL
from xraytriage.triage.worklist_order import WORKLIST_ORDER, OrderKey


def queue_first(tier: ColumnElement, site_priority: ColumnElement) -> ColumnElement:
    """:func:`~xraytriage.triage.reasons.tier_rank` in SQL: 1 for a critical or STAT study, else 0."""
    stat = and_(site_priority.is_not(None), site_priority >= STAT)
    return case((or_(tier == TIER_CRITICAL, stat), 1), else_=0)


def order_by(columns: Mapping[str, ColumnElement]) -> list[ColumnElement]:
    """``ORDER BY`` clauses for the keys bound in ``columns`` (an unbound key ties)."""
    clauses = []
    for key in WORKLIST_ORDER:
        column = columns.get(key.name)
        if column is None:
            continue
        ordered = column.desc() if key.descending else column.asc()
        clauses.append(ordered.nulls_last() if key.nulls == "last" else ordered.nulls_first())
    return clauses


def _before(column: ColumnElement, value: Any, key: OrderKey) -> ColumnElement:
    """Rows whose ``column`` sorts strictly before ``value`` on this key."""
    if value is None:
        return column.is_not(None) if key.nulls == "last" else false()
    better = column > value if key.descending else column < value
    return or_(column.is_(None), better) if key.nulls == "first" else better


def ahead_of(columns: Mapping[str, ColumnElement], values: Mapping[str, Any]) -> ColumnElement:
    """Rows that sort strictly before a row with ``values`` (by key name), as :func:`order_by`
    sorts them: equal on every earlier key and before on this one, for some key."""
    terms, equal_so_far = [], []
    for key in WORKLIST_ORDER:
        column = columns.get(key.name)
        if column is None:
            continue
        value = values[key.name]
        terms.append(and_(*equal_so_far, _before(column, value, key)))
        equal_so_far.append(column.is_(None) if value is None else column == value)
    return or_(*terms)


__all__ = ["ahead_of", "order_by", "queue_first"]
