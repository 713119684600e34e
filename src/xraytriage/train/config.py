"""The training configuration: pydantic models, loaded from YAML plus ``--set key.sub=value``.

Every value is type-checked against its field (pydantic v2 in lax mode: ``"1e-4"`` is a number,
``3.0`` an integer; ``true`` is never a number nor ``1`` a boolean); unknown keys and bad values
raise :class:`~xraytriage.errors.ConfigError` naming the key (with a "did you mean" hint) and,
from :func:`load_config`, the file, so a typo never silently trains the wrong model.
``TrainConfig.to_dict()`` is the *resolved* config that runs and checkpoints store; it loads back
unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_serializer,
)
from pydantic_core import PydanticCustomError

from xraytriage.errors import ConfigError, MissingFileError
from xraytriage.models.factory import BACKBONES, ModelConfig
from xraytriage.preprocess import PreprocessContract


def _no_bool(kind: str, text: str):
    def check(value: Any) -> Any:
        if isinstance(value, bool):  # YAML's true/false are not numbers here
            raise PydanticCustomError(kind, text)
        return value

    return BeforeValidator(check)


Int = Annotated[int, _no_bool("int_type", "Input should be a valid integer")]
Float = Annotated[float, _no_bool("float_type", "Input should be a valid number")]


class Section(BaseModel):
    """A config section: unknown keys are errors; numbers are accepted where text is expected;
    the docstring under each field is its description."""

    model_config = ConfigDict(
        extra="forbid",
        coerce_numbers_to_str=True,
        use_attribute_docstrings=True,
        arbitrary_types_allowed=True,
    )


Task = Literal["multilabel", "abnormal", "binary_relevance"]


class DatasetSpec(Section):
    """Which images and labels: ``load_dataset(kind, **options)`` then the task's label set.

    Source-specific choices are ``options`` of the dataset, e.g. CheXpert's uncertainty policy
    ``options: {uncertainty: U-Ones}`` or NIH's ``split_file``.
    """

    kind: str = "csv"
    options: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] | None = None
    """Output labels in order; default: every label of the dataset."""
    task: Task = "multilabel"
    add_abnormal: StrictBool = False
    """Multi-label only: append the derived "Abnormal" output (any finding vs No Finding)."""
    val_fraction: Float = 0.2
    """Share of *patients* held out for validation (when no separate validation set is given)."""
    split_seed: Int | None = None
    """Seed of the patient split and the CV folds; default: the run seed."""
    val_kind: str | None = None
    val_options: dict[str, Any] = Field(default_factory=dict)
    """A separate validation dataset (e.g. CheXpert valid.csv) instead of a split."""
    cache: str | None = None
    """Folder of the uint8 image cache (``data/cache.py``, ``xraytriage datasets cache``) to train from."""
    build_cache: StrictBool = True
    """Add the dataset's images missing from ``cache`` before training (else they are decoded)."""
    preload: StrictBool | None = None
    """Decode every image once into memory; default: when no cache and it fits in 2 GiB."""


class ModelSection(Section):
    """The network (:class:`~xraytriage.models.factory.ModelConfig`); ``num_classes`` and
    ``in_channels`` follow from the task and ``preprocess.channels`` when left out."""

    backbone: str = "densenet121"
    width: Float = 1.0
    dropout: Float = 0.0
    in_channels: Int | None = None
    num_classes: Int | None = None

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


class InitConfig(Section):
    """Random init, or start from an xraytriage checkpoint (fine-tune all, or train the head only)."""

    checkpoint: str | None = None
    mode: Literal["finetune", "freeze_backbone"] = "finetune"


class LossConfig(Section):
    name: Literal["bce", "weighted_bce", "wcel", "focal", "asymmetric"] = "bce"
    focal_gamma: Float = 2.0
    focal_alpha: Float | None = None
    asl_gamma_pos: Float = 0.0
    asl_gamma_neg: Float = 4.0
    asl_clip: Float = 0.05
    wcel_per_class: StrictBool = False
    """W-CEL: count positives/negatives per label instead of over the whole batch."""


