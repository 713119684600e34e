"""Download one file over HTTP(S): resumable, with progress, verified.

The bytes go to ``DEST.part``; a cut download resumes from where it stopped (an HTTP
``Range`` request; a server that ignores it sends the whole file again, which replaces the
part). Only a complete file whose SHA-256 matches (when one is expected) is renamed to
``DEST``; a mismatch removes the file and raises :class:`ChecksumError`. Network failures
raise :class:`DownloadError` naming the URL, with what to do when offline.
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import urllib.error
import urllib.request
from pathlib import Path

from xraytriage import __version__
from xraytriage.errors import ChecksumError, DownloadError, XRayTriageError  # noqa: F401 - re-exported

CHUNK = 1 << 20
TIMEOUT_S = 60.0


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, offset: int):
    headers = {"User-Agent": f"xraytriage/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _offline_help(url: str, dest: Path, reason: object) -> DownloadError:
    return DownloadError(
        f"cannot download {url}: {reason}. Check the internet connection (or proxy: HTTPS_PROXY); "
        f"without one, copy the file from a machine that has it to {dest} and run the command "
        "again (it is verified before use)"
    )


def download(url: str, dest: str | Path, sha256: str | None = None, progress: bool = True) -> str:
    """Fetch ``url`` to ``dest`` (resuming ``dest.part``); returns the file's SHA-256.

    With ``sha256`` the file must match it, else it is removed and ChecksumError raised.
    """
    from xraytriage.progress import progress_bar

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    try:
        try:
            response = _open(url, offset)
        except urllib.error.HTTPError as exc:
            if exc.code != 416 or not offset:  # 416: the range starts at or past the end
                raise
            part.unlink()
            offset = 0
            response = _open(url, 0)
        with response:
            status = getattr(response, "status", 200)
            if offset and status != 206:
                offset = 0  # the server ignored the range: it sends the whole file
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            with (
                open(part, "ab" if offset else "wb") as out,
                progress_bar(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name[:40],
                    disable=not progress,
                    file=sys.stderr,
                ) as bar,
            ):
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except http.client.HTTPException as exc:  # e.g. the connection closed mid-transfer
        raise DownloadError(
            f"download of {url} was interrupted ({exc.__class__.__name__}); run the command again to resume"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _offline_help(url, dest, reason) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"download of {url} ended after {size} of {total} bytes; run the command again to resume"
        )
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{url}: the downloaded file does not match its SHA-256 (expected {sha256}, got {digest}); "
            "it was refused and removed"
        )
    part.replace(dest)
    return digest
