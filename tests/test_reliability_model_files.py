"""Model files and training under faults: edited or damaged run folders, NaN models, full or read-only disks,
diverging training, unsafe checkpoints, interrupted runs and evaluations. Each gets one line, never a traceback.

What is simulated: a full disk is a writer monkeypatched to fail with ENOSPC (or safetensors' own error text for
it); a read-only folder is an ``--out`` below a regular file (the tests run as root, where chmod stops nothing) or
a monkeypatched EROFS; "kill -9" is a leftover temporary file or an exception in the middle of a step.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from _fixtures_serve import make_run, png_bytes, synthetic_image
from _fixtures_train import make_folder_data, tiny_cfg
from medclf.cli import main
from medclf.errors import ConfigError, MedclfError, WriteError
from medclf.models import create_model, load_run, resolve_preprocessing, save_run_model

torch.set_num_threads(1)


def _save(run: Path, **info_extra) -> Path:
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 2)
    info = {
        "classes": ["benign", "malignant"],
        "task": "binary",
        "positive_class": "malignant",
        "preprocessing": resolve_preprocessing(model).to_dict(),
        "threshold": 0.4,
        "temperature": 1.5,
        **info_extra,
    }
    save_run_model(run, model, info)
    return run


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        d = data
        for p in parents:
            d = d[p]
        d[key] = value
    path.write_text(json.dumps(data))


def _reseal(run: Path) -> None:
    """What someone who edits a file and updates its checksums does: the manifest then matches again."""
    info = json.loads((run / "run.json").read_text())
    info["weights"]["sha256"] = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    (run / "run.json").write_text(json.dumps(info))
    manifest = json.loads((run / "manifest.json").read_text())
    for name in manifest["sha256"]:
        manifest["sha256"][name] = hashlib.sha256((run / name).read_bytes()).hexdigest()
    (run / "manifest.json").write_text(json.dumps(manifest))


def _one_line_error(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("medclf ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained tiny run with images, split.csv and a fitted OOD detector (in its manifest)."""
    from medclf.serve import Predictor

    run = make_run(tmp_path_factory.mktemp("served"))
    Predictor.from_run(run, backend="torch")
    assert "ood.safetensors" in json.loads((run / "manifest.json").read_text())["sha256"]
    return run


# ---- the manifest --------------------------------------------------------------------------------------------
def _raise_threshold(run: Path) -> None:
    _edit_json(run / "run.json", threshold=0.9999)  # every decision flips to benign


def _swap_classes(run: Path) -> None:
    _edit_json(run / "run.json", classes=["malignant", "benign"])  # relabels every answer


def _ood_never_refers(run: Path) -> None:
    from medclf.serve.ood import FeatureOOD

    ood = FeatureOOD.load(run / "ood.safetensors")
    ood.threshold = 1e30
    ood.save(
        run / "ood.safetensors",
        weights_sha256=json.loads((run / "run.json").read_text())["weights"]["sha256"],
    )


def _config_never_refers(run: Path) -> None:
    (run / "config.yaml").write_text("eval:\n  refer_below: 0.0\n")


def _test_on_training_images(run: Path) -> None:
    split = pd.read_csv(run / "split.csv")
    split["split"] = "test"
    split.to_csv(run / "split.csv", index=False)


@pytest.mark.parametrize(
    ("edit", "name"),
    [
        (_raise_threshold, "run.json"),
        (_swap_classes, "run.json"),
        (_ood_never_refers, "ood.safetensors"),
        (_test_on_training_images, "split.csv"),
    ],
    ids=["threshold", "classes", "ood-threshold", "split"],
)
def test_an_edited_run_file_is_refused_by_name(served: Path, tmp_path: Path, edit, name: str) -> None:
    from medclf.serve import Predictor

    run = shutil.copytree(served, tmp_path / "run")
    edit(run)
    with pytest.raises(MedclfError, match=rf"{name} does not match the sha256 recorded in manifest.json"):
        load_run(run)
    with pytest.raises(MedclfError, match=name):
        Predictor.from_run(run, backend="torch")


