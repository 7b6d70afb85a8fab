"""Pair kinds: each makes (source, target, instruction) from a conformed base clip and the user's assets.

Kinds come in inverse couples built from one composition (add X <-> remove X), so the ground truth of
both directions is exact. Instruction phrasing is drawn from several templates per kind, with the
user's names for objects and sounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import compose
from .assets import Assets

SOUND_KINDS = ("add_sound", "remove_sound", "replace_sound")
OBJECT_KINDS = ("insert_object", "remove_object")
JOINT_KINDS = ("insert_object_with_sound", "remove_object_with_sound", "recolour_and_replace_sound")
KINDS = (*SOUND_KINDS, *OBJECT_KINDS, "recolour", *JOINT_KINDS)
NEEDS_SOUND = {"add_sound", "remove_sound", "replace_sound", "insert_object_with_sound", "remove_object_with_sound",
               "recolour_and_replace_sound"}
NEEDS_CUTOUT = {"insert_object", "remove_object", "insert_object_with_sound", "remove_object_with_sound"}
TOUCHES_VIDEO = NEEDS_CUTOUT | {"recolour", "recolour_and_replace_sound"}
TOUCHES_AUDIO = NEEDS_SOUND

TEMPLATES = {
    "add_sound": ["add the sound of {sound} {when}", "add a {sound} sound {when}", "make a {sound} sound play {when}",
                  "put a {sound} in the soundtrack {when}"],
    "remove_sound": ["remove the {sound} sound", "take out the {sound}", "mute the {sound} and keep everything else",
                     "get rid of the {sound} sound"],
    "replace_sound": ["replace the {sound} with {sound2}", "swap the {sound} sound for {sound2}",
                      "make the {sound} sound like {sound2} instead", "change the {sound} to {sound2}"],
    "insert_object": ["add a {object} {motion}", "insert a {object} that is {motion_ing}",
                      "put a {object} in the scene, {motion_ing}", "make a {object} appear, {motion_ing}"],
    "remove_object": ["remove the {object}", "take the {object} out of the video", "erase the {object}",
                      "delete the {object} from the scene"],
    "recolour": ["make the {object} {colour}", "turn the {object} {colour}", "recolour the {object} {colour}",
                 "change the colour of the {object} to {colour}"],
    "insert_object_with_sound": ["add a {object} {motion} with a {sound} sound {sync}",
                                 "insert a {object} {motion_ing}, and a {sound} {sync}",
                                 "put a {object} in the scene that makes a {sound} sound {sync}"],
    "remove_object_with_sound": ["remove the {object} and its {sound} sound", "take out the {object} and the {sound}",
                                 "erase the {object} together with its {sound}"],
    "recolour_and_replace_sound": ["make the {object} {colour} and replace the {sound} with {sound2}",
                                   "turn the {object} {colour}; the {sound} becomes {sound2}"],
}


@dataclass
class Edit:
    """One made pair before gating and writing, with what was measured and the choices made."""

    kind: str
    source_video: torch.Tensor
    target_video: torch.Tensor
    source_audio: torch.Tensor
    target_audio: torch.Tensor
    instruction: str
    info: dict = field(default_factory=dict)


def instruction(kind: str, rng: np.random.Generator, **names: str) -> str:
    template = TEMPLATES[kind][int(rng.integers(len(TEMPLATES[kind])))]
    return template.format(**names).strip()


def _when(onset_s: float, duration_s: float, synced: bool) -> str:
    if synced:
        return "when the motion happens"
    if onset_s < 0.2 * duration_s:
        return "at the start"
    if onset_s > 0.6 * duration_s:
        return "near the end"
    return f"after {onset_s:.1f} seconds"


@dataclass
class Base:
    """A conformed window of one of the user's clips, plus its optional recolour mask (``[T or 1, H, W]``)."""

    video: torch.Tensor
    audio: torch.Tensor
    fps: float
    sample_rate: int
    name: str
    mask: torch.Tensor | None = None
    mask_name: str = "highlighted area"


