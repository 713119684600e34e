"""``xraytriage localiser pack|train|cv|attach``: the box-supervised localiser.

xraytriage localiser pack --boxes BBox_List_2017.csv.gz --images nih/images --labels Data_Entry.csv.gz -o boxes.npz
xraytriage localiser pack --dataset fracatlas --root msk/fracatlas --config configs/localiser/fracatlas-boxes.yaml -o fracture-boxes.npz
xraytriage localiser cv boxes.npz --config configs/localiser/nih-boxes.yaml -o runs/localiser/cv
xraytriage localiser train boxes.npz --config configs/localiser/nih-boxes.yaml -o runs/localiser/localiser.pt
xraytriage localiser attach --model model.pt --localiser localiser.pt -o model-with-localiser.pt
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xraytriage.cli.common import add_model_argument, resolve_model_path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "localiser",
        help="box-supervised lesion localiser: prepare box data, cross-validate, train, attach to a model",
        description=(
            "A small U-Net trained on ground-truth boxes (NIH BBox_List) as pixel masks, one channel per "
            "finding. Once attached to a checkpoint, explain/triage/serve draw its boxes for the findings "
            "it covers (Grad-CAM for the others)."
        ),
    )
    sub = parser.add_subparsers(dest="localiser_command", metavar="STEP", required=True)

    pack = sub.add_parser("pack", help="read the box images once into one .npz (inputs + boxes)")
    pack.add_argument(
        "--boxes", type=Path, default=None, help="NIH BBox_List_2017.csv(.gz) or path,finding,x,y,w,h CSV"
    )
    pack.add_argument("--images", type=Path, nargs="+", default=None, help="image folder(s)")
    pack.add_argument(
        "--dataset",
        choices=("fracatlas",),
        default=None,
        help="instead of --boxes/--images: a data set's own boxes (fracatlas: the fracture boxes, "
        "`group` as the patient)",
    )
    pack.add_argument("--root", type=Path, default=None, help="the --dataset's folder")
    pack.add_argument(
        "--labels", type=Path, default=None, help="NIH Data_Entry CSV or labels.csv (patients, labels)"
    )
    pack.add_argument("--config", type=Path, default=None, help="localiser YAML (spec: findings, size, ...)")
    pack.add_argument("--output", "-o", type=Path, required=True, help="output .npz")
    pack.set_defaults(handler=run_pack)

    for name, helptext in (
        ("cv", "patient-grouped k-fold CV: out-of-fold localisation benchmark with bootstrap CIs"),
        ("train", "train on every box image and save the localiser"),
    ):
        step = sub.add_parser(name, help=helptext)
        step.add_argument("data", type=Path, help="box data .npz from `localiser pack`")
        step.add_argument("--config", type=Path, default=None, help="localiser YAML (spec + training)")
        step.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a training option, e.g. --set epochs=10")  # fmt: skip
        step.add_argument(
            "--output", "-o", type=Path, required=True, help="output folder (cv) or .pt file (train)"
        )
        step.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name == "cv":
            step.add_argument(
                "--baseline",
                choices=("none", "prior"),
                default="none",
                help="prior: score only the location-prior baseline (each finding's average training-fold "
                "box mask), no network (seconds)",
            )
        step.set_defaults(handler=run_cv if name == "cv" else run_train)

    attach = sub.add_parser("attach", help="put a localiser inside a classifier checkpoint")
    add_model_argument(attach)
    attach.add_argument("--localiser", type=Path, required=True, help="localiser .pt from `localiser train`")
    attach.add_argument("--output", "-o", type=Path, required=True, help="output checkpoint")
    attach.set_defaults(handler=run_attach)


def load_localiser_config(path: Path | None, overrides: list[str] | None = None) -> tuple[Any, Any]:
    """(LocaliserSpec, LocaliserTrainConfig) from a YAML with optional ``spec`` and ``train``
    sections; ``--set key=value`` overrides training options."""
    import yaml

    from xraytriage.errors import ConfigError
    from xraytriage.models.localiser import LocaliserSpec
    from xraytriage.preprocess import PreprocessContract
    from xraytriage.train.localiser import LocaliserTrainConfig

    data: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"{path}: localiser config not found")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict) or set(data) - {"name", "spec", "train"}:
            raise ConfigError(f"{path}: expected sections name, spec, train")
    spec_data = dict(data.get("spec") or {})
    default = LocaliserSpec()
    try:
        spec = LocaliserSpec(
            findings=tuple(spec_data.get("findings", default.findings)),
            features=tuple(spec_data.get("features", default.features)),
            preprocess=PreprocessContract.from_dict(
                {**default.preprocess.to_dict(), **dict(spec_data.get("preprocess") or {})}
            ),
            box_threshold=float(spec_data.get("box_threshold", default.box_threshold)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: spec: {exc}") from None
    train = dict(data.get("train") or {})
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        train[key.strip()] = yaml.safe_load(value)
    return spec, LocaliserTrainConfig.from_mapping(train, str(path or "--set"))


def run_pack(args) -> int:
    from xraytriage.errors import ConfigError
    from xraytriage.train.localiser import build_box_data, build_fracatlas_box_data

    spec, _ = load_localiser_config(args.config)
    if args.dataset is not None:
        if args.root is None or args.boxes is not None or args.images is not None:
            raise ConfigError("--dataset needs --root and takes no --boxes/--images")
        data, errors = build_fracatlas_box_data(args.root, spec)
    else:
        if args.boxes is None or args.images is None:
            raise ConfigError("localiser pack needs --boxes and --images (or --dataset and --root)")
        data, errors = build_box_data(args.boxes, args.images, spec, args.labels)
    data.save(args.output)
    boxes = data.boxes["finding"].value_counts()
    print(
        f"{len(data)} images, {len(set(data.patients))} patients, {len(data.boxes)} boxes "
        f"({', '.join(f'{f} {n}' for f, n in boxes.items())}) at {spec.preprocess.size} px -> {args.output}"
    )
    for error in errors:
        print(f"skipped: {error}")
    return 1 if errors else 0


def _check_data(data, spec, path: Path) -> None:
    from xraytriage.errors import ConfigError

    if tuple(data.findings) != tuple(spec.findings) or int(data.images.shape[-1]) != int(
        spec.preprocess.size
    ):
        raise ConfigError(
            f"{path}: packed for {list(data.findings)} at {data.images.shape[-1]} px; the config wants "
            f"{list(spec.findings)} at {spec.preprocess.size} px (run `localiser pack` with the same --config)"
        )
    packed = {k: v for k, v in data.contract.items() if k != "extra"}
    wanted = {k: v for k, v in spec.preprocess.to_dict().items() if k != "extra"}
    if packed and packed != wanted:
        raise ConfigError(f"{path}: packed with preprocessing {packed}, the config wants {wanted}")


def run_cv(args) -> int:
    import json

    import pandas as pd

    from xraytriage.evaluate.localization import evaluate_input_maps, write_localization_report
    from xraytriage.sanitize import write_csv
    from xraytriage.train.localiser import BoxData, cross_validate_box_prior, cross_validate_localiser

    spec, config = load_localiser_config(args.config, args.overrides)
    data = BoxData.load(args.data)
    _check_data(data, spec, args.data)
    if args.baseline == "prior":
        maps, fold = cross_validate_box_prior(data, config)
    else:
        maps, fold = cross_validate_localiser(data, spec, config, progress=not args.no_progress)
    method = "box prior" if args.baseline == "prior" else "localiser"
    result = evaluate_input_maps(
        maps, data.findings, data.names, data.patients, data.sizes, data.boxes, spec.preprocess,
        method=method, box_threshold=spec.box_threshold, seed=config.seed, progress=not args.no_progress,
    )  # fmt: skip
    args.output.mkdir(parents=True, exist_ok=True)
    title = f"{method}, {config.folds}-fold patient-grouped CV, out of fold"
    paths = write_localization_report(result, args.output, title=title)
    folds = pd.DataFrame({"image": data.names, "patient": data.patients, "fold": fold})
    write_csv(folds, args.output / "folds.csv", index=False)
    (args.output / "config.json").write_text(
        json.dumps({"spec": spec.to_dict(), "train": vars(config)}, indent=2)
    )
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def run_train(args) -> int:
    from xraytriage.train.localiser import BoxData, train_localiser

    spec, config = load_localiser_config(args.config, args.overrides)
    data = BoxData.load(args.data)
    _check_data(data, spec, args.data)
    localiser = train_localiser(data, spec, config, progress=not args.no_progress)
    localiser.metrics["training_images"] = list(data.names)
    output = args.output if args.output.suffix == ".pt" else args.output / "localiser.pt"
    localiser.save(output)
    print(f"localiser for {', '.join(spec.findings)} trained on {len(data)} images -> {output}")
    return 0


def run_attach(args) -> int:
    from xraytriage.models.checkpoint import load_checkpoint
    from xraytriage.models.localiser import load_localiser

    checkpoint = load_checkpoint(resolve_model_path(args.model))
    localiser = load_localiser(args.localiser)
    checkpoint.localiser = localiser.to_dict()
    checkpoint.save(args.output)
    covered = [f for f in localiser.findings if f in checkpoint.label_names]
    print(
        f"{args.output}: {checkpoint.name} now draws localiser boxes for {', '.join(covered) or 'no finding it outputs'}"
        f" ({args.output.stat().st_size / 1e6:.1f} MB)"
    )
    return 0
