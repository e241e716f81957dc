"""The real data sets in ../shared/datasets load, split without leakage, and audit as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from medclf.data import DatasetSpec, audit_dataset, load_dataset, make_folds, make_split

pytestmark = [pytest.mark.real_data, pytest.mark.slow]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "datasets"


def _spec(name: str, shared: Path) -> DatasetSpec:
    spec = DatasetSpec.from_yaml(CONFIGS / f"{name}.yaml")
    return spec.with_root(shared / Path(str(spec.root)).name)


def test_ham10000_lesions_never_span_two_splits(shared_datasets: Path) -> None:
    auto = load_dataset(shared_datasets / "ham10000", verify="none")
    assert auto.layout == "csv" and len(auto) == 8520 and auto.group_rule == "lesion_id"
    assert auto.records["sex"].isna().sum() == 50 and auto.records["age"].isna().sum() == 50
    ds = load_dataset(_spec("ham10000", shared_datasets), verify="none")
    assert ds.classes == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert ds.metadata == {"age": "numeric", "sex": "categorical", "localization": "categorical"}
    split = make_split(ds.records, 0.15, 0.15, seed=0)
    assert (split.groupby("group")["split"].nunique() == 1).all()
    folds = make_folds(ds.records, 5, seed=0)
    assert (folds.groupby("group")["fold"].nunique() == 1).all()
    assert ds.records["group"].nunique() == 6350


def test_readme_ham10000_split_by_lesion_id(shared_datasets: Path, tmp_path: Path) -> None:
    from medclf.cli import main
    from medclf.data import read_split_csv

    out = tmp_path / "split.csv"
    args = ["--group-by", "lesion_id", "--val", "0.15", "--test", "0.15", "--out", str(out)]
    assert main(["data", "split", str(shared_datasets / "ham10000"), *args]) == 0
    split = read_split_csv(out)  # checks that no group spans two splits
    assert split["group"].str.fullmatch(r"HAM_\d+").all() and split["group"].nunique() == 6350


def test_cxr_patients_never_span_two_splits(shared_datasets: Path) -> None:
    ds = load_dataset(_spec("cxr_pneumonia3", shared_datasets), verify="none")
    counts = ds.records["label"].value_counts()
    assert (counts["normal"], counts["bacterial"], counts["viral"]) == (1341, 2530, 1345)
    split = make_split(ds.records, 0.15, 0.15, seed=0)
    person = split["path"].str.extract(r"/(person\d+)_", expand=False)
    assert person.notna().sum() == 3875
    assert (split[person.notna()].groupby(person)["split"].nunique() == 1).all()
    binary = load_dataset(_spec("cxr_pneumonia2", shared_datasets), verify="none")
    assert binary.records["label"].value_counts().to_dict() == {"pneumonia": 3875, "normal": 1341}


def test_audit_skin_bm_finds_the_duplicate_pair(shared_datasets: Path) -> None:
    r = audit_dataset(shared_datasets / "skin_bm")
    pair = [sorted(Path(p).name for p in g) for g in r["exact_duplicates"]]
    assert ["768.jpg", "769.jpg"] in pair
    group = r["exact_duplicates"][pair.index(["768.jpg", "769.jpg"])]
    assert all("train/malignant" in p for p in group)
    assert r["seconds"] < 60


def test_audit_cxr_finds_24_duplicate_groups(shared_datasets: Path) -> None:
    r = audit_dataset(shared_datasets / "cxr_pneumonia")
    assert len(r["exact_duplicates"]) == 24
    assert all("cxr_pneumonia/train/" in p for g in r["exact_duplicates"] for p in g)
    assert r["seconds"] < 60


def test_audit_ham_reports_many_images_per_lesion(shared_datasets: Path) -> None:
    r = audit_dataset(_spec("ham10000", shared_datasets))
    g = r["groups"]
    assert g["rule"] == "lesion_id" and g["n_groups"] == 6350
    assert g["multi_image_groups"] > 1000 and g["max_images_per_group"] >= 5
    assert r["metadata"]["sex"]["missing"] == 50
    assert r["seconds"] < 60
