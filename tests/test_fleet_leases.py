"""The worker side of leases on a real PostgreSQL store: a long stage without progress keeps its
lease through the heartbeat, and a cancel asked through another instance reaches it that way."""

from __future__ import annotations

import logging
import shutil
import threading

import pytest

from heygem.jobs.records import JobStatus
from heygem.jobs.store_pg import PostgresJobStore
from heygem.jobs.tenancy import LOCAL
from tests.kit import FakePipeline, wait_until

LEASE_S = 0.9  # the heartbeat ticks every 0.3 s
RUN_S = 3.0  # several leases long, with no progress reported in between
WAIT_S = 60.0


class SilentPipeline(FakePipeline):
    """The fake engine reporting no progress at all, like one long stage."""

    def __init__(self, settings) -> None:
        super().__init__(settings, RUN_S)

    def run(self, audio, face, output, options=None, on_progress=None):
        return super().run(audio, face, output, options, on_progress=None)


@pytest.fixture
def fleet_settings(settings, postgres_url):
    return settings.replace(database_url=postgres_url, shared_data_dir=True, lease_s=LEASE_S, instance_id="a")


@pytest.fixture
def other_instance(postgres_url):
    store = PostgresJobStore(postgres_url, instance_id="b", lease_s=LEASE_S)
    store.open()
    yield store
    store.close()


def submit(service, speech_wav, face_video):
    """A job on copies of the media in the inputs folder (operator files every instance reads)."""
    inputs = service.settings.inputs_dir
    inputs.mkdir(parents=True, exist_ok=True)
    audio, video = shutil.copy(speech_wav, inputs), shutil.copy(face_video, inputs)
    return service.submit(str(audio), str(video), principal=LOCAL)


def test_a_long_silent_stage_keeps_its_lease(
    start_service, fleet_settings, other_instance, speech_wav, face_video
):
    service = start_service(fleet_settings, SilentPipeline)
    job = submit(service, speech_wav, face_video)
    wait_until(lambda: service.store.get(job.id).status == JobStatus.RUNNING, WAIT_S, message="the run")
    stolen = []
    done = threading.Event()

    def sweep_like_another_instance() -> None:
        while not done.is_set():
            stolen.extend(other_instance.requeue_expired(3)[0])
            done.wait(0.1)

    sweeper = threading.Thread(target=sweep_like_another_instance)
    sweeper.start()
    try:
        finished = service.wait(job.id, WAIT_S, principal=LOCAL)
    finally:
        done.set()
        sweeper.join()
    assert stolen == []  # the lease never ran out although no progress was reported
    assert finished.status == JobStatus.SUCCEEDED and finished.attempts == 1


def test_a_cancel_from_another_instance_reaches_a_silent_run(
    start_service, fleet_settings, other_instance, speech_wav, face_video, caplog
):
    service = start_service(fleet_settings, SilentPipeline)
    job = submit(service, speech_wav, face_video)
    wait_until(lambda: service.store.get(job.id).status == JobStatus.RUNNING, WAIT_S, message="the run")
    with caplog.at_level(logging.INFO, logger="heygem.jobs.worker"):
        other_instance.cancel(job.id)  # instance b's API: only the database carries it to a
        finished = service.wait(job.id, WAIT_S, principal=LOCAL)
    assert finished.status == JobStatus.CANCELLED and finished.output_path is None
    assert "the store says it was cancelled" in caplog.text  # the heartbeat, not a progress report
