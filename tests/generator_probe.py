"""Run the OpenVINO generator from a verified cache entry in this process; print its output digest as JSON.

    python tests/generator_probe.py --checkpoint C --cache-dir D --video V --audio A
        [--precision bf16] [--batch-size 16] [--frames 20]

tests/test_backends.py starts it twice to prove that the same input gives the same bytes in
separate processes (a fresh compile each time, no torch in the process). The digest covers the
network's float output, not only the uint8 mouths, so a difference the truncation hides still shows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from heygem.engine.audio import load_audio, mel_chunks, melspectrogram  # noqa: E402
from heygem.engine.blend import crop_face  # noqa: E402
from heygem.engine.model.array_runner import ArrayRunner  # noqa: E402
from heygem.engine.model.backends import BackendRequest, FaceBatch, MelBatch, cached_backend  # noqa: E402
from tests import e2e_media as em  # noqa: E402
from tests import media  # noqa: E402

TOP, BOTTOM, LEFT, RIGHT = em.FACE_BOX_256
FIXTURE_FPS = 25.0


def fixture_input(video: Path, audio: Path, frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The fixture video's frames (the first `frames`, or all) cropped to the face, with their mel windows."""
    decoded = media.read_frames(video)[:frames]
    crops = np.stack([crop_face(frame, (LEFT, TOP, RIGHT, BOTTOM)) for frame in decoded])
    windows = mel_chunks(melspectrogram(load_audio(audio)), FIXTURE_FPS, frames=len(crops))
    return windows, crops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=20)
    args = parser.parse_args(argv)

    request = BackendRequest(
        "openvino", args.precision, args.precision, "cpu", args.checkpoint, (args.cache_dir,)
    )
    backend = cached_backend(request)
    if backend is None or backend.forward is None:
        print(json.dumps({"error": "no verified cache entry serves this request"}))
        return 1
    forward = backend.forward
    outputs: list[np.ndarray] = []

    def recorded(mels: MelBatch, faces: FaceBatch) -> np.ndarray:
        generated = forward(mels, faces)
        outputs.append(generated)
        return generated

    mouths = ArrayRunner(recorded, args.batch_size).infer(*fixture_input(args.video, args.audio, args.frames))
    report = {
        "precision": backend.precision,
        "batches": [len(batch) for batch in outputs],
        "network": hashlib.sha256(np.concatenate(outputs).tobytes()).hexdigest(),
        "mouths": hashlib.sha256(mouths.tobytes()).hexdigest(),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
