"""One Predictor shared by many threads: each call returns what it returns alone, bad inputs included.

tests/test_serve_predictor.py already checks plain concurrent predictions and explanations on both backends.
This adds what a busy server sees: a fusion model with per-request metadata, batches of several images, bad
uploads failing in some threads while good ones succeed in others, and Grad-CAM interleaved with predictions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from _fixtures_serve import noise_image, png_bytes, synthetic_image
from medclf.errors import BadImageError
from medclf.serve import Predictor

torch.set_num_threads(1)


def _requests() -> list[tuple[str, Any, Any]]:
    rng = np.random.default_rng(7)
    good = [png_bytes(synthetic_image(i % 2, rng)) for i in range(6)]
    reqs: list[tuple[str, Any, Any]] = []
    for i, img in enumerate(good):
        reqs.append(("one", img, {"age": 20 + 12 * i, "sex": ["male", "female"][i % 2]}))
    reqs.append(("one", good[0], None))  # no metadata: all unknown
    reqs.append(("one", good[1], {"age": float("nan"), "sex": "other"}))  # NaN and an unseen category
    reqs.append(("batch", good[:4], [{"age": 30}, None, {"sex": "female"}, {"age": 80, "sex": "male"}]))
    reqs.append(("one", png_bytes(noise_image(3)), {"age": 50}))
    reqs.append(("bad", good[2][: len(good[2]) // 2], None))  # truncated
    reqs.append(("bad", b"", None))
    reqs.append(("bad", b"plain text, not an image" * 4, None))
    # explanations interleaved with predictions: Grad-CAM hooks must not see other threads' forward passes
    reqs += [("explain", good[k], {"age": 30 + 10 * k, "sex": "male"}) for k in (0, 3, 4, 5)]
    return reqs


def _call(p: Predictor, req: tuple[str, Any, Any]) -> Any:
    kind, img, meta = req
    try:
        if kind == "explain":
            ex = p.explain(img, meta)
            return ("cam", np.asarray(ex.cam), ex.prediction.probabilities)
        return [x.probabilities for x in p.predict(img, meta)]
    except BadImageError as exc:
        return ("error", exc.reason)


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_shared_predictor_threads_equal_sequential(fusion_run, backend: str) -> None:
    p = Predictor.from_run(fusion_run, backend=backend)
    reqs = [r for r in _requests() if backend == "torch" or r[0] != "explain"]
    expected = [_call(p, r) for r in reqs]
    assert sum(isinstance(e, tuple) and e[0] == "error" for e in expected) == 3
    order = list(range(len(reqs))) * 4
    np.random.default_rng(0).shuffle(order)
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: (i, _call(p, reqs[i])), order))
    for i, result in got:
        exp = expected[i]
        if isinstance(exp, tuple) and exp[0] == "error":
            assert result == exp, reqs[i][0]
        elif isinstance(exp, tuple):  # Grad-CAM: same map and same prediction
            np.testing.assert_allclose(result[1], exp[1], atol=1e-5)
            assert result[2] == pytest.approx(exp[2], abs=1e-6)
        else:
            assert len(result) == len(exp)
            for r, e in zip(result, exp, strict=True):
                assert r == pytest.approx(e, abs=1e-6), (i, reqs[i][0])


def test_gradcam_while_other_threads_predict(fusion_run) -> None:
    """Grad-CAM hooks the CAM layer; torch-backend predictions running meanwhile must not feed those hooks."""
    import threading

    p = Predictor.from_run(fusion_run, backend="torch")
    rng = np.random.default_rng(3)
    imgs = [png_bytes(synthetic_image(i % 2, rng)) for i in range(4)]
    expected = [p.explain(im, {"age": 50}).cam for im in imgs]
    stop = threading.Event()
    x = np.stack([p.preprocess(p.load(im)) for im in imgs]).astype(np.float32)
    meta = p.encode_metadata([{"age": 20}] * len(imgs), len(imgs))

    def hammer() -> None:  # forward passes back to back: the widest window for a stray hook call
        while not stop.is_set():
            p.predict_arrays(x, meta)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        got = [p.explain(im, {"age": 50}).cam for _ in range(8) for im in imgs]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    for k, cam in enumerate(got):
        np.testing.assert_allclose(cam, expected[k % len(imgs)], atol=1e-5)
