"""The web page in a real browser: Debian's Chromium driven by Playwright, against a live server
subprocess (tests/web_server.py: the real app on the fake pipeline).

Screenshots go to test-artifacts/. docs/screenshot.png is written from the Single tab when it is
missing or when HEYGEM_UPDATE_SCREENSHOT=1, so ordinary runs leave the working tree clean.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests import media
from tests.kit import PROJECT, ServerProcess, wait_until

pytestmark = pytest.mark.slow  # a live server subprocess

ARTIFACTS = PROJECT / "test-artifacts"
DOCS_SCREENSHOT = PROJECT / "docs" / "screenshot.png"
SCREENSHOT_LIMIT = 300 * 1024
VIEWPORT = {"width": 1280, "height": 900}
HEALTH_DEADLINE_S = 10.0  # the ModelArts contract: /health answers within 10 s of process start
UI_TIMEOUT_S = 120.0  # importing gradio and building the page, on a busy 2-core machine
WAIT_MS = 60_000  # generous: jobs, timers and uploads on a shared machine
MP4_URL = re.compile(r"\.mp4$")
GATEWAY_PREFIX = "/v1/infers/0a1b2c"  # as on ModelArts


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = ServerProcess(tmp_path_factory.mktemp("web") / "data", env={"HEYGEM_WARMUP": "false"})
    try:
        live.wait_for("/", 200, UI_TIMEOUT_S)
        yield live
    finally:
        live.stop_cleanly()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(locale="en-US", viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/")
    page.locator("#generate").wait_for()
    yield page
    context.close()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


def download(page: Page, link, target: Path) -> Path:
    with page.expect_download() as info:
        link.click()
    info.value.save_as(target)
    return target


def upload_face_and_check_it(page, face_video) -> None:
    """Upload the face video and press "check face": the pipeline's real first frame + box."""
    page.locator("#single-face input[type=file]").set_input_files(face_video)
    expect(page.locator("#single-face")).to_contain_text("face")
    page.locator("#check-face").click()
    expect(page.locator("#face-note")).to_contain_text("Face found")
    expect(page.locator("#face-preview img")).to_be_visible()


def test_single_tab_generate_play_and_download(page, speech_wav, face_video, tmp_path):
    page.locator("#single-audio input[type=file]").set_input_files(speech_wav)
    upload_face_and_check_it(page, face_video)
    page.locator("#generate").click()
    video = page.locator("#result-video video")
    expect(video).to_have_attribute("src", MP4_URL)
    expect(page.locator("#result-summary")).to_contain_text("Done")
    page.evaluate("window.scrollTo(0, 0)")
    _update_docs_screenshot(screenshot(page, "single-tab.png"))
    saved = download(page, page.locator("#result-file a[download]").first, tmp_path / "result.mp4")
    assert media.stream_types(saved) == ["video", "audio"]
    assert abs(media.duration_of(saved) - media.duration_of(face_video)) < 0.2


def _update_docs_screenshot(shot: Path) -> None:
    if DOCS_SCREENSHOT.exists() and os.environ.get("HEYGEM_UPDATE_SCREENSHOT") != "1":
        return
    from PIL import Image

    DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
    # A 256-colour palette keeps the committed picture small; the UI is mostly flat colour.
    Image.open(shot).convert("RGB").quantize(colors=256).save(DOCS_SCREENSHOT, optimize=True)
    assert DOCS_SCREENSHOT.stat().st_size < SCREENSHOT_LIMIT


def test_batch_tab_runs_two_items_and_downloads_the_zip(page, speech_wav, face_video, face_image, tmp_path):
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-audio input[type=file]").set_input_files(speech_wav)
    page.locator("#batch-videos input[type=file]").set_input_files([face_video, face_image])
    expect(page.locator("#batch-videos")).to_contain_text("face")
    page.locator("#batch-run").click()
    expect(page.locator("#batch-summary")).to_contain_text("2 of 2 done, 0 failed")
    expect(page.locator("#batch-gallery video")).to_have_count(2)  # the mp4s, not thumbnails
    expect(page.locator("#batch-table")).to_contain_text("succeeded")
    page.locator("#batch-zip").click()
    saved = download(page, page.locator("#batch-zip-file a[download]").first, tmp_path / "batch.zip")
    names = zipfile.ZipFile(saved).namelist()
    assert sum(name.endswith(".mp4") for name in names) == 2
    screenshot(page, "batch-tab.png")


def submit_through_api(server, audio: Path, video: Path) -> str:
    with open(audio, "rb") as a, open(video, "rb") as v:
        response = httpx.post(
            server.url + "/api/v1/jobs",
            timeout=WAIT_MS / 1000,
            files={"audio": (audio.name, a), "video": (video.name, v)},
        )
    response.raise_for_status()
    job_id = response.json()["id"]
    wait_until(
        lambda: httpx.get(f"{server.url}/api/v1/jobs/{job_id}").json()["status"] == "succeeded",
        WAIT_MS / 1000,
        interval=0.2,
        message="the API job to finish",
    )
    return job_id


