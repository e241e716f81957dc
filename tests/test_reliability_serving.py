"""`medclf serve` under hostile or heavy clients, over real sockets on 127.0.0.1, and the processes medclf starts.

Idle and half-sent connections, requests past the admission limit, uploads whose few bytes claim a huge canvas,
many big uploads at once, slow explanations, ONNX Runtime's telemetry, and `kill` of `medclf app`.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, WebPImagePlugin

from _fixtures_serve import png_bytes, synthetic_image
from medclf.serve import Predictor
from medclf.serve.api import ServerConfig
from medclf.serve.server import BackgroundServer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def predictor(tiny_run) -> Predictor:
    return Predictor.from_run(tiny_run, backend="onnx")


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _img() -> bytes:
    return png_bytes(synthetic_image(1, np.random.default_rng(1)))


def _canvas(fmt: str, side: int) -> bytes:
    """A flat image of side x side pixels: a few kB as lossless WebP or PNG, side² pixels once decoded."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buf, format=fmt, lossless=True)
    return buf.getvalue()


def _timed_health(url: str) -> tuple[int, float]:
    t = time.perf_counter()
    r = httpx.get(url + "/health", timeout=10)
    return r.status_code, time.perf_counter() - t


def _recv_all(s: socket.socket, timeout: float) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(4096):
            out += chunk
    except TimeoutError:
        return out + b"<still open>"
    except ConnectionResetError:
        pass
    return out


def test_idle_and_half_sent_connections_do_not_lock_out_requests(predictor) -> None:
    with BackgroundServer(predictor) as url:
        socks = [socket.create_connection(("127.0.0.1", _port(url))) for _ in range(80)]
        try:
            for s in socks[:6]:  # a request line and part of the headers, never finished
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            time.sleep(0.2)
            for _ in range(5):
                status, seconds = _timed_health(url)
                assert status == 200 and seconds < 1.0, (status, seconds)
            r = httpx.post(url + "/predict", files={"file": ("a.png", _img(), "image/png")}, timeout=10)
            assert r.status_code == 200, r.text
        finally:
            for s in socks:
                s.close()


def test_header_deadline_closes_idle_half_sent_and_trickling_connections(predictor) -> None:
    with BackgroundServer(predictor, ServerConfig(header_timeout_s=0.5)) as url:
        addr = ("127.0.0.1", _port(url))
        with (
            socket.create_connection(addr) as idle,
            socket.create_connection(addr) as half,
            socket.create_connection(addr) as trickle,
        ):
            half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            # a complete request whose body never ends: answered, then the connection must not linger
            trickle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\nab")
            t = time.monotonic()
            assert _recv_all(idle, 5) == b""  # closed without a word: it never asked anything
            reply = _recv_all(half, 5)
            assert reply.startswith(b"HTTP/1.1 408") and b"headers took longer than 0.5 s" in reply, reply
            with pytest.raises(OSError):
                for _ in range(50):
                    trickle.sendall(b"x")
                    time.sleep(0.1)
            assert time.monotonic() - t < 4
        assert _timed_health(url)[0] == 200


def test_open_socket_cap_closes_the_longest_waiting(predictor) -> None:
    with BackgroundServer(predictor, ServerConfig(max_connections=20, header_timeout_s=60)) as url:
        addr = ("127.0.0.1", _port(url))
        socks = [socket.create_connection(addr) for _ in range(20)]
        try:
            time.sleep(0.2)
            status, seconds = _timed_health(url)  # the 21st connection: the first idle one makes room
            assert status == 200 and seconds < 1.0
            assert _recv_all(socks[0], 3) == b""
            assert _recv_all(socks[-1], 0.3) == b"<still open>"
        finally:
            for s in socks:
                s.close()


def test_requests_past_the_admission_limit_get_503_with_retry_after(predictor, capfd) -> None:
    cfg = ServerConfig(max_requests=2, request_timeout_s=20)
    with BackgroundServer(predictor, cfg) as url, httpx.Client(base_url=url, timeout=10) as client:
        slow = [socket.create_connection(("127.0.0.1", _port(url))) for _ in range(2)]
        try:
            for s in slow:  # admitted, then the body stalls: two requests in progress
                s.sendall(
                    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    b"Content-Length: 5000\r\n\r\n--b\r\n"
                )
            files = {"file": ("a.png", _img(), "image/png")}
            deadline = time.monotonic() + 10
            while (r := client.post("/predict", files=files)).status_code != 503:
                assert time.monotonic() < deadline, r.status_code
                time.sleep(0.05)
            assert r.headers["retry-after"] == "1" and "busy" in r.json()["detail"]
            assert client.get("/health").status_code == 200  # liveness is not a request that queues
        finally:
            for s in slow:
                s.close()
        deadline = time.monotonic() + 10
        while (r := client.post("/predict", files=files)).status_code != 200:
            assert time.monotonic() < deadline, r.status_code
            time.sleep(0.05)
    # the two clients that hung up mid-upload ended their requests quietly
    assert "Traceback" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def huge_canvases() -> dict[str, bytes]:
    return {"webp": _canvas("WEBP", 7000), "png": _canvas("PNG", 7000)}


@pytest.mark.parametrize("path", ["/predict", "/explain"])
@pytest.mark.parametrize("kind", ["webp", "png"])
def test_tiny_file_huge_canvas_is_refused_before_decoding(
    predictor, huge_canvases, kind, path, monkeypatch
) -> None:
    data = huge_canvases[kind]
    assert len(data) < 200_000  # 49 Mpx (0.15 GB as RGB) in a few kB: under the 50 Mpx library limit
    decoded = []

    def spy(self, *args, **kwargs):
        decoded.append(self.format)
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", spy)
    with BackgroundServer(predictor) as url:
        t = time.perf_counter()
        r = httpx.post(url + path, files={"file": (f"scan.{kind}", data, f"image/{kind}")}, timeout=30)
        seconds = time.perf_counter() - t
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "too large: 7000 x 7000 = 49,000,000 pixels" in detail and "16,000,000" in detail, detail
    assert "--max-megapixels" in detail and "scan" not in detail
    assert decoded == [] and seconds < 2


