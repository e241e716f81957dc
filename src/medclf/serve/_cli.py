"""`medclf predict`, `medclf export`, `medclf serve`, `medclf app`."""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

__all__ = ["check_port", "expand_inputs", "register"]

_BACKENDS = ("onnx", "openvino", "torch")
_BACKEND_HELP = (
    "inference engine: onnx (ONNX Runtime, default), openvino (pip install 'medclf[openvino]') or torch "
    "(eager PyTorch; an exported .onnx file runs on onnx instead)"
)
_BF16_HELP = (
    "with --backend openvino: bfloat16 arithmetic on CPUs with AMX or AVX512-BF16 (faster, but probabilities "
    "move by a few hundredths: docs/benchmarks-cpu.md)"
)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict images, folders or globs with a trained run",
        description="Predict images (files, folders, globs; JPEG, PNG, DICOM, ...) with a run folder. Unreadable "
        "files are reported by name and skipped. Research use only: not a diagnosis.",
    )
    p.add_argument("run_dir", help="run folder written by `medclf train`")
    p.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--csv", help="also write the predictions to this CSV file")
    p.add_argument("--backend", choices=_BACKENDS, default="onnx", help=_BACKEND_HELP)
    p.add_argument("--bf16", action="store_true", help=_BF16_HELP)
    p.add_argument(
        "--no-ood", action="store_true", help="skip the out-of-distribution check (refer on confidence only)"
    )
    p.set_defaults(func=_predict)

    p = subparsers.add_parser(
        "export",
        help="export a run to ONNX (dynamic batch, serving metadata, parity check)",
        description="Export a run to one self-contained ONNX file; the result is checked against PyTorch and the "
        "maximum difference printed. --int8 also writes a dynamically quantized copy and prints its cost.",
    )
    p.add_argument("run_dir")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--int8", action="store_true", help="also write OUT.int8.onnx (dynamic int8 quantization)")
    p.add_argument(
        "--no-ood", action="store_true", help="leave the out-of-distribution score out of the graph"
    )
    p.set_defaults(func=_export)

    p = subparsers.add_parser(
        "serve",
        help="REST API (FastAPI + uvicorn): /predict, /explain, /health, /model",
        description="Serve a run (or an exported .onnx file) over HTTP. Uploads stay in memory and are never "
        "logged. Bind to 127.0.0.1 unless a reverse proxy with TLS sits in front.",
    )
    p.add_argument("run_dir", help="run folder, or an .onnx file from `medclf export` (no /explain then)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--api-key", default=None, help="require header X-API-Key (default: $MEDCLF_API_KEY if set)"
    )
    p.add_argument("--backend", choices=_BACKENDS, default="onnx", help=_BACKEND_HELP)
    p.add_argument("--bf16", action="store_true", help=_BF16_HELP)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (default 20)")
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=16.0,
        help="uploads that would decode to more pixels get 413, judged from the header (default 16; a JPEG "
        "counts at the reduced scale it is decoded at)",
    )
    p.add_argument("--workers-threads", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_serve)

    p = subparsers.add_parser(
        "app",
        help="Streamlit web app: upload, prediction, threshold, Grad-CAM, model card",
        description="Start the web app for a run folder (streamlit run). Uploads stay in memory.",
    )
    p.add_argument("run_dir")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1")
    p.set_defaults(func=_app)


