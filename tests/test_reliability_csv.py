"""HAM10000-style metadata CSVs as clinics export them: each oddity loads correctly or stops with one clear line.

Already covered elsewhere (not repeated): a BOM with an explicit spec, a missing label column named in a spec,
NaN age / 'unknown' sex, short rows, a non-numeric age, a row whose image is missing
(tests/test_data_dataset.py); unseen categories and NaN at prediction time (tests/test_models_metadata.py,
tests/test_train_engine.py). Here: the auto-detected HAM layout with the same damage, through the API and the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from _fixtures_data import ham_tree
from medclf.cli import main
from medclf.data import DatasetSpec, load_dataset
from medclf.errors import ConfigError, DataError
from medclf.models import MetadataEncoder

CSV = "HAM10000_metadata.csv"


def _ham(root: Path, mutate: Callable[[str], str | bytes]) -> Path:
    ham_tree(root)
    out = mutate((root / CSV).read_text(encoding="utf-8"))
    if isinstance(out, bytes):
        (root / CSV).write_bytes(out)
    else:
        (root / CSV).write_text(out, encoding="utf-8")
    return root


def _drop(col: str) -> Callable[[str], str]:
    def f(text: str) -> str:
        rows = [line.split(",") for line in text.splitlines()]
        i = rows[0].index(col)
        return "\n".join(",".join(c for j, c in enumerate(r) if j != i) for r in rows) + "\n"

    return f


def _surplus(rows: int) -> Callable[[str], str]:
    """Append an unquoted extra cell to the first ``rows`` data rows (a stray comma)."""

    def f(text: str) -> str:
        lines = text.splitlines()
        return "\n".join(ln + (",surplus" if 1 <= i <= rows else "") for i, ln in enumerate(lines)) + "\n"

    return f


def _add_column(text: str) -> str:
    lines = text.splitlines()
    out = [lines[0] + ",notes,Unnamed: 0"]
    out += [line + f',"free text, with a comma",{i}' for i, line in enumerate(lines[1:])]
    return "\n".join(out) + "\n"


def test_bom_and_crlf_keep_the_ham_columns(tmp_path: Path) -> None:
    # a BOM glued to the first header cell must not hide `lesion_id` (the group column)
    ds = load_dataset(_ham(tmp_path, lambda t: ("\ufeff" + t).replace("\n", "\r\n")))
    assert ds.layout == "csv" and ds.group_rule == "lesion_id"
    assert ds.records["group"].nunique() == 6 and len(ds) == 12
    assert ds.metadata["age"] == "numeric"


def test_extra_columns_are_kept_as_metadata_columns(tmp_path: Path) -> None:
    ds = load_dataset(_ham(tmp_path, _add_column))
    assert len(ds) == 12 and ds.group_rule == "lesion_id"
    assert ds.classes == ["bkl", "mel", "nv"]
    # extra columns become metadata candidates (used only when model.metadata names them); the quoted
    # free text with a comma inside is one cell
    assert set(ds.records["notes"]) == {"free text, with a comma"}
    assert ds.metadata["notes"] == "categorical" and ds.metadata["Unnamed: 0"] == "numeric"


@pytest.mark.parametrize(
    ("column", "error", "words"),
    [
        ("dx", ConfigError, ["label", "label_column:", "lesion_id, image_id"]),
        ("image_id", ConfigError, ["image", "image_column:"]),
    ],
)
def test_missing_key_column_says_which_and_how(
    tmp_path: Path, column: str, error: type, words: list[str]
) -> None:
    root = _ham(tmp_path, _drop(column))
    with pytest.raises(error) as info:
        load_dataset(root)
    for w in words:
        assert w in str(info.value)


def test_missing_group_or_metadata_column_still_loads(tmp_path: Path) -> None:
    ds = load_dataset(_ham(tmp_path / "a", _drop("lesion_id")))
    assert (
        ds.group_rule is None and ds.records["group"].nunique() == 12
    )  # one image per group: stated by `info`
    ds = load_dataset(_ham(tmp_path / "b", _drop("age")))
    assert "age" not in ds.metadata and len(ds) == 12


def test_nan_ages_in_every_spelling_are_missing(tmp_path: Path) -> None:
    def nan_ages(t: str) -> str:
        return (
            t.replace(",30.0,", ",NaN,")
            .replace(",31.0,", ",,")
            .replace(",32.0,", ",nan,")
            .replace(",34.0,", ",NA,")
        )

    ds = load_dataset(_ham(tmp_path, nan_ages))
    age = ds.records.set_index(ds.records["path"].map(lambda p: Path(p).stem))["age"]
    for stem in ("ISIC_0000000", "ISIC_0000001", "ISIC_0000002", "ISIC_0000003", "ISIC_0000004"):
        assert math.isnan(age[stem]), stem
    assert age["ISIC_0000005"] == 35.0
    # and the metadata encoder turns them into finite features (imputed, with a missing flag)
    enc = MetadataEncoder.fit(ds.records, ["age", "sex", "localization"], ds.metadata)
    assert np.isfinite(enc.transform(ds.records)).all()


def test_unknown_categories(tmp_path: Path) -> None:
    root = _ham(tmp_path, lambda t: t.replace(",bkl,", ",zzz_new,"))
    # the data defines the classes: an unexpected diagnosis is a class of its own ...
    assert "zzz_new" in load_dataset(root).classes
    # ... unless a spec fixes the classes: then the row is named, with the fix
    spec = DatasetSpec(root=str(root), layout="csv", classes=["mel", "nv"])
    with pytest.raises(DataError, match=r"label 'zzz_new' is not one of the classes \(mel, nv\)"):
        load_dataset(spec)
    ds = load_dataset(spec, skip_bad=True)
    assert len(ds) == 8 and len(ds.bad_files) == 4
    # an unseen site at prediction time is an all-zero one-hot, not an error
    enc = MetadataEncoder.fit(ds.records, ["localization"], {"localization": "categorical"})
    rows = ds.records.head(2).copy()
    rows["localization"] = ["the moon", None]
    assert np.isfinite(enc.transform(rows)).all()


@pytest.mark.parametrize(
    ("name", "mutate", "match"),
    [
        ("empty", lambda t: "", "empty CSV"),
        ("header_only", lambda t: t.splitlines()[0] + "\n", "no usable images"),
        (
            "latin1",
            lambda t: t.replace("back", "épaule").encode("latin-1"),
            "not UTF-8 text; save the table as UTF-8",
        ),
        ("semicolons", lambda t: t.replace(",", ";"), "cannot tell which CSV column is the image"),
        ("dup_header", lambda t: t.replace("sex,localization", "sex,sex", 1), "column 'sex' appears twice"),
        (
            "empty_label",
            lambda t: t.replace(",bkl,", ",,", 1),
            r"row \d+ \(image_id=ISIC_\d+\): empty label column 'dx'",
        ),
        ("long_row", _surplus(1), r"row 2: has 8 cells but the header has 7"),
    ],
)
def test_broken_csv_is_one_clear_error(tmp_path: Path, name: str, mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    root = _ham(tmp_path, mutate)
    with pytest.raises((DataError, ConfigError), match=match):
        load_dataset(root)


def test_cli_prints_one_line_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _ham(tmp_path, _surplus(2))
    assert main(["data", "info", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("medclf data: error: ") and CSV in err and "--skip-bad" in err
    # --skip-bad lists the bad rows and goes on
    assert main(["data", "info", str(root), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad input(s)" in out and "row 2" in out and "row 3" in out
