"""start_app.sh end to end: GPU detection, settings, the real server, SIGTERM, logs and ports.

Each test runs the real script with the real app (no weights, so the `preview` engine; warm-up
off) in its own data folder on a free port. `nvidia-smi` is faked with a small script first on
PATH; torch here is a CPU build, which is exactly the "driver/wheel mismatch" case the script
must warn about without keeping the server from starting.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.kit import free_port, wait_until

PROJECT = Path(__file__).resolve().parent.parent
START_APP = PROJECT / "start_app.sh"
STARTUP_TIMEOUT_S = 180  # generous: imports on a busy 2-core machine
DRAIN_S = 20  # HEYGEM_DRAIN_SECONDS for these tests
GRACE_S = DRAIN_S + 10 + 30  # drain + uvicorn's graceful close + slack for a loaded machine
JOB_TIMEOUT_S = 300
FAKE_GPUS = ("NVIDIA Test GPU, 550.54.15, 24576 MiB", "NVIDIA Test GPU, 550.54.15, 24576 MiB")
SECRET = "tok-very-secret-123"

pytestmark = pytest.mark.slow


# --- helpers -------------------------------------------------------------------------------------


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def path_without_nvidia_smi() -> list[str]:
    return [d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "nvidia-smi").exists()]


def fake_nvidia_smi(bin_dir: Path, *, fails: bool) -> Path:
    """A stand-in that records its call and prints a GPU list, or fails like a broken driver."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    marker = bin_dir / "called"
    if fails:
        body = (
            'echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver." >&2\n'
            "exit 9"
        )
    else:
        body = "\n".join(f'echo "{line}"' for line in FAKE_GPUS)
    script = bin_dir / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" > "{marker}"\n{body}\n')
    script.chmod(0o755)
    return marker


class App:
    """start_app.sh as a child process in its own session, its output collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, port: int) -> None:
        self.port = port
        self.env_port: int | None = None  # a HEYGEM_PORT that a --port flag overrode, if any
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            ["bash", str(START_APP), *args],
            env=env,
            cwd=cwd,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_healthy(self) -> httpx.Response:
        def healthy() -> httpx.Response | None:
            if self.proc.poll() is not None:
                self._reader.join(5)
                pytest.fail(f"start_app.sh exited with {self.proc.returncode}:\n{self.output[-4000:]}")
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(self.url("/health"), timeout=5)
                if response.status_code == 200:
                    return response
            return None

        return wait_until(
            healthy,
            STARTUP_TIMEOUT_S,
            interval=0.5,
            message=lambda: f"/health to answer:\n{self.output[-4000:]}",
        )

    def session_processes(self) -> list[psutil.Process]:
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(process.pid) == self.proc.pid:
                    found.append(process)
        return found

    def terminate(self, timeout: float) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def kill_all(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(GRACE_S)
        for process in self.session_processes():
            with contextlib.suppress(psutil.Error):
                process.kill()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)


class Launcher:
    """Starts start_app.sh runs in a scratch folder, each with its own data folder and port."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.started: list[App] = []

    def __call__(
        self,
        path_dirs: list[str],
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        port: int | None = None,
    ) -> App:
        port = port or free_port()
        data = self.scratch / f"data-{len(self.started)}"
        data.mkdir()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HEYGEM_")}
        full_env.update(
            {
                "PATH": os.pathsep.join(path_dirs),
                "HEYGEM_DATA_DIR": str(data),
                "HEYGEM_PORT": str(port),
                "HEYGEM_WARMUP": "false",
                "HEYGEM_DRAIN_SECONDS": str(DRAIN_S),
                "GRADIO_TEMP_DIR": str(self.scratch / "gradio"),
                "OMP_NUM_THREADS": "2",
                **(env or {}),
            }
        )
        # A foreign working directory proves the script finds app.py on its own.
        app = App(args or [], full_env, cwd=self.scratch, port=port)
        self.started.append(app)
        return app

    def close(self) -> None:
        for app in self.started:
            app.kill_all()


@pytest.fixture
def launch(tmp_path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="module")
def cpu_app_factory(tmp_path_factory) -> Iterator:
    """One plain run (no nvidia-smi, port from HEYGEM_PORT overridden by --port) shared by the
    tests that only need a server; started again if a test (the SIGTERM one) has stopped it."""
    launcher = Launcher(tmp_path_factory.mktemp("cpu-app"))
    current: list[App] = []

    def get() -> App:
        if not current or current[-1].proc.poll() is not None:
            env_port, flag_port = free_port(), free_port()
            app = launcher(
                path_without_nvidia_smi(),
                args=["--port", str(flag_port)],
                port=flag_port,
                env={"HEYGEM_PORT": str(env_port)},
            )
            app.env_port = env_port
            app.wait_healthy()
            current.append(app)
        return current[-1]

    try:
        yield get
    finally:
        launcher.close()


@pytest.fixture
def cpu_app(cpu_app_factory) -> App:
    return cpu_app_factory()


