"""Synthetic dermoscopy-like data: SYNTHETIC PICTURES, NOT MEDICAL DATA.

A deterministic generator for demos and fast tests. Lesions follow the ABCD rule of dermoscopy in caricature:
benign lesions are round and symmetric (A), with an even, sharp border (B), one colour (C) and a small diameter
(D); malignant ones are asymmetric, with an irregular, blurred border, two to four colours (dark brown, black,
blue-grey, red) and a larger diameter. Metadata carries signal too: malignant lesions come from older patients and
more often from the back, face and scalp. Each patient (group) has one lesion photographed one to three times
(rotated, shifted, re-lit), so an ungrouped split leaks — as in HAM10000.

Nothing here resembles real patients; a model trained on it says nothing about skin cancer.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medclf._atomic import atomic_write_text
from medclf.data.spec import DatasetSpec
from medclf.errors import ConfigError

__all__ = ["SYNTH_CLASSES", "SYNTH_LAYOUTS", "synth_dataset"]

SYNTH_LAYOUTS = ("folders", "split-folders", "kfold", "csv")
SYNTH_CLASSES = ("benign", "malignant")

_SITES = ("back", "trunk", "face", "scalp", "upper extremity", "lower extremity", "abdomen")
_SITE_P = {
    "benign": (0.14, 0.2, 0.06, 0.03, 0.2, 0.27, 0.1),
    "malignant": (0.3, 0.14, 0.2, 0.12, 0.08, 0.1, 0.06),
}
_LESION_COLOURS = np.array(
    [
        [92, 54, 34],  # dark brown
        [30, 22, 22],  # black
        [96, 110, 140],  # blue-grey
        [170, 60, 60],  # red
        [150, 100, 60],  # light brown
    ],
    dtype=np.float64,
)
_README = """SYNTHETIC DATA — NOT MEDICAL DATA

