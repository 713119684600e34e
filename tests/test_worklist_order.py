"""One worklist order for Python and SQL: triage's ``sort_worklist`` and the service's SQL
(``Repository.worklist`` and a study's rank) sort the same rows the same way, both built from
``triage.worklist_order.WORKLIST_ORDER``."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from xraytriage.serving.db import Database, Study
from xraytriage.serving.repository import Repository
from xraytriage.triage.worklist import WorklistRow, order_values, sort_worklist
from xraytriage.triage.worklist_order import WORKLIST_ORDER, OrderKey, sort_key

DONE = "done"


def _rows(n: int, seed: int) -> list[WorklistRow]:
    """Triaged studies with ties in priority and site priority, missing values, every tier, STAT."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        rows.append(
            WorklistRow(
                study=f"s{rng.randrange(10**6):06d}-{i:03d}",
                path=f"s{i:03d}.png",
                priority=rng.choice([0.5, 0.25, 0.0, None, round(rng.random(), 3)]),
                site_priority=rng.choice([None, None, 0.0, 0.5, 0.8, 1.0]),
                tier=rng.choice(["routine", "flagged", "critical", None]),
            )
        )
    return rows


def _service_order(rows: list[WorklistRow], tmp_path: Path) -> tuple[list[str], Repository]:
    db = Database(f"sqlite:///{tmp_path / 'order.db'}")
    with db.session() as s:
        for row in rows:  # one arrival time: a triage run's rows arrive together
            s.add(Study(id=row.study, name=row.study, state=DONE, priority=row.priority,
                        site_priority=row.site_priority, tier=row.tier, received_at=1000.0))  # fmt: skip
    repo = Repository(db)
    return [study.id for study, _, _ in repo.worklist().rows], repo


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_python_and_sql_sort_the_same_rows_the_same_way(tmp_path, seed):
    rows = _rows(80, seed)
    python = [row.study for row in sort_worklist(rows)]
    sql, repo = _service_order(rows, tmp_path)
    assert sql == python
    # the ties the tie-breakers settle are there (else the comparison proves little)
    keys = [(r.tier == "critical", r.priority, r.site_priority) for r in rows]
    assert len(set(keys)) < len(keys) and any(r.priority is None for r in rows)
    # a study's rank, counted in SQL from the same spec, is its place in the list
    for place, study in enumerate(python, start=1):
        if dict((r.study, r) for r in rows)[study].priority is not None:
            assert repo.study_view(study).rank == place, study


def test_a_different_python_order_would_be_caught(tmp_path):
    """The control: Python sorted with the site priority before the priority disagrees with SQL."""
    rows = _rows(80, 0)
    swapped = (WORKLIST_ORDER[0], WORKLIST_ORDER[2], WORKLIST_ORDER[1], *WORKLIST_ORDER[3:])
    python = [r.study for r in sorted(rows, key=lambda r: sort_key(order_values(r), swapped))]
    sql, _ = _service_order(rows, tmp_path)
    assert sql != python


def test_sort_key_null_rules_and_directions():
    order = (OrderKey("a", descending=True), OrderKey("b", descending=False, nulls="first"))
    values = [{"a": 1.0, "b": "y"}, {"a": None, "b": "x"}, {"a": 2.0, "b": None}, {"a": 1.0, "b": None}]
    ordered = sorted(values, key=lambda v: sort_key(v, order))
    assert ordered == [
        {"a": 2.0, "b": None},
        {"a": 1.0, "b": None},
        {"a": 1.0, "b": "y"},
        {"a": None, "b": "x"},
    ]
    text_desc = sorted(["b", "c", "a"], key=lambda t: sort_key({"t": t}, (OrderKey("t", descending=True),)))
    assert text_desc == ["c", "b", "a"]
