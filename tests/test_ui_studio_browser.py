"""The page as a studio (issue 16), in Chromium: work survives a reload, cancel, batch items fail
alone, a searchable History, zh-CN errors and labels, and a phone viewport.

One live server for the module (tests/web_server.py: the real app on the fake pipeline) whose
runs hold "running" while the run gate file is missing, so a test can reload or cancel mid-job.
Screenshots of each tab, desktop and phone, are written to docs/screenshots/ when missing or with
HEYGEM_UPDATE_SCREENSHOT=1; they show the fake test engine, as their README caption says.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests import media
from tests.kit import PROJECT, ServerProcess, wait_until

pytestmark = pytest.mark.slow  # a live server subprocess

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
UI_TIMEOUT_S = 120.0
WAIT_MS = 60_000
EXPECT_DEFAULT_MS = 5_000  # Playwright's own
SCREENSHOTS = PROJECT / "docs" / "screenshots"
SCREENSHOT_LIMIT = 400 * 1024
MP4_URL = re.compile(r"\.mp4")
JOB_URL = re.compile(r"[?&]job=[0-9a-f]{32}")
BATCH_URL = re.compile(r"[?&]batch=[0-9a-f]{32}")


@pytest.fixture(scope="module", autouse=True)
def patient_expect():
    """Jobs, timers and uploads on a shared 2-core machine: expect waits as long as actions."""
    expect.set_options(timeout=WAIT_MS)
    yield
    expect.set_options(timeout=EXPECT_DEFAULT_MS)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studio")
    gate = folder / "runs-may-finish"
    live = ServerProcess(folder / "data", env={"HEYGEM_WARMUP": "false", "HEYGEM_FAKE_RUN_GATE": str(gate)})
    try:
        live.wait_for("/", 200, UI_TIMEOUT_S)
        live.gate = gate
        gate.touch()  # runs finish unless a test holds them
        yield live
    finally:
        live.stop_cleanly()


@pytest.fixture
def held(server):
    """Runs hold "running" during the test; they may finish once it calls the returned opener."""
    server.gate.unlink(missing_ok=True)
    yield server.gate.touch
    server.gate.touch()


def open_page(browser, server, *, locale="en-US", viewport=DESKTOP, query=""):
    context = browser.new_context(locale=locale, viewport=viewport, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.url + "/" + query)
    page.locator("#generate").wait_for()
    return context, page


@pytest.fixture
def page(browser, server):
    context, page = open_page(browser, server)
    yield page
    context.close()


def job_status(server, job_id: str) -> str:
    return httpx.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=10).json()["status"]


def wait_status(server, job_id: str, status: str) -> None:
    wait_until(lambda: job_status(server, job_id) == status, WAIT_MS / 1000, interval=0.2, message=status)


def url_id(page: Page, key: str) -> str:
    match = re.search(rf"[?&]{key}=([0-9a-f]{{32}})", page.url)
    assert match, page.url
    return match.group(1)


def start_single(page: Page, speech_wav, face_video) -> None:
    page.locator("#single-audio input[type=file]").set_input_files(speech_wav)
    page.locator("#single-face input[type=file]").set_input_files(face_video)
    expect(page.locator("#face-note")).to_contain_text("Face found")  # checked on upload
    page.locator("#generate").click()
    expect(page).to_have_url(JOB_URL)


def open_history(page: Page) -> None:
    """The History tab, once the listing its opening asked for has arrived (a search typed
    before that would be overwritten by it)."""
    page.get_by_role("tab", name="History").click()
    label = page.locator("#history-page")
    expect(label).to_contain_text("jobs)")
    page.wait_for_timeout(300)
    expect(label).not_to_contain_text("processing")


def test_a_reload_mid_job_reconnects_to_progress_and_the_named_result(
    page, server, held, speech_wav, face_video, tmp_path
):
    expect(page.locator("#speech-check")).to_have_count(1)
    start_single(page, speech_wav, face_video)
    job_id = url_id(page, "job")
    wait_status(server, job_id, "running")
    page.reload()
    page.locator("#generate").wait_for()
    expect(page.locator("#result-video")).to_contain_text("Synthesizing the lips")  # live progress again
    held()
    expect(page.locator("#result-video video")).to_have_attribute("src", MP4_URL)
    expect(page.locator("#result-summary")).to_contain_text("Done")
    link = page.locator("#result-file a[download]").first
    with page.expect_download() as info:
        link.click()
    assert info.value.suggested_filename == f"{face_video.stem}_{speech_wav.stem}.mp4"
    saved = tmp_path / "named.mp4"
    info.value.save_as(saved)
    assert media.stream_types(saved) == ["video", "audio"]
    # Accessibility and polish: uploads named after their field, no raw translation keys, and
    # "Use via API" leads to the API's own documentation.
    expect(page.locator("#single-face input[type=file]")).to_have_attribute(
        "aria-label", "Face video or photo"
    )
    expect(page.locator("#single-speech-video input[type=file]")).to_have_attribute(
        "aria-label", re.compile("video whose sound")
    )
    # no raw translation key in what is shown or read out
    assert "common." not in page.locator("body").inner_text()
    expect(page.locator("[aria-label*='common.'], [title*='common.']")).to_have_count(0)
    docs = page.locator("#api-docs-link a")
    expect(docs).to_have_attribute("href", "docs")
    assert httpx.get(server.url + "/docs", timeout=10).status_code == 200


def test_cancel_from_the_single_tab_really_cancels(page, server, held, speech_wav, face_video):
    start_single(page, speech_wav, face_video)
    job_id = url_id(page, "job")
    wait_status(server, job_id, "running")
    page.locator("#single-cancel").click()
    expect(page.locator("#single-status")).to_contain_text("was cancelled")
    assert job_status(server, job_id) == "cancelled"  # cancelled, not deleted


def test_a_reload_mid_batch_brings_back_its_table_gallery_zip_and_retry(
    page, server, held, speech_wav, face_video, face_image, tmp_path
):
    page.get_by_role("tab", name="Batch").click()
    expect(page.locator("#batch-table")).to_be_hidden()  # no fake headers before a batch
    page.locator("#batch-audio input[type=file]").set_input_files(speech_wav)
    page.locator("#batch-videos input[type=file]").set_input_files([face_video, face_image])
    expect(page.locator("#batch-videos")).to_contain_text("face")
    page.locator("#batch-run").click()
    expect(page).to_have_url(BATCH_URL)
    page.reload()
    page.locator("#generate").wait_for()
    expect(page.get_by_role("tab", name="Batch")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#batch-table")).to_contain_text("running")
    held()
    expect(page.locator("#batch-summary")).to_contain_text("2 of 2 done, 0 failed")
    expect(page.locator("#batch-table")).to_contain_text(speech_wav.name)
    page.locator("#batch-gallery video").first.click()
    with page.expect_download() as info:
        page.locator("#batch-gallery button[aria-label='Download']").first.click()
    assert info.value.suggested_filename.endswith(".mp4")
    saved = tmp_path / "item.mp4"
    info.value.save_as(saved)
    assert media.stream_types(saved) == ["video", "audio"]
    page.locator("#batch-zip").click()
    expect(page.locator("#batch-zip-file a[download]")).to_have_count(1)  # not "Run a batch first"
    page.locator("#batch-retry").click()
    expect(page.locator("#batch-note .heygem-error")).to_have_count(0)
    # Later, from a fresh page: History reopens the batch with its table.
    batch_id = url_id(page, "batch")
    page.goto(server.url + "/")
    page.locator("#generate").wait_for()
    open_history(page)
    search = page.locator("#history-search textarea, #history-search input").first
    search.fill(batch_id)
    search.press("Enter")
    expect(page.locator("#history-page")).to_contain_text("(2 jobs)")
    page.locator("#history-gallery button img").first.click()
    page.locator("#history-open-batch").click()
    expect(page.get_by_role("tab", name="Batch")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#batch-summary")).to_contain_text(batch_id)
    expect(page.locator("#batch-table")).to_contain_text("succeeded")
    expect(page).to_have_url(re.compile(f"batch={batch_id}"))


def test_a_manifest_with_one_corrupt_video_runs_the_others(page, speech_wav, face_video, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    manifest = tmp_path / "jobs.jsonl"
    manifest.write_text(
        f'{{"audio": "{speech_wav.name}", "video": "{face_video.name}", "output_name": "good.mp4"}}\n'
        f'{{"audio": "{speech_wav.name}", "video": "broken.mp4", "output_name": "bad.mp4"}}\n'
    )
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-audio input[type=file]").set_input_files(speech_wav)
    page.locator("#batch-videos input[type=file]").set_input_files([face_video, broken])
    page.locator("#batch-manifest input[type=file]").set_input_files(manifest)
    expect(page.locator("#batch-manifest")).to_contain_text("jobs")
    page.locator("#batch-run").click()
    expect(page.locator("#batch-summary")).to_contain_text("1 of 2 done, 1 failed")
    table = page.locator("#batch-table")
    expect(table).to_contain_text("bad.mp4")
    expect(table).to_contain_text("failed")
    expect(page.locator("#batch-gallery video")).to_have_count(1)


def test_history_updates_on_its_own_and_searches_and_filters(
    page, server, held, speech_wav, face_video, tmp_path
):
    with open(speech_wav, "rb") as a, open(face_video, "rb") as v:
        response = httpx.post(
            server.url + "/api/v1/jobs",
            timeout=30,
            data={"output_name": "findme.mp4"},
            files={"audio": (speech_wav.name, a), "video": (face_video.name, v)},
        )
    job_id = response.json()["id"]
    wait_status(server, job_id, "running")
    open_history(page)
    gallery = page.locator("#history-gallery")
    # Delete with nothing picked: a note by the buttons, and the list stays.
    page.locator("#history-delete").click()
    expect(page.locator("#history-note")).to_contain_text("Select a job")
    expect(gallery.locator("button img").first).to_be_visible()
    page.locator("#history-status").get_by_text("running", exact=True).click()
    expect(page.locator("#history-page")).to_contain_text("(1 jobs)")
    expect(gallery).to_contain_text("findme.mp4")
    page.locator("#history-status").get_by_text("succeeded", exact=True).click()
    expect(gallery).not_to_contain_text("findme.mp4")
    page.locator("#history-status").get_by_text("all", exact=True).click()
    expect(gallery).to_contain_text("findme.mp4 · running")
    held()
    expect(gallery).to_contain_text("findme.mp4 · succeeded")  # no click: the list follows the job
    search = page.locator("#history-search textarea, #history-search input").first
    search.fill("findme")
    search.press("Enter")
    expect(page.locator("#history-page")).to_contain_text("(1 jobs)")
    gallery.locator("button img").first.click()
    details = page.locator("#history-details")
    expect(details).to_contain_text(speech_wav.name)  # the inputs
    expect(details).to_contain_text("Expires")
    shoot(page, "history-search", tmp_path)
    page.locator("#history-reuse").click()
    expect(page.get_by_role("tab", name="Single")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#single-status")).to_contain_text(f"The inputs of job {job_id}")
    expect(
        page.locator("#single-audio audio, #single-audio [data-testid=waveform-controls]").first
    ).to_be_attached()
    expect(page.locator("#single-face").get_by_role("cell", name=face_video.name)).to_be_visible()
    page.get_by_role("tab", name="History").click()
    page.locator("#history-delete").click()
    page.locator("#history-confirm-one-yes").click()
    expect(page.locator("#history-note")).to_contain_text(f"Deleted job {job_id}")
    expect(details).not_to_contain_text(job_id)  # the selection is cleared
    assert httpx.get(f"{server.url}/api/v1/jobs/{job_id}", timeout=10).status_code == 404


def test_zh_cn_shows_translated_errors_and_option_labels(browser, server, face_video, tmp_path):
    context, page = open_page(browser, server, locale="zh-CN")
    page.locator("#generate").click()
    expect(page.locator("#single-status")).to_contain_text("请添加语音音频")
    page.get_by_text("选项").first.click()
    expect(page.get_by_text("羽化")).to_be_visible()
    expect(page.get_by_text("离点最近的")).to_be_visible()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    page.locator("#single-face input[type=file]").set_input_files(broken)
    expect(page.locator("#face-note .heygem-error")).to_contain_text(
        "请检查输入"
    )  # a back-end error, titled in zh-CN
    context.close()


def test_a_phone_scrolls_to_the_progress_on_generate(browser, server):
    context, page = open_page(browser, server, viewport=PHONE)
    assert page.evaluate("window.scrollY") == 0
    page.locator("#generate").scroll_into_view_if_needed()
    page.locator("#generate").click()
    expect(page.locator("#single-status")).to_be_in_viewport()
    expect(page.locator("#single-status")).to_contain_text("speech audio")
    context.close()


def test_the_system_log_opens_at_its_latest_lines(page):
    page.get_by_role("tab", name="System").click()
    area = page.locator("#system-log textarea")
    expect(area).not_to_have_value("")
    at_end = "(a) => a.scrollHeight <= a.clientHeight || a.scrollTop + a.clientHeight >= a.scrollHeight - 4"
    wait_until(lambda: area.evaluate(at_end), WAIT_MS / 1000, interval=0.2, message="the log at its end")


def test_screenshots_of_each_tab_desktop_and_phone(browser, server, tmp_path):
    """Every tab renders on a desktop and a phone; HEYGEM_UPDATE_SCREENSHOT=1 also puts the
    pictures into docs/screenshots for the README (a plain run never writes into the project)."""
    taken = []
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context, page = open_page(browser, server, viewport=viewport)
        for tab, name in TABS.items():
            button = page.get_by_role("tab", name=name)
            if button.count() == 0:  # on a phone Gradio folds the later tabs into a menu
                continue
            button.click()
            page.wait_for_timeout(500)
            taken.append(shoot(page, f"{tab}-{size}", tmp_path))
        context.close()
    assert {path.stem for path in taken} >= {f"{tab}-desktop" for tab in TABS} | {"single-phone"}


TABS = {"single": "Single", "batch": "Batch", "avatars": "Avatars", "history": "History", "system": "System"}


def shoot(page: Page, name: str, folder: Path) -> Path:
    """A small PNG of the page in `folder`, copied into docs/screenshots when asked to update."""
    from PIL import Image

    target = folder / f"{name}.png"
    raw = target.with_suffix(".raw.png")
    page.screenshot(path=str(raw), full_page=False)
    Image.open(raw).convert("RGB").quantize(colors=128).save(target, optimize=True)
    raw.unlink()
    assert Image.open(target).width == (page.viewport_size or {}).get("width")
    assert target.stat().st_size < SCREENSHOT_LIMIT
    if os.environ.get("HEYGEM_UPDATE_SCREENSHOT") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, SCREENSHOTS / target.name)
    return target
