"""heygem.storage against a real S3 server (SeaweedFS) and a real local HTTPS server."""

from __future__ import annotations

import http.server
import logging
import os
import ssl
import subprocess
import threading
import urllib.request

import pytest

from heygem import storage
from heygem.errors import ForbiddenPathError, InputError, LimitExceededError, StorageError
from tests.kit import free_port
from tests.s3server import (
    BUCKET,
    OTHER_BUCKET,
    Identity,
    start_s3_server,
    use_identity,
)

pytest_plugins = ["tests.s3server"]  # the s3_server and aws_env fixtures

MB = 1024 * 1024


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def s3_settings(settings, s3_server, aws_env):
    return settings.replace(s3_endpoint=s3_server.endpoint, s3_region="us-east-1")


@pytest.fixture
def uploaded(s3_server, speech_wav, face_video):
    """The fixture audio and video as objects, under both key styles callers use."""
    client = s3_server.client()
    client.upload_file(str(speech_wav), BUCKET, "inputs/speech.wav")
    client.upload_file(str(face_video), BUCKET, "inputs/deep/folder/face.mp4")
    return {
        "audio": f"s3://{BUCKET}/inputs/speech.wav",
        "video": f"obs://{BUCKET}/inputs/deep/folder/face.mp4",
    }


def _object_bytes(s3_server, bucket: str, key: str) -> bytes:
    return s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def _dead_endpoint() -> str:
    """A port nothing listens on: connection refused at once."""
    return f"http://127.0.0.1:{free_port()}"


