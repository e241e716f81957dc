"""Screenshots of an evaluation report for the docs (evaluation.md): the top of the page at desktop and phone
width, and the gallery of the most confident errors.

    .venv/bin/python docs/screenshot_report.py RUN/eval/report.html --out docs/img

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` package (no browser download).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    url = args.report.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        page.screenshot(path=str(args.out / "report_skin_bm.png"))
        page.locator("#errors").screenshot(
            path=str(args.out / "report_skin_bm_errors.jpg"), quality=80, type="jpeg"
        )
        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.goto(url)
        phone.screenshot(path=str(args.out / "report_skin_bm_phone.png"))
        browser.close()
    print(f"wrote 3 screenshots to {args.out}")


if __name__ == "__main__":
    main()
