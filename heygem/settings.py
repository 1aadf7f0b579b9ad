"""The one Settings object: defaults < HEYGEM_* environment < command-line flags.

Every field has a type, a default and a comment. `Settings.load(environ, argv)` builds it, so tests
can call it with their own environment. Nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import re
import socket
import types
import typing
import urllib.parse
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("heygem.settings")

ENV_PREFIX = "HEYGEM_"
PROJECT_DIR = Path(__file__).resolve().parent.parent
MODELARTS_MODEL_DIR = Path("/home/mind/model")
DETECTOR_FILE = "s3fd.pth"
SECRET_FIELDS = frozenset({"api_token", "auth", "tts_api_key", "compat_token"})
MASK = "***"
URL_MARK = "://"  # any setting value holding this is treated as a URL and masked when shown

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BACKENDS = ("auto", "torch", "openvino")
BACKEND_CACHE_FOLDER = "backend-cache"
ENGINES = ("auto", "wav2lip", "preview")
VIDEO_ENCODERS = ("auto", "libx264", "h264_nvenc")
X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
)  # fmt: skip
# auto = a supervised engine process for the built-in engine, in-process for an engine factory a
# caller passes (test fakes that share state with the test through threads, embedding).
WORKER_ISOLATIONS = ("auto", "process", "thread")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TTS_PROVIDERS = ("espeak", "openai", "fish")
HTTP_SCHEMES = ("http://", "https://")
COMPAT_FOLDER = "compat"  # default HeyGem shared folder, under the data folder
# A tenant's name: what API keys and UI users map to; safe in logs, paths and SQL parameters.
TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
OUTPUT_PREFIX_SCHEMES = ("s3://", "obs://")
FLEET_FILES_MESSAGE = (
    "fleet mode (a postgresql database_url) needs files every instance can read: set storage_url "
    "(HEYGEM_STORAGE_URL=s3://bucket/prefix/ or obs://..., --storage-url) or shared_data_dir "
    "(HEYGEM_SHARED_DATA_DIR=true with HEYGEM_DATA_DIR on a shared mount, --shared-data-dir)"
)
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,19}$")
SQLITE_URL = "sqlite://"  # sqlite:///srv/jobs.db names /srv/jobs.db
POSTGRES_URLS = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class Settings:
    # --- folders -------------------------------------------------------------------------------
    data_dir: Path = PROJECT_DIR  # holds inputs/, outputs/, cache/ and the job database: one volume
    models_dir: Path | None = None  # weights folder; None = <data_dir>/models, else /home/mind/model
    checkpoint: Path | None = None  # generator weights; None = first of wav2lip_gan.pth, wav2lip.pth
    detector_weights: Path | None = None  # S3FD weights; None = <models_dir>/s3fd.pth
    input_roots: tuple[Path, ...] = ()  # extra local folders jobs may read (e.g. /obs-mount)

    # --- engine --------------------------------------------------------------------------------
    engine: str = "auto"  # auto = wav2lip when its weights exist, else preview
    device: str = "auto"  # auto = cuda when torch sees a GPU, else cpu; or cpu, cuda, cuda:N
    precision: str = "auto"  # auto = fp16 on CUDA; CPU: bf16 on openvino if within 1 grey level, else fp32
    backend: str = "auto"  # generator and S3FD runtime; auto = openvino on CPU if installed and checked
    batch_size: int = 0  # faces per generator pass; 0 = auto: 16 on OpenVINO, 32 on CPU, 64 on CUDA
    detect_batch_size: int = 8  # frames per face-detector pass
    detect_max_side: int = 640  # frames are downscaled so the longer side is at most this for detection
    detect_every: int = 5  # face detector on every Nth frame (cuts, lost faces: every frame); 1 = all
    video_encoder: str = "auto"  # auto = h264_nvenc on CUDA when ffmpeg can open it, else libx264
    x264_preset: str = "veryfast"  # libx264 speed preset, ultrafast .. veryslow (medium: 2x the CPU)
    warmup: bool = True  # run one inference on a built-in sample at start-up before reporting ready
    preview_watermark: bool = False  # stamp "preview" on videos made by the preview engine

    # --- weights download ----------------------------------------------------------------------
    hf_repo: str = "camenduru/Wav2Lip"  # Hugging Face repo (HF_ENDPOINT picks a mirror)
    hf_checkpoint_file: str = "checkpoints/wav2lip_gan.pth"  # generator file in that repo
    hf_detector_file: str = "face_detection/detection/sfd/s3fd.pth"  # detector file in that repo
    checkpoint_url: str = ""  # plain URL for the generator; wins over the Hugging Face repo
    detector_url: str = "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth"  # S3FD
    checkpoint_sha256: str = ""  # expected SHA-256 of the generator file; empty = not checked
    detector_sha256: str = ""  # expected SHA-256 of the detector file; empty = not checked

    # --- server --------------------------------------------------------------------------------
    host: str = "127.0.0.1"  # listen address; the container sets 0.0.0.0
    port: int = 7860  # listen port; the container sets 8080 (ModelArts)
    root_path: str = ""  # URL prefix when served behind a gateway
    api_token: str = ""  # one bearer key (tenant api_token_tenant, admin); any credential locks every door
    api_token_tenant: str = "default"  # the tenant that api_token stands for
    api_keys_file: Path | None = None  # "tenant role sha256hex" per line; see `heygem keys add`
    auth: str = ""  # "user:password": a web UI login for tenant "default", admin
    users_file: Path | None = None  # "user tenant role pbkdf2_sha256$..." per line; `heygem keys add-user`
    login_attempts_per_minute: int = 5  # failed logins per client IP or user name before 429; 0 = no limit
    max_upload_mb: int = 500  # largest accepted upload or download, per file
    max_duration_s: float = 600.0  # longest accepted audio or video, also checked while decoding
    max_pixels: int = 3840 * 2160  # largest accepted picture (width x height), checked before decoding
    compat_port: int = 0  # also serve the HeyGem-compatible API on this port (8383); 0 = off
    compat_host: str = "127.0.0.1"  # listen address of the compat port; the container sets 0.0.0.0
    compat_token: str = ""  # bearer key for HeyGem clients (tenant compat_tenant, user role)
    compat_tenant: str = "default"  # the tenant that compat_token's tasks belong to
    compat_root: Path | None = None  # shared folder of HeyGem clients; None = <data_dir>/compat

    # --- jobs ----------------------------------------------------------------------------------
    queue_size: int = 100  # queued jobs accepted before submissions are refused (HTTP 429)
    workers: int = 1  # worker threads; one per device is right for a GPU
    worker_isolation: str = "auto"  # auto/process: engine in a restartable child; thread: in-server
    worker_memory_mb: int = 0  # address-space limit per engine process; 0 = none; torch needs several GB
    max_attempts: int = 3  # a job interrupted this many times fails instead of running again
    drain_seconds: float = 60.0  # on SIGTERM, how long the running job may take to finish
    retention_days: float = 7.0  # delete jobs and their files older than this; 0 keeps everything
    retention_interval_s: float = 3600.0  # how often the retention sweep runs
    tenant_queue_size: int = 0  # queued jobs one tenant may have; 0 = queue_size (HTTP 429 above it)
    # Where each tenant may publish results. Once set, a tenant not listed may name no
    # output_prefix (admins keep the default rules).
    tenant_output_prefixes: str = ""  # "teamA=s3://a/,obs://x/out/;teamB=/mnt/b/"; empty = no rule
    max_avatars: int = 100  # avatars one tenant may keep (each holds a video); 0 = no limit
    # Where jobs live: empty = <data_dir>/heygem.db; sqlite:///path; or a PostgreSQL server shared by
    # every instance of a fleet (postgresql://user:password@host:port/db; the password is masked).
    database_url: str = ""  # empty or sqlite:///path = embedded SQLite; postgresql://... = shared
    lease_s: float = 60.0  # PostgreSQL: a running job is re-queued this long after its last sign of life
    instance_id: str = ""  # names this instance in the job store's claims; empty = host-pid-random
    # Fleet mode (a postgresql database_url) needs every instance to read every job's files: an
    # object store (storage_url) or a data folder mounted on every instance (shared_data_dir).
    storage_url: str = ""  # s3://bucket/prefix/ or obs://...: uploads, results and face tracks for the fleet
    shared_data_dir: bool = False  # data_dir is one shared mount (NFS, SFS Turbo, CephFS) on every instance

    # --- object storage ------------------------------------------------------------------------
    s3_endpoint: str = ""  # S3-compatible endpoint URL (OBS: https://obs.<region>.myhuaweicloud.com)
    s3_region: str = ""  # region name passed to the S3 client
    url_allowlist: tuple[str, ...] = ()  # https:// URL prefixes jobs may fetch; empty = none
    presign_seconds: int = 3600  # lifetime of presigned result URLs; 0 = do not presign

    # --- logging -------------------------------------------------------------------------------
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    log_file: Path | None = None  # also write logs to this file (stdout always gets them)

    # --- web hardening -------------------------------------------------------------------------
    allowed_hosts: tuple[str, ...] = ()  # Host names the server answers (DNS rebinding); empty = any: set it
    allowed_origins: tuple[
        str, ...
    ] = ()  # extra origins (scheme://host[:port]) allowed to POST besides our own
    frame_ancestors: str = "'self'"  # CSP frame-ancestors: who may embed the UI in a frame
    keep_alive_s: float = 75.0  # idle keep-alive of HTTP connections; longer than any Retry-After
    ui_upload_mb_per_hour: int = 2048  # web UI uploads per client (login, else IP) per hour, in MB
    ui_uploads_per_minute: int = 30  # web UI upload requests per client per minute
    ui_upload_files_per_request: int = 101  # files in one web UI upload request (a batch: 1 audio + 100)

    # --- speech --------------------------------------------------------------------------------
    tts_provider: str = "espeak"  # espeak (built in, offline), openai, or fish (HeyGem cloning)
    tts_url: str = ""  # base URL of the openai or fish speech server, e.g. http://127.0.0.1:18180
    tts_model: str = "tts-1"  # model name sent to an OpenAI-compatible server
    tts_api_key: str = ""  # sent as "Authorization: Bearer <key>" to the speech server when set
    tts_voice: str = ""  # voice when a job names none; empty = the provider's default
    tts_reference_audio: str = ""  # fish: default voice sample: a path or URL the server can read
    tts_reference_text: str = ""  # fish: transcript of tts_reference_audio
    tts_timeout_s: float = 60.0  # longest wait for one piece of speech (request or espeak-ng run)
    tts_max_chars: int = 3000  # longest accepted text, in characters
    tts_piece_chars: int = 200  # longest piece sent to the provider; longer sentences are split
    tts_pause_s: float = 0.25  # silence inserted between synthesised pieces

    # --- derived paths -------------------------------------------------------------------------
    @property
    def inputs_dir(self) -> Path:
        return self.data_dir / "inputs"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    def backend_cache_dirs(self, checkpoint: Path) -> tuple[Path, ...]:
        """Where converted generator models go: next to the weights, else (read-only there) cache/."""
        return (checkpoint.parent / BACKEND_CACHE_FOLDER, self.cache_dir / BACKEND_CACHE_FOLDER)

    @property
    def track_cache_dir(self) -> Path:
        """Face boxes cached per video; pruned by retention like any other old data."""
        return self.cache_dir / "tracks"

    @property
    def avatars_dir(self) -> Path:
        """One folder per avatar (media, thumbnail, voice sample); never pruned by retention."""
        return self.data_dir / "avatars"

    @property
    def database_path(self) -> Path:
        """The SQLite file: the path of a sqlite:/// database_url, else <data_dir>/heygem.db."""
        if self.database_url.lower().startswith(SQLITE_URL):
            return Path(self.database_url[len(SQLITE_URL) :]).expanduser()
        return self.data_dir / "heygem.db"

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.lower().startswith(POSTGRES_URLS)

    @property
    def uses_object_store(self) -> bool:
        """Fleet files live in the object store named by storage_url."""
        return bool(self.storage_url)

    @property
    def resolved_instance_id(self) -> str:
        """instance_id, or one made for this process (host, pid and a random part, so a restarted
        process with a recycled pid is still told apart)."""
        if self.instance_id:
            return self.instance_id
        return _process_instance_id()

    @property
    def resolved_models_dir(self) -> Path:
        if self.models_dir is not None:
            return self.models_dir
        local = self.data_dir / "models"
        if not local.is_dir() and MODELARTS_MODEL_DIR.is_dir():
            return MODELARTS_MODEL_DIR
        return local

    @property
    def resolved_detector_weights(self) -> Path:
        """Where S3FD weights are looked for: detector_weights, else <models dir>/s3fd.pth."""
        if self.detector_weights is not None:
            return self.detector_weights
        return self.resolved_models_dir / DETECTOR_FILE

    @property
    def resolved_compat_root(self) -> Path:
        """The HeyGem clients' shared folder: never the data folder itself, which holds the job
        database and every tenant's files."""
        return self.compat_root if self.compat_root is not None else self.data_dir / COMPAT_FOLDER

    @property
    def compat_enabled(self) -> bool:
        """The HeyGem-compatible API is configured (its port or its shared folder is set); only
        then does the shared folder become an input root."""
        return self.compat_port > 0 or self.compat_root is not None

    @property
    def resolved_tenant_queue_size(self) -> int:
        return self.tenant_queue_size or self.queue_size

    def tenant_prefix_map(self) -> dict[str, tuple[str, ...]]:
        """tenant_output_prefixes parsed: tenant -> allowed output prefixes (ValueError if bad)."""
        return parse_tenant_prefixes(self.tenant_output_prefixes)

    @property
    def allowed_input_roots(self) -> tuple[Path, ...]:
        return (self.inputs_dir, *self.input_roots)

    # --- building ------------------------------------------------------------------------------
    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None) -> Settings:
        """Build settings from the environment, then flags; raise ValueError naming a bad value."""
        environ = os.environ if environ is None else environ
        values: dict[str, typing.Any] = {}  # each value has its own field's type
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw, source=ENV_PREFIX + f.name.upper())
        if argv:
            values.update(_parse_flags(cls, argv))
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: typing.Any) -> Settings:
        updated = dataclasses.replace(self, **changes)
        updated.validate()
        return updated

    def validate(self) -> None:
        _check_choice("device", self.device.split(":")[0], DEVICES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("engine", self.engine, ENGINES)
        _check_choice("log_level", self.log_level.upper(), LOG_LEVELS)
        _check_choice("worker_isolation", self.worker_isolation, WORKER_ISOLATIONS)
        _check_choice("video_encoder", self.video_encoder, VIDEO_ENCODERS)
        _check_choice("x264_preset", self.x264_preset, X264_PRESETS)
        if self.max_pixels < 1 or self.worker_memory_mb < 0:
            raise ValueError("max_pixels must be at least 1 and worker_memory_mb not negative")
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be 0 (auto) or more, got {self.batch_size}")
        for name in ("detect_batch_size", "detect_max_side", "detect_every", "queue_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535 or not 0 <= self.compat_port <= 65535:
            raise ValueError("port and compat_port must be between 0 and 65535")
        if self.auth and ":" not in self.auth:
            raise ValueError("auth must look like user:password")
        _check_web(self)
        for name in ("tenant_queue_size", "max_avatars"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        self.tenant_prefix_map()
        if self.login_attempts_per_minute < 0:
            raise ValueError("login_attempts_per_minute must not be negative")
        _check_speech(self)
        _check_database(self)

    def describe(self) -> dict[str, str]:
        """Every setting as text, secrets masked: safe to log or to show in the UI."""
        shown = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = MASK
            shown[f.name] = _format(_mask_value(value))
        return shown

    def log_summary(self) -> None:
        log.info("settings: %s", " ".join(f"{k}={v}" for k, v in self.describe().items()))


def setting_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(Settings))


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _parse_flags(cls: type[Settings], argv: Sequence[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="heygem", add_help=False, exit_on_error=False)
    for f in dataclasses.fields(cls):
        parser.add_argument(flag_name(f.name), dest=f.name, default=None)
    parsed, unknown = parser.parse_known_args(list(argv))
    if unknown:
        raise ValueError(f"unknown option(s): {' '.join(unknown)}")
    return {
        f.name: _convert(f, getattr(parsed, f.name), source=flag_name(f.name))
        for f in dataclasses.fields(cls)
        if getattr(parsed, f.name) is not None
    }


def _convert(f: dataclasses.Field, raw: str, source: str) -> object:
    kind = _base_type(f)
    try:
        if kind is bool:
            return _parse_bool(raw)
        if kind is tuple:
            return tuple(_tuple_item(f, part.strip()) for part in raw.split(",") if part.strip())
        if kind is Path:
            return Path(raw).expanduser()
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{source}: cannot read {raw!r} as {kind.__name__}: {exc}") from None


def _base_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(Settings)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = args[0]
        origin = typing.get_origin(hint)
    return origin or hint


def _tuple_item(f: dataclasses.Field, text: str) -> object:
    item_type = typing.get_args(typing.get_type_hints(Settings)[f.name])[0]
    return Path(text) if item_type is Path else text


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true/false")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_speech(settings: Settings) -> None:
    _check_choice("tts_provider", settings.tts_provider, TTS_PROVIDERS)
    if settings.tts_url and not settings.tts_url.lower().startswith(HTTP_SCHEMES):
        scheme = settings.tts_url.split("://", 1)[0] if "://" in settings.tts_url else "no scheme"
        # Only the scheme is echoed: a URL may carry user:password.
        raise ValueError(f"tts_url must start with http:// or https://; got {scheme}")
    if settings.tts_provider != "espeak" and not settings.tts_url:
        raise ValueError(f"tts_provider {settings.tts_provider} needs tts_url (HEYGEM_TTS_URL)")
    for name in ("tts_max_chars", "tts_piece_chars"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}")
    if bool(settings.tts_reference_audio) != bool(settings.tts_reference_text):
        raise ValueError("tts_reference_audio and tts_reference_text go together: set both or neither")
    if settings.tts_timeout_s <= 0 or settings.tts_pause_s < 0:
        raise ValueError("tts_timeout_s must be positive and tts_pause_s not negative")


def _check_database(settings: Settings) -> None:
    """database_url: empty, sqlite:///path or postgresql://...; errors never echo the URL itself
    (it may carry a password), only its scheme or the part at fault."""
    url = settings.database_url
    name = "database_url (HEYGEM_DATABASE_URL, --database-url)"
    if settings.lease_s <= 0:
        raise ValueError(f"lease_s must be positive, got {settings.lease_s}")
    if settings.instance_id and not TENANT_NAME.match(settings.instance_id):
        raise ValueError("instance_id must be 1-64 letters, digits, '.', '_' or '-'")
    _check_storage_url(settings.storage_url)
    if not url:
        return
    lowered = url.lower()
    if lowered.startswith(SQLITE_URL):
        if not url[len(SQLITE_URL) :].startswith("/") or len(url) <= len(SQLITE_URL) + 1:
            raise ValueError(f"{name}: a SQLite URL must name a file, like sqlite:///srv/heygem.db")
        return
    if not lowered.startswith(POSTGRES_URLS):
        scheme = url.split(URL_MARK, 1)[0] if URL_MARK in url else "no scheme"
        if scheme != "no scheme" and not URL_SCHEME.match(scheme):
            scheme = "an unreadable scheme"  # text before :// that is no scheme may hold a secret
        raise ValueError(
            f"{name} must be sqlite:///path or postgresql://user:password@host:port/db; got {scheme}"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - reading it validates it (ValueError when not a number)
    except ValueError:
        raise ValueError(f"{name}: cannot read {mask_url(url)}: the port must be a number") from None
    if not parts.hostname or not parts.path.strip("/"):
        raise ValueError(f"{name}: {mask_url(url)} must name a host and a database")
    if not (settings.storage_url or settings.shared_data_dir):
        raise ValueError(FLEET_FILES_MESSAGE)


def _check_storage_url(url: str) -> None:
    """storage_url: empty, or s3:// / obs:// with a bucket; only the scheme is ever echoed."""
    if not url:
        return
    name = "storage_url (HEYGEM_STORAGE_URL, --storage-url)"
    if not url.lower().startswith(OUTPUT_PREFIX_SCHEMES):
        scheme = url.split(URL_MARK, 1)[0] if URL_MARK in url else "no scheme"
        if scheme != "no scheme" and not URL_SCHEME.match(scheme):
            scheme = "an unreadable scheme"
        raise ValueError(f"{name} must be s3://bucket/prefix/ or obs://bucket/prefix/; got {scheme}")
    bucket = url.split(URL_MARK, 1)[1].split("/", 1)[0]
    if not bucket or "@" in bucket or "?" in url or "#" in url:
        raise ValueError(f"{name} must name a bucket, like s3://bucket/prefix/ (no user, query or fragment)")


@functools.cache
def _process_instance_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _check_web(settings: Settings) -> None:
    if settings.keep_alive_s <= 0:
        raise ValueError(f"keep_alive_s must be positive, got {settings.keep_alive_s}")
    for name in ("ui_upload_mb_per_hour", "ui_uploads_per_minute", "ui_upload_files_per_request"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(settings, name)}")
    for origin in settings.allowed_origins:
        if not origin.lower().startswith(HTTP_SCHEMES):
            raise ValueError("allowed_origins entries must start with http:// or https://")
    if any(c in settings.frame_ancestors for c in ";,\r\n"):
        raise ValueError("frame_ancestors must be a space-separated source list, without ';'")


def mask_url(text: str) -> str:
    """`text` with a URL's user info and query replaced by ***, so credentials are never shown.

    https://user:pass@host/x?sig=abc -> https://***@host/x?***. Text that is not a URL is returned
    unchanged; a fragment is masked like a query (it may carry a token too).
    """
    scheme, mark, rest = text.partition(URL_MARK)
    if not mark:
        return text
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        authority = MASK + "@" + authority.rpartition("@")[2]
    for sep in ("?", "#"):
        if sep in tail:
            tail = tail.split(sep, 1)[0] + sep + MASK
            break
    return f"{scheme}{mark}{authority}{tail}"


def _mask_value(value: object) -> object:
    if isinstance(value, str) and URL_MARK in value:
        return mask_url(value)
    if isinstance(value, tuple):
        return tuple(_mask_value(item) for item in value)
    return value


def parse_tenant_prefixes(text: str) -> dict[str, tuple[str, ...]]:
    """ "teamA=s3://a/,obs://x/out/;teamB=/mnt/b/" -> {"teamA": (...), "teamB": (...)}.

    Each prefix is s3://bucket/..., obs://bucket/... or an absolute local folder; a tenant may
    appear once. Raises ValueError naming the bad entry.
    """
    mapping: dict[str, tuple[str, ...]] = {}
    for entry in (part.strip() for part in text.split(";")):
        if not entry:
            continue
        tenant, sep, prefixes = entry.partition("=")
        tenant = tenant.strip()
        if not sep or not TENANT_NAME.match(tenant):
            raise ValueError(
                f"tenant_output_prefixes: {entry[:60]!r} must look like tenant=s3://bucket/prefix/"
            )
        if tenant in mapping:
            raise ValueError(f"tenant_output_prefixes: tenant {tenant!r} is listed twice")
        allowed = tuple(p.strip() for p in prefixes.split(",") if p.strip())
        for prefix in allowed:
            if not (prefix.lower().startswith(OUTPUT_PREFIX_SCHEMES) or prefix.startswith("/")):
                raise ValueError(
                    f"tenant_output_prefixes: {tenant}: {prefix[:60]!r} is not s3://, obs:// "
                    "or an absolute folder"
                )
        if not allowed:
            raise ValueError(f"tenant_output_prefixes: tenant {tenant!r} has no prefix")
        mapping[tenant] = allowed
    return mapping


def _format(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


__all__ = ["Settings", "setting_fields", "env_name", "flag_name", "mask_url"]
