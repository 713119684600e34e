"""The schema of the last version without migrations; takes up a database such a version made.

On an empty database it creates the three tables (as ``create_all`` did). On a database an
earlier version made (no ``alembic_version``) it creates the tables that are missing and adds
the columns and indexes that version did not have yet: what the service used to do at every
start (``add_missing_columns``), done once. The tables are written out here, not taken from
the models, so that this revision stays what it is when the models change.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

metadata = sa.MetaData()


def column(name: str, kind, default=None, **options) -> sa.Column:
    """A column; ``default`` is what a column added to an older table gets in existing rows."""
    options.setdefault("nullable", False)
    return sa.Column(name, kind, info={"default": default}, **options)


studies = sa.Table(
    "studies",
    metadata,
    column("id", sa.String(32), primary_key=True),
    column("source", sa.String(16), "upload"),
    column("study_uid", sa.String(128), nullable=True, index=True),
    column("calling_ae", sa.String(32), nullable=True),
    column("name", sa.String(200), ""),
    column("received_at", sa.Float, index=True),
    column("last_image_at", sa.Float),
    column("updated_at", sa.Float),
    column("state", sa.String(16), "queued", index=True),
    column("read_status", sa.String(16), "new", index=True),
    column("priority", sa.Float, nullable=True, index=True),
    column("abnormal", sa.Float, nullable=True),
    column("findings", sa.Text, ""),
    column("probabilities_json", sa.Text, "{}"),
    column("site_priority", sa.Float, nullable=True),
    column("key_image_id", sa.String(64), nullable=True),
    column("error", sa.Text, ""),
    column("predicted_at", sa.Float, nullable=True),
    column("heatmaps_state", sa.String(16), "none", index=True),
    column("explained_at", sa.Float, nullable=True),
    column("dicom_results_state", sa.String(16), "none", index=True),
    column("dicom_results_info", sa.Text, ""),
    column("new_images_at", sa.Float, nullable=True),
    column("warnings", sa.Text, ""),
    column("patient_id", sa.String(64), ""),
    column("accession", sa.String(64), ""),
    column("patient_age", sa.String(16), ""),
    column("patient_sex", sa.String(16), ""),
    column("study_date", sa.String(16), ""),
    column("views", sa.String(64), ""),
    column("body_parts", sa.String(64), ""),
)

images = sa.Table(
    "images",
    metadata,
    column("id", sa.String(64), primary_key=True),
    column("study_id", sa.String(32), sa.ForeignKey("studies.id"), index=True),
    column("filename", sa.String(200), ""),
    column("format", sa.String(16), ""),
    column("size_bytes", sa.Integer, 0),
    column("state", sa.String(16), "queued", index=True),
    column("error", sa.Text, ""),
    column("probabilities_json", sa.Text, "{}"),
    column("abnormal", sa.Float, nullable=True),
    column("site_priority", sa.Float, nullable=True),
    column("width", sa.Integer, nullable=True),
    column("height", sa.Integer, nullable=True),
    column("sop_instance_uid", sa.String(128), nullable=True),
    column("modality", sa.String(16), ""),
    column("view_position", sa.String(16), ""),
    column("body_part", sa.String(32), ""),
    column("received_at", sa.Float, index=True),
    column("processed_at", sa.Float, nullable=True),
    column("attempts", sa.Integer, 0),
)

heatmaps = sa.Table(
    "heatmaps",
    metadata,
    column("image_id", sa.String(64), sa.ForeignKey("images.id"), primary_key=True),
    column("finding", sa.String(64), primary_key=True),
    column("probability", sa.Float),
    column("threshold", sa.Float),
    column("box_json", sa.Text, "null"),
    column("created_at", sa.Float),
)


def _added(source: sa.Column) -> sa.Column:
    """A column for ``ALTER TABLE ... ADD COLUMN``: nullable, existing rows get its default."""
    default = source.info.get("default")
    server_default = None
    if isinstance(default, str):
        server_default = default
    elif isinstance(default, int | float):
        server_default = sa.text(repr(default))
    return sa.Column(source.name, source.type, nullable=True, server_default=server_default)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in existing:
            table.create(bind)
            continue
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for source in table.columns:
            if source.name not in have:
                op.add_column(table.name, _added(source))
        indexes = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                op.create_index(index.name, table.name, [c.name for c in index.columns])


def downgrade() -> None:
    for table in reversed(metadata.sorted_tables):
        op.drop_table(table.name)
