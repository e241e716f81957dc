"""A folder of hostile files through the batch commands, end to end in subprocesses (a hang fails the test).

`medclf predict RUN DIR --csv`, `medclf data audit DIR` and `medclf evaluate RUN --data DIR --skip-bad`: no
traceback, every bad file named with its reason, every good (or odd but valid) file still processed, the exit
status documented in docs/serving.md and docs/reliability.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from _fixtures_reliability import make_corpus, run_cli
from _fixtures_serve import make_run
from medclf.cli import main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile") / "corpus dir ü"  # the folder name itself has a space
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("rel_run"), n_per_class=24, steps=40)


def _split(expect: dict[str, str]) -> tuple[set[str], dict[str, str]]:
    good = {k for k, v in expect.items() if v == "ok"}
    return good, {k: v for k, v in expect.items() if v != "ok"}


def _no_traceback(proc) -> None:  # type: ignore[no-untyped-def]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]


def test_corpus_is_what_it_claims(corpus) -> None:
    root, expect = corpus
    good, bad = _split(expect)
    assert len(good) >= 12 and len(bad) == 7
    assert (root / "malignant" / "bomb.png").stat().st_size < 200  # tiny file, 900 megapixels
    assert (root / "benign" / "back_up").is_symlink()


@pytest.mark.slow
def test_predict_names_each_bad_file_and_predicts_the_rest(corpus, run: Path, tmp_path: Path) -> None:
    root, expect = corpus
    good, bad = _split(expect)
    out = tmp_path / "out dir" / "preds.csv"
    proc = run_cli("predict", str(run), str(root), str(root / "missing.jpg"), "--csv", str(out), cwd=tmp_path)
    _no_traceback(proc)
    assert proc.returncode == 1, proc.stderr  # documented: 1 = some inputs were skipped, the rest predicted
    skipped = [ln for ln in proc.stderr.splitlines() if ln.startswith("skipped: ")]
    for rel, word in bad.items():
        line = [ln for ln in skipped if str(root / rel) in ln]
        assert len(line) == 1, (rel, skipped)
        assert word.lower() in line[0].lower(), (rel, line[0])
    assert any("missing.jpg (not found)" in ln for ln in skipped)
    table = pd.read_csv(out)
    assert {Path(p).relative_to(root).as_posix() for p in table["path"]} == good
    assert table[["prob_benign", "prob_malignant"]].sum(axis=1).round(4).eq(1).all()
    assert f"{len(good)} predicted, {len(bad) + 1} skipped" in proc.stdout
    assert "not a diagnosis" in proc.stdout


def test_predict_exit_status_when_nothing_is_readable(corpus, run: Path, capsys) -> None:
    root, _ = corpus
    files = [str(root / "benign" / "zero_bytes.jpg"), str(root / "benign" / "loop.jpg")]
    assert main(["predict", str(run), *files, "--backend", "torch", "--no-ood"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "zero_bytes.jpg: empty file" in err and "loop.jpg: symbolic link loop" in err


def test_audit_names_each_bad_file(corpus, tmp_path: Path) -> None:
    root, expect = corpus
    good, bad = _split(expect)
    proc = run_cli("data", "audit", str(root), "--out", str(tmp_path / "audit"), cwd=tmp_path)
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    for rel, word in bad.items():
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"  bad: {root / rel}:")]
        assert len(line) == 1 and word.lower() in line[0].lower(), (rel, proc.stdout)
    report = json.loads((tmp_path / "audit" / "audit.json").read_text(encoding="utf-8"))
    listed = {Path(b["path"]).relative_to(root).as_posix(): b["reason"] for b in report["bad_files"]}
    assert listed.keys() == bad.keys()
    for rel, word in bad.items():
        assert word.lower() in listed[rel].lower(), (rel, listed[rel])
    assert report["dataset"]["images"] == len(good) + len(bad)
    assert (tmp_path / "audit" / "audit.html").stat().st_size > 1000


@pytest.mark.slow
def test_evaluate_skip_bad_on_the_corpus(corpus, run: Path, tmp_path: Path, capsys) -> None:
    root, expect = corpus
    good, bad = _split(expect)
    out = tmp_path / "eval"
    args = (
        "evaluate",
        str(run),
        "--data",
        str(root),
        "--split",
        "all",
        "--out",
        str(out),
        "--bootstrap",
        "0",
    )
    assert main(list(args)) == 2  # without --skip-bad: stop at the first bad file, one line, the fix named
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--skip-bad" in err and "Traceback" not in err, err
    proc = run_cli(*args, "--skip-bad")
    _no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    preds = pd.read_csv(out / "predictions.csv")
    skipped = pd.read_csv(out / "skipped.csv")
    assert {Path(p).relative_to(root).as_posix() for p in preds["path"]} == good
    assert {Path(p).relative_to(root).as_posix() for p in skipped["path"]} == set(bad)
    # the report and metrics.json both say images were left out
    note = f"{len(bad)} unreadable images were skipped"
    assert note in (out / "report.html").read_text()
    assert any(note in n for n in json.loads((out / "metrics.json").read_text())["notes"])
