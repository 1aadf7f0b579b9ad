"""Where the generator's arithmetic runs: torch eager, or OpenVINO on the CPU.

`select_backend` settles this once per engine load and precision. OpenVINO runs the same network
about 1.7x (fp32) to 3x (bf16) faster than torch eager on a CPU; its converted model is cached
next to the weights, so only the first start pays the ~10 s conversion. Every OpenVINO model is
checked against torch fp32 eager on a fixed sample before it serves a job: a model that drifts
more than the bound is treated as broken (rebuilt once, then torch takes over), and a bf16
hint that drifts more than the bound is only kept when bf16 was asked for by name.

Nothing here fails a job: whatever goes wrong, the answer is the torch backend and one warning.
`openvino` is imported inside functions only, so importing this module costs nothing.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from heygem.engine.api import FACE_SIZE
from heygem.engine.hashing import sha256_of

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

AUTO, TORCH, OPENVINO = "auto", "torch", "openvino"
DRIFT_BOUND = 1  # grey levels (max abs over 0-255 mouth pixels) a default precision may differ from fp32
PIXEL_SCALE = 255.0
MEL_BINS, MEL_STEPS = 80, 16
NETWORK_CHANNELS = 6  # masked face + reference face, 3 colour channels each
SMOKE_BATCH = 4
SMOKE_SEED = 14
OV_DEVICE = "CPU"
# OpenVINO's inference precision hints and the names heygem uses for them.
OV_HINTS = {"fp32": "f32", "bf16": "bf16"}
OV_PRECISIONS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
BF16_CAPABILITY = "BF16"
MODEL_FILE = "model.xml"
MANIFEST_FILE = "manifest.json"
DRIFT_KEY = "drift"  # manifest: grey levels from fp32 eager per precision, measured at check time
# The converted file keeps fp32 weights; the inference precision is a hint applied when it is
# compiled (0.1 s), so one converted file serves every precision.
STORED_PRECISION = "fp32"
KEY_TEXT = re.compile(r"[^A-Za-z0-9.]+")
HASH_CHARS = 16
OMP_THREADS_VARIABLE = "OMP_NUM_THREADS"
MAX_GREY = 255

MelBatch = NDArray[np.float32]  # (N, 1, 80, 16)
FaceBatch = NDArray[np.float32]  # (N, 6, 96, 96), 0-1
ArrayForward = Callable[[MelBatch, FaceBatch], NDArray[np.float32]]  # -> (N, 3, 96, 96), 0-1


class BackendUnavailable(Exception):
    """The requested backend cannot serve here; the message says why in a few words."""


class BackendMissing(BackendUnavailable):
    """The backend's package is not installed: normal for `auto`, worth a warning when named."""


Sample = tuple[NDArray[np.float32], ...]  # a network's inputs, in the order its forward takes them


@dataclass(frozen=True)
class Network:
    """What the backend layer needs to convert, check and serve one network.

    `run_torch(model, sample, precision)` and an OpenVINO forward (`serve(compiled)`) called on
    the same `sample` give outputs that `drift(outputs, reference)` compares with the torch fp32
    result as a whole number of `unit`s; `bound` is the most a default precision may drift.
    """

    name: str  # in log lines; also the cache entry's tag unless it is the generator
    sample: Callable[[], Sample]
    run_torch: Callable[[Any, Sample, str], Any]
    drift: Callable[[Any, Any], int]
    bound: int
    unit: str
    serve: Callable[[Any], Callable[..., Any]]
    dynamic_axes: tuple[tuple[int, ...], ...] | None = None  # per input, -1 = any size; None = as traced
    entry_tag: str = ""  # "" keeps the generator's entry names from before other networks were cached
    compile_config: tuple[tuple[str, str], ...] = ()  # extra compile properties, e.g. denormals


@dataclass(frozen=True)
class Backend:
    """How the generator runs. `forward` None means the runner's own torch path."""

    name: str  # torch | openvino
    precision: str  # fp32 | bf16 | fp16: what actually computes
    forward: Callable[..., Any] | None = None  # the network's own call: an ArrayForward for the generator
    drift: int | None = None  # units from torch fp32 eager on the check sample; None = not measured
    unit: str = "grey level(s)"

    @property
    def label(self) -> str:
        measured = "" if self.drift is None else f", {self.drift} {self.unit} from fp32 eager"
        return f"{self.name} {self.precision}{measured}"


