"""Each image's ood_score and warnings, so a settled study carries them.

``images.ood_score`` (how unlike the training images, ``models.ood``; 1.0 = the warning line)
and ``images.warnings`` (a JSON list of the triage engine's caveats for the image: patient age
outside the model's ages, unlike the training images, low resolution) are written when the
image is scored; the study's ``ood_score`` is the highest of its images' and its warnings join
theirs. Images scored before this revision keep NULL (their study has no ood_score, only the
low-resolution caveat, until rescored).

Revision ID: 0006_image_ood
Revises: 0005_tier_reason
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_image_ood"
down_revision = "0005_tier_reason"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("images", sa.Column("ood_score", sa.Float, nullable=True))
    op.add_column("images", sa.Column("warnings", sa.Text, nullable=True))


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL), as in 0005
    for name in ("warnings", "ood_score"):
        op.drop_column("images", name)
