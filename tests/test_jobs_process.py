"""The job service as a separate process: SIGKILL mid-job, SIGTERM drain, restart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from heygem.jobs import files as job_files
from heygem.jobs.records import JobStatus, NewJob
from tests import media
from tests.jobs_server import READY_FILE, RUN_LOG
from tests.jobs_support import open_store, place_inputs
from tests.kit import WAIT_S, ServerProcess, wait_until

pytestmark = pytest.mark.slow  # job server subprocesses, killed and restarted

START_TIMEOUT_S = 60.0


def start_server(servers, data_dir: Path, *, delay_s: float, drain_s: float = 60.0) -> ServerProcess:
    """One run of tests/jobs_server.py on a data folder, ready to claim jobs; stopped at teardown."""
    (data_dir / READY_FILE).unlink(missing_ok=True)
    server = servers(
        data_dir,
        argv=("-m", "tests.jobs_server"),
        env={
            "HEYGEM_MODELS_DIR": str(data_dir / "models"),
            "HEYGEM_WARMUP": "false",
            "HEYGEM_DRAIN_SECONDS": str(drain_s),
            "HEYGEM_FAKE_DELAY_S": str(delay_s),
        },
    )
    wait_until(
        lambda: server.alive() and (data_dir / READY_FILE).exists(), START_TIMEOUT_S, message="server ready"
    )
    return server


@pytest.fixture
def inputs(settings, speech_wav, face_video):
    return place_inputs(settings, speech_wav, face_video)


@pytest.fixture
def store(settings):
    # The test's own connection to the server's database: submitting here is what a second
    # process sharing the queue would do.
    with open_store(settings) as job_store:
        yield job_store


def submit(store, inputs, count: int) -> list[str]:
    _, jobs = store.add([NewJob(str(inputs.audio), str(inputs.video))] * count, queue_limit=100)
    return [job.id for job in jobs]


def status_of(store, job_id):
    return store.get(job_id).status


def runs(settings) -> Counter:
    path = settings.data_dir / RUN_LOG
    return Counter(path.read_text().split()) if path.exists() else Counter()


def test_sigkill_mid_job_then_restart_completes_every_job_exactly_once(settings, inputs, store, servers):
    server = start_server(servers, settings.data_dir, delay_s=3.0)
    ids = submit(store, inputs, 4)
    wait_until(lambda: store.get(ids[0]).progress > 0, WAIT_S, message="first job under way")
    server.kill()
    assert status_of(store, ids[0]) == JobStatus.RUNNING  # what a crash leaves behind
    assert runs(settings) == Counter()

    server = start_server(servers, settings.data_dir, delay_s=0.1)
    wait_until(
        lambda: all(status_of(store, i) == JobStatus.SUCCEEDED for i in ids), WAIT_S, message="all jobs"
    )
    assert server.terminate() == 0, server.log()

    assert runs(settings) == Counter({job_id: 1 for job_id in ids})
    jobs = [store.get(job_id) for job_id in ids]
    assert [job.attempts for job in jobs] == [2, 1, 1, 1]
    for job in jobs:
        assert sorted(media.stream_types(job.output_path)) == ["audio", "video"]
    assert list(job_files.scratch_root(settings).iterdir()) == []  # the killed run's scratch too


def test_sigterm_lets_a_short_job_finish_and_exits_zero(settings, inputs, store, servers):
    server = start_server(servers, settings.data_dir, delay_s=1.0, drain_s=WAIT_S)
    (job_id,) = submit(store, inputs, 1)
    wait_until(lambda: status_of(store, job_id) == JobStatus.RUNNING, WAIT_S, message="job running")
    assert server.terminate() == 0, server.log()
    job = store.get(job_id)
    assert job.status == JobStatus.SUCCEEDED and job.output_path.is_file()
    assert runs(settings) == Counter({job_id: 1})


def test_sigterm_requeues_a_long_job_which_completes_after_restart(settings, inputs, store, servers):
    server = start_server(servers, settings.data_dir, delay_s=60.0, drain_s=0.5)
    (job_id,) = submit(store, inputs, 1)
    wait_until(lambda: status_of(store, job_id) == JobStatus.RUNNING, WAIT_S, message="job running")
    assert server.terminate() == 0, server.log()
    job = store.get(job_id)
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
    assert "back in the queue" in server.log()

    server = start_server(servers, settings.data_dir, delay_s=0.1)
    wait_until(lambda: status_of(store, job_id) == JobStatus.SUCCEEDED, WAIT_S, message="job done")
    assert server.terminate() == 0, server.log()
    assert runs(settings) == Counter({job_id: 1})
    assert store.get(job_id).attempts == 1
