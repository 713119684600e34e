"""The training configuration: typed dataclasses, loaded from YAML plus ``--set key.sub=value``.

Every value is type-checked against its field; unknown keys and bad values raise
:class:`~xraytriage.errors.ConfigError` naming the key (with a "did you mean" hint), so a typo
never silently trains the wrong model. ``TrainConfig.to_dict()`` is the *resolved* config that
runs and checkpoints store; it loads back unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from xraytriage.errors import ConfigError
from xraytriage.models.factory import BACKBONES, ModelConfig
from xraytriage.preprocess import PreprocessContract

Task = Literal["multilabel", "abnormal", "binary_relevance"]


@dataclass
class DatasetSpec:
    """Which images and labels: ``load_dataset(kind, **options)`` then the task's label set.

    Source-specific choices are ``options`` of the dataset, e.g. CheXpert's uncertainty policy
    ``options: {uncertainty: U-Ones}`` or NIH's ``split_file``.
    """

    kind: str = "csv"
    options: dict[str, Any] = field(default_factory=dict)
    labels: list[str] | None = None
    """Output labels in order; default: every label of the dataset."""
    task: Task = "multilabel"
    add_abnormal: bool = False
    """Multi-label only: append the derived "Abnormal" output (any finding vs No Finding)."""
    val_fraction: float = 0.2
    """Share of *patients* held out for validation (when no separate validation set is given)."""
    split_seed: int | None = None
    """Seed of the patient split and the CV folds; default: the run seed."""
    val_kind: str | None = None
    val_options: dict[str, Any] = field(default_factory=dict)
    """A separate validation dataset (e.g. CheXpert valid.csv) instead of a split."""
    cache: str | None = None
    """Folder of the uint8 image cache (``data/cache.py``, ``xraytriage datasets cache``) to train from."""
    build_cache: bool = True
    """Add the dataset's images missing from ``cache`` before training (else they are decoded)."""
    preload: bool | None = None
    """Decode every image once into memory; default: when no cache and it fits in 2 GiB."""


@dataclass
class ModelSection:
    """The network (:class:`~xraytriage.models.factory.ModelConfig`); ``num_classes`` and
    ``in_channels`` follow from the task and ``preprocess.channels`` when left out."""

    backbone: str = "densenet121"
    width: float = 1.0
    dropout: float = 0.0
    in_channels: int | None = None
    num_classes: int | None = None

    def resolve(self, num_classes: int, channels: int) -> ModelConfig:
        if self.num_classes is not None and self.num_classes != num_classes:
            raise ConfigError(
                f"model.num_classes is {self.num_classes} but the task has {num_classes} labels; "
                "leave it out, it follows from the dataset"
            )
        if self.in_channels is not None and self.in_channels != channels:
            raise ConfigError(
                f"model.in_channels ({self.in_channels}) differs from preprocess.channels ({channels})"
            )
        return ModelConfig(
            backbone=self.backbone,
            num_classes=num_classes,
            in_channels=channels,
            width=self.width,
            dropout=self.dropout,
        )


@dataclass
class InitConfig:
    """Random init, or start from an xraytriage checkpoint (fine-tune all, or train the head only)."""

    checkpoint: str | None = None
    mode: Literal["finetune", "freeze_backbone"] = "finetune"


@dataclass
class LossConfig:
    name: Literal["bce", "weighted_bce", "wcel", "focal", "asymmetric"] = "bce"
    focal_gamma: float = 2.0
    focal_alpha: float | None = None
    asl_gamma_pos: float = 0.0
    asl_gamma_neg: float = 4.0
    asl_clip: float = 0.05
    wcel_per_class: bool = False
    """W-CEL: count positives/negatives per label instead of over the whole batch."""


@dataclass
class SamplerConfig:
    name: Literal["none", "weighted", "oversample", "undersample", "group_balanced"] = "none"
    power: float = 1.0
    """weighted: image weight = (1 / prevalence of its rarest positive label) ** power;
    group_balanced: (1 / size of its (group, any finding) cell) ** power."""
    group_by: str = "collection"
    """group_balanced: the dataset table column that names an image's group."""
    max_factor: float = 10.0
    """oversample: repeat an image at most this many times."""
    neg_ratio: float = 1.0
    """undersample: images without any positive label kept per image with one."""
    num_samples: int | None = None
    """weighted, group_balanced: draws per epoch (default: the training set size)."""


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class SchedulerConfig:
    name: Literal["none", "step", "exponential", "plateau", "cosine"] = "none"
    step_size: int = 10
    gamma: float = 0.1
    """step/exponential: multiply the learning rate by gamma (every step_size epochs / every epoch)."""
    patience: int = 3
    factor: float = 0.1
    """plateau: multiply by factor after `patience` epochs without improvement of the metric."""
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    """cosine: linear warm-up, then cosine decay to min_lr, stepped every batch."""


