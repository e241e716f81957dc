"""The `cached` strategy end to end on synthetic data through `medclf.train.train`: head, top blocks from cached
maps, metadata, EMA, mixup, bf16, resume after a crash."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medclf.config import load_config
from medclf.data import load_dataset, make_split, synth_dataset
from medclf.errors import ConfigError, DataError
from medclf.models import load_run
from medclf.train import train
from medclf.train.module import classification_metrics, mix_batch

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
        "train.strategy=cached",
        "train.epochs=8",
        "train.batch_size=16",
        "train.lr=0.01",
        f"train.cache_dir={tmp_path / 'cache'}",
    ]
    return load_config(None, [*base, *sets])


def _run(data, tmp_path, name, *sets, callbacks=()):
    ds, split = data
    run = train(
        _cfg(tmp_path, *sets), tmp_path / name, dataset=ds, split=split, progress=False, callbacks=callbacks
    )
    return load_run(run).model, pd.read_csv(run / "history.csv"), run


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _val_metrics(model, data) -> dict:
    """The model as saved, run on the raw validation images: what the run's best epoch should have scored."""
    from PIL import Image

    from medclf.data.transforms import create_transform
    from medclf.models import resolve_preprocessing

    ds, split = data
    tf = create_transform(resolve_preprocessing(model))
    val = split[split.split == "val"]
    x = torch.stack([tf(Image.open(p)) for p in val.path])
    with torch.no_grad():
        logits = model(x).numpy()
    return classification_metrics(logits, val.label.map({c: i for i, c in enumerate(ds.classes)}).to_numpy())


def test_head_trains_and_the_model_is_complete(data, tmp_path) -> None:
    model, history, run = _run(data, tmp_path, "run")
    info = json.loads((run / "run.json").read_text())
    assert info["strategy"] == "cached" and 1 <= len(history) <= 8
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] * 1.5
    # a full image model: raw images in, logits out, and its val score equals the best epoch's
    best = history[history["epoch"] == info["best_epoch"]].iloc[0]
    assert _val_metrics(model, data)["auc"] == pytest.approx(best["val_auc"], abs=1e-6)
    cached = json.loads((run / "logs" / "cached.json").read_text())
    assert cached["feature_seconds"] > 0 and cached["bad_images"] == []


