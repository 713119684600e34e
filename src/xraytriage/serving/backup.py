"""``xraytriage backup`` / ``restore``: the service's database and stored images in one file.

The archive is a plain tar (the images are compressed already)::

    manifest.json        what is inside: version, database kind, row counts, SHA-256 of every file
    database.sqlite      SQLite: a consistent copy made with SQLite's online backup API
    database.pgdump      PostgreSQL: ``pg_dump --format=custom`` (restored with ``pg_restore``)
    blobs/ab/abcdef...   every stored image, exactly as received

Consistent while the service runs: the database copy is one snapshot (the online backup API
copies a consistent state even while others write; pg_dump runs in one transaction), and a
blob is always written before the row that refers to it, so every image the snapshot knows
has its blob. Blobs are content-addressed and never change; one that retention deleted
between the snapshot and the copy is listed as missing (the restored study then shows the
image as unreadable). Derived pictures (display images, heatmaps) are not kept: the
restored service draws them again on demand.

``restore`` refuses a data folder that already holds a database or images (no overwriting),
checks every file against the manifest, and never writes outside the target folder (member
names are checked: no absolute paths, no ``..``, regular files only).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from xraytriage import __version__
from xraytriage.errors import BackupError

FORMAT = "xraytriage-backup/1"
BLOB_NAME = re.compile(r"^blobs/[0-9a-f]{2}/[0-9a-f]{64}$")
DATABASE_FILES = ("database.sqlite", "database.pgdump")


def sqlite_path(data_dir: Path, db_url: str | None) -> Path | None:
    """The SQLite file of a service (None when it uses another database)."""
    if db_url is None:
        return Path(data_dir) / "xraytriage.db"
    if db_url.startswith("sqlite:///"):
        return Path(db_url.removeprefix("sqlite:///"))
    return None


def libpq_url(db_url: str) -> str:
    """``postgresql+psycopg://...`` -> ``postgresql://...`` (what pg_dump/pg_restore take)."""
    if not db_url.startswith("postgresql"):
        raise BackupError(f"{db_url.split('://')[0]}: only SQLite and PostgreSQL databases can be backed up")
    return "postgresql://" + db_url.split("://", 1)[1]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _snapshot_sqlite(source: Path, target: Path) -> dict[str, int]:
    """SQLite's online backup API; the row count of each table of the copy."""
    if not source.is_file():
        raise BackupError(f"{source}: no database here (is --data-dir the service's data folder?)")
    src = sqlite3.connect(source, timeout=60)  # reads only; the backup API copies a consistent state
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        tables = [r[0] for r in dst.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: dst.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in sorted(tables)}
    finally:
        dst.close()
        src.close()


def _image_ids_sqlite(snapshot: Path) -> set[str]:
    connection = sqlite3.connect(snapshot)
    try:
        return {r[0] for r in connection.execute("SELECT id FROM images")}
    except sqlite3.Error:
        return set()
    finally:
        connection.close()


