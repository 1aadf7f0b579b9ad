"""The identity layer in process: credential files, the login rules, the rate limit, sessions, the
gate's decisions and principal_of. The live attacks are in test_doors.py."""

from __future__ import annotations

import hashlib
import logging
import os
import time

import gradio as gr
import pytest
from fastapi import FastAPI, Request, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from heygem.jobs.tenancy import LOCAL, Principal
from heygem.settings import Settings
from heygem.web.identity import (
    MAIN_PUBLIC_PATHS,
    MAIN_PUBLIC_PREFIXES,
    MAX_LOGIN_BODY,
    CredentialFile,
    Identity,
    IdentityGate,
    LoginLimiter,
    Sessions,
    hash_password,
    key_line,
    parse_keys,
    parse_users,
    principal_of,
    same_origin,
    user_line,
    verify_password,
)

FAST_ITERATIONS = 1000  # PBKDF2 rounds for test users: the real default is slow on purpose
ACME_KEY = "acme-secret-key"


def keys_text(*lines: str) -> str:
    return "\n".join(lines) + "\n"


# --- files ----------------------------------------------------------------------------------------


def test_a_keys_file_holds_hashes_comments_and_blank_lines():
    text = keys_text(
        "# department keys",
        "",
        key_line("acme", "user", ACME_KEY) + "  # the web team",
        key_line("ops", "admin", "ops-key"),
    )
    assert ACME_KEY not in text
    entries = parse_keys(text, "keys")
    assert [(e.principal.tenant, e.principal.role) for e in entries] == [("acme", "user"), ("ops", "admin")]
    assert entries[0].digest == hashlib.sha256(ACME_KEY.encode()).hexdigest()


@pytest.mark.parametrize(
    "line,problem",
    [
        ("acme user", "expected 'tenant role sha256hex'"),
        ("acme owner " + "a" * 64, "role must be user or admin"),
        ("acme user " + "a" * 63, "64 hex characters"),
        ("acme user " + "g" * 64, "64 hex characters"),
        ("-acme user " + "a" * 64, "tenant name '-acme'"),
        ("acme user " + "a" * 64 + " extra", "expected"),
    ],
)
def test_a_bad_keys_line_is_named_by_its_number(line, problem):
    with pytest.raises(ValueError, match="keys line 2") as error:
        parse_keys(keys_text("# header", line), "keys")
    assert problem in str(error.value)


def test_passwords_are_salted_pbkdf2():
    first, second = hash_password("pw-12345", FAST_ITERATIONS), hash_password("pw-12345", FAST_ITERATIONS)
    assert first != second and first.startswith(f"pbkdf2_sha256${FAST_ITERATIONS}$")
    assert verify_password("pw-12345", first) and not verify_password("pw-1234", first)
    for broken in ("", "plain", "pbkdf2_sha256$x$y$z", "pbkdf2_sha256$0$AA$AA", "md5$1$AA$AA"):
        assert not verify_password("pw-12345", broken)


def test_a_bad_users_line_is_refused():
    good = user_line("ann", "acme", "user", "pw-12345", FAST_ITERATIONS)
    assert parse_users(good, "users")[0].username == "ann"
    with pytest.raises(ValueError, match="users line 1"):
        parse_users("ann acme user plaintext-password", "users")
    with pytest.raises(ValueError, match="user name"):
        parse_users(good.replace("ann", "a b", 1).replace("a b acme", "a/b acme"), "users")


