"""Media I/O: read -> conform -> write -> read back, retiming, alignment, ComfyUI types, bad input."""

from __future__ import annotations

import logging
import os
from fractions import Fraction

import numpy as np
import pytest
import torch
from media_fixtures import (
    click_time,
    make_audio_only,
    make_empty_video,
    make_video,
    pattern_frame,
    peak_frequency,
    square_x,
    tone,
    truncated_copy,
)

from instructav2av.media import (
    Clip,
    ClipSpec,
    MediaError,
    choose_size,
    clip_from_comfy,
    comfy_audio_to_wave,
    conform,
    conformed_to_comfy,
    image_to_video_tensor,
    load_clip,
    read_clip,
    target_audio_samples,
    video_io,
    video_tensor_to_image,
    wave_to_comfy_audio,
    write_clip,
)
from instructav2av.media import conforming as conform_module
from instructav2av.models.configs import PRESETS

SPEC = ClipSpec(fps=24, num_frames=33, sample_rate=16000, area=64 * 64)  # 1.375 s
FLASH = 24  # frame (at 24 fps) / 1.0 s: flash frame and audio click


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    vfr_ms, t = [], 0
    for i in range(40):  # alternating 30 / 50 ms intervals
        vfr_ms.append(t)
        t += 30 if i % 2 == 0 else 50
    return {
        "24": make_video(d / "a24.mp4", flash_frame=FLASH),
        "30": make_video(d / "b30.mp4", fps=30, flash_frame=30),
        "vfr": make_video(d / "vfr.mp4", timestamps_ms=vfr_ms),
        "vfr_ms": vfr_ms,
        "noaudio": make_video(d / "noaudio.mp4", audio=False, seconds=1.5),
        "faststart": make_video(d / "fs.mp4", faststart=True),
        "dir": d,
    }


def _video_frames_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in -1..1 -> uint8 [T, H, W, 3]."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def _flash_index(frames: np.ndarray) -> int:
    return int(np.argmax(frames.reshape(len(frames), -1).mean(1)))


# ----------------------------------------------------------------------------------- reading


def test_read_known_pattern(files):
    clip = read_clip(files["24"])
    assert clip.num_frames == 48 and clip.fps == 24 and clip.timestamps is None
    assert clip.frames.dtype == torch.uint8 and tuple(clip.frames.shape[1:]) == (64, 64, 3)
    assert clip.sample_rate == 16000 and clip.audio.shape == (1, 32000) and clip.has_audio
    assert clip.duration == pytest.approx(2.0)
    xs = [square_x(f) for i, f in enumerate(clip.frames.numpy()) if i != FLASH]
    expected = [i for i in range(48) if i != FLASH]
    assert np.abs(np.array(xs) - expected).max() < 0.5  # 1 px per frame, every frame in order
    audio = clip.audio[0].numpy()
    assert peak_frequency(audio, 16000) == pytest.approx(440, rel=0.01)
    assert abs(click_time(audio, 16000) - _flash_index(clip.frames.numpy()) / 24) <= 0.5 / 24  # half a frame (the contract)


def test_read_window_seeks_and_aligns(files):
    clip = read_clip(files["24"], start=0.75, duration=0.5)
    assert clip.num_frames == 12 and clip.start == pytest.approx(0.75)
    assert square_x(clip.frames[0].numpy()) == pytest.approx(18, abs=0.5)
    assert clip.audio.shape == (1, 8000)
    # the click at 1.0 s sits 0.25 s into the window, where the flash frame is
    assert click_time(clip.audio[0].numpy(), 16000) == pytest.approx(0.25, abs=0.5 / 24)  # half a frame (the contract)
    assert _flash_index(clip.frames.numpy()) == FLASH - 18
    assert read_clip(files["24"], max_frames=5).num_frames == 5
    assert read_clip(files["24"], duration=0.001).num_frames == 1  # a window always holds a frame


def test_window_reading_stops_before_damage(files, tmp_path):
    broken = truncated_copy(files["faststart"], tmp_path / "cut.mp4", 0.6)
    with pytest.raises(MediaError, match="truncated or damaged"):
        read_clip(broken)
    clip = read_clip(broken, max_frames=6)  # streaming: never reaches the damaged tail
    assert clip.num_frames == 6