def test_big_jpeg_counts_at_the_scale_it_is_decoded_at(predictor) -> None:
    photo = synthetic_image(1, np.random.default_rng(3), size=64).resize((6000, 4000))
    jpeg, png = io.BytesIO(), io.BytesIO()
    photo.save(jpeg, format="JPEG")  # a 24-megapixel camera photo, decoded at 1/8 scale for this model
    photo.save(png, format="PNG")  # the same pixels as PNG: decoded in full, so over the 16 Mpx limit
    with BackgroundServer(predictor) as url:
        r = httpx.post(url + "/predict", files={"file": ("a.jpg", jpeg.getvalue(), "image/jpeg")}, timeout=60)
        refused = httpx.post(
            url + "/predict", files={"file": ("a.png", png.getvalue(), "image/png")}, timeout=60
        )
    assert r.status_code == 200, r.text
    assert r.json()["probabilities"] == pytest.approx(predictor.predict(jpeg.getvalue())[0].probabilities)
    assert refused.status_code == 413 and "6000 x 4000 = 24,000,000 pixels" in refused.json()["detail"]


@pytest.mark.slow
def test_concurrent_big_uploads_keep_health_responsive(predictor) -> None:
    data = _canvas("WEBP", 3900)  # 15 Mpx, under the limit: each one is decoded in full
    stop = threading.Event()
    health: list[tuple[int, float]] = []

    with BackgroundServer(predictor) as url:

        def poll_health() -> None:
            while not stop.is_set():
                health.append(_timed_health(url))
                time.sleep(0.05)

        def upload(_: int) -> int:
            files = {"file": ("big.webp", data, "image/webp")}
            return httpx.post(url + "/predict", files=files, timeout=120).status_code

        poller = threading.Thread(target=poll_health)
        poller.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(upload, range(8)))
        finally:
            stop.set()
            poller.join(timeout=30)
    assert statuses == [200] * 8
    assert len(health) >= 5 and {s for s, _ in health} == {200}, health
    assert max(seconds for _, seconds in health) < 1.0, health


def test_score_cam_queue_is_bounded_and_grad_cam_is_not_held_up(predictor, monkeypatch) -> None:
    import medclf.explain

    real = medclf.explain.compute_cam
    running, release = threading.Event(), threading.Event()

    def slow_score_cam(*args, **kwargs):  # a Score-CAM that takes as long as the test wants
        if kwargs.get("method") == "scorecam":
            running.set()
            assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(medclf.explain, "compute_cam", slow_score_cam)
    files = {"file": ("a.png", _img(), "image/png")}
    with BackgroundServer(predictor, ServerConfig(explain_queue=1)) as url, ThreadPoolExecutor(3) as pool:

        def explain(method: str) -> httpx.Response:
            return httpx.post(f"{url}/explain?method={method}", files=files, timeout=60)

        try:
            first = pool.submit(explain, "scorecam")
            assert running.wait(30)
            # one more fits the queue, the other is turned away at once (which one depends on arrival order)
            more = [pool.submit(explain, "scorecam") for _ in range(2)]
            done, _ = wait(more, timeout=30, return_when=FIRST_COMPLETED)
            assert len(done) == 1
            turned_away = done.pop().result()
            assert turned_away.status_code == 503, turned_away.text
            assert turned_away.headers["retry-after"] == "5" and "scorecam" in turned_away.json()["detail"]
            t = time.perf_counter()
            grad = httpx.post(f"{url}/explain?method=gradcam", files=files, timeout=30)
            assert grad.status_code == 200 and time.perf_counter() - t < 10
            assert httpx.post(f"{url}/predict", files=files, timeout=30).status_code == 200
        finally:
            release.set()
        assert first.result(timeout=60).status_code == 200
        assert sorted(f.result(timeout=60).status_code for f in more) == [200, 503]


@pytest.mark.slow
def test_onnx_runtime_telemetry_is_off_in_medclf_processes(tiny_run, tmp_path) -> None:
    """ONNX Runtime's official builds write ~/.cache/Microsoft/DeveloperTools/.onnxruntime/onnxruntime.db."""
    home = tmp_path / "home"
    home.mkdir()
    image = tmp_path / "a.png"
    image.write_bytes(_img())
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    cli = subprocess.run(
        [sys.executable, "-m", "medclf", "predict", str(tiny_run), str(image)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cli.returncode == 0, cli.stderr
    assert not (home / ".cache" / "Microsoft").exists(), sorted(map(str, home.rglob("*")))


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killing_medclf_app_stops_streamlit(tiny_run, tmp_path, sig) -> None:
    pytest.importorskip("streamlit")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "medclf", "app", str(tiny_run), "--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "app.log"
    with open(log, "wb") as fh:
        parent = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while True:  # Streamlit is serving once its port takes connections
            assert parent.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "medclf app did not start:\n" + log.read_text()
            children = _children(parent.pid)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        assert children, "medclf app runs Streamlit in a child process"
        parent.send_signal(sig)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 15
        while any(_alive(c) for c in children):
            assert time.monotonic() < deadline, "Streamlit outlived `medclf app`"
            time.sleep(0.1)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        for c in children:  # only what this test started, should it have been left behind
            if _alive(c):
                os.kill(c, signal.SIGKILL)
