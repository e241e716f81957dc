"""REST API (FastAPI) over one ``Predictor``: /predict, /explain, /health, /model.

Uploads are read into memory with a hard size limit and parsed there (never spooled to a temporary file, as
Starlette's form parser does for large files), checked against the pixel limit from their header, decoded and
run in a few worker threads (never on the event loop, so /health answers while they work), and dropped when the
request ends. Neither the image, its file name nor its metadata is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from medclf import DISCLAIMER, __version__
from medclf._lazy import missing_extra

try:
    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.requests import ClientDisconnect
except ModuleNotFoundError as exc:
    raise missing_extra("serve", "medclf serve (the REST API)", [str(exc.name)]) from None
from medclf.data.images import MAX_PIXELS, decoded_size
from medclf.errors import BadImageError, ConfigError, MedclfError

__all__ = ["ServerConfig", "create_app"]

T = TypeVar("T")

_BIG_PIXELS = 4_000_000
"""Uploads that decode to more pixels than this (or whose size the header does not tell) decode one at a time."""

_IMAGE_TYPES = (
    "image/jpeg",
    "image/jpg",
    "image/png",
    "image/bmp",
    "image/tiff",
    "image/gif",
    "image/webp",
    "application/dicom",
    "application/octet-stream",
)


@dataclass
class ServerConfig:
    """Limits and access control of the REST server."""

    max_upload_bytes: int = 20 * 1024 * 1024
    """Largest request body; bigger uploads get 413 before they are read."""
    max_pixels: int = 16_000_000
    """Uploads that would decode to more pixels get 413, judged from the header before any pixel is decoded
    (a 3 kB lossless WebP can claim 7000 x 7000 pixels and cost 0.8 GB to decode). A JPEG counts at the reduced
    scale it is decoded at (``Preprocessing.decode_side``), so a 24-megapixel camera JPEG passes."""
    request_timeout_s: float = 30.0
    """A request body that takes longer than this to arrive gets 408."""
    header_timeout_s: float = 10.0
    """A connection must send a complete request line and headers within this many seconds of opening (or of
    its previous response); otherwise it is closed, with 408 when it had sent part of a request."""
    max_connections: int = 512
    """Open sockets; past this the one that has waited longest without sending a request is closed."""
    max_requests: int = 16
    """/predict and /explain requests in progress (receiving, queued or computing); more get 503 with
    Retry-After. Idle sockets do not count."""
    workers: int | None = None
    """Threads that decode uploads and run the model (default: the CPU cores, at most 4). Uploads that decode
    to more than 4 Mpx, and DICOM, are also decoded one at a time, so their memory does not grow with the
    number of cores."""
    explain_queue: int = 2
    """Explanations that may wait behind the running one, per kind (Grad-CAM and Grad-CAM++ share one queue,
    Score-CAM has its own); more get 503 with Retry-After."""
    api_key: str | None = None
    """When set, /predict, /explain and /model need the header ``X-API-Key: <key>``."""
    allowed_types: tuple[str, ...] = field(default=_IMAGE_TYPES)
    """Accepted content types of the ``file`` part."""


def _default_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(4, cores)


class _HTTPError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        self.status, self.detail, self.headers = status, detail, headers


@contextlib.contextmanager
def _admit(limiter: anyio.CapacityLimiter, what: str, retry_after_s: int) -> Iterator[None]:
    """Hold one of ``limiter``'s tokens for the block, or answer 503 at once when none is free."""
    try:
        limiter.acquire_nowait()
    except anyio.WouldBlock:
        raise _HTTPError(
            503,
            f"the server is busy ({what}); try again in {retry_after_s} s",
            {"Retry-After": str(retry_after_s)},
        ) from None
    try:
        yield
    finally:
        limiter.release()


class _Lane:
    """Work that runs ``running`` at a time in worker threads, with at most ``waiting`` more queued."""

    def __init__(self, running: int, waiting: int) -> None:
        self.admitted = anyio.CapacityLimiter(running + waiting)
        self.threads = anyio.CapacityLimiter(running)


@dataclass
class _Upload:
    data: bytes
    content_type: str
    fields: dict[str, str]


