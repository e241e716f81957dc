"""Preprocessing resolved once from the model and used by training, evaluation, prediction, export and the app."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

__all__ = ["AUGMENT_POLICIES", "Preprocessing", "augmentations", "create_transform"]

AUGMENT_POLICIES = ("none", "standard", "lesion_safe")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes the model's input tensor."""

    input_size: int = 224
    """Square side in pixels."""
    in_chans: int = 3
    """3 (RGB) or 1 (grayscale)."""
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    resize: str = "squash"
    """squash (resize to a square, as the studies did) or center_crop (keep aspect, crop the centre)."""
    jpeg_draft: bool = True
    """Decode a JPEG of four times the input size or more at a reduced scale (libjpeg's DCT scaling) that keeps
    both sides at twice the input size or more (``decode_side``), before the resize: large photos decode faster
    (docs/benchmarks-serving.md). Runs saved before this option decode every pixel (False)."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {self.in_chans}")
        # one value per channel, whatever the model config said
        object.__setattr__(self, "mean", _per_channel(self.mean, self.in_chans))
        object.__setattr__(self, "std", _per_channel(self.std, self.in_chans))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        keys = {"input_size", "in_chans", "mean", "std", "resize", "jpeg_draft"}
        kw = {k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items() if k in keys}
        # a run saved before `jpeg_draft` existed was trained on fully decoded images: it keeps decoding every pixel
        kw.setdefault("jpeg_draft", False)
        return cls(**kw)

    def decode_side(self) -> int | None:
        """``min_side`` for ``load_image``: twice the input size, or None (every pixel) without ``jpeg_draft``."""
        return 2 * self.input_size if self.jpeg_draft else None


def _per_channel(values: Sequence[float], n: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == n:
        return values
    if n == 1:
        return (sum(values) / len(values),)
    if len(values) == 1:
        return values * n
    raise ValueError(f"expected {n} normalisation values, got {len(values)}")


def augmentations(policy: str, size: int) -> list[Any]:
    """The random transforms of an augmentation policy (torchvision v2: they take PIL images and tensors alike)."""
    if policy == "none":
        return []
    if policy == "standard":
        # the studies' Keras ImageDataGenerator: rotation 20°, shift 0.1, zoom 0.1-0.2, shear 0.1, flips, brightness
        return [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomAffine(degrees=20, translate=(0.1, 0.1), scale=(0.85, 1.15), shear=8),
            v2.ColorJitter(brightness=0.2, contrast=0.1),
        ]
    if policy == "lesion_safe":
        # no crop, zoom or shift: the lesion border and its size relative to the frame are diagnostic
        return [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomRotation(degrees=(90, 90))], p=0.5),
            v2.ColorJitter(brightness=0.15, contrast=0.1, saturation=0.05),
        ]
    raise ValueError(f"unknown augmentation policy {policy!r}; choose one of {', '.join(AUGMENT_POLICIES)}")


class _ConvertMode:
    # a class, not a lambda, so the transform pickles into DataLoader worker processes
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, im: Image.Image) -> Image.Image:
        return im if im.mode == self.mode else im.convert(self.mode)


def create_transform(pre: Preprocessing, augment: str = "none") -> Callable[[Image.Image], torch.Tensor]:
    """PIL image (any mode) -> normalised float tensor [in_chans, size, size]."""
    size = pre.input_size
    if pre.resize == "squash":
        resize: list[Any] = [v2.Resize((size, size), antialias=True)]
    elif pre.resize == "center_crop":
        resize = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    else:
        raise ValueError(f"unknown resize mode {pre.resize!r}; choose squash or center_crop")
    mode = "L" if pre.in_chans == 1 else "RGB"
    normalize = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pre.mean), std=list(pre.std))]
    )
    to_uint8 = v2.Compose([_ConvertMode(mode), v2.PILToTensor(), *resize])
    if augment == "none":
        return _EvalTransform(to_uint8, normalize)
    return _AugmentTransform(
        to_uint8,
        augmentations(augment, size),
        _EvalTransform(to_uint8, normalize),
        (pre.in_chans, size, size),
    )


class _EvalTransform:
    """The evaluation transform: PIL image -> uint8 pixels at the input size (``to_uint8``, also used alone by the
    training image cache) -> normalised floats (torchvision's ToDtype + Normalize)."""

    def __init__(
        self, to_uint8: Callable[[Image.Image], torch.Tensor], normalize: Callable[..., Any]
    ) -> None:
        self.to_uint8 = to_uint8
        self.normalize = normalize

    def __call__(self, im: Image.Image) -> torch.Tensor:
        return self.normalize(self.to_uint8(im))


# augmentations whose parameters ``make_params`` draws from the input's shape alone, and which keep that shape
_PLANNABLE = (
    v2.RandomHorizontalFlip,
    v2.RandomVerticalFlip,
    v2.RandomAffine,
    v2.ColorJitter,
    v2.RandomRotation,
)

Plan = list[tuple[Any, dict[str, Any]]]
"""The random augmentations one call applies, each with the parameters it drew."""


class _AugmentTransform:
    """A training transform: uint8 pixels -> random augmentations -> normalised floats.

    Called on an image it behaves as the ``v2.Compose`` of those steps, drawing from torch's global generator. Its
    draws can also be taken apart from the pixel work: ``plan()`` draws the parameters, in the order and amounts the
    composed call would, from the generator's current state; ``apply(im, plan)`` then does the pixel work with no
    random draw, so on any thread. After the same ``torch.manual_seed``, ``apply(im, plan())`` equals ``self(im)``
    bit for bit. The feature cache seeds and plans in one thread and augments on every core.
    """

    def __init__(
        self,
        to_uint8: Callable[[Image.Image], torch.Tensor],
        augmentations: Sequence[Any],
        normalize: _EvalTransform,
        shape: tuple[int, int, int],
    ) -> None:
        self.to_uint8 = to_uint8
        self.augmentations = list(augmentations)
        self.normalize = normalize
        self.shape = shape
        """[C, H, W] of every image after ``to_uint8``: the augmentations' parameters depend on it alone."""
        self.plannable = _plannable(self.augmentations)
        """Whether ``plan`` can draw for every augmentation (otherwise only ``__call__`` applies them)."""

    def __call__(self, im: Image.Image) -> torch.Tensor:
        x = self.to_uint8(im)
        for t in self.augmentations:
            x = t(x)
        return self._normalized(x)

    def _normalized(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize.normalize(x)

    def plan(self) -> Plan:
        """Draw one call's random parameters from torch's global generator (cheap: no pixel is touched)."""
        if not self.plannable:
            raise TypeError("these augmentations cannot be planned apart from their pixel work")
        proxy = torch.empty(self.shape, dtype=torch.uint8)  # make_params reads the shape only
        steps: Plan = []
        _draw(self.augmentations, proxy, steps)
        return steps

    def apply(self, im: Image.Image, plan: Plan) -> torch.Tensor:
        """The augmented, normalised image for parameters drawn by ``plan`` (no random draw)."""
        x = self.to_uint8(im)
        for t, params in plan:
            x = t.transform(x, params)
        return self._normalized(x)


def _plannable(transforms: Sequence[Any]) -> bool:
    for t in transforms:
        if isinstance(t, v2.RandomApply | v2.Compose):
            if not _plannable(list(t.transforms)):
                return False
        elif type(t) not in _PLANNABLE or getattr(t, "expand", False):
            return False
    return True


def _draw(transforms: Sequence[Any], proxy: torch.Tensor, steps: Plan) -> None:
    # the draws of v2.Compose / v2.RandomApply / v2.Transform.forward / _RandomApplyTransform.forward, in order
    for t in transforms:
        if isinstance(t, v2.RandomApply):
            if torch.rand(1) >= t.p:
                continue
            _draw(list(t.transforms), proxy, steps)
        elif isinstance(t, v2.Compose):
            _draw(list(t.transforms), proxy, steps)
        else:
            if isinstance(t, v2.RandomHorizontalFlip | v2.RandomVerticalFlip) and torch.rand(1) >= t.p:
                continue
            steps.append((t, t.make_params([proxy])))
