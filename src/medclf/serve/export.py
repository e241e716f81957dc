"""ONNX export of a run: one self-contained file that ONNX Runtime can serve without medclf's training code.

The graph takes ``image`` [B, C, H, W] (and ``meta`` [B, M] for fusion models) and returns ``logits`` and
``ood_score`` (the Mahalanobis out-of-distribution score, computed in the graph so the detector travels with
the model). Everything else serving needs (classes, preprocessing, threshold, temperature, refer threshold,
metadata encoder) is in the model's ``metadata_props``. The export is checked against PyTorch before it is
written.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from medclf import DISCLAIMER, __version__
from medclf.data.transforms import Preprocessing
from medclf.errors import MedclfError
from medclf.runtime.decision import calibrated_probabilities, decide
from medclf.runtime.engine import Engine, OnnxRuntimeEngine, TorchEngine
from medclf.runtime.onnx import export_graph, parity_gap
from medclf.serve.ood import FeatureOOD, split_paths

if TYPE_CHECKING:
    import onnx

    from medclf.serve.predictor import ServingInfo

__all__ = ["PARITY_TOLERANCE", "ExportReport", "build_onnx", "export_onnx", "read_onnx"]

PARITY_TOLERANCE = 1e-4
"""Largest allowed |ONNX - PyTorch| difference of any class probability (and logit)."""
_PREFIX = "medclf."


class _ServingModule(nn.Module):
    """image (+ meta) -> (logits, ood_score): the model and the OOD detector as one graph."""

    def __init__(self, model: nn.Module, ood: FeatureOOD | None) -> None:
        super().__init__()
        self.model = model
        self.uses_images = int(getattr(model, "num_features", 0) or 0) > 0
        self.has_ood = ood is not None and self.uses_images
        self.normalize = bool(ood is not None and ood.normalize)
        self.low_rank = False
        if self.has_ood:
            assert ood is not None
            self.register_buffer("ood_mean", torch.from_numpy(np.asarray(ood.mean, np.float32)))
            factors = ood.low_rank()
            self.low_rank = factors is not None
            if factors is not None:  # the usual case: fewer fit images than features (FeatureOOD.low_rank)
                self.register_buffer("ood_scale", torch.tensor(factors[0], dtype=torch.float32))
                self.register_buffer("ood_basis", torch.from_numpy(factors[1]))
            else:
                self.register_buffer("ood_precision", torch.from_numpy(np.asarray(ood.precision, np.float32)))

    def forward(
        self, image: torch.Tensor, meta: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.uses_images:
            logits = self.model(image, meta)
            return logits, logits[:, 0] * 0.0
        feats = self.model.forward_features(image)
        logits = self.model.forward_head(feats, meta)
        if not self.has_ood:
            return logits, logits[:, 0] * 0.0
        f = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12) if self.normalize else feats
        d = f - self.ood_mean
        if self.low_rank:
            return logits, self.ood_scale * (d * d).sum(dim=1) - (d @ self.ood_basis).square().sum(dim=1)
        return logits, ((d @ self.ood_precision) * d).sum(dim=1)


def _metadata_props(serving: ServingInfo, ood: FeatureOOD | None) -> dict[str, str]:
    props = {
        "classes": serving.classes,
        "preprocessing": serving.preprocessing.to_dict(),
        "threshold": serving.threshold,
        "positive_class": serving.positive_class,
        "positive_classes": serving.positive_classes,
        "temperature": serving.temperature,
        "refer_below": serving.refer_below,
        "metadata_encoder": serving.metadata_encoder,
        "model_name": serving.model_name,
        "ood": ood.info() if ood is not None else None,
        "medclf_version": __version__,
        "disclaimer": DISCLAIMER,
    }
    return {_PREFIX + k: json.dumps(v) for k, v in props.items()}


def build_onnx(model: nn.Module, serving: ServingInfo, ood: FeatureOOD | None = None) -> onnx.ModelProto:
    """Export ``model`` (+ the OOD detector) with a dynamic batch axis and the serving metadata; checked."""
    import onnx

    module = _ServingModule(model, ood).eval()
    pre = serving.preprocessing
    x = torch.zeros(2, pre.in_chans, pre.input_size, pre.input_size)
    num_meta = int(getattr(model, "num_meta", 0) or 0)
    args: tuple[torch.Tensor, ...] = (x,)
    names = ["image"]
    if num_meta > 0:
        args = (x, torch.zeros(2, num_meta))
        names.append("meta")
    data = export_graph(module, args, names, ["logits", "ood_score"])
    proto = onnx.load_from_string(data)
    onnx.helper.set_model_props(proto, _metadata_props(serving, ood if module.has_ood else None))
    proto.doc_string = f"medclf {serving.model_name}: {DISCLAIMER}"
    onnx.checker.check_model(proto)
    return proto


def read_onnx(path: str | os.PathLike[str]) -> tuple[onnx.ModelProto, ServingInfo, dict[str, Any] | None]:
    """Load and check an exported file; returns (model, serving info, OOD info or None)."""
    import onnx

    from medclf.serve.predictor import ServingInfo

    path = Path(path)
    if not path.is_file():
        raise MedclfError(
            f"{path}: ONNX file not found; export one with `medclf export RUN_DIR --out FILE.onnx`"
        )
    try:
        # never follow external-data references: a model file must not make us read other files
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise MedclfError(
            f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc}); export it again"
        ) from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise MedclfError(
            f"{path}: refers to external weight files; medclf serves self-contained exports only"
        )
    props = {p.key[len(_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(_PREFIX)}
    try:
        meta = {k: json.loads(v) for k, v in props.items()}
        serving = ServingInfo(
            classes=[str(c) for c in meta["classes"]],
            preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
            threshold=meta.get("threshold"),
            positive_class=meta.get("positive_class"),
            positive_classes=[str(c) for c in meta.get("positive_classes") or []],
            temperature=float(meta.get("temperature") or 1.0),
            refer_below=float(meta.get("refer_below") or 0.6),
            metadata_encoder=meta.get("metadata_encoder"),
            model_name=str(meta.get("model_name") or ""),
            extra={"exported_by": meta.get("medclf_version")},
        )
    except (KeyError, TypeError, ValueError, json.JSONDecodeError):
        raise MedclfError(
            f"{path}: no medclf serving metadata (classes, preprocessing); export it with `medclf export`"
        ) from None
    return proto, serving, meta.get("ood")


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and measured."""

    path: Path
    bytes: int
    max_abs_diff_probs: float
    """Largest |ONNX - PyTorch| class probability over the parity inputs."""
    max_abs_diff_logits: float
    parity_inputs: str
    int8_path: Path | None = None
    int8: dict[str, Any] = field(default_factory=dict)
    """int8 vs fp32: max/mean probability difference, decision agreement, accuracy when labels are known."""

    def lines(self) -> list[str]:
        out = [
            f"wrote {self.path} ({self.bytes / 1e6:.1f} MB)",
            f"parity vs PyTorch on {self.parity_inputs}: max |Δprob| = {self.max_abs_diff_probs:.2e}, "
            f"max |Δlogit| = {self.max_abs_diff_logits:.2e} (tolerance {PARITY_TOLERANCE:.0e})",
        ]
        if self.int8_path is not None:
            q = self.int8
            line = (
                f"int8 (dynamic quantization) {self.int8_path} ({q['bytes'] / 1e6:.1f} MB): vs fp32 on {q['inputs']}: "
                f"max |Δprob| = {q['max_abs_diff_probs']:.4f}, mean |Δprob| = {q['mean_abs_diff_probs']:.4f}, "
                f"same decision {q['decision_agreement']:.1%}"
            )
            if "accuracy_fp32" in q:
                line += f", accuracy {q['accuracy_fp32']:.3f} -> {q['accuracy_int8']:.3f}"
            out.append(line)
        return out


