"""Predictor: backends agree, decisions at the operating point, refer flag (confidence and OOD), threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from _fixtures_serve import noise_image, png_bytes, synthetic_image
from medclf import DISCLAIMER
from medclf.errors import BadImageError, ConfigError
from medclf.serve import Predictor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def predictors(tiny_run: Path) -> dict[str, Predictor]:
    return {b: Predictor.from_run(tiny_run, backend=b) for b in ("torch", "onnx", "openvino")}


def _split(run: Path, split: str) -> pd.DataFrame:
    df = pd.read_csv(run / "split.csv")
    return df[df.split == split]


def test_backends_agree_and_match_manual_softmax(predictors, tiny_run) -> None:
    from medclf.data.transforms import create_transform
    from medclf.models import load_run

    paths = list(_split(tiny_run, "val").path)
    pt = predictors["torch"].predict(paths)
    run = load_run(tiny_run)
    tf = create_transform(run.preprocessing)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        ref = torch.softmax(run.model(x) / run.temperature, 1).numpy()
    for engine in ("onnx", "openvino"):
        assert predictors[engine].backend.name == engine
        for a, b, r in zip(pt, predictors[engine].predict(paths), ref, strict=True):
            pa = np.array(list(a.probabilities.values()))
            pb = np.array(list(b.probabilities.values()))
            np.testing.assert_allclose(pa, r, atol=1e-5)
            np.testing.assert_allclose(pb, r, atol=1e-4)  # OpenVINO compiles at fp32, not bf16
            assert a.decision == b.decision
            # the graph's Mahalanobis distance sums in float32 (torch's in float64) over the tiny model's
            # ill-conditioned precision matrix: 0.1% apart on this machine's ONNX Runtime/OpenVINO builds
            # (the same at the previous commit), so both engines get 0.5%
            tol = 5e-3
            assert a.ood_score == pytest.approx(b.ood_score, rel=tol, abs=tol)
            assert a.disclaimer == b.disclaimer == DISCLAIMER


@pytest.mark.parametrize("engine", ["onnx", "openvino"])
def test_engine_micro_batches_give_the_whole_batch_result(predictors, tiny_run, engine) -> None:
    """A batch of 7 in engine calls of 1, 3 (a short last call) and the default: the same predictions, in
    order, as one call on the whole batch."""
    from medclf.runtime.engine import ENGINE_BATCH

    pred = predictors[engine]
    paths = list(_split(tiny_run, "val").path)[:7]
    x = np.stack([pred.preprocess(pred.load(p)) for p in paths]).astype(np.float32)
    assert len(x) == 7 and pred.backend.engine_batch == ENGINE_BATCH
    try:
        pred.backend.engine_batch = 0  # the whole batch at once
        whole = pred.predict_arrays(x)
        for size in (1, 3, ENGINE_BATCH):
            pred.backend.engine_batch = size
            parts = pred.predict_arrays(x)
            assert len(parts) == 7
            for a, b in zip(whole, parts, strict=True):
                np.testing.assert_allclose(
                    list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-6
                )
                assert a.ood_score == pytest.approx(b.ood_score, rel=1e-5, abs=1e-6)
                assert a.decision == b.decision
    finally:
        pred.backend.engine_batch = ENGINE_BATCH


def test_run_micro_batches_splits_rows_and_joins_outputs() -> None:
    from medclf.runtime.engine import run_micro_batches

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[int] = []

        def run(self, names, feed):
            self.calls.append(len(feed["x"]))
            return [feed["x"] * 2, feed["m"].sum(axis=1)]

    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    m = np.ones((5, 3), np.float32)
    rec = Recorder()
    y, s = run_micro_batches(rec, None, {"x": x, "m": m}, size=2)
    assert rec.calls == [2, 2, 1]
    np.testing.assert_array_equal(y, x * 2)
    np.testing.assert_array_equal(s, np.full(5, 3.0))
    with pytest.raises(ValueError, match="different numbers of rows"):
        run_micro_batches(rec, None, {"x": x, "m": m[:4]})


def test_decision_uses_the_run_threshold(predictors) -> None:
    p = predictors["torch"]
    assert p.threshold == 0.4 and p.positive_class == "malignant"
    # probability of malignant 0.45: below 0.5 (label benign) but above the 0.4 operating point
    pred = p._decide(np.array([0.55, 0.45]), None)
    assert pred.label == "benign" and pred.decision == "malignant"
    assert pred.refer and "low confidence" in pred.refer_reasons[0]
    sure = p._decide(np.array([0.95, 0.05]), None)
    assert sure.decision == "benign" and not sure.refer


def test_onnx_batch_on_every_core_equals_single_images(tiny_run) -> None:
    # a batch runs one image per call and core on a one-thread session; a single image on the main session
    p = Predictor.from_run(tiny_run, backend="onnx", num_threads=2)
    assert p.backend.per_image
    paths = list(_split(tiny_run, "val").path) + list(_split(tiny_run, "test").path)
    batch = p.predict(paths)
    assert p.backend.per_core_ready  # the batch did take the per-core path
    for path, q in zip(paths, batch, strict=True):
        one = p.predict(path)[0]
        assert q.probabilities == pytest.approx(one.probabilities, abs=1e-6)
        assert q.ood_score == pytest.approx(one.ood_score, rel=1e-5)
        assert (q.decision, q.refer) == (one.decision, one.refer)
    # one thread asked for: no second session, batches in micro-batches as before
    assert not Predictor.from_run(tiny_run, backend="onnx", num_threads=1).backend.per_image
    assert not Predictor.from_run(tiny_run, backend="openvino", num_threads=2).backend.per_image


def test_batch_decisions_match_one_at_a_time(predictors) -> None:
    # predict_arrays decides a whole batch in one call: each answer must be the single-image answer
    p = predictors["torch"]

    from medclf.runtime.engine import Engine

    class Fixed(
        Engine
    ):  # logits whose probabilities straddle the 0.4 operating point and the 0.5 arg-max line
        outputs = ("logits", "ood_score")

        def run(self, feed):
            pm = np.array([0.05, 0.35, 0.42, 0.48, 0.55, 0.9])
            return [np.log(np.stack([1 - pm, pm], axis=1)), np.zeros(6)]

    backend, p.backend = p.backend, Fixed()
    try:
        preds = p.predict_arrays(np.zeros((6, 3, 8, 8), np.float32))
    finally:
        p.backend = backend
    assert [q.decision for q in preds] == [
        "benign",
        "benign",
        "malignant",
        "malignant",
        "malignant",
        "malignant",
    ]
    assert [q.label for q in preds] == ["benign"] * 4 + ["malignant"] * 2
    for q in preds:
        one = p._decide(np.array([q.probabilities[c] for c in p.classes]), None)
        assert (one.decision, one.label, one.refer) == (q.decision, q.label, q.refer)


def test_accuracy_and_referrals_in_distribution(predictors, tiny_run) -> None:
    val = _split(tiny_run, "val")
    preds = predictors["onnx"].predict(list(val.path))
    acc = np.mean([p.decision == y for p, y in zip(preds, val.label, strict=True)])
    assert acc >= 0.9
    # OOD threshold is the 99th percentile of these very images: at most a few are flagged
    assert np.mean([p.refer for p in preds]) <= 0.2


def test_noise_and_foreign_images_are_referred(predictors) -> None:
    p = predictors["onnx"]
    noise = p.predict([noise_image(i) for i in range(4)])
    assert all(n.refer for n in noise)
    assert all(any("out of distribution" in r for r in n.refer_reasons) for n in noise)
    # a grey "X-ray-like" gradient is also unlike the coloured blobs
    grey = Image.fromarray(np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1))).convert("RGB")
    assert p.predict(grey)[0].ood_score > p.ood_threshold


def test_inputs_paths_bytes_pil_and_bad_bytes(predictors, tiny_run) -> None:
    p = predictors["torch"]
    path = _split(tiny_run, "val").path.iloc[0]
    a = p.predict(path)[0]
    b = p.predict(Path(path).read_bytes())[0]
    c = p.predict(Image.open(path))[0]
    assert a.probabilities == pytest.approx(b.probabilities) == c.probabilities
    with pytest.raises(BadImageError, match="empty"):
        p.predict(b"")
    with pytest.raises(BadImageError):
        p.predict(png_bytes(synthetic_image(0, np.random.default_rng(0)))[:50])
    with pytest.raises(ConfigError, match="metadata rows"):
        p.predict([path, path], [{}])


def test_too_many_pixels_refused(tiny_run) -> None:
    p = Predictor.from_run(tiny_run, backend="torch", max_pixels=1000)
    with pytest.raises(BadImageError, match="too large"):
        p.predict(png_bytes(Image.new("RGB", (100, 100))))


def test_concurrent_predictions_equal_sequential(predictors, tiny_run) -> None:
    paths = list(_split(tiny_run, "test").path)
    for p in predictors.values():
        expected = [x.probabilities for x in p.predict(paths)]
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda q, p=p: p.predict(q)[0].probabilities, paths * 3))
        for e, g in zip(expected * 3, got, strict=True):
            assert g == pytest.approx(e, abs=1e-6)
        # explanations share the model's hooks: run them concurrently with predictions too
        with ThreadPoolExecutor(4) as pool:
            cams = list(pool.map(lambda q, p=p: p.explain(q).cam, paths[:4]))
        assert all(c.shape == (32, 32) for c in cams)


def test_ood_detector_is_cached_and_refit_when_weights_change(tiny_run, tmp_path) -> None:
    import json
    import shutil

    from _fixtures_serve import make_run
    from medclf.errors import MedclfError
    from medclf.serve.ood import FeatureOOD

    cache = tiny_run / "ood.safetensors"
    assert cache.is_file()  # written by the first Predictor.from_run, and recorded in the manifest
    assert "ood.safetensors" in json.loads((tiny_run / "manifest.json").read_text())["sha256"]
    info = FeatureOOD.read_info(cache)
    assert info["n_fit"] == len(_split(tiny_run, "train")) and info["calib_split"] == "val"
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    FeatureOOD.fit(np.random.default_rng(0).normal(size=(10, 16))).save(copy / "ood.safetensors")
    # a detector the manifest does not vouch for is refused; deleted, it is refitted from split.csv
    with pytest.raises(MedclfError, match=r"ood.safetensors does not match .* delete it"):
        Predictor.from_run(copy, backend="torch")
    (copy / "ood.safetensors").unlink()
    p = Predictor.from_run(copy, backend="torch")
    assert p.ood.n_fit == info["n_fit"]
    # one the manifest does not list (copied in) is ignored and refitted
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["sha256"]["ood.safetensors"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    FeatureOOD.fit(np.random.default_rng(0).normal(size=(10, 16)) + 5).save(copy / "ood.safetensors")
    assert Predictor.from_run(copy, backend="torch").ood.n_fit == info["n_fit"]
    # the training images are not on this machine: no OOD detector
    elsewhere = make_run(tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "elsewhere" / "images")
    bare = Predictor.from_run(elsewhere, backend="torch")
    assert bare.ood is None and not bare.predict(noise_image())[0].refer_reasons[1:]


def test_fusion_run_uses_metadata(fusion_run) -> None:
    p = Predictor.from_run(fusion_run, backend="onnx")
    q = Predictor.from_run(fusion_run, backend="torch")
    assert set(p.metadata_fields) == {"age", "sex"}
    assert p.metadata_fields["sex"]["kind"] == "categorical"
    img = png_bytes(synthetic_image(1, np.random.default_rng(5)))
    young = p.predict(img, {"age": 20, "sex": "male"})[0]
    old = p.predict(img, {"age": 90, "sex": "female"})[0]
    unknown = p.predict(img)[0]
    assert young.probabilities != old.probabilities
    assert q.predict(img, {"age": 20, "sex": "male"})[0].probabilities == pytest.approx(
        young.probabilities, abs=1e-4
    )
    assert np.isfinite(unknown.confidence)
    ex = q.explain(img, {"age": 20, "sex": "male"}, method="gradcam++")
    assert ex.cam.shape == (32, 32) and ex.overlay.size == (40, 40)


def test_model_card_has_metrics_and_card(predictors) -> None:
    card = predictors["onnx"].model_card()
    assert card["classes"] == ["benign", "malignant"] and card["threshold"] == 0.4
    assert card["metrics"]["val"]["n"] == 16 and 0 <= card["metrics"]["val"]["auc"] <= 1
    assert "Model card" in card["card"] and card["ood"]["method"] == "mahalanobis"
    assert card["disclaimer"] == DISCLAIMER


def test_prediction_to_dict_is_json(predictors) -> None:
    import json

    d = predictors["onnx"].predict(noise_image())[0].to_dict()
    assert json.loads(json.dumps(d))["refer"] is True
    assert set(d) >= {"probabilities", "label", "decision", "refer", "disclaimer"}


def test_unknown_backend(tiny_run) -> None:
    with pytest.raises(ConfigError, match="backend"):
        Predictor.from_run(tiny_run, backend="tensorrt")


def test_openvino_missing_or_misused_is_a_clear_error(tiny_run, monkeypatch) -> None:
    import medclf.runtime.openvino as ovmod

    with pytest.raises(ConfigError, match="openvino only"):
        Predictor.from_run(tiny_run, backend="onnx", precision="bf16")
    monkeypatch.setattr(ovmod, "available", lambda: False)
    with pytest.raises(ConfigError, match=r"medclf\[openvino\]"):
        Predictor.from_run(tiny_run, backend="openvino", ood=False)


def test_openvino_bf16_is_opt_in_and_close(tiny_run) -> None:
    from medclf.models import load_run
    from medclf.runtime.openvino import OpenVinoSession
    from medclf.serve.export import build_onnx
    from medclf.serve.predictor import serving_info_from_run

    run = load_run(tiny_run)
    graph = build_onnx(run.model, serving_info_from_run(run), None).SerializeToString()
    pre = run.preprocessing
    shape = (4, pre.in_chans, pre.input_size, pre.input_size)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    f32 = OpenVinoSession(graph, precision="f32")
    assert f32.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    a = f32.run(["logits"], {"image": x})[0]
    b = OpenVinoSession(graph, precision="bf16").run(["logits"], {"image": x})[0]
    np.testing.assert_allclose(b, a, atol=0.1)
    fast = Predictor.from_run(tiny_run, backend="openvino", precision="bf16", ood=False)
    exact = Predictor.from_run(tiny_run, backend="onnx", ood=False)
    paths = list(_split(tiny_run, "val").path)
    for p, q in zip(fast.predict(paths), exact.predict(paths), strict=True):
        assert max(abs(p.probabilities[c] - q.probabilities[c]) for c in p.probabilities) < 0.1
    with pytest.raises(ConfigError, match="precision"):
        OpenVinoSession(graph, precision="int4")


def test_multiclass_decision_follows_the_positive_group(group_run: Path) -> None:
    from medclf.serve.predictor import run_metrics

    p = Predictor.from_run(group_run, backend="torch", ood=False)
    assert p.positive_classes == ["mel", "bcc"] and p.threshold == 0.3 and p.positive_class is None
    # P(mel+bcc) = 0.4 >= 0.3: the more probable of mel/bcc, although nv is the most probable class
    pred = p._decide(np.array([0.6, 0.25, 0.15]), None)
    assert pred.label == "nv" and pred.decision == "mel"
    assert p._decide(np.array([0.6, 0.1, 0.3]), None).decision == "bcc"
    assert p._decide(np.array([0.75, 0.1, 0.15]), None).decision == "nv"  # 0.25 < 0.3
    # real images: the same rule on the returned probabilities
    for r in p.predict(list(_split(group_run, "val").path)):
        pm, pb = r.probabilities["mel"], r.probabilities["bcc"]
        want = ("mel" if pm >= pb else "bcc") if pm + pb >= 0.3 else "nv"
        assert r.decision == want
    card = p.model_card()
    assert card["positive_classes"] == ["mel", "bcc"] and card["task"] == "multiclass"
    # metrics from the prediction files use the same decisions
    val = pd.read_csv(group_run / "val_predictions.csv")
    pm, pb = val["prob_mel"].to_numpy(), val["prob_bcc"].to_numpy()
    want = np.where(pm + pb >= 0.3, np.where(pm >= pb, "mel", "bcc"), "nv")
    m = run_metrics(group_run, p.classes, p.positive_classes, p.threshold)
    assert m["val"]["accuracy"] == pytest.approx((want == val["label"].to_numpy()).mean())


def test_large_jpegs_are_decoded_at_a_reduced_scale_unless_the_run_predates_it(
    tiny_run: Path,
    tmp_path: Path,
) -> None:
    import json
    import shutil

    big = tmp_path / "big.jpg"
    synthetic_image(0, np.random.default_rng(3), size=640).save(big, quality=92)
    new = Predictor.from_run(tiny_run, backend="torch")
    side = new.serving.preprocessing.decode_side()
    assert side and 2 * side <= 640
    im = new.load(big)
    assert side <= min(im.size) < 640
    assert new.load(big.read_bytes(), "upload").size == im.size

    old_dir = shutil.copytree(tiny_run, tmp_path / "old_run")
    info = json.loads((old_dir / "run.json").read_text())
    # as written before the option (and the manifest) existed
    del info["preprocessing"]["jpeg_draft"]
    info["format_version"] = 1
    (old_dir / "run.json").write_text(json.dumps(info))
    (old_dir / "manifest.json").unlink()
    old = Predictor.from_run(old_dir, backend="torch")
    assert old.serving.preprocessing.decode_side() is None
    assert old.load(big).size == (640, 640)
    p_new, p_old = new.predict(big)[0].probabilities, old.predict(big)[0].probabilities
    assert max(abs(p_new[c] - p_old[c]) for c in p_new) < 0.02


def test_refer_below_comes_from_run_json_else_the_checked_recipe(tiny_run: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from medclf.models import load_run
    from medclf.serve.predictor import serving_info_from_run

    assert serving_info_from_run(load_run(tiny_run)).refer_below == 0.6
    run = shutil.copytree(tiny_run, tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    # a run that does not record refer_below (saved before the manifest, so its files may be edited)
    del info["refer_below"]
    info["format_version"] = 1
    (run / "run.json").write_text(json.dumps(info))
    (run / "manifest.json").unlink()
    assert serving_info_from_run(load_run(run)).refer_below == 0.6  # no config.yaml: the default
    (run / "config.yaml").write_text("eval:\n  refer_below: 0.8\n")
    assert serving_info_from_run(load_run(run)).refer_below == 0.8
    (run / "config.yaml").write_text("eval:\n  refer_belo: 0.8\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: unknown config key eval\.refer_belo"):
        serving_info_from_run(load_run(run))
