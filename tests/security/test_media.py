"""Issue 12, findings 2, 3 and 4: media files that try to hurt the host.

2. An uploaded playlist (.m3u8) or concat list names a file outside every allowed folder, and
   ffmpeg would decode it into the result.
3. A small PNG declares 12000 x 12000 pixels; decoding it would take gigabytes.
4. A Matroska file written as a stream declares no duration, so the header check passes it.

Each test first shows that plain ffmpeg/ffprobe does what the attack needs (so the file really is
an attack), then that heygem refuses it with one line, for the face and for the audio input.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from heygem.engine.audio import load_audio
from heygem.engine.media.decode import read_frames
from heygem.engine.media.guard import MediaLimits
from heygem.engine.media.image import decode_image
from heygem.engine.media.probe import probe
from heygem.engine.pipeline import LipSyncPipeline
from heygem.errors import LimitExceededError, UnsupportedMediaError
from heygem.jobs.records import JobStatus
from heygem.jobs.service import JobService
from heygem.jobs.tenancy import LOCAL
from tests import media
from tests.kit import wait_until

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
BIG_SIDE = 12000
BIG_PNG_MAX_BYTES = 1_000_000  # the attack is a small upload
RSS_CEILING_MB = 150  # unrestricted, ffprobe alone peaks near 190 MB on this file, OpenCV at 870 MB
SHORT_LIMIT_S = 2.0
STREAM_S = 6.0


def _ffprobe_plain(path: Path) -> dict:
    """What ffprobe makes of a file with no restrictions: the attacker's view."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True, check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


@pytest.fixture
def secret(tmp_path) -> Path:
    """A media file outside every allowed folder (the data folder's inputs are the only root)."""
    folder = tmp_path / "private"
    folder.mkdir()
    path = folder / "secret.ts"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x64:rate=10:duration=2",
         "-f", "lavfi", "-i", "sine=duration=2", "-c:v", "libx264", "-c:a", "aac", "-f", "mpegts",
         str(path)],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture
def uploads(settings) -> Path:
    settings.inputs_dir.mkdir(parents=True, exist_ok=True)
    return settings.inputs_dir


def _playlist(folder: Path, name: str, entry: str) -> Path:
    path = folder / name
    path.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{entry}\n#EXT-X-ENDLIST\n")
    return path


@pytest.fixture
def attacks(uploads, secret) -> dict[str, Path]:
    """The three ways to name another file: an absolute URL, a relative path, a concat list."""
    relative = Path("..", "..", *secret.parts[-2:])  # from <data>/inputs to tmp/private/secret.ts
    concat = uploads / "list.mp4"  # any name: ffmpeg goes by content
    concat.write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    return {
        "absolute": _playlist(uploads, "abs.m3u8", f"file://{secret}"),
        "relative": _playlist(uploads, "rel.m3u8", str(relative)),
        "disguised": _playlist(uploads, "clip.mp4", f"file://{secret}"),
        "concat": concat,
    }


@pytest.fixture
def engine(settings) -> LipSyncPipeline:
    return LipSyncPipeline(settings.replace(engine="preview", max_duration_s=SHORT_LIMIT_S))


def test_plain_ffprobe_follows_the_playlist_to_the_other_file(attacks):
    # The attack is real: unrestricted, ffmpeg finds the secret file's streams behind the playlist.
    found = _ffprobe_plain(attacks["absolute"])
    assert found["format"]["format_name"] == "hls"
    assert {s["codec_type"] for s in found["streams"]} == {"video", "audio"}
    assert _ffprobe_plain(attacks["relative"])["streams"]


@pytest.mark.parametrize("kind", ["absolute", "relative", "disguised", "concat"])
def test_a_file_that_names_other_files_is_refused_as_face_and_as_audio(
    kind, attacks, engine, speech_wav, face_video, tmp_path
):
    attack = attacks[kind]
    what = "a concat list" if kind == "concat" else "an HLS playlist"
    expected = f"{attack.name} is {what}, which names other files; give one audio, video or picture file"
    with pytest.raises(UnsupportedMediaError) as as_face:
        engine.run(speech_wav, attack, tmp_path / "out-face.mp4")
    with pytest.raises(UnsupportedMediaError) as as_audio:
        engine.run(attack, face_video, tmp_path / "out-audio.mp4")
    assert str(as_face.value) == expected
    assert str(as_audio.value) == expected
    assert not list(tmp_path.glob("out-*.mp4"))


