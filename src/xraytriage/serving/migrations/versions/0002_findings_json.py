"""A study's findings as JSON instead of "Effusion 0.81; Mass 0.64" text.

``studies.findings`` keeps its name and type (TEXT) and now holds
``[{"name": "Effusion", "probability": 0.81}, {"name": "Mass", "probability": 0.64}]``, most
probable first (names may contain spaces and semicolons no longer matter). Existing rows are
converted here; ``downgrade`` writes the text back.

Revision ID: 0002_findings_json
Revises: 0001_baseline
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0002_findings_json"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

studies = sa.table("studies", sa.column("id", sa.String), sa.column("findings", sa.Text))


def parse_text(text: str | None) -> list[dict]:
    """``"Effusion 0.81; Pleural Thickening 0.64"`` -> the JSON items (a copy of
    ``triage.worklist.parse_findings`` as it was, so this revision never changes)."""
    items = []
    for part in (text or "").split("; "):
        if part.strip():
            name, _, value = part.rpartition(" ")
            items.append({"name": name, "probability": float(value)})
    return items


def to_text(value: str | None) -> str:
    return "; ".join(f"{item['name']} {item['probability']:.2f}" for item in json.loads(value or "[]"))


def _rewrite(convert, needs) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(studies.c.id, studies.c.findings)).all()
    changes = [{"key": key, "value": convert(value)} for key, value in rows if needs(value)]
    if changes:
        statement = (
            sa.update(studies)
            .where(studies.c.id == sa.bindparam("key"))
            .values(findings=sa.bindparam("value"))
        )
        bind.execute(statement, changes)


def upgrade() -> None:
    _rewrite(lambda value: json.dumps(parse_text(value)), lambda value: not (value or "").startswith("["))


def downgrade() -> None:
    _rewrite(to_text, lambda value: (value or "").startswith("["))
