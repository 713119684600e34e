"""Content-addressed storage: a file is kept under the SHA-256 of its bytes.

The same upload twice is one blob (and so one image, one study). File names a user gave are
never used as paths, so no name can reach outside the store. Writes go to a temporary file
that is fsync'ed and renamed, so an acknowledged upload survives a crash.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

SAFE_NAME = re.compile(r"[^A-Za-z0-9._ ()+-]+")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_filename(name: str | None, default: str = "upload") -> str:
    """A display name from what a client sent: the last path part, odd characters replaced.

    ``../../etc/passwd`` -> ``passwd``; ``C:\\x\\chest.png`` -> ``chest.png``. Only ever shown,
    never used to build a path.
    """
    base = re.split(r"[\\/]", name or "")[-1]
    base = SAFE_NAME.sub("_", base).strip(" .")
    return base[:120] or default


class BlobStore:
    """``root/blobs/ab/abcdef...`` for uploads; ``root/derived/ab/abcdef.../`` for pictures made from them."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.derived_root = self.root / "derived"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.derived_root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _check(digest: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ValueError(f"not a SHA-256 digest: {digest!r}")
        return digest

    def path(self, digest: str) -> Path:
        digest = self._check(digest)
        return self.blobs / digest[:2] / digest

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data``; returns (digest, created). Durable when this returns."""
        digest = sha256_bytes(data)
        target = self.path(digest)
        if target.is_file() and target.stat().st_size == len(data):
            return digest, False
        target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(target, data)
        return digest, True

    def derived(self, digest: str) -> Path:
        """Folder for pictures derived from one blob (display image, heatmaps)."""
        digest = self._check(digest)
        folder = self.derived_root / digest[:2] / digest
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def _atomic_write(target: Path, data: bytes, durable: bool = True) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if not durable:
        return
    try:  # make the rename itself durable
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_atomic(target: Path, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``target`` all at once (readers never see half a file);
    ``durable`` also fsyncs, so the file survives a power cut once this returns."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, data, durable)
    return target
