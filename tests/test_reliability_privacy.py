"""DICOM patient identifiers never leave the DICOM file: not in CSVs, reports, audit files, logs or the console.

DICOMs carrying PatientName, PatientID and PatientBirthDate (plus an InstitutionName that embeds the ID) go
through `medclf predict --csv`, `medclf evaluate --data` (predictions.csv, metrics.json, report.html,
skipped.csv), `medclf data audit --out` (audit.json, audit.html), `medclf data info` and `medclf explain`. Every
byte they write, everything printed, every log record and every warning is searched for the identifiers.
(The REST server's "uploads never reach disk or logs" is proved in tests/test_serve_api.py.)
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from _fixtures_reliability import IDENTIFIERS, dicom_with_identifiers
from _fixtures_serve import make_run
from medclf.cli import main
from medclf.data.images import load_image

torch.set_num_threads(1)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.exc_text or ''}")


def _dicom_tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for label, folder in ((0, "benign"), (1, "malignant")):
        for i in range(4):
            yy, xx = np.mgrid[0:40, 0:40]
            blob = np.exp(-((xx - 20) ** 2 + (yy - 20) ** 2) / (60 + 80 * label))
            arr = 300 + 3000 * blob + rng.normal(0, 40, (40, 40))
            path = root / folder / f"IM{i:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            photometric = "MONOCHROME1" if i == 3 else "MONOCHROME2"  # the odd interpretation too
            path.write_bytes(dicom_with_identifiers(np.clip(arr, 0, 4095), photometric=photometric))
    (root / "benign" / "IM9999.dcm").write_bytes(dicom_with_identifiers(None))  # header only: skipped
    return root


def _leaks(texts: dict[str, str | bytes]) -> list[str]:
    hits = []
    for where, text in texts.items():
        data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        for ident in IDENTIFIERS:
            for enc in ("utf-8", "utf-16-le"):
                if ident.encode(enc) in data:
                    hits.append(f"{ident!r} in {where}")
    return hits


@pytest.mark.slow
def test_identifiers_never_written_printed_or_logged(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _dicom_tree(tmp_path / "dicoms")
    # the DICOMs really carry the identifiers, and medclf does read them as images
    raw = (data / "benign" / "IM0000.dcm").read_bytes()
    assert not _leaks({"x": b""}) and _leaks({"dicom": raw})
    assert load_image(data / "benign" / "IM0000.dcm").mode == "L"

    run = make_run(tmp_path / "run_root", n_per_class=16, steps=20)
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDCLF_CACHE_DIR", str(cache))
    out = tmp_path / "out"
    handler = _Collect()
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            codes = [
                main(["predict", str(run), str(data), "--csv", str(out / "predict.csv")]),
                main(
                    [
                        *("evaluate", str(run), "--data", str(data), "--split", "all"),
                        *("--out", str(out / "eval"), "--bootstrap", "20", "--skip-bad"),
                    ]
                ),
                main(["data", "audit", str(data), "--out", str(out / "audit")]),
                main(["data", "info", str(data), "--skip-bad"]),
                main(
                    [
                        "explain",
                        str(run),
                        str(data / "malignant" / "IM0001.dcm"),
                        "--out",
                        str(out / "cam.png"),
                    ]
                ),
            ]
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
    captured = capfd.readouterr()
    assert codes == [1, 0, 0, 0, 0], (codes, captured.err[-2000:])
    assert "Traceback" not in captured.err

    written = sorted(p for p in out.rglob("*") if p.is_file())
    names = {p.relative_to(out).as_posix() for p in written}
    expected = {
        "predict.csv",
        "eval/predictions.csv",
        "eval/report.html",
        "eval/metrics.json",
        "eval/skipped.csv",
    }
    assert expected | {"audit/audit.json", "audit/audit.html", "cam.png"} <= names, names
    # the header-only DICOM was reported (by file name, without identifiers)
    assert "IM9999.dcm" in captured.err and "no pixel data" in captured.err
    assert "IM9999.dcm" in (out / "eval" / "skipped.csv").read_text()
    # the report says so itself
    assert "contains no patient identifiers" in (out / "eval" / "report.html").read_text(encoding="utf-8")

    sources: dict[str, str | bytes] = {str(p): p.read_bytes() for p in written}
    sources |= {str(p): p.read_bytes() for p in cache.rglob("*") if p.is_file()}
    sources |= {str(p): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    sources |= {
        "stdout": captured.out,
        "stderr": captured.err,
        "logs": "\n".join(handler.lines),
        "warnings": "\n".join(str(w.message) for w in caught),
    }
    assert _leaks(sources) == []