# --- local HTTPS server --------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.hits.append(self.path)
        host = f"https://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/files/redirect-inside":
            self._redirect(f"{host}/files/speech.wav")
        elif self.path == "/files/redirect-outside":
            self._redirect(f"{host}/private/secret.wav")
        elif self.path == "/files/endless":
            self._endless()
        elif self.path in self.files:
            body = self.files[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _endless(self) -> None:
        """No Content-Length: only counting while streaming can enforce the limit."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for _ in range(64):
                self.wfile.write(b"\0" * MB)
        except OSError:  # the client hangs up once it has read past its limit
            pass
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """Refused handshakes (the untrusted-certificate test) are expected here."""


@pytest.fixture(scope="module")
def https_server(tmp_path_factory, speech_wav):
    """https://127.0.0.1:<port>/ with a self-signed certificate that the test trusts."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    _Handler.files = {"/files/speech.wav": speech_wav.read_bytes(), "/private/secret.wav": b"not for you"}
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def https_settings(settings, https_server, monkeypatch):
    base, cert = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust the test certificate, and only it
    _Handler.hits.clear()
    return settings.replace(url_allowlist=(f"{base}/files/",)), base


# --- reference forms (no network) ----------------------------------------------------------------


def test_is_remote_recognises_the_three_remote_forms(settings):
    assert storage.is_remote("s3://b/k")
    assert storage.is_remote("OBS://bucket/key.wav")
    assert storage.is_remote("https://example.com/a.wav")
    assert not storage.is_remote("http://example.com/a.wav")
    assert not storage.is_remote("/obs-mount/a.wav")
    assert not storage.is_remote("inputs/a.wav")
    # Written as a URL, but not one storage fetches: refused, never taken for a path.
    assert storage.is_url("http://example.com/a.wav") and storage.is_url("S3://b/k")
    for url in ("http://example.com/a.wav?sig=secret", "file:///etc/passwd"):
        assert storage.is_url(url) and not storage.is_remote(url)
        with pytest.raises(ForbiddenPathError, match=f"unsupported reference {url.split('?')[0]}"):
            storage.check_reference(url, settings)


@pytest.mark.parametrize(
    "ref",
    [
        "jar:file:///etc/passwd",
        "JAR:FILE://host/share/a.wav",
        "://bucket/a.wav",
    ],
)
def test_is_remote_leaves_other_schemes_to_the_local_path_checks(ref, settings, tmp_path):
    assert not storage.is_remote(ref)
    assert not storage.is_url(ref)
    # Taken as a relative local path: a file under the inputs folder, which does not exist.
    with pytest.raises(InputError, match="input file not found"):
        storage.fetch_input(ref, tmp_path / "job", settings)


@pytest.mark.parametrize(
    "ref, message",
    [
        ("s3://", "no bucket"),
        ("s3:///key.wav", "no bucket"),
        ("s3://bucket", "no object key"),
        ("obs://bucket/folder/", "names a folder"),
        ("s3://bucket/..", "names a folder"),
        ("s3://bad bucket/key", "invalid bucket name"),
    ],
)
def test_check_reference_refuses_incomplete_object_urls(settings, ref, message):
    with pytest.raises(InputError, match=message):
        storage.check_reference(ref, settings)


@pytest.mark.parametrize(
    "ref",
    [
        "file:///etc/passwd",
        "http://127.0.0.1/a.wav",
        "ftp://host/a.wav",
        "gs://bucket/a.wav",
    ],
)
def test_check_reference_refuses_other_schemes(settings, ref):
    with pytest.raises(ForbiddenPathError, match="unsupported reference"):
        storage.check_reference(ref, settings)


def test_https_allow_list_matches_whole_hosts_and_path_segments(settings):
    allowed = settings.replace(url_allowlist=("https://media.example.com/clips", "https://cdn.example.org/"))
    storage.check_reference("https://media.example.com/clips/a.wav", allowed)
    storage.check_reference("https://media.example.com/clips", allowed)
    storage.check_reference("https://cdn.example.org/x/y.mp4?v=1", allowed)
    for ref in (
        "https://media.example.com/clipsevil/a.wav",  # not the same path segment
        "https://media.example.com.evil.net/clips/a.wav",  # host suffix attack
        "https://media.example.com@evil.net/clips/a.wav",  # user info trick
        "https://media.example.com:8443/clips/a.wav",  # another port
        "https://other.example.org/a.wav",
    ):
        with pytest.raises(ForbiddenPathError):
            storage.check_reference(ref, allowed)


def test_https_refused_when_allow_list_is_empty(settings):
    assert settings.url_allowlist == ()
    with pytest.raises(ForbiddenPathError, match="URL not on the allow-list: https://example.com/a.wav"):
        storage.check_reference("https://example.com/a.wav", settings)


def test_allow_list_error_hides_query_strings(settings):
    with pytest.raises(ForbiddenPathError) as caught:
        storage.check_reference("https://example.com/a.wav?X-Amz-Signature=abcdef", settings)
    assert "abcdef" not in str(caught.value)


def test_local_reference_must_be_under_an_allowed_root(settings, tmp_path):
    mount = tmp_path / "obs-mount"
    mount.mkdir()
    (mount / "a.wav").write_bytes(b"RIFF")
    settings = settings.replace(input_roots=(mount,))
    settings.inputs_dir.mkdir()
    (settings.inputs_dir / "b.wav").write_bytes(b"RIFF")
    assert (
        storage.fetch_input(str(mount / "a.wav"), tmp_path / "job", settings) == (mount / "a.wav").resolve()
    )
    assert (
        storage.fetch_input("b.wav", tmp_path / "job", settings) == (settings.inputs_dir / "b.wav").resolve()
    )
    with pytest.raises(ForbiddenPathError):
        storage.check_reference(str(tmp_path / "elsewhere.wav"), settings)
    with pytest.raises(ForbiddenPathError):
        storage.check_reference("../../etc/passwd", settings)
    with pytest.raises(InputError, match="input file not found"):
        storage.fetch_input(str(mount / "missing.wav"), tmp_path / "job", settings)


def test_output_prefix_forms(settings, tmp_path):
    mount = tmp_path / "obs-mount"
    settings = settings.replace(input_roots=(mount,))
    storage.check_output_prefix("s3://bucket/out/", settings)
    storage.check_output_prefix("obs://bucket", settings)
    storage.check_output_prefix(str(mount / "results"), settings)
    with pytest.raises(ForbiddenPathError, match="outside the allowed output folders"):
        storage.check_output_prefix(str(tmp_path / "elsewhere"), settings)
    with pytest.raises(ForbiddenPathError, match="unsupported output prefix"):
        storage.check_output_prefix("https://example.com/upload/", settings)


def test_output_prefix_is_returned_normalised_and_odd_schemes_are_refused(settings, tmp_path):
    mount = tmp_path / "obs-mount"
    settings = settings.replace(input_roots=(mount,))
    assert storage.check_output_prefix("S3://bucket/out/", settings) == "S3://bucket/out/"
    # Relative folders are refused: they used to mean the outputs folder, which is the service's.
    with pytest.raises(ForbiddenPathError, match="must be an absolute folder"):
        storage.check_output_prefix("results", settings)
    assert storage.check_output_prefix(str(mount / "a" / ".." / "b"), settings) == str(mount.resolve() / "b")
    # Not a scheme, yet not a folder anyone meant either: "outputs/:/bucket/out" would be accepted.
    for odd in ("://bucket/out/", "my bucket://out/", "s3 ://bucket/"):
        with pytest.raises(InputError, match="must look like s3://bucket/prefix/"):
            storage.check_output_prefix(odd, settings)
    with pytest.raises(InputError, match="invalid bucket name"):
        storage.check_output_prefix("s3://bad bucket/", settings)


# --- fetching from S3 ----------------------------------------------------------------------------


def test_fetch_round_trip_s3_and_obs(s3_settings, uploaded, speech_wav, face_video, tmp_path):
    job = tmp_path / "job"
    audio = storage.fetch_input(uploaded["audio"], job, s3_settings)
    video = storage.fetch_input(uploaded["video"], job, s3_settings)
    assert (audio.parent, audio.name, video.name) == (job, "speech.wav", "face.mp4")
    assert audio.read_bytes() == speech_wav.read_bytes()
    assert video.read_bytes() == face_video.read_bytes()
    assert sorted(p.name for p in job.iterdir()) == ["face.mp4", "speech.wav"]  # no partial files


def test_fetch_keeps_both_inputs_when_keys_share_a_name(s3_server, s3_settings, tmp_path):
    client = s3_server.client()
    client.put_object(Bucket=BUCKET, Key="same/a/input", Body=b"first")
    client.put_object(Bucket=BUCKET, Key="same/b/input", Body=b"second")
    first = storage.fetch_input(f"s3://{BUCKET}/same/a/input", tmp_path, s3_settings)
    second = storage.fetch_input(f"s3://{BUCKET}/same/b/input", tmp_path, s3_settings)
    assert first != second
    assert (first.read_bytes(), second.read_bytes()) == (b"first", b"second")


def test_fetch_missing_key(s3_settings, tmp_path):
    with pytest.raises(StorageError) as caught:
        storage.fetch_input(f"s3://{BUCKET}/nothing/here.wav", tmp_path / "job", s3_settings)
    assert str(caught.value) == f"object not found: s3://{BUCKET}/nothing/here.wav"
    assert not (tmp_path / "job").exists() or list((tmp_path / "job").iterdir()) == []


def test_fetch_missing_bucket(s3_settings, tmp_path):
    with pytest.raises(StorageError) as caught:
        storage.fetch_input("obs://no-such-bucket/a.wav", tmp_path, s3_settings)
    assert str(caught.value) == "bucket does not exist: no-such-bucket"


@pytest.mark.parametrize("who", ["wrong-secret", "unknown-key", "no-permission"])
def test_fetch_with_bad_credentials_is_denied_without_leaking_them(
    who, s3_server, s3_settings, uploaded, aws_env, tmp_path, caplog
):
    identity = {
        "wrong-secret": Identity(s3_server.admin.access_key, "wrong-secret-" + "x" * 20),
        "unknown-key": Identity("HEYGEMNOBODY", "bogus-secret-" + "y" * 20),
        "no-permission": s3_server.restricted,
    }[who]
    use_identity(aws_env, identity)
    caplog.set_level(logging.DEBUG)  # botocore's own debug logging included
    with pytest.raises(StorageError) as caught:
        storage.fetch_input(uploaded["audio"], tmp_path, s3_settings)
    message = str(caught.value)
    assert message == f"access denied to {uploaded['audio']} (check the credentials)"
    assert identity.secret_key not in message
    assert identity.secret_key not in caplog.text
    assert s3_server.admin.secret_key not in caplog.text


def test_restricted_identity_can_read_its_own_bucket(s3_server, s3_settings, aws_env, tmp_path):
    """The denial above is about permissions, not a broken identity."""
    s3_server.client().put_object(Bucket=OTHER_BUCKET, Key="shared/a.txt", Body=b"shared")
    use_identity(aws_env, s3_server.restricted)
    path = storage.fetch_input(f"s3://{OTHER_BUCKET}/shared/a.txt", tmp_path, s3_settings)
    assert path.read_bytes() == b"shared"


def test_fetch_without_credentials(s3_settings, aws_env, tmp_path):
    aws_env.delenv("AWS_ACCESS_KEY_ID")
    aws_env.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no object storage credentials .*AWS_ACCESS_KEY_ID"):
        storage.fetch_input(f"s3://{BUCKET}/inputs/speech.wav", tmp_path, s3_settings)


def test_fetch_from_unreachable_endpoint(s3_settings, tmp_path):
    dead = _dead_endpoint()
    with pytest.raises(StorageError) as caught:
        storage.fetch_input(f"s3://{BUCKET}/a.wav", tmp_path, s3_settings.replace(s3_endpoint=dead))
    assert str(caught.value) == f"cannot reach object storage at {dead}"


def test_fetch_refuses_objects_over_the_size_limit(s3_server, s3_settings, tmp_path):
    s3_server.client().put_object(Bucket=BUCKET, Key="big/blob.bin", Body=os.urandom(2 * MB))
    small = s3_settings.replace(max_upload_mb=1)
    with pytest.raises(LimitExceededError, match=f"s3://{BUCKET}/big/blob.bin is larger than the 1 MB limit"):
        storage.fetch_input(f"s3://{BUCKET}/big/blob.bin", tmp_path / "job", small)
    assert list((tmp_path / "job").iterdir()) == []


# --- fetching over HTTPS -------------------------------------------------------------------------


def test_https_fetch_from_allowed_url(https_settings, speech_wav, tmp_path):
    settings, base = https_settings
    path = storage.fetch_input(f"{base}/files/speech.wav", tmp_path, settings)
    assert path.name == "speech.wav"
    assert path.read_bytes() == speech_wav.read_bytes()


def test_https_url_off_the_allow_list_is_never_requested(https_settings, tmp_path):
    settings, base = https_settings
    with pytest.raises(ForbiddenPathError, match="URL not on the allow-list"):
        storage.check_reference(f"{base}/private/secret.wav", settings)
    with pytest.raises(ForbiddenPathError):
        storage.fetch_input(f"{base}/private/secret.wav", tmp_path, settings)
    assert _Handler.hits == []


def test_https_redirects_only_within_the_allow_list(https_settings, speech_wav, tmp_path):
    settings, base = https_settings
    path = storage.fetch_input(f"{base}/files/redirect-inside", tmp_path / "in", settings)
    assert path.read_bytes() == speech_wav.read_bytes()
    with pytest.raises(ForbiddenPathError, match="redirects to a URL not on the allow-list"):
        storage.fetch_input(f"{base}/files/redirect-outside", tmp_path / "out", settings)
    assert "/private/secret.wav" not in _Handler.hits
    assert list((tmp_path / "out").iterdir()) == []


def test_https_limit_is_enforced_while_streaming(https_settings, tmp_path):
    settings, base = https_settings
    with pytest.raises(LimitExceededError, match="larger than the 2 MB limit"):
        storage.fetch_input(f"{base}/files/endless", tmp_path / "job", settings.replace(max_upload_mb=2))
    assert list((tmp_path / "job").iterdir()) == []


def test_https_missing_file(https_settings, tmp_path):
    settings, base = https_settings
    with pytest.raises(
        StorageError, match=r"not found: https://127\.0\.0\.1:\d+/files/none\.wav \(HTTP 404\)"
    ):
        storage.fetch_input(f"{base}/files/none.wav", tmp_path, settings)


def test_https_untrusted_certificate_is_refused(https_settings, monkeypatch, tmp_path):
    settings, base = https_settings
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(
        StorageError,
        match=r"cannot reach https://127\.0\.0\.1:\d+/files/speech\.wav: "
        r"TLS certificate not trusted \(self-signed certificate\)$",
    ):
        storage.fetch_input(f"{base}/files/speech.wav", tmp_path, settings)


# --- publishing ----------------------------------------------------------------------------------


def test_publish_round_trip_with_presigned_url(s3_server, s3_settings, face_video):
    published = storage.publish_output(face_video, f"s3://{BUCKET}/results/", s3_settings, name="r1.mp4")
    assert published.url == f"s3://{BUCKET}/results/r1.mp4"
    head = s3_server.client().head_object(Bucket=BUCKET, Key="results/r1.mp4")
    assert head["ContentLength"] == face_video.stat().st_size
    assert head["ContentType"] == "video/mp4"
    assert published.presigned_url.startswith(f"{s3_server.endpoint}/{BUCKET}/results/r1.mp4?")
    with urllib.request.urlopen(published.presigned_url, timeout=10) as response:
        assert response.read() == face_video.read_bytes()
    assert face_video.is_file()


def test_publish_obs_prefix_without_trailing_slash_names_a_folder(s3_server, s3_settings, face_video):
    published = storage.publish_output(face_video, f"obs://{BUCKET}/by-obs", s3_settings)
    assert published.url == f"obs://{BUCKET}/by-obs/{face_video.name}"
    assert _object_bytes(s3_server, BUCKET, f"by-obs/{face_video.name}") == face_video.read_bytes()


def test_presign_off_and_for_non_objects(s3_settings, face_video):
    off = s3_settings.replace(presign_seconds=0)
    assert storage.publish_output(face_video, f"s3://{BUCKET}/nopresign/", off).presigned_url is None
    assert storage.presign("/data/outputs/a.mp4", s3_settings) is None
    assert storage.presign(f"s3://{BUCKET}/results/r1.mp4", s3_settings).startswith("http")


def test_presign_reuses_one_client_until_the_credentials_change(s3_server, s3_settings, aws_env, monkeypatch):
    """Making a client costs ~0.2 s and signing ~0.3 ms: the API re-signs on every read."""
    monkeypatch.setattr(storage, "_signing_clients", storage._SigningClients())
    made = []
    real_client = storage._client
    monkeypatch.setattr(storage, "_client", lambda settings: made.append(1) or real_client(settings))
    url = f"s3://{BUCKET}/results/r1.mp4"
    first = storage.presign(url, s3_settings)
    assert storage.presign(url, s3_settings.replace(presign_seconds=60)) is not None
    assert len(made) == 1
    use_identity(aws_env, s3_server.restricted)
    other = storage.presign(url, s3_settings)
    assert len(made) == 2
    assert s3_server.restricted.access_key in other and s3_server.admin.access_key in first
    storage.presign(url, s3_settings.replace(s3_region="eu-west-1"))
    assert len(made) == 3


def test_publish_large_file_uses_multipart(s3_server, s3_settings, monkeypatch, tmp_path):
    monkeypatch.setattr(storage, "MULTIPART_THRESHOLD", 5 * MB)
    monkeypatch.setattr(storage, "MULTIPART_CHUNKSIZE", 5 * MB)
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(11 * MB))
    storage.publish_output(big, f"s3://{BUCKET}/multipart/", s3_settings)
    head = s3_server.client().head_object(Bucket=BUCKET, Key="multipart/big.mp4")
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag counts its parts
    assert _object_bytes(s3_server, BUCKET, "multipart/big.mp4") == big.read_bytes()


