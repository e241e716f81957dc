"""The evaluation transform's table lookup gives exactly what torchvision's ToDtype + Normalize give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from medclf.data.transforms import Preprocessing, _ConvertMode, create_transform


def _reference(pre: Preprocessing) -> v2.Compose:
    size = pre.input_size
    if pre.resize == "squash":
        resize = [v2.Resize((size, size), antialias=True)]
    else:
        resize = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose(
        [
            _ConvertMode("L" if pre.in_chans == 1 else "RGB"),
            v2.PILToTensor(),
            *resize,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(pre.mean), std=list(pre.std)),
        ]
    )


@pytest.mark.parametrize(
    "pre",
    [
        Preprocessing(input_size=32),
        Preprocessing(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        Preprocessing(input_size=24, in_chans=1, resize="center_crop"),
    ],
    ids=["imagenet", "half", "gray-crop"],
)
def test_eval_transform_is_bit_identical_to_torchvision(pre: Preprocessing) -> None:
    rng = np.random.default_rng(0)
    new, ref = create_transform(pre), _reference(pre)
    # exact size, resized, grey, RGBA, grey at the exact size
    for shape in ((32, 32, 3), (45, 60, 3), (40, 30), (32, 32, 4), (24, 24), (24, 24, 3)):
        im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        a, b = ref(im), new(im)
        assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape == (
            pre.in_chans,
            pre.input_size,
            pre.input_size,
        )
        assert torch.equal(a, b), shape


def _augment_reference(pre: Preprocessing, policy: str) -> v2.Compose:
    from medclf.data.transforms import augmentations

    return v2.Compose(
        [
            *_reference(pre).transforms[:-2],
            *augmentations(policy, pre.input_size),
            *_reference(pre).transforms[-2:],
        ]
    )


@pytest.mark.parametrize("policy", ["standard", "lesion_safe"])
@pytest.mark.parametrize(
    "pre", [Preprocessing(input_size=32), Preprocessing(input_size=24, in_chans=1, resize="center_crop")]
)
def test_augmentation_planned_apart_from_its_pixel_work_is_the_composed_transform(pre, policy) -> None:
    # the feature cache draws an augmentation's parameters in one thread and does the pixel work on every core
    tf, ref = create_transform(pre, policy), _augment_reference(pre, policy)
    assert tf.plannable
    rng = np.random.default_rng(0)
    differs = 0
    for seed in range(60):
        im = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
        torch.manual_seed(seed)
        a, after_ref = ref(im), torch.rand(1)
        torch.manual_seed(seed)
        b = tf(im)
        torch.manual_seed(seed)
        plan = tf.plan()
        after_plan = torch.rand(1)  # the plan drew exactly what the composed call draws
        c = tf.apply(im, plan)
        assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(after_ref, after_plan), seed
        differs += not torch.equal(c, create_transform(pre)(im))
    assert differs > 50  # the augmentations did augment


def test_augmentations_that_cannot_be_planned_say_so() -> None:
    from medclf.data.transforms import _AugmentTransform

    tf = create_transform(Preprocessing(input_size=16), "standard")
    crop = _AugmentTransform(tf.to_uint8, [v2.RandomResizedCrop(16)], tf.normalize, tf.shape)
    assert not crop.plannable
    with pytest.raises(TypeError, match="cannot be planned"):
        crop.plan()
    assert crop(Image.new("RGB", (20, 20))).shape == (3, 16, 16)


def test_jpeg_draft_is_on_for_new_preprocessing_and_off_for_runs_saved_before_it() -> None:
    from medclf.data.transforms import Preprocessing

    pre = Preprocessing(input_size=224)
    assert pre.jpeg_draft and pre.decode_side() == 448
    saved = pre.to_dict()
    assert saved["jpeg_draft"] is True and Preprocessing.from_dict(saved) == pre
    old = Preprocessing.from_dict({k: v for k, v in saved.items() if k != "jpeg_draft"})
    assert not old.jpeg_draft and old.decode_side() is None