@dataclass
class AugmentConfig:
    """Batch augmentation on the accelerator; never applied at evaluation."""

    enabled: bool = True
    hflip: float = 0.5
    """Probability of a horizontal flip (CheXNet used it; it swaps the heart's side)."""
    rotate: float = 7.0
    """Maximum rotation in degrees (the seeds used ±7°)."""
    scale: tuple[float, float] = (0.95, 1.05)
    translate: float = 0.05
    """Maximum shift as a fraction of the image size."""
    brightness: float = 0.1
    contrast: float = 0.1
    crop: float = 0.0
    """Probability of a random resized crop."""
    crop_scale: tuple[float, float] = (0.7, 1.0)
    crop_ratio: tuple[float, float] = (0.8, 1.25)


@dataclass
class EarlyStoppingConfig:
    metric: str = "mean_auc_14_findings"
    """A named AUC mean (``mean_auc_14_findings``, ``mean_auc_all_outputs``...; see
    :mod:`xraytriage.auc_means`; ``mean_auc`` of older configs and ``mean_auc_14_findings`` on
    other label sets mean the primary mean), val_loss, or auc/<Label>; the best epoch by this
    metric becomes best.pt."""
    mode: Literal["auto", "max", "min"] = "auto"
    patience: int | None = None
    """Stop after this many epochs without improvement; None trains every epoch."""
    min_delta: float = 0.0
    keep_last: bool = False
    """Keep the last epoch as best.pt instead of selecting on validation: in cross-validation this
    keeps out-of-fold predictions honest (no epoch chosen on the very fold being predicted)."""

    @property
    def maximize(self) -> bool:
        return self.mode == "max" or (self.mode == "auto" and "loss" not in self.metric)