def test_a_file_added_after_the_save_is_refused(served: Path, tmp_path: Path, capsys) -> None:
    run = shutil.copytree(served, tmp_path / "run")
    _config_never_refers(
        run
    )  # the fixture run has no config.yaml: this one would turn off low-confidence referral
    with pytest.raises(MedclfError, match=r"config.yaml is not in manifest.json"):
        load_run(run)
    line = _one_line_error(capsys, main(["predict", str(run), str(run / "split.csv"), "--backend", "torch"]))
    assert "config.yaml" in line and "retrain" in line


def test_a_deleted_ood_detector_is_refitted_and_recorded(served: Path, tmp_path: Path) -> None:
    from medclf.serve import Predictor

    run = shutil.copytree(served, tmp_path / "run")
    before = json.loads((run / "manifest.json").read_text())["sha256"]["ood.safetensors"]
    (run / "ood.safetensors").unlink()
    assert Predictor.from_run(run, backend="torch").ood is not None
    assert json.loads((run / "manifest.json").read_text())["sha256"]["ood.safetensors"] == before
    load_run(run)


def test_missing_manifest_and_run_folders_saved_before_it(tmp_path: Path, caplog) -> None:
    run = _save(tmp_path / "run")
    assert json.loads((run / "run.json").read_text())["format_version"] == 2
    (run / "manifest.json").unlink()
    with pytest.raises(MedclfError, match=r"manifest.json is missing"):
        load_run(run)
    # a folder from before the manifest: loads, its weights still checked, with a warning saying what is not
    _edit_json(run / "run.json", format_version=1)
    with caplog.at_level(logging.WARNING, logger="medclf.models.run_io"):
        assert load_run(run).threshold == 0.4
    assert "without manifest.json" in caplog.text and "retrain" in caplog.text
    w = run / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + b"\0")
    with pytest.raises(MedclfError, match=r"sha256 recorded in run.json"):
        load_run(run)


def test_save_writes_the_manifest_before_run_json(tmp_path: Path, monkeypatch) -> None:
    """A save killed between the two leaves no run.json: the folder is not a run and `--resume` finishes it."""
    import medclf.models.run_io as run_io

    real = run_io.atomic_write_text

    def killed(path, text):
        if Path(path).name == "run.json":
            raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(run_io, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "run")
    assert (tmp_path / "run" / "manifest.json").is_file() and not (tmp_path / "run" / "run.json").exists()
    monkeypatch.undo()
    run = _save(tmp_path / "run")
    digests = json.loads((run / "manifest.json").read_text())["sha256"]
    assert set(digests) == {"model.safetensors", "run.json"}
    assert digests["run.json"] == hashlib.sha256((run / "run.json").read_bytes()).hexdigest()


# ---- run.json fields -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": "abc"}, "threshold must be a finite number >= 0 and <= 1 (it is 'abc')"),
        ({"threshold": 1.5}, "threshold must be a finite number"),
        ({"temperature": 0}, "temperature must be a finite number > 0"),
        ({"temperature": -2.0}, "temperature must be a finite number > 0"),
        ({"preprocessing__input_size": 0}, "preprocessing.input_size must be a whole number"),
        ({"preprocessing__input_size": "32"}, "preprocessing.input_size must be a whole number"),
        ({"preprocessing__std": [0.5, 0.0, 0.5]}, "preprocessing.std must be a list of finite numbers > 0"),
        ({"classes": ["benign", "benign"]}, "classes must not name a class twice"),
        ({"classes": ["benign", 3]}, "classes must be a list of at least 2 class names"),
        ({"positive_class": "melanoma"}, "positive_class must be one of the classes"),
        ({"model__num_classes": 3}, "model.num_classes must be 2"),
        ({"tta": ["spin"]}, "unknown test-time view 'spin'"),
    ],
)
def test_bad_run_json_fields_are_named(tmp_path: Path, capsys, changes: dict, message: str) -> None:
    run = _save(tmp_path / "run")
    _edit_json(run / "run.json", **changes)
    _reseal(run)
    with pytest.raises(MedclfError, match=r"run\.json") as exc:
        load_run(run)
    assert message in str(exc.value), exc.value
    rc = main(["evaluate", str(run), "--out", str(tmp_path / "ev"), "--no-gradcam"])
    assert message in _one_line_error(capsys, rc)


