"""The `cached` strategy end to end on synthetic data: head, top blocks from cached maps, metadata, resume."""

from __future__ import annotations

import contextlib
import json
import time

import numpy as np
import pytest
import torch

from medclf.config import load_config
from medclf.data import load_dataset, make_split, synth_dataset
from medclf.errors import ConfigError, DataError
from medclf.train.cached import train_cached
from medclf.train.module import classification_metrics

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth_dataset(root, n=80, size=40, layout="csv", seed=1)
    ds = load_dataset(root / "dataset.yaml")
    return ds, make_split(ds.records, seed=0)


def _cfg(tmp_path, *sets):
    base = [
        "model.name=tiny_cnn",
        "model.pretrained=false",
        "train.epochs=8",
        "train.batch_size=16",
        "train.lr=0.01",
        f"train.cache_dir={tmp_path / 'cache'}",
    ]
    return load_config(None, [*base, *sets])


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _val_metrics(model, ds, split) -> dict:
    """The model as saved, run on the raw validation images: what the run's best epoch should have scored."""
    from PIL import Image

    from medclf.data.transforms import create_transform
    from medclf.models import resolve_preprocessing

    tf = create_transform(resolve_preprocessing(model))
    val = split[split.split == "val"]
    x = torch.stack([tf(Image.open(p)) for p in val.path])
    with torch.no_grad():
        logits = model(x).numpy()
    return classification_metrics(logits, val.label.map({c: i for i, c in enumerate(ds.classes)}).to_numpy())


def test_head_trains_and_the_model_is_complete(data, tmp_path) -> None:
    ds, split = data
    started = time.time()
    model, history = train_cached(_cfg(tmp_path), ds, split, tmp_path / "run", progress=False)
    ended = time.time()
    assert 1 <= len(history) <= 8 and sum(r["best"] for r in history) == 1
    assert {"epoch", "train_loss", "val_loss", "val_acc", "val_bacc", "val_auc", "lr"} <= set(history[0])
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 1.5
    # a full image model: raw images in, logits out, and its val score equals the best epoch's
    best = next(r for r in history if r["best"])
    assert _val_metrics(model, ds, split)["auc"] == pytest.approx(best["val_auc"], abs=1e-6)
    info = json.loads((tmp_path / "run" / "logs" / "cached.json").read_text())
    assert info["feature_seconds"] > 0 and info["bad_images"] == []
    # one end-of-epoch UNIX stamp per history row, in order, within the call (benchmarks time epochs with it)
    stamps = info["epoch_wall_times"]
    assert stamps == [round(r["wall_time"], 3) for r in history]
    assert started <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= ended + 1e-3


def test_rerun_uses_the_cache_and_gives_identical_weights(data, tmp_path) -> None:
    # what --resume relies on: features from the cache, the head re-trained from the same seed
    ds, split = data
    cfg = _cfg(tmp_path, "train.views=2", "train.augment=lesion_safe")
    a, ha = train_cached(cfg, ds, split, tmp_path / "a", progress=False)
    b, hb = train_cached(cfg, ds, split, tmp_path / "b", resume=True, progress=False)
    assert json.loads((tmp_path / "b" / "logs" / "cached.json").read_text())["feature_seconds"] == 0
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)
    assert [r["val_loss"] for r in ha] == [r["val_loss"] for r in hb]


def test_top_blocks_train_from_cached_maps(data, tmp_path) -> None:
    ds, split = data
    cfg = _cfg(
        tmp_path,
        "model.name=mobilenetv2_050",
        "model.input_size=32",
        "train.finetune_blocks=2",
        "train.epochs=2",
    )
    from medclf.models import create_model

    torch.manual_seed(cfg.train.seed)
    fresh = _weights(create_model("mobilenetv2_050", 2, input_size=32))
    model, _ = train_cached(cfg, ds, split, tmp_path / "run", progress=False)
    after = _weights(model)
    changed = {k for k in fresh if k in after and not torch.equal(fresh[k], after[k]) and "running" not in k}
    assert any(k.startswith("head.") for k in changed)
    assert any(".blocks.6." in k for k in changed)  # the last flat blocks live in stage 6
    assert not any("conv_stem" in k or ".blocks.0." in k for k in changed)  # the bottom stayed frozen
    # batch-norm statistics stay frozen in the trained blocks
    assert not any("running_mean" in k and not torch.equal(fresh[k], after[k]) for k in fresh)
    # the blocks trained in channels-last layout and came back in the ordinary one (saving needs it)
    assert all(p.is_contiguous() for p in model.parameters())