def test_history_previews_deletes_one_and_deletes_all(page, server, speech_wav, face_video):
    kept = submit_through_api(server, speech_wav, face_video)
    newest = submit_through_api(server, speech_wav, face_video)
    page.get_by_role("tab", name="History").click()
    page.locator("#history-refresh").click()
    thumbnails = page.locator("#history-gallery button img")
    expect(thumbnails.first).to_be_visible()
    thumbnails.first.click()
    expect(page.locator("#history-details")).to_contain_text(newest)  # newest first
    expect(page.locator("#history-video video")).to_have_attribute("src", MP4_URL)
    expect(page.locator("#history-file a[download]")).to_have_count(1)
    screenshot(page, "history-tab.png")
    page.locator("#history-delete").click()
    page.locator("#history-confirm-one-yes").click()  # delete asks first
    expect(page.locator("#history-details")).not_to_contain_text(newest)
    assert httpx.get(f"{server.url}/api/v1/jobs/{newest}").status_code == 404
    assert httpx.get(f"{server.url}/api/v1/jobs/{kept}").status_code == 200
    page.locator("#history-delete-all").click()
    page.locator("#history-confirm-no").click()
    assert httpx.get(f"{server.url}/api/v1/jobs/{kept}").status_code == 200
    page.locator("#history-delete-all").click()
    page.locator("#history-confirm-yes").click()
    expect(page.locator("#history-page")).to_contain_text("(0 jobs)")
    assert httpx.get(f"{server.url}/api/v1/jobs").json()["total"] == 0


def test_bad_input_shows_a_readable_error(page):
    page.locator("#generate").click()
    expect(page.get_by_text("Please add the speech audio or type the text to speak.")).to_be_visible()


def test_page_follows_the_browser_language(browser, server):
    context = browser.new_context(locale="zh-CN", viewport=VIEWPORT)
    page = context.new_page()
    page.goto(server.url + "/")
    expect(page.locator("#generate")).to_have_text("生成", timeout=WAIT_MS)
    expect(page.get_by_role("tab", name="批量任务")).to_be_visible()
    context.close()


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """A server whose "model" loads only when the test opens the gate, with small upload limits,
    behind a gateway prefix (the page is reached under it, the probes straight)."""
    folder = tmp_path_factory.mktemp("cold")
    gate = folder / "model-loaded"
    live = ServerProcess(
        folder / "data",
        env={
            "HEYGEM_FAKE_LOAD_GATE": str(gate),
            "HEYGEM_MAX_UPLOAD_MB": "1",
            "HEYGEM_MAX_DURATION_S": "3",
            "HEYGEM_ROOT_PATH": GATEWAY_PREFIX,
        },
    )
    try:
        live.health_at = live.wait_for("/health", 200, HEALTH_DEADLINE_S)
        live.gate = gate
        yield live
    finally:
        live.stop_cleanly()


def test_cold_start_health_first_then_ready_and_the_loading_banner(browser, cold):
    assert cold.health_at < HEALTH_DEADLINE_S
    assert cold.wait_for("/ready", 503, HEALTH_DEADLINE_S)
    cold.wait_for(GATEWAY_PREFIX + "/", 200, UI_TIMEOUT_S)
    context = browser.new_context(locale="en-US", viewport=VIEWPORT)
    page = context.new_page()
    page.goto(cold.url + GATEWAY_PREFIX + "/")
    banner = page.locator("#heygem-banner")
    expect(banner).to_contain_text("The model is loading", timeout=WAIT_MS)
    cold.gate.touch()
    cold.wait_for("/ready", 200, UI_TIMEOUT_S)
    expect(banner).to_be_hidden(timeout=WAIT_MS)
    context.close()


def test_uploads_over_the_limits_are_refused_up_front(browser, cold, speech_wav, face_video, tmp_path):
    cold.wait_for(GATEWAY_PREFIX + "/", 200, UI_TIMEOUT_S)
    context = browser.new_context(locale="en-US", viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(cold.url + GATEWAY_PREFIX + "/")
    big = tmp_path / "big.wav"
    big.write_bytes(bytes(2 << 20))
    page.locator("#single-audio input[type=file]").set_input_files(big)
    expect(page.get_by_text("exceed the maximum allowed size")).to_be_visible()
    page.reload()
    page.locator("#single-audio input[type=file]").set_input_files(speech_wav)  # ~4 s > 3 s
    upload_face_and_check_it(page, face_video)
    page.locator("#generate").click()
    expect(page.get_by_text("Too large or too long: speech.wav is")).to_be_visible()
    context.close()
    assert httpx.get(cold.url + "/api/v1/jobs").json()["total"] == 0
