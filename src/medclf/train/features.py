"""Frozen-backbone features computed once and cached on disk: the expensive half of the `cached` strategy.

A backbone is split in two (:func:`split_backbone`): a frozen ``bottom`` that runs once per image and view, and a
trainable ``top`` (the last ``finetune_blocks`` blocks, the head convolution and the pooling). With
``finetune_blocks=0`` the bottom is the whole trunk and the cache holds pooled features ``[N, D]``; otherwise it holds
the bottom's feature maps ``[N, C, H, W]`` (float16), from which the top blocks train without the bottom running again.

Each view of a dataset is one safetensors file plus a JSON sidecar with its SHA-256, keyed by the data fingerprint
(paths, sizes, modification times), the bottom's weights, the preprocessing, the augmentation policy and the view.
A file whose checksum does not match is rebuilt. Views: ``clean`` (the image itself), ``hflip`` / ``vflip``
(test-time flip averaging) and ``aug1``, ``aug2``, ... (random augmentations, seeded per view and image).

The bottom runs on a ``medclf.runtime`` engine: ONNX Runtime by default (``backend="auto"``; channels-last PyTorch
when the bottom does not export), or the one named (``torch``, ``onnx``, ``openvino``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from medclf._atomic import atomic_path, atomic_write_json
from medclf.data.images import load_image
from medclf.data.transforms import Preprocessing, create_transform
from medclf.errors import BadImageError, DataError, MedclfError
from medclf.runtime.engine import (
    DEFAULT_ENGINE,
    Engine,
    OnnxRuntimeEngine,
    TorchEngine,
    create_graph_engine,
)
from medclf.runtime.onnx import export_graph

__all__ = [
    "BackboneSplit",
    "FeatureSet",
    "default_cache_dir",
    "extract_features",
    "split_backbone",
]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1
BACKENDS = ("auto", "torch", "onnx", "openvino")
DEFAULT_BACKEND = DEFAULT_ENGINE
"""What ``backend="auto"`` runs the bottom on: ONNX Runtime (PyTorch when the bottom does not export)."""


def default_cache_dir() -> Path:
    """``$MEDCLF_CACHE_DIR/features``, else ``~/.cache/medclf/features``."""
    base = os.environ.get("MEDCLF_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "medclf") / "features"


# ---------------------------------------------------------------------------------------------------------------
# splitting a backbone into a frozen bottom and a trainable top


class _Pool(nn.Module):
    # pooled features whatever the trunk returns: [B, C, H, W] -> [B, C]; [B, D] passes through
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) if x.ndim == 4 else x


class _Bottom(nn.Module):
    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class _Features(nn.Module):
    # the whole trunk of any model with the standard surface (or a timm model): image -> pooled features
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.pool = _Pool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.model.forward_features(x))


class _Top(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module], tail: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.tail = tail
        self.pool = _Pool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.tail(self.blocks(x)))


@dataclass
class BackboneSplit:
    """A model's trunk cut in two. ``top(bottom(x))`` equals the model's pooled ``forward_features(x)``."""

    bottom: nn.Module
    """Frozen part that the cache stores the output of."""
    top: nn.Module
    """Trainable part between the cached maps and the pooled features (identity pooling when nothing is cut)."""
    finetune_blocks: int
    """Number of backbone blocks in ``top``."""
    trunk: nn.Module | None = None
    """The timm EfficientNet-style trunk that was cut (None when ``finetune_blocks == 0``)."""
    block_paths: list[str] = field(default_factory=list)
    """Module names (inside ``trunk``) of the blocks in ``top``."""


def find_trunk(model: nn.Module) -> nn.Module | None:
    """The timm EfficientNet/MobileNet-style trunk inside ``model`` (one with conv_stem, blocks, conv_head)."""
    for module in model.modules():
        if all(hasattr(module, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
            return module
    return None


def _flat_blocks(trunk: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for i, stage in enumerate(trunk.blocks):
        if isinstance(stage, nn.Sequential):
            out.extend((f"blocks.{i}.{j}", b) for j, b in enumerate(stage))
        else:
            out.append((f"blocks.{i}", stage))
    return out


def split_backbone(model: nn.Module, finetune_blocks: int = 0) -> BackboneSplit:
    """Cut ``model`` so that its last ``finetune_blocks`` blocks (plus the head convolution) can train from cache.

    ``finetune_blocks=0`` works for every model (the bottom is ``forward_features`` + pooling). Cutting blocks needs a
    timm EfficientNet-style trunk (EfficientNet, EfficientNet-Lite, MobileNetV2/V3); the parts share parameters with
    ``model``, so training ``top`` trains the model itself.
    """
    if finetune_blocks <= 0:
        return BackboneSplit(bottom=_Features(model), top=_Pool(), finetune_blocks=0)
    trunk = find_trunk(model)
    if trunk is None:
        raise MedclfError(
            f"train.finetune_blocks={finetune_blocks} with strategy=cached needs an EfficientNet/MobileNet-style timm "
            f"backbone; {type(model).__name__} has none: set train.finetune_blocks=0 or use strategy=finetune"
        )
    blocks = _flat_blocks(trunk)
    if finetune_blocks > len(blocks):
        raise MedclfError(
            f"train.finetune_blocks={finetune_blocks} but the backbone has only {len(blocks)} blocks: choose 0..{len(blocks)}"
        )
    cut = len(blocks) - finetune_blocks
    stem = nn.Sequential(trunk.conv_stem, trunk.bn1)
    tail = nn.Sequential(trunk.conv_head, trunk.bn2)
    return BackboneSplit(
        bottom=_Bottom(stem, [b for _, b in blocks[:cut]]),
        top=_Top([b for _, b in blocks[cut:]], tail),
        finetune_blocks=finetune_blocks,
        trunk=trunk,
        block_paths=[n for n, _ in blocks[cut:]],
    )


# ---------------------------------------------------------------------------------------------------------------
# fingerprints


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def paths_fingerprint(paths: Sequence[str]) -> str:
    """Cheap data fingerprint: every path with its size and modification time, in order."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:20]