def test_publish_to_missing_bucket_is_not_retried(s3_settings, face_video, caplog):
    caplog.set_level(logging.WARNING, logger="heygem.storage")
    with pytest.raises(StorageError, match="^bucket does not exist: missing-bucket$"):
        storage.publish_output(face_video, "s3://missing-bucket/out/", s3_settings)
    assert "retrying" not in caplog.text


def test_publish_denied(s3_server, s3_settings, aws_env, face_video):
    use_identity(aws_env, s3_server.restricted)
    with pytest.raises(StorageError, match=r"^access denied to s3://heygem-other/out/face\.mp4 \(check"):
        storage.publish_output(face_video, f"s3://{OTHER_BUCKET}/out/", s3_settings)


def test_publish_rejects_path_like_names(s3_settings, face_video):
    with pytest.raises(ForbiddenPathError, match="plain file name"):
        storage.publish_output(face_video, f"s3://{BUCKET}/out/", s3_settings, name="../escape.mp4")


def test_publish_when_the_server_stops_fails_after_retries_and_keeps_the_file(
    tmp_path_factory, settings, aws_env, face_video, tmp_path, caplog
):
    """A server of its own, stopped mid-test: the shared one stays up for the other tests."""
    server = start_s3_server(tmp_path_factory.mktemp("seaweedfs-stopped"))
    try:
        use_identity(aws_env, server.admin)
        own = settings.replace(s3_endpoint=server.endpoint, s3_region="us-east-1")
        result = tmp_path / "result.mp4"
        result.write_bytes(face_video.read_bytes())
        assert (
            storage.publish_output(result, f"s3://{BUCKET}/out/", own).url == f"s3://{BUCKET}/out/result.mp4"
        )
        server.stop()
        caplog.set_level(logging.WARNING, logger="heygem.storage")
        with pytest.raises(StorageError) as caught:
            storage.publish_output(result, f"s3://{BUCKET}/out/", own, name="second.mp4")
    finally:
        server.stop()
    assert str(caught.value) == f"cannot reach object storage at {server.endpoint}"
    assert result.read_bytes() == face_video.read_bytes()
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == storage.PUBLISH_ATTEMPTS - 1
    assert server.admin.secret_key not in caplog.text


