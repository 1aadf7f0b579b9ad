"""Run ONE pipeline job in this process and print its peak memory as JSON (for tests/test_memory.py).

    python tests/memory_probe.py --audio A --video V --output O.mp4 --data-dir D [--engine preview]
        [--batch-size 8] [--box TOP BOTTOM LEFT RIGHT]

A fresh process per measurement keeps the peak clean: ru_maxrss is the high-water mark of this
process's resident memory, model and libraries included (ffmpeg children are not counted: their
ru_maxrss would only show the parent's size at fork time).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from heygem.engine.api import SyncOptions  # noqa: E402
from heygem.engine.pipeline import LipSyncPipeline  # noqa: E402
from heygem.settings import Settings  # noqa: E402

KIB_PER_MIB = 1024  # Linux reports ru_maxrss in KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--box", type=int, nargs=4)
    args = parser.parse_args(argv)

    settings = Settings(
        data_dir=args.data_dir,
        models_dir=args.models_dir or args.data_dir / "models",
        batch_size=args.batch_size,
        warmup=False,
    )
    pipeline = LipSyncPipeline(settings)
    pipeline.load()
    loaded_mib = peak_mib()
    options = SyncOptions(engine=args.engine, box=tuple(args.box) if args.box else None)
    started = time.monotonic()
    result = pipeline.run(args.audio, args.video, args.output, options)
    report = {
        "engine": result.engine,
        "frames": result.frames,
        "seconds": round(time.monotonic() - started, 2),
        "loaded_peak_rss_mib": round(loaded_mib, 1),
        "peak_rss_mib": round(peak_mib(), 1),
    }
    print(json.dumps(report))
    return 0


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


if __name__ == "__main__":
    sys.exit(main())
