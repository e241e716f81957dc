"""The training engine end to end on tiny synthetic data: strategies, run folder, fusion, bad images, resume."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from _fixtures_train import make_folder_data, tiny_cfg
from medclf.errors import ConfigError, DataError
from medclf.models import load_run, predict_frame
from medclf.train import train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_data(tmp_path_factory.mktemp("data"))


@pytest.fixture()
def fit_on_tiny_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let a dozen validation images fit the temperature and threshold (the minimums are for real data;
    these tests are about where the fits come from)."""
    import medclf.evaluate.calibration as calibration
    import medclf.evaluate.thresholds as thresholds

    monkeypatch.setattr(calibration, "MIN_CALIBRATION_IMAGES", 1)
    monkeypatch.setattr(thresholds, "MIN_THRESHOLD_IMAGES", 1)
    monkeypatch.setattr(thresholds, "MIN_THRESHOLD_CASES", 1)


def test_scratch_run_folder_describes_itself(data: Path, tmp_path: Path) -> None:
    run = train(tiny_cfg(data, "train.epochs=4"), tmp_path / "run", progress=False)
    for name in (
        "run.json",
        "model.safetensors",
        "config.yaml",
        "dataset.yaml",
        "split.csv",
        "history.csv",
        "val_predictions.csv",
        "test_predictions.csv",
        "training_curves.png",
        "checkpoints/last.ckpt",
        "logs/csv/metrics.csv",
    ):
        assert (run / name).exists(), name
    info = json.loads((run / "run.json").read_text())
    assert info["classes"] == ["benign", "malignant"] and info["positive_class"] == "malignant"
    # about 12 validation images: too few to fit either, so T = 1 and the default threshold, and run.json says so
    assert info["images"]["val"] < 50
    assert info["threshold"] == 0.5 and info["temperature"] == 1.0
    assert info["threshold_skipped"] in info["warnings"] and info["temperature_skipped"] in info["warnings"]
    assert len(info["data_fingerprint"]) == 64 and info["versions"]["torch"]
    assert info["train_seconds"] > 0 and info["epochs_run"] == 4
    assert info["preprocessing"]["jpeg_draft"] is True  # large JPEGs decoded at a reduced scale by default
    assert info["refer_below"] == 0.6  # the recipe's eval.refer_below, which serving reads from run.json
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2, 3]
    # a learnable task is learnt
    test = pd.read_csv(run / "test_predictions.csv")
    assert (test["pred"] == test["label"]).mean() >= 0.8
    # the split is grouped: no patient in two parts
    split = pd.read_csv(run / "split.csv")
    assert split.groupby("group")["split"].nunique().max() == 1
    # the saved run predicts what training wrote
    loaded = load_run(run)
    again = predict_frame(loaded, split[split["split"] == "test"])
    np.testing.assert_allclose(again["prob_malignant"], test["prob_malignant"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="already holds a finished run; evaluate it"):
        train(tiny_cfg(data), run, progress=False)


@pytest.mark.usefixtures("fit_on_tiny_validation")
def test_threshold_and_temperature_come_from_validation(data: Path, tmp_path: Path) -> None:
    from medclf.evaluate.calibration import fit_temperature
    from medclf.evaluate.thresholds import choose_threshold

    run = train(
        tiny_cfg(data, "train.epochs=2", "eval.threshold=sensitivity:0.9"), tmp_path / "r", progress=False
    )
    info = json.loads((run / "run.json").read_text())
    val = pd.read_csv(run / "val_predictions.csv")
    y = (val["label"] == "malignant").to_numpy().astype(int)
    assert info["threshold"] == pytest.approx(
        choose_threshold(y, val["prob_malignant"].to_numpy(), "sensitivity:0.9")
    )
    # the temperature is the one fitted on the raw validation logits (log-softmax differs by a per-row constant)
    loaded = load_run(run)
    loaded.temperature = 1.0
    raw = predict_frame(loaded, pd.read_csv(run / "split.csv").query("split == 'val'"))
    logp = np.log(raw[["prob_benign", "prob_malignant"]].to_numpy().astype(np.float64).clip(1e-30, 1))
    assert info["temperature"] == pytest.approx(fit_temperature(logp, y), rel=1e-3)
    assert loaded.threshold == info["threshold"]


@pytest.mark.parametrize(
    "overrides",
    [
        (
            "train.strategy=finetune",
            "train.head_epochs=1",
            "train.epochs=2",
            "train.finetune_blocks=1",
            "train.scheduler=cosine",
            "train.augment=standard",
        ),
        (
            "train.strategy=full",
            "train.optimizer=sgd",
            "train.loss=focal",
            "train.label_smoothing=0.1",
            "train.balanced_sampler=true",
            "train.augment=lesion_safe",
            "train.patience=1",
            "train.monitor=val_auc",
        ),
    ],
    ids=["finetune", "full"],
)
def test_other_strategies(data: Path, tmp_path: Path, overrides: tuple[str, ...]) -> None:
    run = train(tiny_cfg(data, *overrides), tmp_path / "run", progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["strategy"] == overrides[0].split("=")[1]
    history = pd.read_csv(run / "history.csv")
    if info["strategy"] == "finetune":
        assert list(history["phase"]) == ["head", "train"]
        assert history["lr"].iloc[1] == pytest.approx(0.02 * 0.1)
    load_run(run)


def test_finetune_freezes_backbone_in_phase_one(data: Path, tmp_path: Path) -> None:
    snapshots: list[dict[str, torch.Tensor]] = []

    class Snap(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            snapshots.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    cfg = tiny_cfg(
        data, "train.strategy=finetune", "train.head_epochs=1", "train.epochs=2", "train.finetune_blocks=1"
    )
    init = {}

    class Init(pl.Callback):
        def on_fit_start(self, trainer, pl_module):  # type: ignore[no-untyped-def]
            init.update({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})

    train(cfg, tmp_path / "run", progress=False, callbacks=[Init(), Snap()])
    first_conv, top_conv = "features.0.0.weight", "features.2.0.weight"
    assert torch.equal(snapshots[0][first_conv], init[first_conv])  # frozen in phase 1
    assert torch.equal(snapshots[0][top_conv], init[top_conv])
    assert torch.equal(
        snapshots[0]["features.0.1.running_mean"], init["features.0.1.running_mean"]
    )  # BN frozen too
    assert not torch.equal(snapshots[0]["head.fc.weight"], init["head.fc.weight"])
    assert torch.equal(snapshots[1][first_conv], init[first_conv])  # below the top block: still frozen
    assert not torch.equal(snapshots[1][top_conv], snapshots[0][top_conv])  # top block trains in phase 2


def test_finetune_epochs_count_the_head_epochs(data: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        data, "train.strategy=finetune", "train.head_epochs=2", "train.epochs=3", "train.finetune_blocks=1"
    )
    run = train(cfg, tmp_path / "run", progress=False)
    assert list(pd.read_csv(run / "history.csv")["phase"]) == ["head", "head", "train"]
    assert json.loads((run / "run.json").read_text())["epochs_run"] == 3
    for head in (3, 5):
        with pytest.raises(ConfigError, match=r"train\.epochs counts the head epochs too"):
            train(
                tiny_cfg(data, "train.strategy=finetune", f"train.head_epochs={head}", "train.epochs=3"),
                tmp_path / "x",
            )


@pytest.mark.slow
def test_resume_after_crash_equals_uninterrupted(data: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        data,
        "train.strategy=finetune",
        "train.head_epochs=1",
        "train.epochs=3",
        "train.finetune_blocks=1",
        "train.augment=standard",
        "model.drop_rate=0.3",
    )
    train(cfg, tmp_path / "a", progress=False)

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            if trainer.current_epoch == 2 and batch_idx == 1:
                raise RuntimeError("simulated crash mid-epoch")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "b", progress=False, callbacks=[Crash()])
    assert not (tmp_path / "b" / "run.json").exists()
    train(cfg, tmp_path / "b", resume=True, progress=False)
    ha, hb = (pd.read_csv(tmp_path / r / "history.csv") for r in ("a", "b"))
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"))
    last = [
        torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for r in "ab"
    ]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    best = [load_file(tmp_path / r / "model.safetensors") for r in "ab"]
    assert best[0].keys() == best[1].keys()
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])
    assert json.loads((tmp_path / "b" / "run.json").read_text())["resumed"] is True


