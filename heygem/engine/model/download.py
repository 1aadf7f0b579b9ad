"""Where the weights live, whether they are there, and fetching them on request.

Nothing here runs implicitly: only `download_weights` touches the network, and only the CLI's
`models download` (or an operator's script) calls it. A download goes to a temporary name in the
target folder, is checked (length, optional SHA-256) and then atomically renamed, so a failed or
interrupted download never leaves a file that looks like weights. No torch import here.
"""

from __future__ import annotations

import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from heygem.engine.hashing import sha256_of
from heygem.engine.model.checkpoint import verify_file
from heygem.errors import ModelError
from heygem.settings import DETECTOR_FILE, Settings

log = logging.getLogger("heygem.engine.model.download")

GENERATOR = "generator"
DETECTOR = "detector"
WEIGHTS = (GENERATOR, DETECTOR)
CHECKPOINT_NAMES = ("wav2lip_gan.pth", "wav2lip.pth")  # looked for in this order
DETECTOR_NAME = DETECTOR_FILE
URL_SCHEMES = ("http", "https")
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not for the whole download
USER_AGENT = "heygem-weights-download"

# (bytes done, bytes expected or 0 when unknown, weight name)
DownloadProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class WeightStatus:
    name: str  # "generator" or "detector"
    path: Path  # where heygem looks for the file
    present: bool
    size_bytes: int  # 0 when absent


@dataclass(frozen=True)
class _Source:
    name: str
    target: Path
    url: str  # plain URL; wins over the Hugging Face file when set
    hf_file: str  # file name in settings.hf_repo
    sha256: str  # expected digest, or "" for unchecked


# --- where the files are ----------------------------------------------------------------------


def resolve_checkpoint(settings: Settings) -> Path:
    """settings.checkpoint, else the first existing of wav2lip_gan.pth / wav2lip.pth in models_dir.

    When neither exists, the wav2lip_gan.pth path (so messages name where the file should go).
    """
    if settings.checkpoint is not None:
        return settings.checkpoint
    folder = settings.resolved_models_dir
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    return folder / CHECKPOINT_NAMES[0]


def resolve_detector_weights(settings: Settings) -> Path:
    return settings.resolved_detector_weights


def weights_status(settings: Settings) -> list[WeightStatus]:
    """Presence and size of each weights file, for `models status` and the UI."""
    paths = {GENERATOR: resolve_checkpoint(settings), DETECTOR: resolve_detector_weights(settings)}
    return [_status(name, path) for name, path in paths.items()]


def _status(name: str, path: Path) -> WeightStatus:
    present = path.is_file()
    return WeightStatus(name, path, present, path.stat().st_size if present else 0)


# --- fetching ---------------------------------------------------------------------------------


def download_weights(
    settings: Settings,
    which: Sequence[str] = WEIGHTS,
    on_progress: DownloadProgress | None = None,
    force: bool = False,
) -> list[Path]:
    """Fetch the named weights into place; return their paths.

    A file already present (and matching its SHA-256 when one is configured) is kept unless
    force is set. Raises ModelError with a one-line reason when a download fails.
    """
    unknown = [name for name in which if name not in WEIGHTS]
    if unknown:
        raise ValueError(f"unknown weights {unknown}; choose from {', '.join(WEIGHTS)}")
    paths = []
    for name in which:
        source = _source(settings, name)
        if force or not _usable(source):
            _fetch(settings, source, on_progress)
        paths.append(source.target)
    return paths


def _source(settings: Settings, name: str) -> _Source:
    if name == DETECTOR:
        return _Source(name, resolve_detector_weights(settings), settings.detector_url,
                       settings.hf_detector_file, settings.detector_sha256)  # fmt: skip
    url, hf_file = settings.checkpoint_url, settings.hf_checkpoint_file
    return _Source(name, _checkpoint_target(settings, url or hf_file), url, hf_file,
                   settings.checkpoint_sha256)  # fmt: skip


def _checkpoint_target(settings: Settings, origin: str) -> Path:
    """Keep the source's name when it is one heygem looks for (plain vs GAN), else the GAN name."""
    if settings.checkpoint is not None:
        return settings.checkpoint
    name = Path(urllib.parse.urlparse(origin).path).name
    return settings.resolved_models_dir / (name if name in CHECKPOINT_NAMES else CHECKPOINT_NAMES[0])


