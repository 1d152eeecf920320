"""Make the README's screenshot of `mvbind serve`: the demo's page after uploading a held-out video.

    .venv/bin/python scripts/serve_screenshot.py --demo demo --video demo/data/videos/v0004.mp4

Needs a finished `mvbind demo` and a chromium on PATH (apt-get install chromium). Writes
docs/images/serve.png (or --out). The page is driven as a person would: the file goes through the
file input, the top card's play button is clicked.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import expect, sync_playwright

from mvbind.pipeline.config import load_config
from mvbind.stages.serve import make_app

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("demo"))
    ap.add_argument("--video", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "serve.png")
    args = ap.parse_args()
    app = make_app(load_config(args.demo / "pipeline.toml"), run="demo", library="demo", progress=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                        args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"])
            page = browser.new_page(viewport={"width": 1180, "height": 860})
            page.goto(url)
            page.set_input_files("#file", str(args.video))
            expect(page.locator("#cards .card")).to_have_count(5, timeout=120_000)
            page.locator("#cards .card button.play").first.click()
            page.wait_for_function("() => document.getElementById('video').currentTime > 1.5", timeout=30_000)
            page.evaluate("() => document.getElementById('video').pause()")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