def test_variable_frame_rate_is_retimed_by_timestamps(files, caplog):
    with caplog.at_level(logging.WARNING):
        clip = read_clip(files["vfr"])
    assert "variable frame rate" in caplog.text
    ms = np.array(files["vfr_ms"])
    assert clip.timestamps is not None and np.allclose(clip.timestamps.numpy(), ms / 1000, atol=1e-6)
    spec = ClipSpec(fps=24, num_frames=29, sample_rate=16000, area=64 * 64)
    out = conform(clip, spec)
    frames = _video_frames_uint8(out.video)
    for k in range(spec.num_frames):  # the source frame on screen at the middle of each output frame
        expected = np.searchsorted(ms / 1000, (k + 0.5) / 24, side="right") - 1
        assert square_x(frames[k]) == pytest.approx(expected, abs=0.5), k


def test_display_rotation_is_applied(tmp_path):
    path = make_video(tmp_path / "rot.mp4", seconds=0.25, size=(32, 64), rotation=90)
    clip = read_clip(path)
    assert tuple(clip.frames.shape[1:3]) == (64, 32)  # portrait after rotation
    expected = np.rot90(pattern_frame(0, 32, 64), 1)  # counter-clockwise, as the display matrix says
    assert np.abs(clip.frames[0].numpy().astype(int) - expected).mean() < 4


def test_many_channels_high_rate_are_downmixed_and_resampled(tmp_path, caplog):
    path = make_video(tmp_path / "surround.mkv", seconds=1.0, sample_rate=96000, channels=8, audio_codec="pcm_s16le")
    clip = read_clip(path)
    assert clip.audio.shape == (8, 96000) and clip.sample_rate == 96000
    spec = ClipSpec(fps=24, num_frames=21, sample_rate=16000, area=64 * 64)
    with caplog.at_level(logging.INFO):
        out = conform(clip, spec)
    assert "downmixing 8 audio channels" in caplog.text and "96000 to 16000" in caplog.text
    assert out.audio.shape == (target_audio_samples(21, 24, 16000),)
    assert peak_frequency(out.audio.numpy(), 16000) == pytest.approx(440, rel=0.01)
    assert float(out.audio.abs().max()) == pytest.approx(0.3, abs=0.02)


# ------------------------------------------------------------------------------ conforming


def test_round_trip_exact_counts_tone_and_sync(files, tmp_path):
    out = conform(read_clip(files["24"]), SPEC)
    assert out.video.shape == (3, 33, 64, 64) and out.video.dtype == torch.float32
    assert float(out.video.min()) >= -1 and float(out.video.max()) <= 1
    assert out.audio.shape == (SPEC.audio_samples,) == (22000,)
    assert out.valid_frames == 33 and out.valid_samples == 22000
    written = write_clip(tmp_path / "rt.mp4", out.video, out.fps, out.audio, out.sample_rate)
    back = read_clip(written)
    assert back.num_frames == 33 and back.fps == 24 and back.sample_rate == 16000
    assert back.duration == pytest.approx(33 / 24) and back.audio.shape == (1, 22000)
    audio = back.audio[0].numpy()
    assert peak_frequency(audio, 16000) == pytest.approx(440, rel=0.01)
    flash = _flash_index(back.frames.numpy())
    assert flash == FLASH
    assert abs(click_time(audio, 16000) - flash / 24) <= 0.5 / 24  # half a frame (the contract)
    # pictures and sound survive the round trip; bounds about twice the measured error (H.264 at crf 18
    # on a flat pattern: mean 0.035, max 2 levels; AAC at 64 kbit/s: RMS error 0.0050 on a 0.215 RMS tone)
    err = (back.frames.float() - torch.from_numpy(_video_frames_uint8(out.video)).float()).abs()
    assert float(err.mean()) < 0.1 and float(err.max()) <= 4
    assert float((back.audio[0] - out.audio).square().mean().sqrt()) < 0.01


def test_30fps_source_is_retimed_to_24(files):
    out = conform(read_clip(files["30"]), SPEC)
    frames = _video_frames_uint8(out.video)
    assert out.fps == 24 and frames.shape[0] == 33
    for k in range(33):
        src = int((k + 0.5) * 30 / 24)
        if src != 30:
            assert square_x(frames[k]) == pytest.approx(src, abs=0.5), k
    flash_t = _flash_index(frames) / 24
    assert abs(flash_t - 1.0) <= 0.5 / 24  # half a frame (the contract)
    assert abs(click_time(out.audio.numpy(), 16000) - flash_t) <= 0.5 / 24  # half a frame (the contract)


def test_start_offset_trims_and_keeps_sync(files):
    out = conform(read_clip(files["24"]), ClipSpec(fps=24, num_frames=13, sample_rate=16000, area=64 * 64), start=0.5)
    frames = _video_frames_uint8(out.video)
    assert square_x(frames[0]) == pytest.approx(12, abs=0.5) and out.start == pytest.approx(0.5)
    assert _flash_index(frames) == FLASH - 12
    assert click_time(out.audio.numpy(), 16000) == pytest.approx(0.5, abs=0.5 / 24)  # half a frame (the contract)


