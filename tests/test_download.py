"""Weights resolution and downloading, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from heygem.engine.model import download
from heygem.errors import ModelError
from heygem.settings import Settings
from tests.kit import free_port

PAYLOAD = os.urandom(2_500_000)  # a few 1 MiB chunks, so progress is reported more than once
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
HF_REPO = "someone/Wav2Lip"
HF_COMMIT = "0123456789abcdef0123456789abcdef01234567"


DEFAULTS = Settings()  # the repo layout heygem expects by default (files in sub-folders)


@dataclass
class WeightsServer:
    """Serves PAYLOAD at /files/<name>, a Hugging Face-style /<repo>/resolve/main/<name>,
    404 elsewhere, and /short/<name> which promises more bytes than it sends."""

    base: str
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"


def _handler(server: WeightsServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_HEAD(self) -> None:
            self._reply(body=False)

        def do_GET(self) -> None:
            server.requests.append(self.path)
            self._reply(body=True)

        def _reply(self, body: bool) -> None:
            path = self.path.split("?")[0]
            if path.startswith("/short/"):
                self._send(200, PAYLOAD[:1000], body, length=len(PAYLOAD))
            elif path.startswith("/files/") or path in (
                f"/{HF_REPO}/resolve/main/{DEFAULTS.hf_checkpoint_file}",
                f"/{HF_REPO}/resolve/main/{DEFAULTS.hf_detector_file}",
            ):
                self._send(200, PAYLOAD, body, etag=PAYLOAD_SHA)
            else:
                self._send(404, b"", body)

        def _send(
            self, status: int, data: bytes, body: bool, length: int | None = None, etag: str | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(data) if length is None else length))
            if etag:
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", HF_COMMIT)
            self.end_headers()
            if body:
                self.wfile.write(data)
            if length is not None:
                self.close_connection = True

    return Handler


@pytest.fixture(scope="module")
def weights_server():
    state = WeightsServer(base="")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(weights_server) -> WeightsServer:
    weights_server.requests.clear()
    return weights_server


def files_in(folder: Path) -> list[str]:
    """Everything in the folder, hidden temporaries included."""
    return sorted(p.name for p in folder.iterdir())


# --- resolution and status --------------------------------------------------------------------


def test_resolve_checkpoint_prefers_gan_then_plain(settings):
    models = settings.models_dir
    assert download.resolve_checkpoint(settings) == models / "wav2lip_gan.pth"  # none yet
    (models / "wav2lip.pth").write_bytes(b"plain")
    assert download.resolve_checkpoint(settings) == models / "wav2lip.pth"
    (models / "wav2lip_gan.pth").write_bytes(b"gan")
    assert download.resolve_checkpoint(settings) == models / "wav2lip_gan.pth"


def test_explicit_paths_win(settings, tmp_path):
    custom = settings.replace(checkpoint=tmp_path / "mine.pth", detector_weights=tmp_path / "det.pth")
    assert download.resolve_checkpoint(custom) == tmp_path / "mine.pth"
    assert download.resolve_detector_weights(custom) == tmp_path / "det.pth"
    assert download.resolve_detector_weights(settings) == settings.models_dir / "s3fd.pth"


def test_weights_status(settings):
    (settings.models_dir / "s3fd.pth").write_bytes(b"x" * 1234)
    status = {s.name: s for s in download.weights_status(settings)}

    assert status["generator"] == download.WeightStatus(
        "generator", settings.models_dir / "wav2lip_gan.pth", False, 0
    )
    assert status["detector"].present and status["detector"].size_bytes == 1234


# --- plain URLs -------------------------------------------------------------------------------


def test_url_download_without_checksum(settings, server):
    progress = []
    config = settings.replace(checkpoint_url=server.url("/files/wav2lip_gan.pth"))

    paths = download.download_weights(config, which=("generator",), on_progress=lambda *a: progress.append(a))

    target = settings.models_dir / "wav2lip_gan.pth"
    assert paths == [target]
    assert target.read_bytes() == PAYLOAD
    assert files_in(settings.models_dir) == ["wav2lip_gan.pth"]
    assert len(progress) >= 3 and progress[-1] == (len(PAYLOAD), len(PAYLOAD), "generator")


def test_url_download_with_checksum(settings, server):
    config = settings.replace(
        detector_url=server.url("/files/s3fd-619a316812.pth"), detector_sha256=PAYLOAD_SHA.upper()
    )

    paths = download.download_weights(config, which=("detector",))

    assert paths == [settings.models_dir / "s3fd.pth"]
    assert paths[0].read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_no_file(settings, server):
    config = settings.replace(
        checkpoint_url=server.url("/files/wav2lip_gan.pth"), checkpoint_sha256="ab" * 32
    )

    with pytest.raises(ModelError, match="SHA-256 .* expected abab.*discarded") as info:
        download.download_weights(config, which=("generator",))

    assert "\n" not in str(info.value)
    assert files_in(settings.models_dir) == []


def test_http_404_is_a_model_error(settings, server):
    config = settings.replace(checkpoint_url=server.url("/missing/wav2lip_gan.pth?token=s3cret"))

    with pytest.raises(ModelError, match="HTTP 404") as info:
        download.download_weights(config, which=("generator",))

    assert "s3cret" not in str(info.value)  # query strings may carry tokens
    assert files_in(settings.models_dir) == []


def test_interrupted_transfer_leaves_no_file(settings, server):
    config = settings.replace(checkpoint_url=server.url("/short/wav2lip_gan.pth"))

    with pytest.raises(ModelError, match="short/wav2lip_gan.pth .*1000 of 2500000 bytes"):
        download.download_weights(config, which=("generator",))

    assert files_in(settings.models_dir) == []


def test_unreachable_server(settings):
    config = settings.replace(checkpoint_url=f"http://127.0.0.1:{free_port()}/wav2lip_gan.pth")
    with pytest.raises(ModelError, match="cannot reach http://127.0.0.1"):
        download.download_weights(config, which=("generator",))
    assert files_in(settings.models_dir) == []


def test_only_http_urls(settings, tmp_path):
    local = tmp_path / "w.pth"
    local.write_bytes(b"weights")
    config = settings.replace(checkpoint_url=local.as_uri())
    with pytest.raises(ModelError, match="must be http"):
        download.download_weights(config, which=("generator",))


def test_present_file_is_kept_unless_forced(settings, server):
    target = settings.models_dir / "wav2lip_gan.pth"
    target.write_bytes(b"already here")
    config = settings.replace(checkpoint_url=server.url("/files/wav2lip_gan.pth"))

    assert download.download_weights(config, which=("generator",)) == [target]
    assert target.read_bytes() == b"already here" and server.requests == []

    download.download_weights(config, which=("generator",), force=True)
    assert target.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_present_file_with_wrong_checksum_is_replaced(settings, server):
    target = settings.models_dir / "wav2lip_gan.pth"
    target.write_bytes(b"damaged")
    config = settings.replace(
        checkpoint_url=server.url("/files/wav2lip_gan.pth"), checkpoint_sha256=PAYLOAD_SHA
    )

    download.download_weights(config, which=("generator",))

    assert target.read_bytes() == PAYLOAD


def test_plain_generator_keeps_its_name(settings, server):
    config = settings.replace(checkpoint_url=server.url("/files/wav2lip.pth"))
    assert download.download_weights(config, which=("generator",)) == [settings.models_dir / "wav2lip.pth"]
    assert download.resolve_checkpoint(config) == settings.models_dir / "wav2lip.pth"


def test_explicit_checkpoint_path_is_the_target(settings, server, tmp_path):
    config = settings.replace(
        checkpoint_url=server.url("/files/anything.bin"), checkpoint=tmp_path / "deep" / "gen.pth"
    )
    assert download.download_weights(config, which=("generator",)) == [tmp_path / "deep" / "gen.pth"]
    assert (tmp_path / "deep" / "gen.pth").read_bytes() == PAYLOAD


def test_unknown_weight_name(settings):
    with pytest.raises(ValueError, match="unknown weights"):
        download.download_weights(settings, which=("vocoder",))


def test_status_and_resolution_never_download(settings, server):
    config = settings.replace(checkpoint_url=server.url("/files/wav2lip_gan.pth"))
    download.weights_status(config)
    download.resolve_checkpoint(config)
    download.resolve_detector_weights(config)
    assert server.requests == [] and files_in(settings.models_dir) == []


# --- Hugging Face (HF_ENDPOINT pointing at the local server) ---------------------------------


@pytest.fixture
def hf_settings(settings, server, monkeypatch) -> Settings:
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(settings.data_dir / "hf-home"))
    return settings.replace(
        hf_repo=HF_REPO, checkpoint_url="", detector_url="", checkpoint_sha256=PAYLOAD_SHA
    )


def test_hugging_face_download(hf_settings, server):
    progress = []
    paths = download.download_weights(hf_settings, on_progress=lambda *a: progress.append(a))

    models = hf_settings.models_dir
    assert paths == [models / "wav2lip_gan.pth", models / "s3fd.pth"]
    assert all(p.read_bytes() == PAYLOAD for p in paths)
    assert files_in(models) == ["s3fd.pth", "wav2lip_gan.pth"]  # staging folders removed
    assert f"/{HF_REPO}/resolve/main/{DEFAULTS.hf_checkpoint_file}" in server.requests
    assert progress[-1] == (len(PAYLOAD), len(PAYLOAD), "detector")


def test_hugging_face_missing_file(hf_settings):
    config = hf_settings.replace(hf_checkpoint_file="not-there.pth")
    with pytest.raises(ModelError, match=f"not-there.pth from Hugging Face repo {HF_REPO} failed") as info:
        download.download_weights(config, which=("generator",))
    assert "\n" not in str(info.value)
    assert files_in(hf_settings.models_dir) == []


def test_hugging_face_checksum_mismatch(hf_settings):
    config = hf_settings.replace(detector_sha256="00" * 32)
    with pytest.raises(ModelError, match="discarded"):
        download.download_weights(config, which=("detector",))
    assert files_in(hf_settings.models_dir) == []
