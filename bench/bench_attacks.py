"""Replays the denial-of-service attacks of issue 14 against the real ``xraytriage serve`` on
127.0.0.1 and prints, per attack, what the server did and its peak memory.

Each attack gets a fresh server (temporary data folder, bundled model); memory is the server
process's peak resident size (``VmHWM`` from /proc) over its whole life, start-up included.
Request counts are bounded (the largest is one upload of ``--upload-mb``).

1. heatmaps: a 7700 x 7700 PNG (57 KB), then ``--concurrent`` simultaneous requests for one
   of its heatmaps (served with the old 60 MP limit so that the file is accepted at all).
2. big upload: one file of ``--upload-mb`` (default 1500) against the 64 MB limit.
3. bombs: a deflated DICOM that inflates to 3.4 GB, an RLE DICOM that decodes to 1.6 GB and
   the 7700 px PNG at the default 36 MP limit.
4. poison: an image whose decoder kills the process; the server is restarted (as a
   supervisor would) until it stays up.
5. disk full (root only: a 48 MB tmpfs): an upload on the full disk, /healthz, and whether
   the stored work finishes once space is back.

Issue 25 (a hospital's bad day):

6. pg-restart: PostgreSQL restarted (``pg_ctl -m fast restart``) while ``--images`` images are
   uploaded one by one by a client that honours Retry-After; every acknowledged image must be
   triaged within 2 minutes, with no 500 and no service restart.
7. sqlite-lock: another process holds the SQLite write lock for 5 s while images are uploaded.
8. csrf: a signed-in browser's cookie sent from another loopback port (Origin, Sec-Fetch-Site
   same-site) or without the page's CSRF token.
9. csv: DICOM PatientID ``=cmd|' /C calc'!A0`` and AccessionNumber ``@SUM(1+1)*cmd`` exported
   in worklist.csv; an offset of 2**63 and unknown routes.
10. slowloris: ``--slow`` connections that never finish their headers, and bodies that stop.

    .venv/bin/python bench/bench_attacks.py                 # all five
    .venv/bin/python bench/bench_attacks.py --only heatmaps bombs --upload-mb 300
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])

from attacks import (  # noqa: E402
    big_png,
    concurrent_gets,
    deflate_bomb,
    memory_mb,
    poison_png,
    rle_bomb,
    upload_stream,
)
from serve_support import running_server, start_server  # noqa: E402

START_S = 600.0
ROWS: list[dict] = []


def report(
    attack: str,
    requests: int,
    accepted: int,
    refused: str,
    lost: int,
    peak_mb: float,
    seconds: float,
    note: str = "",
) -> None:
    row = dict(
        attack=attack,
        requests=requests,
        accepted=accepted,
        refused=refused,
        lost=lost,
        peak=peak_mb,
        s=seconds,
        note=note,
    )
    ROWS.append(row)
    print(
        f"{attack:<34} requests {requests:>3}  accepted {accepted:>3}  refused {refused:<14} lost {lost}  "
        f"server peak {peak_mb:7.0f} MB  {seconds:6.1f} s  {note}",
        flush=True,
    )


def nih(n: int, skip: int = 0) -> list[Path]:
    return sorted((SHARED / "nih" / "images").glob("*.png"))[skip : skip + n]


def part(path: Path) -> tuple[str, tuple[str, bytes, str]]:
    return ("files", (path.name, path.read_bytes(), "application/octet-stream"))


def settled(http: httpx.Client, n: int) -> list[dict] | None:
    items = http.get("/api/v1/worklist").json()["items"]
    return items if len(items) >= n and all(i["state"] in ("done", "error") for i in items) else None


def wait(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    return None


def attack_heatmaps(tmp: Path, concurrent: int) -> None:
    png = big_png(tmp / "huge.png", 7700)
    with (
        running_server(
            tmp / "h", "--no-heatmaps", "--workers", "1", "--max-megapixels", "60", timeout=START_S
        ) as srv,
        srv.client(timeout=600) as http,
    ):
        study_id = http.post("/api/v1/images", files=[part(png)]).json()["study_ids"][0]
        wait(lambda: settled(http, 1), 300)
        study = http.get(f"/api/v1/studies/{study_id}").json()
        finding = next(r["name"] for r in study["findings_table"] if r["is_finding"])
        started = time.monotonic()
        statuses = concurrent_gets(
            srv.url, f"/api/v1/studies/{study_id}/heatmaps/{finding}.png", concurrent, srv.headers
        )
        seconds = time.monotonic() - started
        peak = memory_mb(srv.process.pid)["peak"]
        jobs = srv.log().count(f"drawing {finding} overlay")
    ok = statuses.count(200)
    report(
        f"heatmaps: {png.stat().st_size // 1024} KB PNG, 7700 px",
        concurrent,
        ok,
        str(concurrent - ok),
        0,
        peak,
        seconds,
        f"{jobs} drawing job(s) for {concurrent} requests",
    )


def attack_upload(tmp: Path, upload_mb: int) -> None:
    with running_server(tmp / "u", "--workers", "0", timeout=START_S) as srv, srv.client(timeout=600) as http:
        before = memory_mb(srv.process.pid)["peak"]
        started = time.monotonic()
        response = upload_stream(http, "huge-upload.png", upload_mb << 20)
        seconds = time.monotonic() - started
        peak = memory_mb(srv.process.pid)["peak"]
        left = list((srv.data_dir / "tmp").iterdir())
    report(
        f"upload: one {upload_mb} MB file (limit 64 MB)",
        1,
        int(response.status_code == 202),
        str(response.status_code),
        0,
        peak,
        seconds,
        f"peak +{peak - before:.0f} MB; {len(left)} temporary files left",
    )


def attack_bombs(tmp: Path) -> None:
    files = [
        deflate_bomb(SHARED, tmp / "deflate-bomb.dcm", 4096, 4096, 100),
        rle_bomb(SHARED, tmp / "rle-bomb.dcm", 4096, 4096, 48),
        big_png(tmp / "png-bomb.png", 7700),
    ]
    with running_server(tmp / "b", timeout=START_S) as srv, srv.client(timeout=600) as http:
        for path in files:
            started = time.monotonic()
            response = http.post("/api/v1/images", files=[part(path)])
            seconds = time.monotonic() - started
            size = path.stat().st_size / 2**20
            report(
                f"bomb: {path.name} ({size:.1f} MB)",
                1,
                int(response.status_code == 202),
                str(response.status_code),
                0,
                memory_mb(srv.process.pid)["peak"],
                seconds,
                response.json().get("error", "")[:90],
            )


def attack_poison(tmp: Path) -> None:
    from xraytriage.serving.config import ServeConfig
    from xraytriage.serving.service import TriageService

    data_dir = tmp / "p" / "data"
    poison = poison_png(nih(1, skip=5)[0], tmp / "poison.png")
    files = [poison, *nih(3)]
    service = TriageService(ServeConfig(data_dir=data_dir, workers=0))
    for path in files:
        service.ingest(path.read_bytes(), path.name)
    service.db.engine.dispose()
    started, deaths, peak, items = time.monotonic(), 0, 0.0, None
    for run in range(6):
        try:
            srv = start_server(
                tmp / f"p{run}",
                "--no-heatmaps",
                "--workers",
                "1",
                data_dir=data_dir,
                module="poison_server",
                timeout=START_S,
            )
        except RuntimeError:
            deaths += 1
            continue
        with srv.client() as http:
            items = wait(lambda srv=srv, http=http: (not srv.running) or settled(http, len(files)), 120)
            if not srv.running:
                deaths, items = deaths + 1, None
                continue
            peak = memory_mb(srv.process.pid)["peak"]
            items = settled(http, len(files))
        srv.stop()
        break
    done = sum(1 for i in items or [] if i["state"] == "done")
    errors = sum(1 for i in items or [] if i["state"] == "error")
    report(
        "poison: decoder kills the process",
        len(files),
        len(files),
        f"{errors} error row",
        len(files) - done - errors,
        peak,
        time.monotonic() - started,
        f"{deaths} deaths, then stable ({done} done)",
    )


def attack_disk_full(tmp: Path) -> None:
    if os.geteuid() != 0:
        print("disk full: skipped (needs root to mount a tmpfs)")
        return
    disk = tmp / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], check=True)
    try:
        from test_serve_attacks import fill, store

        data_dir = disk / "data"
        stored = nih(6)
        store(data_dir, stored)
        filler = fill(disk, keep=96 * 1024)
        late = sorted((SHARED / "nih" / "fullres").glob("*.png"))[:3]
        started = time.monotonic()
        args = ("--workers", "1", "--heatmap-findings", "2", "--min-free-mb", "0")
        with (
            running_server(tmp / "d", *args, data_dir=data_dir, timeout=START_S) as srv,
            srv.client() as http,
        ):
            statuses = [http.post("/api/v1/images", files=[part(p)]).status_code for p in late]
            health = http.get("/healthz").json()["status"]
            time.sleep(3)
            filler.unlink()
            items = (
                wait(
                    lambda: (
                        (s := settled(http, len(stored)))
                        and all(i["heatmaps_state"] not in ("pending", "processing") for i in s)
                        and s
                    ),
                    120,
                )
                or []
            )
            peak = memory_mb(srv.process.pid)["peak"]
        done = sum(1 for i in items if i["state"] == "done" and i["heatmaps_state"] == "done")
        leftovers = list((data_dir / "tmp").iterdir()) + list(data_dir.rglob(".tmp-*"))
        blobs = sum(1 for p in (data_dir / "blobs").rglob("*") if p.is_file())
        report(
            "disk full: 48 MB tmpfs",
            len(late),
            statuses.count(202),
            "/".join(map(str, sorted(set(statuses)))),
            len(stored) - done,
            peak,
            time.monotonic() - started,
            f"health '{health}' while full; {done}/{len(stored)} finished with heatmaps after; "
            f"{len(leftovers)} temp files, {blobs - len(stored)} orphan blobs",
        )
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


ALL = (
    "heatmaps",
    "upload",
    "bombs",
    "poison",
    "disk",
    "pg-restart",
    "sqlite-lock",
    "csrf",
    "csv",
    "slowloris",
)


def upload_until_accepted(http: httpx.Client, path: Path, statuses: list[int]) -> dict | None:
    """Upload one file as a careful client does: again after Retry-After on 503."""
    for _ in range(120):
        answer = http.post("/api/v1/images", files=[part(path)])
        statuses.append(answer.status_code)
        if answer.status_code == 202:
            return answer.json()
        if answer.status_code != 503:
            return None
        time.sleep(min(float(answer.headers.get("Retry-After", "1")), 1.0))
    return None


def triaged(http: httpx.Client, study_ids: set[str]) -> bool:
    items = [i for i in http.get("/api/v1/worklist").json()["items"] if i["id"] in study_ids]
    return len(items) == len(study_ids) and all(
        i["state"] == "done" and i["heatmaps_state"] in ("none", "done", "error") for i in items
    )


def attack_pg_restart(tmp: Path, count: int) -> None:
    try:
        from postgres_support import postgres_server

        context = postgres_server(tmp / "pg")
        url = context.__enter__()
    except BaseException as exc:  # pytest.skip outside pytest: PostgreSQL is not installed
        print(f"{'pg-restart':<34} skipped: {exc}")
        return
    try:
        files = nih(count, skip=100)
        with running_server(
            tmp / "pgs", "--db", url, "--workers", "2", "--heatmap-findings", "1", timeout=START_S
        ) as server:
            statuses: list[int] = []
            acknowledged: set[str] = set()
            started = time.monotonic()
            restart_s: list[float] = []
            with httpx.Client(base_url=server.url, timeout=60) as http:
                for index, path in enumerate(files):
                    if index == count // 3:  # restarted while the uploads and the worker go on
                        threading.Thread(target=lambda: restart_s.append(url.restart("fast"))).start()
                    body = upload_until_accepted(http, path, statuses)
                    if body:
                        acknowledged.update(body["study_ids"])
                uploaded = time.monotonic()
                done = wait(lambda: triaged(http, acknowledged), 120)
                after = time.monotonic() - uploaded
                health = http.get("/healthz").json()["status"]
            peak = memory_mb(server.process.pid)["peak"]
        lost = 0 if done else len(acknowledged)
        report(
            "pg-restart (pg_ctl -m fast)", len(statuses), len(acknowledged), f"503 x{statuses.count(503)}",
            lost, peak, time.monotonic() - started,
            f"restart {restart_s[0] if restart_s else float('nan'):.2f} s; 500s: {statuses.count(500)}; all triaged {after:.0f} s after the "
            f"last upload; health {health}",
        )  # fmt: skip
    finally:
        context.__exit__(None, None, None)


def attack_sqlite_lock(tmp: Path) -> None:
    import sqlite3

    files = nih(6, skip=200)
    args = ("--workers", "1", "--no-heatmaps", "--db-timeout", "1", "--db-retry", "2")
    with (
        running_server(tmp / "lock", *args, timeout=START_S) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        statuses: list[int] = []
        acknowledged: set[str] = set()
        started = time.monotonic()
        lock = sqlite3.connect(
            server.data_dir / "xraytriage.db", timeout=10, isolation_level=None, check_same_thread=False
        )
        lock.execute("BEGIN EXCLUSIVE")
        threading.Timer(5.0, lambda: lock.execute("ROLLBACK")).start()
        health = http.get("/healthz").json()
        for path in files:
            body = upload_until_accepted(http, path, statuses)
            if body:
                acknowledged.update(body["study_ids"])
        done = wait(lambda: triaged(http, acknowledged), 120)
        report(
            "sqlite locked 5 s", len(statuses), len(acknowledged), f"503 x{statuses.count(503)}",
            0 if done else len(acknowledged), memory_mb(server.process.pid)["peak"], time.monotonic() - started,
            f"500s: {statuses.count(500)}; health during: {health['status']} ({health.get('reason')})",
        )  # fmt: skip


def attack_csrf(tmp: Path) -> None:
    import re

    token = "bench-csrf-token-0123456789"
    image = nih(1, skip=300)[0]
    with running_server(tmp / "csrf", "--no-heatmaps", token=token, timeout=START_S) as server:
        started = time.monotonic()
        http = httpx.Client(base_url=server.url, timeout=60)
        http.post("/login", data={"token": token, "next": "/upload"})
        page_token = re.search(r'name="csrf-token" content="([^"]*)"', http.get("/upload").text).group(1)
        other = "http://127.0.0.1:1"
        attempts = [
            {"Origin": other},
            {"Sec-Fetch-Site": "same-site"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "null"},
            {"Origin": server.url},  # same origin, no CSRF token
            {"Origin": other, "X-CSRF-Token": page_token},
        ]
        codes = [http.post("/api/v1/images", files=[part(image)], headers=h).status_code for h in attempts]
        own = http.post(
            "/api/v1/images", files=[part(image)], headers={"Origin": server.url, "X-CSRF-Token": page_token}
        )
        http.close()
        accepted = sum(c == 202 for c in codes)
        report(
            "csrf (cookie from another origin)", len(codes), accepted, f"403 x{codes.count(403)}", 0,
            memory_mb(server.process.pid)["peak"], time.monotonic() - started,
            f"own page with its token: {own.status_code}",
        )  # fmt: skip


def attack_csv_and_params(tmp: Path) -> None:
    import csv
    import io

    import pydicom

    ds = pydicom.dcmread(SHARED / "dicom" / "siim_cr_chest_pa.dcm")
    ds.PatientID, ds.AccessionNumber = "=cmd|' /C calc'!A0", "@SUM(1+1)*cmd"
    ds.PatientName = '+HYPERLINK("http://evil.example")'
    path = tmp / "=evil.dcm"
    ds.save_as(path)
    with (
        running_server(tmp / "csv", "--no-heatmaps", timeout=START_S) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        started = time.monotonic()
        http.post("/api/v1/images", files=[part(path)])
        cells = [c for row in csv.reader(io.StringIO(http.get("/api/v1/worklist.csv").text)) for c in row]
        formulas = [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r") or re.match(r"-[^0-9.]", c)]
        probes = [
            http.get("/api/v1/worklist", params={"offset": str(2**63)}),
            http.get("/api/v1/worklist", params={"limit": str(2**64)}),
            http.get("/api/v1/no-such-route"),
            http.delete("/api/v1/worklist"),
        ]
        bodies_ok = all(set(p.json()) == {"error", "status"} for p in probes)
        report(
            "csv injection + bad parameters", 2 + len(probes), len(cells) and 1, "/".join(str(p.status_code) for p in probes),
            len(formulas), memory_mb(server.process.pid)["peak"], time.monotonic() - started,
            f"formula cells in worklist.csv: {len(formulas)}; one error body: {bodies_ok}",
        )  # fmt: skip


def attack_slowloris(tmp: Path, count: int) -> None:
    import socket

    with running_server(
        tmp / "slow", "--no-heatmaps", "--header-timeout", "2", "--idle-timeout", "2", timeout=START_S
    ) as server:
        host, port = server.url.removeprefix("http://").split(":")
        started = time.monotonic()
        sockets = []
        for i in range(count):
            sock = socket.create_connection((host, int(port)), timeout=10)
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")
            else:
                sock.sendall(
                    b"POST /api/v1/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999\r\n\r\nab"
                )
            sockets.append(sock)
        time.sleep(5.0)
        closed = 0
        for sock in sockets:
            sock.settimeout(0.5)
            try:
                while sock.recv(4096):
                    pass
                closed += 1
            except ConnectionResetError:
                closed += 1
            except TimeoutError:
                pass
            sock.close()
        healthy = httpx.get(server.url + "/healthz", timeout=10).status_code
        report(
            "slowloris (headers, bodies)", count, 0, f"closed {closed}", count - closed,
            memory_mb(server.process.pid)["peak"], time.monotonic() - started,
            f"within 5 s of a 2 s limit; /healthz after: {healthy}",
        )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=ALL)
    parser.add_argument("--images", type=int, default=60, help="images uploaded in pg-restart (default 60)")
    parser.add_argument("--slow", type=int, default=50, help="slow connections in slowloris (default 50)")
    parser.add_argument(
        "--concurrent", type=int, default=14, help="simultaneous heatmap requests (default 14)"
    )
    parser.add_argument(
        "--upload-mb", type=int, default=1500, help="size of the oversized upload (default 1500)"
    )
    args = parser.parse_args()
    wanted = set(args.only or ALL)
    with tempfile.TemporaryDirectory(prefix="xraytriage-attacks-") as folder:
        tmp = Path(folder)
        if "heatmaps" in wanted:
            attack_heatmaps(tmp, args.concurrent)
        if "upload" in wanted:
            attack_upload(tmp, args.upload_mb)
        if "bombs" in wanted:
            attack_bombs(tmp)
        if "poison" in wanted:
            attack_poison(tmp)
        if "disk" in wanted:
            attack_disk_full(tmp)
        if "pg-restart" in wanted:
            attack_pg_restart(tmp, args.images)
        if "sqlite-lock" in wanted:
            attack_sqlite_lock(tmp)
        if "csrf" in wanted:
            attack_csrf(tmp)
        if "csv" in wanted:
            attack_csv_and_params(tmp)
        if "slowloris" in wanted:
            attack_slowloris(tmp, args.slow)
        shutil.rmtree(tmp, ignore_errors=True)
    worst = max((r["peak"] for r in ROWS), default=0.0)
    print(f"\nhighest server peak: {worst:.0f} MB (limit 1500 MB); lost: {sum(r['lost'] for r in ROWS)}")
    return 0 if worst < 1500 and not any(r["lost"] for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
