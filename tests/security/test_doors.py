"""Issue 12, findings 1, 7, 8, 13 and 16, against a live server: one identity for every door.

Each test replays what was observed (an open door) and proves it is now refused, then proves the
same door opens with a valid credential, so the refusal is not just a broken route.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AuthenticationError

from heygem.web.identity import key_line
from tests.browser import launch
from tests.kit import GENERATE_DEFAULTS, ServerProcess, free_port

pytestmark = pytest.mark.slow  # live server subprocesses

START_TIMEOUT_S = 180.0
BROWSER_WAIT_MS = 60_000
JOB_TIMEOUT_S = 120.0
TOKEN = "legacy-token-for-tests"
UI_USER, UI_PASSWORD = "ann", "ann-password-1"
ACME_KEY, OPS_KEY, COMPAT_TOKEN = "acme-key-0123456789", "ops-key-0123456789", "heygem-client-key"
SECRET_FILE = "secret-result.txt"
# The generate endpoint's inputs after audio and face, as the UI's option panel names them.
# Every kind of /gradio_api route (and Gradio's own routes at the root) that ran, listed or
# served files without credentials when only HEYGEM_API_TOKEN was set.
GRADIO_DOORS = [
    (
        "POST",
        "/gradio_api/queue/join",
        {"json": {"data": [None], "fn_index": 0, "session_hash": "attacker", "event_data": None}},
    ),
    ("GET", "/gradio_api/queue/data?session_hash=attacker", {}),
    ("POST", "/gradio_api/call/check_face", {"json": {"data": [None]}}),
    ("GET", "/gradio_api/call/check_face/0123abcd", {}),
    ("POST", "/gradio_api/call/v2/check_face", {"json": {"data": [None]}}),
    ("POST", "/gradio_api/run/check_face", {"json": {"data": [None]}}),
    ("POST", "/gradio_api/api/check_face", {"json": {"data": [None]}}),
    ("POST", "/gradio_api/upload", {"files": {"files": ("x.txt", b"fill the disk")}}),
    ("GET", "/gradio_api/upload_progress?upload_id=x", {}),
    ("GET", f"/gradio_api/file=OUTPUTS/{SECRET_FILE}", {}),
    ("GET", "/gradio_api/info", {}),
    ("GET", "/gradio_api/openapi.json", {}),
    ("GET", "/config", {}),
    ("POST", "/gradio_api/cancel", {"json": {"session_hash": "x", "fn_index": 0, "event_id": "x"}}),
    ("GET", "/gradio_api/heartbeat/attacker", {}),
    ("POST", "/gradio_api/reset", {"json": {"event_id": "x"}}),
    ("GET", "/gradio_api/startup-events", {}),
    ("POST", "/gradio_api/stream/x", {}),
    ("GET", "/monitoring", {}),
    ("GET", "/docs", {}),
]


def _start(tmp_path_factory, name: str, env: dict[str, str]) -> ServerProcess:
    data = tmp_path_factory.mktemp(name) / "data"
    (data / "outputs").mkdir(parents=True)
    (data / "outputs" / SECRET_FILE).write_text("another tenant's result")
    live = ServerProcess(data, env=env)
    try:
        live.wait_for("/health", 200, START_TIMEOUT_S)
        live.wait_for("/", 200, START_TIMEOUT_S)  # the UI is mounted (login page or app)
    except BaseException:
        live.stop()
        raise
    return live


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    shared = tmp_path_factory.mktemp("token-shared")  # the compat API is on: /easy on the main port
    live = _start(tmp_path_factory, "token", {"HEYGEM_API_TOKEN": TOKEN, "HEYGEM_COMPAT_ROOT": str(shared)})
    yield live
    live.stop_cleanly()


@pytest.fixture(scope="module")
def login_server(tmp_path_factory):
    live = _start(
        tmp_path_factory,
        "login",
        {"HEYGEM_AUTH": f"{UI_USER}:{UI_PASSWORD}", "HEYGEM_LOGIN_ATTEMPTS_PER_MINUTE": "3"},
    )
    yield live
    live.stop_cleanly()


@pytest.fixture(scope="module")
def keys_server(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# tenants\n{key_line('acme', 'user', ACME_KEY)}\n{key_line('ops', 'admin', OPS_KEY)}\n")
    compat_root = tmp_path_factory.mktemp("shared")
    (compat_root / "temp").mkdir()
    port = free_port()
    live = _start(
        tmp_path_factory,
        "keys",
        {
            "HEYGEM_API_KEYS_FILE": str(keys),
            "HEYGEM_COMPAT_PORT": str(port),
            "HEYGEM_COMPAT_TOKEN": COMPAT_TOKEN,
            "HEYGEM_COMPAT_ROOT": str(compat_root),
        },
    )
    live.compat_port, live.keys_file = port, keys  # type: ignore[attr-defined]
    yield live
    live.stop_cleanly()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def door_request(live: ServerProcess, method: str, path: str, options: dict, headers=None):
    path = path.replace("OUTPUTS", str((live.data_dir / "outputs").resolve()))  # type: ignore[attr-defined]
    return httpx.request(method, live.url + path, headers=headers, timeout=10, **options)


# --- finding 1: with only HEYGEM_API_TOKEN, the UI's API was open ----------------------------------


@pytest.mark.parametrize("method,path,options", GRADIO_DOORS, ids=[d[1] for d in GRADIO_DOORS])
def test_every_gradio_route_refuses_a_caller_without_credentials(token_server, method, path, options):
    response = door_request(token_server, method, path, options)
    assert response.status_code in (401, 403), response.text[:300]
    assert SECRET_FILE not in response.text


def test_gradio_routes_open_with_the_api_token(token_server):
    info = httpx.get(token_server.url + "/gradio_api/info", headers=bearer(TOKEN), timeout=10)
    assert info.status_code == 200 and "/generate" in info.json()["named_endpoints"]
    served = door_request(
        token_server, "GET", f"/gradio_api/file=OUTPUTS/{SECRET_FILE}", {}, headers=bearer(TOKEN)
    )
    assert served.status_code == 200 and served.text == "another tenant's result"


def test_gradio_client_without_credentials_is_refused(token_server):
    with pytest.raises(AuthenticationError):
        Client(token_server.url + "/", verbose=False)
    with pytest.raises(AuthenticationError):
        Client(token_server.url + "/", headers=bearer("a-guessed-token"), verbose=False)


def test_gradio_client_with_the_token_runs_a_job(token_server, speech_wav, face_video, tmp_path):
    client = Client(
        token_server.url + "/", headers=bearer(TOKEN), download_files=str(tmp_path), verbose=False
    )
    video, _download, summary = client.predict(
        handle_file(str(speech_wav)),
        handle_file(str(face_video)),
        *GENERATE_DEFAULTS.values(),
        api_name="/generate",
    )
    assert "fake" in summary
    assert Path(video["video"] if isinstance(video, dict) else video).stat().st_size > 0


def test_the_api_and_main_port_compat_routes_need_the_token(token_server):
    for path in ("/api/v1/jobs", "/easy/query?code=x"):
        assert httpx.get(token_server.url + path, timeout=10).status_code == 401
        assert httpx.get(token_server.url + path, headers=bearer(TOKEN), timeout=10).status_code == 200


def test_probes_stay_open_but_a_deep_ready_needs_a_principal(token_server):
    assert httpx.get(token_server.url + "/health", timeout=10).status_code == 200
    assert httpx.get(token_server.url + "/ready", timeout=10).status_code in (200, 503)
    for query in ("deep=1", "deep=true", "deep=0&deep=1"):
        refused = httpx.get(f"{token_server.url}/ready?{query}", timeout=10)
        assert refused.status_code == 401  # finding 13: it ran an inference for anyone
    admitted = httpx.get(token_server.url + "/ready?deep=1", headers=bearer(TOKEN), timeout=90)
    assert admitted.status_code in (200, 503) and "ready" in admitted.json()


# --- finding 1, the reverse: with only HEYGEM_AUTH, /api/v1 was open --------------------------------


def test_with_only_a_ui_login_the_api_is_closed(login_server):
    for path in ("/api/v1/jobs", "/easy/query?code=x", "/gradio_api/info"):
        assert httpx.get(login_server.url + path, timeout=10).status_code == 401


def test_a_ui_session_opens_every_door_of_its_port(login_server):
    with httpx.Client(base_url=login_server.url, timeout=10) as browser:
        login = browser.post("/login", data={"username": UI_USER, "password": UI_PASSWORD})
        assert login.status_code == 200 and login.json() == {"success": True}
        assert browser.get("/api/v1/jobs").status_code == 200
        assert browser.get("/gradio_api/info").status_code == 200
        assert browser.get("/logout", follow_redirects=False).status_code == 302
        assert browser.get("/api/v1/jobs").status_code == 401  # the session ended


def test_gradio_client_logs_in_with_a_session(login_server):
    client = Client(login_server.url + "/", auth=(UI_USER, UI_PASSWORD), verbose=False)
    api = client.view_api(print_info=False, return_format="dict")
    assert "/generate" in api["named_endpoints"]


def test_cross_origin_login_is_refused(login_server):
    form = {"username": UI_USER, "password": UI_PASSWORD}
    host = login_server.url.removeprefix("http://")
    foreign = httpx.post(
        login_server.url + "/login", data=form, timeout=10, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
    same = httpx.post(
        login_server.url + "/login", data=form, timeout=10, headers={"Origin": f"http://{host}"}
    )
    assert same.status_code == 200 and "heygem-session=" in same.headers["set-cookie"]


def test_the_browser_login_form_signs_in_and_the_admin_sees_the_log(login_server):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright.chromium)
        try:
            page = browser.new_context(locale="en-US").new_page()
            page.set_default_timeout(BROWSER_WAIT_MS)
            page.goto(login_server.url + "/")
            page.locator("input[type=text]").first.fill(UI_USER)  # Gradio's own login form
            page.locator("input[type=password]").fill(UI_PASSWORD)
            page.get_by_role("button", name="Login").click()
            page.locator("#generate").wait_for()  # the app, after the form reloaded the page
            page.get_by_role("tab", name="System").click()
            expect(page.locator("#system-log textarea")).to_have_value(re.compile("heygem"))
        finally:
            browser.close()


def test_login_attempts_are_rate_limited(login_server):
    # HEYGEM_LOGIN_ATTEMPTS_PER_MINUTE=3 on this server: three failures, then 429 for everyone
    # from this address, even with the right password (the cooldown is the point).
    for _ in range(3):
        wrong = httpx.post(
            login_server.url + "/login", timeout=30, data={"username": "mallory", "password": "guess"}
        )
        assert wrong.status_code == 400
    limited = httpx.post(
        login_server.url + "/login", timeout=10, data={"username": UI_USER, "password": UI_PASSWORD}
    )
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60


# --- findings 7 and 8: keys file, tenants' keys on every door, the compat port ---------------------


def test_a_key_from_the_keys_file_opens_the_api_ui_and_compat(keys_server):
    compat = f"http://127.0.0.1:{keys_server.compat_port}"
    for url in (
        keys_server.url + "/api/v1/jobs",
        keys_server.url + "/gradio_api/info",
        keys_server.url + "/easy/query?code=x",
        compat + "/easy/query?code=x",
    ):
        assert httpx.get(url, timeout=10).status_code == 401, url
        assert httpx.get(url, headers=bearer(ACME_KEY), timeout=10).status_code == 200, url
        assert httpx.get(url, headers=bearer("acme-key-wrong"), timeout=10).status_code == 401, url
    client = Client(keys_server.url + "/", headers=bearer(ACME_KEY), verbose=False)
    assert "/generate" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]


def test_the_compat_port_needs_its_token(keys_server):
    url = f"http://127.0.0.1:{keys_server.compat_port}/easy/query?code=x"
    refused = httpx.get(url, timeout=10)
    assert refused.status_code == 401 and refused.json()["code"] == 10002
    accepted = httpx.get(url, headers=bearer(COMPAT_TOKEN), timeout=10)
    assert accepted.status_code == 200 and accepted.json()["msg"] == "no task with code 'x'"
    submitted = httpx.post(
        url.split("/easy")[0] + "/easy/submit",
        timeout=10,
        json={"code": "c1", "audio_url": "a.wav", "video_url": "v.mp4"},
    )
    assert submitted.status_code == 401


def test_the_compat_port_listens_on_loopback_only(keys_server):
    assert f"HeyGem-compatible API on 127.0.0.1:{keys_server.compat_port}" in keys_server.log()
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no address besides loopback")
    with pytest.raises(OSError), socket.create_connection((address, keys_server.compat_port), 2):
        pass


def test_a_deep_ready_is_for_admins(keys_server):
    assert httpx.get(keys_server.url + "/ready?deep=1", timeout=10).status_code == 401
    user = httpx.get(keys_server.url + "/ready?deep=1", headers=bearer(ACME_KEY), timeout=10)
    assert user.status_code == 403
    admin = httpx.get(keys_server.url + "/ready?deep=1", headers=bearer(OPS_KEY), timeout=90)
    assert admin.status_code in (200, 503) and "ready" in admin.json()


def test_the_ui_accepts_a_tenant_name_and_its_key_as_a_login(keys_server):
    with httpx.Client(base_url=keys_server.url, timeout=10) as browser:
        assert browser.post("/login", data={"username": "ops", "password": ACME_KEY}).status_code == 400
        assert browser.post("/login", data={"username": "acme", "password": ACME_KEY}).status_code == 200
        assert browser.get("/api/v1/jobs").status_code == 200


def test_keys_added_while_running_work_at_once_and_the_file_holds_only_hashes(keys_server, tmp_path):
    keys_file = keys_server.keys_file
    added = subprocess.run(
        [sys.executable, "-m", "heygem", "keys", "add", "globex", "--file", str(keys_file)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    key = added.stdout.strip()
    assert len(key) >= 40 and key not in keys_file.read_text()
    assert keys_file.read_text().splitlines()[-1].startswith("globex user ")
    time.sleep(0.05)  # a new mtime for the reload check on coarse file systems
    response = httpx.get(keys_server.url + "/api/v1/jobs", headers=bearer(key), timeout=10)
    assert response.status_code == 200


def _outside_address() -> str | None:
    """An address of this machine that is not loopback, or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address