def submit_job(app: App, audio: Path, video: Path, headers: dict | None = None) -> str:
    with audio.open("rb") as audio_file, video.open("rb") as video_file:
        response = httpx.post(
            app.url("/api/v1/jobs"),
            timeout=120,
            headers=headers,
            files={
                "audio": (audio.name, audio_file, "audio/wav"),
                "video": (video.name, video_file, "video/mp4"),
            },
        )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job_status(app: App, job_id: str, headers: dict | None = None) -> dict:
    return httpx.get(app.url(f"/api/v1/jobs/{job_id}"), timeout=30, headers=headers).json()


def wait_finished(app: App, job_id: str, headers: dict | None = None) -> dict:
    return wait_until(
        lambda: (job := job_status(app, job_id, headers))["status"] not in ("queued", "running") and job,
        JOB_TIMEOUT_S,
        interval=1,
        message=f"job {job_id} to finish",
    )


def settings_lines(app: App) -> dict[str, str]:
    """The `name=value` lines start_app.sh printed as effective settings."""
    prefix = "start_app:   "
    return dict(line[len(prefix) :].split("=", 1) for line in app.lines if line.startswith(prefix))


# --- GPU detection -------------------------------------------------------------------------------


def test_gpu_listed_but_unusable_by_torch_means_cpu_a_warning_and_a_working_server(
    launch, tmp_path, speech_wav, face_video
):
    marker = fake_nvidia_smi(tmp_path / "gpu-bin", fails=False)
    app = launch([str(tmp_path / "gpu-bin"), *path_without_nvidia_smi()], env={"HEYGEM_API_TOKEN": SECRET})
    assert app.wait_healthy().json() == {"health": "true"}

    assert marker.read_text().split() == [
        "--query-gpu=name,driver_version,memory.total",
        "--format=csv,noheader",
    ]
    gpu_lines = [line for line in app.lines if line.startswith("start_app: GPU found: ")]
    assert len(gpu_lines) == 2 and FAKE_GPUS[0] in gpu_lines[0]
    # torch decides the device: a GPU that torch cannot drive is not used.
    assert settings_lines(app)["device"] == "cpu"
    assert "start_app: no GPU found" not in app.output
    # The app itself got the device: its own settings summary says so.
    assert any("heygem.settings" in line and " device=cpu " in line for line in app.lines)
    # torch here is a CPU build: the mismatch is reported with torch's CUDA version.
    assert "start_app: torch " in app.output and "built for CUDA none" in app.output
    assert "WARNING: nvidia-smi sees a GPU but torch" in app.output
    # Secrets are masked everywhere, including the echo of the command line.
    assert settings_lines(app)["api_token"] == "***"
    # A GPU listed but unusable must not break the service: a job still succeeds.
    auth = {"Authorization": f"Bearer {SECRET}"}
    job = wait_finished(app, submit_job(app, speech_wav, face_video, auth), auth)
    assert job["status"] == "succeeded", json.dumps(job)[:2000] + "\n" + app.output[-3000:]
    assert SECRET not in app.output
    assert app.terminate(GRACE_S) == 0


def test_failing_nvidia_smi_means_cpu(launch, tmp_path):
    marker = fake_nvidia_smi(tmp_path / "broken-bin", fails=True)
    app = launch([str(tmp_path / "broken-bin"), *path_without_nvidia_smi()])
    assert app.wait_healthy().json() == {"health": "true"}

    assert marker.exists(), "the failing nvidia-smi was never called"
    assert_cpu_detected(app)
    assert app.terminate(GRACE_S) == 0


def test_no_nvidia_smi_means_cpu(cpu_app):
    assert httpx.get(cpu_app.url("/health"), timeout=10).json() == {"health": "true"}
    assert_cpu_detected(cpu_app)


def assert_cpu_detected(app: App) -> None:
    assert "start_app: no GPU found, running on CPU (slow)" in app.lines
    assert "start_app: GPU found" not in app.output
    assert settings_lines(app)["device"] == "cpu"
    assert "WARNING" not in app.output  # torch agrees: no GPU either


def test_a_device_already_set_is_kept_and_bad_settings_stop_early(tmp_path):
    """No server here: a bad flag must stop the script before exec, with one line and code 2."""
    fake_nvidia_smi(tmp_path / "gpu-bin", fails=False)
    path = os.pathsep.join([str(tmp_path / "gpu-bin"), *path_without_nvidia_smi()])
    result = start_app_with_a_bad_flag(tmp_path, PATH=path, HEYGEM_DEVICE="cpu")
    assert result.returncode == 2
    assert "start_app: GPU found: " in result.stdout
    assert "start_app: device: HEYGEM_DEVICE=cpu" in result.stdout
    assert result.stderr.strip().endswith("start_app: bad setting: unknown option(s): --no-such-flag")
    assert "Traceback" not in result.stdout + result.stderr
    assert "effective settings" not in result.stdout


def fake_cuda_torch(folder: Path) -> Path:
    """A `torch` package that only answers start_app.sh's question: CUDA 12.6 build, GPU visible."""
    package = folder / "torch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "from types import SimpleNamespace\n"
        "__version__ = '2.13.0+cu126'\n"
        "cuda = SimpleNamespace(is_available=lambda: True)\n"
        "version = SimpleNamespace(cuda='12.6')\n"
    )
    return folder


