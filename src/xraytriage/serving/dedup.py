"""One DICOM instance counts once per study: the same SOP Instance UID received again (in another
transfer syntax, re-sent by a PACS, or corrected) replaces the earlier copy instead of becoming
one more image. Identical bytes are already one image (the blob's hash is the image id); this
catches the same instance in different bytes.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from xraytriage.serving.db import Heatmap, Image, Study


def replace_earlier_copies(
    session: Session, study_id: str, sop_instance_uid: str | None, keep: str
) -> list[str]:
    """Remove the study's other images with ``sop_instance_uid`` (their heatmap rows too), so that
    ``keep``, the copy just received, is the one that counts; returns the removed image ids.

    Call it in the transaction that adds ``keep``, after adding it: the insert comes first, so on
    SQLite two copies arriving at once are serialised and the later one sees the earlier. The
    blobs stay on disk, stored exactly as received.
    """
    if not sop_instance_uid:
        return []
    earlier = list(
        session.scalars(
            select(Image).where(
                Image.study_id == study_id,
                Image.sop_instance_uid == sop_instance_uid,
                Image.id != keep,
            )
        )
    )
    if not earlier:
        return []
    removed = [image.id for image in earlier]
    session.execute(delete(Heatmap).where(Heatmap.image_id.in_(removed)))
    for image in earlier:
        session.delete(image)
    study = session.get(Study, study_id)
    if study is not None and study.key_image_id in removed:
        study.key_image_id = None  # the study is queued again; settling picks the new key image
    return removed
