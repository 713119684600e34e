"""Content-addressed storage: a file is kept under the SHA-256 of its bytes.

The same upload twice is one blob (and so one image, one study). File names a user gave are
never used as paths, so no name can reach outside the store. Writes go to a temporary file
that is fsync'ed and renamed, so an acknowledged upload survives a crash.

Uploads stream into ``root/tmp/`` (same file system, so storing one is a rename); temporary
files are removed on every path, and those a killed process left behind are swept at start.
A full disk is a :class:`StorageFull` (HTTP 507), never a bare 500.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from xraytriage.errors import StorageFull

log = logging.getLogger(__name__)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def is_storage_error(exc: BaseException) -> bool:
    """True for a full or read-only disk, from the OS or from SQLite (via SQLAlchemy)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, StorageFull):
            return True
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return True
        text = str(exc).lower()
        if "database or disk is full" in text or "disk i/o error" in text or "no space left" in text:
            return True
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "orig", None)
    return False


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
        self.tmp = self.root / "tmp"
        for folder in (self.blobs, self.derived_root, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

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

    def put_file(self, source: Path, digest: str) -> bool:
        """Move a fully written temporary file (in :attr:`tmp`) into place as blob ``digest``
        (the caller hashed it while writing); True when it is new. Durable when this returns."""
        target = self.path(digest)
        if target.is_file() and target.stat().st_size == source.stat().st_size:
            source.unlink(missing_ok=True)
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(source, target)
        _fsync_dir(target.parent)
        return True

    def remove(self, digest: str) -> None:
        """Delete a blob (one whose database row could not be written: an orphan)."""
        self.path(digest).unlink(missing_ok=True)

    def discard(self, digest: str) -> None:
        """Delete a blob and every picture derived from it (its row is gone: a replaced DICOM
        copy, or an image past the retention period)."""
        self.remove(digest)
        folder = self.derived_root / self._check(digest)[:2] / digest
        shutil.rmtree(folder, ignore_errors=True)

    def temp_file(self) -> Path:
        """A new empty file in :attr:`tmp` for an upload to stream into (the caller removes it)."""
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix="upload-")
        os.close(fd)
        return Path(name)

    def sweep(self, known: set[str] | None = None, grace_s: float = 300.0) -> dict[str, int]:
        """Remove what a killed or out-of-space process left: every file in :attr:`tmp`, the
        ``.tmp-*`` halves of atomic writes, and (with ``known``, the image ids in the
        database) blobs older than ``grace_s`` that no image row refers to."""
        removed = {"temp": 0, "orphans": 0}
        for path in self.tmp.iterdir():
            path.unlink(missing_ok=True)
            removed["temp"] += 1
        for folder in (self.blobs, self.derived_root):
            for path in folder.rglob(".tmp-*"):
                path.unlink(missing_ok=True)
                removed["temp"] += 1
        if known is not None:
            cutoff = time.time() - grace_s
            for path in self.blobs.glob("*/*"):
                orphan = path.name not in known and re.fullmatch(r"[0-9a-f]{64}", path.name)
                if orphan and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
                    removed["orphans"] += 1
        return removed

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
    if durable:
        _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
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


class StorageMonitor:
    """Is the data folder able to take writes? Free space against a reserve, and the last
    storage error until a probe write succeeds again (checked at most every ``probe_s``)."""

    def __init__(self, root: Path, min_free_bytes: int, probe_s: float = 2.0) -> None:
        self.root = Path(root)
        self.min_free_bytes = int(min_free_bytes)
        self.probe_s = probe_s
        self._lock = threading.Lock()
        self._error: str | None = None
        self._checked_at = 0.0
        self._ok = True

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def note(self, exc: BaseException) -> None:
        """Record a storage error (the service is degraded until a probe write succeeds)."""
        with self._lock:
            self._error = f"{type(exc).__name__}: {exc}"[:300]
            self._ok = False
            self._checked_at = time.time()
        log.warning("storage error in %s: %s", self.root, self._error)

    def _probe(self) -> bool:
        probe = self.root / "tmp" / f".probe-{os.getpid()}-{threading.get_ident()}"
        try:
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
            return True
        except OSError:
            return False
        finally:
            probe.unlink(missing_ok=True)

    def healthy(self) -> bool:
        """False from a storage error until a probe write succeeds (probed every ``probe_s``)."""
        now = time.time()
        with self._lock:
            if self._ok or now - self._checked_at < self.probe_s:
                return self._ok
            self._checked_at = now
            self._ok = self._probe()
            if self._ok:
                self._error = None
                log.info("storage in %s is writable again", self.root)
            return self._ok

    def ok(self) -> bool:
        """Healthy and above the free-space reserve."""
        return self.healthy() and self.free_bytes() >= self.min_free_bytes

    def refuse_if_full(self, incoming: int = 0) -> None:
        """:class:`StorageFull` when ``incoming`` more bytes would eat into the reserve."""
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes or not self.ok():
            raise StorageFull(
                errno.ENOSPC,
                f"the server's storage is full ({free / 2**20:,.1f} MB free, "
                f"{self.min_free_bytes / 2**20:,.0f} MB kept in reserve): nothing was stored; "
                "try again later",
            )

    def status(self) -> dict:
        ok = self.ok()
        return {
            "ok": ok,
            "free_mb": round(self.free_bytes() / 2**20, 1),
            "reserve_mb": round(self.min_free_bytes / 2**20, 1),
            "error": None if ok else (self._error or "free space is below the reserve"),
        }
