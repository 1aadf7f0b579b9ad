"""The two mouth renderers behind one interface, and the rule that picks one.

`wav2lip` runs the neural generator; `preview` (heygem.engine.preview) warps the lower face from the
speech envelope and needs no weights. The pipeline streams frames through whichever is chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from heygem.engine.api import PREVIEW, WAV2LIP, Blend, Box, Frame, MouthRenderer
from heygem.engine.blend import crop_face, paste_feathered, paste_rect
from heygem.errors import DOWNLOAD_COMMAND

if TYPE_CHECKING:
    from heygem.engine.model.array_runner import ArrayRunner
    from heygem.engine.model.inference import GeneratorRunner

log = logging.getLogger("heygem.engine.renderers")


class Wav2LipRenderer:
    """Crops each face to 96x96, runs the generator with that frame's mel window, pastes back."""

    name = WAV2LIP

    def __init__(
        self, runner: GeneratorRunner | ArrayRunner, mel_windows: NDArray[np.float32], blend: Blend
    ) -> None:
        self.runner = runner
        self.mel_windows = mel_windows
        self.paste = paste_rect if blend == "rect" else paste_feathered

    def render(
        self, frames: list[Frame], boxes: list[Box | None], frame_indices: Sequence[int]
    ) -> list[Frame]:
        with_face = [(k, box) for k, box in enumerate(boxes) if box is not None]
        out = list(frames)
        if not with_face:
            return out
        crops = np.stack([crop_face(frames[k], box) for k, box in with_face])
        windows = self.mel_windows[[frame_indices[k] for k, _ in with_face]]
        mouths = self.runner.infer(windows, crops)
        for (k, box), mouth in zip(with_face, mouths):
            out[k] = self.paste(frames[k], mouth, box, in_place=True)
        return out


def choose_engine(requested: str, checkpoint: Path) -> tuple[str, str]:
    """(engine, reason). auto: wav2lip when its weights exist, else preview.

    An explicit wav2lip request is honoured even without weights: loading them then fails with
    an error that names the missing file and the command that fetches it.
    """
    if requested == PREVIEW:
        return PREVIEW, "preview engine requested"
    if requested == WAV2LIP:
        return WAV2LIP, f"wav2lip engine requested; weights at {checkpoint}"
    if checkpoint.is_file():
        return WAV2LIP, f"weights found at {checkpoint}"
    return PREVIEW, f"no Wav2Lip weights at {checkpoint}; run '{DOWNLOAD_COMMAND}' for the neural engine"


if TYPE_CHECKING:
    # The pipeline streams every frame through a MouthRenderer; mypy holds this class to it.
    _IS_A_RENDERER: type[MouthRenderer] = Wav2LipRenderer