def test_publish_to_local_mount_copies_once_to_the_final_name(settings, face_video, tmp_path):
    mount = tmp_path / "obs-mount"
    mount.mkdir()
    settings = settings.replace(input_roots=(mount,))
    published = storage.publish_output(face_video, str(mount / "results"), settings, name="clip.mp4")
    target = mount / "results" / "clip.mp4"
    assert published == storage.PublishedOutput(url=str(target.resolve()), presigned_url=None)
    assert target.read_bytes() == face_video.read_bytes()
    assert [p.name for p in (mount / "results").iterdir()] == ["clip.mp4"]  # no temp or partial names
    assert face_video.is_file()


def test_publish_to_local_folder_outside_the_roots_is_refused(settings, face_video, tmp_path):
    with pytest.raises(ForbiddenPathError):
        storage.publish_output(face_video, str(tmp_path / "elsewhere"), settings)
    assert not (tmp_path / "elsewhere").exists()


def test_publish_missing_local_file(s3_settings, tmp_path):
    with pytest.raises(StorageError, match="result file missing"):
        storage.publish_output(tmp_path / "never-made.mp4", f"s3://{BUCKET}/out/", s3_settings)


def test_settings_description_never_contains_aws_secrets(s3_settings, s3_server):
    described = " ".join(s3_settings.describe().values())
    assert s3_server.admin.secret_key not in described
    assert s3_server.admin.access_key not in described
