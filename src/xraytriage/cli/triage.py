"""``xraytriage triage``: a worklist (CSV + JSON) from files and folders of radiographs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xraytriage.cli.common import add_model_argument, check_output_dir, resolve_model_path
from xraytriage.models.predictor import BACKENDS, DEFAULT_BACKEND
from xraytriage.models.published import BUNDLED_FRACTURE_MODEL, BUNDLED_ROUTER
from xraytriage.triage.aggregate import AGGREGATIONS
from xraytriage.triage.engine import TriageOptions
from xraytriage.triage.grouping import STUDY_MODES
from xraytriage.triage.heatmaps import DEFAULT_MAX_FINDINGS

EXIT_NOTHING_TRIAGED = 1
EXIT_INTERRUPTED = 130


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def add_triage_options(p: argparse.ArgumentParser, top_default: int = 15) -> None:
    """Options shared by ``triage`` and ``demo``."""
    add_model_argument(p)
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=DEFAULT_BACKEND,
        help="onnx (ONNX Runtime, default; exported once and cached), onnx-int8 (its int8 twin: faster on CPUs "
        "with VNNI; shipped with the bundled model, else quantised once and cached) or torch (eager)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=TriageOptions.batch_size,
        help=f"images per model call (default {TriageOptions.batch_size})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=_default_workers(),
        help="decoder processes reading files while the model runs (0: decode in the main process)",
    )
    p.add_argument("--threads", type=int, default=None, help="model threads (default: the backend's choice)")
    p.add_argument("--top", type=int, default=top_default, help="studies shown in the table (and explained)")
    p.add_argument(
        "--explain-findings",
        type=int,
        default=DEFAULT_MAX_FINDINGS,
        metavar="N",
        help="with --explain: heatmaps of at most the N most probable listed findings per study "
        f"(default {DEFAULT_MAX_FINDINGS})",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--wide",
        action="store_true",
        help="the console table with every column and full study keys on one line per study "
        "(default: fits 80 columns, findings on their own line)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "triage",
        help="triage radiographs into a prioritised worklist (CSV + JSON)",
        description=(
            "Read PNG/JPEG/DICOM files and folders (recursive), score each study with the model and "
            "write DIR/worklist.csv and DIR/worklist.json, highest priority first. Files that cannot "
            "be read are listed as error rows and never stop the run. Exit code 0 when at least one "
            "image was triaged. Findings are model probabilities above operating thresholds, not a diagnosis."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("--output", "-o", type=Path, required=True, help="folder for worklist.csv/.json")
    add_triage_options(p)
    p.add_argument(
        "--study-from",
        choices=STUDY_MODES,
        default=TriageOptions.study_from,
        help="non-DICOM images: one study per file (default) or per parent folder (MURA patientX/studyY/); "
        "DICOM images are always grouped by StudyInstanceUID",
    )
    p.add_argument(
        "--aggregate",
        choices=AGGREGATIONS,
        default=TriageOptions.aggregate,
        help=f"study score from its images (default {TriageOptions.aggregate})",
    )
    p.add_argument(
        "--urgency",
        type=Path,
        help="YAML/JSON of per-finding urgency weights in [0,1], e.g. Pneumothorax: 1.0",
    )
    p.add_argument(
        "--site-priority",
        type=Path,
        help="CSV with columns study or path, and priority (0..1 or STAT/HIGH/MEDIUM/ROUTINE/LOW): "
        "a floor the worklist never goes below",
    )
    p.add_argument("--explain", action="store_true", help="also write heatmaps of the listed findings")
    route = p.add_argument_group("body-part routing (docs/routing.md)")
    route.add_argument(
        "--route",
        action="store_true",
        help="send each image to the model whose scope covers its body part (the chest model, "
        "the fracture model, or an error row 'no model for this body part'); rows name body_part and model",
    )
    route.add_argument(
        "--fracture-model", type=Path, default=None, help="with --route: default the bundled fracture model"
    )
    route.add_argument(
        "--router", type=Path, default=None, help="with --route: default the bundled body-part router"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into the same --output: images already scored there "
        "(DIR/worklist.images.jsonl) are not read again",
    )
    p.set_defaults(handler=run)


def nothing_to_triage(inputs: list[str]) -> str | None:
    """Why ``inputs`` cannot give a worklist (none exists, or no folder holds an image), before a
    model is loaded or a line printed; None when there is something to read. A missing file next
    to existing ones still becomes an error row: one bad path never stops a batch."""
    from xraytriage.io import iter_input_files

    missing = [p for p in inputs if not Path(p).exists()]
    if len(missing) == len(inputs):
        return f"{', '.join(map(str, missing))}: not found (check the path; folders are read recursively)"
    if next(iter(iter_input_files(inputs)), None) is None:
        return f"no image files (PNG, JPEG, DICOM) in {', '.join(map(str, inputs))} or its subfolders"
    return None


def _said_resumed_or_interrupted(console, result, done: str) -> bool:
    """Say what ``--resume`` took from an earlier run, and whether this one was interrupted
    (``done``: what the worklist holds); True when interrupted, so the caller exits 130."""
    from xraytriage.triage.journal import JOURNAL_NAME

    if result.extra.get("resumed"):
        console.print(f"resumed: {result.extra['resumed']} image(s) were already scored in an earlier run")
    if not result.extra.get("interrupted"):
        return False
    console.print(
        f"[yellow]interrupted: {done}. Run the same command with --resume to finish "
        f"({JOURNAL_NAME} keeps every scored image).[/]"
    )
    return True


def execute(
    inputs: list[str],
    output: Path,
    args: argparse.Namespace,
    study_from: str = TriageOptions.study_from,
    aggregate: str = TriageOptions.aggregate,
    urgency: Path | None = None,
    site_priority: Path | None = None,
    explain: bool = False,
    resume: bool = False,
) -> int:
    """Run triage and report; shared by ``triage`` and ``demo``. Returns the exit code."""
    from rich.console import Console

    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.models.inference import make_predictor
    from xraytriage.triage import SitePriorities, TriageEngine, TriageOptions, UrgencyWeights, write_worklist
    from xraytriage.triage.console import print_worklist
    from xraytriage.triage.journal import journal_header, run_journaled
    from xraytriage.triage.worklist import safe_text

    check_output_dir(output)
    problem = nothing_to_triage(inputs) if not resume else None
    if problem:
        print(f"error: nothing to triage: {problem}", file=sys.stderr)
        return EXIT_NOTHING_TRIAGED
    if getattr(args, "route", False):
        console = Console(stderr=False)
        return execute_routed(inputs, output, args, study_from, aggregate, console, explain, resume)
    model_path = resolve_model_path(args.model)
    console = Console(stderr=False)
    checkpoint = load_checkpoint(model_path)
    options = TriageOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        study_from=study_from,
        aggregate=aggregate,
        urgency=UrgencyWeights.load(urgency) if urgency else None,
        site=SitePriorities.load(site_priority) if site_priority else None,
        progress=not args.no_progress,
    )
    predictor = make_predictor(checkpoint, args.backend, threads=args.threads, checkpoint_path=model_path)
    engine = TriageEngine(predictor, options)
    header = journal_header(model_path, checkpoint.label_names, study_from)
    result = run_journaled(engine, inputs, output, header, resume=resume)
    csv_path, json_path = write_worklist(result.rows, output, result.label_names)
    print_worklist(
        result.rows, result.images_total, result.seconds, top=args.top, console=console, wide=args.wide
    )
    seen = checkpoint.seen_in_training([p for r in result.rows if r.ok for p in r.image_paths])
    if seen:
        console.print(
            f"[yellow]note:[/] {len(seen)} of {result.images_ok} image(s) were in this model's training "
            "set: their scores show the software works, not how well the model generalises "
            "(the model card has the out-of-fold numbers).",
            highlight=False,
        )
    console.print(
        f"worklist: {safe_text(str(csv_path))}  and  {safe_text(str(json_path))}  "
        f"(model {checkpoint.name}, backend {predictor.name})",
        markup=False,
    )
    if _said_resumed_or_interrupted(
        console,
        result,
        f"{result.images_total} of {result.extra.get('inputs')} image(s) done; the worklist holds them",
    ):
        return EXIT_INTERRUPTED
    if result.images_ok == 0:
        reason = (
            "no input files found"
            if result.images_total == 0
            else f"all {result.images_total} file(s) failed"
        )
        console.print(f"[red]error: no image could be triaged ({reason}); see the error rows above[/]")
        return EXIT_NOTHING_TRIAGED
    if explain:
        from xraytriage.triage.heatmaps import write_heatmaps

        written = write_heatmaps(
            ExplainPainter(checkpoint),
            result.rows,
            output / "heatmaps",
            top=args.top,
            max_findings=args.explain_findings,
        )
        console.print(f"heatmaps: {len(written)} file(s) in {output / 'heatmaps'}")
    return 0


def execute_routed(
    inputs,
    output: Path,
    args: argparse.Namespace,
    study_from: str,
    aggregate: str,
    console,
    explain: bool = False,
    resume: bool = False,
) -> int:
    """``triage --route``: the body-part router picks the model per image; one worklist.
    ``resume`` continues an interrupted run from its journal; ``explain`` draws each listed
    study's heatmaps with the model that scored it."""
    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.models.inference import make_predictor
    from xraytriage.triage import TriageEngine, TriageOptions, write_worklist
    from xraytriage.triage.console import print_worklist
    from xraytriage.triage.journal import JOURNAL_NAME, Journal, file_sha256, journal_header
    from xraytriage.triage.routing import RoutedModel, RoutedTriage
    from xraytriage.triage.worklist import safe_text

    options = TriageOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        study_from=study_from,
        aggregate=aggregate,
        progress=False,
    )

    def predictor(path: Path):
        return make_predictor(load_checkpoint(path), args.backend, threads=args.threads, checkpoint_path=path)

    models, files = [], [args.router or BUNDLED_ROUTER]
    for name, path in (
        ("chest", resolve_model_path(args.model)),
        ("fracture", args.fracture_model or BUNDLED_FRACTURE_MODEL),
    ):
        models.append(RoutedModel(name, TriageEngine(predictor(path), options)))
        files.append(path)
    routed = RoutedTriage(predictor(files[0]), models, options)
    labels = [n for m in models for n in m.engine.checkpoint.label_names]
    header = journal_header(files[0], labels, study_from)
    header["model_sha256"] = "+".join(file_sha256(f) for f in files)  # router and every model
    header["routed"] = True
    journal = Journal.open(output, header, resume)
    try:
        result = routed.run(inputs, journal)
    except KeyboardInterrupt:  # while routing: nothing scored yet in this run
        console.print(
            f"[yellow]interrupted while routing; run the same command with --resume ({JOURNAL_NAME}).[/]"
        )
        return EXIT_INTERRUPTED
    finally:
        journal.close()
    csv_path, json_path = write_worklist(result.rows, output, result.label_names)
    print_worklist(result.rows, result.images_total, result.seconds, top=args.top, console=console)
    summary = result.extra["routing"]
    parts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(summary["body_parts"].items()))
    by_model = ", ".join(f"{k} {v}" for k, v in sorted(summary["models"].items()))
    console.print(f"routing: {parts or 'nothing read'}; scored by {by_model or 'no model'}", highlight=False)
    console.print(
        "routed worklist: sorted on one urgency scale across models (each model's priority with its own "
        "flag threshold mapped onto the chest model's: the `urgency` column; docs/routing.md)",
        highlight=False,
    )
    if summary["header_disagreements"]:
        console.print(
            f"[yellow]note:[/] {summary['header_disagreements']} image(s) whose DICOM BodyPartExamined "
            "disagrees with the image (see their warnings)",
            highlight=False,
        )
    console.print(f"worklist: {safe_text(str(csv_path))}  and  {safe_text(str(json_path))}", markup=False)
    if _said_resumed_or_interrupted(console, result, "the worklist holds what was done"):
        return EXIT_INTERRUPTED
    if not result.images_ok:
        return EXIT_NOTHING_TRIAGED
    if explain:
        from xraytriage.triage.heatmaps import write_heatmaps

        painter = RoutedPainter(
            {m.name: ExplainPainter(m.engine.checkpoint) for m in models},
            {p: r.model for r in result.rows if r.ok for p in r.image_paths},
        )
        written = write_heatmaps(
            painter, result.rows, output / "heatmaps", top=args.top, max_findings=args.explain_findings
        )
        console.print(f"heatmaps: {len(written)} file(s) in {output / 'heatmaps'}")
    return 0