@dataclass(frozen=True)
class BackendRequest:
    """What `select_backend` needs to know besides the network itself."""

    backend: str  # auto | torch | openvino (Settings.backend)
    precision: str  # as asked: auto | fp32 | bf16 | fp16
    torch_precision: str  # what the torch path resolved "auto" to on this device
    device_type: str  # cpu | cuda
    checkpoint: Path
    cache_dirs: tuple[Path, ...]  # where a converted model may be kept, first writable wins


def select_backend(
    model: torch.nn.Module, request: BackendRequest, network: Network | None = None
) -> Backend:
    """The backend that serves `request`; torch (with one warning) when OpenVINO cannot."""
    network = network or GENERATOR
    backend = _openvino_or_none(model, request, network) or _torch_backend(
        model, request.torch_precision, network
    )
    log.info("%s backend: %s", network.name, backend.label)
    return backend


def _openvino_or_none(model: torch.nn.Module, request: BackendRequest, network: Network) -> Backend | None:
    if request.backend == TORCH:
        return None
    if request.device_type != "cpu":
        if request.backend == OPENVINO:
            log.warning(
                "backend openvino runs on the CPU only; using torch on %s for the %s",
                request.device_type,
                network.name,
            )
        return None
    try:
        return _openvino_backend(model, request, network)
    except BackendMissing as exc:
        (log.warning if request.backend == OPENVINO else log.info)("%s; using torch", exc)
    except BackendUnavailable as exc:
        log.warning("backend openvino unavailable for the %s (%s); using torch", network.name, exc)
    return None


def mouth_pixels(generated: NDArray[np.float32]) -> NDArray[np.uint8]:
    """(N, 3, 96, 96) 0-1 -> (N, 96, 96, 3) uint8, truncated like the torch path (and the reference)."""
    pixels = np.clip(generated, 0.0, 1.0) * np.float32(PIXEL_SCALE)
    return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)).astype(np.uint8)


