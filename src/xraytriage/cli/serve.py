"""``xraytriage serve``: the web worklist, upload pages and REST API (and, with --dicom-port,
the DICOM node) in one process."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from xraytriage.cli.common import add_model_argument, resolve_model_path
from xraytriage.models.predictor import BACKENDS, DEFAULT_BACKEND


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the web worklist + REST API (and optionally the DICOM node)",
        description=(
            "Start the triage service: upload pages, the worklist sorted by priority, study pages "
            "with heatmaps, and the REST API under /api/v1 (OpenAPI docs at /docs). Uploads and "
            "results are kept in --data-dir (SQLite by default) and survive restarts."
        ),
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder for stored uploads, pictures and the default database (default ./out/serve, "
        "as `make serve`)",
    )
    p.add_argument(
        "--db",
        default=None,
        metavar="PATH|URL",
        help="SQLite file, or any SQLAlchemy URL (postgresql://...); default DATA_DIR/xraytriage.db",
    )
    add_model_argument(p)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help=f"inference backend (default {DEFAULT_BACKEND})",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file whose first line is the access token (else $XRAYTRIAGE_TOKEN; none: no token)",
    )
    p.add_argument("--workers", type=int, default=2, help="background inference threads (0: store only)")
    p.add_argument("--batch-size", type=int, default=16, help="images per model call (default 16)")
    p.add_argument(
        "--no-heatmaps", action="store_true", help="do not draw heatmaps ahead of time (still on demand)"
    )
    p.add_argument(
        "--heatmap-findings", type=int, default=4, metavar="N", help="heatmaps drawn per study (default 4)"
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=64.0, help="largest file accepted, in MB (default 64)"
    )
    p.add_argument(
        "--max-files", type=int, default=100, help="most files in one upload request (default 100)"
    )
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=36.0,
        help="largest image accepted, in millions of pixels (default 36: 6000 x 6000)",
    )
    p.add_argument(
        "--min-free-mb",
        type=float,
        default=100.0,
        help="free space kept in the data folder; below it uploads get 507 (default 100)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients use to reach the service (repeatable; '*' for any). Without a "
        "token only 127.0.0.1, localhost, [::1] and --host are answered (DNS rebinding protection)",
    )
    p.add_argument(
        "--drift-window",
        type=int,
        default=500,
        metavar="N",
        help="drift monitor: count flag rates over the last N triaged studies and compare them with "
        "the rates the model's calibration expects (/healthz, /metrics, a banner on the worklist; default 500)",
    )
    p.add_argument(
        "--drift-min-studies",
        type=int,
        default=100,
        metavar="N",
        help="drift monitor: judge a departure only once N studies are triaged (default 100)",
    )
    p.add_argument(
        "--hide-identifiers",
        action="store_true",
        help="shared screens: leave patient ID, accession, age/sex and study date out of every page, "
        "API answer and CSV (each page also has its own switch)",
    )
    p.add_argument(
        "--retention-days",
        type=float,
        default=None,
        metavar="N",
        help="remove studies nothing happened to for N days (images, pictures, rows; audit entries "
        "stay), checked at start and every hour (default: keep everything)",
    )
    p.add_argument(
        "--db-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds a database call waits for a SQLite lock or a PostgreSQL connection before the "
        "API answers 503 (default 30)",
    )
    p.add_argument(
        "--db-retry",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds the worker retries a database call through an outage before it pauses and "
        "re-queues its work (default 30)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close a connection whose request headers are not complete after S seconds (slow clients; "
        "default 10)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="close a request whose body sends nothing for S seconds (default 30)",
    )
    dicom = p.add_argument_group("DICOM node (receive studies from a PACS or modality, send results back)")
    dicom.add_argument(
        "--dicom-port", type=int, default=None, help="listen for DICOM (C-STORE, C-ECHO) on this port"
    )
    dicom.add_argument("--ae-title", default="XRAYTRIAGE", help="our AE title (default XRAYTRIAGE)")
    dicom.add_argument("--dicom-host", default=None, help="interface for DICOM (default: the same as --host)")
    dicom.add_argument(
        "--dicom-allow",
        default=None,
        metavar="AE1,AE2",
        help="only these calling AE titles may send (default: any)",
    )
    dicom.add_argument(
        "--dicom-called-ae",
        default=None,
        metavar="AE1,AE2",
        help="called AE titles the node answers to (default: --ae-title); others are rejected",
    )
    dicom.add_argument(
        "--dicom-max-associations",
        type=int,
        default=32,
        help="concurrent DICOM associations; beyond it a transient reject (default 32)",
    )
    dicom.add_argument(
        "--dicom-destination",
        default=None,
        metavar="AE@HOST:PORT",
        help="send the SC + SR results here by C-STORE (default: keep them in DATA_DIR/results)",
    )
    dicom.add_argument(
        "--dicom-quiet-seconds",
        type=float,
        default=10.0,
        help="a received study is complete when no image arrived for this long (default 10)",
    )
    dicom.add_argument(
        "--dicom-sc-jpeg",
        action="store_true",
        help="send heatmap Secondary Captures as lossy JPEG Baseline (10-20x smaller; default uncompressed)",
    )
    route = p.add_argument_group("body-part routing (docs/routing.md)")
    route.add_argument(
        "--route",
        action="store_true",
        help="send each image to the model whose scope covers its body part (--model for chests, "
        "--fracture-model for hand/leg/hip/shoulder films, else an error 'no model for this body part'); "
        "the default with the bundled model, off with --model alone",
    )
    route.add_argument("--no-route", action="store_true", help="score every image with --model only")
    route.add_argument(
        "--fracture-model",
        type=Path,
        default=None,
        help="routed MSK model (default: the bundled fracture model)",
    )
    route.add_argument(
        "--router", type=Path, default=None, help="body-part router (default: the bundled one)"
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(handler=run_serve)


def _database_url(value: str | None) -> str | None:
    if value is None:
        return None
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_dicom_settings(args: argparse.Namespace):
    from xraytriage.errors import ConfigError
    from xraytriage.serving.config import DicomSettings

    if args.dicom_port is None:
        for flag in ("dicom_allow", "dicom_called_ae", "dicom_destination", "dicom_host", "dicom_sc_jpeg"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag.replace('_', '-')} needs --dicom-port")
        return None
    if args.dicom_destination:
        from xraytriage.dicom import parse_destination

        parse_destination(args.dicom_destination)  # fail at start, not at the first study
    allowed = None
    if args.dicom_allow:
        allowed = frozenset(t.strip() for t in args.dicom_allow.split(",") if t.strip())
    called = None
    if args.dicom_called_ae:
        called = frozenset(t.strip() for t in args.dicom_called_ae.split(",") if t.strip())
    if args.dicom_max_associations < 1:
        raise ConfigError("--dicom-max-associations must be >= 1")
    if args.dicom_quiet_seconds < 0:
        raise ConfigError("--dicom-quiet-seconds must be >= 0")
    return DicomSettings(
        port=args.dicom_port,
        ae_title=args.ae_title,
        host=args.dicom_host,
        allowed_calling_aes=allowed,
        called_ae_titles=called,
        max_associations=args.dicom_max_associations,
        destination=args.dicom_destination,
        quiet_seconds=args.dicom_quiet_seconds,
        sc_jpeg=args.dicom_sc_jpeg,
    )


def routing_wanted(args: argparse.Namespace) -> bool:
    """Routing is on with ``--route`` (or a ``--fracture-model``/``--router``), and by default
    with the bundled model when the bundled router is there; ``--model`` alone keeps the one
    model; ``--no-route`` turns it off."""
    from xraytriage.errors import ConfigError
    from xraytriage.models.published import BUNDLED_FRACTURE_MODEL, BUNDLED_ROUTER

    asked = bool(
        getattr(args, "route", False)
        or getattr(args, "fracture_model", None)
        or getattr(args, "router", None)
    )
    if getattr(args, "no_route", False):
        if asked:
            raise ConfigError("--no-route contradicts --route, --fracture-model and --router")
        return False
    if asked:
        for path in (args.router or BUNDLED_ROUTER, args.fracture_model or BUNDLED_FRACTURE_MODEL):
            if not Path(path).is_file():
                raise ConfigError(f"{path}: routing needs this checkpoint, and it is not there")
        return True
    return args.model is None and BUNDLED_ROUTER.is_file() and BUNDLED_FRACTURE_MODEL.is_file()


def build_config(args: argparse.Namespace):
    from xraytriage.serving.config import DEFAULT_DATA_DIR, MB, ServeConfig, read_token

    model_path = resolve_model_path(args.model)  # a bad --model fails before any folder is made
    data_dir = args.data_dir if args.data_dir is not None else DEFAULT_DATA_DIR
    if data_dir.exists() and not data_dir.is_dir():
        from xraytriage.errors import ConfigError

        raise ConfigError(f"{data_dir}: --data-dir must be a folder, but a file of that name exists")
    return ServeConfig(
        data_dir=data_dir,
        db_url=_database_url(args.db),
        model_path=model_path,
        backend=args.backend,
        host=args.host,
        port=args.port,
        token=read_token(args.token_file),
        workers=args.workers,
        batch_size=args.batch_size,
        heatmaps=not args.no_heatmaps,
        heatmap_findings=args.heatmap_findings,
        max_file_bytes=int(args.max_upload_mb * MB),
        max_files=args.max_files,
        max_pixels=int(args.max_megapixels * 1_000_000),
        min_free_mb=args.min_free_mb,
        dicom=build_dicom_settings(args),
        hide_identifiers=args.hide_identifiers,
        drift_window=args.drift_window,
        drift_min_studies=args.drift_min_studies,
        allowed_hosts=tuple(args.allowed_host),
        header_timeout_s=args.header_timeout,
        retention_days=args.retention_days,
        db_timeout_s=args.db_timeout,
        db_retry_seconds=args.db_retry,
        idle_timeout_s=args.idle_timeout,
        route=routing_wanted(args),
        router_path=getattr(args, "router", None),
        fracture_model_path=getattr(args, "fracture_model", None),
    )


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from xraytriage.logconfig import configure_logging
    from xraytriage.serving import create_app

    config = build_config(args)
    configure_logging(args.log_level, timestamps=True)
    if not _is_loopback(config.host) and not config.token:
        print(
            f"warning: serving on {config.host} without an access token: anyone who can reach this "
            "port can upload and read studies. Use --token-file or $XRAYTRIAGE_TOKEN.",
            file=sys.stderr,
        )
    app = create_app(config)
    print(
        f"xraytriage: http://{config.host}:{config.port}/  (API docs: /docs; data: {config.data_dir})",
        file=sys.stderr,
    )
    print(
        "routing: each image to the chest or the fracture model by body part (--no-route: one model)"
        if config.route
        else "routing: off (every image to --model)",
        file=sys.stderr,
    )
    from xraytriage.serving.connections import timed_protocol

    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        log_level=args.log_level,
        http=timed_protocol(config.header_timeout_s, config.idle_timeout_s),
    )
    return 0
