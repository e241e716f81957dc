"""Helpers for the serve and explain tests: tiny trained run folders on synthetic images (the session fixtures
``tiny_run``, ``fusion_run`` and ``group_run`` in conftest.py build them once).

Two classes that a 32-px CNN separates in a few dozen steps: ``benign`` images are smooth warm blobs,
``malignant`` smooth cool blobs. A fusion run adds age/sex metadata. Build time: about a second each.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CLASSES = ["benign", "malignant"]


def synthetic_image(label: int, rng: np.random.Generator, size: int = 40) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx, cy = rng.uniform(0.3, 0.7, 2)
    blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / rng.uniform(0.02, 0.06))
    base = np.array([200, 140, 110]) if label == 0 else np.array([110, 140, 200])
    rgb = 40 + blob[..., None] * base[None, None, :] + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def png_bytes(im: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def noise_image(seed: int = 0, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_run(root: Path, *, fusion: bool = False, n_per_class: int = 40, steps: int = 60) -> Path:
    """A trained tiny_cnn run folder with images, split.csv and val_predictions.csv."""
    import pandas as pd

    from medclf.data.transforms import create_transform
    from medclf.models import MetadataEncoder, create_model, resolve_preprocessing, save_run_model

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in (0, 1):
        for i in range(n_per_class):
            p = img_dir / f"{CLASSES[label]}_{i:03d}.png"
            synthetic_image(label, rng).save(p)
            split = "train" if i < n_per_class * 0.6 else ("val" if i < n_per_class * 0.8 else "test")
            rows.append(
                {
                    "path": str(p),
                    "label": CLASSES[label],
                    "group": p.stem,
                    "split": split,
                    "age": float(30 + 30 * label + rng.integers(0, 10)),
                    "sex": ["male", "female"][int(rng.integers(0, 2))],
                }
            )
    df = pd.DataFrame(rows)
    run_dir = root / ("run_fusion" if fusion else "run")
    run_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(run_dir / "split.csv", index=False)

    enc = MetadataEncoder.fit(df[df.split == "train"], ["age", "sex"]) if fusion else None
    num_meta = enc.dim if enc else 0
    model = create_model("tiny_cnn", num_classes=2, num_meta=num_meta)
    pre = resolve_preprocessing(model)
    tf = create_transform(pre)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in df.path])
    y = torch.tensor([CLASSES.index(c) for c in df.label])
    meta = torch.from_numpy(enc.transform(df)) if enc else None
    train = torch.from_numpy((df.split == "train").to_numpy().copy())
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        logits = model(x[train], meta[train] if meta is not None else None)
        torch.nn.functional.cross_entropy(logits, y[train]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x, meta) / 1.2, 1).numpy()
    for split in ("val", "test"):
        m = (df.split == split).to_numpy()
        pred = pd.DataFrame({"path": df.path[m], "label": df.label[m], "group": df.group[m]})
        for j, c in enumerate(CLASSES):
            pred[f"prob_{c}"] = probs[m, j]
        pred["pred"] = [CLASSES[k] for k in probs[m].argmax(1)]
        pred.to_csv(run_dir / f"{split}_predictions.csv", index=False)
    info = {
        "classes": CLASSES,
        "task": "binary",
        "preprocessing": pre.to_dict(),
        "positive_class": "malignant",
        "threshold": 0.4,
        "temperature": 1.2,
        "refer_below": 0.6,
    }
    if enc is not None:
        info["metadata_encoder"] = enc.to_dict()
    save_run_model(run_dir, model, info)
    (run_dir / "model_card.md").write_text("# Model card\n\nA tiny synthetic test model.\n", encoding="utf-8")
    return run_dir


GROUP_CLASSES = ["nv", "mel", "bcc"]


def make_group_run(root: Path, *, n: int = 12) -> Path:
    """An (untrained) 3-class tiny_cnn run whose operating point is P(mel+bcc) >= 0.3, with val/test predictions."""
    import pandas as pd

    from medclf.data.transforms import create_transform
    from medclf.models import create_model, resolve_preprocessing, save_run_model

    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = img_dir / f"g_{i:03d}.png"
        synthetic_image(i % 2, rng).save(p)
        split = ("train", "val", "test")[i % 3]
        rows.append({"path": str(p), "label": GROUP_CLASSES[(i // 3) % 3], "group": p.stem, "split": split})
    df = pd.DataFrame(rows)
    run_dir = root / "run_group"
    run_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(run_dir / "split.csv", index=False)
    model = create_model("tiny_cnn", num_classes=3).eval()
    pre = resolve_preprocessing(model)
    tf = create_transform(pre)
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack([tf(Image.open(p).convert("RGB")) for p in df.path])), 1)
    for split in ("val", "test"):
        m = (df.split == split).to_numpy()
        pred = df.loc[m, ["path", "label", "group"]].copy()
        for j, c in enumerate(GROUP_CLASSES):
            pred[f"prob_{c}"] = probs.numpy()[m, j]
        pred.to_csv(run_dir / f"{split}_predictions.csv", index=False)
    info = {
        "classes": GROUP_CLASSES,
        "task": "multiclass",
        "preprocessing": pre.to_dict(),
        "positive_class": None,
        "positive_classes": ["mel", "bcc"],
        "threshold": 0.3,
        "threshold_rule": "0.3",
        "temperature": 1.0,
    }
    save_run_model(run_dir, model, info)
    return run_dir


def files_containing(root: Path, needles: list[bytes], since: float, skip: tuple[str, ...] = ()) -> list[str]:
    """Files under ``root`` modified since ``since`` whose bytes or name contain any needle (privacy tests)."""
    hits = []
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not (skip and d.startswith(skip))]
        for n in names:
            p = Path(dirpath) / n
            try:
                if p.is_symlink() or p.stat().st_mtime < since or p.stat().st_size > 50_000_000:
                    continue
                data = p.read_bytes()
            except OSError:
                continue
            if any(x in data for x in needles) or any(x in n.encode() for x in needles):
                hits.append(str(p))
    return hits
