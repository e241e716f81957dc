"""Validation/test predictions and OOD-fit features through ONNX Runtime (``medclf.runtime.ModelRunner``) equal
PyTorch's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medclf.models import (
    MetadataEncoder,
    create_model,
    inference,
    load_run,
    resolve_preprocessing,
    save_run_model,
)
from medclf.models.inference import predict_records
from medclf.models.tta import with_tta
from medclf.runtime import runner as R
from medclf.runtime.engine import OnnxRuntimeEngine, TorchEngine


def _count_exports(monkeypatch) -> list[list[str]]:
    """The input names of every graph ``ModelRunner`` exports from now on."""
    exported: list[list[str]] = []
    real = R.export_graph
    monkeypatch.setattr(
        R,
        "export_graph",
        lambda m, args, inputs, outputs: exported.append(list(inputs)) or real(m, args, inputs, outputs),
    )
    return exported


@pytest.fixture()
def two_threads(monkeypatch):
    monkeypatch.setattr(inference, "GRAPH_MIN_IMAGES", 2)  # these tests' few images still go to the graph
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # one image per engine call on each of two workers
    yield
    torch.set_num_threads(before)


def _run(tmp_path: Path, *, meta: bool, tta: bool) -> tuple[object, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(p)
        rows.append(
            {"path": str(p), "age": [30.0, np.nan, 70.0][i % 3], "site": ["back", "face", None][i % 3]}
        )
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    rows.insert(3, {"path": str(broken), "age": 50.0, "site": "back"})
    records = pd.DataFrame(rows)
    enc = MetadataEncoder.fit(records, ["age", "site"]) if meta else None
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 3, num_meta=enc.dim if enc else 0)
    with torch.no_grad():  # logits of some size, so that a wrong row or order shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model = with_tta(model, ["hflip", "vflip"] if tta else [])
    info = {
        "classes": ["a", "b", "c"],
        "task": "multiclass",
        "preprocessing": resolve_preprocessing(model).to_dict(),
        "metadata_encoder": enc.to_dict() if enc else None,
        "tta": ["hflip", "vflip"] if tta else [],
    }
    save_run_model(tmp_path / "run", model, info)
    return load_run(tmp_path / "run"), records


@pytest.mark.parametrize(("meta", "tta"), [(False, False), (True, True)])
def test_graph_predictions_equal_pytorch(tmp_path, two_threads, monkeypatch, meta, tta) -> None:
    run, records = _run(tmp_path, meta=meta, tta=tta)
    exported = _count_exports(monkeypatch)
    engines: list = []
    real_close = R.ModelRunner.close
    monkeypatch.setattr(R.ModelRunner, "close", lambda self: engines.append(self.engine) or real_close(self))
    rows, got, skipped = predict_records(run, records, batch_size=3, skip_bad=True)
    # the graph ran, and was built once
    assert exported == [["image", "meta"] if meta else ["image"]]
    assert isinstance(engines[0], OnnxRuntimeEngine)
    ref_rows, ref, ref_skipped = predict_records(run, records, batch_size=3, skip_bad=True, engine="torch")
    assert rows["path"].tolist() == ref_rows["path"].tolist() and len(rows) == 7
    assert skipped == ref_skipped and skipped[0][0].endswith("broken.png")
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_a_bad_image_still_stops_without_skip_bad(tmp_path, two_threads) -> None:
    from medclf.errors import BadImageError

    run, records = _run(tmp_path, meta=False, tta=False)
    with pytest.raises(BadImageError, match="broken"):
        predict_records(run, records, batch_size=3)


def test_pytorch_stands_in_when_the_graph_cannot(tmp_path, two_threads, monkeypatch) -> None:
    run, records = _run(tmp_path, meta=True, tta=False)
    ref = predict_records(run, records, skip_bad=True, engine="torch")[1]
    # a graph that disagrees with the model beyond the tolerance is not used
    monkeypatch.setattr(R, "PARITY_LOGITS", -1.0)
    with R.ModelRunner(run.model) as runner:
        runner(torch.zeros(2, 3, 32, 32), np.zeros((2, run.meta_encoder.dim), np.float32))
        assert isinstance(runner.engine, TorchEngine)
    np.testing.assert_array_equal(predict_records(run, records, skip_bad=True)[1], ref)
    monkeypatch.undo()

    # nor is a model that does not export
    def no_export(*a, **k):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    np.testing.assert_array_equal(predict_records(run, records, skip_bad=True)[1], ref)
    with pytest.raises(ValueError, match="engine"):
        predict_records(run, records, engine="onnx")


def test_a_handful_of_images_is_predicted_without_an_export(tmp_path, monkeypatch) -> None:
    run, records = _run(tmp_path, meta=False, tta=False)

    def no_export(*a, **k):
        raise AssertionError("exported for fewer images than GRAPH_MIN_IMAGES")

    monkeypatch.setattr(R, "export_graph", no_export)
    assert len(records) < inference.GRAPH_MIN_IMAGES
    assert len(predict_records(run, records, skip_bad=True)[1]) == 7


def test_ood_fit_features_from_the_graph_equal_pytorch(tmp_path, two_threads, monkeypatch) -> None:
    from medclf.serve.ood import image_features

    run, records = _run(tmp_path, meta=True, tta=True)
    paths = records["path"].tolist()  # with the unreadable one, which is skipped
    monkeypatch.setattr(R, "GRAPH_MIN_IMAGES", 2)
    exported = _count_exports(monkeypatch)
    got = image_features(run.model, run.preprocessing, paths, batch_size=3)
    assert exported == [["image"]]  # the features take no metadata
    monkeypatch.setattr(R, "GRAPH_MIN_IMAGES", 10_000)  # PyTorch
    ref = image_features(run.model, run.preprocessing, paths, batch_size=3)
    assert got.shape == ref.shape == (7, run.model.num_features)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
