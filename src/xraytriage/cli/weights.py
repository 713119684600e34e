"""``xraytriage import-weights``: turn external DenseNet-121 weights into a servable checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from xraytriage.models.weight_presets import PRESETS


def _floats(text: str) -> float | tuple[float, ...]:
    values = tuple(float(v) for v in text.split(","))
    return values[0] if len(values) == 1 else values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import-weights",
        help="convert a torchvision-layout DenseNet-121 state dict into an xraytriage checkpoint "
        "(published models: `xraytriage models fetch` does it for you)",
        description=(
            "Convert a DenseNet-121 state dict in torchvision layout (CheXNet reproductions, "
            "torchxrayvision) into a checkpoint that triage/explain/serve can use alone. Presets: "
            + "; ".join(f"{k}: {v.description}" for k, v in PRESETS.items())
        ),
    )
    p.add_argument("weights", type=Path, help="state dict file (.pt, .pth, .pth.tar)")
    p.add_argument("--output", type=Path, required=True, help="checkpoint to write (.pt)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="input convention of a known publisher")
    p.add_argument(
        "--labels", help="comma-separated label names in output order, or a text file, one per line"
    )
    p.add_argument("--channels", type=int, choices=(1, 3))
    p.add_argument("--size", type=int, help="input size in pixels (square)")
    p.add_argument(
        "--mean", type=_floats, help="normalisation mean on [0,1] pixels: one value or one per channel"
    )
    p.add_argument("--std", type=_floats, help="normalisation std: one value or one per channel")
    p.add_argument("--name", default=None, help="model name stored in the checkpoint")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from xraytriage.errors import ConfigError
    from xraytriage.models.import_weights import import_densenet121, load_external_state

    preset = PRESETS.get(args.preset) if args.preset else None
    labels: list[str] = []
    if args.labels:
        path = Path(args.labels)
        if path.is_file():
            labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    elif preset is not None:
        labels = list(preset.labels)

    def pick(value, key):
        if value is not None:
            return value
        if preset is None:
            raise ConfigError(f"--{key} is required without --preset")
        return getattr(preset, key)

    if not labels:
        raise ConfigError("--labels is required (the state dict does not say what its outputs mean)")
    checkpoint = import_densenet121(
        load_external_state(args.weights),
        labels=labels,
        channels=pick(args.channels, "channels"),
        size=pick(args.size, "size"),
        mean=pick(args.mean, "mean"),
        std=pick(args.std, "std"),
        name=args.name or args.weights.stem,
        geometry=dict(preset.geometry) if preset is not None and args.size in (None, preset.size) else None,
    )
    checkpoint.save(args.output)
    print(f"wrote {args.output}: densenet121, {len(labels)} labels, input {checkpoint.preprocess.to_dict()}")
    return 0
