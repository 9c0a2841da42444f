"""Screenshots of a running dashboard for the README (headless Debian Chromium).

    python scripts/dashboard_screenshots.py http://127.0.0.1:8750 <execution with a warning>

Writes docs/img/dashboard-listing.png and docs/img/dashboard-details.png.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"


def main(base_url: str, execution: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 640}, device_scale_factor=1)
        page.goto(f"{base_url}/executions")
        page.screenshot(path=str(OUT / "dashboard-listing.png"), full_page=True)
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.goto(f"{base_url}/executions/{execution}")
        page.screenshot(path=str(OUT / "dashboard-details.png"), full_page=False)
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
