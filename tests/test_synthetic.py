"""The synthetic editing domain: determinism, and that every edit's ground truth is what it says."""

import math

import pytest
import torch

from instructav2av.data.synthetic import (
    DEFAULT_SOUND,
    EDIT_TYPES,
    HELD_OUT_START,
    PALETTE,
    SOUNDS,
    SynthConfig,
    SyntheticAVEditDataset,
    collate_samples,
    make_sample,
)
from instructav2av.demo.recipe import fit_demo_codecs

N_PER_TYPE = 6


def _samples(edit: str, n: int = N_PER_TYPE):
    cfg = SynthConfig(edit_types=(edit,))
    return [make_sample(i, seed=3, config=cfg) for i in range(n)]


def _rgb(color: str) -> torch.Tensor:
    return torch.tensor(PALETTE[color]).view(3, 1) * 2 - 1


def _band_energy(audio: torch.Tensor, sound: str, events, sr: int = 16000) -> float:
    """Energy of ``audio`` in the sound's band during its events (rfft over each event window)."""
    lo, hi = SOUNDS[sound].band
    total = 0.0
    for e in events:
        seg = audio[round(e.time * sr) : round((e.time + e.duration) * sr)]
        spec = torch.fft.rfft(seg * torch.hann_window(seg.numel()))
        freqs = torch.fft.rfftfreq(seg.numel(), 1 / sr)
        total += float(spec.abs().square()[(freqs >= lo) & (freqs <= hi)].sum())
    return total


