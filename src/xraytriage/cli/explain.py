"""``xraytriage explain`` (heatmap overlays + boxes.csv) and ``xraytriage localize-eval`` (NIH box benchmark)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xraytriage.cli.common import add_model_argument, resolve_model_path
from xraytriage.sanitize import file_slug, write_csv

METHOD_CHOICES = ("auto", "gradcam", "gradcam++", "localiser")
BOX_COLUMNS = ["path", "finding", "x", "y", "w", "h", "score"]


def _add_explainer_options(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument(
        "--method",
        choices=METHOD_CHOICES,
        default="auto",
        help="auto (default): the checkpoint's box-supervised localiser for the findings it covers, "
        "Grad-CAM otherwise; gradcam | gradcam++: CAM only; localiser: like auto, but an error "
        "when the checkpoint has no localiser",
    )
    parser.add_argument("--layer", default=None, help="target layer name (default: found per backbone)")
    parser.add_argument(
        "--size-prior",
        action="store_true",
        help="prefer boxes near the finding's typical size (NIH box list)",
    )
    parser.add_argument(
        "--box-threshold",
        type=float,
        default=0.5,
        help="keep heat >= this fraction of the maximum (default 0.5)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")


def register(subparsers) -> None:
    explain = subparsers.add_parser(
        "explain",
        help="heatmap overlays and boxes for the findings of radiographs",
        description=(
            "For each image and finding: an overlay PNG <image-stem>_<finding>.png (the image with the "
            "finding's heat in its own colour, clear below 30% of the map's maximum, its box, and a legend "
            "naming the method, the colour scale, the probability and threshold), with two or more findings "
            "also <image-stem>_findings.png with all of them, and a row in OUTPUT/boxes.csv (path, finding, "
            "x, y, w, h, score in the image's own pixels; never on burned-in text or the image border). "
            "Default findings: those at or above their operating threshold, at most 4."
        ),
    )
    explain.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (PNG/JPEG/DICOM)")
    explain.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    explain.add_argument(
        "--findings",
        default="top",
        help="top (above threshold, at most 4; default) | all | comma-separated names, e.g. Mass,Nodule",
    )
    explain.add_argument(
        "--feature-maps",
        action="store_true",
        help="also write one PNG grid per conv layer and the first-layer filters",
    )
    _add_explainer_options(explain)
    explain.set_defaults(handler=run_explain)

    evaluate = subparsers.add_parser(
        "localize-eval",
        help="localisation benchmark against ground-truth boxes (Wang et al. 2017, Table 3)",
        description=(
            "Accuracy at T(IoBB) and T(IoU), average false positives and the pointing game per finding "
            "and overall, with patient-level bootstrap 95%% CIs, for every method in --compare on the same "
            "images, each next to its random same-size control (its own boxes moved to random places). "
            "Writes localization.csv, localization_boxes.csv and localization.md to OUTPUT. NIH BBox_List "
            "coordinates (1024 px) are scaled to each image. Fails when nothing could be evaluated."
        ),
    )
    evaluate.add_argument(
        "--images", type=Path, action="append", required=True, help="image folder (repeatable)"
    )
    evaluate.add_argument(
        "--boxes", type=Path, required=True, help="BBox_List_2017.csv(.gz) or path,finding,x,y,w,h CSV"
    )
    evaluate.add_argument("--output", "-o", type=Path, required=True, help="output folder")
    evaluate.add_argument("--max-boxes", type=int, default=3, help="predicted boxes per heatmap (default 3)")
    evaluate.add_argument(
        "--random-repeats", type=int, default=5, help="random-control draws per case (default 5)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the random control (default 0)")
    evaluate.add_argument(
        "--compare",
        default=None,
        help="comma-separated methods to compare: gradcam, gradcam++, localiser (default: gradcam, plus "
        "localiser when the checkpoint or --localiser has one)",
    )
    evaluate.add_argument(
        "--localiser", type=Path, default=None, help="a localiser file (`localiser train`) to evaluate"
    )
    evaluate.add_argument(
        "--bootstrap", type=int, default=1000, help="patient-level bootstrap replicates (default 1000)"
    )
    _add_explainer_options(evaluate)
    evaluate.set_defaults(handler=run_localize_eval)


def _load_explainer(args):
    from xraytriage.explain import Explainer
    from xraytriage.models import load_checkpoint

    path = resolve_model_path(args.model)
    checkpoint = load_checkpoint(path)
    return Explainer(
        checkpoint,
        method=args.method,
        layer=args.layer,
        size_prior=args.size_prior,
        box_threshold=args.box_threshold,
        device=args.device,
    )


def _file_part(text: str) -> str:
    return file_slug(text, keep=".+-", fallback="image")


def _unique_stem(path: Path, used: set[str]) -> str:
    stem = _file_part(path.stem)
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


def run_explain(args) -> int:
    import pandas as pd
    import torch

    from xraytriage.errors import ImageReadError
    from xraytriage.explain import explain_image
    from xraytriage.explain.feature_maps import write_feature_maps
    from xraytriage.explain.overlay import OverlayItem, method_label, save_findings_overlay
    from xraytriage.io import iter_input_files, read_radiograph
    from xraytriage.progress import progress_bar

    explainer = _load_explainer(args)
    legend_method = method_label(explainer.method)
    findings = args.findings.strip()
    if findings.lower() not in ("top", "all"):
        for name in findings.split(","):
            if name.strip():
                explainer.class_index(name)  # fail early, naming the model's outputs
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    files = list(iter_input_files(args.inputs))
    rows, used, failed, overlays, explained = [], set(), 0, 0, 0
    for path in progress_bar(files, desc="explain", unit="image", disable=len(files) < 2):
        try:
            radiograph = read_radiograph(path)
            explanations = explain_image(explainer, radiograph, findings)
        except ImageReadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        except Exception as exc:  # one bad file never stops the batch
            print(f"error: {path}: cannot explain: {exc}", file=sys.stderr)
            failed += 1
            continue
        explained += 1
        stem = _unique_stem(path, used)
        if not explanations:
            print(
                f"{path}: no finding at or above its operating threshold; no overlay written (use --findings)"
            )
        items = [
            OverlayItem(e.finding, e.probability, e.threshold, e.heatmap, [e.box] if e.box else [])
            for e in explanations
        ]
        for e, item in zip(explanations, items, strict=True):
            png = output / f"{stem}_{_file_part(e.finding)}.png"
            save_findings_overlay(png, radiograph.pixels, [item], legend_method)
            overlays += 1
            if e.box is None:
                print(
                    f"{path}: {e.finding}: no box (the heatmap is empty, or its heat lies only on "
                    "burned-in markers or the image border)"
                )
                continue
            rows.append(
                {
                    "path": str(path),
                    "finding": e.finding,
                    "x": round(e.box.x, 2),
                    "y": round(e.box.y, 2),
                    "w": round(e.box.w, 2),
                    "h": round(e.box.h, 2),
                    "score": round(e.box.score, 4),
                }
            )
        if len(items) > 1:  # all findings on one picture, each in its own colour
            save_findings_overlay(output / f"{stem}_findings.png", radiograph.pixels, items, legend_method)
        if args.feature_maps:
            prepared = explainer.prepare(radiograph)
            x = explainer.contract.normalize(torch.as_tensor(prepared.uint8[None])).to(explainer.device)
            write_feature_maps(explainer.cam.model, x, output / "feature_maps" / stem)
    write_csv(pd.DataFrame(rows, columns=BOX_COLUMNS), output / "boxes.csv", index=False)
    print(
        f"explained {explained} image(s) with {explainer.method} at layer {explainer.layer}: "
        f"{overlays} overlay(s), {len(rows)} box(es) -> {output / 'boxes.csv'}"
        + (f"; {failed} file(s) could not be read" if failed else "")
    )
    return 1 if failed else 0


def run_localize_eval(args) -> int:
    from xraytriage.errors import ConfigError
    from xraytriage.evaluate.localization import (
        CamSource,
        LocaliserSource,
        evaluate_localization,
        load_ground_truth,
        write_localization_report,
    )
    from xraytriage.explain import Explainer
    from xraytriage.models.localiser import load_localiser

    if args.max_boxes < 1 or args.random_repeats < 0 or args.bootstrap < 0:
        raise ConfigError("--max-boxes must be >= 1, --random-repeats and --bootstrap >= 0")
    explainer = _load_explainer(args)
    localiser = load_localiser(args.localiser) if args.localiser else explainer.checkpoint.get_localiser()
    default = ["gradcam"] + (["localiser"] if localiser is not None else [])
    wanted = [m.strip().lower() for m in args.compare.split(",") if m.strip()] if args.compare else default
    sources = {}
    for method in wanted:
        if method == "localiser":
            if localiser is None:
                raise ConfigError(
                    "--compare localiser: the checkpoint has no localiser and no --localiser was given"
                )
            sources["localiser"] = LocaliserSource(localiser)
        elif method in ("gradcam", "gradcam++"):
            same = explainer.method == method and explainer.localiser is None
            cam = explainer if same else Explainer(
                explainer.checkpoint, method=method, layer=args.layer, size_prior=args.size_prior,
                box_threshold=args.box_threshold, device=args.device,
            )  # fmt: skip
            sources[method] = CamSource(cam)
        else:
            raise ConfigError(
                f"--compare: unknown method {method!r}; choose from gradcam, gradcam++, localiser"
            )
    truth = load_ground_truth(args.boxes)
    result = evaluate_localization(
        sources,
        args.images,
        truth,
        max_boxes=args.max_boxes,
        random_repeats=args.random_repeats,
        seed=args.seed,
        n_boot=args.bootstrap,
    )
    title = f"{explainer.checkpoint.name}: {', '.join(sources)}"
    paths = write_localization_report(result, args.output, title=title)
    print(paths["markdown"].read_text())
    if localiser is not None and "localiser" in sources:
        seen = set(localiser.metrics.get("training_images") or [])
        overlap = len(set(result.per_box["image"]) & seen) if len(result.per_box) else 0
        if overlap:
            print(
                f"WARNING: {overlap} of the {result.images} evaluated images trained the localiser: its numbers "
                "here are not a held-out estimate (use `xraytriage localiser cv` for out-of-fold numbers)"
            )
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