@pytest.mark.parametrize("key", ["checkpoint_path", "pretrained_cfg_overlay"])
def test_no_run_folder_or_recipe_can_point_the_model_at_a_file(tmp_path: Path, monkeypatch, key: str) -> None:
    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load was reached")

    monkeypatch.setattr(torch, "load", no_torch_load)
    bait = tmp_path / "evil.pth"
    bait.write_bytes(b"not weights")
    value = str(bait) if key == "checkpoint_path" else {"file": str(bait)}
    run = _save(tmp_path / "run")
    _edit_json(run / "run.json", **{f"model__kwargs__{key}": value})
    _reseal(run)
    with pytest.raises(MedclfError, match=rf"model.kwargs.{key} must not be set"):
        load_run(run)
    with pytest.raises(ConfigError, match=rf"model.kwargs.{key}: model options may not name"):
        create_model("resnet18", 2, **{key: value})


# ---- models that produce NaN ------------------------------------------------------------------------------------
def _overwrite_weights(run: Path, data: bytes) -> None:
    """The last len(data) bytes of the weights file (the last tensor's values), checksums updated."""
    w = run / "model.safetensors"
    raw = w.read_bytes()
    w.write_bytes(raw[: len(raw) - len(data)] + data)
    _reseal(run)


def test_a_model_with_nan_weights_is_refused_at_load(served: Path, tmp_path: Path, capsys) -> None:
    run = shutil.copytree(served, tmp_path / "run")
    _overwrite_weights(run, b"\xff" * 4096)  # 4 KB of NaN (0xffffffff) in the weights
    with pytest.raises(MedclfError, match=r"holds NaN or infinite values"):
        load_run(run)
    image = pd.read_csv(run / "split.csv").path.iloc[0]  # the training images are here: no OOD-fit crash
    line = _one_line_error(capsys, main(["predict", str(run), image, "--backend", "torch"]))
    assert "NaN or infinite" in line and "retrain" in line
    rc = main(["evaluate", str(run), "--out", str(tmp_path / "ev"), "--no-gradcam"])
    assert "NaN or infinite" in _one_line_error(capsys, rc)


def test_a_model_whose_output_overflows_is_refused_at_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 2)
    with torch.no_grad():
        model.head.fc.weight.fill_(3e38)  # finite weights, infinite logits
    info = {"classes": ["a", "b"], "preprocessing": resolve_preprocessing(model).to_dict()}
    save_run_model(tmp_path / "run", model, info)
    with pytest.raises(MedclfError, match=r"output for a probe image is NaN or infinite"):
        load_run(tmp_path / "run")


