"""Which study an image belongs to.

- DICOM with a StudyInstanceUID: that UID (several images, one study), whatever the mode.
- ``file`` mode (default) otherwise: each file is its own study, named by its path.
- ``folder`` mode (MURA-style ``patientX/studyY/image.png``): the parent folder is the study.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xraytriage.errors import ConfigError

STUDY_MODES = ("file", "folder")


def check_study_mode(mode: str) -> str:
    if mode not in STUDY_MODES:
        raise ConfigError(f"unknown study mode {mode!r}; choose one of: {', '.join(STUDY_MODES)}")
    return mode


def study_key(path: str | Path, meta: dict[str, Any] | None = None, mode: str = "file") -> str:
    """The study identifier of one image: its DICOM StudyInstanceUID, its parent folder or its path.

    Paths are kept as the user gave them (relative stays relative), so the worklist reads
    like the input and two folders with the same name in different places stay apart.
    """
    check_study_mode(mode)
    uid = str((meta or {}).get("study_uid", "") or "").strip()
    if uid:
        return uid
    path = Path(path)
    if mode == "folder":
        return str(path.parent)
    return str(path)
