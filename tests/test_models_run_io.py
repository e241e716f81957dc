"""Run-folder model I/O (safetensors + run.json with a sha256) and predict_frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medclf.errors import MedclfError
from medclf.models import (
    MetadataEncoder,
    create_model,
    load_run,
    predict_frame,
    resolve_preprocessing,
    save_run_model,
)

torch.set_num_threads(1)


def _images(folder: Path, n: int = 5) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _save(
    run: Path, *, meta: MetadataEncoder | None = None, threshold: float | None = 0.3, temperature: float = 2.0
):
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 2, num_meta=meta.dim if meta else 0)
    info = {
        "classes": ["benign", "malignant"],
        "task": "binary",
        "positive_class": "malignant",
        "preprocessing": resolve_preprocessing(model).to_dict(),
        "metadata_encoder": meta.to_dict() if meta else None,
        "threshold": threshold,
        "temperature": temperature,
    }
    return model, save_run_model(run, model, info)


def test_round_trip(tmp_path: Path) -> None:
    model, info = _save(tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").is_file()
    assert len(info.weights["sha256"]) == 64
    loaded = load_run(tmp_path / "run")
    assert not loaded.model.training
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(loaded.model(x), model.eval()(x))
    assert loaded.classes == ["benign", "malignant"]
    assert loaded.threshold == 0.3 and loaded.temperature == 2.0 and loaded.positive_class == "malignant"
    assert loaded.preprocessing.input_size == 32
    assert not list((tmp_path / "run").glob(".*tmp"))  # atomic writes leave no temp files


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    _save(tmp_path / "run")
    w = tmp_path / "run" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(MedclfError, match="sha256"):
        load_run(tmp_path / "run")


def test_pickle_weights_are_refused(tmp_path: Path) -> None:
    _save(tmp_path / "run")
    run_json = tmp_path / "run" / "run.json"
    info = json.loads(run_json.read_text())
    info["weights"] = {"file": "model.pt", "format": "pickle", "sha256": "0" * 64}
    run_json.write_text(json.dumps(info))
    with pytest.raises(MedclfError, match="never loads pickled"):
        load_run(tmp_path / "run")
    with pytest.raises(MedclfError, match="not a medclf run folder"):
        load_run(tmp_path)


def test_predict_frame_threshold_temperature_and_metadata(tmp_path: Path) -> None:
    paths = _images(tmp_path)
    train = pd.DataFrame({"age": [40.0, 60.0, 50.0], "site": ["back", "face", "back"]})
    enc = MetadataEncoder.fit(train, ["age", "site"])
    model, _ = _save(tmp_path / "run", meta=enc, threshold=0.3, temperature=2.0)
    records = pd.DataFrame(
        {
            "path": paths,
            "label": ["benign", "malignant", "benign", "malignant", "benign"],
            "group": [f"g{i}" for i in range(5)],
            "age": [45.0, np.nan, 30.0, 80.0, 50.0],
            "site": ["back", "scalp", None, "face", "back"],
        }
    )
    loaded = load_run(tmp_path / "run")
    out = predict_frame(loaded, records, batch_size=2)
    assert list(out.columns) == [
        "path",
        "label",
        "group",
        "prob_benign",
        "prob_malignant",
        "pred",
        "age",
        "site",
    ]
    np.testing.assert_allclose(out[["prob_benign", "prob_malignant"]].sum(axis=1), 1, rtol=1e-5)
    expected = np.where(out["prob_malignant"] >= 0.3, "malignant", "benign")
    assert list(out["pred"]) == list(expected)
    # temperature 2 flattens the softmax of the raw logits
    from medclf.data import load_image
    from medclf.data.transforms import create_transform

    tf = create_transform(loaded.preprocessing)
    x = torch.stack([tf(load_image(p)) for p in paths])
    with torch.no_grad():
        logits = model.eval()(x, torch.from_numpy(enc.transform(records)))
    ref = torch.softmax(logits / 2.0, 1)[:, 1].numpy()
    np.testing.assert_allclose(out["prob_malignant"], ref, rtol=1e-4, atol=1e-6)


def test_predict_frame_skip_bad(tmp_path: Path) -> None:
    from medclf.errors import BadImageError

    paths = _images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    _save(tmp_path / "run")
    loaded = load_run(tmp_path / "run")
    records = pd.DataFrame({"path": [paths[0], str(tmp_path / "broken.png"), paths[1]]})
    with pytest.raises(BadImageError):
        predict_frame(loaded, records)
    out = predict_frame(loaded, records, skip_bad=True)
    assert list(out["path"]) == [paths[0], paths[1]]
    assert out.attrs["skipped"][0][0].endswith("broken.png")


# ---- RunInfo and RunDir -------------------------------------------------------------------------------------------
DATA = Path(__file__).parent / "data"
WRITTEN = [DATA / "run_scratch.json", DATA / "run_cached.json"]
"""run.json files as training wrote them (a scratch and a cached tiny_cnn run) before run.json had a record type."""


@pytest.mark.parametrize("path", WRITTEN, ids=lambda p: p.stem)
def test_run_json_written_by_training_loads_and_writes_back_byte_for_byte(path: Path) -> None:
    from medclf._atomic import json_text
    from medclf.models import RunInfo

    info = RunInfo.from_json(path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert info.classes == ["benign", "malignant"] and info.positive_class == "malignant"
    assert info.threshold == raw["threshold"] and info.model_name == "tiny_cnn"
    assert info.strategy == raw["strategy"] and info.epochs_run == raw["epochs_run"] == 2
    assert info.extra == {}  # every key training writes is a field
    assert json_text(info.to_dict()) == path.read_text(encoding="utf-8")


def test_run_info_round_trip_of_a_new_record() -> None:
    from medclf.models import RunInfo

    info = RunInfo(
        name="r",
        classes=["a", "b", "c"],
        task="multiclass",
        positive_classes=["b", "c"],
        threshold=0.25,
        temperature=1.5,
        warnings=["few images"],
        model={"name": "tiny_cnn", "num_classes": 3, "in_chans": None, "kwargs": {}},
    )
    data = info.to_dict()
    assert list(data)[:3] == ["name", "classes", "task"]
    # fields only some writers set are left out while unset; the rest are written, null or not
    assert "ensemble" not in data and "refer_below" not in data
    assert data["positive_class"] is None and data["tta"] == [] and data["resumed"] is False
    back = RunInfo.from_dict(data)
    assert back == info and back.to_dict() == data
    assert back.threshold_classes == ["b", "c"]


def test_unknown_keys_are_kept_and_missing_ones_get_defaults(tmp_path: Path) -> None:
    from medclf.models import RunInfo

    raw = json.loads(WRITTEN[0].read_text(encoding="utf-8"))
    for key in ("tta", "budget", "peak_memory_mb", "positive_classes", "format_version"):
        del raw[key]
    raw["written_by_a_newer_medclf"] = {"some": [1, 2]}
    info = RunInfo.from_dict(raw, tmp_path / "run.json")
    assert info.tta == [] and info.budget is None and info.positive_classes is None
    assert info.format_version is None and info.threshold_classes == ["malignant"]
    assert info.extra == {"written_by_a_newer_medclf": {"some": [1, 2]}}
    assert info.to_dict() == raw and list(info.to_dict()) == list(raw)
    info.refer_below = 0.7  # set after reading: written, after the keys that were read
    assert list(info.to_dict())[-1] == "refer_below"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("threshold", "abc", "threshold must be a finite number >= 0 and <= 1 (it is 'abc')"),
        ("epochs_run", -1, "epochs_run must be a whole number >= 0 (it is -1)"),
        ("warnings", "one line", "warnings must be a list of strings"),
        ("strategy", 3, "strategy must be a string"),
        ("resumed", "no", "resumed must be true or false"),
        ("images", [1, 2], "images must be an object"),
        ("train_seconds", "slow", "train_seconds must be a number"),
    ],
)
def test_a_bad_field_is_named_with_its_file(tmp_path: Path, key: str, value: object, message: str) -> None:
    from medclf.models import RunInfo

    path = tmp_path / "run.json"
    raw = json.loads(WRITTEN[0].read_text(encoding="utf-8"))
    path.write_text(json.dumps({**raw, key: value}), encoding="utf-8")
    with pytest.raises(MedclfError) as exc:
        RunInfo.from_json(path)
    assert str(exc.value).startswith(f"{path}: {message}"), exc.value


def test_save_refuses_a_bad_field_before_writing(tmp_path: Path) -> None:
    model = create_model("tiny_cnn", 2)
    info = {"classes": ["benign", "malignant"], "threshold": 2.0}
    with pytest.raises(MedclfError, match=r"run\.json: threshold must be a finite number"):
        save_run_model(tmp_path / "run", model, info)
    assert not list((tmp_path / "run").iterdir())


def test_run_dir_save_info_is_checked_and_resealed(tmp_path: Path) -> None:
    from medclf.models import RunDir

    _save(tmp_path / "run", threshold=0.3)
    run = RunDir(tmp_path / "run")
    assert run.is_run() and run.weights.is_file() and run.info_path.name == "run.json"
    info = run.load_info()
    info.threshold = 0.45
    info.extra["note"] = "kept"
    run.save_info(info)
    loaded = load_run(run.root)  # the manifest holds run.json's new digest
    assert loaded.threshold == 0.45 and loaded.info.extra == {"note": "kept"}
    info.temperature = -1.0
    with pytest.raises(MedclfError, match="temperature must be a finite number > 0"):
        run.save_info(info)
    assert load_run(run.root).temperature == 2.0
