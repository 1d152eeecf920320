"""The page in a real headless browser: Debian's chromium driven by Playwright (no browser download).

A real uvicorn server on a free localhost port, over the planted run and library; the browser
uploads a generated video through the file input, waits for the cards, plays the top track and
checks that the <audio> element starts at the card's suggested start and follows the <video>.
A screenshot goes to build/artifacts/serve-page.png (and to $MVBIND_ARTIFACTS when set).

Without a chromium on PATH the test is skipped, except where MVBIND_REQUIRE_BROWSER=1 (CI sets it):
there a missing browser fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from mvbind.stages.serve import make_app
from tests.planted_library import build_planted
from tests.test_steer import PROMPT, build_steerable

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

if CHROMIUM is None and os.environ.get("MVBIND_REQUIRE_BROWSER") != "1":
    pytest.skip("no chromium on PATH (apt-get install chromium); CI sets MVBIND_REQUIRE_BROWSER=1",
                allow_module_level=True)


@contextlib.contextmanager
def running(app):
    """A real uvicorn server for `app` on a free localhost port, in a thread; yields its URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and server.servers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser_ready(one_thread_module):
    assert CHROMIUM is not None, "MVBIND_REQUIRE_BROWSER=1 but no chromium on PATH: apt-get install chromium"


@pytest.fixture(scope="module")
def server(tmp_path_factory, browser_ready):
    planted = build_planted(tmp_path_factory.mktemp("browser"))
    with running(make_app(planted["config"], run="run", library="planted", progress=False)) as url:
        yield {"url": url, **planted}


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, headless=True,
                             args=["--autoplay-policy=no-user-gesture-required", "--mute-audio"])


def artifact(name: str) -> list[Path]:
    places = [ROOT / "build" / "artifacts"]
    if os.environ.get("MVBIND_ARTIFACTS"):
        places.append(Path(os.environ["MVBIND_ARTIFACTS"]))
    for p in places:
        p.mkdir(parents=True, exist_ok=True)
    return [p / name for p in places]


def test_upload_cards_and_a_track_playing_from_its_suggested_start(server):
    from playwright.sync_api import expect, sync_playwright

    video = server["videos"] / "v3.mp4"
    lo, hi = server["spans"][3]
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server["url"] + "/")
            expect(page.locator("#library")).to_contain_text("planted.mvlib.h5: 8 tracks")
            expect(page.locator("#steer-note")).to_contain_text("signal encoder")  # words can't steer this one
            expect(page.locator("#text")).to_be_disabled()
            page.locator("#k").fill("4")
            page.set_input_files("#file", str(video))
            cards = page.locator("#cards .card")
            expect(cards).to_have_count(4, timeout=60_000)
            expect(page.locator("#result-title")).to_contain_text("4 tracks for v3.mp4")
            first = cards.nth(0)
            expect(first.locator(".title")).to_have_text("track3.wav")
            window_start = float(first.get_attribute("data-window-start"))
            assert lo <= window_start and window_start + 2.0 <= hi + 1e-6, (window_start, lo, hi)
            start = float(first.get_attribute("data-start"))  # playback: the beat-aligned start where there is one
            assert abs(start - window_start) <= 2.0 + 1e-6  # recommend.beat_search
            expect(first.locator("svg.curve polyline")).to_have_count(1)

            first.locator("button.play").click()
            page.wait_for_function("() => !document.getElementById('audio').paused", timeout=30_000)
            audio = page.evaluate("""() => { const a = document.getElementById('audio');
                                     const v = document.getElementById('video');
                                     return {t: a.currentTime, src: a.currentSrc, startedAt: a.dataset.startedAt,
                                             video: v.currentTime, videoError: v.error && v.error.code}; }""")
            assert audio["src"].endswith(f"/api/tracks/{first.get_attribute('data-track')}/audio")
            assert float(audio["startedAt"]) == start
            # playback started at the suggested start (not at 0): within the first second of playing
            assert start - 0.05 <= audio["t"] < start + 1.0, audio
            expect(first).to_have_class("card playing")
            if audio["videoError"] is None:  # the browser plays H.264: the audio follows the video
                page.wait_for_function("() => document.getElementById('video').currentTime > 0.5", timeout=30_000)
                follow = page.evaluate("""() => { const a = document.getElementById('audio');
                                          const v = document.getElementById('video');
                                          return a.currentTime - v.currentTime; }""")
                assert abs(follow - start) < 0.5, (follow, start)
            for path in artifact("serve-page.png"):
                page.screenshot(path=str(path), full_page=True)

            # switching tracks without reloading: the second card's track from its own start
            second = cards.nth(1)
            second.locator("button.play").click()
            expect(second).to_have_class("card playing")
            page.wait_for_function(
                f"() => document.getElementById('audio').dataset.track === '{second.get_attribute('data-track')}'"
                " && !document.getElementById('audio').paused", timeout=30_000)

            # a rejected upload shows the server's one-line reason
            text = server["root"] / "notes.mp4"
            text.write_text("not a video at all\n" * 10)
            page.set_input_files("#file", str(text))
            expect(page.locator("#message")).to_contain_text("not a video", timeout=30_000)
            assert errors == []

            # the OpenAPI page renders every operation from packaged assets (the browser has no internet)
            page.goto(server["url"] + "/docs")
            expect(page.locator(".opblock")).to_have_count(8, timeout=30_000)
            expect(page.locator(".opblock").filter(has_text="/api/recommend").first).to_be_visible()
        finally:
            browser.close()


def test_words_steer_the_page_and_search_by_text_alone(tmp_path, browser_ready):
    from playwright.sync_api import expect, sync_playwright

    lib = build_steerable(tmp_path)
    with running(make_app(lib["config"], run=None, library="songs", progress=False)) as url, \
            sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            expect(page.locator("#text")).to_be_enabled()
            page.locator("#text").fill(PROMPT)
            page.locator("#search-text").click()
            cards = page.locator("#cards .card")
            expect(page.locator("#result-title")).to_contain_text(f"tracks for “{PROMPT}”", timeout=60_000)
            expect(page.locator("#result-meta")).to_contain_text("text only, zero-shot")
            expect(cards.nth(0)).to_have_attribute("data-track", str(lib["target_track"]))
            expect(page.locator("#video")).to_be_hidden()
            cards.nth(0).locator("button.play").click()
            page.wait_for_function("() => !document.getElementById('audio').paused", timeout=30_000)

            # the same words steer an uploaded video's recommendations (weight from the slider)
            page.locator("#weight").fill("0.6")
            page.set_input_files("#file", str(lib["video"]))
            expect(page.locator("#result-meta")).to_contain_text(f"steered by “{PROMPT}” (weight 0.6)",
                                                                 timeout=60_000)
            expect(cards.nth(0)).to_have_attribute("data-track", str(lib["target_track"]))
            assert errors == []
        finally:
            browser.close()
