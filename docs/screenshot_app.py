"""Screenshot of `medclf app` for the docs: start the app on a run, upload one image in headless Chromium.

    .venv/bin/python docs/screenshot_app.py RUN_DIR IMAGE --out docs/img/app_skin_bm.png

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` package (no browser download).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import time
from pathlib import Path

from medclf.serve.server import app_command, app_env

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("image")
    ap.add_argument("--out", default="docs/img/app.png")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        app_command(args.run_dir, port=port),
        env=app_env(args.run_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            deadline = time.time() + 120
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}", timeout=5000)
                    break
                except Exception:
                    if time.time() > deadline or proc.poll() is not None:
                        raise SystemExit("the app did not start") from None
                    time.sleep(0.5)
            expect(page.get_by_text("Research use only").first).to_be_visible(timeout=120_000)
            upload = page.locator("input[type=file]").first
            # the first start fits the run's out-of-distribution detector before the page is ready
            upload.wait_for(state="attached", timeout=300_000)
            upload.set_input_files(args.image)
            expect(page.get_by_text("Decision:")).to_be_visible(timeout=120_000)
            expect(page.get_by_text("Grad-CAM (gradcam)")).to_be_visible(timeout=120_000)
            page.wait_for_timeout(1000)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
