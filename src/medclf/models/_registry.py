"""One registry and one ``create_model`` for the small CNNs, the metadata-only model and any timm backbone."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from medclf.errors import ConfigError

__all__ = [
    "FILE_KWARGS",
    "ModelEntry",
    "create_model",
    "get_model_entry",
    "list_models",
    "model_default_cfg",
    "register_model",
]

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    default_cfg: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}

FILE_KWARGS = frozenset({"checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"})
"""timm options that make it read a file or download (``checkpoint_path`` goes to ``torch.load``): a recipe or a
run.json must not be able to point the model at a file, so ``create_model`` refuses them."""


def _snake(name: str) -> str:
    known = {"TinyCNN": "tiny_cnn", "MpoxCNN": "mpox_cnn", "CxrCNN": "cxr_cnn", "ResNetSmall": "resnet_small"}
    if name in known:
        return known[name]
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def register_model(
    fn: F | None = None,
    *,
    name: str | None = None,
    default_cfg: dict[str, Any] | None = None,
    description: str = "",
) -> Any:
    """Register a model class or factory ``(num_classes, *, in_chans, drop_rate, num_meta, **kw) -> MedclfModel``.

    Use bare (``@register_model``) or with options (``@register_model(name="x", description="...")``). A class's
    ``default_cfg`` attribute is used when ``default_cfg`` is not given.
    """

    def wrap(f: F) -> F:
        key = name or _snake(f.__name__)
        cfg = default_cfg if default_cfg is not None else dict(getattr(f, "default_cfg", {}) or {})
        _REGISTRY[key] = ModelEntry(key, f, cfg, description or (f.__doc__ or "").strip().split("\n")[0])
        return f

    return wrap(fn) if fn is not None else wrap


def _ensure_builtin() -> None:
    # importing the modules registers their models
    from medclf.models import ensemble, fusion, small_cnn  # noqa: F401


def get_model_entry(name: str) -> ModelEntry | None:
    _ensure_builtin()
    return _REGISTRY.get(name)


def list_models() -> list[str]:
    """The registry (small CNNs, metadata-only model) followed by the timm backbones with offline weights."""
    _ensure_builtin()
    from medclf.models.timm_adapter import offline_pretrained_names

    names = list(_REGISTRY)
    names += [n for n in sorted(offline_pretrained_names()) if n not in _REGISTRY]
    return names


def model_default_cfg(name: str) -> dict[str, Any]:
    """{input_size, in_chans, mean, std} of a model by name, without building it."""
    entry = get_model_entry(name)
    if entry is not None:
        return dict(entry.default_cfg)
    from medclf.models.timm_adapter import timm_default_cfg

    return timm_default_cfg(name)


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    in_chans: int | None = None,
    drop_rate: float = 0.0,
    num_meta: int = 0,
    meta_only: bool = False,
    **kw: Any,
) -> nn.Module:
    """Build a model with the medclf surface (see ``medclf.models.base.MedclfModel``).

    ``name`` is a registered model or any timm name. ``num_meta`` > 0 adds a late-fusion metadata head;
    ``meta_only`` builds the metadata-only ablation model (``name`` then only sets the preprocessing).
    The arguments are kept on the model as ``model.medclf_spec`` so a run folder can rebuild it.
    """
    if num_classes < 2:
        raise ConfigError(f"model {name!r}: num_classes must be at least 2, got {num_classes}")
    files = sorted(FILE_KWARGS & set(kw))
    if files:
        raise ConfigError(
            f"model.kwargs.{files[0]}: model options may not name weight or config files (timm would load it, "
            "possibly unpickling it); remove it and use model.pretrained, or the offline weight packages"
        )
    _ensure_builtin()
    if meta_only:
        from medclf.models.fusion import MetadataOnlyModel

        if num_meta <= 0:
            raise ConfigError(
                "model.metadata_only needs metadata columns: set model.metadata: [age, sex, ...]"
            )
        model: nn.Module = MetadataOnlyModel(num_classes, num_meta=num_meta, drop_rate=drop_rate, **kw)
    elif name in _REGISTRY:
        if pretrained:
            raise ConfigError(
                f"model {name!r} has no pretrained weights (it is trained from scratch); set model.pretrained=false"
            )
        entry = _REGISTRY[name]
        args: dict[str, Any] = {"drop_rate": drop_rate, "num_meta": num_meta, **kw}
        if in_chans is not None:
            args["in_chans"] = in_chans
        # input_size reaches only the factories whose layers depend on it (mpox_cnn's dense layer); the
        # globally pooled CNNs take any size and just record it
        if "input_size" in args and "input_size" not in inspect.signature(entry.factory).parameters:
            args.pop("input_size")
        try:
            model = entry.factory(num_classes, **args)
        except TypeError as exc:
            raise ConfigError(f"model {name!r}: bad keyword arguments in model.kwargs ({exc})") from None
        cfg = dict(entry.default_cfg)
        if in_chans is not None:
            cfg["in_chans"] = in_chans
        if "input_size" in kw:
            cfg["input_size"] = kw["input_size"]
        model.default_cfg = cfg
    else:
        from medclf.models.timm_adapter import TimmClassifier

        model = TimmClassifier(
            name,
            num_classes,
            pretrained=pretrained,
            in_chans=in_chans,
            drop_rate=drop_rate,
            num_meta=num_meta,
            **kw,
        )
    model.medclf_spec = {
        "name": name,
        "num_classes": num_classes,
        "in_chans": in_chans,
        "kwargs": {"drop_rate": drop_rate, "num_meta": num_meta, "meta_only": meta_only, **kw},
    }
    return model
