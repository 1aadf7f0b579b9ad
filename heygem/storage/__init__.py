"""Inputs by reference and results to object storage (S3, Huawei OBS) or a mounted folder.

References a job may name:
  - a local path under Settings.allowed_input_roots (e.g. an OBS mount at /obs-mount);
  - s3://bucket/key or obs://bucket/key, read from the S3-compatible endpoint in Settings
    (credentials come from boto3's default chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY);
  - https:// URLs that start with an entry of Settings.url_allowlist (empty by default).

Downloads stream into the job's folder under Settings.max_upload_mb. Results are uploaded with
boto3's managed transfer (multipart above a threshold) and retried with backoff, or copied once
into a mounted folder. Error messages name the reference, never the credentials.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mimetypes
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from heygem.errors import (
    DiskFullError,
    ForbiddenPathError,
    HeygemError,
    InputError,
    LimitExceededError,
    StorageError,
)
from heygem.storage.paths import free_name, resolve_under, safe_file_name

# boto3 and botocore are imported inside the functions that talk to object storage: reading a
# job record or checking a path must not cost their import (about a third of a second).
if TYPE_CHECKING:
    from heygem.settings import Settings

log = logging.getLogger("heygem.storage")

S3_SCHEMES = ("s3", "obs")  # obs:// is Huawei OBS: same protocol, same configured endpoint
HTTPS_SCHEME = "https"
MB = 1024 * 1024

# A dead or black-holed endpoint must fail a job in seconds, not hang it for minutes.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
BOTOCORE_MAX_ATTEMPTS = 2  # total attempts per request inside botocore ("standard" retry mode)

# Uploads: boto3 switches to multipart above the threshold; our own retry wraps the whole transfer.
MULTIPART_THRESHOLD = 64 * MB
MULTIPART_CHUNKSIZE = 16 * MB
UPLOAD_CONCURRENCY = 4
PUBLISH_ATTEMPTS = 3
PUBLISH_BACKOFF_S = 0.5  # waits 0.5 s, then 1 s, ... between attempts

DOWNLOAD_CHUNK = 1 * MB
URL_TIMEOUT_S = 30.0
MAX_REDIRECTS = 5
MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs cannot live longer than 7 days
# The API signs result links on every read: making a client costs ~0.2 s of CPU, signing ~0.3 ms.
SIGNING_CLIENT_TTL_S = 300.0  # reuse one signing client this long (refreshed credentials count)
MAX_NAME_CHARS = 200
INPUT_FALLBACK_NAME = "input"  # a downloaded input whose key or URL gives no usable name

# Codes S3 and OBS use for refused requests: all mean "check the credentials or the policy".
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "AllAccessDisabled",
        "AccountProblem",
        "403",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*$")
# errno values that mean "the disk (or the user's quota) is full": DiskFullError, HTTP 507.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_MESSAGE = "the server's disk is full; try again later or ask the operator to free space"
# Folders of the data folder that hold the service's own state: never an input, never an output.
PRIVATE_DATA_FOLDERS = ("outputs", "jobs", "cache", "models")
BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-_]{1,254}$")

T = TypeVar("T")


@dataclass(frozen=True)
class PublishedOutput:
    url: str  # s3://bucket/key, obs://bucket/key, or the local path of the copied file
    presigned_url: str | None  # temporary https download link, when presigning is on


@dataclass(frozen=True)
class ObjectRef:
    scheme: str  # "s3" or "obs", kept so messages echo what the user wrote
    bucket: str
    key: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


# --- references ----------------------------------------------------------------------------------


def is_remote(ref: str) -> bool:
    """True for the references storage downloads: s3://, obs:// and https:// (any case).

    Anything else, even with a scheme such as jar:file:// or http://, is not remote: it goes
    through the local path checks (and check_reference refuses a scheme it does not know).
    """
    return _scheme(ref) in (*S3_SCHEMES, HTTPS_SCHEME)


def is_url(ref: str) -> bool:
    """True when `ref` is written as a URL (a valid scheme, then ://): it is never resolved as a
    local path; fetch_input downloads it or refuses its scheme."""
    return _scheme(ref) is not None


def check_reference(ref: str, settings: Settings) -> None:
    """Validate an input reference at submit time without touching the network."""
    _check_reference(ref, settings)


def check_output_prefix(prefix: str, settings: Settings) -> str:
    """Validate an output_prefix (no network); return it as stored: the URL as given, or the
    resolved local folder under HEYGEM_INPUT_ROOTS (never inside the data folder's own state)."""
    scheme = _scheme(prefix)
    if scheme in S3_SCHEMES:
        obj = _parse_object_url(prefix, need_key=False)
        if any(part in (".", "..") for part in obj.key.split("/")):
            raise ForbiddenPathError(f"output_prefix {_display_url(prefix)} has '.' or '..' segments")
        return prefix
    if scheme is not None:
        raise ForbiddenPathError(
            f"unsupported output prefix {_display_url(prefix)}; use s3://, obs:// or a local folder"
        )
    if "://" in prefix:
        # A mistyped URL ("s3 ://b/", "://b/") would otherwise become a folder under outputs.
        raise InputError(
            f"output_prefix {_display_url(prefix)!r} must look like s3://bucket/prefix/ "
            "or obs://bucket/prefix/"
        )
    return str(_local_output_dir(prefix, settings))


def fetch_input(ref: str, dest_dir: Path, settings: Settings) -> Path:
    """Return a local file for `ref`: the checked path itself, or a download into dest_dir."""
    kind = _check_reference(ref, settings)
    if isinstance(kind, Path):
        if not is_file(kind, ref):
            raise InputError(f"input file not found: {shown_path(ref)}")
        return kind
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    limit = settings.max_upload_mb * MB
    if isinstance(kind, ObjectRef):
        target = free_name(dest_dir, _object_file_name(kind.key))
        _download_object(kind, target, limit, settings)
    else:
        target = free_name(dest_dir, _url_file_name(kind))
        _download_url(kind, target, limit, settings)
    return target


def _check_reference(ref: str, settings: Settings) -> Path | ObjectRef | str:
    """Parse and validate: a resolved local Path, an ObjectRef, or an allowed https URL."""
    if not isinstance(ref, str) or not ref.strip():
        raise InputError("empty input reference")
    scheme = _scheme(ref)
    if scheme in S3_SCHEMES:
        return _parse_object_url(ref, need_key=True)
    if scheme == HTTPS_SCHEME:
        _check_allowed_url(ref, settings.url_allowlist)
        return ref
    if scheme is not None:
        raise ForbiddenPathError(
            f"unsupported reference {_display_url(ref)}; use s3://, obs://, https:// or a local path"
        )
    path = resolve_under(ref, settings.allowed_input_roots, base=settings.inputs_dir)
    check_not_private(path, settings, ref)
    return path


def check_not_private(path: Path, settings: Settings, shown: str, *, output: bool = False) -> None:
    """Refuse a resolved path in the data folder's own state, whatever the roots say: the data
    folder itself and the files in it (the job database), outputs/, jobs/, cache/, models/, and
    for an output also inputs/. Input roots may lie in the data folder (compat/ does)."""
    data = settings.data_dir.expanduser().resolve()
    if not path.is_relative_to(data):
        return
    private = [data / name for name in PRIVATE_DATA_FOLDERS]
    if output:
        private.append(settings.inputs_dir.expanduser().resolve())
    if path == data or path.parent == data or any(path.is_relative_to(p) for p in private):
        what = "output_prefix" if output else "input"
        raise ForbiddenPathError(
            f"{what} {shown_path(shown)} is in the service's data folder, which jobs may not "
            + ("write" if output else "read")
        )


def shown_path(text: str, limit: int = 120) -> str:
    """A user's path for a message: at most `limit` characters (a 5000-character path would
    bury the message)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_file(path: Path, shown: str) -> bool:
    """Path.is_file, with OS errors about the path itself (too long, not a folder, loops) turned
    into a one-line InputError instead of a traceback."""
    try:
        return path.is_file()
    except OSError as exc:
        raise InputError(f"cannot use the path {shown_path(shown)}: {_reason(exc)}") from None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error() -> DiskFullError:
    """The one message for a full disk: it names no server path."""
    return DiskFullError(DISK_FULL_MESSAGE)


def _scheme(ref: str) -> str | None:
    head, sep, _ = ref.partition("://")
    if not sep or not URL_SCHEME.match(head):
        return None
    return head.lower()


def _parse_object_url(url: str, *, need_key: bool) -> ObjectRef:
    scheme, _, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InputError(f"no bucket in {url}; expected {scheme}://bucket/key")
    if not BUCKET_NAME.match(bucket):
        raise InputError(f"invalid bucket name {bucket!r} in {url}")
    if need_key:
        if not key:
            raise InputError(f"no object key in {url}; expected {scheme}://bucket/key")
        if key.endswith("/") or key.rsplit("/", 1)[-1] in (".", ".."):
            raise InputError(f"{url} names a folder, not an object")
    return ObjectRef(scheme.lower(), bucket, key)


def _check_allowed_url(url: str, allowlist: tuple[str, ...]) -> None:
    parts = urllib.parse.urlsplit(url)
    try:
        _ = parts.port  # reading it validates it
    except ValueError:
        raise InputError(f"invalid port in URL {_display_url(url)}") from None
    if parts.username is not None or parts.password is not None:
        raise ForbiddenPathError(f"URL with user info is refused: {_display_url(url)}")
    if parts.scheme.lower() != HTTPS_SCHEME or not parts.hostname:
        raise ForbiddenPathError(f"URL not on the allow-list: {_display_url(url)}")
    path = _decoded_path(parts.path)
    if path is None:
        raise ForbiddenPathError(
            f"URL path with '.' or '..' segments or encoded separators is refused: {_display_url(url)}"
        )
    if not any(_matches_entry(parts, path, entry) for entry in allowlist):
        raise ForbiddenPathError(f"URL not on the allow-list: {_display_url(url)}")


def _decoded_path(raw: str) -> str | None:
    """The URL path as a server would see it (percent-decoded), or None when it has dot
    segments or backslashes, raw or encoded: /media/../private and /media/%2e%2e/private must
    not match an allow-list entry for /media/."""
    decoded = urllib.parse.unquote(raw or "/")
    if "\\" in decoded or "\x00" in decoded:
        return None
    if any(segment in (".", "..") for segment in decoded.split("/")):
        return None
    return decoded


def _matches_entry(parts: urllib.parse.SplitResult, path: str, entry: str) -> bool:
    """Prefix match on whole host and path segments: https://a.com never admits https://a.com.x.
    `path` is the decoded path (_decoded_path); the entry's path is decoded the same way."""
    allowed = urllib.parse.urlsplit(entry.strip())
    if allowed.scheme.lower() != HTTPS_SCHEME or not allowed.hostname:
        return False
    if (allowed.hostname, allowed.port) != (parts.hostname, parts.port):
        return False
    prefix = urllib.parse.unquote(allowed.path)
    if not prefix or prefix.endswith("/"):
        return path.startswith(prefix or "/")
    return path == prefix or path.startswith(prefix + "/")


def _display_url(url: str) -> str:
    """A URL safe to show: no user info, query or fragment (presigned queries are credentials)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    shown = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path
    return shown + ("?..." if parts.query else "")


def _object_file_name(key: str) -> str:
    return safe_file_name(key, fallback=INPUT_FALLBACK_NAME)


def _url_file_name(url: str) -> str:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return safe_file_name(path.rstrip("/"), fallback=INPUT_FALLBACK_NAME)


# --- S3 client and error mapping -----------------------------------------------------------------


def _client(settings: Settings) -> Any:
    """A fresh client per operation: credentials are read from the environment each time."""
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"total_max_attempts": BOTOCORE_MAX_ATTEMPTS, "mode": "standard"},
        signature_version="s3v4",
        s3={"addressing_style": "path"},
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.s3_endpoint or None,
        region_name=settings.s3_region or None,
        config=config,
    )


def _endpoint_name(settings: Settings) -> str:
    if not settings.s3_endpoint:
        return "the default AWS endpoint"
    return _display_url(settings.s3_endpoint)


def _storage_error(exc: BaseException, obj: ObjectRef, settings: Settings, action: str) -> StorageError:
    """Turn a boto3/botocore failure into a one-line message; str(exc) is never shown."""
    import botocore.exceptions

    cause = _botocore_cause(exc)
    if isinstance(cause, botocore.exceptions.ClientError):
        error = cause.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return StorageError(f"bucket does not exist: {obj.bucket}")
        if code in NOT_FOUND_CODES or (status == 404 and action == "read"):
            return StorageError(f"object not found: {obj.url}")
        if code in DENIED_CODES or status == 403:
            return StorageError(f"access denied to {obj.url} (check the credentials)")
        return StorageError(f"object storage refused to {action} {obj.url}: {code or status}")
    if isinstance(
        cause, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)
    ):
        return StorageError(
            f"no object storage credentials for {obj.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if isinstance(cause, botocore.exceptions.ConnectionError):
        return StorageError(f"cannot reach object storage at {_endpoint_name(settings)}")
    if isinstance(cause, botocore.exceptions.HTTPClientError):
        return StorageError(f"connection to object storage lost during {action} of {obj.url}")
    name = type(cause).__name__
    return StorageError(f"object storage error during {action} of {obj.url}: {name}")


def _botocore_cause(exc: BaseException) -> BaseException:
    """boto3 wraps ClientError in S3UploadFailedError (as __context__); find the original."""
    import boto3.exceptions

    seen = exc
    while isinstance(seen, boto3.exceptions.Boto3Error):
        inner = seen.__cause__ or seen.__context__
        if inner is None:
            break
        seen = inner
    return seen


def _is_transient(exc: BaseException) -> bool:
    """Worth another attempt: network trouble, throttling, server-side errors; not 4xx verdicts."""
    import boto3.exceptions
    import botocore.exceptions

    cause = _botocore_cause(exc)
    if isinstance(cause, botocore.exceptions.ClientError):
        status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(cause.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout")
    if isinstance(
        cause, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)
    ):
        return False
    retryable = (botocore.exceptions.BotoCoreError, boto3.exceptions.Boto3Error, OSError)
    return isinstance(cause, retryable)


# --- downloads -----------------------------------------------------------------------------------


def _download_object(obj: ObjectRef, target: Path, limit: int, settings: Settings) -> None:
    import botocore.exceptions

    client = _client(settings)
    try:
        response = client.get_object(Bucket=obj.bucket, Key=obj.key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _storage_error(exc, obj, settings, "read") from None
    body = response["Body"]
    try:
        size = response.get("ContentLength")
        if size is not None and size > limit:
            raise _too_large(obj.url, settings)
        written = _stream_to_file(body, target, limit, obj.url, settings)
    except botocore.exceptions.BotoCoreError as exc:
        raise _storage_error(exc, obj, settings, "read") from None
    except OSError as exc:  # botocore wraps network errors, so this is the local disk
        if is_disk_full(exc):
            raise disk_full_error() from None
        raise StorageError(f"cannot write {target.name} while fetching {obj.url}: {_reason(exc)}") from None
    finally:
        body.close()
    log.info("fetched %s (%d bytes) to %s", obj.url, written, target)


def _download_url(url: str, target: Path, limit: int, settings: Settings) -> None:
    shown = _display_url(url)
    opener = urllib.request.build_opener(_AllowListRedirects(settings.url_allowlist))
    request = urllib.request.Request(url, headers={"User-Agent": "heygem"})
    try:
        with opener.open(request, timeout=URL_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise _too_large(shown, settings)
            written = _stream_to_file(response, target, limit, shown, settings)
    except urllib.error.HTTPError as exc:
        raise _http_error(exc.code, shown) from None
    except urllib.error.URLError as exc:
        raise StorageError(f"cannot reach {shown}: {_reason(exc.reason)}") from None
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error() from None
        raise StorageError(f"download of {shown} failed: {_reason(exc)}") from None
    except ValueError as exc:
        raise StorageError(f"download of {shown} failed: {_reason(exc)}") from None
    log.info("fetched %s (%d bytes) to %s", shown, written, target)


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another allowed URL; anything else stops the download."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, allowlist: tuple[str, ...]) -> None:
        super().__init__()
        self.allowlist = allowlist

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        try:
            _check_allowed_url(newurl, self.allowlist)
        except ForbiddenPathError:
            raise ForbiddenPathError(
                f"{_display_url(req.full_url)} redirects to a URL not on the allow-list: "
                f"{_display_url(newurl)}"
            ) from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_error(code: int, shown: str) -> StorageError:
    if code == 404:
        return StorageError(f"not found: {shown} (HTTP 404)")
    if code in (401, 403):
        return StorageError(f"access denied to {shown} (HTTP {code})")
    return StorageError(f"cannot download {shown}: HTTP {code}")


def _reason(reason: object) -> str:
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({reason.verify_message})"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _too_large(shown: str, settings: Settings) -> LimitExceededError:
    return LimitExceededError(f"{shown} is larger than the {settings.max_upload_mb} MB limit")


def _stream_to_file(source: BinaryIO, target: Path, limit: int, shown: str, settings: Settings) -> int:
    """Copy in chunks to a temporary name beside target; rename only when complete and in limit."""
    fd, partial_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    partial = Path(partial_name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(DOWNLOAD_CHUNK):
                written += len(chunk)
                if written > limit:
                    raise _too_large(shown, settings)
                out.write(chunk)
        os.replace(partial, target)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error() from None
        raise
    finally:
        partial.unlink(missing_ok=True)
    return written


# --- publishing ----------------------------------------------------------------------------------


def publish_output(
    local_file: Path, output_prefix: str, settings: Settings, name: str | None = None
) -> PublishedOutput:
    """Upload or copy a finished result to output_prefix; the local file is always kept."""
    local_file = Path(local_file)
    if not local_file.is_file():
        raise StorageError(f"result file missing, nothing to publish: {local_file.name}")
    name = _check_object_name(name or local_file.name)
    check_output_prefix(output_prefix, settings)
    if _scheme(output_prefix) in S3_SCHEMES:
        return _publish_object(local_file, output_prefix, name, settings)
    return _publish_local(local_file, output_prefix, name, settings)


def presign(url: str, settings: Settings) -> str | None:
    """A temporary GET link for an s3/obs result; None when off, not an object, or impossible.

    Local work only (no request is sent), cheap enough to call on every read of a job.
    """
    if settings.presign_seconds <= 0 or _scheme(url) not in S3_SCHEMES:
        return None
    try:
        obj = _parse_object_url(url, need_key=True)
    except HeygemError:
        return None
    import botocore.exceptions

    try:
        link: str = _signing_clients.get(settings).generate_presigned_url(
            "get_object",
            Params={"Bucket": obj.bucket, "Key": obj.key},
            ExpiresIn=min(settings.presign_seconds, MAX_PRESIGN_SECONDS),
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        log.warning("cannot presign %s: %s", obj.url, type(exc).__name__)
        return None
    return link


class _SigningClients:
    """One shared client for presigning, made again when the endpoint, the region or any AWS_*
    variable changes, or after SIGNING_CLIENT_TTL_S (boto3 clients are thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: tuple[str, float, Any] | None = None

    def get(self, settings: Settings) -> Any:
        key = _signing_key(settings)
        now = time.monotonic()
        with self._lock:
            cached = self._cached
            if cached is not None and cached[0] == key and now - cached[1] < SIGNING_CLIENT_TTL_S:
                return cached[2]
        client = _client(settings)
        with self._lock:
            self._cached = (key, now, client)
        return client


def _signing_key(settings: Settings) -> str:
    # Hashed so that no second copy of the secrets is kept in memory.
    aws = sorted((name, value) for name, value in os.environ.items() if name.startswith("AWS_"))
    text = repr((settings.s3_endpoint, settings.s3_region, aws))
    return hashlib.sha256(text.encode()).hexdigest()


_signing_clients = _SigningClients()


def _check_object_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\\" in name or len(name) > MAX_NAME_CHARS:
        raise ForbiddenPathError(f"invalid output name {name!r}: use a plain file name")
    return name


def _object_under_prefix(prefix: str, name: str) -> ObjectRef:
    """s3://b/out and s3://b/out/ both mean the folder out/; s3://b and s3://b/ the root."""
    base = _parse_object_url(prefix, need_key=False)
    folder = base.key if not base.key or base.key.endswith("/") else base.key + "/"
    return ObjectRef(base.scheme, base.bucket, folder + name)


def _publish_object(local_file: Path, prefix: str, name: str, settings: Settings) -> PublishedOutput:
    from boto3.s3.transfer import TransferConfig

    obj = _object_under_prefix(prefix, name)
    transfer = TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_CHUNKSIZE,
        max_concurrency=UPLOAD_CONCURRENCY,
    )
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"

    def upload() -> None:
        _client(settings).upload_file(
            str(local_file),
            obj.bucket,
            obj.key,
            ExtraArgs={"ContentType": content_type},
            Config=transfer,
        )

    _with_retries(
        upload,
        f"upload of {local_file.name} to {obj.url}",
        _is_transient,
        lambda exc: _storage_error(exc, obj, settings, "write"),
    )
    log.info("published %s (%d bytes) to %s", local_file.name, local_file.stat().st_size, obj.url)
    return PublishedOutput(url=obj.url, presigned_url=presign(obj.url, settings))


def _local_output_dir(prefix: str, settings: Settings) -> Path:
    """A local output_prefix: under HEYGEM_INPUT_ROOTS (mounted storage, the compat folder),
    never in the data folder's own state (the database, inputs/, outputs/...)."""
    if not settings.input_roots:
        raise ForbiddenPathError(
            f"output_prefix {shown_path(prefix)}: no local output folders are configured "
            "(HEYGEM_INPUT_ROOTS); use s3:// or obs://"
        )
    if not Path(prefix).expanduser().is_absolute():
        raise ForbiddenPathError(
            f"output_prefix {shown_path(prefix)} must be an absolute folder under "
            "HEYGEM_INPUT_ROOTS, or s3://bucket/prefix/ or obs://bucket/prefix/"
        )
    try:
        folder = resolve_under(prefix, settings.input_roots)
    except ForbiddenPathError:
        raise ForbiddenPathError(
            f"output_prefix {shown_path(prefix)} is outside the allowed output folders (HEYGEM_INPUT_ROOTS)"
        ) from None
    check_not_private(folder, settings, prefix, output=True)
    return folder


def _publish_local(local_file: Path, prefix: str, name: str, settings: Settings) -> PublishedOutput:
    """Copy the finished file into the folder under `name`, or the first free `name-2.mp4`...:
    an existing file is never replaced (it may be another job's result or someone's upload).
    Mounted object storage cannot rename: the final name is created once, exclusively."""
    folder = _local_output_dir(prefix, settings)
    expected = local_file.stat().st_size

    def copy() -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        return _copy_exclusive(local_file, folder, name, expected)

    def failure(exc: BaseException) -> HeygemError:
        if is_disk_full(exc):
            return disk_full_error()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return StorageError(f"cannot copy {local_file.name} to the output folder: {reason}")

    target = _with_retries(
        copy,
        f"copy of {local_file.name} to {folder}",
        lambda exc: isinstance(exc, OSError) and not is_disk_full(exc),
        failure,
    )
    log.info("published %s (%d bytes) to %s", local_file.name, expected, target)
    return PublishedOutput(url=str(target), presigned_url=None)


def _copy_exclusive(source: Path, folder: Path, name: str, expected: int) -> Path:
    """Create a new file (O_EXCL) under the first free name and copy into it; two jobs racing
    for one name get different files. A failed copy removes its own file (best effort: a mount
    may refuse), never anyone else's."""
    while True:
        target = free_name(folder, name)
        try:
            out = open(target, "xb")  # noqa: SIM115 - closed by the with below
        except FileExistsError:
            continue  # taken between the check and the create
        try:
            with out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, DOWNLOAD_CHUNK)
            copied = target.stat().st_size
            if copied != expected:
                raise OSError(errno.EIO, f"copied {copied} of {expected} bytes")
        except BaseException:
            _unlink_quietly(target)
            raise
        return target


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


# --- a fleet's own objects -------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectStream:
    """An object being read: its chunks (close() when done, even half-read) and its length."""

    chunks: Iterator[bytes]
    length: int | None
    close: Callable[[], None]


def open_object(url: str, settings: Settings) -> ObjectStream:
    """Start reading an s3:// or obs:// object (a result another instance published), so the
    web layer can stream it; StorageError (one line) when it is missing or unreadable."""
    import botocore.exceptions

    obj = _parse_object_url(url, need_key=True)
    try:
        response = _client(settings).get_object(Bucket=obj.bucket, Key=obj.key)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _storage_error(exc, obj, settings, "read") from None
    body = response["Body"]
    return ObjectStream(body.iter_chunks(DOWNLOAD_CHUNK), response.get("ContentLength"), body.close)


def is_under(url: str, prefix: str) -> bool:
    """True when the object URL lies under the s3:// or obs:// prefix (the two schemes are one)."""
    if _scheme(url) not in S3_SCHEMES or _scheme(prefix) not in S3_SCHEMES:
        return False
    try:
        obj, base = _parse_object_url(url, need_key=False), _parse_object_url(prefix, need_key=False)
    except HeygemError:
        return False
    folder = base.key if not base.key or base.key.endswith("/") else base.key + "/"
    return obj.bucket == base.bucket and obj.key.startswith(folder)


def delete_objects(prefix: str, settings: Settings) -> int:
    """Delete every object under an s3:// or obs:// prefix (a job's staged uploads or result);
    how many were deleted. StorageError when the store refuses."""
    import botocore.exceptions

    base = _parse_object_url(prefix, need_key=False)
    client = _client(settings)
    deleted = 0
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=base.bucket, Prefix=base.key):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=base.bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise _storage_error(exc, base, settings, "delete") from None
    return deleted


def _with_retries(
    action: Callable[[], T],
    what: str,
    transient: Callable[[BaseException], bool],
    to_error: Callable[[BaseException], HeygemError],
) -> T:
    """Run action up to PUBLISH_ATTEMPTS times with exponential backoff on transient failures."""
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            return action()
        except HeygemError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised as StorageError
            error = to_error(exc)
            if attempt == PUBLISH_ATTEMPTS or not transient(exc):
                log.error("%s failed after %d attempt(s): %s", what, attempt, error)
                raise error from None
            delay = PUBLISH_BACKOFF_S * 2 ** (attempt - 1)
            log.warning(
                "%s failed (attempt %d of %d): %s; retrying in %.1f s",
                what,
                attempt,
                PUBLISH_ATTEMPTS,
                error,
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


__all__ = [
    "PublishedOutput",
    "is_remote",
    "is_url",
    "check_reference",
    "check_output_prefix",
    "check_not_private",
    "disk_full_error",
    "is_disk_full",
    "is_file",
    "shown_path",
    "fetch_input",
    "publish_output",
    "presign",
    "ObjectStream",
    "open_object",
    "is_under",
    "delete_objects",
]
