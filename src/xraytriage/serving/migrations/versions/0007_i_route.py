"""Body-part routing in the service: which body part and which model each image and study got.

``images.routed_body_part`` (the router's decision; ``images.body_part`` stays the DICOM
header's) and ``images.model`` are written when the image is scored; ``studies.body_part``,
``studies.model`` and ``studies.urgency`` (the priority on the scale shared by every model,
docs/routing.md) when the study is settled. Rows from before, and every row of a service that
does not route, keep empty strings and NULL: the worklist then orders them by ``priority`` as
before (``coalesce(urgency, priority)``).

Revision ID: 0007_i_route
Revises: 0006_image_ood
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_i_route"
down_revision = "0006_image_ood"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("studies", sa.Column("body_part", sa.String(64), nullable=False, server_default=""))
    op.add_column("studies", sa.Column("model", sa.String(64), nullable=False, server_default=""))
    op.add_column("studies", sa.Column("urgency", sa.Float, nullable=True))
    op.add_column("images", sa.Column("routed_body_part", sa.String(32), nullable=False, server_default=""))
    op.add_column("images", sa.Column("model", sa.String(64), nullable=False, server_default=""))


def downgrade() -> None:
    # plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL), as in 0005 and 0006
    for name in ("model", "routed_body_part"):
        op.drop_column("images", name)
    for name in ("urgency", "model", "body_part"):
        op.drop_column("studies", name)