class RoutedPainter:
    """``triage --route --explain``: each image explained by the model that scored it (a
    fracture film by the fracture model's network, a chest by the chest model's), each
    model's explainer built only when one of its studies is drawn."""

    def __init__(self, painters: dict[str, ExplainPainter], model_of: dict[str, str]) -> None:
        self.painters = painters
        self.model_of = model_of

    def start(self) -> None:
        """Nothing to load yet: see :meth:`paint`."""

    def paint(self, image_path: str, findings):
        painter = self.painters[self.model_of[image_path]]
        if painter.explainer is None:
            painter.start()
        return painter.paint(image_path, findings)


class ExplainPainter:
    """The :class:`~xraytriage.triage.heatmaps.HeatmapPainter` of ``triage --explain``: overlays
    drawn by the explain module, with the legend naming what drew them (the checkpoint's
    box-supervised localiser for the findings it covers, Grad-CAM otherwise)."""

    def __init__(self, checkpoint, method: str = "auto") -> None:
        self.checkpoint = checkpoint
        self.method = method
        self.explainer = None

    def start(self) -> None:
        from xraytriage.explain import Explainer

        self.explainer = Explainer(self.checkpoint, method=self.method)

    def paint(self, image_path: str, findings):
        from xraytriage.explain import explain_image
        from xraytriage.explain.overlay import OverlayItem, save_findings_overlay
        from xraytriage.io import read_radiograph
        from xraytriage.triage.heatmaps import Overlay

        radiograph = read_radiograph(image_path)
        pixels = radiograph.pixels

        def overlay(e) -> Overlay:
            item = OverlayItem(
                e.finding, e.probability, e.threshold, e.heatmap, [e.box] if e.box is not None else []
            )
            return Overlay(e.finding, lambda path: save_findings_overlay(path, pixels, [item], e.method))

        return [overlay(e) for e in explain_image(self.explainer, radiograph, findings)]


def run(args: argparse.Namespace) -> int:
    return execute(
        args.inputs,
        args.output,
        args,
        study_from=args.study_from,
        aggregate=args.aggregate,
        urgency=args.urgency,
        site_priority=args.site_priority,
        explain=args.explain,
        resume=args.resume,
    )
