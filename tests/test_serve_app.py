"""The Streamlit app: headless (AppTest) and end to end in real headless Chromium (Playwright)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from medclf.serve.server import APP_SCRIPT, app_command, app_env

CHROMIUM = Path("/usr/bin/chromium")


def _app(run_dir: Path, monkeypatch: pytest.MonkeyPatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MEDCLF_RUN_DIR", str(run_dir))
    at = AppTest.from_file(str(APP_SCRIPT), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    return at


def test_app_sample_prediction_threshold_and_heatmap(tiny_run, monkeypatch) -> None:
    at = _app(tiny_run, monkeypatch)
    assert any("not a diagnosis" in w.value for w in at.warning)
    assert [t.label for t in at.tabs] == ["Predict", "Model card and metrics"]
    samples = at.selectbox(key="sample")
    malignant = next(o for o in samples.options if "(malignant)" in o)
    samples.select(malignant).run()
    assert not at.exception, at.exception
    decisions = [m.value for m in at.markdown if m.value.startswith("**Decision")]
    assert decisions == ["**Decision: malignant**"]
    slider = at.slider(key="threshold")
    assert slider.value == pytest.approx(0.4)  # the run's operating point
    slider.set_value(1.0).run()
    assert [m.value for m in at.markdown if m.value.startswith("**Decision")] == ["**Decision: benign**"]
    assert any(s.label == "Heat-map intensity" for s in at.slider)
    at.slider(key="alpha").set_value(0.9).run()
    assert not at.exception
    # the model tab: card text and validation metrics
    assert any("tiny synthetic test model" in m.value for m in at.markdown)
    assert len(at.table) == 1


def test_app_metadata_inputs_for_fusion_models(fusion_run, monkeypatch) -> None:
    at = _app(fusion_run, monkeypatch)
    assert at.number_input(key="meta_age").value is None
    assert at.selectbox(key="meta_sex").options[0] == "unknown"
    at.selectbox(key="sample").select_index(1).run()
    at.number_input(key="meta_age").set_value(70).run()
    assert not at.exception
    assert any(m.value.startswith("**Decision") for m in at.markdown)


def test_app_threshold_for_a_multiclass_positive_group(group_run, monkeypatch) -> None:
    at = _app(group_run, monkeypatch)
    at.selectbox(key="sample").select_index(1).run()
    assert not at.exception, at.exception
    slider = at.slider(key="threshold")
    assert slider.label == "Decision threshold on P(mel+bcc)" and slider.value == pytest.approx(0.3)
    slider.set_value(1.0).run()  # nothing reaches P(mel+bcc) >= 1: the best class outside the group
    assert [m.value for m in at.markdown if m.value.startswith("**Decision")] == ["**Decision: nv**"]
    at.slider(key="threshold").set_value(0.0).run()
    decision = [m.value for m in at.markdown if m.value.startswith("**Decision")]
    assert decision in (["**Decision: mel**"], ["**Decision: bcc**"])


def test_app_without_run_dir(monkeypatch, tmp_path) -> None:
    at = _app(tmp_path, monkeypatch)
    assert any("medclf app RUN_DIR" in e.value for e in at.error)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)"
)
def test_app_in_real_chromium(tiny_run, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    port = _free_port()
    env = {**app_env(tiny_run), "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "streamlit.log", "wb") as log:
        proc = subprocess.Popen(
            app_command(tiny_run, port=port), env=env, stdout=log, stderr=subprocess.STDOUT
        )
    image = next((tiny_run.parent / "images").glob("malignant_03*.png"))
    shot = tmp_path / "app.png"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            deadline = time.time() + 90
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}", timeout=5000)
                    break
                except Exception:
                    assert proc.poll() is None, (tmp_path / "streamlit.log").read_text()
                    assert time.time() < deadline, "streamlit did not start"
                    time.sleep(0.5)
            expect(page.get_by_text("Research use only").first).to_be_visible(timeout=90_000)
            page.locator("input[type=file]").first.set_input_files(str(image))
            expect(page.get_by_text("Decision: malignant")).to_be_visible(timeout=90_000)
            expect(page.get_by_text("Grad-CAM (gradcam)")).to_be_visible(timeout=90_000)
            heat = page.locator("img[alt*='Grad-CAM'], [data-testid='stImage'] img")
            expect(heat.nth(1)).to_be_visible(timeout=30_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert shot.stat().st_size > 10_000
    # keep the artifact beside the test run (and refresh the docs screenshot when asked to)
    if os.environ.get("MEDCLF_UPDATE_DOCS_SCREENSHOT"):
        dest = Path(__file__).resolve().parents[1] / "docs" / "img" / "app.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest)
    print(f"screenshot: {shot}")