def test_short_source_pads_or_errors(files, caplog):
    clip = read_clip(files["24"], max_frames=20)
    with caplog.at_level(logging.WARNING):
        out = conform(clip, SPEC)
    assert "repeating the last frame" in caplog.text
    assert out.valid_frames == 20 and out.video.shape[1] == 33
    assert torch.equal(out.video[:, 19], out.video[:, 32])
    assert out.valid_samples == target_audio_samples(20, 24, 16000)
    assert float(out.audio[out.valid_samples :].abs().max()) == 0.0
    with pytest.raises(MediaError, match="33"):
        conform(clip, SPEC, short="error")
    with pytest.raises(MediaError, match="start"):
        conform(clip, SPEC, start=5.0)


def test_no_audio_gives_silence_with_warning(files, caplog):
    clip = read_clip(files["noaudio"])
    assert not clip.has_audio
    with caplog.at_level(logging.WARNING):
        out = conform(clip, SPEC)
    assert "no audio" in caplog.text and out.audio.shape == (22000,) and float(out.audio.abs().max()) == 0


def test_fit_crop_and_pad(tmp_path):
    frames = torch.zeros(9, 36, 64, 3, dtype=torch.uint8)
    frames[:, :, :, 0] = 200  # red picture, 16:9
    clip = Clip(frames=frames, fps=Fraction(24), audio=torch.zeros(1, 6000), sample_rate=16000, has_audio=True)
    square = ClipSpec(fps=24, num_frames=9, sample_rate=16000, area=64 * 64, height=64, width=64)
    crop = conform(clip, square, fit="crop").video
    pad = conform(clip, square, fit="pad").video
    red = 200 / 127.5 - 1
    assert torch.allclose(crop[0], torch.full_like(crop[0], red), atol=1e-3)  # filled, no borders
    assert torch.all(pad[:, :, :10] == -1) and torch.all(pad[:, :, -10:] == -1)  # letterbox bars
    assert torch.allclose(pad[0, :, 20:44], torch.full_like(pad[0, :, 20:44], red), atol=1e-3)
    # automatic size follows the area and the aspect ratio
    assert conform(clip, PRESETS["tiny"]).video.shape == (3, 9, 32, 64)


def test_chunking_does_not_change_the_result(files, monkeypatch):
    clip = read_clip(files["30"])
    spec = ClipSpec(fps=24, num_frames=9, sample_rate=16000, area=64 * 64, height=32, width=32)
    whole = conform(clip, spec).video
    monkeypatch.setattr(conform_module, "CHUNK_BYTES", 1)  # one frame per chunk
    assert torch.equal(conform(clip, spec).video, whole)


def test_fast_uint8_resize_matches_float_resize():
    torch.manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 9, 16), size=(90, 160), mode="bilinear")[0]
    frames = (smooth.permute(1, 2, 0) * 255).round().to(torch.uint8)[None].repeat(5, 1, 1, 1)
    frames[:, 40:44] = 255  # a sharp edge
    spec = ClipSpec(fps=24, num_frames=5, sample_rate=16000, area=64 * 96, height=64, width=96)
    as_uint8 = conform(Clip(frames=frames, fps=24, audio=torch.zeros(1, 0), sample_rate=0, has_audio=False), spec)
    as_float = conform(Clip(frames=frames / 255, fps=24, audio=torch.zeros(1, 0), sample_rate=0, has_audio=False), spec)
    assert as_uint8.video.shape == (3, 5, 64, 96)
    diff = (as_uint8.video - as_float.video).abs() * 127.5  # in 8-bit levels
    assert float(diff.max()) <= 1.5 and float(diff.mean()) < 0.5


def test_audio_level_warnings(caplog):
    frames = torch.zeros(24, 32, 32, 3, dtype=torch.uint8)
    silent = Clip(frames=frames, fps=Fraction(24), audio=torch.zeros(1, 16000), sample_rate=16000, has_audio=True)
    spec = ClipSpec(fps=24, num_frames=21, sample_rate=16000, area=32 * 32)
    with caplog.at_level(logging.WARNING):
        conform(silent, spec)
    assert "silent" in caplog.text
    caplog.clear()
    loud = torch.from_numpy(np.clip(tone(1.0, 16000, amplitude=3.0), -1, 1))
    with caplog.at_level(logging.WARNING):
        conform(Clip(frames=frames, fps=Fraction(24), audio=loud, sample_rate=16000, has_audio=True), spec)
    assert "clipped" in caplog.text
    bad = torch.zeros(1, 16000)
    bad[0, 5] = float("nan")
    with pytest.raises(MediaError, match="NaN"):
        conform(Clip(frames=frames, fps=Fraction(24), audio=bad, sample_rate=16000, has_audio=True), spec)


