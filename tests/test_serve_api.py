"""REST API over a real socket on 127.0.0.1: predictions, explanations, 4xx checks, API key, privacy."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from _fixtures_serve import files_containing, noise_image, png_bytes, synthetic_image
from medclf import DISCLAIMER
from medclf.serve import Predictor
from medclf.serve.api import ServerConfig
from medclf.serve.server import BackgroundServer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run, backend="onnx")


@pytest.fixture(scope="module")
def server(predictor):
    cfg = ServerConfig(max_upload_bytes=200_000, max_pixels=250_000)
    with BackgroundServer(predictor, cfg) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _img(label: int = 1, seed: int = 1) -> bytes:
    return png_bytes(synthetic_image(label, np.random.default_rng(seed)))


def test_health_model_openapi(server) -> None:
    assert server.get("/health").json()["status"] == "ok"
    card = server.get("/model").json()
    assert card["classes"] == ["benign", "malignant"] and "val" in card["metrics"]
    schema = server.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "file" in body["multipart/form-data"]["schema"]["properties"]
    assert {"/health", "/model", "/predict", "/explain"} <= set(schema["paths"])


def test_predict_matches_predictor(server, predictor) -> None:
    data = _img()
    r = server.post("/predict", files={"file": ("lesion.png", data, "image/png")})
    assert r.status_code == 200
    body = r.json()
    expected = predictor.predict(data)[0]
    assert body["probabilities"] == pytest.approx(expected.probabilities)
    assert body["label"] == expected.label and body["decision"] == expected.decision
    assert body["refer"] is expected.refer and body["disclaimer"] == DISCLAIMER
    jpeg = io.BytesIO()
    synthetic_image(0, np.random.default_rng(2)).save(jpeg, format="JPEG")
    r = server.post("/predict", files={"file": ("x.jpg", jpeg.getvalue(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["decision"] == "benign"


def test_noise_upload_is_referred(server) -> None:
    r = server.post("/predict", files={"file": ("n.png", png_bytes(noise_image()), "image/png")})
    assert r.status_code == 200 and r.json()["refer"] is True


def test_explain_returns_png(server) -> None:
    r = server.post("/explain?method=gradcam%2B%2B&alpha=0.3", files={"file": ("a.png", _img(), "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == (40, 40) and r.headers["x-medclf-target"] in ("benign", "malignant")
    bad = server.post("/explain?method=lime", files={"file": ("a.png", _img(), "image/png")})
    assert bad.status_code == 422


@pytest.mark.parametrize(
    ("name", "data", "ctype", "status", "words"),
    [
        ("empty.png", b"", "image/png", 400, "empty"),
        ("cut.png", None, "image/png", 400, "truncated"),
        ("notes.jpg", b"patient notes, not pixels" * 4, "image/jpeg", 400, "not an image"),
        ("notes.txt", b"hello", "text/plain", 415, "not an image"),
        ("huge.png", "bomb", "image/png", 413, "too large"),
        ("big.png", "big", "image/png", 413, "too large"),
    ],
)
def test_bad_uploads_get_clear_4xx(server, name, data, ctype, status, words) -> None:
    if data is None:
        data = _img()[:200]
    elif data == "bomb":  # tiny file, 1000 x 1000 pixels > the 250k limit
        data = png_bytes(Image.new("L", (1000, 1000)))
    elif data == "big":
        data = os.urandom(300_000)
    r = server.post("/predict", files={"file": (name, data, ctype)})
    assert r.status_code == status, r.text
    assert words in r.json()["detail"] and name not in r.json()["detail"]


def test_malformed_requests(server) -> None:
    assert server.post("/predict", content=_img(), headers={"content-type": "image/png"}).status_code == 415
    r = server.post("/predict", files={"image": ("a.png", _img(), "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]
    r = server.post(
        "/predict", content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xx"}
    )
    assert r.status_code in (400, 422)


def test_concurrent_requests(server, predictor) -> None:
    imgs = [_img(i % 2, i) for i in range(16)]

    def post(data: bytes) -> dict:
        return server.post("/predict", files={"file": ("a.png", data, "image/png")}).json()

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(post, imgs))
    for data, body in zip(imgs, got, strict=True):
        assert body["probabilities"] == pytest.approx(predictor.predict(data)[0].probabilities)


def test_api_key(predictor) -> None:
    with BackgroundServer(predictor, ServerConfig(api_key="s3cret")) as url, httpx.Client(base_url=url) as c:
        files = {"file": ("a.png", _img(), "image/png")}
        assert c.post("/predict", files=files).status_code == 401
        assert c.post("/predict", files=files, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.get("/model").status_code == 401
        assert c.post("/predict", files=files, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200


def test_fusion_metadata_fields(fusion_run) -> None:
    p = Predictor.from_run(fusion_run, backend="onnx")
    with BackgroundServer(p) as url, httpx.Client(base_url=url) as c:
        schema = c.get("/openapi.json").json()
        props = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert {"age", "sex"} <= set(props["properties"])
        files = {"file": ("a.png", _img(), "image/png")}
        young = c.post("/predict", files=files, data={"age": "20", "sex": "male"}).json()
        old = c.post("/predict", files=files, data={"age": "90", "sex": "female"}).json()
        assert young["probabilities"] == pytest.approx(
            p.predict(_img(), {"age": 20, "sex": "male"})[0].probabilities
        )
        assert young["probabilities"] != old["probabilities"]
        assert c.post("/predict", files=files, data={"age": "old"}).status_code == 422


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_uploads_never_reach_disk_or_logs(tiny_run, tmp_path) -> None:
    """Run `medclf serve` with its own HOME/TMPDIR/cwd, upload marked files, then search disk and logs."""
    marker = f"MARKER-{uuid.uuid4().hex}"
    name = f"patient-{uuid.uuid4().hex[:12]}.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", marker)
    buf = io.BytesIO()
    synthetic_image(1, np.random.default_rng(9)).save(buf, format="PNG", pnginfo=info)
    good = buf.getvalue()
    big = good + os.urandom(2_000_000)  # past Starlette's 1 MB in-memory spool size: must still stay in RAM
    home, tmpd, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    for d in (home, tmpd, cwd):
        d.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"},  # medclf sets it itself
        "HOME": str(home),
        "TMPDIR": str(tmpd),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    port = _free_port()
    log = tmp_path / "server.log"
    start = time.time()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medclf", "serve", str(tiny_run), "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, "server did not start"
            time.sleep(0.2)
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.post("/predict", files={"file": (name, good, "image/png")}).status_code == 200
            assert c.post("/predict", files={"file": (name, big, "image/png")}).status_code == 200
            assert c.post("/explain", files={"file": (name, good, "image/png")}).status_code == 200
            r = c.post("/predict", files={"file": (name, marker.encode() * 10, "image/png")})
            assert r.status_code == 400 and marker not in r.text and name not in r.text
            r = c.post("/predict", files={"file": (name, good, "image/png")}, data={"patient_id": marker})
            assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log.read_text(errors="replace")
    assert "POST /predict" in text  # the access log is on, and yet:
    assert marker not in text and name not in text
    needles = [marker.encode(), name.encode(), good[100:164]]
    for root in (home, tmpd, cwd, tiny_run, Path("/tmp"), Path("/var/tmp")):
        assert files_containing(root, needles, start) == [], root
    assert not (home / ".cache" / "Microsoft").exists()  # ONNX Runtime's telemetry store


def test_slow_upload_times_out(predictor) -> None:
    cfg = ServerConfig(request_timeout_s=0.5)
    with BackgroundServer(predictor, cfg) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 5000\r\n\r\n--b\r\n"
            )
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408")
