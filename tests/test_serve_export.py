"""ONNX export: parity with PyTorch, dynamic batch, serving metadata, int8, refusing bad files."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from _fixtures_serve import noise_image
from medclf.errors import MedclfError
from medclf.runtime.engine import ort_session as onnx_session
from medclf.serve import Predictor
from medclf.serve.export import PARITY_TOLERANCE, export_onnx, read_onnx

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return export_onnx(tiny_run, out, int8=True)


def test_export_parity_metadata_and_dynamic_batch(exported, tiny_run) -> None:
    assert exported.max_abs_diff_probs <= PARITY_TOLERANCE
    assert exported.max_abs_diff_logits <= PARITY_TOLERANCE
    assert "val images" in exported.parity_inputs
    proto = onnx.load(str(exported.path))
    onnx.checker.check_model(proto)
    props = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert props["medclf.classes"] == ["benign", "malignant"]
    assert props["medclf.threshold"] == 0.4 and props["medclf.temperature"] == 1.2
    assert props["medclf.preprocessing"]["input_size"] == 32
    assert props["medclf.ood"]["method"] == "mahalanobis"
    sess = onnx_session(exported.path.read_bytes())
    for batch in (1, 5):
        logits, scores = sess.run(None, {"image": np.zeros((batch, 3, 32, 32), np.float32)})
        assert logits.shape == (batch, 2) and scores.shape == (batch,)
    text = "\n".join(exported.lines())
    assert "max |Δprob|" in text and "int8" in text


def test_from_onnx_matches_run(exported, tiny_run) -> None:
    a = Predictor.from_onnx(exported.path)
    b = Predictor.from_run(tiny_run, backend="torch")
    img = noise_image(3)
    pa, pb = a.predict(img)[0], b.predict(img)[0]
    assert pa.probabilities == pytest.approx(pb.probabilities, abs=1e-4)
    assert pa.refer and pb.refer and pa.ood_threshold == pytest.approx(pb.ood_threshold)
    assert not a.can_explain
    with pytest.raises(MedclfError, match="PyTorch model"):
        a.explain(img)


def test_export_round_trips_the_positive_group(group_run, tiny_run, exported, tmp_path) -> None:
    rep = export_onnx(group_run, tmp_path / "g.onnx", ood=False)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(rep.path)).metadata_props}
    assert props["medclf.positive_classes"] == ["mel", "bcc"] and props["medclf.threshold"] == 0.3
    _, serving, _ = read_onnx(rep.path)
    assert serving.positive_classes == ["mel", "bcc"] and serving.threshold == 0.3
    a, b = Predictor.from_onnx(rep.path), Predictor.from_run(group_run, backend="torch", ood=False)
    assert a.positive_classes == ["mel", "bcc"]
    assert a._decide(np.array([0.6, 0.25, 0.15]), None).decision == "mel"
    paths = [str(p) for p in sorted((group_run.parent / "images").glob("*.png"))]
    assert [r.decision for r in a.predict(paths)] == [r.decision for r in b.predict(paths)]
    # the binary export carries its one positive class; files without the key read back the same way
    assert read_onnx(exported.path)[1].positive_classes == ["malignant"]
    proto = onnx.load(str(exported.path))
    keep = [p for p in proto.metadata_props if p.key != "medclf.positive_classes"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    assert read_onnx(tmp_path / "old.onnx")[1].positive_classes == ["malignant"]


@pytest.mark.parametrize("fit_images", [6, 48])
def test_graph_ood_score_matches_the_detector(tiny_run, fit_images) -> None:
    from medclf.serve.export import build_onnx
    from medclf.serve.ood import FeatureOOD

    torch_pred = Predictor.from_run(tiny_run, backend="torch")
    model, d = torch_pred.torch_model, torch_pred.ood.mean.shape[0]
    rng = np.random.default_rng(0)
    # 6 images for 16 features: the low-rank form (FeatureOOD.low_rank); 48: the full precision matrix
    ood = FeatureOOD.fit(rng.normal(size=(fit_images, d)) + 1.0)
    assert (ood.low_rank() is not None) == (fit_images < d)
    sess = onnx_session(build_onnx(model, torch_pred.serving, ood).SerializeToString())
    x = rng.normal(size=(5, 3, 32, 32)).astype(np.float32)
    _, scores = sess.run(None, {"image": x})
    with torch.inference_mode():
        feats = model.forward_features(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(scores, ood.score(feats), rtol=1e-4)


def test_int8_copy_and_its_cost(exported) -> None:
    q = exported.int8
    assert exported.int8_path.is_file()
    assert 0 <= q["max_abs_diff_probs"] < 0.2 and 0.8 <= q["decision_agreement"] <= 1.0
    assert "accuracy_fp32" in q and "accuracy_int8" in q
    p = Predictor.from_onnx(exported.int8_path)
    assert p.classes == ["benign", "malignant"]


def test_fusion_export_has_meta_input(fusion_run, tmp_path) -> None:
    rep = export_onnx(fusion_run, tmp_path / "f.onnx")
    assert rep.max_abs_diff_probs <= PARITY_TOLERANCE
    names = [i.name for i in onnx.load(str(rep.path)).graph.input]
    assert names == ["image", "meta"]
    p = Predictor.from_onnx(rep.path)
    assert set(p.metadata_fields) == {"age", "sex"}


def test_tampered_or_foreign_onnx_is_refused(exported, tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(exported.path.read_bytes()[:1000])
    with pytest.raises(MedclfError, match="not a valid ONNX"):
        read_onnx(bad)
    plain = tmp_path / "plain.onnx"
    m = torch.nn.Linear(4, 2)
    torch.onnx.export(m, (torch.zeros(1, 4),), str(plain), dynamo=False)
    with pytest.raises(MedclfError, match="serving metadata"):
        read_onnx(plain)
    with pytest.raises(MedclfError, match="not found"):
        read_onnx(tmp_path / "missing.onnx")


def test_export_cli_prints_parity(tiny_run, tmp_path, capsys) -> None:
    from medclf.cli import main

    assert main(["export", str(tiny_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "parity vs PyTorch" in out and "Research use only" in out
    assert (tmp_path / "m.onnx").is_file() and not list(tmp_path.glob(".*tmp"))