def _parity_inputs(
    predictor: Any, max_images: int = 16
) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    """Real validation/test images of the run when they are on this machine, else random tensors."""
    splits = split_paths(predictor.run_dir) if predictor.run_dir else {}
    xs: list[np.ndarray] = []
    labels: list[str] = []
    for split in ("val", "test", "train"):
        rows = _split_labels(predictor.run_dir, split) if split in splits else []
        for p, label in rows:
            if len(xs) >= max_images:
                break
            try:
                xs.append(predictor.preprocess(predictor.load(p)))
                labels.append(label)
            except MedclfError:
                continue
        if xs:
            break
    if xs:
        x = np.stack(xs).astype(np.float32)
        what = f"{len(xs)} {split} images"
    else:
        pre = predictor.serving.preprocessing
        x = (
            np.random.default_rng(0)
            .normal(size=(4, pre.in_chans, pre.input_size, pre.input_size))
            .astype(np.float32)
        )
        what, labels = "4 random inputs", []
    meta = predictor.encode_metadata(None, len(x))
    return x, meta, labels, what


def _split_labels(run_dir: Path | None, split: str) -> list[tuple[str, str]]:
    import pandas as pd

    if run_dir is None or not (run_dir / "split.csv").is_file():
        return []
    df = pd.read_csv(run_dir / "split.csv")
    if "split" in df.columns:
        if "fold" in df.columns:
            df = df[df["fold"] == df["fold"].min()]
        df = df[df["split"] == split]
    return list(zip(df["path"].astype(str), df["label"].astype(str), strict=True))


def _feed(x: np.ndarray, meta: np.ndarray | None) -> dict[str, np.ndarray]:
    return {"image": x} if meta is None else {"image": x, "meta": meta}