@pytest.mark.slow
def test_fusion_with_missing_and_unknown_metadata(tmp_path: Path) -> None:
    from medclf.data import synth_dataset

    synth_dataset(tmp_path / "csvdata", layout="csv", n=40, size=24, seed=1)
    cfg = tiny_cfg(
        tmp_path / "csvdata", "data.group_by=null", "model.metadata=[age, sex, site]", "train.epochs=1"
    )
    run = train(cfg, tmp_path / "run", progress=False)
    loaded = load_run(run)
    assert loaded.meta_encoder is not None and loaded.meta_encoder.columns == ["age", "sex", "site"]
    rows = pd.read_csv(run / "split.csv").head(3)
    rows["age"] = [np.nan, 40, 200]
    rows["site"] = ["nowhere", None, rows["site"].iloc[2]]
    out = predict_frame(loaded, rows)
    assert np.isfinite(out[["prob_benign", "prob_malignant"]].to_numpy()).all()
    assert {"age", "sex", "site"} <= set(out.columns)

    meta_only = tiny_cfg(
        tmp_path / "csvdata",
        "data.group_by=null",
        "model.metadata=[age, sex, site]",
        "model.metadata_only=true",
        "train.epochs=1",
    )
    run2 = train(meta_only, tmp_path / "meta", progress=False)
    assert load_run(run2).model.meta_only


