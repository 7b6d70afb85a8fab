"""FlowEdit on a base (plain Ovi) model and the preservation mask of both samplers (CPU, seconds)."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
from tiny_models import random_model

from instructav2av.demo.codecs import DemoVideoCodec
from instructav2av.evaluation.metrics import psnr
from instructav2av.models.configs import get_preset
from instructav2av.samplers import EditGuidance, SamplingCancelled, sample
from instructav2av.samplers.flowedit import FlowEditSettings, flowedit
from instructav2av.samplers.masks import (
    PreserveMask,
    audio_latent_mask,
    build_preserve_mask,
    parse_time_ranges,
    video_latent_mask,
)

STEPS = 6


@pytest.fixture(scope="module")
def config():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def base(config):
    return random_model(config, editor=False, seed=1)


@pytest.fixture(scope="module")
def editor(config):
    return random_model(config, editor=True, seed=2)


@pytest.fixture(scope="module")
def clip(config):
    """A source clip (pixels in [-1, 1]) and its exact demo-codec video latent, plus an audio latent."""
    g = torch.Generator().manual_seed(0)
    frames = 1 + 4 * (config.video_latent_frames - 1)
    video = torch.rand(1, 3, frames, 16, 16, generator=g) * 2 - 1
    codec = DemoVideoCodec()
    latent = codec.encode(video)
    audio = torch.randn(1, config.audio_latents, config.audio.in_dim, generator=g)
    return video, latent, audio, codec


def texts(config, n=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 4, config.video.text_dim, generator=g) for _ in range(n)]


def run(base, clip, config, *, same=False, **kw):
    src, tar, neg = texts(config)
    _, latent, audio, _ = clip
    args = dict(video_source=latent, audio_source=audio, source_context=src, target_context=src if same else tar,
                video_negative=neg, audio_negative=neg, steps=STEPS, shift=5.0, seed=3,
                settings=FlowEditSettings(video_n_max=4, audio_n_max=4))
    args.update(kw)
    return flowedit(base, **args)


def test_identical_descriptions_return_the_source(base, clip, config):
    video, latent, audio, codec = clip
    v, a = run(base, clip, config, same=True)
    # The two passes see the same input and text: their difference is zero up to float rounding.
    assert (v - latent).abs().max() < 1e-4 and (a - audio).abs().max() < 1e-4
    assert psnr(codec.decode(v).clamp(-1, 1), video) > 60.0  # the exact demo codec: float rounding only
    # Different descriptions do change it (so the test above can fail).
    v2, a2 = run(base, clip, config)
    assert (v2 - latent).abs().max() > 1e-2 and (a2 - audio).abs().max() > 1e-2


def test_edit_audio_only_keeps_the_video_latent_bit_identical(base, clip, config):
    _, latent, audio, _ = clip
    v, a = run(base, clip, config, edit="audio")
    assert torch.equal(v, latent)
    assert (a - audio).abs().max() > 1e-2
    v, a = run(base, clip, config, edit="video")
    assert torch.equal(a, audio) and (v - latent).abs().max() > 1e-2


def test_n_min_tail_samples_ordinarily_and_batching_and_seed(base, clip, config):
    settings = FlowEditSettings(video_n_max=5, video_n_min=2, audio_n_max=4, audio_n_min=1)
    v1, a1 = run(base, clip, config, settings=settings)
    v2, a2 = run(base, clip, config, settings=settings, batch_guidance=False)
    torch.testing.assert_close(v1, v2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a1, a2, atol=1e-4, rtol=1e-4)
    v3, _ = run(base, clip, config, settings=settings, seed=4)
    assert (v3 - v1).abs().max() > 1e-3
    v4, _ = run(base, clip, config, settings=dataclasses.replace(settings, video_n_min=0))
    assert (v4 - v1).abs().max() > 1e-3  # the tail of ordinary sampling changes the result


def test_progress_preview_and_cancel(base, clip, config):
    seen = []
    run(base, clip, config, callback=lambda i, n, v, a: seen.append((i, n, v is not None, a is not None)))
    assert seen == [(i, 4, True, True) for i in range(1, 5)]  # n_max = 4 editing steps, nothing before
    calls = iter(range(100))
    with pytest.raises(SamplingCancelled) as exc:
        run(base, clip, config, should_cancel=lambda: next(calls) >= 2)
    assert (exc.value.step, exc.value.total) == (2, 4)


def test_mask_fences_the_edit_flowedit(base, clip, config):
    video, latent, audio, codec = clip
    pixel_mask = torch.zeros(video.shape[2], 16, 16)
    pixel_mask[:, :, :8] = 1.0  # edit the left half only
    mask = build_preserve_mask(video_mask=pixel_mask, video_latent=latent, audio_ranges=[(0.0, 0.2)],
                               audio_latent=audio, duration=0.5, feather=1)
    v, a = run(base, clip, config, preserve=mask)
    out = codec.decode(v).clamp(-1, 1)
    outside = torch.zeros_like(video, dtype=torch.bool)
    outside[..., 8:] = True
    assert torch.equal(v[..., 4:], latent[..., 4:])  # latent cells outside: the source, exactly
    assert psnr(out[outside], video[outside]) > 60.0  # the codec's ceiling (exact codec: rounding only)
    assert psnr(out[~outside], video[~outside]) < 40.0  # the edit did happen inside
    a_mask = mask.audio[0, :, 0]
    assert torch.equal(a[:, a_mask == 0], audio[:, a_mask == 0]) and (a[:, a_mask > 0] - audio[:, a_mask > 0]).abs().max() > 1e-2


def test_mask_fences_the_edit_editor_sampler(editor, clip, config):
    _, latent, audio, _ = clip
    ctx, neg, _ = texts(config)
    mask = PreserveMask(video=video_latent_mask(torch.ones(1, 4, 4).tril(), latent.shape[2:], num_frames=9,
                                                temporal_factor=4, feather=0))
    kw = dict(video_source=latent, audio_source=audio, video_context=ctx, audio_context=ctx, video_negative=neg,
              audio_negative=neg, steps=STEPS, guidance=EditGuidance(), seed=1)
    free_v, _ = sample(editor, **kw)
    v, a = sample(editor, preserve=mask, **kw)
    keep = (mask.video == 0).expand_as(latent)
    assert torch.equal(v[keep], latent[keep])
    assert (free_v[keep] - latent[keep]).abs().max() > 1e-2  # without the mask they change
    assert (v[~keep] - latent[~keep]).abs().max() > 1e-2


def test_mask_resizing_feathering_and_ranges(caplog):
    with caplog.at_level(logging.INFO, logger="instructav2av.samplers.masks"):
        m = video_latent_mask(torch.ones(5, 32, 32), (3, 4, 4), num_frames=9, temporal_factor=4, feather=0)
    assert m.shape == (1, 1, 3, 4, 4) and torch.equal(m, torch.ones_like(m))
    assert "5 frames, the clip 9" in caplog.text and "pooled to the 4x4 latent grid" in caplog.text
    # Only pixel frame 5 marked: latent frame 2 covers pixel frames 5..8, frame 1 covers 1..4.
    px = torch.zeros(9, 8, 8)
    px[5, 0, 0] = 1
    m = video_latent_mask(px, (3, 4, 4), num_frames=9, temporal_factor=4, feather=0)[0, 0]
    assert m[2, 0, 0] == 1 and m.sum() == 1
    # Feathering softens inside the mask only.
    block = torch.zeros(16, 16)
    block[4:12, 4:12] = 1
    f = video_latent_mask(block, (1, 16, 16), num_frames=1, temporal_factor=4, feather=2)[0, 0, 0]
    assert torch.equal(f[block == 0], torch.zeros_like(f[block == 0]))
    assert f[8, 8] == 1 and 0 < f[4, 4] < 1
    assert parse_time_ranges("0.5-1.5, 3 to 4") == [(0.5, 1.5), (3.0, 4.0)]
    a = audio_latent_mask([(0.25, 0.5)], 8, 1.0, feather=0)[0, :, 0]
    assert a.tolist() == [0, 0, 1, 1, 0, 0, 0, 0]


def test_bad_input(base, editor, clip, config):
    _, latent, audio, _ = clip
    with pytest.raises(ValueError, match="n_min .* must be smaller"):
        run(base, clip, config, settings=FlowEditSettings(video_n_max=3, video_n_min=3))
    with pytest.raises(ValueError, match="editor mode"):
        run(editor, clip, config)
    ctx, neg, _ = texts(config)
    with pytest.raises(ValueError, match="base mode"):
        sample(base, video_source=latent, audio_source=audio, video_context=ctx, audio_context=ctx,
               video_negative=neg, audio_negative=neg, steps=2)
    with pytest.raises(ValueError, match="all zeros: nothing can change"):
        build_preserve_mask(video_mask=torch.zeros(9, 16, 16), video_latent=latent)
    with pytest.raises(ValueError, match="all zeros: nothing can change"):
        build_preserve_mask(audio_ranges=[(5.0, 6.0)], audio_latent=audio, duration=0.5)
    with pytest.raises(ValueError, match="does not fit"):
        run(base, clip, config, preserve=PreserveMask(video=torch.ones(1, 1, 2, 2, 2)))
    with pytest.raises(ValueError, match="START-END"):
        parse_time_ranges("soon")
    with pytest.raises(ValueError, match="start < end"):
        audio_latent_mask([(2.0, 1.0)], 8, 3.0)
    with pytest.raises(ValueError, match="edit must be one of"):
        run(base, clip, config, edit="picture")
