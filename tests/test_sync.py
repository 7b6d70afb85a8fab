"""Audio-video sync through conforming, held to what the media contract promises.

The contract (docs/design-decisions.md, "Media contract"): output frame k shows the source frame
on screen at ``start + (k + 0.5) / fps`` and output audio sample 0 plays at ``start``. So:

- the audio is placed exactly: a click at source time t lands at ``t - start`` (checked to
  1 ms, the width of the resampler's edge; measured 0 to 0.06 ms);
- the flash frame lands exactly where the rule puts it (checked as an equality);
- hence, for sources at or above the output frame rate, the click and the start of the frame
  showing the flash are less than half an output frame apart.

Sources at 44.1 and 48 kHz with start offsets and 25 / 30 fps rates, as real recordings are;
the audio is PCM (in Matroska) so that no codec delay blurs the measurement. The click and the
flash start together in the source.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media_fixtures import click_time, make_video

from instructav2av.media import ClipSpec, conform, load_clip, read_clip, write_clip

CASES = [  # (source fps, source sample rate, flash frame, start s, output fps)
    (24, 16000, 30, 0.0, 24),
    (24, 44100, 30, 0.5, 24),
    (25, 48000, 31, 0.52, 24),
    (30, 48000, 40, 0.5, 24),
    (30, 44100, 37, 0.37, 24),
    (30, 48000, 40, 0.25, 30),
    (25, 44100, 35, 0.6, 25),
]
OUT_RATE = 16000
AUDIO_TOL = 1e-3


def _flash_frame(video: torch.Tensor) -> int:
    """Brightest output frame of a [3, T, H, W] clip in -1..1 (the flash)."""
    return int(video.mean(dim=(0, 2, 3)).argmax())


def _expected_frame(flash: int, src_fps: float, start: float, out_fps: float) -> int:
    """The output frame whose middle falls while the source flash frame is on screen."""
    ks = [k for k in range(1000) if flash / src_fps <= start + (k + 0.5) / out_fps < (flash + 1) / src_fps]
    assert len(ks) == 1, "a flash frame shorter than an output frame is not a valid case"
    return ks[0]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sync")
    return {case: make_video(d / f"{case[0]}fps_{case[1]}hz.mkv", fps=case[0], seconds=3.0, sample_rate=case[1],
                             flash_frame=case[2], audio_codec="pcm_s16le", size=(32, 32))
            for case in {c[:3] for c in CASES}}


def _check(out, src_fps, flash, start, out_fps):
    click = click_time(out.audio.numpy(), OUT_RATE)
    expected_click = flash / src_fps - start
    assert click == pytest.approx(expected_click, abs=AUDIO_TOL), (
        f"audio placed {1000 * (click - expected_click):+.1f} ms from where the source puts it"
    )
    k = _flash_frame(out.video)
    assert k == _expected_frame(flash, src_fps, start, out_fps)
    offset = click - k / out_fps
    assert abs(offset) <= 0.5 / out_fps + AUDIO_TOL, f"A/V offset {1000 * offset:+.1f} ms > half a frame"


@pytest.mark.parametrize("src_fps, rate, flash, start, out_fps", CASES)
def test_conform_keeps_sync_within_half_a_frame(sources, src_fps, rate, flash, start, out_fps):
    clip = read_clip(sources[(src_fps, rate, flash)])
    assert clip.sample_rate == rate and clip.fps == src_fps
    spec = ClipSpec(fps=out_fps, num_frames=33, sample_rate=OUT_RATE, area=32 * 32)
    _check(conform(clip, spec, start=start), src_fps, flash, start, out_fps)


@pytest.mark.parametrize("src_fps, rate, flash, start, out_fps", CASES[1:4])
def test_windowed_load_keeps_sync(sources, src_fps, rate, flash, start, out_fps):
    """``load_clip`` reads only the window it needs (seeking) and must land on the same samples."""
    spec = ClipSpec(fps=out_fps, num_frames=33, sample_rate=OUT_RATE, area=32 * 32)
    out = load_clip(sources[(src_fps, rate, flash)], spec, start=start)
    _check(out, src_fps, flash, start, out_fps)


def test_written_clip_keeps_sync(sources, tmp_path):
    """Through the writer and back: the muxed file plays the click within half a frame of the flash."""
    src_fps, rate, flash, start, out_fps = CASES[3]
    spec = ClipSpec(fps=out_fps, num_frames=33, sample_rate=OUT_RATE, area=32 * 32)
    out = conform(read_clip(sources[(src_fps, rate, flash)]), spec, start=start)
    back = read_clip(write_clip(tmp_path / "synced.mp4", out.video, out.fps, out.audio, out.sample_rate))
    frames = back.frames.float().mean(dim=(1, 2, 3)).numpy()
    k = int(np.argmax(frames))
    click = click_time(back.audio[0].numpy(), back.sample_rate)
    assert k == _expected_frame(flash, src_fps, start, out_fps)
    assert abs(click - k / out_fps) <= 0.5 / out_fps, f"A/V offset {1000 * (click - k / out_fps):+.1f} ms"


def test_comfyui_inputs_keep_sync():
    """IMAGE + AUDIO as ComfyUI's video loaders deliver them (25 fps, 48 kHz), conformed and handed back."""
    from instructav2av.media import clip_from_comfy, conformed_to_comfy

    src_fps, rate, flash, start, out_fps = 25, 48000, 31, 0.52, 24
    images = torch.full((75, 32, 32, 3), 0.2)
    images[flash] = 1.0
    t = torch.arange(3 * rate) / rate
    wave = 0.3 * torch.sin(2 * torch.pi * 440 * t)
    at = round(flash / src_fps * rate)
    wave[at : at + rate // 500] = 0.95
    clip = clip_from_comfy(images, {"waveform": wave[None, None], "sample_rate": rate}, float(src_fps))
    spec = ClipSpec(fps=out_fps, num_frames=33, sample_rate=OUT_RATE, area=32 * 32)
    out = conform(clip, spec, start=start)
    _check(out, src_fps, flash, start, out_fps)
    image, audio, fps = conformed_to_comfy(out)
    k = int(image.mean(dim=(1, 2, 3)).argmax())
    click = click_time(audio["waveform"][0, 0].numpy(), audio["sample_rate"])
    assert fps == out_fps and k == _expected_frame(flash, src_fps, start, out_fps)
    assert abs(click - k / out_fps) <= 0.5 / out_fps


def test_stereo_is_averaged_to_mono_without_a_shift():
    """A click in one channel only lands at half its amplitude, at its time, in the mono track."""
    from instructav2av.media.video_io import Clip

    rate, fps = 48000, 25
    frames = torch.zeros(50, 32, 32, 3, dtype=torch.uint8)
    audio = torch.zeros(2, 2 * rate)
    audio[0] = 0.3 * torch.sin(2 * torch.pi * 440 * torch.arange(2 * rate) / rate)
    audio[1, rate : rate + 96] = 0.9  # the right channel alone clicks at 1.0 s
    clip = Clip(frames=frames, fps=fps, audio=audio, sample_rate=rate, has_audio=True)
    out = conform(clip, ClipSpec(fps=24, num_frames=33, sample_rate=OUT_RATE, area=32 * 32), start=0.25)
    i = int(np.argmax(out.audio.numpy()))
    assert i / OUT_RATE == pytest.approx(0.75, abs=AUDIO_TOL)
    # left tone 0.3 * sin + right 0.9 -> mean (0.3 sin + 0.9) / 2 in [0.3, 0.6]
    assert 0.3 <= float(out.audio.max()) <= 0.62
    assert float(out.audio[: int(0.7 * OUT_RATE)].abs().max()) == pytest.approx(0.15, abs=0.01)


def test_edit_in_windows_keeps_sync_across_the_joins(monkeypatch):
    """ComfyUI graph, 'all windows', from start_seconds, at denoise 0 (the source through the exact demo
    codecs): a flash and click in the third window come out within half a frame of each other."""
    from test_nodes import node, tiny_bundle

    from instructav2av.editing import bundle as bundle_module

    monkeypatch.setitem(bundle_module._LOADERS, "demo", tiny_bundle)
    model, vvae, avae, te = node("InstructAV2AVDemoLoader").load("fp32")
    src_fps, rate, flash, start, out_fps = 25, 48000, 41, 0.3, 16  # the test model runs at 16 fps, 16 kHz
    images = torch.full((60, 32, 32, 3), 0.2)
    images[flash] = 0.9
    t = torch.arange(round(60 / src_fps * rate)) / rate
    wave = 0.2 * torch.sin(2 * torch.pi * 440 * t)
    at = round(flash / src_fps * rate)
    wave[at : at + rate // 500] = 0.95
    audio = {"waveform": wave[None, None], "sample_rate": rate}
    (instr,) = node("InstructAV2AVInstructionEncode").encode(te, "keep it", "", "")
    (src,) = node("InstructAV2AVSourceEncode").encode(model, vvae, avae, images, float(src_fps), "crop",
                                                      "all windows", start, audio)
    assert len(src.windows) >= 3  # 2.1 s from 0.3 s in windows of 9 frames at 16 fps
    (latents,) = node("InstructAV2AVSampler").sample(model, instr, src, 0, 2, shift=5.0, solver="euler",
                                                     video_instruction_scale=1.0, video_source_scale=1.0,
                                                     audio_instruction_scale=1.0, audio_source_scale=1.0,
                                                     slg_layers="auto", denoise=0.0)
    out_images, out_audio, fps = node("InstructAV2AVDecode").decode(latents, vvae, avae)
    assert fps == out_fps and out_audio["sample_rate"] == OUT_RATE
    k = int(out_images.mean(dim=(1, 2, 3)).argmax())
    click = click_time(out_audio["waveform"][0, 0].numpy(), OUT_RATE)
    assert click == pytest.approx(flash / src_fps - start, abs=AUDIO_TOL)
    assert k == _expected_frame(flash, src_fps, start, out_fps) and k >= 18  # in the third window
    assert abs(click - k / out_fps) <= 0.5 / out_fps, f"A/V offset {1000 * (click - k / out_fps):+.1f} ms"