def _parse_multipart(body: bytes, content_type: str, max_fields: int = 32) -> _Upload:
    """multipart/form-data -> the ``file`` part (bytes) and the text fields, entirely in memory."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise _HTTPError(415, "send the image as multipart/form-data with a field named 'file'")
    parts: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        cur.clear()
        cur.update(headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        cur["headers"][bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"].extend(data[start:end])

    def on_part_end() -> None:
        if len(parts) >= max_fields:
            raise _HTTPError(400, f"too many form fields (limit {max_fields})")
        parts.append(dict(cur))

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except _HTTPError:
        raise
    except Exception:
        raise _HTTPError(
            400, "malformed multipart body; send the image as a form field named 'file'"
        ) from None
    file_part: dict[str, Any] | None = None
    fields: dict[str, str] = {}
    for part in parts:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        if name == "file":
            file_part = part
        elif name:
            fields[name] = bytes(part["data"]).decode("utf-8", "replace").strip()
    if file_part is None:
        raise _HTTPError(422, "no 'file' field in the form; send the image as multipart field 'file'")
    ptype = file_part["headers"].get(b"content-type", b"application/octet-stream").decode("latin-1")
    return _Upload(bytes(file_part["data"]), ptype.split(";")[0].strip().lower(), fields)


def _upload_schema(extra_fields: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {"file": {"type": "string", "format": "binary", "description": "the image"}}
    for name, spec in extra_fields.items():
        if spec["kind"] == "numeric":
            props[name] = {"type": "number", "description": f"metadata: {name} (optional)"}
        else:
            props[name] = {
                "type": "string",
                "enum": spec["categories"],
                "description": f"metadata: {name} (optional)",
            }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": props, "required": ["file"]}
                }
            },
        }
    }


def create_app(predictor: Any, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``predictor`` (a ``medclf.serve.Predictor``)."""
    cfg = config or ServerConfig()
    app = FastAPI(
        title="medclf",
        version=__version__,
        description=f"Medical image classifier ({', '.join(predictor.classes)}). {DISCLAIMER}",
    )
    uploads = _Uploads(predictor, cfg)

    @app.exception_handler(_HTTPError)
    async def _http_error(_: Request, exc: _HTTPError) -> JSONResponse:
        return JSONResponse(
            {"detail": exc.detail, "disclaimer": DISCLAIMER}, status_code=exc.status, headers=exc.headers
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the model is loaded."""
        return {"status": "ok", "classes": predictor.classes, "backend": predictor.backend.name}

    @app.get("/model")
    async def model(request: Request) -> dict[str, Any]:
        """The model card: classes, operating point, preprocessing, validation metrics."""
        uploads.check_key(request)
        return predictor.model_card()

    _add_predict(app, uploads)
    _add_explain(app, uploads)
    return app


class _Uploads:
    """What every upload route shares: the API key, the body's size and time limits, the content type, the
    metadata fields, and the worker threads that decode the image and run the model."""

    def __init__(self, predictor: Any, cfg: ServerConfig) -> None:
        self.predictor = predictor
        self.cfg = cfg
        self.meta_fields = predictor.metadata_fields
        self.requests = anyio.CapacityLimiter(cfg.max_requests)
        self.work = anyio.CapacityLimiter(cfg.workers or _default_workers())
        self.big = anyio.CapacityLimiter(1)
        # Grad-CAM calls run one at a time (they hook the model), Score-CAM's on a copy of its own: a slow
        # Score-CAM then delays neither predictions nor Grad-CAM, and its queue is short because each costs seconds
        self.explain_lanes = {"grad": _Lane(1, cfg.explain_queue), "score": _Lane(1, cfg.explain_queue)}

    def admit(self) -> contextlib.AbstractContextManager[None]:
        """One of the ``max_requests`` places for a request in progress, or 503 at once."""
        return _admit(self.requests, f"{self.cfg.max_requests} requests in progress", 1)

    def check_key(self, request: Request) -> None:
        if self.cfg.api_key is None:
            return
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), self.cfg.api_key.encode()):
            raise _HTTPError(401, "missing or wrong API key; send it in the X-API-Key header")

    async def read(self, request: Request) -> tuple[bytes, dict[str, Any] | None]:
        """The ``file`` part's bytes and the metadata fields (nothing decoded yet)."""
        cfg = self.cfg
        self.check_key(request)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cfg.max_upload_bytes:
            raise _HTTPError(413, f"upload too large (limit {cfg.max_upload_bytes // (1024 * 1024)} MiB)")
        try:
            body = await asyncio.wait_for(
                _read_body(request, cfg.max_upload_bytes), timeout=cfg.request_timeout_s
            )
        except asyncio.TimeoutError:
            raise _HTTPError(
                408, f"the upload took longer than {cfg.request_timeout_s:.0f} s; try again"
            ) from None
        except ClientDisconnect:  # an everyday event, not a server error with a traceback in the log
            raise _HTTPError(400, "the client closed the connection before the upload ended") from None
        upload = _parse_multipart(body, request.headers.get("content-type", ""))
        if not upload.data:
            raise _HTTPError(400, "the uploaded file is empty (0 bytes); choose the image file again")
        if upload.content_type not in cfg.allowed_types:
            raise _HTTPError(
                415,
                f"content type {upload.content_type!r} is not an image; send JPEG, PNG, BMP, TIFF, GIF, WebP or DICOM",
            )
        return upload.data, self.metadata(upload.fields)

    async def run(self, fn: Callable[[Any], T], data: bytes, threads: anyio.CapacityLimiter) -> T:
        """``fn(image)`` in a worker thread on the decoded upload, after its header passed the pixel limit."""
        cfg, predictor = self.cfg, self.predictor
        size = await anyio.to_thread.run_sync(
            functools.partial(decoded_size, data, min_side=predictor.serving.preprocessing.decode_side()),
            limiter=self.work,
        )
        if size is not None and size[0] * size[1] > cfg.max_pixels:
            w, h = size
            raise _HTTPError(
                413,
                f"the uploaded image is too large: {w} x {h} = {w * h:,} pixels, and this server decodes at "
                f"most {cfg.max_pixels:,} (a decompression-bomb guard); downscale it, or start the server "
                "with a higher --max-megapixels if you trust the source",
            )
        # the header has been checked; DICOM (size unknown) is checked from its Rows and Columns in load
        limit = cfg.max_pixels if size is None else max(cfg.max_pixels, MAX_PIXELS)

        def job() -> T:
            try:
                image = predictor.load(data, "upload", max_pixels=limit)
            except BadImageError as exc:
                status = 413 if "too large" in exc.reason else 400
                raise _HTTPError(status, f"the uploaded file cannot be used: {exc.reason}") from None
            return fn(image)

        if size is not None and size[0] * size[1] <= _BIG_PIXELS:
            return await anyio.to_thread.run_sync(job, limiter=threads)
        async with self.big:  # one big decode at a time: its memory, not the core count, sets the ceiling
            return await anyio.to_thread.run_sync(job, limiter=threads)

    def metadata(self, fields: dict[str, str]) -> dict[str, Any] | None:
        """The form's metadata fields the model takes, numbers parsed; None for a model without metadata."""
        if not self.meta_fields:
            return None
        out: dict[str, Any] = {}
        for name, spec in self.meta_fields.items():
            value = fields.get(name)
            if value in (None, ""):
                continue
            if spec["kind"] == "numeric":
                try:
                    out[name] = float(value)
                except ValueError:
                    raise _HTTPError(
                        422, f"metadata field {name!r} must be a number, got {value!r}"
                    ) from None
            else:
                out[name] = value
        return out


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, read into memory; 413 as soon as it grows past ``max_bytes``."""
    buf = bytearray()
    async for chunk in request.stream():
        buf.extend(chunk)
        if len(buf) > max_bytes:
            raise _HTTPError(413, f"upload too large (limit {max_bytes // (1024 * 1024)} MiB)")
    return bytes(buf)


def _add_predict(app: FastAPI, uploads: _Uploads) -> None:
    """POST /predict: the prediction for one uploaded image."""
    predictor = uploads.predictor

    def predict_image(image: Any, metadata: dict[str, Any] | None) -> Any:
        try:
            return predictor.predict([image], metadata)[0]
        except MedclfError as exc:
            raise _HTTPError(422, str(exc)) from None

    @app.post("/predict", openapi_extra=_upload_schema(uploads.meta_fields))
    async def predict(request: Request) -> dict[str, Any]:
        """Predict one image (multipart field ``file``; metadata as optional form fields)."""
        with uploads.admit():
            data, metadata = await uploads.read(request)
            pred = await uploads.run(functools.partial(predict_image, metadata=metadata), data, uploads.work)
        out = pred.to_dict()
        out["threshold"] = predictor.threshold
        out["positive_class"] = predictor.positive_class
        out["positive_classes"] = predictor.positive_classes
        return out


def _add_explain(app: FastAPI, uploads: _Uploads) -> None:
    """POST /explain: a class-activation heat map over one uploaded image, as a PNG."""
    predictor = uploads.predictor

    @app.post(
        "/explain",
        openapi_extra=_upload_schema(uploads.meta_fields),
        responses={200: {"content": {"image/png": {}}, "description": "heat map over the image"}},
        response_class=Response,
    )
    async def explain(
        request: Request, method: str = "gradcam", alpha: float = 0.5, target: str | None = None
    ):
        """Grad-CAM (or gradcam++, scorecam) heat map over the image, as a PNG."""
        from medclf.explain import CAM_METHODS

        if method not in CAM_METHODS:
            raise _HTTPError(422, f"unknown method {method!r}; choose one of {', '.join(CAM_METHODS)}")
        if not 0.0 <= alpha <= 1.0:
            raise _HTTPError(422, "alpha must be between 0 and 1")
        if not predictor.can_explain:
            raise _HTTPError(
                501, "this model cannot be explained (no image model or no PyTorch weights loaded)"
            )

        def explain_image(image: Any, metadata: dict[str, Any] | None) -> tuple[bytes, dict[str, str]]:
            try:
                ex = predictor.explain(image, metadata, method=method, target=target, alpha=alpha)
            except ConfigError as exc:
                raise _HTTPError(422, str(exc)) from None
            buf = io.BytesIO()
            ex.overlay.save(buf, format="PNG")
            headers = {
                "X-Medclf-Target": ex.target,
                "X-Medclf-Decision": ex.prediction.decision,
                "X-Medclf-Refer": str(ex.prediction.refer).lower(),
                "X-Medclf-Disclaimer": DISCLAIMER,
            }
            return buf.getvalue(), headers

        lane = uploads.explain_lanes["score" if method == "scorecam" else "grad"]
        with uploads.admit():
            data, metadata = await uploads.read(request)
            with _admit(lane.admitted, f"{method} explanations queued", 5):
                png, headers = await uploads.run(
                    functools.partial(explain_image, metadata=metadata), data, lane.threads
                )
        return Response(png, media_type="image/png", headers=headers)