def _usable(source: _Source) -> bool:
    if not source.target.is_file():
        return False
    if source.sha256:
        try:
            verify_file(source.target, source.sha256)
        except ModelError as exc:
            log.warning("%s; downloading it again", exc)
            return False
    log.info("%s weights already present at %s", source.name, source.target)
    return True


def _fetch(settings: Settings, source: _Source, on_progress: DownloadProgress | None) -> None:
    source.target.parent.mkdir(parents=True, exist_ok=True)
    if source.url:
        log.info("downloading %s weights from %s to %s", source.name, _safe_url(source.url), source.target)
        _fetch_url(source, on_progress)
    elif source.hf_file:
        log.info("downloading %s weights from Hugging Face %s/%s to %s",
                 source.name, settings.hf_repo, source.hf_file, source.target)  # fmt: skip
        _fetch_hf(settings.hf_repo, source, on_progress)
    else:
        raise ModelError(f"no download source is configured for the {source.name} weights")
    log.info("%s weights ready at %s", source.name, source.target)


def _fetch_url(source: _Source, on_progress: DownloadProgress | None) -> None:
    scheme = urllib.parse.urlparse(source.url).scheme
    if scheme not in URL_SCHEMES:
        raise ModelError(f"{source.name} weights URL must be http(s), got {_safe_url(source.url)}")
    partial = _temporary_name(source.target)
    try:
        _stream_to(source, partial, on_progress)
        _check_digest(source, partial)
        os.replace(partial, source.target)
    finally:
        partial.unlink(missing_ok=True)


def _stream_to(source: _Source, partial: Path, on_progress: DownloadProgress | None) -> None:
    request = urllib.request.Request(source.url, headers={"User-Agent": USER_AGENT})
    where = _safe_url(source.url)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, partial.open("wb") as out:
            expected = int(response.headers.get("Content-Length") or 0)
            done = _copy(response, out, source.name, expected, on_progress)
    except urllib.error.HTTPError as exc:
        raise ModelError(
            f"downloading {source.name} weights from {where} failed: HTTP {exc.code} {exc.reason}"
        ) from None
    except urllib.error.URLError as exc:
        raise ModelError(f"cannot reach {where} for the {source.name} weights: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ModelError(f"downloading {source.name} weights from {where} failed: {exc!r}") from None
    if expected and done != expected:
        raise ModelError(
            f"downloading {source.name} weights from {where} stopped after {done} of {expected} bytes"
        )


def _copy(
    response: IO[bytes], out: IO[bytes], name: str, expected: int, on_progress: DownloadProgress | None
) -> int:
    done = 0
    while chunk := response.read(CHUNK_BYTES):
        out.write(chunk)
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, expected, name)
    return done


def _fetch_hf(repo: str, source: _Source, on_progress: DownloadProgress | None) -> None:
    """hf_hub_download into a private folder next to the target, then move the file into place."""
    from huggingface_hub import hf_hub_download

    # Read at call time so HF_ENDPOINT set after start-up still picks the mirror.
    endpoint = os.environ.get("HF_ENDPOINT") or None
    staging = Path(tempfile.mkdtemp(prefix=f".{source.target.name}.", dir=source.target.parent))
    try:
        try:
            fetched = Path(hf_hub_download(repo_id=repo, filename=source.hf_file, local_dir=staging,
                                           endpoint=endpoint))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - huggingface_hub and httpx raise many types; all mean "failed"
            raise ModelError(
                f"downloading {source.hf_file} from Hugging Face repo {repo} failed: {_first_line(exc)}"
            ) from None
        _check_digest(source, fetched)
        os.replace(fetched, source.target)
        if on_progress is not None:
            size = source.target.stat().st_size
            on_progress(size, size, source.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_digest(source: _Source, path: Path) -> None:
    if not source.sha256:
        return
    actual = sha256_of(path)
    if actual != source.sha256.strip().lower():
        raise ModelError(
            f"downloaded {source.name} weights have SHA-256 {actual}, expected "
            f"{source.sha256.strip().lower()}; the file was discarded"
        )


def _temporary_name(target: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(handle)
    return Path(name)


def _safe_url(url: str) -> str:
    """The URL without credentials or query (which may hold a token), for messages and logs."""
    parts = urllib.parse.urlparse(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunparse((parts.scheme, host, parts.path, "", "", ""))


def _first_line(exc: Exception) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = [
    "WeightStatus", "download_weights", "weights_status", "resolve_checkpoint",
    "resolve_detector_weights", "CHECKPOINT_NAMES", "DETECTOR_NAME", "GENERATOR", "DETECTOR",
]  # fmt: skip
