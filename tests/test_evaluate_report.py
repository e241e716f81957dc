"""The HTML report: every section, self-contained, no identifiers; plots are valid PNGs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _fixtures_evaluate import make_predictions, make_run_dir
from medclf import DISCLAIMER
from medclf.evaluate import plots
from medclf.evaluate.pipeline import evaluate_predictions
from medclf.evaluate.report import PRIVACY_STATEMENT, confident_errors, write_report

SECTIONS = ("headline", "operating-point", "plots", "per-class", "data", "model-card", "speed", "errors")


@pytest.mark.slow
def test_report_has_every_section_and_no_network_assets(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path)
    (run / "audit.json").write_text(
        '{"n_images": 300, "duplicates": {"exact_pairs": 1, "files": ["/data/secret_patient.png"]}, "root": "/home/u/data"}'
    )
    df = make_predictions(120, image_dir=tmp_path, images_per_group=2)
    calls: list[str] = []

    def explain(path: str) -> Image.Image:
        calls.append(path)
        return Image.new("RGB", (32, 32), (255, 0, 0))

    evaluate_predictions(
        df, ["benign", "malignant"], tmp_path / "e", run_dir=run, n_boot=100, explain=explain
    )
    html = (tmp_path / "e" / "report.html").read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html, section
    assert DISCLAIMER in html and PRIVACY_STATEMENT.split(":")[0] in html
    assert "Model card" in html and "intended use" in html and "training time" in html
    assert "95% CI" in html
    assert "n_images" in html and "duplicates.exact_pairs" in html  # audit summary
    # self-contained: no http(s) references, every image a data URI
    assert not re.search(r"https?://", html)
    srcs = re.findall(r'src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert len([s for s in srcs if s.startswith("data:image/png")]) == 6
    assert calls and 'alt="explanation 1"' in html  # the Grad-CAM hook
    # no identifiers: file paths, group ids and audit path strings stay out of the report
    assert str(tmp_path) not in html and "img_" not in html and "secret_patient" not in html
    assert not re.search(r">p\d+<", html)
    assert 'name="viewport"' in html and "@media" in html  # readable on a phone


def test_write_report_minimal_and_missing_images(tmp_path: Path) -> None:
    df = make_predictions(60)  # paths that do not exist
    errors = confident_errors(df, ["benign", "malignant"], limit=5)
    assert len(errors) == 5 and errors["confidence"].is_monotonic_decreasing
    metrics = {"n": 60, "accuracy": 0.5, "ci95": {"accuracy": [0.4, 0.6]}, "per_class": {}}
    path = write_report(tmp_path, metrics=metrics, errors=errors)
    html = path.read_text()
    assert "(image unavailable)" in html and "0.500" in html and "95% CI 0.400–0.600" in html


def test_plot_functions_return_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    p = rng.dirichlet(np.ones(3), 90)
    classes = ["a", "b", "c"]
    figs = [
        plots.confusion_matrix_figure(np.array([[5, 1, 0], [2, 3, 1], [0, 0, 0]]), classes),  # an empty row
        plots.roc_figure(y, p, classes),
        plots.pr_figure(y, p, classes),
        plots.threshold_sweep_figure(
            {k: np.linspace(0, 1, 5) for k in ("threshold", "sensitivity", "specificity", "ppv", "npv")}, 0.3
        ),
    ]
    for i, fig in enumerate(figs):
        data = plots.save_png(fig, tmp_path / f"{i}.png")
        assert data[:4] == b"\x89PNG" and (tmp_path / f"{i}.png").read_bytes() == data
    import pandas as pd

    assert plots.training_curves_figure(pd.DataFrame()) is None
    assert (
        plots.training_curves_figure(
            pd.DataFrame(
                {"epoch": [0, 1], "phase": ["head", "full"], "train_loss": [1.0, 0.5], "val_acc": [0.5, 0.6]}
            )
        )
        is not None
    )


def test_gallery_decodes_a_large_jpeg_at_a_reduced_scale(tmp_path: Path) -> None:
    from medclf.explain.overlay import THUMBNAIL, open_for_display

    path = tmp_path / "large.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)).save(path)
    im = open_for_display(str(path))
    assert im is not None and im.size == (1000, 750) and min(im.size) >= 2 * THUMBNAIL


@pytest.mark.slow
def test_a_medclf_audit_is_shown_as_sentences_with_its_warnings(tmp_path: Path) -> None:
    from medclf.data import audit_dataset, synth_dataset
    from medclf.evaluate.report import audit_findings

    root = tmp_path / "synth"
    synth_dataset(root, layout="csv", n=40, seed=0, size=32)
    audit = json.loads(json.dumps(audit_dataset(root)))  # as read back from audit.json
    lines = audit_findings(audit)
    assert lines[0].startswith(f"{audit['dataset']['images']} images in 2 classes (benign, malignant)")
    assert any(line.startswith("Warning: ") for line in lines) and audit["warnings"]
    assert all("item(s)" not in line and "/" not in line for line in lines)
    run = make_run_dir(tmp_path)
    (run / "audit.json").write_text(json.dumps(audit))
    df = make_predictions(60, image_dir=tmp_path, images_per_group=2)
    evaluate_predictions(df, ["benign", "malignant"], tmp_path / "e", run_dir=run, n_boot=50)
    html = (tmp_path / "e" / "report.html").read_text()
    assert lines[0].split(";")[0] in html and "dataset.classes" not in html
    assert str(root) not in html
