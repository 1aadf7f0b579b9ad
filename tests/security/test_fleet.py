"""Fleet mode's doors: who may see the fleet, and heygem's own area of the object store.

GET /api/v1/fleet names every instance and the job ids each one runs, whatever tenant they belong
to: admins only. The object store's fleet area (storage_url) holds every tenant's uploads and
results under unguessable names; a caller still may not name anything in it, as an input or as an
output prefix, so no name ever leaks into another tenant's job.
"""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient

from heygem.errors import ForbiddenPathError
from heygem.jobs.tenancy import Principal
from heygem.settings import Settings
from heygem.web.server import create_app
from tests.kit import FakePipeline, running_service

KEYS = {"sales": "sales-key-0123456789", "ops": "ops-key-0123456789"}
ROLES = {"sales": "user", "ops": "admin"}
FLEET_AREA = "s3://shared-bucket/heygem/"


def bearer(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@pytest.fixture
def fleet_settings(tmp_path) -> Settings:
    keys = tmp_path / "keys.txt"
    keys.write_text(
        "".join(f"{t} {ROLES[t]} {hashlib.sha256(k.encode()).hexdigest()}\n" for t, k in KEYS.items())
    )
    return Settings(data_dir=tmp_path / "data", api_keys_file=keys, warmup=False, storage_url=FLEET_AREA)


def test_only_admins_see_the_fleet(fleet_settings):
    with running_service(fleet_settings, FakePipeline) as service:
        with TestClient(create_app(fleet_settings, service, ui=False)) as client:
            assert client.get("/api/v1/fleet").status_code == 401  # no credential at all
            refused = client.get("/api/v1/fleet", headers=bearer("sales"))
            assert refused.status_code == 403 and "admins" in refused.json()["detail"]
            assert "instances" not in refused.json()
            shown = client.get("/api/v1/fleet", headers=bearer("ops"))
            assert shown.status_code == 200
            (row,) = shown.json()["instances"]
            assert row["id"] == fleet_settings.resolved_instance_id and row["alive"] is True


@pytest.mark.parametrize(
    "ref",
    [
        FLEET_AREA + "outputs/0123456789abcdef0123456789abcdef/result.mp4",
        FLEET_AREA + "inputs/0123456789abcdef0123456789abcdef/speech.wav",
        "obs://shared-bucket/heygem/inputs/x/speech.wav",  # obs:// is the same store as s3://
        "s3://shared-bucket/heygem/avatars/a/media.mp4",
    ],
)
def test_a_caller_cannot_read_from_the_fleet_area(fleet_settings, ref):
    with running_service(fleet_settings, FakePipeline) as service:
        with pytest.raises(ForbiddenPathError, match="storage_url"):
            service.submit(ref, "s3://media/face.mp4", principal=Principal("sales"))
        with pytest.raises(ForbiddenPathError, match="storage_url"):
            service.submit("s3://media/a.wav", ref, principal=Principal("sales"))
        assert service.queue_depth() == 0


def test_a_caller_cannot_publish_into_the_fleet_area(fleet_settings):
    with running_service(fleet_settings, FakePipeline) as service:
        with pytest.raises(ForbiddenPathError, match="storage_url"):
            service.submit(
                "s3://media/a.wav",
                "s3://media/face.mp4",
                output_prefix=FLEET_AREA + "outputs/victim/",
                principal=Principal("ops", "admin"),
            )
        # Next to the area is fine: only heygem's own prefix is closed.
        job = service.submit(
            "s3://media/a.wav",
            "s3://media/face.mp4",
            output_prefix="s3://shared-bucket/heygem-exports/",
            principal=Principal("ops", "admin"),
        )
        assert job.output_prefix == "s3://shared-bucket/heygem-exports/"