class SamplerConfig(Section):
    name: Literal["none", "weighted", "oversample", "undersample", "group_balanced"] = "none"
    power: Float = 1.0
    """weighted: image weight = (1 / prevalence of its rarest positive label) ** power;
    group_balanced: (1 / size of its (group, any finding) cell) ** power."""
    group_by: str = "collection"
    """group_balanced: the dataset table column that names an image's group."""
    max_factor: Float = 10.0
    """oversample: repeat an image at most this many times."""
    neg_ratio: Float = 1.0
    """undersample: images without any positive label kept per image with one."""
    num_samples: Int | None = None
    """weighted, group_balanced: draws per epoch (default: the training set size)."""


class OptimConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Float = 1e-3
    weight_decay: Float = 0.0
    momentum: Float = 0.9
    nesterov: StrictBool = False
    betas: tuple[Float, Float] = (0.9, 0.999)


class SchedulerConfig(Section):
    name: Literal["none", "step", "exponential", "plateau", "cosine"] = "none"
    step_size: Int = 10
    gamma: Float = 0.1
    """step/exponential: multiply the learning rate by gamma (every step_size epochs / every epoch)."""
    patience: Int = 3
    factor: Float = 0.1
    """plateau: multiply by factor after `patience` epochs without improvement of the metric."""
    warmup_epochs: Float = 0.0
    min_lr: Float = 0.0
    """cosine: linear warm-up, then cosine decay to min_lr, stepped every batch."""


class AugmentConfig(Section):
    """Batch augmentation on the accelerator; never applied at evaluation."""

    enabled: StrictBool = True
    hflip: Float = 0.5
    """Probability of a horizontal flip (CheXNet used it; it swaps the heart's side)."""
    rotate: Float = 7.0
    """Maximum rotation in degrees (the seeds used ±7°)."""
    scale: tuple[Float, Float] = (0.95, 1.05)
    translate: Float = 0.05
    """Maximum shift as a fraction of the image size."""
    brightness: Float = 0.1
    contrast: Float = 0.1
    crop: Float = 0.0
    """Probability of a random resized crop."""
    crop_scale: tuple[Float, Float] = (0.7, 1.0)
    crop_ratio: tuple[Float, Float] = (0.8, 1.25)


class EarlyStoppingConfig(Section):
    metric: str = "mean_auc_14_findings"
    """A named AUC mean (``mean_auc_14_findings``, ``mean_auc_all_outputs``...; see
    :mod:`xraytriage.auc_means`; ``mean_auc`` of older configs and ``mean_auc_14_findings`` on
    other label sets mean the primary mean), val_loss, or auc/<Label>; the best epoch by this
    metric becomes best.pt."""
    mode: Literal["auto", "max", "min"] = "auto"
    patience: Int | None = None
    """Stop after this many epochs without improvement; None trains every epoch."""
    min_delta: Float = 0.0
    keep_last: StrictBool = False
    """Keep the last epoch as best.pt instead of selecting on validation: in cross-validation this
    keeps out-of-fold predictions honest (no epoch chosen on the very fold being predicted)."""

    @property
    def maximize(self) -> bool:
        return self.mode == "max" or (self.mode == "auto" and "loss" not in self.metric)


class DistillConfig(Section):
    """Knowledge distillation from another model's per-image probabilities (e.g. the CheXNet
    reproduction's): for the training images listed in ``predictions`` the target of each
    finding it predicts becomes ``(1 - weight) * label + weight * probability`` (BCE with that
    target = the two BCEs mixed). Validation and sampling keep the hard labels."""

    predictions: str | None = None
    """CSV with an image column (``Image Index``, ``image``, ``path``) and ``prob_<finding>``."""
    weight: Float = 0.5