def smoke_sample() -> tuple[MelBatch, FaceBatch]:
    """A fixed batch of network inputs: mel-like noise and random faces, lower half masked."""
    rng = np.random.default_rng(SMOKE_SEED)
    mels = rng.normal(-1.0, 1.5, (SMOKE_BATCH, 1, MEL_BINS, MEL_STEPS)).astype(np.float32)
    faces = rng.random((SMOKE_BATCH, NETWORK_CHANNELS, FACE_SIZE, FACE_SIZE), dtype=np.float32)
    faces[:, :3, FACE_SIZE // 2 :] = 0.0
    return mels, faces


def eager_fp32(model: torch.nn.Module, mels: MelBatch, faces: FaceBatch) -> NDArray[np.float32]:
    """The reference every backend is held to: the torch module in fp32, where it lives."""
    return eager(model, mels, faces, "fp32")


def eager(model: torch.nn.Module, mels: MelBatch, faces: FaceBatch, precision: str) -> NDArray[np.float32]:
    """The torch module on the sample, under autocast for fp16/bf16 as the runner runs it."""
    generated = torch_outputs(model, (mels, faces), precision)
    result: NDArray[np.float32] = generated.float().cpu().numpy()
    return result


def torch_outputs(model: Any, sample: Sample, precision: str) -> Any:
    """The torch module on `sample` (moved to its device), under autocast for fp16/bf16; the raw
    outputs, as torch gives them."""
    import torch

    device = next(model.parameters()).device
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return model(*(torch.from_numpy(part).to(device) for part in sample))


def _eager_sample(model: Any, sample: Sample, precision: str) -> NDArray[np.float32]:
    return eager(model, sample[0], sample[1], precision)


def _torch_backend(model: torch.nn.Module, precision: str, network: Network) -> Backend:
    """Torch eager; fp32 is the reference itself, autocast precisions are measured against it."""
    if precision == "fp32":
        return Backend(TORCH, precision, drift=0, unit=network.unit)
    try:
        sample = network.sample()
        reference = network.run_torch(model, sample, "fp32")
        drift = network.drift(network.run_torch(model, sample, precision), reference)
    except Exception as exc:  # noqa: BLE001 - a measurement, never a reason to fail the load
        log.info("could not measure torch %s drift: %s", precision, _short(exc))
        return Backend(TORCH, precision, unit=network.unit)
    return Backend(TORCH, precision, drift=drift, unit=network.unit)


def grey_drift(generated: NDArray[np.float32], reference: NDArray[np.float32]) -> int:
    """Max abs difference of the two outputs as 0-255 mouth pixels; NaN counts as the worst."""
    if not np.isfinite(generated).all():
        return int(PIXEL_SCALE)
    diff = mouth_pixels(generated).astype(np.int16) - mouth_pixels(reference).astype(np.int16)
    return int(np.abs(diff).max())


# -- OpenVINO ------------------------------------------------------------------------------------
def _openvino_backend(model: torch.nn.Module, request: BackendRequest, network: Network) -> Backend:
    try:
        import openvino
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        raise BackendMissing(f"openvino is not installed or does not import: {_short(exc)}") from None
    try:
        return _checked_openvino(openvino, model, request, network)
    except BackendUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any runtime failure means "use torch", never a failed job
        raise BackendUnavailable(_short(exc)) from None


@dataclass(frozen=True)
class _Check:
    """One network's check: its sample, the torch fp32 reference on it, and where results go."""

    network: Network
    sample: Sample
    reference: Any
    cache: ConvertedModelCache

    def drift_of(self, forward: Callable[..., Any]) -> int:
        return self.network.drift(forward(*self.sample), self.reference)


def _checked_openvino(ov: Any, model: torch.nn.Module, request: BackendRequest, network: Network) -> Backend:
    """Load (or convert) the model, prove it against fp32 eager, then pick the precision."""
    core = ov.Core()
    sample = network.sample()
    cache = ConvertedModelCache(
        request.checkpoint, request.cache_dirs, _openvino_version(), network.entry_tag
    )
    check = _Check(network, sample, network.run_torch(model, sample, "fp32"), cache)
    cached = cache.load(core)
    if cached is not None:
        exact = _exact_or_none(core, cached, check)
        if exact is not None:
            return _with_precision(core, cached, exact, check, request)
        log.warning("cached openvino model %s does not match the weights; converting again", cache.entry)
        cache.discard()
    converted = _convert(ov, model, sample, network)
    cache.store(ov, converted)
    exact = _exact_or_none(core, converted, check)
    if exact is None:
        raise BackendUnavailable(
            f"the converted model drifts more than {network.bound} {network.unit} from torch"
        )
    return _with_precision(core, converted, exact, check, request)


def _exact_or_none(core: Any, ov_model: Any, check: _Check) -> Backend | None:
    """The fp32 backend when the model reproduces fp32 eager within the bound (a sound file)."""
    network = check.network
    compiled = core.compile_model(ov_model, OV_DEVICE, _compile_config("fp32", network))
    forward = network.serve(compiled)
    drift = check.drift_of(forward)
    return Backend(OPENVINO, "fp32", forward, drift, network.unit) if drift <= network.bound else None


def _with_precision(
    core: Any, ov_model: Any, exact: Backend, check: _Check, request: BackendRequest
) -> Backend:
    """The precision policy: bf16 only within the bound unless asked for by name. Every drift
    measured is recorded in the cache entry, so that later starts apply the policy without torch."""
    network = check.network
    wanted = _openvino_precision(core, request.precision)
    check.cache.record({"fp32": exact.drift})
    if wanted == "fp32":
        return exact
    compiled = core.compile_model(ov_model, OV_DEVICE, _compile_config(wanted, network))
    forward = network.serve(compiled)
    drift = check.drift_of(forward)
    check.cache.record({wanted: drift})
    if drift <= network.bound or request.precision == wanted:
        return Backend(OPENVINO, _compiled_precision(compiled, wanted), forward, drift, network.unit)
    log.info(
        "openvino %s drifts %d %s from fp32 for the %s (bound %d); using fp32",
        wanted, drift, network.unit, network.name, network.bound,
    )  # fmt: skip
    return exact


def _openvino_precision(core: Any, requested: str) -> str:
    """auto = bf16 where the CPU computes it natively (it is checked against the bound after);
    fp16 on a CPU is fp32, as on the torch path."""
    if requested in OV_HINTS:
        return requested
    if requested == "fp16":
        return "fp32"
    capabilities = core.get_property(OV_DEVICE, "OPTIMIZATION_CAPABILITIES")
    return "bf16" if BF16_CAPABILITY in capabilities else "fp32"


def _compiled_precision(compiled: Any, asked: str) -> str:
    try:
        hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except Exception:  # noqa: BLE001 - older runtimes do not report it; the request is then the answer
        return asked
    return OV_PRECISIONS.get(hint.lower(), asked)


def _compile_config(precision: str, network: Network) -> dict[str, str]:
    config = {"INFERENCE_PRECISION_HINT": OV_HINTS[precision], **dict(network.compile_config)}
    # Unset, OpenVINO uses one thread per physical core, as torch does; OMP_NUM_THREADS (what
    # torch obeys) limits both paths alike.
    threads = configured_threads()
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def _convert(ov: Any, model: torch.nn.Module, sample: Sample, network: Network) -> Any:
    import torch

    log.info("converting the %s for openvino (once per weights file and openvino version)", network.name)
    example = tuple(torch.from_numpy(part) for part in sample)
    shapes = (
        None
        if network.dynamic_axes is None
        else [ov.PartialShape(list(axes)) for axes in network.dynamic_axes]
    )
    with torch.inference_mode(False), torch.no_grad():
        return ov.convert_model(model, example_input=example, input=shapes)


# -- the fast start: a verified cache entry, no torch ---------------------------------------------
def cached_backend(request: BackendRequest, network: Network | None = None) -> Backend | None:
    """OpenVINO straight from a cache entry whose check results are recorded, without torch.

    None (the caller then loads torch and runs `select_backend`) when the request is not for
    OpenVINO on the CPU, no verified entry exists, or the entry cannot serve the precision asked.
    """
    network = network or GENERATOR
    if request.backend == TORCH or request.device_type != "cpu":
        return None
    try:
        import openvino
    except Exception:  # noqa: BLE001 - select_backend reports a missing or broken install
        return None
    try:
        return _verified_openvino(openvino, request, network)
    except Exception as exc:  # noqa: BLE001 - any failure: the checked torch path instead
        log.warning(
            "fast openvino start of the %s failed (%s); loading torch to check the model",
            network.name,
            _short(exc),
        )
        return None


def _verified_openvino(ov: Any, request: BackendRequest, network: Network) -> Backend | None:
    cache = ConvertedModelCache(
        request.checkpoint, request.cache_dirs, _openvino_version(), network.entry_tag
    )
    drifts = cache.drifts()
    if drifts.get("fp32", network.bound + 1) > network.bound:
        return None  # no entry, an entry checked before drift was recorded, or an unsound one
    core = ov.Core()
    wanted = _openvino_precision(core, request.precision)
    precision = _recorded_precision(wanted, request.precision, drifts, network.bound)
    if precision is None:
        return None
    ov_model = cache.load(core)
    if ov_model is None:
        return None
    compiled = core.compile_model(ov_model, OV_DEVICE, _compile_config(precision, network))
    del ov_model  # the compiled model holds its own weights: the IR (140 MB for the generator) can go
    backend = Backend(
        OPENVINO,
        _compiled_precision(compiled, precision),
        network.serve(compiled),
        drifts[precision],
        network.unit,
    )
    log.info("%s backend: %s (checked when the cache entry was built)", network.name, backend.label)
    return backend


def _recorded_precision(wanted: str, requested: str, drifts: dict[str, int], bound: int) -> str | None:
    """The policy of _with_precision applied to recorded drift; None when it was not measured."""
    if wanted not in drifts:
        return None
    if wanted == "fp32" or drifts[wanted] <= bound or requested == wanted:
        return wanted
    return "fp32"


def configured_threads() -> int | None:
    """OMP_NUM_THREADS when it is a positive number: the thread limit torch obeys."""
    configured = os.environ.get(OMP_THREADS_VARIABLE, "").strip()
    return int(configured) if configured.isdigit() and int(configured) > 0 else None


def _openvino_version() -> str:
    return importlib.metadata.version("openvino")


class OpenVinoOutputs:
    """A compiled model called on arrays, giving all its outputs as arrays; one request at a time
    (an infer request is not shared between threads)."""

    def __init__(self, compiled: Any) -> None:
        self._request = compiled.create_infer_request()
        self._outputs = len(compiled.outputs)
        self._lock = threading.Lock()

    def __call__(self, *inputs: NDArray[np.float32]) -> list[NDArray[np.float32]]:
        with self._lock:
            self._request.infer([np.ascontiguousarray(part) for part in inputs])
            # The output tensors' memory is reused by the next request: copy them out.
            return [
                np.array(self._request.get_output_tensor(i).data, dtype=np.float32, copy=True)
                for i in range(self._outputs)
            ]


class OpenVinoForward(OpenVinoOutputs):
    """The generator's compiled model as an ArrayForward: its one output."""

    def __call__(self, *inputs: NDArray[np.float32]) -> NDArray[np.float32]:  # type: ignore[override]
        return super().__call__(*inputs)[0]


GENERATOR = Network(
    name="generator",
    sample=smoke_sample,
    run_torch=_eager_sample,
    drift=grey_drift,
    bound=DRIFT_BOUND,
    unit="grey level(s)",
    serve=OpenVinoForward,
)


# -- the cache of converted models ------------------------------------------------------------------
class ConvertedModelCache:
    """One converted model per (network, weights contents, backend version, stored precision).

    An entry is a folder written under a temporary name and renamed into place, so a reader sees
    a whole entry or none; its manifest records the file sizes, so a truncated file is noticed.
    `tag` names the network in the entry's name ("" for the generator, whose entries predate the
    tag), so two networks whose weights files share a name never prune each other's entries.
    """

    def __init__(self, checkpoint: Path, cache_dirs: tuple[Path, ...], version: str, tag: str = "") -> None:
        self.checkpoint = checkpoint
        self.cache_dirs = cache_dirs
        self.version = version
        self.tag = tag
        self.entry_name = _entry_name(checkpoint, sha256_of(checkpoint), version, tag)

    @property
    def entry(self) -> Path | None:
        """The existing entry (first cache folder holding one), else None."""
        for folder in self.cache_dirs:
            candidate = folder / self.entry_name
            # A link is not an entry this cache wrote: it could point at files of anyone's choosing.
            if candidate.is_dir() and not candidate.is_symlink():
                return candidate
        return None

    def load(self, core: Any) -> Any | None:
        entry = self.entry
        if entry is None:
            return None
        try:
            _check_manifest(entry)
            return core.read_model(str(entry / MODEL_FILE))
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is rebuilt, never fatal
            log.warning("cached openvino model %s is unreadable (%s); converting again", entry, _short(exc))
            self.discard()
            return None

    def drifts(self) -> dict[str, int]:
        """Grey levels from fp32 eager per precision, as recorded in the entry's manifest when
        it was checked; empty when there is no entry or nothing valid is recorded."""
        entry = self.entry
        if entry is None:
            return {}
        try:
            recorded = _read_manifest(entry).get(DRIFT_KEY, {})
        except Exception as exc:  # noqa: BLE001 - an unreadable manifest is an unverified entry
            log.info("cached openvino model %s has no readable manifest (%s)", entry, _short(exc))
            return {}
        if not isinstance(recorded, dict):
            return {}
        return {
            precision: drift
            for precision, drift in recorded.items()
            if precision in OV_HINTS and type(drift) is int and 0 <= drift <= MAX_GREY
        }

    def record(self, measured: dict[str, int | None]) -> None:
        """Add check results (grey levels from fp32 eager per precision) to the entry's manifest."""
        entry = self.entry
        if entry is None:
            return
        try:
            manifest = _read_manifest(entry)
            recorded = {**manifest.get(DRIFT_KEY, {}), **measured}
            if recorded != manifest.get(DRIFT_KEY):  # a re-check that agrees leaves the entry untouched
                _write_json_atomically(entry / MANIFEST_FILE, {**manifest, DRIFT_KEY: recorded})
        except Exception as exc:  # noqa: BLE001 - an unrecorded check only costs the next start time
            log.info("cannot record the check in %s (%s)", entry, _short(exc))

    def discard(self) -> None:
        entry = self.entry
        if entry is not None:
            shutil.rmtree(entry, ignore_errors=True)

    def store(self, ov: Any, ov_model: Any) -> Path | None:
        """Write the entry atomically into the first writable cache folder; None when none is."""
        for folder in self.cache_dirs:
            try:
                return self._store_in(ov, ov_model, folder)
            except Exception as exc:  # noqa: BLE001 - a failed write costs the cache, not the model
                log.info("cannot cache the converted model in %s (%s)", folder, _short(exc))
        log.warning("no writable cache folder for the converted model; it is converted at every start")
        return None

    def _store_in(self, ov: Any, ov_model: Any, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        scratch = folder / f".{self.entry_name}.{uuid.uuid4().hex}.tmp"
        scratch.mkdir()
        try:
            ov.save_model(ov_model, str(scratch / MODEL_FILE), compress_to_fp16=False)
            _write_manifest(scratch, self.version, self.tag)
            final = folder / self.entry_name
            try:
                os.rename(scratch, final)
            except OSError:
                if not final.is_dir():  # another process did not just write the same entry
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self._prune_stale(folder)
        log.info("cached the converted model in %s", final)
        return final

    def _prune_stale(self, folder: Path) -> None:
        """Entries of the same weights file and network for older contents or versions: 140+ MB
        each for the generator. A link is never followed (rmtree refuses one), a folder of
        another network never matches."""
        same_weights = re.compile(
            re.escape(f"{self.checkpoint.stem}-") + _DIGEST + re.escape(_middle(self.tag))
        )
        for other in folder.iterdir():
            if other.name != self.entry_name and same_weights.match(other.name) and other.is_dir():
                shutil.rmtree(other, ignore_errors=True)


_DIGEST = f"[0-9a-f]{{{HASH_CHARS}}}"


def _middle(tag: str) -> str:
    """What follows the digest in an entry's name: the network's tag, then the backend."""
    return f"-{tag}-openvino" if tag else "-openvino"


def _entry_name(checkpoint: Path, digest: str, version: str, tag: str = "") -> str:
    version_text = KEY_TEXT.sub("_", version)
    return f"{checkpoint.stem}-{digest[:HASH_CHARS]}{_middle(tag)}{version_text}-{STORED_PRECISION}"


def _write_manifest(entry: Path, version: str, tag: str) -> None:
    sizes = {path.name: path.stat().st_size for path in entry.iterdir()}
    manifest = {
        "backend": OPENVINO,
        "network": tag or GENERATOR.name,
        "version": version,
        "precision": STORED_PRECISION,
        "sizes": sizes,
    }
    (entry / MANIFEST_FILE).write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")


def _read_manifest(entry: Path) -> dict[str, Any]:
    manifest = json.loads((entry / MANIFEST_FILE).read_text(encoding="utf-8"))
    if not isinstance(manifest, dict):
        raise ValueError("the manifest is not an object")
    return manifest


def _write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        scratch.write_text(json.dumps(value, sort_keys=True), encoding="utf-8")
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)


def _check_manifest(entry: Path) -> None:
    """Every file the entry holds is a plain file of the size its manifest records."""
    sizes = _read_manifest(entry)["sizes"]
    # A dot file is a manifest update in flight (_write_json_atomically), not part of the model.
    present = {path.name for path in entry.iterdir() if not path.name.startswith(".")} - {MANIFEST_FILE}
    if set(sizes) != present:
        raise ValueError("the manifest does not list the entry's files")
    for name, size in sizes.items():
        path = entry / name
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"{name} is not a plain file")
        actual = path.stat().st_size
        if actual != size:
            raise ValueError(f"{name} is {actual} bytes, expected {size}")


def _short(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return (first or type(exc).__name__)[:200]