def test_a_nan_prediction_is_an_error_never_a_decision(
    served: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    from fastapi.testclient import TestClient

    from medclf.runtime.engine import TorchEngine
    from medclf.serve import Predictor
    from medclf.serve.api import create_app
    from medclf.serve.predictor import NonFiniteOutputError

    real = TorchEngine.run
    good = synthetic_image(1, np.random.default_rng(1))
    dark = good.point(lambda v: 0)
    black: list[float] = []

    def nan_for_black_images(self, feed):  # the model "overflows" on an all-black image
        logits, *rest = real(self, feed)
        logits[np.abs(feed["image"].mean(axis=(1, 2, 3)) - black[0]) < 1e-4] = np.nan
        return [logits, *rest]

    monkeypatch.setattr(TorchEngine, "run", nan_for_black_images)
    pred = Predictor.from_run(served, backend="torch")
    black.append(float(pred.preprocess(dark).mean()))
    with pytest.raises(NonFiniteOutputError) as exc:
        pred.predict([good, dark, good])
    assert exc.value.rows == [1] and exc.value.predictions[1] is None
    assert exc.value.predictions[0].decision == exc.value.predictions[2].decision
    # the REST API: an error for that request, no decision
    with TestClient(create_app(pred)) as client:
        r = client.post("/predict", files={"file": ("x.png", png_bytes(dark), "image/png")})
        assert r.status_code == 422 and "NaN or infinite" in r.json()["detail"], r.text
        assert "decision" not in r.json()
        assert (
            client.post("/predict", files={"file": ("x.png", png_bytes(good), "image/png")}).status_code
            == 200
        )
    # the CLI: that image is an error row (exit 1), the others are predicted
    good.save(tmp_path / "good.png")
    dark.save(tmp_path / "dark.png")
    rc = main(
        ["predict", str(served), str(tmp_path / "good.png"), str(tmp_path / "dark.png"), "--backend", "torch"]
    )
    out, err = capsys.readouterr()
    assert rc == 1 and "1 predicted, 1 skipped" in out
    assert "dark.png: the model's output is NaN or infinite" in err and "dark.png" not in out


# ---- write failures ---------------------------------------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _safetensors_enospc(*args, **kwargs):
    from safetensors import SafetensorError

    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.parametrize("writer", [_enospc, _safetensors_enospc], ids=["oserror", "safetensors-error"])
def test_a_full_disk_while_saving_is_one_line(tmp_path: Path, monkeypatch, writer) -> None:
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_model", writer)
    with pytest.raises(
        WriteError, match=r"cannot write .*model.safetensors: No space left on device; free space"
    ):
        _save(tmp_path / "run")
    assert not list((tmp_path / "run").iterdir())  # no temporary file, no run.json


def test_read_only_or_impossible_out_folders_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from medclf._atomic import atomic_write_text

    data = make_folder_data(tmp_path / "d", n_per_class=8)
    (tmp_path / "afile").write_text("x")
    args = ["train", "--data", str(data), "--set", "model.name=tiny_cnn", "--set", "model.pretrained=false"]
    line = _one_line_error(capsys, main([*args, "--out", str(tmp_path / "afile" / "run")]))
    assert "cannot write" in line and "afile" in line and "not a folder" in line
    # a read-only file system (EROFS simulated: as root, chmod does not stop writes)
    import medclf._atomic

    def erofs(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(medclf._atomic.tempfile, "mkstemp", erofs)
    with pytest.raises(WriteError, match=r"Read-only file system; choose a folder you can write to"):
        atomic_write_text(tmp_path / "x.txt", "x")


def test_a_full_disk_in_lightnings_own_writes_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import lightning.pytorch as pl

    from medclf.train import train

    def fit(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a full disk gives last.ckpt's write

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    data = make_folder_data(tmp_path / "d", n_per_class=8)
    with pytest.raises(WriteError, match=r"cannot write .*checkpoints: No space left on device"):
        train(tiny_cfg(data), tmp_path / "run", progress=False)


# ---- training -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder_data(tmp_path_factory.mktemp("data"), n_per_class=12)


@pytest.mark.parametrize("strategy", ["scratch", "cached"])
def test_diverging_training_stops_with_epoch_and_learning_rate(
    data: Path, tmp_path: Path, capsys, strategy: str
) -> None:
    sets = ["model.name=tiny_cnn", "model.pretrained=false", f"train.strategy={strategy}", "train.lr=1e12"]
    sets += [
        "train.epochs=3",
        "train.scheduler=none",
        "train.batch_size=8",
        f"train.cache_dir={tmp_path / 'cache'}",
    ]
    args = [
        "train",
        "--data",
        str(data),
        *(a for s in sets for a in ("--set", s)),
        "--out",
        str(tmp_path / "r"),
    ]
    line = _one_line_error(capsys, main([*args, "--quiet"]))
    assert "training diverged in epoch" in line and "learning rate 1e+12" in line and "lower train.lr" in line
    assert not (tmp_path / "r" / "run.json").exists()


@pytest.fixture(scope="module")
def crashed(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose training stopped mid-way, with checkpoints/last.ckpt: what --resume continues."""
    import lightning.pytorch as pl

    from medclf.train import train

    class Crash(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            if trainer.current_epoch == 1:
                raise RuntimeError("simulated crash")

    run = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(tiny_cfg(data, "train.epochs=2"), run, progress=False, callbacks=[Crash()])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    return run


def test_resume_removes_temporary_files_of_a_killed_write(crashed: Path, tmp_path: Path) -> None:
    from medclf.train import train

    run = shutil.copytree(crashed, tmp_path / "run")
    leftovers = [
        run / "checkpoints" / ".best.safetensors.k1ll3d.safetensors.tmp",
        run / ".history.csv.x9.tmp",
    ]
    for p in leftovers:
        p.write_bytes(b"half a file")
    train(None, run, resume=True, progress=False)
    assert not any(p.exists() for p in leftovers)
    assert not list(run.rglob("*.tmp"))
    load_run(run)


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))

    marker = ""


def test_an_unsafe_checkpoint_on_resume_is_refused(crashed: Path, tmp_path: Path, capsys) -> None:
    run = shutil.copytree(crashed, tmp_path / "run")
    _Payload.marker = str(tmp_path / "pwned")
    torch.save({"state_dict": {}, "payload": _Payload()}, run / "checkpoints" / "last.ckpt")
    line = _one_line_error(capsys, main(["train", "--out", str(run), "--resume", "--quiet"]))
    assert "last.ckpt cannot be loaded safely" in line and "delete" in line and "checkpoints" in line
    assert "weights_only" not in line
    assert not Path(_Payload.marker).exists()
    (run / "checkpoints" / "last.ckpt").write_bytes(
        b"PK\x03\x04 half a zip"
    )  # a damaged one: the same answer
    line = _one_line_error(capsys, main(["train", "--out", str(run), "--resume", "--quiet"]))
    assert "cannot be loaded safely" in line


@pytest.mark.slow
# ---- evaluation -----------------------------------------------------------------------------------------------
def test_an_interrupted_evaluation_is_marked_and_not_read(tmp_path: Path, monkeypatch) -> None:
    from _fixtures_evaluate import make_predictions
    from medclf.evaluate import report
    from medclf.evaluate.compare import load_entry
    from medclf.evaluate.pipeline import INCOMPLETE_FILE, evaluate_predictions
    from medclf.serve.predictor import run_metrics

    classes = ["benign", "malignant"]
    out = tmp_path / "run" / "eval"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after predictions.csv, the plots and metrics.json, before the report

    monkeypatch.setattr(report, "write_report", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate_predictions(make_predictions(60), classes, out, n_boot=0)
    assert (out / "metrics.json").is_file() and (out / INCOMPLETE_FILE).is_file()
    with pytest.raises(MedclfError, match=r"this evaluation did not finish"):
        load_entry(out)
    assert run_metrics(tmp_path / "run", classes, "malignant", 0.5) == {}
    monkeypatch.undo()
    evaluate_predictions(make_predictions(60), classes, out, n_boot=0)
    assert not (out / INCOMPLETE_FILE).exists() and (out / "report.html").is_file()
    assert load_entry(out).kind == "evaluation"
    assert run_metrics(tmp_path / "run", classes, "malignant", 0.5)["n"] == 60