These images were drawn by `medclf data synth` (seed {seed}, {n} images, layout {layout}). They are caricatures
of dermoscopy built on the ABCD rule (benign: round, even border, one colour; malignant: asymmetric, irregular
border, several colours) for demos and tests. They contain no patient data and say nothing about skin cancer.
"""


@dataclass
class _Lesion:
    patient: str
    label: str
    age: float
    sex: str
    site: str
    skin: np.ndarray
    radius: float
    elong: float
    harmonics: np.ndarray  # (k, amplitude, phase)
    colours: np.ndarray
    blobs: np.ndarray  # colour patch centres in lesion coordinates
    softness: float
    n_images: int
    atypia: float


def _make_lesion(rng: np.random.Generator, idx: int, label: str) -> _Lesion:
    malignant = label == "malignant"
    age = float(np.clip(rng.normal(62 if malignant else 42, 12 if malignant else 14), 5, 90) // 5 * 5)
    sex = str(rng.choice(["male", "female"], p=[0.6, 0.4] if malignant else [0.45, 0.55]))
    site = str(rng.choice(_SITES, p=_SITE_P[label]))
    if rng.random() < 0.03:
        sex = "unknown"  # missing, like HAM10000's
    if rng.random() < 0.03:
        age = float("nan")
    skin = np.array([225, 180, 150]) * rng.uniform(0.75, 1.05) + rng.normal(0, 6, 3)
    # "atypia" drives every ABCD feature; its distributions overlap between the classes (atypical naevi,
    # early melanomas) so the task is learnable but not trivial: a perfect score would hide a broken pipeline
    atypia = float(rng.beta(5, 2) if malignant else rng.beta(2, 5))
    ks = np.arange(2, 9)
    amps = rng.uniform(0.0, 0.02 + 0.1 * atypia, len(ks)) * (1.0 / np.sqrt(ks - 1))
    n_col = int(np.clip(round(1 + 3 * atypia + rng.normal(0, 0.6)), 1, 4))
    if n_col == 1:
        colours = _LESION_COLOURS[[rng.choice([0, 4])]] * rng.uniform(0.9, 1.1)
    else:
        colours = _LESION_COLOURS[rng.choice(len(_LESION_COLOURS), n_col, replace=False)]
    radius = rng.uniform(0.16, 0.24) + 0.08 * atypia
    elong = rng.uniform(1.0, 1.1) + 0.35 * atypia * rng.uniform(0.5, 1.0)
    softness = rng.uniform(0.01, 0.025) + 0.025 * atypia
    harmonics = np.stack([ks, amps, rng.uniform(0, 2 * np.pi, len(ks))], axis=1)
    blobs = rng.uniform(-0.7, 0.7, (len(colours), 2))
    n_images = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))
    return _Lesion(
        f"P{idx:04d}",
        label,
        age,
        sex,
        site,
        skin,
        radius,
        elong,
        harmonics,
        colours,
        blobs,
        softness,
        n_images,
        atypia,
    )


def _render(lesion: _Lesion, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float64) + 0.5) / size - 0.5
    rot = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.normal(0, 0.04, 2)
    x, y = xx - cx, yy - cy
    xr = x * np.cos(rot) + y * np.sin(rot)
    yr = -x * np.sin(rot) + y * np.cos(rot)
    xr = xr / lesion.elong
    dist = np.hypot(xr, yr)
    theta = np.arctan2(yr, xr)
    k, a, ph = lesion.harmonics[:, 0:1, None], lesion.harmonics[:, 1:2, None], lesion.harmonics[:, 2:3, None]
    border = lesion.radius * (1 + (a * np.sin(k * theta[None] + ph)).sum(axis=0))
    # asymmetry: one side bulges, more so the more atypical the lesion
    border = border * (1 + 0.2 * lesion.atypia * np.clip(np.cos(theta - lesion.harmonics[0, 2]), 0, None))
    inside = 1.0 / (1.0 + np.exp((dist - border) / (lesion.softness * lesion.radius + 1e-6)))
    # colour field: soft Voronoi patches of the lesion's colours
    u, v = xr / lesion.radius, yr / lesion.radius
    d2 = (u[None] - lesion.blobs[:, 0, None, None]) ** 2 + (v[None] - lesion.blobs[:, 1, None, None]) ** 2
    w = np.exp(-d2 / 0.05)
    w = w / w.sum(axis=0, keepdims=True)
    lesion_rgb = np.einsum("kij,kc->ijc", w, lesion.colours)
    lesion_rgb *= (0.85 + 0.15 * np.clip(dist / (border + 1e-6), 0, 1))[..., None]  # darker centre
    light = rng.uniform(0.9, 1.1) * (1 - 0.25 * (xx**2 + yy**2))  # dermatoscope vignetting
    skin = lesion.skin[None, None, :] * light[..., None]
    img = skin * (1 - inside[..., None]) + lesion_rgb * inside[..., None]
    img += rng.normal(0, 4.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _write(path: Path, data: bytes) -> None:
    # temp + rename (never a half-written image), but no fsync per image: synthetic images are cheaper to
    # regenerate from the seed than an fsync per file would cost
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def _generate(
    n: int, seed: int, size: int, malignant_fraction: float
) -> list[tuple[_Lesion, str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    items: list[tuple[_Lesion, str, np.ndarray]] = []
    idx = 0
    while len(items) < n:
        idx += 1
        label = "malignant" if rng.random() < malignant_fraction else "benign"
        lesion = _make_lesion(rng, idx, label)
        for j in range(min(lesion.n_images, n - len(items))):
            items.append((lesion, f"{lesion.patient}_{j + 1}", _render(lesion, rng, size)))
    return items


def synth_dataset(
    out: str | os.PathLike[str],
    *,
    layout: str = "folders",
    n: int = 200,
    seed: int = 0,
    size: int = 96,
    folds: int = 5,
    malignant_fraction: float = 0.45,
) -> DatasetSpec:
    """Write `n` synthetic images under `out` in `layout`, plus `dataset.yaml` (a spec with the group rule) and
    a README saying the data is synthetic. Returns the spec. Deterministic for a given seed."""
    if layout not in SYNTH_LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: choose one of {', '.join(SYNTH_LAYOUTS)}")
    if n < 4:
        raise ConfigError(f"--n {n}: need at least 4 images")
    if not 16 <= size <= 1024:
        raise ConfigError(f"size {size}: choose 16..1024 pixels")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = _generate(n, seed, size, malignant_fraction)
    group_rx = r"regex:^(P\d+)_"
    spec = DatasetSpec(
        root=".", layout=layout, name=f"synthetic-{layout}", group_by=group_rx, classes=list(SYNTH_CLASSES)
    )
    patients = sorted({les.patient for les, _, _ in items})
    if layout == "folders":
        for les, stem, arr in items:
            _write(out / les.label / f"{stem}.jpg", _jpeg(arr))
    elif layout == "split-folders":
        import pandas as pd

        from medclf.data.splits import make_split

        pool = pd.DataFrame(
            {"group": [les.patient for les, _, _ in items], "label": [les.label for les, _, _ in items]}
        )
        split = make_split(pool, val=0.15, test=0.15, seed=seed)["split"]
        for (les, stem, arr), part in zip(items, split, strict=True):
            _write(out / part / les.label / f"{stem}.jpg", _jpeg(arr))
    elif layout == "kfold":
        rng = np.random.default_rng(seed + 1)
        fold_of = dict(zip(patients, rng.permutation(np.arange(len(patients)) % folds), strict=True))
        for les, stem, arr in items:
            data = _jpeg(arr)
            aug = _jpeg(np.ascontiguousarray(np.rot90(arr[:, ::-1])))
            for f in range(folds):
                pf = fold_of[les.patient]
                role = "Test" if pf == f else ("Valid" if pf == (f + 1) % folds else "Train")
                _write(out / "FOLDS" / f"fold{f + 1}" / role / les.label / f"{stem}.jpg", data)
                if role == "Train":
                    path = out / "FOLDS_AUG" / f"fold{f + 1}_AUG" / "Train" / les.label / f"{stem}_aug1.jpg"
                    _write(path, aug)
    else:  # csv
        lines = ["image_id,label,patient_id,age,sex,site"]
        for les, stem, arr in items:
            _write(out / "images" / f"{stem}.jpg", _jpeg(arr))
            age = "" if np.isnan(les.age) else f"{les.age:.0f}"
            lines.append(f"{stem},{les.label},{les.patient},{age},{les.sex},{les.site}")
        atomic_write_text(out / "metadata.csv", "\n".join(lines) + "\n")
        spec.group_by = "patient_id"
        spec.metadata = {"age": "numeric", "sex": "categorical", "site": "categorical"}
    spec.save(out / "dataset.yaml")
    atomic_write_text(out / "README.txt", _README.format(seed=seed, n=n, layout=layout))
    return spec.with_root(out)
