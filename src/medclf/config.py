"""Typed run configuration: dataclasses with attribute docstrings, YAML in and out, ``--set`` overrides.

A recipe (``configs/*.yaml``) is a partial ``RunConfig``; everything it leaves out takes the defaults below.
The resolved config is saved in every run folder as ``config.yaml``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from medclf.errors import ConfigError

__all__ = [
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "field_docs",
    "load_config",
]


@dataclass
class DataConfig:
    """Which images, which labels, which split."""

    root: str | None = None
    """Dataset folder. Its layout is auto-detected; `spec`'s layout applies only when `spec` describes this same
    folder (or names no root)."""
    spec: str | dict[str, Any] | None = None
    """A DatasetSpec: path to a YAML file, or the spec's fields inline (layout, label rule, groups, metadata)."""
    split_csv: str | None = None
    """A split written by `medclf data split`; when unset a grouped, stratified split is made and saved."""
    group_by: str | None = None
    """Group column, or 'regex:PATTERN' on the file name, so one patient/lesion never spans two splits."""
    val: float = 0.15
    """Validation fraction (of groups) when a split is made here."""
    test: float = 0.15
    """Test fraction (of groups) when a split is made here; never used for tuning or thresholds."""
    seed: int = 0
    """Seed of the split."""
    skip_bad: bool = False
    """Skip unreadable images (and list them) instead of stopping at the first one."""
    exclude: str | None = None
    """A CSV with a `path` column (e.g. the label_issues.csv of `medclf data audit --predictions`): those images
    are left out of training only; val and test keep them, so held-out figures stay comparable."""


@dataclass
class ModelConfig:
    """Which network and how its inputs are prepared."""

    name: str = "efficientnet_lite0"
    """A name from `medclf models`: a small CNN of the studies or any timm backbone."""
    pretrained: bool = True
    """Start from ImageNet weights (offline for EfficientNet-Lite0/1/2; download for other timm models)."""
    input_size: int | None = None
    """Square input side in pixels; None takes the model's default (e.g. 224, 32 for mpox_cnn)."""
    in_chans: int | None = None
    """1 reads images as grayscale (a one-channel stem; pretrained `efficientnet_lite*` weights get their RGB stem
    filters summed), 3 as RGB; None takes the model's default."""
    jpeg_draft: bool = True
    """Decode JPEGs of four times the input size or more at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), never
    below twice the input size, before the resize: large photos decode faster and the input barely moves
    (docs/benchmarks-serving.md). Saved with the run, so serving decodes as training did. false decodes every pixel."""
    drop_rate: float = 0.2
    """Dropout before the classifier."""
    metadata: list[str] = field(default_factory=list)
    """Metadata columns fused with the image (image + tabular late fusion); empty for image only."""
    metadata_only: bool = False
    """Use only the metadata columns (the ablation's tabular baseline)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the model factory."""


Strategy = Literal["cached", "finetune", "full", "scratch"]
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)


