"""Finding 7 through the HTTP doors: each department's key sees only its own jobs and batches."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from fastapi.testclient import TestClient

from heygem.jobs.service import JobService
from heygem.jobs.tenancy import Principal, Role
from heygem.settings import Settings
from heygem.web.server import create_app
from tests.kit import FakePipeline

KEYS = {"sales": "sales-key-0123456789", "legal": "legal-key-0123456789", "ops": "ops-key-0123456789"}
ROLES: dict[str, Role] = {"sales": "user", "legal": "user", "ops": "admin"}
WAIT_S = 60.0


def bearer(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture
def doors(tmp_path, speech_wav, face_video):
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "".join(
            f"{tenant} {ROLES[tenant]} {hashlib.sha256(key.encode()).hexdigest()}\n"
            for tenant, key in KEYS.items()
        )
    )
    settings = Settings(data_dir=tmp_path / "data", api_keys_file=keys, warmup=False)
    clips = settings.inputs_dir / "clips"  # operator media every tenant may name
    clips.mkdir(parents=True)
    refs = {"audio": str(shutil.copy(speech_wav, clips)), "video": str(shutil.copy(face_video, clips))}
    service = JobService(settings, pipeline_factory=FakePipeline)
    service.start()
    try:
        with TestClient(create_app(settings, service, ui=False)) as client:
            yield client, refs
    finally:
        service.stop(0)


def submit(client: TestClient, tenant: str, refs: dict[str, str], **extra: str) -> dict:
    answer = client.post("/api/v1/jobs", json={**refs, **extra}, headers=bearer(tenant))
    assert answer.status_code == 202, answer.text
    return answer.json()


def finished(client: TestClient, tenant: str, job_id: str) -> dict:
    client.app.state.heygem.service.wait(job_id, WAIT_S, principal=Principal(tenant, ROLES[tenant]))
    return client.get(f"/api/v1/jobs/{job_id}", headers=bearer(tenant)).json()


def test_another_departments_job_answers_404_on_every_route(doors):
    client, refs = doors
    job = finished(client, "sales", submit(client, "sales", refs)["id"])["id"]
    for method, path in (
        ("GET", f"/api/v1/jobs/{job}"),
        ("GET", f"/api/v1/jobs/{job}/result"),
        ("DELETE", f"/api/v1/jobs/{job}"),
    ):
        answer = client.request(method, path, headers=bearer("legal"))
        assert answer.status_code == 404, (method, path, answer.text)
        assert client.request("GET", f"/api/v1/jobs/{job}", headers=bearer("sales")).status_code == 200
    assert client.get(f"/api/v1/jobs/{job}/result", headers=bearer("sales")).status_code == 200


def test_lists_and_counts_hold_only_the_callers_jobs_and_admins_see_all(doors):
    client, refs = doors
    mine = submit(client, "sales", refs)["id"]
    theirs = submit(client, "legal", refs)["id"]
    listed = {t: client.get("/api/v1/jobs", headers=bearer(t)).json() for t in KEYS}
    assert [j["id"] for j in listed["sales"]["jobs"]] == [mine] and listed["sales"]["total"] == 1
    assert [j["id"] for j in listed["legal"]["jobs"]] == [theirs]
    assert {j["id"] for j in listed["ops"]["jobs"]} == {mine, theirs}


def test_a_reused_idempotency_key_never_returns_another_tenants_job(doors):
    client, refs = doors
    first = submit(client, "sales", refs, idempotency_key="monthly-report")
    second = submit(client, "legal", refs, idempotency_key="monthly-report")
    assert second["id"] != first["id"] and second["tenant"] == "legal"
    assert submit(client, "sales", refs, idempotency_key="monthly-report")["id"] == first["id"]


def test_another_departments_batch_and_zip_answer_404(doors):
    client, refs = doors
    answer = client.post("/api/v1/batches", json={"items": [refs]}, headers=bearer("sales"))
    assert answer.status_code == 202, answer.text
    batch = answer.json()["id"]
    for path in (f"/api/v1/batches/{batch}", f"/api/v1/batches/{batch}/zip"):
        assert client.get(path, headers=bearer("legal")).status_code == 404
    assert client.post(f"/api/v1/batches/{batch}/retry", headers=bearer("legal")).status_code == 404
    assert client.get(f"/api/v1/batches/{batch}", headers=bearer("sales")).status_code == 200


def test_the_reserved_compat_key_prefix_is_refused_on_the_main_api(doors):
    client, refs = doors
    answer = client.post(
        "/api/v1/jobs", json={**refs, "idempotency_key": "heygem-compat:task-1"}, headers=bearer("sales")
    )
    assert answer.status_code == 400 and "reserved" in answer.json()["detail"]