class Maker:
    """Makes edits of every kind from one set of assets; all choices come from the ``rng`` given per pair."""

    def __init__(self, assets: Assets, *, level_db: tuple[float, float] = (-3.0, 6.0), sync: str = "random",
                 object_height: tuple[float, float] = (0.25, 0.45)):
        self.assets = assets
        self.level_db = level_db
        self.sync = sync
        self.object_height = object_height
        self.cut_count = 0

    # -- sounds --------------------------------------------------------------------------------
    def _onset(self, base: Base, sound: torch.Tensor, rng: np.random.Generator) -> tuple[int, bool]:
        n = base.audio.shape[0]
        if self.sync == "motion" or (self.sync == "mixed" and rng.random() < 0.5):
            frame, energy = compose.motion_onset(base.video)
            if energy > 0.01:
                return int(frame / base.fps * base.sample_rate), True
        latest = max(0, n - sound.shape[0])  # a sound that fits is placed whole
        if latest == 0:
            latest = n // 2
        return int(rng.integers(0, latest + 1)), False

    def _mix(self, bed: torch.Tensor, sound: torch.Tensor, onsets: list[int], sr: int,
             rng: np.random.Generator) -> tuple[torch.Tensor, float]:
        track = torch.zeros_like(bed)
        for onset in onsets:
            piece, cut = compose.place_sound(bed.shape[0], sound, onset, sr)
            self.cut_count += int(cut)
            track += piece
        level = float(rng.uniform(*self.level_db))
        return track * compose.loudness_gain(bed, track, level), level

    def _pick(self, items: list, rng: np.random.Generator, but=None):
        pool = [x for x in items if x is not but] or items
        return pool[int(rng.integers(len(pool)))]

    def _audio_pair(self, base: Base, rng: np.random.Generator, sound, sound2=None, onsets=None):
        """(bed with sound, bed with sound2 or bare bed) after one shared headroom scaling, and details."""
        onset, synced = self._onset(base, sound.wave, rng)
        onsets = onsets if onsets is not None else [onset]
        with_a, level = self._mix(base.audio, sound.wave, onsets, base.sample_rate, rng)
        a = base.audio + with_a
        b = base.audio.clone()
        if sound2 is not None:
            b = b + self._mix(base.audio, sound2.wave, onsets, base.sample_rate, rng)[0]
        k = compose.headroom(a, b)
        info = {"onsets_s": [round(o / base.sample_rate, 3) for o in onsets], "level_db": round(level, 2),
                "synced": synced, "headroom_gain": round(k, 4)}
        return a * k, b * k, info

    # -- objects -------------------------------------------------------------------------------
    def _object(self, base: Base, rng: np.random.Generator, cut):
        _, frames, h, w = base.video.shape
        rgba = compose.scaled_cutout(cut.rgba, max(4, round(h * rng.uniform(*self.object_height))))
        bounce = rng.random() < 0.6
        make = compose.bounce_path if bounce else compose.glide_path
        path = make(rng, frames, h, w, rgba.shape[2], rgba.shape[3])
        video, cover = compose.composite(base.video, rgba, path)
        motion = ("bouncing across the frame", "bouncing") if bounce else ("gliding across the frame", "gliding")
        return video, cover, path, motion

    def make(self, kind: str, base: Base, rng: np.random.Generator) -> Edit:
        """One edit of ``kind`` on ``base``. ``ValueError`` if the assets cannot make that kind."""
        a = self.assets
        if kind in NEEDS_SOUND and not a.sounds:
            raise ValueError(f"{kind} needs sounds and the sound folder has none usable")
        if kind in NEEDS_CUTOUT and not a.cutouts:
            raise ValueError(f"{kind} needs cut-outs and there are none usable")
        v, dur = base.video, base.audio.shape[0] / base.sample_rate
        if kind in ("add_sound", "remove_sound", "replace_sound"):
            s = self._pick(a.sounds, rng)
            s2 = self._pick(a.sounds, rng, but=s) if kind == "replace_sound" else None
            if kind == "replace_sound" and s2 is s:
                raise ValueError("replace_sound needs two different sounds")
            with_s, other, info = self._audio_pair(base, rng, s, s2)
            when = _when(info["onsets_s"][0], dur, info["synced"])
            text = instruction(kind, rng, sound=s.name, sound2=s2.name if s2 else "", when=when)
            info.update(sound=s.name, sound2=s2.name if s2 else None)
            if kind == "add_sound":
                return Edit(kind, v, v, other, with_s, text, info)
            return Edit(kind, v, v, with_s, other, text, info)
        if kind == "recolour" or kind == "recolour_and_replace_sound":
            if base.mask is not None and (not a.cutouts or rng.random() < 0.5):
                src, mask, obj = v, base.mask, base.mask_name
            else:
                cut = self._pick(a.cutouts, rng)
                src, cover, _, _ = self._object(base, rng, cut)
                mask, obj = cover, cut.name
            colour = self._pick(compose.colours_unlike(src, mask), rng)
            tgt = compose.recolour(src, mask, compose.COLOURS[colour])
            info = {"colour": colour, "object": obj}
            sa = ta = base.audio
            names = {"object": obj, "colour": colour}
            if kind == "recolour_and_replace_sound":
                s = self._pick(a.sounds, rng)
                s2 = self._pick(a.sounds, rng, but=s)
                if s2 is s:
                    raise ValueError("recolour_and_replace_sound needs two different sounds")
                sa, ta, ainfo = self._audio_pair(base, rng, s, s2)
                info.update(ainfo, sound=s.name, sound2=s2.name)
                names.update(sound=s.name, sound2=s2.name)
            return Edit(kind, src, tgt, sa, ta, instruction(kind, rng, **names), info)
        cut = self._pick(a.cutouts, rng)
        video, _, path, (motion, motion_ing) = self._object(base, rng, cut)
        info = {"object": cut.name, "path": "bounce" if motion_ing == "bouncing" else "glide",
                "contacts_s": [round(c / base.fps, 3) for c in path.contacts]}
        names = {"object": cut.name, "motion": motion, "motion_ing": motion_ing}
        if kind in ("insert_object", "remove_object"):
            text = instruction(kind, rng, **names)
            if kind == "insert_object":
                return Edit(kind, v, video, base.audio, base.audio, text, info)
            return Edit(kind, video, v, base.audio, base.audio, text, info)
        # joint: the object's sound at each ground contact (bounce), or from its first frame (glide)
        s = self._pick(a.sounds, rng)
        onsets = [int(c / base.fps * base.sample_rate) for c in path.contacts] or [0]
        with_s, bare, ainfo = self._audio_pair(base, rng, s, None, onsets=onsets)
        info.update(ainfo, sound=s.name, synced=True)
        sync = "each time it lands" if path.contacts else "as it moves"
        text = instruction(kind, rng, sound=s.name, sync=sync, **names)
        if kind == "insert_object_with_sound":
            return Edit(kind, v, video, bare, with_s, text, info)
        return Edit(kind, video, v, with_s, bare, text, info)