@dataclass
class TrainConfig:
    name: str = "run"
    data: DatasetSpec = field(default_factory=DatasetSpec)
    preprocess: PreprocessContract = field(default_factory=PreprocessContract)
    model: ModelSection = field(default_factory=ModelSection)
    init: InitConfig = field(default_factory=InitConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    epochs: int = 10
    batch_size: int = 32
    eval_batch_size: int | None = None
    seed: int = 0
    grad_clip: float | None = None
    """Clip the global gradient norm to this value."""
    workers: int = 4
    pin_memory: bool | None = None
    """Default: on when training on CUDA."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1, ..."""
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    """Mixed precision: auto = bf16 on a GPU that supports it, none on CPU."""
    channels_last: bool = False
    compile: bool = False
    max_steps_per_epoch: int | None = None
    """Cut epochs short (smoke tests, benchmarks)."""
    progress: bool = True
    save_half: bool = False
    """Store checkpoint weights in float16 (half the file size)."""

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        config = _build(cls, data, "")
        validate(config)
        return config

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    @property
    def effective_split_seed(self) -> int:
        return self.seed if self.data.split_seed is None else self.data.split_seed


# --- loading -----------------------------------------------------------------------------------
def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> TrainConfig:
    """Read a YAML file (or start from ``base``), apply ``key.sub=value`` overrides, validate."""
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: the config must be a mapping of sections, got {type(loaded).__name__}"
            )
        raw.update(loaded)
    for item in overrides or []:
        apply_override(raw, item)
    try:
        return TrainConfig.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """``"optim.lr=1e-4"`` -> raw["optim"]["lr"] = 1e-4 (the value is parsed as YAML)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. optim.lr=1e-4), got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: Any, where: str) -> Any:
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        full = f"{where}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {where}{close[0]}?)" if close else ""
            raise ConfigError(f"unknown config key {full!r}{hint}; valid keys here: {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where.rstrip('.') or 'config'}: {exc}") from None


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} is not a valid {_type_name(tp)}"
        )
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}; got {value!r}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, f"{where}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported config type {tp}")  # pragma: no cover - programming error


def _to_plain(value: Any) -> Any:
    if isinstance(value, PreprocessContract):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


# --- cross-field checks ------------------------------------------------------------------------
def validate(config: TrainConfig) -> None:
    """Checks that need more than one field, so a bad config fails before any data is read."""
    c = config
    if c.model.backbone.lower() not in BACKBONES:
        close = difflib.get_close_matches(c.model.backbone.lower(), list(BACKBONES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown backbone {c.model.backbone!r}{hint}; choose one of: {', '.join(sorted(BACKBONES))}"
        )
    checks = [
        (c.epochs >= 1, f"epochs must be >= 1, got {c.epochs}"),
        (c.batch_size >= 1, f"batch_size must be >= 1, got {c.batch_size}"),
        (c.eval_batch_size is None or c.eval_batch_size >= 1, "eval_batch_size must be >= 1"),
        (c.workers >= 0, f"workers must be >= 0, got {c.workers}"),
        (c.optim.lr > 0, f"optim.lr must be > 0, got {c.optim.lr}"),
        (c.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (c.grad_clip is None or c.grad_clip > 0, f"grad_clip must be > 0, got {c.grad_clip}"),
        (c.max_steps_per_epoch is None or c.max_steps_per_epoch >= 1, "max_steps_per_epoch must be >= 1"),
        (c.data.val_kind is not None or 0.0 <= c.data.val_fraction < 1.0,
         f"data.val_fraction must be in [0, 1), got {c.data.val_fraction}"),
        (c.model.width > 0, f"model.width must be > 0, got {c.model.width}"),
        (0.0 <= c.model.dropout < 1.0, f"model.dropout must be in [0, 1), got {c.model.dropout}"),
        (c.scheduler.step_size >= 1, "scheduler.step_size must be >= 1"),
        (0 < c.scheduler.gamma <= 1, f"scheduler.gamma must be in (0, 1], got {c.scheduler.gamma}"),
        (0 < c.scheduler.factor < 1, f"scheduler.factor must be in (0, 1), got {c.scheduler.factor}"),
        (c.scheduler.warmup_epochs >= 0, "scheduler.warmup_epochs must be >= 0"),
        (0 <= c.augment.hflip <= 1, "augment.hflip is a probability in [0, 1]"),
        (0 <= c.augment.crop <= 1, "augment.crop is a probability in [0, 1]"),
        (0 <= c.augment.rotate <= 180, "augment.rotate must be in [0, 180] degrees"),
        (0 < c.augment.scale[0] <= c.augment.scale[1], "augment.scale must be [low, high] with 0 < low <= high"),
        (0 < c.augment.crop_scale[0] <= c.augment.crop_scale[1] <= 1, "augment.crop_scale must be in (0, 1]"),
        (0 < c.augment.crop_ratio[0] <= c.augment.crop_ratio[1], "augment.crop_ratio must be [low, high]"),
        (c.augment.translate >= 0 and c.augment.brightness >= 0 and c.augment.contrast >= 0,
         "augment.translate/brightness/contrast must be >= 0"),
        (c.sampler.power >= 0, "sampler.power must be >= 0"),
        (c.sampler.max_factor >= 1, "sampler.max_factor must be >= 1"),
        (c.sampler.neg_ratio > 0, "sampler.neg_ratio must be > 0"),
        (c.early_stopping.patience is None or c.early_stopping.patience >= 1, "early_stopping.patience must be >= 1"),
        (c.loss.focal_gamma >= 0 and c.loss.asl_gamma_neg >= 0 and c.loss.asl_gamma_pos >= 0,
         "loss gammas must be >= 0"),
        (0 <= c.loss.asl_clip < 1, "loss.asl_clip must be in [0, 1)"),
        (c.loss.focal_alpha is None or 0 < c.loss.focal_alpha < 1, "loss.focal_alpha must be in (0, 1)"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    metric = c.early_stopping.metric
    if metric != "val_loss" and not metric.startswith(("mean_auc", "auc/", "auc_")):
        raise ConfigError(
            f"early_stopping.metric must be a named AUC mean (mean_auc_14_findings...), val_loss or "
            f"auc/<Label>, got {metric!r}"
        )
    if c.data.task != "multilabel" and c.data.add_abnormal:
        raise ConfigError("data.add_abnormal only applies to task: multilabel")
    if c.init.mode == "freeze_backbone" and not c.init.checkpoint:
        raise ConfigError("init.mode freeze_backbone needs init.checkpoint (a trained backbone to freeze)")
    if c.amp == "fp16" and c.device == "cpu":
        raise ConfigError("amp: fp16 needs a GPU; use bf16 or none on CPU")
    if c.model.in_channels is not None and c.model.in_channels != c.preprocess.channels:
        raise ConfigError(
            f"model.in_channels ({c.model.in_channels}) differs from preprocess.channels ({c.preprocess.channels})"
        )
