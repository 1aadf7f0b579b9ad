"""heygem.engine.media against real ffmpeg: probe, streaming reads, the muxing writer, duration schedules."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from heygem.engine.media import decode, encode, probe, schedule
from heygem.errors import MediaProcessError, UnsupportedMediaError
from heygem.settings import Settings
from tests import media

GRAY_STEP = 20  # frame i of an "indexed" video is flat gray 20*i: survives H.264 within a few levels


def _encode(path: Path, frames, width: int, height: int, fps: float = 25, extra: list[str] = ()) -> Path:
    return media.write_video(path, frames, fps, size=(width, height), crf=10, output_args=extra)


def _indexed_frames(count: int, width: int = 64, height: int = 48):
    for i in range(count):
        yield np.full((height, width, 3), GRAY_STEP * i % 256, np.uint8)


def _index_of(frame: np.ndarray) -> int:
    return int(round(float(frame.mean()) / GRAY_STEP))


@pytest.fixture(scope="module")
def indexed_video(tmp_path_factory) -> Path:
    """Five flat frames, gray 0, 20, 40, 60, 80: each frame says which source frame it is."""
    return _encode(tmp_path_factory.mktemp("indexed") / "indexed.mp4", _indexed_frames(5), 64, 48)


@pytest.fixture(scope="module")
def rotated_video(tmp_path_factory) -> Path:
    """64x32 coded, left half white, with rotation metadata of 90 degrees."""
    folder = tmp_path_factory.mktemp("rotated")
    frame = np.zeros((32, 64, 3), np.uint8)
    frame[:, :32] = 255
    plain = _encode(folder / "plain.mp4", [frame] * 5, 64, 32)
    rotated = folder / "rotated.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-i",
            str(plain),
            "-c",
            "copy",
            "-metadata:s:v",
            "rotate=90",
            str(rotated),
        ],
        check=True,
    )
    return rotated


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory) -> Path:
    """21 indexed frames at 25 fps, except frame 10 which is held for a whole second (VFR)."""
    path = tmp_path_factory.mktemp("vfr") / "vfr.mp4"
    frames = (np.full((48, 64, 3), 10 * i, np.uint8) for i in range(21))
    hold = ["-vf", "setpts='(N+if(gt(N,10),24,0))/25/TB'", "-fps_mode", "vfr"]
    return _encode(path, frames, 64, 48, extra=hold)


# --- probe ---------------------------------------------------------------------------------------


def test_probe_describes_the_fixture_video(face_video):
    info = probe.probe(face_video)
    assert (info.width, info.height) == (256, 256)
    assert info.fps == pytest.approx(25.0)
    assert info.fps_text == "25/1"
    assert info.frame_count == 50
    assert info.duration_s == pytest.approx(2.0, abs=0.05)
    assert (info.has_video, info.has_audio, info.is_image, info.codec) == (True, False, False, "h264")


def test_probe_recognises_images_by_content_not_dots(face_image, tmp_path):
    info = probe.probe(face_image)  # face.PNG: upper-case extension
    assert info.is_image and info.size == (256, 256) and info.frame_count == 1

    dotted = tmp_path / "v1.2" / "my.face.JPG"
    dotted.parent.mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "tmp.jpg"), media.astronaut_bgr(64))
    (tmp_path / "tmp.jpg").rename(dotted)
    assert probe.probe(dotted).is_image

    disguised = tmp_path / "photo.mp4"  # a PNG under a video name is still a picture
    disguised.write_bytes(face_image.read_bytes())
    assert probe.probe(disguised).is_image


def test_probe_and_read_apply_rotation(rotated_video):
    info = probe.probe(rotated_video)
    assert info.rotation in (90, 270)
    assert info.size == (32, 64)
    frames = list(decode.read_frames(rotated_video, info))
    assert len(frames) == 5
    frame = frames[0]
    assert frame.shape == (64, 32, 3)
    # The white left half of the coded picture ends up as the top or bottom half after turning.
    top, bottom = frame[:28].mean(), frame[36:].mean()
    assert abs(top - bottom) > 200


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda d: d / "missing.mp4", id="missing"),
        pytest.param(lambda d: _write(d / "notes.mp4", b"some text, not a video\n" * 20), id="text"),
        pytest.param(lambda d: _write(d / "noise.mp4", np.random.default_rng(0).bytes(999)), id="noise"),
        pytest.param(lambda d: _write(d / "photo.jpg", b"text posing as a jpeg\n"), id="fake-jpg"),
        pytest.param(lambda d: media.make_tone(d / "voice.wav", 0.5), id="audio-only"),
    ],
)
def test_probe_refuses_bad_face_files(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(UnsupportedMediaError) as caught:
        probe.probe(path)
    message = str(caught.value)
    assert path.name in message and "\n" not in message


def test_probe_refuses_a_truncated_video(face_video, tmp_path):
    moov_first = tmp_path / "faststart.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-y",
            "-loglevel",
            "error",
            "-i",
            str(face_video),
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            str(moov_first),
        ],
        check=True,
    )
    data = moov_first.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 8])  # the header survives, the pictures do not
    with pytest.raises(UnsupportedMediaError, match="cut.mp4"):
        probe.probe(cut)


def test_audio_only_is_described_when_video_is_not_required(tmp_path):
    info = probe.probe(media.make_tone(tmp_path / "tone.m4a", 0.5), require_video=False)
    assert info.has_audio and not info.has_video


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- reading -------------------------------------------------------------------------------------


def test_vfr_is_read_at_a_constant_rate(vfr_video):
    info = probe.probe(vfr_video)
    assert info.duration_s == pytest.approx(1.8, abs=0.05)
    assert info.fps == pytest.approx(21 / 1.8, rel=0.05)  # the average rate, not the 25 fps tick
    frames = list(decode.read_frames(vfr_video, info, fps=25))
    assert len(frames) == 45  # 1.8 s at 25 fps
    levels = [round(float(f.mean()) / 10) for f in frames]
    assert levels[:10] == list(range(10))
    assert levels.count(10) == 25  # the held frame is repeated for its whole second
    assert levels[-1] == 20


def test_read_frames_downscales_to_even_sides(face_video):
    frames = list(decode.read_frames(face_video, probe.probe(face_video), max_side=101))
    assert len(frames) == 50 and frames[0].shape == (100, 100, 3)
    assert decode.scaled_size(1920, 1080, 640) == (640, 360)
    assert decode.scaled_size(1080, 1920, 641) == (360, 640)
    assert decode.scaled_size(300, 200, 640) == (300, 200)


def test_still_image_yields_one_writable_frame(face_image):
    frames = list(decode.read_frames(face_image, probe.probe(face_image)))
    assert len(frames) == 1 and frames[0].shape == (256, 256, 3)
    np.testing.assert_array_equal(frames[0], media.astronaut_bgr())


def test_closing_the_reader_early_stops_ffmpeg(face_video, monkeypatch):
    started = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    info = probe.probe(face_video)
    monkeypatch.setattr(decode.subprocess, "Popen", recording_popen)
    frames = decode.read_frames(face_video, info)
    first = next(frames)
    assert first.shape == (256, 256, 3) and first.flags.writeable
    assert len(started) == 1 and started[0].poll() is None
    frames.close()
    assert started[0].poll() is not None


# --- writing -------------------------------------------------------------------------------------


def test_writer_makes_h264_aac_with_even_size(tmp_path, speech_wav):
    output = tmp_path / "out" / "result.mp4"
    frames = list(media.moving_frames(50, side=101))
    odd = [f[:, :101][:75] for f in frames]  # 101 x 75: both sides odd
    with encode.FrameWriter(output, 101, 75, 25.0, speech_wav) as writer:
        for frame in odd:
            writer.write(frame)
    streams = media.probe(output)["streams"]
    v = next(s for s in streams if s["codec_type"] == "video")
    a = next(s for s in streams if s["codec_type"] == "audio")
    assert (v["codec_name"], v["pix_fmt"], v["width"], v["height"]) == ("h264", "yuv420p", 102, 76)
    assert a["codec_name"] == "aac"
    # -shortest: 2 s of frames, ~4 s of speech -> the file ends with the frames.
    assert media.duration_of(output) == pytest.approx(2.0, abs=0.15)
    decoded = media.read_frames(output)
    assert len(decoded) == 50
    # The padding repeats the last column/row instead of adding a black line.
    assert abs(float(decoded[10][:, 101].mean()) - float(decoded[10][:, 100].mean())) < 8
    assert list(tmp_path.joinpath("out").iterdir()) == [output]


def test_writer_ends_with_the_audio_when_it_is_shorter(tmp_path):
    tone = media.make_tone(tmp_path / "tone.wav", 1.0)
    output = tmp_path / "short.mp4"
    with encode.FrameWriter(output, 64, 48, 25, tone) as writer:
        for frame in _indexed_frames(75):  # 3 s of frames
            writer.write(frame)
    assert media.duration_of(output) == pytest.approx(1.0, abs=0.15)


def test_writer_leaves_nothing_when_the_caller_fails(tmp_path, speech_wav):
    output = tmp_path / "result.mp4"
    with pytest.raises(RuntimeError, match="model exploded"):
        with encode.FrameWriter(output, 64, 48, 25, speech_wav) as writer:
            for i, frame in enumerate(_indexed_frames(30)):
                writer.write(frame)
                if i == 20:
                    raise RuntimeError("model exploded")
    assert list(tmp_path.iterdir()) == []


def test_writer_reports_ffmpeg_failure_with_its_stderr(tmp_path):
    bogus_audio = _write(tmp_path / "voice.wav", b"this is not audio\n")
    output = tmp_path / "result.mp4"
    with pytest.raises(MediaProcessError) as caught:
        with encode.FrameWriter(output, 64, 48, 25, bogus_audio) as writer:
            for frame in _indexed_frames(10):
                writer.write(frame)
    assert "result.mp4" in str(caught.value) and "Invalid data" in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["voice.wav"]


def test_writer_burns_the_label_into_the_bottom_right(tmp_path):
    plain = np.full((120, 160, 3), 90, np.uint8)
    output = tmp_path / "labelled.mp4"
    with encode.FrameWriter(output, 160, 120, 25, label="AI generated") as writer:
        for _ in range(5):
            writer.write(plain)
    assert (plain == 90).all()  # the caller's frame is not drawn on
    frame = media.read_frames(output)[0].astype(int)
    changed = np.abs(frame - 90).max(axis=2) > 40
    rows, cols = np.nonzero(changed)
    assert rows.size > 20
    assert rows.min() > 120 * 0.75 and cols.min() > 160 * 0.3  # text only in the bottom-right corner


def test_writer_rejects_frames_of_the_wrong_size(tmp_path):
    with pytest.raises(ValueError):
        with encode.FrameWriter(tmp_path / "x.mp4", 64, 48, 25) as writer:
            writer.write(np.zeros((48, 65, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


# --- choosing the encoder ------------------------------------------------------------------------

FAILING_ENCODER = "h264_heygem_fails"  # listed by the fake `ffmpeg -encoders`, unknown to real ffmpeg


@pytest.fixture
def fresh_encoder_probes():
    """The per-process probe caches, emptied around a test (held here: tests patch the names)."""
    caches = (encode.ffmpeg_encoders, encode.encoder_problem)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


def _x264_options(path: Path) -> str:
    """The options x264 writes into the stream as plain text (its SEI): they reveal the preset."""
    data = path.read_bytes()
    start = data.index(b"x264 - core")
    return data[start : data.index(b"\x00", start)].decode("ascii", "replace")


def test_the_real_ffmpeg_lists_libx264():
    assert encode.LIBX264 in encode.ffmpeg_encoders()
    assert encode.encoder_problem(encode.LIBX264) == ""


def test_auto_is_libx264_on_cpu_and_nvenc_on_cuda_when_it_opens(monkeypatch, fresh_encoder_probes):
    monkeypatch.setattr(encode, "ffmpeg_encoders", lambda: frozenset({encode.LIBX264, encode.NVENC}))
    monkeypatch.setattr(encode, "encoder_problem", lambda name: "")
    assert encode.choose_encoder("auto", "cpu") == encode.LIBX264
    assert encode.choose_encoder("auto", "cuda:1") == encode.NVENC
    assert encode.choose_encoder("libx264", "cuda") == encode.LIBX264
    monkeypatch.setattr(encode, "ffmpeg_encoders", lambda: frozenset({encode.LIBX264}))
    assert encode.choose_encoder("auto", "cuda") == encode.LIBX264  # this ffmpeg has no NVENC


def test_an_encoder_that_fails_to_open_falls_back_to_libx264(monkeypatch, caplog, fresh_encoder_probes):
    """auto on a GPU host picks NVENC; here "NVENC" is a name real ffmpeg cannot open."""
    monkeypatch.setattr(encode, "ffmpeg_encoders", lambda: frozenset({encode.LIBX264, FAILING_ENCODER}))
    monkeypatch.setattr(encode, "NVENC", FAILING_ENCODER)
    with caplog.at_level("WARNING", logger="heygem.engine.media.encode"):
        assert encode.choose_encoder("auto", "cuda:0") == encode.LIBX264
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and FAILING_ENCODER in warnings[0] and "libx264" in warnings[0]
    assert "\n" not in warnings[0] and "Unknown encoder" in warnings[0]


def test_an_encoder_this_ffmpeg_lacks_falls_back_without_trying_it(caplog, fresh_encoder_probes):
    with caplog.at_level("WARNING", logger="heygem.engine.media.encode"):
        assert encode.choose_encoder("h264_not_built_in", "cuda") == encode.LIBX264
    assert "does not have it" in caplog.text


def test_nvenc_gets_constant_quality_arguments():
    args = encode.video_codec_args(encode.NVENC, "veryfast", 20)
    assert args[:2] == ["-c:v", "h264_nvenc"] and "-cq" in args and "veryfast" not in args
    assert encode.video_codec_args(encode.LIBX264, "slow", 18) == [
        "-c:v", "libx264", "-preset", "slow", "-crf", "18", "-x264-params", "sync-lookahead=0",
    ]  # fmt: skip


def test_writer_uses_veryfast_by_default_and_the_preset_it_is_given(tmp_path):
    fast, medium = tmp_path / "fast.mp4", tmp_path / "medium.mp4"
    for output, kwargs in ((fast, {}), (medium, {"preset": "medium"})):
        with encode.FrameWriter(output, 64, 48, 25, **kwargs) as writer:
            for frame in media.moving_frames(5, side=64):
                writer.write(np.ascontiguousarray(frame[:48]))
    assert "subme=2" in _x264_options(fast)  # veryfast's sub-pixel refinement level
    assert "subme=7" in _x264_options(medium)


def test_encoding_and_detection_settings_come_from_environment_and_flags():
    env = {"HEYGEM_X264_PRESET": "faster", "HEYGEM_VIDEO_ENCODER": "h264_nvenc", "HEYGEM_DETECT_EVERY": "3"}
    settings = Settings.load(env, ["--x264-preset", "medium", "--detect-every", "4"])
    assert (settings.x264_preset, settings.video_encoder, settings.detect_every) == (
        "medium",
        "h264_nvenc",
        4,
    )
    assert (Settings().x264_preset, Settings().video_encoder, Settings().detect_every)[:2] == (
        "veryfast",
        "auto",
    )


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"x264_preset": "ludicrous"}, "x264_preset must be one of ultrafast"),
        ({"video_encoder": "h264_vaapi"}, "video_encoder must be one of auto, libx264, h264_nvenc"),
        ({"detect_every": 0}, "detect_every must be at least 1"),
    ],
)
def test_bad_encoding_and_detection_settings_are_one_line(changes, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        Settings().replace(**changes)


# --- schedules -----------------------------------------------------------------------------------


def test_schedules():
    assert list(schedule.frame_index_schedule(7, 3, "loop")) == [0, 1, 2, 0, 1, 2, 0]
    assert list(schedule.frame_index_schedule(10, 4, "pingpong")) == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert list(schedule.frame_index_schedule(5, 2, "pingpong")) == [0, 1, 0, 1, 0]
    assert list(schedule.frame_index_schedule(3, 1, "pingpong")) == [0, 0, 0]
    assert list(schedule.frame_index_schedule(2, 5, "loop")) == [0, 1]
    with pytest.raises(ValueError):
        list(schedule.frame_index_schedule(3, 3, "bounce"))


@pytest.mark.parametrize("policy", ["loop", "pingpong"])
def test_scheduled_frames_stream_the_schedule(indexed_video, tmp_path, policy):
    info = probe.probe(indexed_video)
    scratch = tmp_path / "scratch"
    got = list(schedule.scheduled_frames(indexed_video, info, 13, policy, scratch))
    expected = list(schedule.frame_index_schedule(13, 5, policy))
    assert [index for index, _ in got] == expected
    assert [_index_of(frame) for _, frame in got] == expected
    assert not scratch.exists() or list(scratch.iterdir()) == []  # the spool is gone


def test_pingpong_replays_the_frames_as_decoded_even_when_the_consumer_drew_on_them(indexed_video, tmp_path):
    info = probe.probe(indexed_video)
    got = []
    for index, frame in schedule.scheduled_frames(indexed_video, info, 9, "pingpong", tmp_path):
        got.append((index, _index_of(frame)))
        frame[:] = 0  # the renderer pastes into the frames it is handed
    assert got == [(i, i) for i in (0, 1, 2, 3, 4, 3, 2, 1, 0)]


def test_pingpong_spool_is_removed_when_closed_early(indexed_video, tmp_path):
    info = probe.probe(indexed_video)
    frames = schedule.scheduled_frames(indexed_video, info, 20, "pingpong", tmp_path)
    taken = [next(frames) for _ in range(7)]
    assert [i for i, _ in taken] == [0, 1, 2, 3, 4, 3, 2]
    assert len(list(tmp_path.iterdir())) == 1
    frames.close()
    assert list(tmp_path.iterdir()) == []


def test_pingpong_recovers_from_a_wrong_length_hint(indexed_video, tmp_path):
    info = probe.probe(indexed_video)
    got = list(schedule.scheduled_frames(indexed_video, info, 9, "pingpong", tmp_path, n_src=50))
    assert [_index_of(f) for _, f in got] == [0, 1, 2, 3, 4, 3, 2, 1, 0]


def test_scheduled_still_repeats_one_read_only_frame(face_image, tmp_path):
    info = probe.probe(face_image)
    got = list(schedule.scheduled_frames(face_image, info, 4, "pingpong", tmp_path))
    assert [i for i, _ in got] == [0, 0, 0, 0]
    assert all(f is got[0][1] for _, f in got) and not got[0][1].flags.writeable


# --- frame buffers -------------------------------------------------------------------------------


def test_a_frame_buffer_is_reused_only_once_nothing_refers_to_it():
    buffers = decode.FrameBuffers(12, keep=2)
    frame = np.frombuffer(buffers.take(), np.uint8).reshape(2, 2, 3)
    first = id(_buffer_of(frame))
    view = frame[1:]
    del frame
    other = np.frombuffer(buffers.take(), np.uint8)
    assert id(_buffer_of(other)) != first  # a view of the first frame is still alive
    del view
    again = np.frombuffer(buffers.take(), np.uint8)
    assert id(_buffer_of(again)) == first
    extra = np.frombuffer(buffers.take(), np.uint8)  # both kept buffers in use: a new one
    assert id(_buffer_of(extra)) not in (first, id(_buffer_of(other)))
    del again, extra
    assert id(buffers.take()) == first


def test_decoded_frames_stay_intact_while_held_though_buffers_are_recycled(indexed_video):
    info = probe.probe(indexed_video)
    held = []
    for frame in decode.read_frames(indexed_video, info):
        held.append((frame, _index_of(frame)))
        if len(held) > 2:
            held.pop(0)  # the consumer lets go of old frames: their buffers are reused
        assert all(_index_of(f) == index for f, index in held)


def _buffer_of(array: np.ndarray) -> object:
    """The bytes object a decoded frame's memory belongs to."""
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base