def _assert_equal_samples(a, b):
    for name in ("source_video", "target_video", "source_audio", "target_audio"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.instruction == b.instruction
    assert a.meta.source_object == b.meta.source_object and a.meta.target_object == b.meta.target_object
    assert torch.equal(a.meta.edit_mask, b.meta.edit_mask)


def test_same_seed_and_index_give_identical_samples():
    _assert_equal_samples(make_sample(7, seed=1), make_sample(7, seed=1))
    other = [make_sample(7, seed=2), make_sample(8, seed=1)]
    assert all(not torch.equal(o.source_video, make_sample(7, seed=1).source_video) for o in other)


def test_held_out_split_uses_its_own_index_range():
    train = SyntheticAVEditDataset(4, split="train", seed=5)
    held = SyntheticAVEditDataset(4, split="heldout", seed=5)
    _assert_equal_samples(train[2], make_sample(2, seed=5))
    _assert_equal_samples(held[2], make_sample(HELD_OUT_START + 2, seed=5))
    assert not torch.equal(train[2].source_video, held[2].source_video)
    with pytest.raises(IndexError):
        train[4]
    with pytest.raises(ValueError, match="split"):
        SyntheticAVEditDataset(4, split="test")


def test_geometry_and_value_ranges():
    s = make_sample(0)
    assert s.source_video.shape == s.target_video.shape == (3, 17, 32, 32)
    assert s.source_audio.shape == s.target_audio.shape == (17000,)
    for x in (s.source_video, s.target_video):
        assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert s.source_audio.abs().max() < 1
    big = make_sample(0, config=SynthConfig(size=48, num_frames=25, fps=24))
    assert big.source_video.shape == (3, 25, 48, 48) and big.source_audio.shape == (round(25 / 24 * 16000),)


def test_all_edit_types_are_drawn():
    seen = {make_sample(i).meta.edit_type for i in range(60)}
    assert seen == set(EDIT_TYPES)


@pytest.mark.parametrize("edit", EDIT_TYPES)
def test_ground_truth_is_consistent(edit):
    for s in _samples(edit):
        m = s.meta
        assert m.edit_type == edit
        # outside the edit mask the target is the source, bit for bit
        keep = ~m.edit_mask
        assert torch.equal(s.target_video[:, keep], s.source_video[:, keep])
        # each soundtrack is the rest plus the edited object's own sound
        assert torch.allclose(s.source_audio, m.rest_audio + m.source_object_audio, atol=1e-6)
        assert torch.allclose(s.target_audio, m.rest_audio + m.target_object_audio, atol=1e-6)
        # the rest of the picture is what remains without the edited object
        outside = (m.source_alpha == 0) & (m.target_alpha == 0)
        assert torch.equal(m.rest_video[:, outside], s.target_video[:, outside])
        # objects in a clip are told apart by shape, colour and sound
        for objs in ([*m.context_objects, m.source_object], [*m.context_objects, m.target_object]):
            objs = [o for o in objs if o is not None]
            for attr in ("shape", "color", "sound"):
                assert len({getattr(o, attr) for o in objs}) == len(objs)
        # sounds start exactly at the sounding wall contacts, inside the clip
        obj = m.target_object or m.source_object
        onsets = [e.time for e in m.motion_events if e.sounding]
        events = m.target_events if m.target_object is not None else m.source_events
        assert [e.time for e in events] == onsets and 0 < min(onsets) and max(onsets) < 17 / 16
        assert all(e.sound == obj.sound for e in events)


def test_remove_leaves_no_colour_and_no_sound():
    for s in _samples("remove"):
        m = s.meta
        obj = m.source_object
        assert m.target_object is None and m.target_alpha.sum() == 0 and not m.target_events
        core = m.source_alpha >= 0.999
        assert (s.source_video[:, core] - _rgb(obj.color)).norm(dim=0).max() < 0.02  # it was there
        region = m.source_alpha >= 0.5
        assert (s.target_video[:, region] - _rgb(obj.color)).norm(dim=0).min() > 0.5  # no pixel of it remains
        # at its pitch, during its sounds, only the ambience is left
        source, target, rest = (
            _band_energy(x, obj.sound, m.source_events)
            for x in (s.source_audio, s.target_audio, m.rest_audio)
        )
        assert target == rest and source > 10 * rest
        assert obj.name in s.instruction


def test_insert_adds_the_object_with_its_default_sound():
    for s in _samples("insert"):
        m = s.meta
        obj = m.target_object
        assert m.source_object is None and obj.sound == DEFAULT_SOUND[obj.shape]
        core = m.target_alpha >= 0.999
        assert core.any() and torch.allclose(
            s.target_video[:, core], _rgb(obj.color).expand(-1, int(core.sum())), atol=1e-2
        )
        assert (s.source_video[:, core] - _rgb(obj.color)).norm(dim=0).min() > 0.5
        assert _band_energy(s.target_audio, obj.sound, m.target_events) > 50 * _band_energy(
            s.source_audio, obj.sound, m.target_events
        )
        assert obj.name in s.instruction


def test_replace_swaps_shape_and_sound_on_the_same_path():
    for s in _samples("replace"):
        m = s.meta
        a, b = m.source_object, m.target_object
        assert a.shape != b.shape and b.sound == DEFAULT_SOUND[b.shape] and a.sound != b.sound
        assert (a.start, a.velocity) == (b.start, b.velocity)
        assert [e.time for e in m.source_events] == [e.time for e in m.target_events]
        assert not torch.equal(m.source_alpha >= 0.5, m.target_alpha >= 0.5)
        source, target, rest = (
            _band_energy(x, a.sound, m.source_events) for x in (s.source_audio, s.target_audio, m.rest_audio)
        )
        assert target < 1.2 * rest and source > 10 * rest  # the old sound is gone
        assert _band_energy(s.target_audio, b.sound, m.target_events) > 50 * _band_energy(
            s.source_audio, b.sound, m.target_events
        )
        assert a.name in s.instruction and b.name in s.instruction


def test_change_sound_keeps_the_picture():
    for s in _samples("change_sound"):
        m = s.meta
        a, b = m.source_object, m.target_object
        assert torch.equal(s.source_video, s.target_video) and not m.edit_mask.any()
        assert (a.shape, a.color) == (b.shape, b.color) and a.sound != b.sound
        assert [e.time for e in m.source_events] == [e.time for e in m.target_events]
        assert {e.sound for e in m.target_events} == {b.sound}
        assert not torch.equal(s.source_audio, s.target_audio)
        assert a.name in s.instruction and b.sound in s.instruction


def test_change_color_keeps_the_sound():
    for s in _samples("change_color"):
        m = s.meta
        a, b = m.source_object, m.target_object
        assert torch.equal(s.source_audio, s.target_audio)
        assert (a.shape, a.sound) == (b.shape, b.sound) and a.color != b.color
        assert torch.equal(m.source_alpha, m.target_alpha)
        core = m.target_alpha >= 0.999
        assert torch.allclose(s.target_video[:, core], _rgb(b.color).expand(-1, int(core.sum())), atol=1e-2)
        assert torch.allclose(s.source_video[:, core], _rgb(a.color).expand(-1, int(core.sum())), atol=1e-2)
        assert a.name in s.instruction and b.color in s.instruction


def test_instructions_name_only_the_edited_objects():
    for i in range(60):
        s = make_sample(i, seed=4)
        m = s.meta
        words = set(s.instruction.replace(",", " ").replace("'s", " ").split())
        edited = [o for o in (m.source_object, m.target_object) if o is not None]
        assert any(o.name in s.instruction for o in edited)
        for ctx in m.context_objects:
            assert ctx.name not in s.instruction
        # sounds named must be the edited object's old or new sound; colours its old or new colour
        named_sounds = {n for n, snd in SOUNDS.items() if words & {snd.name, snd.verb_s, snd.gerund}}
        assert named_sounds <= {o.sound for o in edited}
        assert words & set(PALETTE) <= {o.color for o in edited}
        if m.edit_type in ("replace", "insert"):
            assert m.target_object.name in s.instruction
        if m.edit_type == "change_sound":
            assert m.target_object.sound in named_sounds


def test_instructions_are_plain_english_and_varied():
    texts = [make_sample(i).instruction for i in range(80)]
    assert len(set(texts)) > 60
    for t in texts:
        assert t == t.strip() and "{" not in t and "  " not in t and t[0].islower()


def test_sound_onsets_follow_motion():
    """A wall contact is where the centre is closest to a wall; its sound starts there."""
    cfg = SynthConfig(num_frames=49)
    s = make_sample(4, config=cfg)
    m = s.meta
    obj = m.target_object or m.source_object
    alpha = m.target_alpha if m.target_object is not None else m.source_alpha
    grid = torch.arange(32) + 0.5
    cx = (alpha.sum(1) * grid).sum(1) / alpha.sum((1, 2))
    cy = (alpha.sum(2) * grid).sum(1) / alpha.sum((1, 2))
    centre = torch.stack([cx, cy], 1)
    for e in m.motion_events:
        f = e.time * cfg.fps
        a = math.floor(f)
        if 1 <= a < cfg.num_frames - 2:
            x = centre[:, e.axis]
            assert (x[a] - x[a - 1]) * (x[a + 2] - x[a + 1]) < 0  # the path turns back there
    onsets = torch.tensor([ev.time for ev in m.target_events or m.source_events])
    env = (m.target_object_audio if m.target_object is not None else m.source_object_audio).abs()
    first = int((env > 1e-3).nonzero()[0])
    assert abs(first / 16000 - float(onsets[0])) < 0.002
    assert obj.sound in SOUNDS


def test_config_validation():
    for bad in (dict(size=30), dict(num_frames=16), dict(edit_types=("explode",)), dict(min_bounces=9)):
        with pytest.raises(ValueError):
            SynthConfig(**bad)
    with pytest.raises(ValueError, match="non-negative"):
        make_sample(-1)


def test_collate_and_codec_fit():
    batch = collate_samples([make_sample(i) for i in range(3)])
    assert batch["source_video"].shape == (3, 3, 17, 32, 32) and batch["target_audio"].shape == (3, 17000)
    assert len(batch["instruction"]) == len(batch["meta"]) == 3
    video_codec, audio_codec = fit_demo_codecs(num_clips=8)
    zv, za = video_codec.encode(batch["source_video"]), audio_codec.encode(batch["source_audio"])
    assert zv.shape == (3, 48, 5, 16, 16) and za.shape == (3, 69, 250)
    assert 0.5 < float(zv.std()) < 2 and 0.3 < float(za.std()) < 3
    assert (video_codec.decode(zv) - batch["source_video"]).abs().max() < 1e-5
    assert (audio_codec.decode(za) - batch["source_audio"]).abs().max() < 1e-5
