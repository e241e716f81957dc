"""An ensemble: several trained models as one model with the medclf surface.

``medclf cv --ensemble`` builds it from the fold runs, ``medclf ensemble`` from any runs that share a split
(e.g. EfficientNet-Lite0 at 224 px and Lite2 at 260 px). Members may differ in input size and normalisation
(``member_inputs``): the ensemble takes the largest member's input and resizes (bilinear) and re-normalises it for
each smaller member inside the graph. Each member keeps its own validation-fitted temperature,
and the ensemble averages the members' calibrated probabilities. ``forward`` returns ``log(mean p)``, so a softmax
downstream (evaluation, the Predictor, the exported ONNX graph) gives back exactly the averaged probabilities, and
the ensemble run stores temperature 1.

Pooled features are the members' features side by side (used for the out-of-distribution score), and Grad-CAM
hooks every member's CAM layer (``cam_layers``): the map is the average over members.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medclf.errors import ConfigError
from medclf.models._registry import register_model
from medclf.models.base import MedclfModel

__all__ = ["FoldEnsemble"]


@register_model(
    name="fold_ensemble", description="average of trained runs (`medclf cv --ensemble`, `medclf ensemble`)"
)
class FoldEnsemble(MedclfModel):
    """Average of calibrated member probabilities; members are rebuilt from their run.json model specs."""

    def __init__(
        self,
        num_classes: int,
        members: Sequence[dict[str, Any]] = (),
        temperatures: Sequence[float] | None = None,
        drop_rate: float = 0.0,
        num_meta: int = 0,
        in_chans: int | None = None,
        member_inputs: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        from medclf.models._registry import create_model

        if len(members) < 2:
            raise ConfigError("an ensemble needs at least 2 member models (cv folds or runs)")
        temps = list(temperatures) if temperatures is not None else [1.0] * len(members)
        if len(temps) != len(members) or any(float(t) <= 0 for t in temps):
            raise ConfigError("ensemble: one positive temperature per member is needed")
        built = []
        for spec in members:
            kwargs = dict(spec.get("kwargs") or {})
            if kwargs.get("num_meta") or kwargs.get("meta_only"):
                raise ConfigError(
                    "a fold ensemble of metadata-fusion models is not supported (each fold fits its own metadata "
                    "encoder); use one fold's run, or cross-validate an image-only recipe"
                )
            if int(spec["num_classes"]) != num_classes:
                raise ConfigError("ensemble: every member must have the same classes")
            built.append(create_model(spec["name"], num_classes, in_chans=spec.get("in_chans"), **kwargs))
        self.members = nn.ModuleList(built)
        self.register_buffer("temperatures", torch.tensor([float(t) for t in temps]))
        self.num_classes = num_classes
        self.num_meta = 0
        self.splits = [int(m.num_features) for m in built]
        self.num_features = sum(self.splits)
        self.default_cfg = dict(getattr(built[0], "default_cfg", {}) or {})
        self.member_inputs = [dict(d) for d in member_inputs] if member_inputs else []
        # the ensemble's own input: the largest member's (its run folder's preprocessing says the same)
        self.input_cfg: dict[str, Any] = {}
        if self.member_inputs:
            if len(self.member_inputs) != len(built):
                raise ConfigError("ensemble: member_inputs needs one entry per member")
            self.input_cfg = max(self.member_inputs, key=lambda d: int(d["input_size"]))
        self.cam_layer = getattr(built[0], "cam_layer", None)
        self.cam_layers = [m.cam_layer for m in built if getattr(m, "cam_layer", None) is not None]
        # no trainable head of its own: the members' heads combine in forward_head
        self.head = nn.Identity()

    @classmethod
    def from_runs(
        cls, runs: Sequence[Any], member_inputs: Sequence[dict[str, Any]] | None = None
    ) -> FoldEnsemble:
        """The ensemble of loaded runs (``medclf.models.load_run``), each member with its run's weights and
        temperature (a test-time-augmented run contributes its plain model)."""
        from medclf.models._registry import create_model
        from medclf.models.tta import unwrap_tta

        model = create_model(
            "fold_ensemble",
            len(runs[0].classes),
            in_chans=(runs[0].info.model or {}).get("in_chans"),
            members=[r.info.model for r in runs],
            temperatures=[float(r.temperature) for r in runs],
            **({"member_inputs": list(member_inputs)} if member_inputs else {}),
        )
        for member, r in zip(model.members, runs, strict=True):
            member.load_state_dict(unwrap_tta(r.model).state_dict())
        return model.eval()

    def __setattr__(self, name: str, value: Any) -> None:
        # like `cam_layer`: aliases of modules that live inside the members, not submodules of their own
        if name == "cam_layers":
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    def _member_input(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The ensemble's input as member ``k``'s own preprocessing would have made it (size, mean, std)."""
        if not self.member_inputs:
            return x
        d, e = self.member_inputs[k], self.input_cfg
        size = int(d["input_size"])
        if size != x.shape[-1] or size != x.shape[-2]:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if tuple(d["mean"]) != tuple(e["mean"]) or tuple(d["std"]) != tuple(e["std"]):
            shape = (1, -1, 1, 1)
            e_mean, e_std = (torch.tensor(e[k_], dtype=x.dtype).view(shape) for k_ in ("mean", "std"))
            d_mean, d_std = (torch.tensor(d[k_], dtype=x.dtype).view(shape) for k_ in ("mean", "std"))
            x = (x * e_std + e_mean - d_mean) / d_std
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [m.forward_features(self._member_input(x, k)) for k, m in enumerate(self.members)], dim=1
        )

    def forward_head(self, features: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        parts = torch.split(features, self.splits, dim=1)
        probs = torch.stack(
            [
                torch.softmax(m.forward_head(f, meta).float() / t, dim=1)
                for m, f, t in zip(self.members, parts, self.temperatures, strict=True)
            ]
        ).mean(0)
        return torch.log(probs.clamp_min(1e-12))

    def block_groups(self) -> list[list[nn.Parameter]]:
        return []
