"""``xraytriage backup`` and ``xraytriage restore``: the service's database and images in one
file, taken while the service runs (see ``serving.backup`` for what the archive holds)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _db_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="the service's database when it is not the SQLite file in --data-dir "
        "(postgresql://user@host/name; needs pg_dump / pg_restore)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backup",
        help="back up the service's database and stored images into one file (while it runs)",
        description="Write the triage service's database (SQLite online backup API, or pg_dump) and "
        "every stored image into one tar file, with a manifest of checksums. Safe while `serve` runs.",
    )
    p.add_argument("--data-dir", type=Path, required=True, help="the service's --data-dir")
    p.add_argument(
        "--output", "-o", type=Path, required=True, help="the backup file to write (e.g. backup.tar)"
    )
    _db_argument(p)
    p.set_defaults(handler=run_backup)
    r = subparsers.add_parser(
        "restore",
        help="restore a backup into an empty data folder (and database)",
        description="Restore a file `xraytriage backup` wrote into an empty --data-dir (and, for "
        "PostgreSQL, an empty database given with --db); every file is checked against the manifest. "
        "Then start `xraytriage serve --data-dir ...` on it.",
    )
    r.add_argument("--input", "-i", type=Path, required=True, help="the backup file")
    r.add_argument("--data-dir", type=Path, required=True, help="an empty folder for the restored service")
    _db_argument(r)
    r.set_defaults(handler=run_restore)


def _database_url(value: str | None) -> str | None:
    from xraytriage.cli.serve import _database_url as serve_url

    return serve_url(value)


def run_backup(args: argparse.Namespace) -> int:
    from xraytriage.serving.backup import backup

    manifest = backup(args.data_dir, args.output, _database_url(args.db))
    images = sum(1 for name in manifest["files"] if name.startswith("blobs/"))
    rows = ", ".join(f"{n} {t}" for t, n in manifest["rows"].items()) or "pg_dump"
    print(f"{args.output}: database ({rows}) and {images} images")
    if manifest["missing"]:
        print(f"warning: {len(manifest['missing'])} images were removed while the backup ran")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from xraytriage.serving.backup import restore

    manifest = restore(args.input, args.data_dir, _database_url(args.db))
    images = sum(1 for name in manifest["files"] if name.startswith("blobs/"))
    print(f"{args.data_dir}: restored the {manifest['database']} database and {images} images "
          f"(backup of xraytriage {manifest['version']}); start it with: xraytriage serve --data-dir {args.data_dir}")  # fmt: skip
    return 0