def module_fingerprint(module: nn.Module, in_chans: int, size: int) -> str:
    """Hash of what ``module`` computes: its output on a fixed random probe image (rounded).

    Hashing the output rather than the state dict covers exactly the weights the bottom uses (not the classifier
    that shares the model with it) and any structural change; a rare rounding flip only costs a recomputation.
    A convolutional trunk uses every weight at any input size, so the probe is at most 64 px (a twelfth of the
    arithmetic at 224 px; the cache key holds the input size separately). A model that only takes its own size
    (a ViT) gets a probe of that size.
    """
    g = torch.Generator().manual_seed(1234)
    module = module.eval()
    for side in dict.fromkeys((min(size, 64), size)):
        probe = torch.rand(1, in_chans, side, side, generator=g) * 4 - 2
        try:
            with torch.inference_mode():
                y = module(probe).float().numpy()
            break
        except Exception:  # an input size this model does not take
            if side == size:
                raise
    return hashlib.sha256(np.round(y, 3).tobytes() + str(y.shape).encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------------------------------
# images and views


def _view_transform(pre: Preprocessing, view: str, augment: str) -> Callable[[Image.Image], torch.Tensor]:
    if view == "clean":
        return create_transform(pre, "none")
    if view in ("hflip", "vflip"):
        base = create_transform(pre, "none")
        dim = -1 if view == "hflip" else -2
        return lambda im: base(im).flip(dim)
    if view.startswith("aug") and view[3:].isdigit():
        return create_transform(pre, augment)
    raise MedclfError(f"unknown feature view {view!r}: use clean, hflip, vflip or aug1, aug2, ...")


def _seed_for(seed: int, view: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{view}:{index}".encode()).digest()[:4], "little")


# ---------------------------------------------------------------------------------------------------------------
# engines


def _export_onnx(module: nn.Module, size: int, in_chans: int, path: Path) -> Path:
    if path.is_file():
        return path
    example = torch.zeros(1, in_chans, size, size)
    data = export_graph(copy.deepcopy(module).eval(), (example,), ["x"], ["y"])
    with atomic_path(path, suffix=".onnx") as tmp:
        tmp.write_bytes(data)
    return path


_ENGINES: dict[tuple[str, str, int, int, int], Engine] = {}
_ENGINES_KEPT = 4
_ENGINES_LOCK = threading.Lock()


def _graph_engine(name: str, path: Path) -> Engine:
    """The graph engine ``name`` on the ONNX file ``path``, built once per process and file version.

    A training run extracts its train, validation and test splits and every view in separate calls; building the
    engine (and for OpenVINO, compiling the graph) is paid once, not per call. The last few engines stay loaded.
    """
    st = path.stat()
    # a file written again is a new engine; the engines size themselves by torch's thread count
    key = (name, str(path), st.st_mtime_ns, st.st_size, torch.get_num_threads())
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(key, None)
        if engine is None:
            # ONNX Runtime: one-thread calls, one image each, that ``_run_views`` queues beside the decoding
            engine = create_graph_engine(
                name, path, threads=torch.get_num_threads(), outputs=["y"], single_image_session=False
            )
        _ENGINES[key] = engine  # most recently used last
        while len(_ENGINES) > _ENGINES_KEPT:
            del _ENGINES[next(iter(_ENGINES))]
    return engine


def _make_engine(bottom: nn.Module, key: str, pre: Preprocessing, backend: str, cache_dir: Path) -> Engine:
    """The engine for ``backend``; ``auto`` is ``DEFAULT_BACKEND`` (ONNX Runtime), or PyTorch for a bottom that
    does not export."""
    if backend not in BACKENDS:
        raise MedclfError(f"unknown feature backend {backend!r}: choose {', '.join(BACKENDS)}")
    if backend == "torch":
        # a copy: the bottom shares parameters with the model being trained
        return TorchEngine(copy.deepcopy(bottom), inputs=["x"], outputs=["y"], channels_last=True)
    onnx_path = cache_dir / "onnx" / f"{key}.onnx"
    try:
        _export_onnx(bottom, pre.input_size, pre.in_chans, onnx_path)
    except Exception as exc:  # export coverage varies by model; PyTorch always works
        if backend != "auto":
            raise MedclfError(f"ONNX export of the backbone failed ({exc}); use backend='torch'") from None
        log.info("ONNX export failed (%s); using PyTorch", exc)
        return _make_engine(bottom, key, pre, "torch", cache_dir)
    return _graph_engine(DEFAULT_BACKEND if backend == "auto" else backend, onnx_path)


# ---------------------------------------------------------------------------------------------------------------
# cache files


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_view(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    from safetensors.numpy import load_file

    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") != _file_sha256(path):
            raise ValueError("checksum mismatch")
        arrays = load_file(str(path))
        return arrays["x"], arrays["kept"], list(meta.get("bad", []))
    except Exception as exc:  # corrupt or truncated: rebuild rather than train on garbage
        log.warning("feature cache %s is corrupt (%s); recomputing it", path, exc)
        for p in (path, meta_path):
            p.unlink(missing_ok=True)
        return None


def _write_view(path: Path, x: np.ndarray, kept: np.ndarray, bad: list[str], info: dict[str, Any]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({"x": np.ascontiguousarray(x), "kept": kept.astype(np.int64)}, str(tmp))
    atomic_write_json(path.with_suffix(".json"), {**info, "sha256": _file_sha256(path), "bad": bad})


# ---------------------------------------------------------------------------------------------------------------
# extraction


@dataclass
class FeatureSet:
    """Cached bottom outputs for a list of images, one array per view."""

    views: dict[str, np.ndarray]
    """view name -> ``[N_kept, D]`` float32 pooled features or ``[N_kept, C, H, W]`` float16 maps."""
    kept: np.ndarray
    """Indices (into the requested paths) of the images that decoded; the rows of every view array."""
    bad: list[str]
    """Paths skipped as unreadable (only with ``skip_bad``)."""
    seconds: float = 0.0
    """Time spent computing (0 when everything came from the cache)."""


def extract_features(
    bottom: nn.Module,
    paths: Sequence[str],
    pre: Preprocessing,
    *,
    views: Sequence[str] = ("clean",),
    augment: str = "standard",
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    backend: str = "auto",
    batch_size: int = 16,
    skip_bad: bool = False,
    progress: bool = True,
    half: bool | None = None,
) -> FeatureSet:
    """Run the frozen ``bottom`` over ``paths`` once per view, reading and writing the disk cache.

    ``backend``: ``auto`` (``DEFAULT_BACKEND``: ONNX Runtime, or PyTorch for a bottom that does not export),
    ``onnx``, ``openvino`` or ``torch``. ``batch_size``: images decoded per step (on every core, then the engine
    runs them). ONNX Runtime runs one image per call on each core, beside the decoding; OpenVINO runs calls of
    ``medclf.runtime.engine.ENGINE_BATCH`` images on all cores, which stay in the CPU's cache. Graph engines are
    built once per process and exported model. ``half`` stores float16 (default: for feature maps, which are large; pooled features stay
    float32).
    Raises BadImageError for the first unreadable image unless ``skip_bad``, which skips and lists them.
    """
    paths = [str(p) for p in paths]
    if not paths:
        raise DataError("no images to extract features from: the split has no rows for this part")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    bottom = bottom.eval()
    model_key = _sha(
        [module_fingerprint(bottom, pre.in_chans, pre.input_size), pre.to_dict(), _CACHE_VERSION]
    )
    data_key = paths_fingerprint(paths)
    folder = cache_dir / f"{model_key}-{data_key}"

    results: dict[str, np.ndarray] = {}
    kept: np.ndarray | None = None
    bad: list[str] = []
    todo: list[str] = []
    for view in views:
        vkey = view if not view.startswith("aug") else f"{view}-{augment}-s{seed}"
        got = _read_view(folder / f"{vkey}.safetensors")
        if got is None:
            todo.append(view)
            continue
        results[view], kept, bad = got
    seconds = 0.0
    if todo:
        engine = _make_engine(bottom, model_key, pre, backend, cache_dir)
        t0 = time.perf_counter()
        xs, k, b = _run_views(engine, paths, pre, todo, augment, seed, batch_size, skip_bad, progress, half)
        if b:  # every view skips the same images: say so once
            log.warning("skipped %d unreadable image(s): %s", len(b), ", ".join(b[:10]))
        for view in todo:
            vkey = view if not view.startswith("aug") else f"{view}-{augment}-s{seed}"
            info = {
                "view": view,
                "augment": augment,
                "seed": seed,
                "n": len(paths),
                "version": _CACHE_VERSION,
            }
            _write_view(folder / f"{vkey}.safetensors", xs[view], k, b, info)
            results[view], kept, bad = xs[view], k, b
        seconds = time.perf_counter() - t0
    assert kept is not None
    for view, x in results.items():
        if len(x) != len(kept):  # a view cached before an image became unreadable: recompute everything
            raise DataError(
                f"feature cache {folder} is inconsistent across views ({view}); delete that folder"
            )
    return FeatureSet(views={v: results[v] for v in views}, kept=kept, bad=bad, seconds=seconds)


def _run_one(engine: OnnxRuntimeEngine, x: np.ndarray) -> np.ndarray:
    return engine.run_one({"x": x})[0]


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` for the block (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_views(
    engine: Engine,
    paths: list[str],
    pre: Preprocessing,
    views: Sequence[str],
    augment: str,
    seed: int,
    batch_size: int,
    skip_bad: bool,
    progress: bool,
    half: bool | None,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Every view of ``paths`` through ``engine``, each image decoded once for all views."""
    from tqdm.auto import tqdm

    transforms = {view: _view_transform(pre, view, augment) for view in views}
    min_side = pre.decode_side()
    # A seeded view draws its random parameters in the main thread, in image order, from a per-image seed, so that
    # the same view of the same image has the same pixels however the work is scheduled. The pixel work itself runs
    # on every core when the draws can be taken apart from it (``plan``); otherwise it waits for the main thread.
    seeded = [v for v in views if v.startswith("aug")]
    planned = [v for v in seeded if getattr(transforms[v], "plannable", False)]
    serial = [v for v in seeded if v not in planned]

    def draw(i: int) -> dict[str, Any]:
        plans = {}
        for view in planned:
            torch.manual_seed(_seed_for(seed, view, i))
            plans[view] = transforms[view].plan()  # type: ignore[attr-defined]
        return plans

    def decode(
        i: int, plans: dict[str, Any]
    ) -> tuple[int, dict[str, Image.Image | torch.Tensor] | None, BadImageError | None]:
        try:
            im = load_image(paths[i], min_side=min_side)  # DICOM, EXIF, size limits, BadImageError
        except BadImageError as exc:
            return i, None, exc
        out: dict[str, Image.Image | torch.Tensor] = {}
        for view, transform in transforms.items():
            if view in plans:
                out[view] = transform.apply(im, plans[view])  # type: ignore[attr-defined]
            else:
                out[view] = im if view in serial else transform(im)
        return i, out, None

    out: dict[str, list[np.ndarray]] = {view: [] for view in views}
    kept: list[int] = []
    bad: list[str] = []
    # ONNX Runtime's one-thread calls run one image each, queued in this function's pool beside the decoding
    per_image = isinstance(engine, OnnxRuntimeEngine)
    label = ", ".join(views) if len(views) <= 3 else f"{len(views)} views"
    bar = tqdm(total=len(paths), desc=f"features [{label}]", unit="img", disable=not progress, leave=False)

    def collect(pending: dict[str, list[Callable[[], np.ndarray]]], n: int) -> None:
        for view, got in pending.items():
            if got:
                y = np.concatenate([get() for get in got])
                store = np.float16 if (half if half is not None else y.ndim == 4) else np.float32
                out[view].append(y.astype(store))
        bar.update(n)

    # Decode a batch on every core (each image once, then each view's transform), then run the engine on it. An
    # engine that takes one image per call and core (``per_image``) gets its calls queued in the same pool, behind
    # which the next batch's decoding queues: a core that finishes its images starts decoding while the other still
    # computes, and nothing waits at a barrier. Beside such an engine torch only transforms images, one thread per
    # core: its own thread pool would contend with the engine's. An engine that spreads each image over every core
    # runs alone instead, because a decoding thread beside its threads takes a core from one of them and the others
    # wait for it at every layer.
    workers = max(1, torch.get_num_threads())
    with (
        _torch_threads(1) if per_image else contextlib.nullcontext(),
        concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        pending: dict[
            str, list[Callable[[], np.ndarray]]
        ] = {}  # the engine's results for the batch in flight
        pending_n = 0
        for start in range(0, len(paths), batch_size):
            batch = range(start, min(start + batch_size, len(paths)))
            tensors: dict[str, list[torch.Tensor]] = {view: [] for view in views}
            decoded = [pool.submit(decode, i, draw(i)) for i in batch]
            for future in decoded:
                i, images, exc = future.result()
                if images is None:
                    assert exc is not None
                    if not skip_bad:
                        raise BadImageError(
                            exc.path,
                            exc.reason
                            + "; fix or remove it, or pass --skip-bad (data.skip_bad: true in a recipe)",
                        ) from None
                    bad.append(exc.path)
                    continue
                for view in serial:  # reproducible augmentation: same view, same image -> same pixels
                    torch.manual_seed(_seed_for(seed, view, i))
                    images[view] = transforms[view](images[view])
                for view in views:
                    tensors[view].append(images[view])  # type: ignore[arg-type]
                kept.append(i)
            # the previous batch's engine calls (queued before this batch's decoding)
            collect(pending, pending_n)
            pending, pending_n = {}, len(batch)
            for view, batch_tensors in tensors.items():
                if not batch_tensors:
                    continue
                if per_image:
                    # each image goes to the engine as it is (no stacking copy)
                    pending[view] = [
                        pool.submit(_run_one, engine, t.numpy()[None]).result for t in batch_tensors
                    ]
                else:
                    (y,) = engine.run({"x": torch.stack(batch_tensors).numpy()})
                    pending[view] = [lambda y=y: y]
        collect(pending, pending_n)
    bar.close()
    if not kept:
        raise DataError(f"none of the {len(paths)} images could be read (first: {bad[0] if bad else '?'})")
    return {view: np.concatenate(out[view]) for view in views}, np.asarray(kept, dtype=np.int64), bad