def test_every_reader_refuses_the_playlist(attacks):
    attack = attacks["absolute"]
    for read in (probe, load_audio, decode_image):
        with pytest.raises(UnsupportedMediaError, match="HLS playlist"):
            read(attack)


@pytest.mark.slow
def test_a_queued_job_with_a_playlist_fails_once_with_one_line(settings, attacks, speech_wav):
    audio = settings.inputs_dir / "speech.wav"
    audio.write_bytes(speech_wav.read_bytes())
    service = JobService(settings.replace(engine="preview"))  # the built-in engine, in its process
    service.start()
    try:
        wait_until(lambda: service.readiness()[0], 60.0, message="the engine to load")
        job = service.submit(str(audio), str(attacks["absolute"]), principal=LOCAL)
        done = service.wait(job.id, 60.0, principal=LOCAL)
    finally:
        service.stop(drain_seconds=5)
    assert done.status == JobStatus.FAILED and done.attempts == 1  # bad input: no retry
    assert done.error == (
        "abs.m3u8 is an HLS playlist, which names other files; give one audio, video or picture file"
    )


def _flat_png(path: Path, side: int) -> Path:
    """A side x side PNG of one colour, written directly: a one-bit palette picture whose pixel
    data compresses to almost nothing, though every decoder expands it to side * side pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 1, 3, 0, 0, 0)  # 1 bit per pixel, palette
    rows = (b"\x00" + bytes((side + 7) // 8)) * side  # filter byte, then all pixels index 0
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"PLTE", bytes((200, 120, 40)))
    path.write_bytes(png + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def big_png(uploads) -> Path:
    return _flat_png(uploads / "huge.png", BIG_SIDE)


@pytest.mark.slow
def test_a_small_png_of_huge_size_is_refused_before_decoding(big_png, engine, speech_wav, tmp_path):
    assert big_png.stat().st_size < BIG_PNG_MAX_BYTES
    assert _ffprobe_plain(big_png)["streams"][0]["width"] == BIG_SIDE  # a real picture of that size
    expected = "huge.png is 12000x12000 pixels; the limit is 8,294,400 pixels (width x height)"
    with pytest.raises(LimitExceededError) as refused:
        engine.run(speech_wav, big_png, tmp_path / "out.mp4")
    assert str(refused.value) == expected
    # OpenCV is never handed the file: the size is checked first.
    with pytest.raises(LimitExceededError):
        decode_image(big_png)
    # The limit is a setting: a larger one lets the same picture through the probe's size check.
    with pytest.raises(LimitExceededError, match="limit is 100 pixels"):
        probe(big_png, limits=MediaLimits(max_pixels=100))


def test_refusing_the_huge_png_keeps_memory_small(big_png):
    # In a fresh process, so the peak memory measured is this refusal's (with its ffprobe's).
    # VmHWM is the process's own peak; ru_maxrss of a process would include its parent's at fork.
    script = (
        "import re, resource, sys\n"
        "from heygem.engine.media.probe import probe\n"
        "from heygem.errors import LimitExceededError\n"
        "try:\n"
        "    probe(sys.argv[1])\n"
        "except LimitExceededError:\n"
        "    pass\n"
        "else:\n"
        "    sys.exit('accepted')\n"
        "own = int(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "tools = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(max(own, tools) // 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(big_png)], cwd=PROJECT_DIR, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert int(result.stdout) < RSS_CEILING_MB


@pytest.fixture
def endless_stream(uploads) -> Path:
    """STREAM_S seconds of video and audio written as a Matroska stream: no duration in it."""
    path = uploads / "stream.mkv"
    with open(path, "wb") as out:
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
             f"testsrc=size=64x64:rate=10:duration={STREAM_S}", "-f", "lavfi", "-i",
             f"sine=duration={STREAM_S}", "-c:v", "libx264", "-c:a", "flac", "-f", "matroska",
             "pipe:1"],
            stdout=out, check=True,
        )  # fmt: skip
    return path


@pytest.mark.slow
def test_a_stream_without_a_declared_duration_is_refused_while_decoding(
    endless_stream, engine, speech_wav, face_video, tmp_path
):
    assert _ffprobe_plain(endless_stream)["format"].get("duration") is None  # the header is silent
    expected = f"stream.mkv is longer than the limit of {SHORT_LIMIT_S:.0f} s (found while decoding it)"
    with pytest.raises(LimitExceededError) as as_audio:
        engine.run(endless_stream, face_video, tmp_path / "out-audio.mp4")
    assert str(as_audio.value) == expected
    # As the face (with a short audio): the frames are counted while detection reads them.
    tone = media.make_tone(tmp_path / "tone.wav", seconds=1.0)
    with pytest.raises(LimitExceededError) as as_face:
        engine.run(tone, endless_stream, tmp_path / "out-face.mp4")
    assert str(as_face.value) == expected
    # The reader itself stops past the limit.
    info = probe(endless_stream, limits=MediaLimits(max_duration_s=SHORT_LIMIT_S))
    assert info.duration_s == 0.0
    with pytest.raises(LimitExceededError):
        for _ in read_frames(endless_stream, info):
            pass
    # Within the limit the same file reads whole.
    assert len(load_audio(endless_stream, max_duration_s=STREAM_S + 1)) == STREAM_S * 16000


def test_a_picture_named_like_a_sequence_is_read_as_that_one_file(uploads):
    # image2 would read "frame%d.png" as frame1.png, frame2.png...: files the job never named.
    import cv2

    cv2.imwrite(str(uploads / "frame1.png"), np.full((32, 48, 3), 255, np.uint8))
    named = uploads / "frame%d.png"
    cv2.imwrite(str(named), np.zeros((16, 16, 3), np.uint8))
    info = probe(named)
    assert info.is_image and info.size == (16, 16)
    assert decode_image(named).max() == 0


@pytest.mark.parametrize("kind", ["absolute", "relative", "disguised", "concat"])
def test_the_ui_speech_check_never_reads_the_file_a_playlist_names(kind, attacks, speech_wav):
    """The Single tab checks the speech (length, loudness) as soon as it is uploaded, a video's
    sound track included: a playlist or concat list must not lead that check to another file."""
    from heygem.errors import MediaProcessError
    from heygem.web.media import speech_level

    seconds, level = speech_level(speech_wav, 600.0)  # the check does read real speech
    assert seconds > 0.5 and level > 0
    with pytest.raises(MediaProcessError, match="has no readable audio"):
        speech_level(attacks[kind], 600.0)


def test_the_ui_speech_check_decodes_no_more_than_the_duration_limit(tmp_path, monkeypatch):
    """A file whose header hides its length (raw ADTS/MP3 streams declare none) must not be decoded
    whole into memory by the upload check: it stops just past the limit and refuses the file."""
    from heygem.errors import LimitExceededError
    from heygem.web import media as web_media

    decoded: list[int] = []
    real_run = subprocess.run

    def measured_run(*args, **kwargs):
        result = real_run(*args, **kwargs)
        decoded.append(len(result.stdout))
        return result

    long_stream = media.make_tone(tmp_path / "long.aac", 20.0)
    monkeypatch.setattr(web_media.subprocess, "run", measured_run)
    with pytest.raises(LimitExceededError, match="longer than the limit of 3 s"):
        web_media.speech_level(long_stream, 3.0)
    assert decoded[-1] <= (3 + web_media.PAST_LIMIT_S) * web_media.SPEECH_RATE * web_media.SPEECH_SAMPLE_BYTES
    speech_level = web_media.speech_level
    seconds, _level = speech_level(long_stream, 30.0)
    assert seconds == pytest.approx(20.0, abs=0.2)
