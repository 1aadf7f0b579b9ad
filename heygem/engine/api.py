"""The engine's contract: per-job options, results, status, and the protocols callers code against.

`SyncOptions` is the one option schema. Each field carries an `OptionSpec` (help, choices, bounds,
widget) from which the CLI flags, the web UI's options panel and the job API's OpenAPI schema are
generated, so no default or choice is written anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, Protocol, Union, get_args, get_origin, get_type_hints

import numpy as np
from numpy.typing import NDArray

from heygem.errors import InputError
from heygem.settings import ENGINES, PRECISIONS

FACE_SIZE = 96  # the generator's square input and output side, in pixels

STAGES = ("probe", "audio", "detect", "synthesize", "encode", "done")
ProgressCallback = Callable[[int, int, str], None]

WAV2LIP = "wav2lip"
PREVIEW = "preview"

Blend = Literal["feather", "rect"]
DurationPolicy = Literal["loop", "pingpong"]
FaceChoice = Literal["largest", "nearest"]
BLENDS: tuple[Blend, ...] = ("feather", "rect")
DURATION_POLICIES: tuple[DurationPolicy, ...] = ("loop", "pingpong")
FACE_CHOICES: tuple[FaceChoice, ...] = ("largest", "nearest")

Quad = tuple[int, int, int, int]  # top, bottom, left, right in pixels (the reference's order)
Box = tuple[int, int, int, int]  # a face box as x1, y1, x2, y2 in frame pixels
Point = tuple[int, int]  # x, y in pixels
Frame = NDArray[np.uint8]  # one video frame: height x width x 3, BGR

MAX_FPS = 120.0
MAX_LABEL_CHARS = 40
MAX_SMOOTH_WINDOW = 100
MAX_BATCH_SIZE = 1024
QUAD_NAMES = ("TOP", "BOTTOM", "LEFT", "RIGHT")
POINT_NAMES = ("X", "Y")

Widget = Literal["choice", "number", "check", "text", "quad", "point"]


@dataclass(frozen=True)
class OptionSpec:
    """What a caller needs to offer one option: the CLI, the UI panel and the API schema read it."""

    help: str
    widget: Widget
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    parts: tuple[str, ...] = ()  # names of the parts of a tuple option (quad, point)
    # False where a Settings field of the same name already offers it (engine, precision, batch
    # size): the CLI flag and the server-wide default then come from Settings.
    per_job_flag: bool = True


def _option(default: Any, spec: OptionSpec) -> Any:
    return field(default=default, metadata={"spec": spec})


@dataclass(frozen=True)
class SyncOptions:
    """Per-job knobs. Frozen: built per job, never mutated, never shared state."""

    engine: str = _option(
        "auto",
        OptionSpec(
            "auto = wav2lip when its weights exist, else preview", "choice", ENGINES, per_job_flag=False
        ),
    )
    box: Quad | None = _option(
        None,
        OptionSpec("fixed face box in pixels; skips face detection", "quad", minimum=0, parts=QUAD_NAMES),
    )
    pads: Quad = _option(
        (0, 10, 0, 0),
        OptionSpec("grow the detected box by these pixels", "quad", minimum=0, parts=QUAD_NAMES),
    )
    smooth: bool = _option(True, OptionSpec("average face boxes over time", "check"))
    smooth_window: int = _option(
        5,
        OptionSpec(
            "frames in the smoothing window (the reference's 5)",
            "number",
            minimum=1,
            maximum=MAX_SMOOTH_WINDOW,
        ),
    )
    blend: Blend = _option(
        "feather",
        OptionSpec("feather: soft lower-face mask; rect: reference-exact box paste", "choice", BLENDS),
    )
    duration_policy: DurationPolicy = _option(
        "loop", OptionSpec("how the video is extended when the audio is longer", "choice", DURATION_POLICIES)
    )
    face_choice: FaceChoice = _option(
        "largest",
        OptionSpec("which face when several are found (nearest needs face_point)", "choice", FACE_CHOICES),
    )
    face_point: Point | None = _option(
        None,
        OptionSpec(
            "with several faces, use the one nearest this point", "point", minimum=0, parts=POINT_NAMES
        ),
    )
    fps: float = _option(
        25.0, OptionSpec("frame rate given to a still image", "number", minimum=1, maximum=MAX_FPS)
    )
    batch_size: int | None = _option(
        None,
        OptionSpec(
            "faces per generator pass; unset = the server's setting",
            "number",
            minimum=1,
            maximum=MAX_BATCH_SIZE,
            per_job_flag=False,
        ),
    )
    precision: str | None = _option(
        None,
        OptionSpec(
            "generator precision; unset = the server's setting", "choice", PRECISIONS, per_job_flag=False
        ),
    )
    watermark: str = _option(
        "",
        OptionSpec(
            "visible label burnt into the corner, e.g. 'AI generated'", "text", maximum=MAX_LABEL_CHARS
        ),
    )

    def __post_init__(self) -> None:
        _check_options(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SyncOptions:
        """Build from JSON-like data (API, job store); raise InputError naming a bad key/value."""
        values = dict(data or {})
        unknown = sorted(set(values) - set(OPTION_NAMES))
        if unknown:
            raise InputError(f"unknown option(s): {', '.join(unknown)}")
        try:
            for name, spec in option_specs().items():
                if spec.parts and values.get(name) is not None:
                    values[name] = tuple(int(v) for v in values[name])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise InputError(f"invalid options: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            name: list(value) if isinstance(value := getattr(self, name), tuple) else value
            for name in OPTION_NAMES
        }


OPTION_NAMES: tuple[str, ...] = tuple(f.name for f in fields(SyncOptions))


def option_specs() -> dict[str, OptionSpec]:
    """Every SyncOptions field's spec, in declaration order."""
    return {f.name: f.metadata["spec"] for f in fields(SyncOptions)}


