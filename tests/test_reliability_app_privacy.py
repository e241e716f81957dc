"""The Streamlit app keeps uploads in memory: a marked upload never reaches the disk or the app's log.

`medclf app` runs with its own HOME, TMPDIR and working folder; headless Chromium uploads a PNG whose text
chunk holds a random marker and whose file name is random; after the prediction is shown, every file written
since the start (HOME, TMPDIR, cwd, the run folder, /tmp, /var/tmp — except the browser's own profile, which is
the client side) and the app's log are searched for the marker, the name and a slice of the pixel data.
(The REST server's twin of this test is in tests/test_serve_api.py.)
"""

from __future__ import annotations

import io
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import PngImagePlugin

from _fixtures_serve import files_containing, synthetic_image
from medclf.serve.server import app_command, app_env

CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)"
)
def test_app_uploads_never_reach_disk_or_logs(tiny_run, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    marker = f"MARKER-{uuid.uuid4().hex}"
    name = f"patient-{uuid.uuid4().hex[:12]}.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", marker)
    buf = io.BytesIO()
    synthetic_image(1, np.random.default_rng(11)).save(buf, format="PNG", pnginfo=info)
    upload = tmp_path / "client side" / name  # outside every folder searched below
    upload.parent.mkdir()
    upload.write_bytes(buf.getvalue())
    home, tmpd, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    for d in (home, tmpd, cwd):
        d.mkdir()
    env = {**app_env(tiny_run), "HOME": str(home), "TMPDIR": str(tmpd), "OMP_NUM_THREADS": "1"}
    port = _free_port()
    log = tmp_path / "streamlit.log"
    start = time.time()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            app_command(tiny_run, port=port), env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT
        )
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM),
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
            )
            page = browser.new_page()
            deadline = time.time() + 120
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}", timeout=5000)
                    break
                except Exception:
                    assert proc.poll() is None, log.read_text()
                    assert time.time() < deadline, "streamlit did not start"
                    time.sleep(0.5)
            expect(page.get_by_text("Research use only").first).to_be_visible(timeout=90_000)
            page.locator("input[type=file]").first.set_input_files(str(upload))
            expect(page.get_by_text("Decision: malignant")).to_be_visible(timeout=90_000)
            page.wait_for_timeout(1000)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    text = log.read_text(errors="replace")
    assert marker not in text and name not in text, text[-2000:]
    needles = [marker.encode(), name.encode(), buf.getvalue()[100:164]]
    for root in (home, tmpd, cwd, tiny_run, Path("/tmp"), Path("/var/tmp")):
        # skipped: the browser's profile and the uploaded original ("client side"): both are the user's side
        hits = files_containing(root, needles, start, skip=("playwright", ".org.chromium", "client side"))
        assert hits == [], root
