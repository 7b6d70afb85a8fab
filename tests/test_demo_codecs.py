"""The demo codecs: exact inverses, the documented latent layout and timing, normalisation."""

import math

import pytest
import torch

from instructav2av.demo.codecs import DemoAudioCodec, DemoVideoCodec, mdct_basis


def _video(b=2, t=17, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, t, h, w, generator=g) * 2 - 1


def _wave(b=2, n=17000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, n, generator=g) * 2 - 1) * 0.9


# ----------------------------------------------------------------------------- video


def test_video_shapes_follow_wan_geometry():
    codec = DemoVideoCodec()
    z = codec.encode(_video())
    assert z.shape == (2, 48, 5, 16, 16)  # 17 frames -> 1 + 16/4 latent frames, x2 space
    assert codec.latent_shape(121, 64, 96) == (48, 31, 32, 48) and codec.video_frames(31) == 121
    assert codec.encode(_video(t=1)).shape == (2, 48, 1, 16, 16)


def test_video_round_trip_is_exact():
    codec = DemoVideoCodec()
    video = _video()
    assert (codec.decode(codec.encode(video)) - video).abs().max() <= 1e-6


def test_video_channel_layout_is_rgb_dt_dy_dx():
    codec = DemoVideoCodec()
    video = torch.zeros(1, 3, 9, 8, 8)
    # colour 2, frame 6 = latent frame 2 at dt = 1 (frames 5..8), pixel (y=5, x=2) = cell (2, 1) at dy=1, dx=0
    video[0, 2, 6, 5, 2] = 1.0
    z = codec.encode(video)
    nz = z.nonzero().tolist()
    assert nz == [[0, ((2 * 4 + 1) * 2 + 1) * 2 + 0, 2, 2, 1]]


def test_video_first_frame_is_repeated_and_averaged_back():
    codec = DemoVideoCodec()
    z = codec.encode(_video(b=1))
    first_group = z[:, :, 0].reshape(1, 3, 4, 2, 2, 16, 16)
    assert torch.equal(first_group, first_group[:, :, :1].expand_as(first_group))
    # decode averages the four copies: perturbing one copy moves frame 0 by a quarter
    z2 = z.clone()
    z2[:, 0, 0] += 1.0  # colour 0, dt 0, dy 0, dx 0 of the first latent frame
    diff = codec.decode(z2) - codec.decode(z)
    assert torch.allclose(diff[0, 0, 0, 0::2, 0::2], torch.full((16, 16), 0.25))
    assert diff[:, :, 1:].abs().max() == 0


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 16, 32, 32), "1 \\+ 4k"),
        ((1, 3, 17, 31, 32), "even"),
        ((1, 4, 17, 32, 32), "\\[B, 3, T, H, W\\]"),
    ],
)
def test_video_bad_geometry_is_explained(shape, message):
    with pytest.raises(ValueError, match=message):
        DemoVideoCodec().encode(torch.zeros(shape))


