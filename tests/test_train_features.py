"""Frozen-backbone feature cache: split equivalence, cache hits, corruption, views, bad images, backends."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from medclf.data.transforms import Preprocessing
from medclf.errors import BadImageError, MedclfError
from medclf.train import features as F

torch.set_num_threads(1)
PRE = Preprocessing(input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def trunk() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("mobilenetv2_050", num_classes=0).eval()


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        arr[:, : 8 * i] = 255  # images differ in a way flips can see
        p = tmp_path / f"im{i}.jpg"
        Image.fromarray(arr).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("n", [0, 1, 3])
def test_top_of_bottom_equals_the_model(trunk, n) -> None:
    parts = F.split_backbone(trunk, n)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(parts.top(parts.bottom(x)), trunk(x), atol=1e-5, rtol=1e-4)
    assert parts.finetune_blocks == n and len(parts.block_paths) == n


def test_split_errors_say_what_to_do(trunk) -> None:
    with pytest.raises(MedclfError, match="only 17 blocks"):
        F.split_backbone(trunk, 40)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(MedclfError, match="finetune_blocks=0"):
        F.split_backbone(plain, 1)


def test_cache_hit_returns_the_same_arrays(trunk, images, tmp_path) -> None:
    bottom = F.split_backbone(trunk, 2).bottom
    kw = {"cache_dir": tmp_path / "c", "backend": "torch", "progress": False, "batch_size": 4}
    first = F.extract_features(bottom, images, PRE, views=["clean", "hflip", "aug1"], **kw)
    assert first.seconds > 0
    assert first.views["clean"].dtype == np.float16 and first.views["clean"].ndim == 4
    second = F.extract_features(bottom, images, PRE, views=["clean", "hflip", "aug1"], **kw)
    assert second.seconds == 0
    for v in first.views:
        np.testing.assert_array_equal(first.views[v], second.views[v])
    # the flip view is the flipped image; augmented views differ from the image itself
    assert not np.allclose(first.views["clean"], first.views["hflip"], atol=1e-2)
    assert not np.allclose(first.views["clean"], first.views["aug1"], atol=1e-2)


def test_pooled_features_match_the_model(trunk, images, tmp_path) -> None:
    fs = F.extract_features(
        F.split_backbone(trunk, 0).bottom, images, PRE, cache_dir=tmp_path, backend="torch", progress=False
    )
    from medclf.data.transforms import create_transform

    tf = create_transform(PRE)
    with torch.no_grad():
        ref = trunk(torch.stack([tf(Image.open(p)) for p in images])).numpy()
    assert fs.views["clean"].dtype == np.float32
    np.testing.assert_allclose(fs.views["clean"], ref, atol=1e-4, rtol=1e-4)


def test_key_changes_with_preprocessing_and_weights(trunk, images, tmp_path) -> None:
    bottom = F.split_backbone(trunk, 0).bottom
    kw = {"cache_dir": tmp_path, "backend": "torch", "progress": False}
    F.extract_features(bottom, images, PRE, **kw)
    other = Preprocessing(input_size=32, mean=(0.4,) * 3, std=(0.5,) * 3)
    assert F.extract_features(bottom, images, other, **kw).seconds > 0
    changed = timm.create_model("mobilenetv2_050", num_classes=0).eval()
    assert F.extract_features(F.split_backbone(changed, 0).bottom, images, PRE, **kw).seconds > 0
    # a classifier that shares the model does not change the key: only what the bottom computes does
    assert F.extract_features(bottom, images, PRE, **kw).seconds == 0


def test_corrupt_cache_file_is_detected_and_rebuilt(trunk, images, tmp_path) -> None:
    bottom = F.split_backbone(trunk, 0).bottom
    kw = {"cache_dir": tmp_path, "backend": "torch", "progress": False}
    ref = F.extract_features(bottom, images, PRE, **kw).views["clean"]
    (cached,) = tmp_path.glob("*/clean.safetensors")
    data = bytearray(cached.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the array payload: still a loadable file, wrong numbers
    cached.write_bytes(bytes(data))
    again = F.extract_features(bottom, images, PRE, **kw)
    assert again.seconds > 0
    np.testing.assert_array_equal(again.views["clean"], ref)
    cached.write_bytes(b"garbage")
    assert F.extract_features(bottom, images, PRE, **kw).seconds > 0


def test_bad_image_is_an_error_or_skipped_and_listed(trunk, images, tmp_path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    paths = [*images[:2], str(bad), *images[2:]]
    bottom = F.split_backbone(trunk, 0).bottom
    with pytest.raises(BadImageError, match=r"broken\.jpg.*skip_bad"):
        F.extract_features(bottom, paths, PRE, cache_dir=tmp_path / "a", backend="torch", progress=False)
    fs = F.extract_features(
        bottom, paths, PRE, cache_dir=tmp_path / "b", backend="torch", progress=False, skip_bad=True
    )
    assert fs.bad == [str(bad)]
    assert fs.kept.tolist() == [0, 1, 3, 4, 5, 6]
    assert len(fs.views["clean"]) == 6


@pytest.mark.slow
def test_onnx_backend_matches_torch(trunk, images, tmp_path) -> None:
    bottom = F.split_backbone(trunk, 1).bottom
    a = F.extract_features(bottom, images, PRE, cache_dir=tmp_path / "t", backend="torch", progress=False)
    b = F.extract_features(bottom, images, PRE, cache_dir=tmp_path / "o", backend="onnx", progress=False)
    np.testing.assert_allclose(
        a.views["clean"].astype(np.float32), b.views["clean"].astype(np.float32), atol=2e-2
    )
    c = F.extract_features(bottom, images, PRE, cache_dir=tmp_path / "v", backend="openvino", progress=False)
    np.testing.assert_allclose(
        a.views["clean"].astype(np.float32), c.views["clean"].astype(np.float32), atol=2e-2
    )
    # auto is the documented default engine, ONNX Runtime: the same arrays, and no timing left behind
    d = F.extract_features(bottom, images, PRE, cache_dir=tmp_path / "x", backend="auto", progress=False)
    assert F.DEFAULT_BACKEND == "onnx"
    np.testing.assert_array_equal(d.views["clean"], b.views["clean"])
    assert not list((tmp_path / "x" / "onnx").glob("*.json"))


@pytest.mark.slow
def test_onnx_on_both_cores_gives_the_one_core_arrays(trunk, images, tmp_path) -> None:
    # two cores: one image per engine call and core, queued beside the decoding, results back in order
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    paths = [*images[:3], str(bad), *images[3:], *images[:2]]
    bottom = F.split_backbone(trunk, 2).bottom
    kw = {"views": ["clean", "aug1"], "backend": "onnx", "progress": False, "batch_size": 3, "skip_bad": True}
    one = F.extract_features(bottom, paths, PRE, cache_dir=tmp_path / "one", **kw)
    torch.set_num_threads(2)
    try:
        two = F.extract_features(bottom, paths, PRE, cache_dir=tmp_path / "two", **kw)
        # without skip_bad the per-image tasks stop at the bad image and name it
        with pytest.raises(BadImageError, match=r"broken\.jpg.*skip_bad"):
            F.extract_features(
                bottom,
                paths,
                PRE,
                cache_dir=tmp_path / "stop",
                **{**kw, "views": ["clean"], "skip_bad": False},
            )
    finally:
        torch.set_num_threads(1)
    assert two.kept.tolist() == one.kept.tolist() == [0, 1, 2, 4, 5, 6, 7, 8]
    for view in ("clean", "aug1"):
        np.testing.assert_array_equal(two.views[view], one.views[view])
    ref = F.extract_features(bottom, paths, PRE, cache_dir=tmp_path / "t", **{**kw, "backend": "torch"})
    np.testing.assert_allclose(
        two.views["clean"].astype(np.float32), ref.views["clean"].astype(np.float32), atol=2e-2
    )


def test_auto_copes_with_bad_images(trunk, images, tmp_path, caplog) -> None:
    bottom = F.split_backbone(trunk, 0).bottom
    broken = []
    for i in range(3):
        p = tmp_path / f"broken{i}.jpg"
        p.write_bytes(b"not a jpeg")
        broken.append(str(p))
    kw = {"backend": "auto", "progress": False, "skip_bad": True}
    with caplog.at_level("WARNING", logger=F.log.name):
        fs = F.extract_features(bottom, [*broken, *images], PRE, cache_dir=tmp_path / "a", **kw)
    assert fs.bad == broken and len(fs.views["clean"]) == len(images)
    # the problems of the dataset's first images are reported once, by the extraction
    assert sum("skipped 3 unreadable" in r.getMessage() for r in caplog.records) == 1
    # nothing readable: the extraction's own error
    with pytest.raises(BadImageError, match="broken0"):
        F.extract_features(bottom, broken, PRE, cache_dir=tmp_path / "b", backend="auto", progress=False)


@pytest.mark.slow
def test_an_engine_is_built_once_per_model_file(trunk, images, tmp_path, monkeypatch) -> None:
    built = []
    real = F.create_graph_engine

    def counting(name, path, **kw):
        built.append(path)
        return real(name, path, **kw)

    monkeypatch.setattr(F, "create_graph_engine", counting)
    bottom = F.split_backbone(trunk, 0).bottom
    kw = {"cache_dir": tmp_path / "c", "backend": "onnx", "progress": False}
    a = F.extract_features(bottom, images, PRE, **kw)
    b = F.extract_features(bottom, images[:4], PRE, **kw)  # another split, the same model file
    assert len(built) == 1
    np.testing.assert_array_equal(a.views["clean"][:4], b.views["clean"])
    # a model file written again (new weights under the same key) gets a new engine
    (onnx,) = (tmp_path / "c" / "onnx").glob("*.onnx")
    onnx.write_bytes(onnx.read_bytes())
    F.extract_features(bottom, images[:3], PRE, **kw)
    assert len(built) == 2
    # only the last few engines stay loaded
    for k in range(F._ENGINES_KEPT + 1):
        F.extract_features(bottom, images[:2], PRE, **{**kw, "cache_dir": tmp_path / f"more{k}"})
    assert len(F._ENGINES) == F._ENGINES_KEPT


def test_fingerprint_of_a_model_that_takes_only_its_own_size() -> None:
    torch.manual_seed(0)
    fixed = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(3 * 96 * 96, 4)
    )  # no 64-px probe possible
    key = F.module_fingerprint(fixed, 3, 96)
    assert key == F.module_fingerprint(fixed, 3, 96)
    with torch.no_grad():
        fixed[1].weight[0, 0] += 1.0
    assert F.module_fingerprint(fixed, 3, 96) != key
    with pytest.raises(RuntimeError):  # a size it does not take at all is still an error
        F.module_fingerprint(fixed, 3, 80)


@pytest.mark.slow
def test_views_together_decode_once_and_equal_views_one_at_a_time(
    trunk, images, tmp_path, monkeypatch
) -> None:
    # a training run asks for several views at once: each image is decoded once for all of them, and every view's
    # arrays equal those of the view extracted on its own (the seeded augmentations included, on both cores)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    paths = [*images[:2], str(bad), *images[2:]]
    bottom = F.split_backbone(trunk, 2).bottom
    views = ["clean", "hflip", "aug1", "aug2"]
    kw = {"backend": "onnx", "progress": False, "batch_size": 3, "skip_bad": True}
    alone = {
        v: F.extract_features(bottom, paths, PRE, views=[v], cache_dir=tmp_path / f"alone-{v}", **kw).views[v]
        for v in views
    }
    decoded: list[str] = []
    sides: set[int | None] = set()
    load = F.load_image
    monkeypatch.setattr(
        F, "load_image", lambda p, **kw: (decoded.append(p), sides.add(kw.get("min_side")), load(p, **kw))[2]
    )
    torch.set_num_threads(2)
    try:
        together = F.extract_features(bottom, paths, PRE, views=views, cache_dir=tmp_path / "together", **kw)
    finally:
        torch.set_num_threads(1)
    assert sorted(decoded) == sorted(paths)  # once each, bad image included
    assert sides == {PRE.decode_side()}  # large JPEGs at the reduced scale that serving will use
    assert together.bad == [str(bad)] and together.kept.tolist() == [0, 1, 3, 4, 5, 6]
    for v in views:
        np.testing.assert_array_equal(together.views[v], alone[v])
    # augmentations that cannot be planned apart from their pixel work are applied in the main thread instead,
    # to the same result
    from medclf.data import transforms as T

    monkeypatch.setattr(T, "_PLANNABLE", ())
    serial = F.extract_features(bottom, paths, PRE, views=views, cache_dir=tmp_path / "serial", **kw)
    for v in views:
        np.testing.assert_array_equal(serial.views[v], alone[v])


def test_extraction_beside_a_per_image_engine_leaves_torch_threads_as_they_were(
    trunk, images, tmp_path
) -> None:
    bottom = F.split_backbone(trunk, 0).bottom
    seen = []
    engine = F._make_engine(bottom, "k", PRE, "onnx", tmp_path)
    run = engine.run_one
    engine.run_one = lambda feed: (seen.append(torch.get_num_threads()), run(feed))[1]  # type: ignore[method-assign]
    torch.set_num_threads(2)
    try:
        F._run_views(engine, images, PRE, ["clean", "aug1"], "standard", 0, 4, False, False, None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    # while the engine ran, torch (which only transforms images there) kept to one thread per core
    assert seen and set(seen) == {1}


def test_auto_is_onnx_runtime_or_pytorch_for_a_bottom_that_does_not_export(
    trunk, images, tmp_path, monkeypatch
) -> None:
    bottom = F.split_backbone(trunk, 0).bottom
    built: list = []
    make = F._make_engine
    monkeypatch.setattr(F, "_make_engine", lambda *a, **k: (built.append(r := make(*a, **k)), r)[1])
    kw = {"backend": "auto", "progress": False}
    F.extract_features(bottom, images, PRE, cache_dir=tmp_path / "a", **kw)
    assert built[-1].name == "onnx"

    def no_export(*a, **k):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(F, "export_graph", no_export)
    ref = F.extract_features(bottom, images, PRE, cache_dir=tmp_path / "t", backend="torch", progress=False)
    got = F.extract_features(bottom, images, PRE, cache_dir=tmp_path / "b", **kw)
    assert built[-1].name == "torch"
    np.testing.assert_array_equal(got.views["clean"], ref.views["clean"])
    with pytest.raises(MedclfError, match="use backend='torch'"):
        F.extract_features(bottom, images, PRE, cache_dir=tmp_path / "c", backend="onnx", progress=False)