def _run(command: list[str], what: str) -> None:
    if shutil.which(command[0]) is None:
        raise BackupError(f"{command[0]} not found: install the PostgreSQL client tools to {what}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise BackupError(f"{command[0]} failed ({what}): {result.stderr.strip()[-500:]}")


def backup(data_dir: Path, output: Path, db_url: str | None = None) -> dict[str, Any]:
    """Write the archive to ``output`` (atomically); returns its manifest."""
    data_dir, output = Path(data_dir), Path(output)
    blob_root = data_dir / "blobs"
    if not blob_root.is_dir():
        raise BackupError(f"{data_dir}: not a service data folder (no blobs/ folder)")
    with tempfile.TemporaryDirectory(prefix="xraytriage-backup-") as tmp:
        local = sqlite_path(data_dir, db_url)
        if local is not None:
            database = Path(tmp) / "database.sqlite"
            rows = _snapshot_sqlite(local, database)
            known = _image_ids_sqlite(database)
        else:
            database = Path(tmp) / "database.pgdump"
            _run(
                ["pg_dump", "--format=custom", "--no-owner", f"--file={database}", libpq_url(db_url or "")],
                "back up the database",
            )
            rows, known = {}, None
        files = {database.name: _sha256(database)}
        blob_paths = sorted(
            p
            for p in blob_root.glob("*/*")
            if p.is_file() and BLOB_NAME.match(f"blobs/{p.parent.name}/{p.name}")
        )
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": __version__,
            "created": time.time(),
            "database": "sqlite" if local is not None else "postgresql",
            "rows": rows,
            "files": files,
            "missing": [],
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(database, arcname=database.name)
            for path in blob_paths:
                name = f"blobs/{path.parent.name}/{path.name}"
                try:
                    files[name] = _sha256(path)
                    tar.add(path, arcname=name)
                except FileNotFoundError:  # retention removed it meanwhile
                    files.pop(name, None)
            if known is not None:
                stored = {name.rsplit("/", 1)[1] for name in files if name.startswith("blobs/")}
                manifest["missing"] = sorted(known - stored)
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with open(partial, "rb+") as fh:
            os.fsync(fh.fileno())
        partial.replace(output)
    return manifest


def _members(tar: tarfile.TarFile, archive: Path) -> dict[str, tarfile.TarInfo]:
    """The archive's members by name, every one checked (see the module doc)."""
    members = {}
    for member in tar.getmembers():
        name = member.name
        allowed = name == "manifest.json" or name in DATABASE_FILES or BLOB_NAME.match(name)
        if not member.isfile() or not allowed:
            raise BackupError(f"{archive}: unexpected entry {name[:100]!r}: not an xraytriage backup")
        members[name] = member
    return members


def restore(archive: Path, data_dir: Path, db_url: str | None = None) -> dict[str, Any]:
    """Restore ``archive`` into an empty ``data_dir`` (and, for PostgreSQL, the empty
    database ``db_url``); returns the manifest."""
    archive, data_dir = Path(archive), Path(data_dir)
    local = sqlite_path(data_dir, db_url)
    if (local is not None and local.exists()) or any((data_dir / "blobs").glob("*/*")):
        raise BackupError(f"{data_dir}: already holds a database or images; restore into an empty folder")
    try:
        tar = tarfile.open(archive, "r:")  # noqa: SIM115 (closed by the with below)
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{archive}: not a readable backup ({exc})") from None
    with tar, tempfile.TemporaryDirectory(prefix="xraytriage-restore-") as tmp:
        members = _members(tar, archive)
        if "manifest.json" not in members:
            raise BackupError(f"{archive}: no manifest.json: not an xraytriage backup")
        manifest = json.loads(tar.extractfile(members["manifest.json"]).read())
        if manifest.get("format") != FORMAT:
            raise BackupError(f"{archive}: unknown backup format {manifest.get('format')!r}")
        expected: dict[str, str] = manifest["files"]
        if set(expected) != set(members) - {"manifest.json"}:
            raise BackupError(f"{archive}: the files do not match its manifest (incomplete or altered)")
        staging = Path(tmp) / "data"
        for name, member in members.items():
            if name == "manifest.json":
                continue
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if _sha256(target) != expected[name]:
                raise BackupError(f"{archive}: {name} does not match its checksum (damaged backup)")
        database = staging / ("database.sqlite" if manifest["database"] == "sqlite" else "database.pgdump")
        data_dir.mkdir(parents=True, exist_ok=True)
        if manifest["database"] == "sqlite":
            if local is None:
                raise BackupError(
                    f"{archive}: holds a SQLite database; restore it without --db (or a sqlite URL)"
                )
        elif local is not None:
            raise BackupError(
                f"{archive}: holds a PostgreSQL dump; give --db postgresql://... of an empty database"
            )
        else:
            _run(["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={libpq_url(db_url or '')}", str(database)],
                 "restore the database")  # fmt: skip
        for path in sorted((staging / "blobs").glob("*/*")):
            target = data_dir / "blobs" / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), target)
        if local is not None:
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(database), local)
    return manifest


__all__ = ["BackupError", "backup", "restore"]