def test_video_rejects_nan_and_wrong_latents():
    codec = DemoVideoCodec()
    video = _video(b=1)
    video[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(video)
    with pytest.raises(ValueError, match="48"):
        codec.decode(torch.zeros(1, 20, 5, 16, 16))


def test_video_normalisation_fit_gives_unit_scale_and_stays_exact():
    codec = DemoVideoCodec()
    data = [_video(seed=s) * 0.3 + 0.2 for s in range(3)]
    codec.fit(data)
    z = codec.encode(torch.cat(data))
    assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-4
    assert (z.std(dim=(0, 2, 3, 4)) - 1).abs().max() < 1e-3
    assert (codec.decode(z) - torch.cat(data)).abs().max() <= 1e-6
    assert set(codec.state_dict()) == {"norm.mean", "norm.std"}


# ----------------------------------------------------------------------------- audio


def test_audio_shapes_and_rate():
    codec = DemoAudioCodec()
    z = codec.encode(_wave())
    assert z.shape == (2, 69, 250)  # 17,000 samples = 68 hops -> 69 latents
    assert codec.latents_per_second == 64 and codec.samples_per_latent == 250
    assert codec.num_latents(17000) == 69 and codec.num_samples(69) == 17000
    assert codec.decode(z).shape == (2, 17000)


def test_audio_round_trip_is_exact():
    codec = DemoAudioCodec()
    wave = _wave()
    assert (codec.decode(codec.encode(wave)) - wave).abs().max() <= 2e-6
    # a length that is not a multiple of the hop: zero-padded, cropped back on request
    odd = _wave(n=4321)
    assert (codec.decode(codec.encode(odd), num_samples=4321) - odd).abs().max() <= 2e-6


def test_audio_transform_is_orthogonal():
    codec = DemoAudioCodec()
    wave = _wave()
    z = codec.encode(wave)
    assert torch.allclose(z.square().sum(), wave.square().sum(), rtol=1e-5)  # Parseval
    # the lapped-orthogonality (TDAC) conditions on the two halves of the basis
    b0, b1 = mdct_basis(8, torch.float64).split(8)
    eye = torch.eye(8, dtype=torch.float64)
    assert torch.allclose(b0 @ b0.T + b1 @ b1.T, eye) and torch.allclose(b0.T @ b0 + b1.T @ b1, eye)
    assert torch.allclose(b0 @ b1.T, torch.zeros_like(eye), atol=1e-12)


def test_audio_latents_are_local_in_time():
    codec = DemoAudioCodec()
    wave = torch.zeros(1, 17000)
    wave[0, 3 * 250 + 40] = 1.0  # inside hop block 3: seen by latents 3 and 4 only
    energy = codec.encode(wave).square().sum(-1)[0]
    assert energy.nonzero().flatten().tolist() == [3, 4]


def test_audio_bins_map_to_frequency():
    codec = DemoAudioCodec()
    k = 40
    freq = (k + 0.5) * 16000 / (2 * 250)  # 1,296 Hz
    t = torch.arange(17000) / 16000
    z = codec.encode(torch.sin(2 * math.pi * freq * t)[None])
    assert int(z[0, 2:-2].square().sum(0).argmax()) == k


def test_audio_normalisation_keeps_zero_mean():
    codec = DemoAudioCodec()
    g = torch.Generator().manual_seed(1)
    # a low-pass signal: high bins get a tiny std, clamped to the floor
    waves = [torch.cumsum(torch.randn(2, 17000, generator=g), -1) * 1e-3 for _ in range(2)]
    codec.fit(waves)
    assert torch.equal(codec.norm.mean, torch.zeros(250))
    assert torch.isclose(codec.norm.std.min(), 1e-3 * codec.norm.std.max(), rtol=1e-5)  # the floor is in use
    z = codec.encode(torch.cat(waves))
    assert (codec.decode(z) - torch.cat(waves)).abs().max() <= 1e-5
    assert torch.allclose(codec.decode(torch.zeros(1, 10, 250)), torch.zeros(1, 2250))
    assert set(codec.state_dict()) == {"norm.mean", "norm.std"}  # the basis is derived, not saved


def test_audio_bad_input_is_explained():
    codec = DemoAudioCodec()
    with pytest.raises(ValueError, match="\\[B, N\\]"):
        codec.encode(torch.zeros(17000))
    with pytest.raises(ValueError, match="NaN"):
        codec.encode(torch.full((1, 100), float("inf")))
    with pytest.raises(ValueError, match="250"):
        codec.decode(torch.zeros(1, 69, 20))
    with pytest.raises(ValueError, match="at most"):
        codec.decode(torch.zeros(1, 3, 250), num_samples=1000)


def test_bf16_round_trip_is_close():
    # bounds from the measured error: the video path only rearranges values, so its error is the
    # input's bf16 rounding (measured 1.95e-3, half a bf16 step at 1.0 is 3.9e-3); the audio MDCT
    # accumulates in bf16 (measured 9.3e-3 at |x| <= 0.9), bound at about twice that
    video = _video(b=1)
    assert (
        DemoVideoCodec().decode(DemoVideoCodec().encode(video.bfloat16())).float() - video
    ).abs().max() <= 2**-8
    wave = _wave(b=1)
    out = DemoAudioCodec().decode(DemoAudioCodec().encode(wave.bfloat16())).float()
    assert (out - wave).abs().max() < 2e-2
