"""The states a study, an image, a study's heatmaps and its DICOM results go through, and the
moves between them: written down here and checked here, for every write the repository makes.

Image (``images.state``)::

    queued --claim--> processing --scored--> done | error
    queued --scored (another instance's restart re-queued it meanwhile)--> done | error
                      processing --requeue (crash, full disk, failed batch)--> queued
                      processing --in flight at 3 crashes--> error

Study (``studies.state``)::

    queued | processing --settle: an image still waits--> processing
    queued | processing --settle: every image settled--> done | error (none readable)
    processing --restart--> queued
    done | error --a new image--> queued

Heatmaps of a study (``studies.heatmaps_state``)::

    (any) --settle--> pending (findings to draw) | none
    pending --claim--> processing --drawn--> done | error
    processing --restart, full disk--> pending

Reader status (``studies.read_status``): the reader moves freely between new, reading and
read; the service itself only moves read -> new (a new image arrived after reading).

DICOM results (``studies.dicom_results_state``, node-received studies only)::

    none | sent | kept | error --an image received--> pending
    pending --built and sent--> sent | kept (no destination) | error (gave up) | pending (retry)

A move that is not listed is a bug: :func:`check_move` raises :class:`IllegalTransition`.
Moving to the state a row is already in is always allowed (writes are idempotent).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from xraytriage.errors import IllegalTransition


class ImageState(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    ERROR = "error"


class StudyState(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    ERROR = "error"


class HeatmapsState(StrEnum):
    NONE = "none"
    PENDING = "pending"
    PROCESSING = "processing"
    DONE = "done"
    ERROR = "error"


class ReadStatus(StrEnum):
    NEW = "new"
    READING = "reading"
    READ = "read"


class ResultsState(StrEnum):
    NONE = "none"
    PENDING = "pending"
    SENT = "sent"
    KEPT = "kept"
    ERROR = "error"


T = TypeVar("T", bound=StrEnum)
State = ImageState | StudyState | HeatmapsState | ReadStatus | ResultsState

_I, _S, _H, _R, _D = ImageState, StudyState, HeatmapsState, ReadStatus, ResultsState
TRANSITIONS: dict[type[StrEnum], dict[StrEnum, frozenset[StrEnum]]] = {
    ImageState: {
        # queued -> done | error: scored by a worker after another instance's restart re-queued it
        _I.QUEUED: frozenset({_I.PROCESSING, _I.DONE, _I.ERROR}),
        _I.PROCESSING: frozenset({_I.DONE, _I.ERROR, _I.QUEUED}),
        _I.DONE: frozenset(),
        _I.ERROR: frozenset(),
    },
    StudyState: {
        _S.QUEUED: frozenset({_S.PROCESSING, _S.DONE, _S.ERROR}),
        _S.PROCESSING: frozenset({_S.DONE, _S.ERROR, _S.QUEUED}),
        _S.DONE: frozenset({_S.QUEUED}),
        _S.ERROR: frozenset({_S.QUEUED}),
    },
    HeatmapsState: {
        _H.NONE: frozenset({_H.PENDING}),
        _H.PENDING: frozenset({_H.NONE, _H.PROCESSING}),
        _H.PROCESSING: frozenset({_H.DONE, _H.ERROR, _H.PENDING, _H.NONE}),
        _H.DONE: frozenset({_H.PENDING, _H.NONE}),
        _H.ERROR: frozenset({_H.PENDING, _H.NONE}),
    },
    ReadStatus: {status: frozenset(ReadStatus) for status in ReadStatus},
    ResultsState: {
        _D.NONE: frozenset({_D.PENDING}),
        _D.PENDING: frozenset({_D.SENT, _D.KEPT, _D.ERROR}),
        _D.SENT: frozenset({_D.PENDING}),
        _D.KEPT: frozenset({_D.PENDING}),
        _D.ERROR: frozenset({_D.PENDING}),
    },
}
"""For each kind of state: from each state, the states a row may move to (besides itself)."""


def check_move(kind: type[T], old: str | None, new: str) -> T:
    """``new`` as a member of ``kind`` when a row of that kind may move from ``old`` to it
    (``old`` None: a new row); :class:`IllegalTransition` otherwise."""
    target = kind(new)
    if old is None or kind(old) == target:
        return target
    if target not in TRANSITIONS[kind][kind(old)]:
        raise IllegalTransition(f"{kind.__name__}: {old} -> {new} is not a move of the life cycle")
    return target


def sources(kind: type[T], new: T) -> tuple[T, ...]:
    """The states from which ``new`` can be reached (for bulk ``UPDATE ... WHERE state IN``)."""
    return tuple(old for old, targets in TRANSITIONS[kind].items() if new in targets or old == new)


__all__ = [
    "TRANSITIONS",
    "HeatmapsState",
    "ImageState",
    "ReadStatus",
    "ResultsState",
    "State",
    "StudyState",
    "check_move",
    "sources",
]
