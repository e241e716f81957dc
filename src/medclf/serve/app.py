"""The medclf web app (a Streamlit script): ``medclf app RUN_DIR`` runs ``streamlit run`` on this file.

The run folder comes from ``--run-dir`` after ``--`` or ``$MEDCLF_RUN_DIR``. Uploads are held in memory for the
browser session only (Streamlit keeps uploaded files in RAM); nothing is written to disk or logged.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any

import streamlit as st

from medclf import DISCLAIMER

_UPLOAD_TYPES = ["jpg", "jpeg", "png", "bmp", "tif", "tiff", "gif", "webp", "dcm", "dicom"]
_MAX_SAMPLES = 8


def _run_dir() -> Path | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--run-dir", default=None)
    args, _ = parser.parse_known_args()
    value = args.run_dir or os.environ.get("MEDCLF_RUN_DIR")
    return Path(value) if value else None


@st.cache_resource(show_spinner="Loading the model ...")
def _predictor(run_dir: str) -> Any:
    from medclf.serve.predictor import Predictor

    return Predictor.from_run(run_dir, backend="onnx")


@st.cache_data(show_spinner=False)
def _samples(run_dir: str) -> dict[str, str]:
    """A few validation images of the run (name -> path), when they are on this machine."""
    import pandas as pd

    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        return {}
    df = pd.read_csv(path)
    if "split" in df.columns and (df["split"] == "val").any():
        df = df[df["split"] == "val"]
    per_class = max(1, _MAX_SAMPLES // max(1, df["label"].nunique()))
    picked = df.groupby("label", sort=True).head(per_class)
    return {
        f"{Path(p).name} ({lbl})": str(p)
        for p, lbl in zip(picked["path"], picked["label"], strict=True)
        if Path(p).is_file()
    }


def _metadata_inputs(predictor: Any) -> dict[str, Any] | None:
    fields = predictor.metadata_fields
    if not fields:
        return None
    st.subheader("Patient metadata (optional)")
    out: dict[str, Any] = {}
    cols = st.columns(len(fields))
    for col, (name, spec) in zip(cols, fields.items(), strict=True):
        with col:
            if spec["kind"] == "numeric":
                value = st.number_input(name, value=None, placeholder="unknown", key=f"meta_{name}")
            else:
                value = st.selectbox(name, ["unknown", *spec["categories"]], key=f"meta_{name}")
                value = None if value == "unknown" else value
            if value is not None:
                out[name] = value
    return out


def _decision(predictor: Any, probs: dict[str, float], threshold: float | None) -> str:
    """The decision at ``threshold`` by the same rule as the Predictor (``thresholds.decide``)."""
    import numpy as np

    from medclf.evaluate.thresholds import decide

    classes = predictor.classes
    p = np.array([[probs[c] for c in classes]], dtype=np.float64)
    return classes[int(decide(p, classes, threshold, predictor.positive_classes)[0])]


def _predict_page(predictor: Any, run_dir: str) -> None:
    from PIL import Image

    upload = st.file_uploader(
        "Upload an image", type=_UPLOAD_TYPES, help="Kept in memory for this session only."
    )
    samples = _samples(run_dir)
    sample = None
    if samples:
        sample = st.selectbox("... or pick a validation sample", ["(none)", *samples], key="sample")
    data: bytes | None = None
    if upload is not None:
        data = upload.getvalue()
    elif sample and sample != "(none)":
        data = Path(samples[sample]).read_bytes()
    metadata = _metadata_inputs(predictor)
    if data is None:
        st.info("Upload an image or pick a sample to get a prediction.")
        return
    try:
        image: Image.Image = predictor.load(data, "upload")
    except Exception as exc:  # BadImageError: say why, never a traceback
        st.error(f"This file cannot be used: {getattr(exc, 'reason', exc)}")
        return
    pred = predictor.predict([image], metadata)[0]

    left, middle, right = st.columns([1, 1, 1.2])
    with left:
        st.image(image, caption="Uploaded image", width="stretch")
    with right:
        st.subheader("Prediction")
        threshold = predictor.threshold
        if predictor.positive_classes:  # binary, or a multiclass run with a declared positive group
            pos = "+".join(predictor.positive_classes)
            threshold = st.slider(
                f"Decision threshold on P({pos})",
                0.0,
                1.0,
                value=float(threshold if threshold is not None else 0.5),
                step=0.01,
                help="Starts at the run's validated operating point.",
                key="threshold",
            )
        decision = _decision(predictor, pred.probabilities, threshold)
        st.markdown(f"**Decision: {decision}**")
        for cls, p in sorted(pred.probabilities.items(), key=lambda kv: -kv[1]):
            st.progress(min(max(p, 0.0), 1.0), text=f"{cls}: {p:.1%}")
        if pred.refer:
            st.error("Refer to a clinician: " + "; ".join(pred.refer_reasons))
        else:
            st.success("No referral flag (confidence and input checks passed).")

    with middle:
        _heatmap(predictor, image, data, metadata, decision)


def _heatmap(predictor: Any, image: Any, data: bytes, metadata: dict[str, Any] | None, decision: str) -> None:
    from medclf.explain import overlay_cam

    if not predictor.can_explain:
        st.info("This model does not look at the image, so there is no heat map.")
        return
    slot = st.empty()  # the map goes above its controls
    method = st.selectbox("Heat-map method", ["gradcam", "gradcam++", "scorecam"], key="cam_method")
    alpha = st.slider("Heat-map intensity", 0.0, 1.0, 0.5, 0.05, key="alpha")
    key = (hashlib.sha256(data).hexdigest(), method, decision, repr(sorted((metadata or {}).items())))
    cache = st.session_state.setdefault("_cams", {})
    if key not in cache:
        cache.clear()  # one image's map per session: nothing accumulates
        with st.spinner("Computing the heat map ..."):
            cache[key] = predictor.explain(image, metadata, method=method, target=decision).cam
    overlay = overlay_cam(image, cache[key], alpha, resize=predictor.serving.preprocessing.resize)
    slot.image(overlay, caption=f"Grad-CAM ({method}) for '{decision}'", width="stretch")


def _model_page(predictor: Any) -> None:
    card = predictor.model_card()
    st.subheader("Model")
    st.write(
        {
            "model": card["model"],
            "classes": card["classes"],
            "positive class": " + ".join(card.get("positive_classes") or [])
            or card["positive_class"]
            or "none (most probable class)",
            "operating threshold": card["threshold"],
            "temperature": card["temperature"],
            "refer below confidence": card["refer_below"],
            "input": f"{card['preprocessing']['input_size']} px, {card['preprocessing']['in_chans']} channel(s)",
        }
    )
    st.subheader("Validation metrics")
    metrics = card.get("metrics") or {}
    if metrics:
        import pandas as pd

        flat = {k: v for k, v in metrics.items() if isinstance(v, dict)}
        if flat:
            st.table(pd.DataFrame(flat).T)
        else:
            st.json(metrics)
    else:
        st.info("This run folder has no validation predictions or metrics.")
    if card.get("ood"):
        st.caption(
            "Out-of-distribution check: Mahalanobis distance of the image's features to the training images'; "
            f"threshold {card['ood'].get('threshold', 0):.1f} (99th percentile on validation images)."
        )
    if card.get("card"):
        st.subheader("Model card")
        st.markdown(card["card"])


def main() -> None:
    st.set_page_config(page_title="medclf", layout="wide")
    st.title("medclf")
    st.warning(DISCLAIMER)
    from medclf.models.run_io import RunDir

    run_dir = _run_dir()
    if run_dir is None or not RunDir(run_dir).is_run():
        st.error("No run folder: start the app with `medclf app RUN_DIR`.")
        return
    try:
        predictor = _predictor(str(run_dir))
    except Exception as exc:
        st.error(f"The model cannot be loaded: {exc}")
        return
    predict_tab, model_tab = st.tabs(["Predict", "Model card and metrics"])
    with predict_tab:
        _predict_page(predictor, str(run_dir))
    with model_tab:
        _model_page(predictor)
    st.caption(DISCLAIMER)


main()