def test_metadata_fusion_and_metadata_only(data, tmp_path) -> None:
    ds, split = data
    model, _ = train_cached(
        _cfg(tmp_path, "model.metadata=[age, sex, site]"), ds, split, tmp_path / "f", progress=False
    )
    enc = model.medclf_meta_encoder
    assert enc is not None and enc.dim == model.num_meta > 0
    meta = torch.from_numpy(enc.transform(split.iloc[:3]).astype(np.float32))
    assert model(torch.zeros(3, 3, 32, 32), meta).shape == (3, 2)
    only, hist = train_cached(
        _cfg(tmp_path, "model.metadata=[age, sex, site]", "model.metadata_only=true"),
        ds,
        split,
        tmp_path / "m",
        progress=False,
    )
    assert hist and only.num_meta == enc.dim


def test_focal_sgd_cosine_balanced(data, tmp_path) -> None:
    ds, split = data
    cfg = _cfg(
        tmp_path,
        "train.loss=focal",
        "train.optimizer=sgd",
        "train.scheduler=cosine",
        "train.balanced_sampler=true",
        "train.monitor=val_loss",
        "train.patience=2",
    )
    _, history = train_cached(cfg, ds, split, tmp_path / "run", progress=False)
    assert history[0]["lr"] > history[-1]["lr"] or len(history) <= 2