def test_the_keys_file_is_read_again_when_it_changes_and_a_broken_edit_keeps_the_old(tmp_path, caplog):
    path = tmp_path / "keys"
    path.write_text(key_line("acme", "user", ACME_KEY) + "\n")
    keys = CredentialFile(path, parse_keys)
    assert len(keys.entries()) == 1
    with path.open("a") as handle:
        handle.write(key_line("ops", "admin", "ops-key") + "\n")
    assert len(keys.entries()) == 2
    path.write_text("this is not a key line\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    with caplog.at_level(logging.ERROR, logger="heygem.web.identity"):
        assert len(keys.entries()) == 2
    assert "keeping the credentials read before" in caplog.text


def test_a_missing_or_broken_keys_file_stops_the_start(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Identity(Settings(api_keys_file=tmp_path / "missing"))
    broken = tmp_path / "broken"
    broken.write_text("acme\n")
    with pytest.raises(ValueError, match="broken line 1"):
        Identity(Settings(users_file=broken))


# --- who is who -----------------------------------------------------------------------------------


def test_without_credentials_the_service_is_open_and_everyone_is_local():
    assert not Identity(Settings()).required
    client = TestClient(_gated_echo(Identity(Settings())))
    assert client.get("/who").json() == {"tenant": "default", "role": "admin"}
    assert client.get("/ready?deep=1").status_code == 200  # nothing to protect: as before


def test_every_kind_of_credential_maps_to_its_tenant(tmp_path):
    keys, users = tmp_path / "keys", tmp_path / "users"
    keys.write_text(key_line("acme", "user", ACME_KEY) + "\n" + key_line("ops", "admin", "ops-key") + "\n")
    users.write_text(user_line("bob", "globex", "user", "bob-password", FAST_ITERATIONS) + "\n")
    identity = Identity(
        Settings(
            api_token="legacy",
            api_token_tenant="legacy-team",
            compat_token="heygem-client",
            compat_tenant="studio",
            auth="ann:ann-password",
            api_keys_file=keys,
            users_file=users,
        )
    )
    assert identity.required
    assert identity.from_key(ACME_KEY) == Principal("acme", "user")
    assert identity.from_key("ops-key") == Principal("ops", "admin")
    # The legacy token could see every job before tenants existed: it stays an admin.
    assert identity.from_key("legacy") == Principal("legacy-team", "admin")
    assert identity.from_key("heygem-client") == Principal("studio", "user")
    assert identity.from_key("") is None and identity.from_key(ACME_KEY + "x") is None
    assert identity.from_login("ann", "ann-password") == Principal("default", "admin")
    assert identity.from_login("bob", "bob-password") == Principal("globex", "user")
    assert identity.from_login("bob", "ann-password") is None
    # A tenant name with one of its keys logs into the UI; another tenant's name does not.
    assert identity.from_login("acme", ACME_KEY) == Principal("acme", "user")
    assert identity.from_login("ops", ACME_KEY) is None
    assert identity.from_login("ann", "") is None


def test_principal_of_reads_the_gate_state_or_the_gradio_user_name():
    assert principal_of(gr.Request(username="acme:user", headers={})) == Principal("acme", "user")
    with pytest.raises(PermissionError):
        principal_of(gr.Request(username=None, headers={}))
    with pytest.raises(PermissionError):
        principal_of(gr.Request(username="acme:owner", headers={}))
    ungated = FastAPI()

    @ungated.get("/who")
    def who(request: Request) -> dict[str, str]:
        return {"tenant": principal_of(request).tenant}

    with pytest.raises(PermissionError):
        TestClient(ungated).get("/who")  # never treated as the local admin by mistake


def test_the_log_tail_is_for_admins_only(settings):
    from heygem.web.ui import Handlers

    handlers = Handlers(settings, service=None, log_lines=lambda count: ["job 1 read /data/x.mp4"])  # type: ignore[arg-type]
    assert handlers.log_tail(LOCAL, "en") == "job 1 read /data/x.mp4"
    note = handlers.log_tail(Principal("acme", "user"), "en")
    assert "x.mp4" not in note and "admins" in note


# --- the gate -------------------------------------------------------------------------------------


def _gated_echo(identity: Identity) -> IdentityGate:
    app = FastAPI()

    @app.get("/who")
    def who(request: Request) -> dict[str, str]:
        found = principal_of(request)
        return {"tenant": found.tenant, "role": found.role}

    @app.get("/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.websocket("/ws")
    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    return IdentityGate(app, identity, MAIN_PUBLIC_PATHS, MAIN_PUBLIC_PREFIXES)


@pytest.fixture
def locked() -> Identity:
    return Identity(
        Settings(
            api_token="legacy",
            compat_token="heygem-client",
            auth="ann:ann-password",
            login_attempts_per_minute=2,
        )
    )


def test_the_gate_puts_the_principal_on_request_state(locked):
    client = TestClient(_gated_echo(locked))
    assert client.get("/who").status_code == 401
    assert client.get("/who", headers={"Authorization": "Bearer heygem-client"}).json() == {
        "tenant": "default",
        "role": "user",
    }
    assert client.get("/who", headers={"Authorization": "Basic legacy"}).status_code == 401
    assert client.post("/login", data={"username": "ann", "password": "ann-password"}).status_code == 200
    assert client.get("/who").json() == {"tenant": "default", "role": "admin"}  # the session cookie


def test_a_websocket_without_credentials_is_closed(locked):
    client = TestClient(_gated_echo(locked))
    with pytest.raises(WebSocketDisconnect) as closed, client.websocket_connect("/ws"):
        pass
    assert closed.value.code == 1008
    with client.websocket_connect("/ws", headers={"Authorization": "Bearer legacy"}) as ws:
        assert ws.receive_text() == "hello"


def test_a_deep_ready_needs_an_admin(locked):
    client = TestClient(_gated_echo(locked))
    assert client.get("/ready").status_code == 200
    assert client.get("/ready?deep=1").status_code == 401
    assert client.get("/ready?deep=1", headers={"Authorization": "Bearer heygem-client"}).status_code == 403
    assert client.get("/ready?deep=1", headers={"Authorization": "Bearer legacy"}).status_code == 200


def test_a_login_rate_limit_counts_ip_and_user_name(locked):
    client = TestClient(_gated_echo(locked))
    for _ in range(2):
        assert client.post("/login", data={"username": "ann", "password": "wrong"}).status_code == 400
    limited = client.post("/login", data={"username": "ann", "password": "ann-password"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert "set-cookie" not in limited.headers


def test_odd_login_bodies_are_400(locked):
    client = TestClient(_gated_echo(locked))
    assert client.post("/login", data={"username": "ann"}).status_code == 400
    huge = client.post("/login", data={"username": "ann", "password": "x" * (MAX_LOGIN_BODY + 1)})
    assert huge.status_code == 400
    assert (
        client.post(
            "/login", content=b"\x00\xff", headers={"content-type": "multipart/form-data"}
        ).status_code
        == 400
    )


def test_the_limiter_forgets_after_the_window():
    limiter = LoginLimiter(per_minute=2, window_s=0.2)
    limiter.failed(["ip:a", "user:x"])
    assert limiter.wait_s(["ip:a"]) == 0
    limiter.failed(["ip:a", "user:y"])
    assert limiter.wait_s(["ip:a"]) > 0 and limiter.wait_s(["ip:b", "user:x"]) == 0
    time.sleep(0.25)
    assert limiter.wait_s(["ip:a"]) == 0
    assert LoginLimiter(per_minute=0).wait_s(["ip:a"]) == 0  # 0 turns the limit off


def test_sessions_expire_and_stay_bounded():
    sessions = Sessions(ttl_s=0.1, capacity=2)
    first = sessions.open(LOCAL)
    assert sessions.get(first) == LOCAL
    second, third = sessions.open(LOCAL), sessions.open(LOCAL)
    assert sessions.get(first) is None and sessions.get(third) == LOCAL  # the oldest went first
    time.sleep(0.15)
    assert sessions.get(second) is None


@pytest.mark.parametrize(
    "headers,ok",
    [
        ({"host": "svc:8080"}, True),  # no Origin: curl, gradio_client
        ({"host": "svc:8080", "origin": "http://svc:8080"}, True),
        ({"host": "svc:8080", "origin": "https://evil.example"}, False),
        ({"host": "svc:8080", "origin": "http://svc:8081"}, False),
        ({"host": "svc:8080", "origin": "null"}, False),
        ({"host": "10.0.0.5:8080", "origin": "https://gw.example", "x-forwarded-host": "gw.example"}, True),
    ],
)
def test_same_origin(headers, ok):
    assert same_origin(headers) is ok


def test_the_compat_token_is_masked_like_the_other_secrets():
    shown = Settings(compat_token="heygem-client", api_token="legacy").describe()
    assert shown["compat_token"] == "***" and shown["api_token"] == "***"
    assert shown["compat_host"] == "127.0.0.1"