def run_until_settings_check(tmp_path: Path, path_dirs: list[str]) -> subprocess.CompletedProcess[str]:
    """start_app.sh with a torch that sees a GPU, stopped by a bad flag right before exec."""
    return start_app_with_a_bad_flag(
        tmp_path,
        PATH=os.pathsep.join(path_dirs),
        PYTHONPATH=os.pathsep.join([str(fake_cuda_torch(tmp_path / "fake-torch")), str(PROJECT)]),
    )


def start_app_with_a_bad_flag(tmp_path: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    """start_app.sh in a clean HEYGEM_ environment plus env_vars, stopped before exec by a bad flag."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEYGEM_")} | env_vars
    return subprocess.run(
        ["bash", str(START_APP), "--no-such-flag"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("nvidia_smi", ["missing", "failing"])
def test_torch_seeing_a_gpu_wins_over_a_missing_or_failing_nvidia_smi(tmp_path, nvidia_smi):
    path_dirs = path_without_nvidia_smi()
    if nvidia_smi == "failing":
        fake_nvidia_smi(tmp_path / "broken-bin", fails=True)
        path_dirs = [str(tmp_path / "broken-bin"), *path_dirs]
    result = run_until_settings_check(tmp_path, path_dirs)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "start_app: torch 2.13.0+cu126, built for CUDA 12.6, sees a GPU: yes" in result.stdout
    assert "start_app: device: HEYGEM_DEVICE=cuda" in result.stdout
    assert "no GPU found" not in result.stdout
    assert "torch sees a GPU but nvidia-smi does not" in result.stderr


def test_help_describes_the_script_and_starts_nothing(tmp_path):
    result = subprocess.run(
        ["bash", str(START_APP), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "bash start_app.sh [--host H] [--port P] [--root-path /prefix]" in result.stdout
    assert "HEYGEM_HOST" in result.stdout
    assert "start_app:" not in result.stdout and result.stderr == ""  # no detection ran


# --- logs ----------------------------------------------------------------------------------------


def test_a_jobs_log_lines_reach_stdout_with_its_id(cpu_app, speech_wav, face_video):
    app = cpu_app
    job_id = submit_job(app, speech_wav, face_video)
    job = wait_finished(app, job_id)
    assert job["status"] == "succeeded", json.dumps(job)[:2000] + "\n" + app.output[-3000:]

    time.sleep(0.5)  # the reader thread may still be copying the last lines
    job_lines = [line for line in app.lines if f"job {job_id}" in line]
    worker_lines = [line for line in job_lines if " heygem.jobs." in line]
    assert len(worker_lines) >= 2, "\n".join(job_lines) or app.output[-3000:]
    assert all(line.split(" ", 3)[2] in ("INFO", "WARNING", "ERROR", "DEBUG") for line in worker_lines)


# --- ports ---------------------------------------------------------------------------------------


def test_port_from_the_environment_and_the_flag_overrides_it(cpu_app):
    assert f"start_app: serving on http://127.0.0.1:{cpu_app.port}/" in cpu_app.lines
    assert httpx.get(cpu_app.url("/health"), timeout=10).json() == {"health": "true"}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{cpu_app.env_port}/health", timeout=2)


def test_port_8080_as_in_the_container(launch):
    if port_in_use(8080):
        pytest.skip("port 8080 is taken by another process on this machine")
    app = launch(path_without_nvidia_smi(), env={"HEYGEM_HOST": "0.0.0.0"}, port=8080)
    response = app.wait_healthy()
    assert response.status_code == 200 and response.json() == {"health": "true"}
    assert "start_app: serving on http://0.0.0.0:8080/" in app.lines
    assert app.terminate(GRACE_S) == 0


# --- signals (last: stops the shared server) ---------------------------------------------------


def test_sigterm_reaches_the_python_server_which_drains_and_exits_0(cpu_app, speech_wav, face_video):
    app = cpu_app
    # `exec` replaced bash: the child we started *is* the Python server now.
    server = psutil.Process(app.proc.pid)
    assert Path(server.exe()).name.startswith("python")
    assert "app.py" in server.cmdline()
    # A job in flight, so that the drain has something to wait for.
    job_id = submit_job(app, speech_wav, face_video)
    wait_until(
        lambda: job_status(app, job_id)["status"] != "queued",
        JOB_TIMEOUT_S,
        interval=0.2,
        message="the job to start",
    )

    # The grace period is the wait's timeout: overrunning it raises TimeoutExpired.
    assert app.terminate(GRACE_S) == 0
    assert any("SIGTERM received: draining" in line for line in app.lines), app.output[-3000:]
    stopped = next(i for i, line in enumerate(app.lines) if "job service stopped" in line)
    # The running job was let finish, or handed back to the queue: never cut off as failed.
    outcome = [
        line
        for line in app.lines[:stopped]
        if f"job {job_id}: " in line and ("succeeded" in line or "back in the queue" in line)
    ]
    assert outcome, "\n".join(line for line in app.lines if job_id in line)
    assert not any(f"job {job_id}: failed" in line for line in app.lines)
    assert app.session_processes() == [], "processes of the app outlived it"
