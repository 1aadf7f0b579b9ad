"""The Avatars tab and text-to-video in a real browser (Debian's Chromium driven by Playwright)
against a live server subprocess on the fake pipeline: create an avatar from the face video, wait
for it to be ready, pick it on the Single tab, type text, hear it, generate and see the video.

docs/avatars.png (the Avatars tab above the Single tab with typed text) is written when it is
missing or when HEYGEM_UPDATE_SCREENSHOT=1, so ordinary runs leave the working tree clean.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.kit import PROJECT, ServerProcess

pytestmark = pytest.mark.slow  # a live server subprocess and a browser

ARTIFACTS = PROJECT / "test-artifacts"
DOCS_SCREENSHOT = PROJECT / "docs" / "avatars.png"
SCREENSHOT_LIMIT = 300 * 1024
VIEWPORT = {"width": 1280, "height": 900}
UI_TIMEOUT_S = 120.0  # importing gradio and building the page, on a busy 2-core machine
WAIT_MS = 90_000  # avatar preparation, speech and the job, on a shared machine
MP4_URL = re.compile(r"\.mp4$")
AVATAR_ID = re.compile(r"[0-9a-f]{32}")
SCRIPT = "Hello! This clip was made from typed text."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = ServerProcess(tmp_path_factory.mktemp("avatars") / "data", env={"HEYGEM_WARMUP": "false"})
    try:
        live.wait_for("/", 200, UI_TIMEOUT_S)
        yield live
    finally:
        live.stop_cleanly()


def open_page(browser, server, locale: str) -> Page:
    context = browser.new_context(locale=locale, viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/")
    page.locator("#generate").wait_for()
    return page


def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    return path


def choose(page: Page, picker: str, option: str) -> None:
    """Pick an option of a Gradio dropdown by its label."""
    page.locator(f"#{picker} input").click()
    page.get_by_role("option", name=option).click()


def test_avatar_then_typed_text_to_video(browser, server, face_video):
    page = open_page(browser, server, "en-US")
    page.get_by_role("tab", name="Avatars").click()
    page.locator("#avatar-upload input[type=file]").set_input_files(face_video)
    expect(page.locator("#avatar-upload")).to_contain_text("face")
    page.locator("#avatar-name textarea, #avatar-name input").first.fill("Anna")
    page.locator("#avatar-create").click()
    expect(page.locator("#avatar-details")).to_contain_text("Anna")
    # The tab refreshes by itself while the avatar is preparing, the shown details too.
    # (preparing finds the face on CPU: seconds on a busy machine, more than expect's 5 s)
    expect(page.locator("#avatar-gallery")).to_contain_text("Anna · ready", timeout=WAIT_MS)
    expect(page.locator("#avatar-details")).to_contain_text("Status: ready")
    avatar_id = AVATAR_ID.search(page.locator("#avatar-details").inner_text()).group(0)
    page.evaluate("window.scrollTo(0, 0)")
    avatars_shot = screenshot(page, "avatars-tab.png", full_page=True)

    page.get_by_role("tab", name="Single").click()
    choose(page, "single-avatar", "Anna")
    expect(page.locator("#face-note")).to_contain_text("Anna")
    page.locator("#single-text textarea").fill(SCRIPT)
    expect(page.locator("#speech-note")).to_contain_text("robotic")
    page.locator("#hear-it").click()
    heard = page.locator("#hear-it-audio [data-testid^=waveform] audio")
    expect(heard).to_have_attribute("src", re.compile(r"^blob:"))  # the WAV, loaded by the player
    page.locator("#generate").click()
    expect(page.locator("#result-video video")).to_have_attribute("src", MP4_URL)
    expect(page.locator("#result-summary")).to_contain_text("Done")
    page.evaluate("window.scrollTo(0, 0)")
    single_shot = screenshot(page, "single-tab-text.png", full_page=True)

    jobs = httpx.get(server.url + "/api/v1/jobs").json()["jobs"]
    assert [(job["status"], job["video"], job["text"]) for job in jobs] == [
        ("succeeded", f"avatar:{avatar_id}", SCRIPT)
    ]
    _update_docs_screenshot(avatars_shot, single_shot)
    page.context.close()


def _update_docs_screenshot(*shots: Path) -> None:
    if DOCS_SCREENSHOT.exists() and os.environ.get("HEYGEM_UPDATE_SCREENSHOT") != "1":
        return
    from PIL import Image

    pictures = [Image.open(shot).convert("RGB") for shot in shots]
    sheet = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    top = 0
    for picture in pictures:
        sheet.paste(picture, (0, top))
        top += picture.height
    # A 256-colour palette keeps the committed picture small; the UI is mostly flat colour.
    sheet.quantize(colors=256).save(DOCS_SCREENSHOT, optimize=True)
    assert DOCS_SCREENSHOT.stat().st_size < SCREENSHOT_LIMIT


def test_avatar_and_speech_labels_in_chinese(browser, server):
    page = open_page(browser, server, "zh-CN")
    expect(page.locator("#hear-it")).to_have_text("试听")
    expect(page.locator("#single-avatar")).to_contain_text("数字人")
    expect(page.locator("#single-text")).to_contain_text("输入要朗读的文字")
    expect(page.locator("#speech-note")).to_contain_text("机械")
    page.get_by_role("tab", name="数字人").click()
    expect(page.locator("#avatar-create")).to_have_text("创建数字人")
    expect(page.locator("#avatar-name")).to_contain_text("名称")
    expect(page.locator("#avatar-delete")).to_have_text("删除数字人")
    page.get_by_role("tab", name="批量任务").click()
    expect(page.locator("#batch-avatar")).to_contain_text("数字人")
    page.context.close()
