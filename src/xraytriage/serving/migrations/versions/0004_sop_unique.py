"""One image per DICOM instance and study, enforced by the database: a unique index on
``images (study_id, sop_instance_uid)``.

Before it, two copies of one SOP instance committed at the same instant on PostgreSQL could
both survive. Existing duplicates are resolved first as the service resolves them: the copy
received last stays; the others and their heatmap rows go (their blobs are swept as orphans
at the next start). Images without a SOP Instance UID (NULL) are not constrained.

Revision ID: 0004_sop_unique
Revises: 0003_audit
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_sop_unique"
down_revision = "0003_audit"
branch_labels = None
depends_on = None

INDEX = "uq_images_study_sop_instance"
images = sa.table(
    "images",
    sa.column("id", sa.String),
    sa.column("study_id", sa.String),
    sa.column("sop_instance_uid", sa.String),
    sa.column("received_at", sa.Float),
)
heatmaps = sa.table("heatmaps", sa.column("image_id", sa.String))
studies = sa.table("studies", sa.column("id", sa.String), sa.column("key_image_id", sa.String))


def _duplicates(bind) -> list[str]:
    """Ids of every copy but the last received of each (study, SOP instance)."""
    rows = bind.execute(
        sa.select(images.c.id, images.c.study_id, images.c.sop_instance_uid)
        .where(images.c.sop_instance_uid.is_not(None))
        .order_by(images.c.study_id, images.c.sop_instance_uid, images.c.received_at.desc(), images.c.id)
    ).all()
    seen, drop = set(), []
    for image_id, study_id, sop in rows:
        if (study_id, sop) in seen:
            drop.append(image_id)
        seen.add((study_id, sop))
    return drop


def upgrade() -> None:
    bind = op.get_bind()
    drop = _duplicates(bind)
    if drop:
        bind.execute(sa.delete(heatmaps).where(heatmaps.c.image_id.in_(drop)))
        bind.execute(sa.update(studies).where(studies.c.key_image_id.in_(drop)).values(key_image_id=None))
        bind.execute(sa.delete(images).where(images.c.id.in_(drop)))
    op.create_index(INDEX, "images", ["study_id", "sop_instance_uid"], unique=True)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="images")
