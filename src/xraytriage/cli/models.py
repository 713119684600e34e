"""``xraytriage models list|show|fetch``: published chest X-ray models, downloaded on request.

    xraytriage models list                       every registry entry: source, licence, input
    xraytriage models show densenet121-res224-all   citation, reported numbers, cited sources
    xraytriage models fetch densenet121-res224-all  download, verify, convert (once)
    xraytriage models fetch resnet50-res512-all --operating-point ppv80   the publisher's other cut-offs
    xraytriage triage scans/ --model densenet121-res224-all --output out/

Downloads happen only here. Where the publisher gives no checksum, the SHA-256 is recorded
at the first download and checked on every later use. The publishers' thresholds were set on
their own data, not a site's: calibrate on the site's normal studies before clinical use.
"""

from __future__ import annotations

import argparse
from pathlib import Path

OPERATING_POINT_CHOICES = ("youden", "ppv80")
"""``published.OPERATING_POINTS``' names (not imported here: the parser stays light)."""
SITE_CALIBRATION = (
    "  before clinical use: the publisher's thresholds were set on its own data, not your site's.\n"
    "  Calibrate on ~100-300 of your site's normal studies first:\n"
    "    xraytriage calibrate --model {name} --site-normals NORMALS_DIR --output site-model.pt\n"
    "  then use --model site-model.pt (docs/published-models.md, 'Deploying one at a site')"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list, inspect and fetch published chest X-ray models (torchxrayvision, CheXNet)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--registry",
            type=Path,
            default=None,
            help="another registry file (e.g. an internal mirror's URLs)",
        )
        q.add_argument(
            "--cache",
            type=Path,
            default=None,
            help="cache folder (default $XRAYTRIAGE_CACHE or ~/.cache/xraytriage)",
        )

    q = sub.add_parser(
        "list", help="the bundled model and every published one: fetched or not, source, licence, input"
    )
    common(q)
    q.add_argument("--wide", action="store_true", help="one line per field, not wrapped at 80 columns")
    q.set_defaults(handler=run_list)
    q = sub.add_parser("show", help="one model in full: citation, reported numbers, the sources cited")
    q.add_argument("name")
    common(q)
    q.set_defaults(handler=run_show)
    q = sub.add_parser("fetch", help="download, verify and convert a published model (only on request)")
    q.add_argument("name")
    common(q)
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.add_argument(
        "--operating-point",
        choices=OPERATING_POINT_CHOICES,
        default=OPERATING_POINT_CHOICES[0],
        help="which published thresholds the converted model uses: youden (the publisher's "
        "op_threshs, default) or ppv80 (its ppv80_thres, where published; fewer flags); "
        "`models show NAME` lists both. Changing it re-converts without downloading",
    )
    q.set_defaults(handler=run_fetch)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _input_text(entry) -> str:
    c = entry.input
    scaling = "[-1024, 1024]" if c.channels == 1 and abs(float(c.std) - 1 / 2048) < 1e-12 else "mean/std"
    if c.channels == 3:
        scaling = "ImageNet mean/std" if tuple(c.mean) == (0.485, 0.456, 0.406) else "mean/std"
    return f"{c.size} px, {c.channels} ch, {scaling}, {c.resize}"


def _status(entry, cache) -> str:
    from xraytriage.models.published import CHECKPOINT_NAME, model_dir

    return "fetched" if (model_dir(entry.name, cache) / CHECKPOINT_NAME).is_file() else "not fetched"


LEGEND = (
    "[bundled] ships with xraytriage, used when --model is left out; [fetched] downloaded and "
    "converted, ready for --model NAME; [not fetched] `xraytriage models fetch NAME` downloads it first."
)


def _bundled_lines() -> list[str]:
    """The bundled model's entry: what --model means when it is left out."""
    from xraytriage.models.published import BUNDLED_MODEL, BUNDLED_NAME

    where = BUNDLED_MODEL if BUNDLED_MODEL.is_file() else f"{BUNDLED_MODEL} (missing: reinstall xraytriage)"
    return [
        f"{BUNDLED_NAME}  [bundled]  (also `--model default`, or no --model at all)",
        "  this project's compact ResNet-10 (128 px, 1 ch, CLAHE), trained here on a few thousand NIH "
        "ChestX-ray14 images: a working triage aid for the demo, not a model trained on a full data set",
        "  numbers, thresholds and limits: docs/model-card.md",
        f"  file:    {where}",
    ]


def _wrapped(text: str, width: int = 80) -> None:
    """``text`` in lines of at most ``width`` characters (a URL longer than that stays whole),
    continuation lines indented under the text; blank lines kept."""
    import textwrap

    for line in text.split("\n"):
        body = line.lstrip(" ")
        indent = " " * (len(line) - len(body))
        more = indent + "  "
        print("\n".join(textwrap.wrap(line, width, subsequent_indent=more, break_long_words=False,
                                       break_on_hyphens=False)) if body else line)  # fmt: skip