class TrainConfig(Section):
    name: str = "run"
    data: DatasetSpec = Field(default_factory=DatasetSpec)
    preprocess: PreprocessContract = Field(default_factory=PreprocessContract)
    model: ModelSection = Field(default_factory=ModelSection)
    init: InitConfig = Field(default_factory=InitConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    epochs: Int = 10
    batch_size: Int = 32
    eval_batch_size: Int | None = None
    seed: Int = 0
    grad_clip: Float | None = None
    """Clip the global gradient norm to this value."""
    workers: Int = 4
    pin_memory: StrictBool | None = None
    """Default: on when training on CUDA."""
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:1, ..."""
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    """Mixed precision: auto = bf16 on a GPU that supports it and on a CPU with bf16 units
    (AVX512-BF16 or AMX), float32 elsewhere."""
    channels_last: StrictBool | None = None
    """Default (null): on when training with mixed precision."""
    compile: StrictBool = False
    max_steps_per_epoch: Int | None = None
    """Cut epochs short (smoke tests, benchmarks)."""
    progress: StrictBool = True
    save_half: StrictBool = False
    """Store checkpoint weights in float16 (half the file size)."""

    # --- (de)serialisation -------------------------------------------------------------------
    @field_serializer("preprocess")
    def _contract(self, contract: PreprocessContract) -> dict[str, Any]:
        return contract.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return _plain(self.model_dump())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping, got {data!r}")
        try:
            config = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(explain(exc, data)) from None
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
            raise MissingFileError(path, "config file")
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


# --- pydantic's errors in the words of a config file -----------------------------------------------
_TYPE_WORDS = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dataclass_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
}


def _fields(tp: Any) -> dict[str, Any] | None:
    """Field name -> annotation of a section or dataclass (None for anything else)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: info.annotation for name, info in tp.model_fields.items()}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return {f.name: hints[f.name] for f in dataclasses.fields(tp) if f.init}
    return None


def _strip(tp: Any) -> Any:
    """``X | None`` -> ``X``; ``Annotated[X, ...]`` -> ``X``."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return _strip(options[0])
    return tp


def _walk(loc: tuple[Any, ...]) -> tuple[str, Any, Any]:
    """(dotted key, its annotation, the annotation of the section holding it) for a pydantic
    error location; union member tags in the location are skipped."""
    key, tp, parent = "", TrainConfig, None
    for item in loc:
        tp = _strip(tp)
        fields = _fields(tp)
        origin = typing.get_origin(tp)
        if fields is not None and isinstance(item, str):
            key, parent, tp = f"{key}.{item}".lstrip("."), tp, fields.get(item, Any)
        elif isinstance(item, int) and origin in (list, tuple):
            args = typing.get_args(tp)
            key, tp = f"{key}[{item}]", args[0] if origin is list or args[-1] is Ellipsis else args[item]
        elif origin is dict:
            key, tp = f"{key}.{item}", typing.get_args(tp)[1]
    return key, _strip(tp), parent


def _raw(data: Any, loc: tuple[Any, ...]) -> Any:
    """The value at ``loc`` in the raw config (as far as the location leads)."""
    for item in loc:
        if (isinstance(data, dict) and item in data) or (
            isinstance(data, list | tuple) and isinstance(item, int) and item < len(data)
        ):
            data = data[item]
    return data


def explain(exc: ValidationError, data: Any) -> str:
    """The first error of ``exc`` (validating the raw config ``data``) as one sentence that
    names the key."""
    error = exc.errors()[0]
    kind, loc, value = error["type"], tuple(error["loc"]), error.get("input")
    if kind == "value_error":  # a ConfigError raised while building a section (preprocess)
        return str(error["ctx"]["error"])
    key, tp, parent = _walk(loc)
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        names = list(_fields(parent) or {})
        where = key.rpartition(".")[0]
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        hint = f" (did you mean {where + '.' if where else ''}{close[0]}?)" if close else ""
        return f"unknown config key {key!r}{hint}; valid keys here: {', '.join(names)}"
    if kind == "literal_error":
        options = [str(a) for a in typing.get_args(tp)]
        close = difflib.get_close_matches(str(value), options, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{key} must be one of {', '.join(options)}; got {value!r}{hint}"
    if kind in ("missing", "too_long", "too_short") and isinstance(loc[-1], int):
        key, tp, _ = _walk(loc[:-1])
    if typing.get_origin(tp) is tuple:
        if kind == "tuple_type":
            return f"{key} must be a list of {len(typing.get_args(tp))} values, got {value!r}"
        if kind in ("missing", "too_long", "too_short"):
            return f"{key} must have {len(typing.get_args(tp))} values, got {_raw(data, loc[:-1] if kind == 'missing' else loc)!r}"
    if kind in _TYPE_WORDS:
        return f"{key or 'config'} {_TYPE_WORDS[kind]}, got {value!r}"
    return f"{key or 'config'}: {error['msg']}"


def _plain(value: Any) -> Any:
    """YAML-friendly: tuples become lists, mapping keys strings."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
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
        (0 <= c.distill.weight <= 1, "distill.weight must be in [0, 1]"),
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