def _probs(
    engine: Engine, x: np.ndarray, meta: np.ndarray | None, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    logits = engine.run(_feed(x, meta))[0]
    return logits, calibrated_probabilities(logits, temperature)


def export_onnx(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    int8: bool = False,
    ood: bool = True,
    num_threads: int | None = None,
) -> ExportReport:
    """Export a run to ``out`` (and ``out`` with ``.int8.onnx`` when ``int8``), checking parity first.

    Raises ``MedclfError`` (and writes nothing) when ONNX Runtime and PyTorch disagree by more than
    ``PARITY_TOLERANCE`` on any class probability.
    """
    import onnx

    from medclf._atomic import atomic_path
    from medclf.serve.predictor import Predictor

    out = Path(out)
    predictor = Predictor.from_run(run_dir, backend="torch", ood=ood)
    model = predictor.torch_model
    assert model is not None
    proto = build_onnx(model, predictor.serving, predictor.ood)
    engine = OnnxRuntimeEngine(proto.SerializeToString(), threads=num_threads, outputs=["logits"])

    x, meta, _, what = _parity_inputs(predictor)
    t = predictor.serving.temperature
    d_logits, d_probs = parity_gap(
        engine, TorchEngine(model), _feed(x, meta), lambda logits: calibrated_probabilities(logits, t)
    )
    if not d_probs <= PARITY_TOLERANCE:
        raise MedclfError(
            f"ONNX export of {run_dir} disagrees with PyTorch (max |Δprob| = {d_probs:.2e} > {PARITY_TOLERANCE:.0e}); "
            "nothing written — report this model with `medclf export --debug`"
        )
    with atomic_path(out, suffix=".onnx") as tmp:
        onnx.save(proto, str(tmp))
    report = ExportReport(
        path=out,
        bytes=out.stat().st_size,
        max_abs_diff_probs=d_probs,
        max_abs_diff_logits=d_logits,
        parity_inputs=what,
    )
    if int8:
        qpath = out.with_name(out.stem + ".int8.onnx")
        # the accuracy cost needs more images than the parity check
        xq, mq, lq, _ = _parity_inputs(predictor, max_images=200)
        fp32 = _probs(engine, xq, mq, t)[1]
        report.int8 = _quantize(proto, qpath, xq, mq, lq, fp32, predictor, num_threads)
        report.int8_path = qpath
    return report


def _quantize(
    proto: onnx.ModelProto,
    qpath: Path,
    x: np.ndarray,
    meta: np.ndarray | None,
    labels: list[str],
    fp32_probs: np.ndarray,
    predictor: Any,
    num_threads: int | None,
) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from medclf._atomic import atomic_path

    # the OOD score's matrix product stays in float: int8 would blur the distances it thresholds
    ood_nodes = [
        n.name
        for n in proto.graph.node
        if n.op_type == "MatMul" and any(i.endswith(("ood_precision", "ood_basis")) for i in n.input)
    ]
    with tempfile.TemporaryDirectory(prefix="medclf-int8-") as tmpdir:
        src, dst = Path(tmpdir) / "fp32.onnx", Path(tmpdir) / "int8.onnx"
        onnx.save(proto, str(src))
        # uint8 weights: ONNX Runtime's CPU ConvInteger kernel has no int8-weight variant
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic nags about pre-processing on the root logger
        try:
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QUInt8, nodes_to_exclude=ood_nodes)
        finally:
            root.setLevel(level)
        qproto = onnx.load(str(dst))
    onnx.checker.check_model(qproto)
    del qproto.metadata_props[:]
    onnx.helper.set_model_props(qproto, {p.key: p.value for p in proto.metadata_props})
    with atomic_path(qpath, suffix=".onnx") as tmp:
        onnx.save(qproto, str(tmp))
    qengine = OnnxRuntimeEngine(qproto.SerializeToString(), threads=num_threads, outputs=["logits"])
    _, qprobs = _probs(qengine, x, meta, predictor.serving.temperature)
    s = predictor.serving
    dec = decide(fp32_probs, s.classes, s.threshold, s.positive_classes)
    qdec = decide(qprobs, s.classes, s.threshold, s.positive_classes)
    res: dict[str, Any] = {
        "bytes": qpath.stat().st_size,
        "inputs": f"{len(x)} images" if labels else f"{len(x)} random inputs",
        "max_abs_diff_probs": float(np.abs(qprobs - fp32_probs).max()),
        "mean_abs_diff_probs": float(np.abs(qprobs - fp32_probs).mean()),
        "decision_agreement": float((dec == qdec).mean()),
    }
    if labels:
        y = np.array(labels)
        res["accuracy_fp32"] = float((dec == y).mean())
        res["accuracy_int8"] = float((qdec == y).mean())
    return res