@dataclass
class TrainConfig:
    """How the model is trained."""

    strategy: Strategy = "cached"
    """cached (frozen-backbone features once, then the head: fast on CPU), finetune (two phases), full, scratch."""
    epochs: int = 30
    """Maximum epochs in all (for `cached`: of the head; for `finetune`: the head epochs included)."""
    head_epochs: int = 5
    """Phase 1 of `finetune`: the first `head_epochs` of `epochs` train the head on a frozen backbone."""
    finetune_blocks: int = 2
    """Top backbone blocks unfrozen in phase 2 of `finetune` (and trained from cached maps by `cached`)."""
    finetune_lr_scale: float = 0.1
    """Phase-2 learning rate as a fraction of `lr`."""
    batch_size: int = 32
    """Images per optimisation step."""
    lr: float = 1e-3
    """Learning rate (of the head; phase 2 of `finetune` and the cached top blocks use lr × finetune_lr_scale)."""
    weight_decay: float = 1e-4
    """Decoupled weight decay (AdamW) or L2 (SGD)."""
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """adamw or sgd."""
    scheduler: Literal["plateau", "cosine", "none"] = "plateau"
    """plateau (reduce LR when the monitored metric stalls), cosine, or none."""
    patience: int = 6
    """Early-stopping patience in epochs (0 disables early stopping)."""
    monitor: str = "val_auc"
    """Metric for early stopping, LR-on-plateau and the best checkpoint: val_auc, val_loss, val_acc, val_bacc."""
    loss: Literal["ce", "focal"] = "ce"
    """ce (cross-entropy) or focal."""
    focal_gamma: float = 2.0
    """Focusing parameter of the focal loss (0 = cross-entropy)."""
    label_smoothing: float = 0.0
    """Label smoothing of the loss (0.1 is a common choice)."""
    ema: float = 0.0
    """Keep an exponential moving average of the trained weights, with this decay per optimisation step (e.g.
    0.99 for `cached`, 0.998 for `full`; warmed up as min(ema, (1 + step) / (10 + step))). Validation, the best
    epoch and the saved model use the averaged weights. 0 = off."""
    image_cache: bool = True
    """`full`, `finetune`, `scratch`: decode and resize every image once into memory (uint8, images × channels ×
    input_size² bytes) and augment tensors each epoch, instead of decoding every image again every epoch."""
    low_res_size: int = 0
    """Progressive resizing (with `image_cache`): train at this image side for all but the last `full_res_epochs`
    epochs, then at the model's input size. 0 = every epoch at the input size."""
    full_res_epochs: int = 2
    """With `low_res_size`: the last epochs, trained at the model's input size."""
    warmup_epochs: int = 0
    """Epochs of linear learning-rate warm-up (per step) with the cosine schedule."""
    budget: str | None = None
    """A time budget for the whole run, e.g. 10m, 90s or 1h. Training throughput is measured at the start on this
    machine; the image side (input_size or lower), the epochs and the strategy (all layers, or `cached` when even
    the lowest side cannot train enough epochs) are chosen to fit it, and training stops on time with the best
    epoch's weights. None = no budget."""
    mixup: float = 0.0
    """Mixup: each training batch is blended with a shuffled copy of itself (images, or the cached maps of
    `cached`; metadata and loss targets too) by a weight drawn from Beta(mixup, mixup), e.g. 0.2. 0 = off."""
    class_weights: bool = True
    """Weight the loss by inverse class frequency (to the power `class_weight_power`)."""
    class_weight_power: float = 1.0
    """Exponent of the inverse-frequency class weights: 1 = N / (C n_c), 0.5 = its square root (softer)."""
    balanced_sampler: bool = False
    """Draw balanced batches instead of (or as well as) weighting the loss."""
    augment: str = "standard"
    """none, standard (the studies' rotation/shift/zoom/shear/flip/brightness), lesion_safe (no crop or zoom)."""
    views: int = 1
    """`cached`: augmented views per training image computed into the feature cache (1 = the image itself)."""
    precision: str = "32-true"
    """Lightning precision: 32-true, or bf16-mixed (bfloat16 autocast; on a CPU it pays only where a benchmark
    shows it, docs/benchmarks-training.md); 16-mixed on GPUs."""
    devices: str | int = "auto"
    """Lightning devices; several GPUs train with DDP."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, mps."""
    num_nodes: int = 1
    """Machines in a multi-node DDP run (each runs `devices` processes); see docs/scaling.md."""
    num_workers: int = 0
    """DataLoader worker processes (0 decodes in the training process: on a small CPU, workers would only compete
    with it for the cores)."""
    seed: int = 0
    """Seed of weight initialisation, batch order, augmentation and dropout (a resumed run replays it exactly)."""
    cache_dir: str | None = None
    """Feature cache folder for `cached` (default: ~/.cache/medclf/features)."""


