"""synth_dataset: deterministic, fast, every layout loads, the ABCD rule and metadata carry signal."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest

from medclf.data import load_dataset, synth_dataset
from medclf.data.images import load_image
from medclf.errors import ConfigError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_deterministic_and_fast(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    synth_dataset(tmp_path / "a", n=200, seed=3, size=96)
    elapsed = time.perf_counter() - t0
    synth_dataset(tmp_path / "b", n=200, seed=3, size=96)
    synth_dataset(tmp_path / "c", n=200, seed=4, size=96)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    assert elapsed < 5  # ~0.5 s here; generous for a loaded 2-core CI machine


@pytest.mark.parametrize("layout", ["folders", "split-folders", "kfold", "csv"])
def test_every_layout_loads_grouped(tmp_path: Path, layout: str) -> None:
    synth_dataset(tmp_path, layout=layout, n=40, seed=0, size=32)
    ds = load_dataset(tmp_path)
    assert ds.layout == layout and ds.classes == ["benign", "malignant"]
    assert ds.records["path"].nunique() == (40 if layout != "kfold" else len(ds.records["path"].unique()))
    assert ds.records["group"].str.fullmatch(r"P\d{4}").all()
    assert ds.records["group"].nunique() < 40  # several images per patient
    if layout == "csv":
        assert ds.metadata == {"age": "numeric", "sex": "categorical", "site": "categorical"}
    if layout == "kfold":
        assert (
            ds.records["augmented"].any()
            and (ds.records.loc[ds.records["augmented"], "split"] == "train").all()
        )
    assert "NOT MEDICAL DATA" in (tmp_path / "README.txt").read_text()


def test_abcd_and_metadata_signal(tmp_path: Path) -> None:
    synth_dataset(tmp_path, layout="csv", n=120, seed=1, size=64)
    ds = load_dataset(tmp_path)
    r = ds.records
    assert r.loc[r["label"] == "malignant", "age"].mean() > r.loc[r["label"] == "benign", "age"].mean() + 10

    def colour_spread(path: str) -> float:
        a = np.asarray(load_image(path)).astype(float)
        lum = a.mean(axis=2)
        lesion = a[lum < np.median(lum[:4]) - 40]  # pixels clearly darker than the skin at the top edge
        return float(lesion.std(axis=0).mean()) if len(lesion) > 20 else 0.0

    spread = r.groupby("label")["path"].apply(lambda ps: np.mean([colour_spread(p) for p in ps]))
    # several colours vs mostly one; the classes overlap on purpose (atypical naevi, early melanomas)
    assert spread["malignant"] > spread["benign"] * 1.15


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--layout"):
        synth_dataset(tmp_path, layout="zip")
    with pytest.raises(ConfigError, match="--n"):
        synth_dataset(tmp_path, n=1)
