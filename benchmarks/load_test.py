"""Bounded load test of `medclf serve` on 127.0.0.1: mixed good and bad uploads, hostile clients, memory.

Starts the real server — by default the `medclf serve RUN --port P` command in its own process (``--server
inprocess``: uvicorn in a thread of this process instead) — sends N requests from C threads (80% valid JPEGs, 20%
bad: empty, truncated, text, decompression bomb, over the size limit), and records status codes, latency
percentiles and the server's resident memory along the way. Then two hostile phases: sockets held open idle or
with half-sent headers while /health is timed, and B concurrent uploads of a few-kB lossless WebP whose canvas is
huge (over the pixel limit: refused) or just under it (decoded), with the server's peak memory and /health
latency meanwhile. Pass: zero 5xx, every upload the expected status, memory flat over the second half of the
mixed run (< 20 MB), /health under 1 s while idle sockets are held and while the big canvases decode.

    python benchmarks/load_test.py [--requests 2000] [--concurrency 8] [--model efficientnet_lite0]
        [--idle-sockets 100] [--big-uploads 16] [--server subprocess|inprocess] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory (VmRSS) or its peak since the last reset (VmHWM) of process ``pid``, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss(pid: int) -> bool:
    """Restart VmHWM from the current RSS (Linux: /proc/PID/clear_refs); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def lossless_canvas(side: int) -> bytes:
    """A flat side x side image as lossless WebP: a few kB of file, side² pixels once decoded."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def idle_socket_phase(url: str, n_idle: int, n_half: int = 10, calls: int = 20) -> dict[str, object]:
    """Hold ``n_idle`` silent sockets and ``n_half`` with half-sent headers open while timing /health."""

    host, port = url.rsplit("/", 1)[1].rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(n_idle + n_half)]
    try:
        for s in socks[n_idle:]:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        time.sleep(0.5)
        results = []
        for _ in range(calls):
            results.append(timed_health(url))
            time.sleep(0.05)
    finally:
        for s in socks:
            s.close()
    return {
        "statuses": Counter(s for s, _ in results),
        "max_ms": max(ms for _, ms in results) * 1000,
        "ok": all(s == 200 and sec < 1.0 for s, sec in results),
    }


def timed_health(url: str) -> tuple[int, float]:
    """(status, seconds) of one GET /health; status -1 when the request failed."""
    import httpx

    t = time.perf_counter()
    try:
        status = httpx.get(url + "/health", timeout=10).status_code
    except httpx.HTTPError:
        status = -1
    return status, time.perf_counter() - t


def big_canvas_phase(url: str, server_pid: int, n: int, side: int) -> dict[str, object]:
    """``n`` concurrent uploads of one ``side`` x ``side`` lossless WebP; /health timed and RSS sampled meanwhile."""
    import threading

    import httpx

    data = lossless_canvas(side)
    stop = threading.Event()
    health: list[tuple[int, float]] = []
    rss: list[float] = []

    def watch() -> None:
        while not stop.is_set():
            rss.append(rss_mb(server_pid))
            health.append(timed_health(url))
            time.sleep(0.02)

    def send(_: int) -> int:
        try:
            r = httpx.post(url + "/predict", files={"file": ("big.webp", data, "image/webp")}, timeout=300)
            return r.status_code
        except httpx.HTTPError:
            return -1

    before = rss_mb(server_pid)
    peak_known = reset_peak_rss(server_pid)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(n) as pool:
            statuses = list(pool.map(send, range(n)))
    finally:
        wall = time.perf_counter() - t0
        stop.set()
        watcher.join(timeout=30)
    peak = max([*rss, rss_mb(server_pid, "VmHWM") if peak_known else 0.0])
    return {
        "bytes": len(data),
        "statuses": Counter(statuses),
        "wall_s": wall,
        "rss_before": before,
        "rss_peak": peak,
        "health_max_ms": max((sec for _, sec in health), default=float("nan")) * 1000,
        "health_ok": bool(health) and all(s == 200 and sec < 1.0 for s, sec in health),
    }


def payloads(limit_bytes: int) -> dict[str, tuple[bytes, str, int]]:
    """kind -> (body, content type, expected status)."""
    from PIL import Image
    from serve_latency import jpeg_bytes

    good = jpeg_bytes(224, 1)
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, format="PNG")  # ~70 kB file, 64 Mpx > the pixel limit
    return {
        "good": (good, "image/jpeg", 200),
        "good_png": (jpeg_bytes(300, 2), "image/jpeg", 200),
        "empty": (b"", "image/jpeg", 400),
        "truncated": (good[: len(good) // 3], "image/jpeg", 400),
        "text": (b"this is a text file, not an image\n" * 20, "image/jpeg", 400),
        "wrong_type": (good, "text/plain", 415),
        "bomb": (bomb.getvalue(), "image/png", 413),
        "too_big": (os.urandom(limit_bytes + 1024), "image/jpeg", 413),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument(
        "--idle-sockets", type=int, default=100, help="idle sockets held open (plus 10 half-sent)"
    )
    ap.add_argument("--big-uploads", type=int, default=16, help="concurrent big-canvas uploads")
    ap.add_argument(
        "--server",
        choices=("subprocess", "inprocess"),
        default="subprocess",
        help="subprocess: the real `medclf serve` command (default); inprocess: uvicorn in a thread here",
    )
    ap.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/benchmarks-serving.md alone"
    )
    args = ap.parse_args()

    import httpx
    from serve_latency import make_bench_run

    from medclf.serve.api import ServerConfig

    max_px = ServerConfig().max_pixels
    over_side = max(7000, math.isqrt(2 * max_px))  # 49 Mpx or twice the limit: refused from the header
    under_side = math.isqrt(max_px) - 100  # just under it: decoded in full
    limit_mb = 2.0
    bodies = payloads(int(limit_mb * 1024 * 1024))
    bad_kinds = [k for k in bodies if not k.startswith("good")]
    rng = np.random.default_rng(0)
    plan = [
        (
            ["good", "good_png"][int(rng.integers(0, 2))]
            if rng.random() < 0.8
            else bad_kinds[int(rng.integers(len(bad_kinds)))]
        )
        for _ in range(args.requests)
    ]
    with tempfile.TemporaryDirectory(prefix="medclf-load-") as tmp:
        run_dir = make_bench_run(Path(tmp), args.model)
        if args.server == "subprocess":
            server = serve_subprocess(run_dir, limit_mb, Path(tmp))
        else:
            server = serve_inprocess(run_dir, limit_mb)
        with server as (url, server_pid):
            client = httpx.Client(
                base_url=url, timeout=60, limits=httpx.Limits(max_connections=args.concurrency)
            )

            def send(kind: str) -> tuple[str, int, float]:
                body, ctype, _ = bodies[kind]
                t = time.perf_counter()
                try:
                    r = client.post("/predict", files={"file": ("upload", body, ctype)})
                    status = r.status_code
                except httpx.HTTPError:
                    status = -1  # connection dropped: counted as a failure
                return kind, status, (time.perf_counter() - t) * 1000

            for k in ("good",) * 20:  # warm-up
                send(k)
            mem = [rss_mb(server_pid)]
            results: list[tuple[str, int, float]] = []
            t0 = time.perf_counter()
            chunk = max(1, args.requests // 8)
            with ThreadPoolExecutor(args.concurrency) as pool:
                for i in range(0, len(plan), chunk):
                    results += list(pool.map(send, plan[i : i + chunk]))
                    mem.append(rss_mb(server_pid))
            wall = time.perf_counter() - t0
            client.close()
            idle = idle_socket_phase(url, args.idle_sockets)
            over = big_canvas_phase(url, server_pid, args.big_uploads, over_side)
            under = big_canvas_phase(url, server_pid, args.big_uploads, under_side)

    statuses = Counter(s for _, s, _ in results)
    wrong = [(k, s) for k, s, _ in results if s != bodies[k][2]]
    five = sum(n for s, n in statuses.items() if s >= 500 or s < 0)
    good_ms = [ms for k, s, ms in results if k.startswith("good")]
    bad_ms = [ms for k, s, ms in results if not k.startswith("good")]
    q = lambda v: " / ".join(f"{x:.0f}" for x in np.percentile(v, [50, 90, 99]))  # noqa: E731
    growth = mem[-1] - mem[0]
    # allocator arenas (one per worker thread, ONNX Runtime's per-thread buffers) fill during the first
    # requests; a leak keeps growing after that, so "flat" is judged on the second half of the run
    late = mem[-1] - mem[len(mem) // 2]
    where = (
        "`medclf serve` in its own process"
        if args.server == "subprocess"
        else "the server in a thread of the client's process"
    )
    rss_what = "server process RSS" if args.server == "subprocess" else "process RSS (server + client)"
    lines = [
        f"## Load test: {args.requests} requests, {args.concurrency} concurrent, {args.model}, ONNX backend",
        "",
        f"{len(good_ms)} valid JPEG uploads and {len(bad_ms)} bad ones "
        f"({', '.join(bad_kinds)}), upload limit {limit_mb:g} MiB, pixel limit {max_px / 1e6:g} Mpx; {where}, "
        f"client and server on 127.0.0.1 sharing the {os.cpu_count()} cores.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| status codes | {', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))} |",
        f"| 5xx or dropped connections | {five} |",
        f"| responses with an unexpected status | {len(wrong)} |",
        f"| throughput | {len(results) / wall:.1f} requests/s ({wall:.1f} s) |",
        f"| latency valid uploads p50 / p90 / p99 (ms, under load) | {q(good_ms)} |",
        f"| latency bad uploads p50 / p90 / p99 (ms, under load) | {q(bad_ms)} |",
        f"| {rss_what} after warm-up → end (MB) | {mem[0]:.0f} → {mem[-1]:.0f} (growth {growth:+.0f}; second half {late:+.0f}) |",
        f"| RSS after each eighth of the requests (MB) | {' → '.join(f'{m:.0f}' for m in mem)} |",
        f"| /health while {args.idle_sockets} idle + 10 half-sent sockets are held open (20 calls) | "
        f"{counts(idle['statuses'])}, slowest {idle['max_ms']:.0f} ms |",
    ]
    for label, side, phase in (("over", over_side, over), ("under", under_side, under)):
        lines += [
            f"| {args.big_uploads} concurrent {side} x {side} lossless WebP ({phase['bytes']:,} bytes, "
            f"{side * side / 1e6:.0f} Mpx, {label} the limit) | {counts(phase['statuses'])} in "
            f"{phase['wall_s']:.1f} s; /health meanwhile slowest {phase['health_max_ms']:.0f} ms; {rss_what} "
            f"{phase['rss_before']:.0f} → peak {phase['rss_peak']:.0f} MB |",
        ]
    hostile_ok = (
        idle["ok"]
        and over["statuses"] == Counter({413: args.big_uploads})
        and under["statuses"] == Counter({200: args.big_uploads})
        and over["health_ok"]
        and under["health_ok"]
    )
    passed = five == 0 and not wrong and late < 20 and hostile_ok
    lines += [f"| result | {'PASS' if passed else 'FAIL'} |"]
    print("\n".join(lines))
    if wrong:
        print("unexpected:", Counter(wrong).most_common(5))
    if not args.no_write:
        from _results import write_section

        write_section("load", "\n".join(lines))
    return 0 if five == 0 and not wrong and hostile_ok else 1


def counts(statuses: Counter) -> str:
    return ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items()))


@contextlib.contextmanager
def serve_inprocess(run_dir: Path, limit_mb: float):
    """uvicorn in a thread of this process: the RSS then covers server and client together."""
    from serve_latency import bench_predictor

    from medclf.serve.api import ServerConfig
    from medclf.serve.server import BackgroundServer

    predictor = bench_predictor(run_dir, "onnx", 2)
    cfg = ServerConfig(max_upload_bytes=int(limit_mb * 1024 * 1024))
    with BackgroundServer(predictor, cfg) as url:
        yield url, os.getpid()


@contextlib.contextmanager
def serve_subprocess(run_dir: Path, limit_mb: float, tmp: Path, start_timeout: float = 300):
    """`python -m medclf serve RUN` on a free 127.0.0.1 port; yields (url, server pid) once /health answers."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # the ONNX export and the OOD detector land in a throw-away cache, not ~/.cache
    env = {**os.environ, "MEDCLF_CACHE_DIR": str(tmp / "cache"), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "medclf", "serve", str(run_dir), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend", "onnx", "--max-upload-mb", str(limit_mb)]
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"medclf serve exited with {proc.returncode}:\n{(tmp / 'server.log').read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"medclf serve did not answer /health within {start_timeout:.0f} s")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        text = (tmp / "server.log").read_text(errors="replace")
        if "Traceback" in text:
            print("server log has a traceback:\n" + text[-3000:], file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