def test_load_clip_reads_only_the_window(files):
    out = load_clip(files["30"], SPEC, start=0.5)
    assert out.video.shape == (3, 33, 64, 64) and out.valid_frames == 33
    assert square_x(_video_frames_uint8(out.video)[0]) == pytest.approx(int(0.5 * 30 + 0.5 * 30 / 24), abs=0.5)


def test_geometry_and_audio_length_helpers():
    assert choose_size(1080, 1920, 720 * 720) == (544, 960)
    assert choose_size(1920, 1080, 720 * 720) == (960, 544)
    assert choose_size(720, 720, 720 * 720) == (704, 704)
    assert choose_size(960, 960, 960 * 960) == (960, 960)
    for h, w in [(480, 640), (1080, 1920), (1280, 720), (500, 501), (360, 1280)]:
        H, W = choose_size(h, w, 720 * 720)
        assert H % 32 == 0 and W % 32 == 0
        assert abs(H * W / (720 * 720) - 1) < 0.1 and abs((W / H) / (w / h) - 1) < 0.1
    assert target_audio_samples(121, 24, 16000) == 80667  # 80,666.67 rounded
    assert target_audio_samples(241, 24, 16000) == 160667
    assert ClipSpec.from_config(PRESETS["ovi-720-5s"]).audio_samples == 80667
    with pytest.raises(MediaError, match="1 \\+ 4k"):
        ClipSpec(fps=24, num_frames=120, sample_rate=16000, area=720 * 720)
    with pytest.raises(MediaError, match="multiple of 32"):
        ClipSpec(fps=24, num_frames=121, sample_rate=16000, area=720 * 720, height=720, width=1280)


# ----------------------------------------------------------------------------------- writing


def test_write_never_overwrites(tmp_path):
    video = torch.from_numpy(np.stack([pattern_frame(i) for i in range(6)]))
    target = tmp_path / "out.mp4"
    target.write_bytes(b"user data")
    first = write_clip(target, video, 24, tone(0.25, 16000), 16000)
    second = write_clip(target, video, 24)
    assert (first.name, second.name) == ("out_001.mp4", "out_002.mp4")
    assert target.read_bytes() == b"user data"
    assert read_clip(second).has_audio is False and read_clip(first).num_frames == 6
    replaced = write_clip(target, video, 24, overwrite=True)
    assert replaced == target and read_clip(target).num_frames == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out_001.mp4", "out_002.mp4"]  # no temp files


def test_write_float_odd_size_and_fractional_rate(tmp_path):
    video = torch.rand(3, 5, 33, 47) * 2 - 1
    path = write_clip(tmp_path / "odd.mov", video, Fraction(30000, 1001), torch.zeros(2, 8000), 48000)
    clip = read_clip(path)
    assert tuple(clip.frames.shape) == (5, 34, 48, 3) and clip.fps == Fraction(30000, 1001)
    assert clip.audio.shape[0] == 2 and clip.sample_rate == 48000