def test_bad_images_skipped_and_listed(tmp_path: Path) -> None:
    data = make_folder_data(tmp_path / "d", n_per_class=12)
    good = (data / "benign" / "P0000_0.png").read_bytes()
    (data / "benign" / "P0999_0.png").write_bytes(good[: len(good) // 2])  # truncated: header fine, data not
    (data / "malignant" / "P1999_0.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="skip_bad"):
        train(tiny_cfg(data, "train.epochs=1"), tmp_path / "strict", progress=False)
    run = train(tiny_cfg(data, "train.epochs=1", "data.skip_bad=true"), tmp_path / "run", progress=False)
    skipped = {Path(s["path"]).name for s in json.loads((run / "run.json").read_text())["skipped_images"]}
    assert {"P0999_0.png", "P1999_0.png"} <= skipped


def test_cached_strategy_goes_through_the_same_run_folder(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("medclf.train.cached")
    cfg = tiny_cfg(data, "train.strategy=cached", "train.epochs=3", f"train.cache_dir={tmp_path / 'cache'}")
    run = train(cfg, tmp_path / "run", progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["strategy"] == "cached" and info["epochs_run"] == 3
    assert info["budget"] is None and list(info)[-3:] == ["model", "weights", "format_version"]
    assert (run / "val_predictions.csv").is_file() and (run / "history.csv").is_file()
    test = pd.read_csv(run / "test_predictions.csv")
    again = predict_frame(load_run(run), pd.read_csv(run / "split.csv").query("split == 'test'"))
    np.testing.assert_allclose(again["prob_malignant"], test["prob_malignant"], rtol=1e-4, atol=1e-6)


SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.mark.real_data
def test_real_skin_images_through_the_engine(tmp_path: Path) -> None:
    import os

    from medclf.config import load_config
    from medclf.data import load_dataset, make_split, write_split_csv

    root = Path(os.environ.get("MEDCLF_SHARED_DATASETS", SHARED)) / "skin_bm"
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set MEDCLF_SHARED_DATASETS)")
    spec = Path(__file__).resolve().parents[1] / "configs" / "datasets" / "skin_bm.yaml"
    ds = load_dataset(spec, verify="none")
    recs = pd.concat([d.sample(30, random_state=0) for _, d in ds.records.groupby("label")])
    write_split_csv(
        make_split(recs.reset_index(drop=True), val=0.3, test=0.2, seed=0), tmp_path / "split.csv"
    )
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "skin_bm.yaml",
        [
            f"data.split_csv={tmp_path / 'split.csv'}",
            "model.name=tiny_cnn",
            "model.pretrained=false",
            "train.strategy=scratch",
            "train.epochs=1",
            "train.batch_size=16",
        ],
    )
    run = train(cfg, tmp_path / "run", progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["classes"] == ["benign", "malignant"] and info["images"]["train"] > 0
    assert len(pd.read_csv(run / "test_predictions.csv")) == info["images"]["test"]


@pytest.mark.slow
@pytest.mark.usefixtures("fit_on_tiny_validation")
def test_multiclass_positive_group_threshold_from_validation_only(tmp_path: Path) -> None:
    from medclf.evaluate.thresholds import choose_threshold
    from medclf.train.engine import finalize_run

    classes = ("nv", "mel", "bcc")
    data = make_folder_data(tmp_path / "d3", n_per_class=16, classes=classes)
    cfg = tiny_cfg(
        data, "train.epochs=1", "eval.positive_classes=[mel, bcc]", "eval.threshold=sensitivity:0.9"
    )
    run = train(cfg, tmp_path / "r3", progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "multiclass" and info["positive_classes"] == ["mel", "bcc"]
    assert info["threshold_rule"] == "sensitivity:0.9" and info["positive_class"] is None
    # the rule applied to P(mel) + P(bcc) of the validation predictions (temperature-scaled, as written)
    val = pd.read_csv(run / "val_predictions.csv")
    score = (val["prob_mel"] + val["prob_bcc"]).to_numpy()
    y_in = val["label"].isin(["mel", "bcc"]).to_numpy().astype(int)
    assert info["threshold"] == pytest.approx(choose_threshold(y_in, score, "sensitivity:0.9"), rel=1e-5)
    # the decisions written follow the group rule
    in_group = val["pred"].isin(["mel", "bcc"]).to_numpy()
    np.testing.assert_array_equal(in_group, score >= info["threshold"])

    # perturbed test labels leave the operating point unchanged: the test split is never looked at
    loaded = load_run(run)
    assert loaded.positive_classes == ["mel", "bcc"] and loaded.threshold == info["threshold"]
    split = pd.read_csv(run / "split.csv")
    val_df, test_df = split[split["split"] == "val"], split[split["split"] == "test"].copy()
    rotate = {"nv": "mel", "mel": "bcc", "bcc": "nv"}
    test_df["label"] = test_df["label"].map(rotate)
    again = finalize_run(
        cfg,
        tmp_path / "r3b",
        model=loaded.model,
        preprocessing=loaded.preprocessing,
        classes=loaded.classes,
        meta_encoder=None,
        val_df=val_df,
        test_df=test_df,
        split=split,
    )
    info2 = json.loads((again / "run.json").read_text())
    assert info2["threshold"] == info["threshold"] and info2["temperature"] == info["temperature"]
    assert set(pd.read_csv(again / "test_predictions.csv")["label"]) <= set(classes)


def test_unknown_positive_classes_fail_before_training(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'melanoma' not a class; classes: benign, malignant"):
        train(tiny_cfg(data, "eval.positive_classes=[melanoma]"), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "run.json").exists()
    with pytest.raises(ConfigError, match="one positive class"):
        train(tiny_cfg(data, "eval.positive_classes=[benign, malignant]"), tmp_path / "bad2", progress=False)


def test_resumed_run_reports_the_time_of_every_session():
    import time as _time

    from medclf.train.engine import _train_seconds

    t0 = _time.perf_counter()
    rows = [{"epoch": 0, "seconds": 100.0}, {"epoch": 1, "seconds": 50.5}]
    assert _train_seconds(t0, rows, resumed=True) >= 150.5
    assert _train_seconds(t0, rows, resumed=False) < 10
    assert _train_seconds(None, rows, resumed=True) is None


def test_loaders_pin_memory_only_for_a_cuda_device_with_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from medclf.config import TrainConfig
    from medclf.train import engine

    monkeypatch.setattr(engine, "_cuda_available", lambda: True)
    assert engine._loader_kwargs(TrainConfig(accelerator="gpu", num_workers=4))["pin_memory"]
    assert engine._loader_kwargs(TrainConfig(accelerator="auto", num_workers=4))["pin_memory"]
    assert not engine._loader_kwargs(TrainConfig(accelerator="cpu", num_workers=4))["pin_memory"]
    assert not engine._loader_kwargs(TrainConfig(accelerator="gpu", num_workers=0))["pin_memory"]
    monkeypatch.setattr(engine, "_cuda_available", lambda: False)
    kw = engine._loader_kwargs(TrainConfig(accelerator="auto", num_workers=4, batch_size=7))
    assert not kw["pin_memory"] and kw["persistent_workers"] and kw["batch_size"] == 7


def test_jpeg_draft_off_is_saved_with_the_run(data: Path, tmp_path: Path) -> None:
    from medclf.models import load_run

    run = train(tiny_cfg(data, "train.epochs=1", "model.jpeg_draft=false"), tmp_path / "run", progress=False)
    assert json.loads((run / "run.json").read_text())["preprocessing"]["jpeg_draft"] is False
    assert load_run(run).preprocessing.decode_side() is None


def test_a_gpu_without_loader_workers_is_warned_about() -> None:
    from medclf.train.engine import _starved_gpu_message

    message = _starved_gpu_message("CUDAAccelerator", 0)
    assert message and "train.num_workers" in message and "docs/scaling.md" in message
    assert _starved_gpu_message("CUDAAccelerator", 8) is None
    assert _starved_gpu_message("CPUAccelerator", 0) is None


def test_recipe_spec_on_another_folder_reads_that_folders_layout(data: Path) -> None:
    # configs/skin_bm.yaml's dataset spec says split-folders (its own data); --data here is class-per-folder
    from medclf.config import load_config
    from medclf.train.engine import load_data

    recipe = Path(__file__).resolve().parents[1] / "configs" / "skin_bm.yaml"
    ds = load_data(load_config(recipe, [f"data.root={data}"]))
    assert (ds.layout, ds.classes, ds.spec.layout) == ("folders", ["benign", "malignant"], "folders")
    assert ds.name == data.name and len(ds) == 48
