"""A study's tier (critical | flagged | routine), the reason for its flag, and its ood_score.

``tier`` is what the worklist sorts on first (critical studies lead, in SQL as in
``triage.worklist.sort_worklist``); ``flag_reason`` is the text the reader sees next to the
flag; ``ood_score`` (how unlike the training images the study is) is filled by models that
carry reference statistics and stays NULL otherwise. Studies triaged before this revision keep
NULL/empty values until they are triaged again. ``predicted_at`` gets an index: the drift
monitor reads the latest triaged studies.

Revision ID: 0005_tier_reason
Revises: 0002_findings_json
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_tier_reason"
down_revision = "0004_sop_unique"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("tier", sa.String(16), nullable=True))
    op.add_column("studies", sa.Column("flag_reason", sa.Text, nullable=False, server_default=""))
    op.add_column("studies", sa.Column("ood_score", sa.Float, nullable=True))
    op.create_index("ix_studies_tier", "studies", ["tier"])
    op.create_index("ix_studies_predicted_at", "studies", ["predicted_at"])  # the drift window


def downgrade() -> None:
    op.drop_index("ix_studies_predicted_at", table_name="studies")
    op.drop_index("ix_studies_tier", table_name="studies")
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL): batch mode would copy the
    # table, which the images' foreign key to it forbids
    for name in ("ood_score", "flag_reason", "tier"):
        op.drop_column("studies", name)
