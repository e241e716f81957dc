"""audit_dataset: exact and near duplicates, label conflicts, leakage, bad files, metadata gaps, HTML."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _fixtures_data import class_tree, ham_tree, msld_tree
from medclf.data import audit_dataset, load_dataset, make_split
from medclf.data.audit import format_audit, write_audit

_LESIONS: list[Image.Image] = []


def _photo(seed: int, size: int = 64) -> Image.Image:
    """A distinct picture per seed: the first image of a different synthetic patient (a structured image, so
    perceptual hashes behave as on photographs; random noise would not)."""
    from medclf.data.synth import _generate

    if not _LESIONS:
        _LESIONS.extend(
            Image.fromarray(a) for _, stem, a in _generate(80, 0, size, 0.5) if stem.endswith("_1")
        )
    return _LESIONS[seed % 100 // 10 * 2 + (seed % 10)].copy()


def test_exact_and_near_duplicates_with_conflicts(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for i in range(6):
        for c in ("benign", "malignant"):
            (root / "train" / c).mkdir(parents=True, exist_ok=True)
            _photo(i * 10 + (c == "malignant")).save(root / "train" / c / f"{c}{i}.jpg", quality=95)
    (root / "test" / "benign").mkdir(parents=True)
    (root / "test" / "malignant").mkdir(parents=True)
    _photo(99).save(root / "test" / "malignant" / "m.jpg", quality=95)
    # exact copy inside one class, and an exact copy in test with the other label
    shutil.copy(root / "train" / "benign" / "benign0.jpg", root / "train" / "benign" / "copy.jpg")
    shutil.copy(root / "train" / "benign" / "benign1.jpg", root / "test" / "malignant" / "conflict.jpg")
    # near duplicate: the same picture re-encoded smaller
    _photo(20).resize((48, 48)).save(root / "test" / "benign" / "resized.jpg", quality=70)
    assert (
        len({_photo(i * 10 + k).tobytes() for i in range(6) for k in (0, 1)} | {_photo(99).tobytes()}) == 13
    )
    (root / "train" / "benign" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")

    r = audit_dataset(root)
    exact = sorted(sorted(Path(p).name for p in g) for g in r["exact_duplicates"])
    assert exact == [["benign0.jpg", "copy.jpg"], ["benign1.jpg", "conflict.jpg"]]
    details = {tuple(sorted(Path(p).name for p in d["paths"])): d for d in r["exact_duplicate_details"]}
    assert details[("benign1.jpg", "conflict.jpg")]["label_conflict"] is True
    assert details[("benign1.jpg", "conflict.jpg")]["cross_split"] is True
    assert details[("benign0.jpg", "copy.jpg")]["label_conflict"] is False
    near = [sorted(Path(p).name for p in g["paths"]) for g in r["near_duplicates"]]
    assert ["benign2.jpg", "resized.jpg"] in near
    assert all(len(g) >= 2 for g in near) and len(near) <= 2
    assert [Path(b["path"]).name for b in r["bad_files"]] == ["broken.jpg"]
    assert r["counts"]["by_class"] == {"benign": 9, "malignant": 8}
    assert r["image_modes"] == {"RGB": 16} and r["image_formats"]["JPEG"] == 16
    assert r["imbalance_ratio"] == round(9 / 8, 3)
    text = format_audit(r)
    assert "exact-duplicate groups: 2" in text and "bad files: 1" in text
    j, h = write_audit(r, tmp_path / "out")
    assert json.loads(j.read_text())["exact_duplicates"] == r["exact_duplicates"]
    html = h.read_text()
    assert "conflict.jpg" in html and "<script" not in html and "Exact duplicates (2 groups)" in html


def test_groups_leakage_and_metadata(tmp_path: Path) -> None:
    ds = load_dataset(ham_tree(tmp_path))
    r = audit_dataset(ds)
    assert r["groups"]["rule"] == "lesion_id" and r["groups"]["multi_image_groups"] == 6
    assert r["groups"]["max_images_per_group"] == 2
    assert r["metadata"]["age"]["missing"] == 1 and r["metadata"]["sex"]["missing"] == 1
    assert r["group_leakage"] == []
    leaky = ds.records.copy()
    leaky["split"] = ["train", "test"] * (len(leaky) // 2)  # each lesion's two images in different splits
    r2 = audit_dataset(ds, records=leaky)
    assert len(r2["group_leakage"]) == 6
    ok = make_split(ds.records, 0.2, 0.2)
    assert audit_dataset(ds, records=ok)["group_leakage"] == []


def test_premade_fold_copies_are_not_duplicates(tmp_path: Path) -> None:
    r = audit_dataset(msld_tree(tmp_path, n_per_class=4, folds=3))
    assert r["exact_duplicates"] == [] and r["group_leakage"] == []
    assert r["dataset"]["layout"] == "kfold"


def test_clean_folder_has_no_findings(tmp_path: Path) -> None:
    r = audit_dataset(class_tree(tmp_path, {"a": 3, "b": 3}))
    assert r["exact_duplicates"] == [] and r["bad_files"] == [] and r["near_duplicates"] == []


@pytest.mark.slow
def test_audit_reports_the_full_size_of_a_large_jpeg_it_decodes_at_a_reduced_scale(tmp_path: Path) -> None:
    from medclf.data.audit import _examine

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1500, 0:2000] / 1000
    rgb = np.full((1500, 2000, 3), 128.0) + rng.normal(0, 6, (1500, 2000, 3))
    for _ in range(40):  # blobs of many sizes: a broad spectrum, as in a photo
        cx, cy, s = rng.uniform(0, 2), rng.uniform(0, 1.5), rng.uniform(0.02, 0.4)
        rgb += rng.uniform(-80, 80, 3) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))[..., None]
    big = tmp_path / "big.jpg"
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(big, quality=90)
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown portrait
    Image.open(big).save(turned, quality=90, exif=exif)
    assert _examine(str(big)).size == (2000, 1500)
    assert _examine(str(turned)).size == (1500, 2000)
    # the perceptual hash of the reduced decode matches that of the full decode within a few bits
    import imagehash

    from medclf.data.images import load_image

    full = np.packbits(imagehash.phash(load_image(big), hash_size=16).hash.flatten()).view(">u8")
    reduced = _examine(str(big)).phash
    assert int(np.bitwise_count(full.astype(np.uint64) ^ reduced).sum()) <= 8
