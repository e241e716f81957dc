"""Bounded load test of `medclf serve` on 127.0.0.1: mixed good and bad uploads, concurrency, memory.

Starts the real server (uvicorn on a socket, in a thread of this process), sends N requests from C threads
(80% valid JPEGs, 20% bad: empty, truncated, text, decompression bomb, over the size limit), and records status
codes, latency percentiles and the server's resident memory along the way. Pass: zero 5xx, every bad upload a
4xx, every good upload a 200, memory flat (growth over the second half of the run < 20 MB).

    python benchmarks/load_test.py [--requests 2000] [--concurrency 8] [--model efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def payloads(limit_bytes: int) -> dict[str, tuple[bytes, str, int]]:
    """kind -> (body, content type, expected status)."""
    from PIL import Image
    from serve_latency import jpeg_bytes

    good = jpeg_bytes(224, 1)
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, format="PNG")  # ~70 kB file, 64 Mpx > the 50 Mpx limit
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
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    import httpx
    from serve_latency import bench_predictor, make_bench_run

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
    from medclf.serve.api import ServerConfig
    from medclf.serve.server import BackgroundServer

    with tempfile.TemporaryDirectory(prefix="medclf-load-") as tmp:
        run_dir = make_bench_run(Path(tmp), args.model)
        predictor = bench_predictor(run_dir, "onnx", 2)
        cfg = ServerConfig(max_upload_bytes=int(limit_mb * 1024 * 1024))
        # the server runs in this process (uvicorn in a thread): RSS covers server and client together
        with BackgroundServer(predictor, cfg) as url:
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
            mem = [rss_mb(os.getpid())]
            results: list[tuple[str, int, float]] = []
            t0 = time.perf_counter()
            chunk = max(1, args.requests // 8)
            with ThreadPoolExecutor(args.concurrency) as pool:
                for i in range(0, len(plan), chunk):
                    results += list(pool.map(send, plan[i : i + chunk]))
                    mem.append(rss_mb(os.getpid()))
            wall = time.perf_counter() - t0
            client.close()

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
    lines = [
        f"## Load test: {args.requests} requests, {args.concurrency} concurrent, {args.model}, ONNX backend",
        "",
        f"{len(good_ms)} valid JPEG uploads and {len(bad_ms)} bad ones "
        f"({', '.join(bad_kinds)}), upload limit {limit_mb:g} MiB, pixel limit 50 Mpx; client and server on "
        f"127.0.0.1 sharing the 2 cores.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| status codes | {', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))} |",
        f"| 5xx or dropped connections | {five} |",
        f"| responses with an unexpected status | {len(wrong)} |",
        f"| throughput | {len(results) / wall:.1f} requests/s ({wall:.1f} s) |",
        f"| latency valid uploads p50 / p90 / p99 (ms, under load) | {q(good_ms)} |",
        f"| latency bad uploads p50 / p90 / p99 (ms, under load) | {q(bad_ms)} |",
        f"| process RSS (server + client) after warm-up → end (MB) | {mem[0]:.0f} → {mem[-1]:.0f} (growth {growth:+.0f}; second half {late:+.0f}) |",
        f"| RSS after each eighth of the requests (MB) | {' → '.join(f'{m:.0f}' for m in mem)} |",
        f"| result | {'PASS' if five == 0 and not wrong and late < 20 else 'FAIL'} |",
    ]
    print("\n".join(lines))
    if wrong:
        print("unexpected:", Counter(wrong).most_common(5))
    if not args.no_write:
        from _results import write_section

        write_section("load", "\n".join(lines))
    return 0 if five == 0 and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