def run_list(args: argparse.Namespace) -> int:
    from xraytriage.models.published import cache_root, load_registry

    registry = load_registry(args.registry)
    say = print if args.wide else _wrapped
    say(LEGEND + "\n")
    for line in _bundled_lines():
        say(line)
    for entry in registry.values():
        valid = len(entry.valid_outputs)
        say(f"{entry.name}  [{_status(entry, args.cache)}]")
        say(f"  {entry.description}")
        say(f"  {entry.architecture}, {_input_text(entry)}, {valid} valid output(s) of {len(entry.labels)}")
        say(f"  source:  {entry.url}")
        say(f"  licence: {entry.licence}")
    say(f"\nthe bundled model and {len(registry)} published ones (cache: {cache_root(args.cache)}). "
          "`xraytriage models show NAME` for citation, reported numbers and where it lives; "
          "`xraytriage models fetch NAME` to download one.")  # fmt: skip
    return 0


def run_show(args: argparse.Namespace) -> int:
    from xraytriage.labels import canonical_label
    from xraytriage.models.published import (
        BUNDLED_NAME,
        CHECKPOINT_NAME,
        DEFAULT_NAMES,
        OPERATING_POINTS,
        get_model,
        load_registry,
        model_dir,
        read_manifest,
    )

    if args.name in DEFAULT_NAMES:
        for line in _bundled_lines():
            print(line)
        return 0
    registry = load_registry(args.registry)
    if args.name not in registry:
        from xraytriage.errors import ConfigError

        raise ConfigError(
            f"unknown model {args.name!r}; `xraytriage models list` shows: {BUNDLED_NAME} (bundled), "
            + ", ".join(registry)
        )
    entry = get_model(args.name, registry)
    directory = model_dir(entry.name, args.cache)
    fetched = (directory / CHECKPOINT_NAME).is_file()
    print(f"{entry.name}: {entry.description}")
    print(
        f"status:    {'fetched' if fetched else 'not fetched'}: "
        + (
            f"{directory / CHECKPOINT_NAME}"
            if fetched
            else f"`xraytriage models fetch {entry.name}` puts it in {directory}"
        )
    )
    print(f"publisher: {entry.publisher}")
    print(f"source:    {entry.url} ({entry.format})")
    print(f"sha256:    {entry.sha256 or 'not published (recorded at first download)'}")
    print(f"licence:   {entry.licence}")
    print(f"citation:  {entry.citation}")
    print(f"reported:  {entry.reported}")
    print(f"input:     {entry.input.to_dict()}")
    points = entry.operating_points()
    names = list(points)
    if points:
        space = ""
        if entry.threshold_space != "probability":
            space = " (published as sigmoid(p): shown as logit(value), the cut-off on p)"
        print(f"operating points on the sigmoid probability p{space}:")
        for name in names:
            print(f"  {name}: {OPERATING_POINTS[name]}")
    print(f"outputs (publisher's label -> ours{''.join(', ' + n for n in names)}):")
    for i, label in enumerate(entry.labels):
        reason = entry.dropped_reason(i)
        mapped = f"(dropped: {reason})" if reason else canonical_label(label)
        cells = "".join(f" {'-' if points[n][i] is None else f'{points[n][i]:.6g}':>10}" for n in names)
        print(f"  {i:2d} {label or '-':<28} -> {mapped:<34}{cells}")
    for what, where in entry.sources.items():
        print(f"from ({what}): {where}")
    manifest = read_manifest(model_dir(entry.name, args.cache))
    if manifest:
        print(
            f"fetched:   {manifest.get('file')} sha256 {manifest.get('sha256')} ({manifest.get('sha256_source')})"
        )
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.models.published import OPERATING_POINTS, fetch_published, get_model, load_registry

    entry = get_model(args.name, load_registry(args.registry))
    print(f"{entry.name}: {entry.url}\n  licence: {entry.licence}")
    path = fetch_published(
        entry, cache=args.cache, progress=not args.no_progress, operating_point=args.operating_point
    )
    checkpoint = load_checkpoint(path)
    origin = checkpoint.train_config.get("imported_from", {})
    point = origin.get("operating_point")
    print(
        f"ready: {path}\n  {checkpoint.model.backbone}, {len(checkpoint.label_names)} findings "
        f"({', '.join(checkpoint.label_names)}), input {_input_text(entry)}"
    )
    dropped = [f"{label} ({entry.dropped_reason(i)})" for i, label in enumerate(entry.labels)
               if label.strip() and entry.dropped_reason(i)]  # fmt: skip
    if dropped:
        print(f"  dropped: {', '.join(dropped)}")
    if point:
        print(f"  thresholds: the publisher's operating point {point!r}: {OPERATING_POINTS[point]}")
    else:
        print("  thresholds: none published (0.5 on every finding)")
    print(
        f"  use it: xraytriage triage SCANS --model {entry.name} --output OUT"
        + ("" if args.cache is None else f"  (with XRAYTRIAGE_CACHE={args.cache}, or --model {path})")
    )
    print(SITE_CALIBRATION.format(name=entry.name))
    return 0