@dataclass
class EvalConfig:
    """How predictions become decisions and how they are judged."""

    threshold: str = "youden"
    """Operating point chosen on validation data (binary, or the positive_classes group): youden,
    sensitivity:0.95, specificity:0.9, or a number."""
    positive_class: str | None = None
    """Binary tasks: the class that counts as positive (default: the second class, e.g. malignant)."""
    positive_classes: list[str] = field(default_factory=list)
    """Multiclass tasks: classes that together count as positive (e.g. [mel, bcc, akiec]); the threshold rule is
    applied on validation data to their summed probability."""
    calibrate: bool = True
    """Fit temperature scaling on validation data."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% confidence intervals."""
    refer_below: float = 0.6
    """Predictions whose top probability is below this are flagged 'refer to a clinician'."""
    tta: list[str] = field(default_factory=list)
    """Test-time augmentation: extra views (hflip, vflip, rot90, rot180, rot270) whose image features are averaged
    with the original's for every prediction the run makes (validation, evaluate, predict, serve, export). Costs
    one forward pass per view; e.g. [hflip, vflip] for lesion photos. Empty = off."""


@dataclass
class RunConfig:
    """A whole recipe."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    name: str | None = None
    """A label for the run in reports and leaderboards; unset, the dataset's name (its spec's `name`, else its
    folder's name)."""
    search_space: dict[str, Any] = field(default_factory=dict)
    """`medclf tune` only: config key -> {type: loguniform|uniform|int|categorical, low, high, choices}, e.g.
    {train.lr: {type: loguniform, low: 1e-4, high: 1e-2}}. `medclf train` ignores it."""


T = TypeVar("T")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} is not a valid value (expected {_type_name(tp)})")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}={value!r}: choose one of {', '.join(map(str, choices))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return config_from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "3e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    if tp in (int, float, bool, str):
        raise ConfigError(f"{where}: {value!r} is not a valid {tp.__name__}")
    return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def config_from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build a config dataclass from a mapping, refusing unknown keys with the list of known ones."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; known keys{' of ' + where if where else ''}: {', '.join(names)}"
        )
    kwargs = {
        k: _check_type(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items() if k in names
    }
    return cls(**kwargs)


def check_choices(section: Any, where: str) -> None:
    """Check the fields of a config dataclass whose type lists their choices (``Literal``), e.g. a ``TrainConfig``
    built in code rather than loaded (loading checks them already)."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        if typing.get_origin(hints[f.name]) is Literal:
            _check_type(getattr(section, f.name), hints[f.name], f"{where}.{f.name}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text


def apply_overrides(cfg: RunConfig, overrides: list[str] | None) -> RunConfig:
    """Apply ``section.key=value`` overrides (values parsed as YAML) and re-validate."""
    data = config_to_dict(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.epochs=10")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(
                    f"--set {item!r}: {p!r} is not a config section; sections: data, model, train, eval"
                )
            node = node[p]
        node[parts[-1]] = _parse_value(value)
    return config_from_dict(RunConfig, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML recipe (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                f"config file {path} does not exist; recipes are in configs/ (e.g. configs/skin_bm.yaml)"
            )
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping with sections data, model, train, eval")
        # relative data paths in a recipe are relative to the recipe's folder
        data_sec = data.get("data") or {}
        for key in ("root", "split_csv", "exclude"):
            v = data_sec.get(key)
            if isinstance(v, str) and not Path(v).expanduser().is_absolute():
                data_sec[key] = str((path.parent / v).resolve())
        if isinstance(data_sec.get("spec"), str) and not Path(data_sec["spec"]).is_absolute():
            data_sec["spec"] = str((path.parent / data_sec["spec"]).resolve())
    cfg = config_from_dict(RunConfig, data)
    return apply_overrides(cfg, overrides)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a config dataclass (the string literal under each field), for docs and --help."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    tree = ast.parse(source.lstrip() if source.startswith(" ") else source)
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for prev, node in itertools.pairwise(body):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(prev.target, ast.Name)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            docs[prev.target.id] = " ".join(node.value.value.split())
    return docs