def option_default(name: str) -> Any:
    """The default of one SyncOptions field."""
    default = next(f.default for f in fields(SyncOptions) if f.name == name)
    if default is MISSING:  # every option has a default; this guards the schema itself
        raise KeyError(name)
    return default


def option_type(name: str) -> type:
    """The scalar type of one SyncOptions field: bool, int, float or str (each part's, for a
    quad or point); None is left out. Callers parse flags and form values with it."""
    hint: Any = get_type_hints(SyncOptions)[name]
    while True:
        origin = get_origin(hint)
        if origin is Literal:
            return type(get_args(hint)[0])
        if origin in (Union, UnionType, tuple):
            hint = next(arg for arg in get_args(hint) if arg is not NoneType)
            continue
        return hint  # type: ignore[no-any-return]


def _check_options(options: SyncOptions) -> None:
    for name, spec in option_specs().items():
        value = getattr(options, name)
        if value is not None:
            _check_value(name, value, spec)
    if options.box is not None and not (options.box[0] < options.box[1] and options.box[2] < options.box[3]):
        raise InputError("box must be TOP BOTTOM LEFT RIGHT with top < bottom and left < right")
    if options.face_choice == "nearest" and options.face_point is None:
        raise InputError("face_choice 'nearest' needs face_point as (x, y)")


def _check_value(name: str, value: Any, spec: OptionSpec) -> None:
    if spec.choices and value not in spec.choices:
        raise InputError(f"{name} must be one of {', '.join(spec.choices)}; got {value!r}")
    if spec.parts:
        _check_parts(name, value, spec)
    elif spec.widget == "text":
        if spec.maximum is not None and len(value) > spec.maximum:
            raise InputError(f"{name} text is longer than {spec.maximum:g} characters")
    elif spec.widget == "number":
        _check_bounds(name, value, spec)


def _check_parts(name: str, value: Sequence[int], spec: OptionSpec) -> None:
    if len(value) != len(spec.parts) or any(v < (spec.minimum or 0) for v in value):
        raise InputError(
            f"{name} needs {len(spec.parts)} whole numbers ({' '.join(spec.parts).lower()}), "
            f"each >= {spec.minimum or 0:g}"
        )


def _check_bounds(name: str, value: float, spec: OptionSpec) -> None:
    low = spec.minimum if spec.minimum is not None else float("-inf")
    high = spec.maximum if spec.maximum is not None else float("inf")
    if not low <= value <= high:
        raise InputError(f"{name} must be between {low:g} and {high:g}; got {value:g}")


@dataclass
class SyncResult:
    output: Path
    engine: str  # the engine that actually ran: wav2lip or preview
    frames: int  # frames written
    frames_without_face: int  # frames passed through unchanged
    fps: float
    duration_s: float  # output duration (equals the audio duration within one frame)
    seconds: float  # wall time of the run
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class EngineStatus:
    engine: str  # engine "auto" resolves to: wav2lip or preview
    reason: str  # why that engine (e.g. "no weights at models/wav2lip_gan.pth")
    checkpoint: str  # path of the loaded generator weights, or ""
    detector: str  # "s3fd" or "haar"
    device: str  # "cpu", "cuda:0"
    device_name: str  # GPU name or CPU description
    loaded: bool
    backend: str = ""  # what runs the generator, e.g. "openvino bf16, 1 grey level(s) from fp32 eager"


class Engine(Protocol):
    """What the job layer, web app and CLI need from a lip-sync engine (and what test fakes offer).

    Constructing one is cheap; `load` loads models once and is idempotent. `run` raises
    InputError subclasses for bad input, ModelError for weights problems and MediaProcessError
    when ffmpeg fails; `stage` in progress reports is one of STAGES.
    """

    def load(self) -> None: ...

    def status(self) -> EngineStatus: ...

    def warmup(self) -> float:
        """One inference on a built-in sample; returns its seconds."""
        ...

    def run(
        self,
        audio: Path,
        face: Path,
        output: Path,
        options: SyncOptions | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> SyncResult: ...


class MouthRenderer(Protocol):
    """Redraws the mouth in a batch of frames; the pipeline streams every frame through one."""

    name: str

    def render(
        self, frames: list[Frame], boxes: list[Box | None], frame_indices: Sequence[int]
    ) -> list[Frame]:
        """The frames with the mouth redrawn; frames whose box is None come back unchanged.

        A writable frame may be redrawn in place (the pipeline hands over frames it no longer
        needs); a read-only one (a still shown in every frame) is copied first.
        """
        ...