def expand_inputs(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (recursive, image suffixes) and globs -> (files in a stable order, inputs that matched nothing)."""
    files: list[Path] = []
    missing: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                q for q in p.rglob("*") if q.suffix.lower() in _IMAGE_SUFFIXES and not q.name.startswith(".")
            )
            files += found
            if not found:
                missing.append(f"{item} (folder without images)")
        elif p.exists() or p.is_symlink():
            files.append(p)
        elif glob.has_magic(item):
            found = sorted(Path(q) for q in glob.glob(item, recursive=True) if Path(q).is_file())
            files += found
            if not found:
                missing.append(f"{item} (pattern matched nothing)")
        else:
            missing.append(f"{item} (not found)")
    seen: set[Path] = set()
    unique = []
    for f in files:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique, missing


def _predict(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from medclf import DISCLAIMER
    from medclf.errors import MedclfError
    from medclf.serve.predictor import NonFiniteOutputError

    files, missing = expand_inputs(args.paths)
    for m in missing:
        print(f"skipped: {m}", file=sys.stderr)
    if not files:
        raise MedclfError("no image files to predict; pass image files, folders or quoted glob patterns")
    predictor = _load_predictor(args.run_dir, args.backend, ood=not args.no_ood, bf16=args.bf16)
    rows: list[dict[str, object]] = []
    bad: list[str] = []
    batch_x: list[np.ndarray] = []
    batch_paths: list[Path] = []

    def flush() -> None:
        if not batch_x:
            return
        meta = predictor.encode_metadata(None, len(batch_x))
        try:
            preds = predictor.predict_arrays(np.stack(batch_x), meta)
        except NonFiniteOutputError as exc:  # those images are errors, never decisions
            preds = exc.predictions
        for path, pred in zip(batch_paths, preds, strict=True):
            if pred is None:
                bad.append(f"{path}: {NonFiniteOutputError.REASON}")
                tqdm.write(f"error: {bad[-1]}", file=sys.stderr)
                continue
            row: dict[str, object] = {"path": str(path)}
            row.update({f"prob_{c}": round(v, 6) for c, v in pred.probabilities.items()})
            row.update(
                label=pred.label,
                decision=pred.decision,
                confidence=round(pred.confidence, 6),
                refer=pred.refer,
                refer_reasons="; ".join(pred.refer_reasons),
                ood_score=None if pred.ood_score is None else round(pred.ood_score, 3),
            )
            rows.append(row)
        batch_x.clear()
        batch_paths.clear()

    for path in tqdm(files, desc="predict", unit="img", file=sys.stderr, disable=None):
        try:
            batch_x.append(predictor.preprocess(predictor.load(path)))
            batch_paths.append(path)
        except MedclfError as exc:
            bad.append(str(exc))
            tqdm.write(f"skipped: {exc}", file=sys.stderr)
            continue
        except OSError as exc:  # the file vanished or became unreadable between listing and reading
            bad.append(f"{path}: {exc.strerror or exc}")
            tqdm.write(f"skipped: {path}: {exc.strerror or exc}", file=sys.stderr)
            continue
        if len(batch_x) >= predictor.batch_size:
            flush()
    flush()

    width = max((len(str(r["path"])) for r in rows), default=4)
    for r in rows:
        flag = "  REFER: " + str(r["refer_reasons"]) if r["refer"] else ""
        print(f"{str(r['path']).ljust(width)}  {r['decision']}  (p={r['confidence']:.3f}){flag}")
    if args.csv:
        import pandas as pd

        from medclf._atomic import atomic_write_text

        atomic_write_text(args.csv, pd.DataFrame(rows).to_csv(index=False))
        print(f"wrote {args.csv}")
    print(f"{len(rows)} predicted, {len(bad) + len(missing)} skipped")
    print(DISCLAIMER)
    if not rows:
        return 2
    return 1 if bad or missing else 0


def _load_predictor(run: str, backend: str, ood: bool = True, bf16: bool = False):
    from medclf.serve.predictor import Predictor

    precision = "bf16" if bf16 else "f32"
    if run.endswith(".onnx") and Path(run).is_file():
        return Predictor.from_onnx(
            run, backend="onnx" if backend == "torch" else backend, precision=precision
        )
    return Predictor.from_run(run, backend=backend, ood=ood, precision=precision)


def _export(args: argparse.Namespace) -> int:
    from medclf import DISCLAIMER
    from medclf.serve.export import export_onnx

    report = export_onnx(args.run_dir, args.out, int8=args.int8, ood=not args.no_ood)
    for line in report.lines():
        print(line)
    print(DISCLAIMER)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from medclf.serve.api import ServerConfig
    from medclf.serve.server import run_server

    api_key = args.api_key or os.environ.get("MEDCLF_API_KEY") or None
    if not args.max_megapixels > 0:
        from medclf.errors import ConfigError

        raise ConfigError(f"--max-megapixels {args.max_megapixels:g}: give a positive number, e.g. 16")
    check_port(args.host, args.port)  # before the model loads: a busy port is known in a millisecond
    predictor = _load_predictor(args.run_dir, args.backend, bf16=args.bf16)
    cfg = ServerConfig(
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_pixels=int(args.max_megapixels * 1_000_000),
        api_key=api_key,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host}: put a TLS reverse proxy in front and set --api-key",
            file=sys.stderr,
        )
    run_server(predictor, host=args.host, port=args.port, config=cfg)
    return 0


def _app(args: argparse.Namespace) -> int:
    from medclf.serve.server import run_app

    check_port(args.host, args.port)
    return run_app(args.run_dir, host=args.host, port=args.port)


def check_port(host: str, port: int) -> None:
    """Raise ``ConfigError`` unless a server could listen on ``host:port`` now (a bind test, as the server binds)."""
    import errno
    import socket

    from medclf.errors import ConfigError

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: choose a port number from 1 to 65535, e.g. --port 8000")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        raise ConfigError(
            f"--host {host}: not an address of this machine; use 127.0.0.1 (this machine only) or 0.0.0.0 (all)"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and Streamlit set it
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host} is already in use (another server?); stop that server, or pass "
                    f"another port, e.g. --port {port + 1 if port < 65535 else 8000}"
                ) from None
            if exc.errno == errno.EACCES:
                raise ConfigError(
                    f"port {port} on {host} needs administrator rights; pass a port above 1023, e.g. --port 8000"
                ) from None
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass --host 127.0.0.1 or an address "
                "of this machine"
            ) from None