def test_write_bad_input_fails_before_any_work(tmp_path):
    video = torch.zeros(4, 32, 32, 3, dtype=torch.uint8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_clip(tmp_path / "missing" / "x.mp4", video, 24)
    with pytest.raises(MediaError, match=".mp4"):
        write_clip(tmp_path / "x.gif", video, 24)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises((MediaError, FileNotFoundError), match="not a folder|does not exist"):
        write_clip(tmp_path / "file" / "x.mp4", video, 24)
    nan_video = torch.zeros(3, 4, 32, 32)
    nan_video[0, 2, 0, 0] = float("nan")
    with pytest.raises(MediaError, match="NaN"):
        write_clip(tmp_path / "x.mp4", nan_video, 24)
    with pytest.raises(MediaError, match="\\[T, H, W, 3\\]"):
        write_clip(tmp_path / "x.mp4", torch.zeros(4, 3, 32, 32, dtype=torch.uint8), 24)
    with pytest.raises(MediaError, match="AAC"):
        write_clip(tmp_path / "x.mp4", video, 24, torch.zeros(100), 12345)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_write_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            write_clip(folder / "x.mp4", torch.zeros(2, 32, 32, 3, dtype=torch.uint8), 24)
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------------- bad input


def test_unreadable_inputs_have_clear_errors(files, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(MediaError, match="cannot read"):
        read_clip(text)
    with pytest.raises(MediaError, match="cannot read"):
        read_clip(truncated_copy(files["24"], tmp_path / "cut.mp4", 0.6))  # index (moov) lost
    with pytest.raises(FileNotFoundError):
        read_clip(tmp_path / "nope.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty"):
        read_clip(tmp_path / "empty.mp4")
    with pytest.raises(MediaError, match="folder"):
        read_clip(tmp_path)
    with pytest.raises(MediaError, match="no video stream"):
        read_clip(make_audio_only(tmp_path / "song.m4a"))
    with pytest.raises(MediaError, match="no decodable frames"):
        read_clip(make_empty_video(tmp_path / "noframes.mkv"))
    with pytest.raises(MediaError, match="beyond the end"):
        read_clip(files["24"], start=10.0)


def test_frame_size_limit(files, monkeypatch):
    with pytest.raises(MediaError, match="0x64"):
        video_io.check_frame_size(0, 64)
    with pytest.raises(MediaError, match="15360x8640 exceeds the limit of 8192"):
        video_io.check_frame_size(15360, 8640)
    monkeypatch.setattr(video_io, "MAX_SIDE", 32)
    with pytest.raises(MediaError, match="64x64 exceeds"):
        read_clip(files["24"])


# ---------------------------------------------------------------------------------- ComfyUI


def test_image_conversions_round_trip():
    images = torch.rand(5, 16, 24, 3)
    video = image_to_video_tensor(images)
    assert video.shape == (3, 5, 16, 24)
    assert torch.allclose(video, images.permute(3, 0, 1, 2) * 2 - 1, atol=1e-6)
    back = video_tensor_to_image(video[None])
    assert back.shape == (5, 16, 24, 3) and back.is_contiguous()
    assert torch.allclose(back, images, atol=1e-6)
    rgba = torch.cat([images, torch.ones(5, 16, 24, 1)], -1)
    assert torch.equal(image_to_video_tensor(rgba), video)
    images[3, 2, 2, 1] = float("nan")
    with pytest.raises(MediaError, match="frames \\[3\\]"):
        image_to_video_tensor(images)
    with pytest.raises(MediaError, match="\\[frames, H, W, C\\]"):
        image_to_video_tensor(torch.rand(16, 24, 3))
    with pytest.raises(MediaError, match="empty"):
        image_to_video_tensor(torch.rand(0, 16, 24, 3))


def test_audio_conversions():
    stereo = torch.stack([torch.ones(100), torch.zeros(100)])[None]  # [1, 2, 100]
    wave, rate = comfy_audio_to_wave({"waveform": stereo, "sample_rate": 44100})
    assert rate == 44100 and wave.shape == (100,) and torch.allclose(wave, torch.full((100,), 0.5))
    audio = wave_to_comfy_audio(wave, 16000)
    assert audio["waveform"].shape == (1, 1, 100) and audio["sample_rate"] == 16000
    with pytest.raises(MediaError, match="waveform"):
        comfy_audio_to_wave({"samples": stereo, "sample_rate": 44100})
    with pytest.raises(MediaError, match="NaN"):
        comfy_audio_to_wave({"waveform": torch.full((1, 1, 10), float("nan")), "sample_rate": 16000})


def test_comfy_inputs_conform_like_files(files, caplog):
    clip = read_clip(files["24"])
    images = clip.frames.float() / 255  # as ComfyUI's LoadVideo gives them
    audio = {"waveform": clip.audio[None], "sample_rate": clip.sample_rate}
    from_comfy = clip_from_comfy(images, audio, 24.0)
    assert from_comfy.frames.data_ptr() == images.data_ptr()  # referenced, not copied
    a, b = conform(clip, SPEC), conform(from_comfy, SPEC)
    assert torch.allclose(a.video, b.video, atol=1e-5) and torch.allclose(a.audio, b.audio, atol=1e-6)
    image, comfy_audio, fps = conformed_to_comfy(b)
    assert image.shape == (33, 64, 64, 3) and comfy_audio["waveform"].shape == (1, 1, 22000) and fps == 24.0

    short_audio = {"waveform": clip.audio[None, :, :16000], "sample_rate": 16000}
    with caplog.at_level(logging.WARNING):
        out = conform(clip_from_comfy(images, short_audio, 24), SPEC)
    assert "padded with silence" in caplog.text
    assert float(out.audio[16100:].abs().max()) == 0 and float(out.audio[:15900].abs().max()) > 0.2

    images[7, 0, 0, 0] = float("nan")
    with pytest.raises(MediaError, match="NaN"):
        conform(clip_from_comfy(images, None, 24), SPEC)