def test_blocks_train_channels_last_with_the_same_result(data, tmp_path, monkeypatch) -> None:
    from medclf.train.cached import CachedTrainer

    ds, split = data
    sets = ["model.name=mobilenetv2_050", "model.input_size=32", "train.finetune_blocks=2", "train.epochs=2"]
    seen: list[bool] = []
    real = CachedTrainer._features

    def spy(self, x):
        out = real(self, x)
        seen.append(self._channels_last)
        return out

    monkeypatch.setattr(CachedTrainer, "_features", spy)
    model, hist = train_cached(_cfg(tmp_path, *sets), ds, split, tmp_path / "cl", progress=False)
    assert seen and all(seen)  # every training and validation step ran in channels-last layout
    monkeypatch.setattr(CachedTrainer, "_channels_last_blocks", lambda self: contextlib.nullcontext())
    ref, ref_hist = train_cached(_cfg(tmp_path, *sets), ds, split, tmp_path / "ref", progress=False)
    # the layout changes only the order of floating-point sums, not what is learned
    for a, b in zip(hist, ref_hist, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
    wa, wb = _weights(model), _weights(ref)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-3


def test_bf16_mixed_trains_the_top_blocks_close_to_fp32(data, tmp_path) -> None:
    ds, split = data
    sets = ["model.name=mobilenetv2_050", "model.input_size=32", "train.finetune_blocks=2", "train.epochs=2"]
    a, hist_a = train_cached(_cfg(tmp_path, *sets), ds, split, tmp_path / "a", progress=False)
    b, hist_b = train_cached(
        _cfg(tmp_path, *sets, "train.precision=bf16-mixed"), ds, split, tmp_path / "b", progress=False
    )
    wa, wb = _weights(a), _weights(b)
    trained = [k for k in wa if (k.startswith("head.") or ".blocks.6." in k) and "num_batches" not in k]
    assert any(not torch.equal(wa[k], wb[k]) for k in trained)  # bf16 really ran: the steps differ
    assert all(wb[k].dtype == wa[k].dtype == torch.float32 for k in trained)  # weights stay fp32
    for ra, rb in zip(hist_a, hist_b, strict=True):
        assert abs(ra["train_loss"] - rb["train_loss"]) < 0.1 * max(ra["train_loss"], 0.1)


def test_clear_errors(data, tmp_path) -> None:
    ds, split = data
    with pytest.raises(DataError, match="'val'"):
        train_cached(_cfg(tmp_path), ds, split[split.split != "val"], tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="views"):
        train_cached(_cfg(tmp_path, "train.views=0"), ds, split, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="32-true or bf16-mixed"):
        train_cached(_cfg(tmp_path, "train.precision=16-mixed"), ds, split, tmp_path / "r", progress=False)


def test_ema_averages_each_step_and_swaps_back() -> None:
    from medclf.train.cached import _Ema

    p = torch.zeros(3, requires_grad=True)
    ema = _Ema([p], decay=0.5)
    expected = torch.zeros(3)
    for step, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        with torch.no_grad():
            p.fill_(value)
        ema.update()
        d = min(0.5, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * value
        torch.testing.assert_close(ema.shadow[0], expected)
    with ema.swapped():
        torch.testing.assert_close(p.detach(), expected)
    assert torch.equal(p.detach(), torch.full((3,), 8.0))  # the trained weights are back
    with pytest.raises(ConfigError, match="between 0 and 1"):
        _Ema([p], decay=1.0)


def test_ema_run_keeps_the_averaged_weights_it_validated(data, tmp_path) -> None:
    ds, split = data
    sets = ("train.monitor=val_loss", "train.patience=0", "train.epochs=4")
    plain, _ = train_cached(_cfg(tmp_path, *sets), ds, split, tmp_path / "plain", progress=False)
    model, history = train_cached(
        _cfg(tmp_path, *sets, "train.ema=0.9"), ds, split, tmp_path / "ema", progress=False
    )
    # the same seed and batches: only the averaging differs
    wp, wm = _weights(plain), _weights(model)
    assert any(not torch.equal(wp[k], wm[k]) for k in wp)
    best = next(r for r in history if r["best"])
    assert _val_metrics(model, ds, split)["loss"] == pytest.approx(best["val_loss"], abs=1e-5)


def test_ema_and_mixup_errors(tmp_path) -> None:
    from medclf.train import train

    for sets, match in (
        (["train.ema=1.5"], "between 0 and 1"),
        (["train.ema=1.5", "train.strategy=full"], "between 0 and 1"),
        (["train.mixup=-0.2"], "positive Beta"),
        (
            ["train.mixup=0.2", "train.strategy=scratch"],
            "manifold mixup is built for the cached strategy only",
        ),
    ):
        cfg = _cfg(tmp_path, *sets)
        cfg.data.root = str(tmp_path / "nowhere")
        with pytest.raises(ConfigError, match=match):
            train(cfg, tmp_path / "run")


def test_mixup_blends_maps_metadata_and_is_seeded() -> None:
    from medclf.train.cached import _mix

    x = torch.arange(24, dtype=torch.float16).reshape(4, 6)
    meta = torch.eye(4)
    lam, perm, mixed, mixed_meta = _mix(x, meta, 0.4, torch.Generator().manual_seed(3))
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(mixed, lam * x.float() + (1 - lam) * x[perm].float())
    torch.testing.assert_close(mixed_meta, lam * meta + (1 - lam) * meta[perm])
    again = _mix(x, meta, 0.4, torch.Generator().manual_seed(3))
    assert again[0] == lam and torch.equal(again[1], perm)
    # Beta(a, a): symmetric around 1/2; a small a pushes the weights towards 0 and 1
    g = torch.Generator().manual_seed(0)
    small = np.array([_mix(x, None, 0.2, g)[0] for _ in range(400)])
    large = np.array([_mix(x, None, 8.0, g)[0] for _ in range(400)])
    assert abs(small.mean() - 0.5) < 0.07 and abs(large.mean() - 0.5) < 0.05
    assert np.mean(np.minimum(small, 1 - small) < 0.1) > 0.4 > np.mean(np.minimum(large, 1 - large) < 0.1)


def test_mixup_run_is_reproducible_and_differs_from_plain(data, tmp_path) -> None:
    ds, split = data
    sets = ("train.patience=0", "train.epochs=3")
    plain, _ = train_cached(_cfg(tmp_path, *sets), ds, split, tmp_path / "plain", progress=False)
    runs = [
        train_cached(
            _cfg(tmp_path, *sets, "train.mixup=0.4"), ds, split, tmp_path / f"mix{i}", progress=False
        )
        for i in range(2)
    ]
    w0, w1, wp = _weights(runs[0][0]), _weights(runs[1][0]), _weights(plain)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], wp[k]) for k in w0)
    assert np.isfinite([r["train_loss"] for r in runs[0][1]]).all()


@pytest.mark.slow
def test_a_cached_run_does_not_import_lightning(tmp_path) -> None:
    # Lightning costs about 2 s of every run's start-up; the cached strategy trains in its own loop without it
    import subprocess
    import sys

    code = f"""
import sys
from medclf.cli import main
from medclf.data import synth_dataset
synth_dataset({str(tmp_path / "d")!r}, n=24, size=32, layout="folders", seed=0)
assert "lightning" not in sys.modules, "the CLI imports Lightning"
main(["train", "--data", {str(tmp_path / "d")!r}, "--out", {str(tmp_path / "run")!r}, "--quiet",
      "--set", "model.name=tiny_cnn", "--set", "model.pretrained=false", "--set", "train.strategy=cached",
      "--set", "train.epochs=2", "--set", "train.cache_dir={tmp_path / "cache"}"])
assert "lightning" not in sys.modules, sorted(m for m in sys.modules if m.startswith("lightning"))[:5]
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "run.json").is_file()