@pytest.mark.slow
def test_resume_after_crash_equals_uninterrupted_and_reuses_the_cache(data, tmp_path) -> None:
    sets = (
        "train.views=2",
        "train.augment=lesion_safe",
        "train.mixup=0.4",
        "train.ema=0.9",
        "train.epochs=4",
    )
    _run(data, tmp_path, "a", *sets)

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            if trainer.current_epoch == 2 and batch_idx == 1:
                raise RuntimeError("simulated crash mid-epoch")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(data, tmp_path, "b", *sets, callbacks=[Crash()])
    train(_cfg(tmp_path, *sets), tmp_path / "b", resume=True, progress=False)
    # every feature came from the cache the first run wrote
    assert json.loads((tmp_path / "b" / "logs" / "cached.json").read_text())["feature_seconds"] == 0
    ha, hb = (pd.read_csv(tmp_path / r / "history.csv") for r in "ab")
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"))
    wa, wb = (load_file(tmp_path / r / "model.safetensors") for r in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resumed"] is True


def test_top_blocks_train_from_cached_maps(data, tmp_path) -> None:
    sets = ("model.name=mobilenetv2_050", "model.input_size=32", "train.finetune_blocks=2", "train.epochs=2")
    from medclf.models import create_model

    torch.manual_seed(0)
    fresh = _weights(create_model("mobilenetv2_050", 2, input_size=32))
    model, _, run = _run(data, tmp_path, "run", *sets)
    after = _weights(model)
    changed = {k for k in fresh if k in after and not torch.equal(fresh[k], after[k]) and "running" not in k}
    assert any(k.startswith("head.") for k in changed)
    assert any(".blocks.6." in k for k in changed)  # the last flat blocks live in stage 6
    assert not any("conv_stem" in k or ".blocks.0." in k for k in changed)  # the bottom stayed frozen
    # batch-norm statistics stay frozen in the trained blocks
    assert not any("running_mean" in k and not torch.equal(fresh[k], after[k]) for k in fresh)
    # the blocks trained in channels-last layout and came back in the ordinary one (saving needs it)
    assert all(p.is_contiguous() for p in model.parameters())
    assert json.loads((run / "logs" / "cached.json").read_text())["finetune_blocks"] == 2


def test_metadata_fusion_and_metadata_only(data, tmp_path) -> None:
    _, split = data
    model, _, run = _run(data, tmp_path, "f", "model.metadata=[age, sex, site]")
    enc = load_run(run).meta_encoder
    assert enc is not None and enc.dim == model.num_meta > 0
    meta = torch.from_numpy(enc.transform(split.iloc[:3]).astype(np.float32))
    assert model(torch.zeros(3, 3, 32, 32), meta).shape == (3, 2)
    only, hist, _ = _run(data, tmp_path, "m", "model.metadata=[age, sex, site]", "model.metadata_only=true")
    assert len(hist) and only.num_meta == enc.dim


def test_focal_sgd_cosine_balanced(data, tmp_path) -> None:
    _, history, _ = _run(
        data,
        tmp_path,
        "run",
        "train.loss=focal",
        "train.optimizer=sgd",
        "train.scheduler=cosine",
        "train.balanced_sampler=true",
        "train.monitor=val_loss",
        "train.patience=2",
    )
    assert history["lr"].iloc[0] > history["lr"].iloc[-1] or len(history) <= 2


@pytest.mark.slow
def test_bf16_mixed_trains_the_top_blocks_close_to_fp32(data, tmp_path) -> None:
    sets = ["model.name=mobilenetv2_050", "model.input_size=32", "train.finetune_blocks=2", "train.epochs=2"]
    a, hist_a, _ = _run(data, tmp_path, "a", *sets)
    b, hist_b, _ = _run(data, tmp_path, "b", *sets, "train.precision=bf16-mixed")
    wa, wb = _weights(a), _weights(b)
    trained = [k for k in wa if (k.startswith("head.") or ".blocks.6." in k) and "num_batches" not in k]
    assert any(not torch.equal(wa[k], wb[k]) for k in trained)  # bf16 really ran: the steps differ
    assert all(wb[k].dtype == wa[k].dtype == torch.float32 for k in trained)  # weights stay fp32
    for la, lb in zip(hist_a["train_loss"], hist_b["train_loss"], strict=True):
        assert abs(la - lb) < 0.1 * max(la, 0.1)


def test_clear_errors(data, tmp_path) -> None:
    ds, split = data
    with pytest.raises(DataError, match="no train or no val"):
        train(_cfg(tmp_path), tmp_path / "r1", dataset=ds, split=split[split.split != "val"], progress=False)
    with pytest.raises(ConfigError, match="views"):
        _run(data, tmp_path, "r2", "train.views=0")


def test_ema_run_keeps_the_averaged_weights_it_validated(data, tmp_path) -> None:
    sets = ("train.monitor=val_loss", "train.patience=0", "train.epochs=4")
    plain, _, _ = _run(data, tmp_path, "plain", *sets)
    model, history, run = _run(data, tmp_path, "ema", *sets, "train.ema=0.9")
    # the same seed and batches: only the averaging differs
    wp, wm = _weights(plain), _weights(model)
    assert any(not torch.equal(wp[k], wm[k]) for k in wp)
    best_epoch = json.loads((run / "run.json").read_text())["best_epoch"]
    best = history[history["epoch"] == best_epoch].iloc[0]
    assert _val_metrics(model, data)["loss"] == pytest.approx(best["val_loss"], abs=1e-5)


def test_ema_and_mixup_errors(tmp_path) -> None:
    for sets, match in (
        (["train.ema=1.5"], "between 0 and 1"),
        (["train.ema=1.5", "train.strategy=full"], "between 0 and 1"),
        (["train.mixup=-0.2"], "positive Beta"),
    ):
        cfg = _cfg(tmp_path, *sets)
        cfg.data.root = str(tmp_path / "nowhere")
        with pytest.raises(ConfigError, match=match):
            train(cfg, tmp_path / "run")


def test_mixup_blends_inputs_metadata_and_is_seeded() -> None:
    x = torch.arange(24, dtype=torch.float16).reshape(4, 6)
    meta = torch.eye(4)
    torch.manual_seed(3)
    lam, perm, mixed, mixed_meta = mix_batch(x, meta, 0.4)
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == [0, 1, 2, 3]
    torch.testing.assert_close(mixed, lam * x.float() + (1 - lam) * x[perm].float())
    torch.testing.assert_close(mixed_meta, lam * meta + (1 - lam) * meta[perm])
    torch.manual_seed(3)
    again = mix_batch(x, meta, 0.4)
    assert again[0] == lam and torch.equal(again[1], perm)
    assert mix_batch(x, torch.zeros(4, 0), 0.4)[3].shape == (4, 0)  # no metadata: nothing to blend
    # Beta(a, a): symmetric around 1/2; a small a pushes the weights towards 0 and 1
    small = np.array([mix_batch(x, meta, 0.2)[0] for _ in range(400)])
    large = np.array([mix_batch(x, meta, 8.0)[0] for _ in range(400)])
    assert abs(small.mean() - 0.5) < 0.07 and abs(large.mean() - 0.5) < 0.05
    assert np.mean(np.minimum(small, 1 - small) < 0.1) > 0.4 > np.mean(np.minimum(large, 1 - large) < 0.1)


def test_mixup_run_is_reproducible_and_differs_from_plain(data, tmp_path) -> None:
    sets = ("train.patience=0", "train.epochs=3")
    plain, _, _ = _run(data, tmp_path, "plain", *sets)
    runs = [_run(data, tmp_path, f"mix{i}", *sets, "train.mixup=0.4") for i in range(2)]
    w0, w1, wp = _weights(runs[0][0]), _weights(runs[1][0]), _weights(plain)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], wp[k]) for k in w0)
    assert np.isfinite(runs[0][1]["train_loss"]).all()


def test_image_mixup_trains_the_other_strategies(data, tmp_path) -> None:
    _, history, _ = _run(
        data, tmp_path, "full", "train.strategy=scratch", "train.mixup=0.4", "train.epochs=2"
    )
    assert len(history) == 2 and np.isfinite(history["train_loss"]).all()


def test_a_run_stopped_before_its_first_epoch_resumes_from_the_start(data, tmp_path) -> None:
    # e.g. killed while the feature cache was being computed: no last.ckpt yet, config and split are written
    class Crash(pl.Callback):
        def on_fit_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            raise RuntimeError("simulated crash before the first epoch")

    sets = ("train.epochs=2",)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(data, tmp_path, "b", *sets, callbacks=[Crash()])
    assert not (tmp_path / "b" / "checkpoints" / "last.ckpt").exists()
    train(_cfg(tmp_path, *sets), tmp_path / "b", resume=True, progress=False)
    _run(data, tmp_path, "a", *sets)
    wa, wb = (load_file(tmp_path / r / "model.safetensors") for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
