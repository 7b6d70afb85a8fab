"""A synthetic audio-video editing domain: bouncing shapes that make their own sounds.

Each sample is a ``(source, target, instruction, metadata)`` quadruple. A clip shows one or two
shapes (circle, square, triangle, diamond in a small named palette) moving in straight lines
over a static textured background (smooth noise or stripes) and bouncing off the walls. Every
shape has its own sound (a tone, a chirp, a decaying ding, ...) that starts at the exact time
the shape touches a wall, over low-level pink or brown ambient noise. The five edits:

==============  ======================================================================
replace         shape A -> shape B on A's path, B making its own shape's default sound
remove          A and its sound vanish; background, ambience and other objects stay
insert          a new shape B (with its default sound) appears and bounces around
change_sound    A keeps its look but makes another sound at the same moments
change_color    A changes colour; its sound stays
==============  ======================================================================

Instructions are templated English naming the objects ("remove the green triangle and its
chirping"). Objects in one clip always differ in shape, colour and sound, so a name is unique.
The edited object is drawn on top of the others, so its ground-truth masks are its full
silhouette. Outside the edited object's pixels the target equals the source bit for bit; the
metadata carries every ground truth the metrics need (``training.metrics``).

Geometry (the demo preset): 32×32 pixels, 17 frames (1 + 4k) at 16 fps = 1.0625 s, 16 kHz mono
audio (17,000 samples). With the demo codecs (``demo/codecs.py``) that is a video latent
``[48, 5, 16, 16]`` (320 DiT tokens with patch (1, 2, 2)) and an audio latent ``[69, 250]``.

Determinism: sample ``index`` of generator ``seed`` depends on nothing else
(``numpy.random.SeedSequence([seed, index])``, CPU float32 maths). Indices from
:data:`HELD_OUT_START` on form the held-out split; training uses the indices below it.

One file (~620 lines) on purpose: the palette, sounds, edit templates and renderer are one
specification of the domain, and the held-out scores depend on all of them together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import torch

HELD_OUT_START = 1_000_000_000

SHAPES = ("circle", "square", "triangle", "diamond")
# RGB in [0, 1]: saturated and far apart from each other and from the muted backgrounds.
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.12, 0.30, 0.98),
    "yellow": (0.98, 0.90, 0.10),
    "cyan": (0.10, 0.88, 0.92),
    "magenta": (0.90, 0.12, 0.88),
}
EDIT_TYPES = ("replace", "remove", "insert", "change_sound", "change_color")


@dataclass(frozen=True)
class Sound:
    """One sound of the palette: its words, nominal pitch and the band that holds its energy."""

    name: str
    verb_s: str  # third person: "hums"
    gerund: str  # "humming"
    pitch: float  # nominal pitch in Hz (the sweep's centre for the chirp)
    f_lo: float  # lowest frequency it produces, Hz
    f_hi: float
    duration: float  # seconds

    @property
    def band(self) -> tuple[float, float]:
        """Frequencies that hold the sound's energy (a third of an octave around its range)."""
        return self.f_lo * 2 ** (-1 / 6), self.f_hi * 2 ** (1 / 6)


SOUNDS: dict[str, Sound] = {
    s.name: s
    for s in (
        Sound("hum", "hums", "humming", 200.0, 200.0, 200.0, 0.25),
        Sound("hoot", "hoots", "hooting", 480.0, 470.0, 490.0, 0.20),
        Sound("chirp", "chirps", "chirping", 900.0, 700.0, 1100.0, 0.15),
        Sound("beep", "beeps", "beeping", 1400.0, 1400.0, 1400.0, 0.12),
        Sound("ding", "dings", "dinging", 2000.0, 2000.0, 2000.0, 0.30),
        Sound("whistle", "whistles", "whistling", 3000.0, 3000.0, 3000.0, 0.15),
    )
}
DEFAULT_SOUND = {"circle": "beep", "square": "hum", "triangle": "chirp", "diamond": "ding"}
MIN_EVENT_GAP = 0.1  # s; wall contacts closer than this (corners) make one sound


@dataclass(frozen=True)
class SynthConfig:
    """Clip geometry and which edits to draw. The defaults are the demo preset's."""

    size: int = 32
    num_frames: int = 17
    fps: int = 16
    sample_rate: int = 16000
    edit_types: tuple[str, ...] = EDIT_TYPES
    min_bounces: int = 1  # per object, fully inside the clip, so every object is heard

    def __post_init__(self) -> None:
        if self.size < 24 or self.size % 4:
            raise ValueError(f"size={self.size}; expected a multiple of 4, at least 24 (e.g. 32 or 48)")
        if self.num_frames < 5 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames={self.num_frames}; expected 1 + 4k frames, at least 5 (e.g. 17)")
        if self.fps <= 0 or self.sample_rate < 8000:
            raise ValueError(
                f"fps={self.fps}, sample_rate={self.sample_rate}; expected fps > 0, sample_rate >= 8000"
            )
        unknown = set(self.edit_types) - set(EDIT_TYPES)
        if not self.edit_types or unknown:
            raise ValueError(f"edit_types={self.edit_types}; expected a non-empty subset of {EDIT_TYPES}")
        if not 0 <= self.min_bounces <= 3:
            raise ValueError(f"min_bounces={self.min_bounces}; expected 0..3")

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def num_samples(self) -> int:
        return round(self.num_frames * self.sample_rate / self.fps)


@dataclass(frozen=True)
class SceneObject:
    """A shape with its look, its sound and its straight-line motion (pixels, pixels per frame)."""

    shape: str
    color: str
    sound: str
    radius: float  # half the side of its bounding box
    start: tuple[float, float]  # (x, y) of the centre at t = 0; pixel i spans [i, i + 1)
    velocity: tuple[float, float]  # (vx, vy) in pixels per frame
    gain: float

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class MotionEvent:
    """A wall contact: when, along which axis, and whether it starts a sound."""

    time: float
    axis: int  # 0 = x (left/right wall), 1 = y (top/bottom wall)
    sounding: bool


@dataclass(frozen=True)
class SoundEvent:
    time: float  # onset, seconds
    sound: str
    pitch: float
    duration: float


@dataclass
class EditMeta:
    """Ground truth of one edit. Video tensors are [T, H, W] (masks) or [3, T, H, W] in [-1, 1]."""

    edit_type: str
    source_object: SceneObject | None  # the edited object in the source (None for insert)
    target_object: SceneObject | None  # ... and in the target (None for remove)
    context_objects: tuple[SceneObject, ...]  # everything else, unchanged
    source_alpha: torch.Tensor  # coverage of the edited object in the source, float [T, H, W]
    target_alpha: torch.Tensor
    edit_mask: torch.Tensor  # bool [T, H, W]; outside it target == source exactly
    rest_video: torch.Tensor  # the target without the edited object (background + context)
    source_events: tuple[SoundEvent, ...]  # the edited object's sounds in the source
    target_events: tuple[SoundEvent, ...]
    motion_events: tuple[MotionEvent, ...]  # the edited object's wall contacts
    source_object_audio: torch.Tensor  # the edited object's sound alone, [N]
    target_object_audio: torch.Tensor
    rest_audio: torch.Tensor  # ambience + context objects' sounds, [N]
    fps: int
    sample_rate: int
    seed: int
    index: int

    @property
    def edits_video(self) -> bool:
        return self.edit_type != "change_sound"

    @property
    def edits_audio(self) -> bool:
        return self.edit_type != "change_color"


@dataclass
class SynthSample:
    """Video ``[3, T, H, W]`` float32 in [-1, 1]; audio ``[N]`` float32 mono."""

    source_video: torch.Tensor
    target_video: torch.Tensor
    source_audio: torch.Tensor
    target_audio: torch.Tensor
    instruction: str
    meta: EditMeta = field(repr=False)


# ---------------------------------------------------------------------------------------------
# motion


def _axis_bounces(x0: float, v: float, lo: float, hi: float, t_end: float) -> list[float]:
    """Times (in frames) at which a point starting at ``x0`` with speed ``v`` hits ``lo`` or ``hi``."""
    if v == 0:
        return []
    span = hi - lo
    s = x0 - lo
    # The unfolded coordinate s + v·t crosses a wall at every multiple of the span.
    k = math.floor(s / span) + 1 if v > 0 else math.ceil(s / span) - 1
    step = 1 if v > 0 else -1
    times = []
    while True:
        t = (k * span - s) / v
        if t >= t_end:
            return times
        if t > 0:
            times.append(t)
        k += step


def _fold(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect an unbounded coordinate into [lo, hi] (the path of a ball between two walls)."""
    span = hi - lo
    w = np.mod(u - lo, 2 * span)
    return lo + np.where(w <= span, w, 2 * span - w)


def _centres(obj: SceneObject, cfg: SynthConfig) -> np.ndarray:
    """Centre of ``obj`` at every frame, [T, 2] (x, y)."""
    t = np.arange(cfg.num_frames, dtype=np.float64)
    lo, hi = obj.radius, cfg.size - obj.radius
    xs = [_fold(obj.start[a] + obj.velocity[a] * t, lo, hi) for a in (0, 1)]
    return np.stack(xs, axis=1)


def _motion_events(obj: SceneObject, cfg: SynthConfig) -> tuple[MotionEvent, ...]:
    lo, hi = obj.radius, cfg.size - obj.radius
    contacts = sorted(
        (t / cfg.fps, axis)
        for axis in (0, 1)
        for t in _axis_bounces(obj.start[axis], obj.velocity[axis], lo, hi, cfg.num_frames)
    )
    events, last = [], -math.inf
    for time, axis in contacts:
        sounding = time - last >= MIN_EVENT_GAP
        last = time if sounding else last
        events.append(MotionEvent(time, axis, sounding))
    return tuple(events)


def _sound_events(obj: SceneObject, motion: tuple[MotionEvent, ...]) -> tuple[SoundEvent, ...]:
    sound = SOUNDS[obj.sound]
    return tuple(SoundEvent(e.time, sound.name, sound.pitch, sound.duration) for e in motion if e.sounding)


def _random_motion(rng: np.random.Generator, cfg: SynthConfig) -> tuple[float, tuple, tuple]:
    """Radius, start and velocity with at least ``min_bounces`` audible contacts inside the clip."""
    scale = cfg.size / 32
    radius = float(rng.uniform(4.0, 6.0) * scale)
    lo, hi = radius, cfg.size - radius
    latest = cfg.duration - 0.12  # a contact after this would be heard only in part
    for _ in range(100):
        start = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
        speed = rng.uniform(1.2, 2.4) * scale
        angle = rng.uniform(0, 2 * math.pi)
        velocity = (float(speed * math.cos(angle)), float(speed * math.sin(angle)))
        probe = SceneObject("circle", "red", "beep", radius, start, velocity, 0.0)
        heard = [e for e in _motion_events(probe, cfg) if e.sounding and 0.04 <= e.time <= latest]
        if len(heard) >= cfg.min_bounces:
            return radius, start, velocity
    raise RuntimeError(f"could not place an object with {cfg.min_bounces} bounces in a {cfg}")


# ---------------------------------------------------------------------------------------------
# pictures


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) to a shape of bounding half-size ``r``."""
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - r) / math.sqrt(2)
    if shape == "triangle":  # pointing up, base 2r, height 2r, inside the bounding box
        k = 1 / math.sqrt(5)
        return np.maximum(dy - r, np.maximum((-2 * dx - dy - r) * k, (2 * dx - dy - r) * k))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _alpha(obj: SceneObject, cfg: SynthConfig) -> np.ndarray:
    """Anti-aliased coverage of ``obj`` in every frame, float32 [T, H, W]."""
    centres = _centres(obj, cfg)
    grid = np.arange(cfg.size, dtype=np.float64) + 0.5
    dx = grid[None, None, :] - centres[:, 0, None, None]
    dy = grid[None, :, None] - centres[:, 1, None, None]
    return np.clip(0.5 - _signed_distance(obj.shape, dx, dy, obj.radius), 0.0, 1.0).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted, low-saturation texture in [0, 1], [3, H, W]: smooth noise or stripes."""
    base = rng.uniform(0.22, 0.42) + rng.uniform(-0.05, 0.05, size=3)
    amplitude = rng.uniform(0.05, 0.12)
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    if rng.random() < 0.5:
        coarse = torch.from_numpy(
            rng.uniform(-1, 1, size=(1, 1, *rng.integers(3, 7, size=2))).astype(np.float32)
        )
        pattern = torch.nn.functional.interpolate(
            coarse, size=(size, size), mode="bicubic", align_corners=True
        )
        pattern = pattern[0, 0].clamp(-1, 1).numpy()
    else:
        period = rng.uniform(5.0, 12.0) * size / 32
        theta = rng.uniform(0, math.pi)
        pattern = np.sin(
            2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform(0, 6.3)
        )
    tint = 1 + rng.uniform(-0.3, 0.3, size=3)
    image = base[:, None, None] + amplitude * tint[:, None, None] * pattern[None]
    return np.clip(image, 0, 1).astype(np.float32)


def _paint(video: np.ndarray, alpha: np.ndarray, color: str) -> np.ndarray:
    """``video [3, T, H, W]`` with a layer of coverage ``alpha [T, H, W]`` in ``color`` painted over it."""
    rgb = np.asarray(PALETTE[color], dtype=np.float32)[:, None, None, None]
    return alpha[None] * rgb + (1 - alpha[None]) * video


# ---------------------------------------------------------------------------------------------
# sounds


@lru_cache(maxsize=64)
def _sound_wave(name: str, sample_rate: int) -> np.ndarray:
    """One occurrence of a sound at unit peak, float32, starting at phase 0."""
    s = SOUNDS[name]
    n = round(s.duration * sample_rate)
    t = np.arange(n) / sample_rate
    if name == "chirp":
        phase = 2 * math.pi * (s.f_lo * t + (s.f_hi - s.f_lo) * t * t / (2 * s.duration))
    elif name == "hoot":  # a gentle 6 Hz vibrato within its band
        depth = (s.f_hi - s.f_lo) / 2
        phase = 2 * math.pi * s.pitch * t - depth / 6 * np.cos(2 * math.pi * 6 * t) + depth / 6
    else:
        phase = 2 * math.pi * s.pitch * t
    envelope = np.minimum(1.0, t / 0.005) * np.minimum(1.0, (s.duration - t) / 0.02)
    if name == "ding":
        envelope = envelope * np.exp(-t / 0.08)
    return (envelope * np.sin(phase)).astype(np.float32)


def _render_sound(obj: SceneObject, events: tuple[SoundEvent, ...], cfg: SynthConfig) -> np.ndarray:
    out = np.zeros(cfg.num_samples, dtype=np.float32)
    wave = obj.gain * _sound_wave(obj.sound, cfg.sample_rate)
    for e in events:
        start = round(e.time * cfg.sample_rate)
        stop = min(cfg.num_samples, start + wave.size)
        out[start:stop] += wave[: stop - start]
    return out


def _ambience(rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    """Pink (1/f) or brown (1/f²) noise at a low, random level."""
    n = cfg.num_samples
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / cfg.sample_rate)
    exponent = 0.5 if rng.random() < 0.5 else 1.0  # amplitude ~ f^-0.5 (pink) or f^-1 (brown)
    shaping = np.zeros_like(freqs)
    shaping[freqs >= 20] = freqs[freqs >= 20] ** -exponent
    noise = np.fft.irfft(spectrum * shaping, n)
    noise *= rng.uniform(0.01, 0.04) / (noise.std() + 1e-12)
    return noise.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# edits and words


def _new_object(
    rng: np.random.Generator, cfg: SynthConfig, used: list[SceneObject], *, default_sound: bool
) -> SceneObject:
    """A fresh object whose shape, colour and sound no object in ``used`` (at most one) has.

    Its sound is its shape's default, or (when ``default_sound`` is False) another one a quarter
    of the time, so that sounds are not always predictable from shapes.
    """
    shapes = [s for s in SHAPES if s not in {o.shape for o in used}]
    colors = [c for c in PALETTE if c not in {o.color for o in used}]
    taken_sounds = {o.sound for o in used}
    if default_sound:
        shapes = [s for s in shapes if DEFAULT_SOUND[s] not in taken_sounds]
    shape = str(rng.choice(shapes))
    sound = DEFAULT_SOUND[shape]
    if not default_sound:
        others = [s for s in SOUNDS if s not in taken_sounds and s != sound]
        if sound in taken_sounds or (others and rng.random() < 0.25):
            sound = str(rng.choice(others))
    radius, start, velocity = _random_motion(rng, cfg)
    return SceneObject(
        shape, str(rng.choice(colors)), sound, radius, start, velocity, float(rng.uniform(0.2, 0.3))
    )


def _plan(rng: np.random.Generator, cfg: SynthConfig):
    """(edit type, context objects, edited object in source, edited object in target)."""
    edit = str(rng.choice(cfg.edit_types))
    for _ in range(100):
        context: list[SceneObject] = []
        if rng.random() < 0.5:
            context.append(_new_object(rng, cfg, [], default_sound=False))
        if edit == "insert":
            return edit, context, None, _new_object(rng, cfg, context, default_sound=True)
        a = _new_object(rng, cfg, context, default_sound=False)
        if edit == "remove":
            return edit, context, a, None
        used = [*context, a]
        if edit == "replace":  # a new shape on A's path, making its own default sound
            taken = {o.shape for o in used} | {
                s for s in SHAPES if DEFAULT_SOUND[s] in {o.sound for o in used}
            }
            shapes = [s for s in SHAPES if s not in taken]
            if shapes:
                shape = str(rng.choice(shapes))
                color = str(rng.choice([c for c in PALETTE if c not in {o.color for o in context}]))
                return edit, context, a, replace(a, shape=shape, color=color, sound=DEFAULT_SOUND[shape])
        elif edit == "change_sound":
            sound = str(rng.choice([s for s in SOUNDS if s not in {o.sound for o in used}]))
            return edit, context, a, replace(a, sound=sound)
        else:  # change_color
            color = str(rng.choice([c for c in PALETTE if c not in {o.color for o in used}]))
            return edit, context, a, replace(a, color=color)
    raise RuntimeError(f"could not plan a {edit} edit")  # unreachable with the palettes above


_TEMPLATES: dict[str, tuple[str, ...]] = {
    "replace": (
        "replace the {a} with a {b} and its sound",
        "replace the {a} with a {b} that {b_verb_s}",
        "swap the {a} for a {b}, {b_gerund} included",
        "turn the {a} into a {b} that {b_verb_s} when it bounces",
        "change the {a} into a {b} with its {b_sound} sound",
    ),
    "remove": (
        "remove the {a} and its {a_gerund}",
        "remove the {a} along with its sound",
        "delete the {a} and the {a_sound} it makes",
        "get rid of the {a} and its {a_gerund}",
        "take the {a} out of the scene, sound and all",
    ),
    "insert": (
        "add a {b} that {b_verb_s} when it bounces",
        "insert a {b} bouncing around with its {b_gerund}",
        "add a {b} and its sound",
        "put a {b} in the scene that {b_verb_s} at every bounce",
    ),
    "change_sound": (
        "make the {a} {b_sound} instead of {a_gerund}",
        "change the sound of the {a} to a {b_sound}",
        "replace the {a}'s {a_sound} with a {b_sound} and keep how it looks",
        "let the {a} {b_sound} when it bounces instead of {a_gerund}",
    ),
    "change_color": (
        "make the {a} {b_color}",
        "change the colour of the {a} to {b_color}",
        "paint the {a} {b_color} and keep its {a_gerund}",
        "turn the {a} {b_color}",
        "recolor the {a} {b_color}",
    ),
}


def _words(prefix: str, obj: SceneObject | None) -> dict[str, str]:
    if obj is None:
        return {}
    s = SOUNDS[obj.sound]
    return {
        prefix: obj.name,
        f"{prefix}_sound": s.name,
        f"{prefix}_verb_s": s.verb_s,
        f"{prefix}_gerund": s.gerund,
        f"{prefix}_color": obj.color,
    }


def _instruction(rng: np.random.Generator, edit: str, a: SceneObject | None, b: SceneObject | None) -> str:
    template = _TEMPLATES[edit][rng.integers(len(_TEMPLATES[edit]))]
    return template.format(**_words("a", a), **_words("b", b))


# ---------------------------------------------------------------------------------------------
# public API


def make_sample(index: int, *, seed: int = 0, config: SynthConfig | None = None) -> SynthSample:
    """Sample ``index`` of generator ``seed``; identical for identical arguments."""
    cfg = config or SynthConfig()
    if index < 0 or seed < 0:
        raise ValueError(f"index={index}, seed={seed}; expected non-negative integers")
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    edit, context, a, b = _plan(rng, cfg)
    background = _background(rng, cfg.size)
    ambience = _ambience(rng, cfg)
    instruction = _instruction(rng, edit, a, b)

    t = cfg.num_frames
    zeros_video = np.zeros((t, cfg.size, cfg.size), dtype=np.float32)
    rest = np.repeat(background[:, None], t, axis=1)
    for o in context:
        rest = _paint(rest, _alpha(o, cfg), o.color)
    rest_audio = ambience.copy()
    for o in context:
        rest_audio += _render_sound(o, _sound_events(o, _motion_events(o, cfg)), cfg)

    def render(obj: SceneObject | None):
        if obj is None:
            return rest, zeros_video, (), np.zeros_like(rest_audio)
        alpha = _alpha(obj, cfg)
        events = _sound_events(obj, _motion_events(obj, cfg))
        # The edited object is painted last, over the finished rest of the frame.
        return (
            _paint(rest, alpha, obj.color),
            alpha,
            events,
            _render_sound(obj, events, cfg),
        )

    src_video, src_alpha, src_events, src_sound = render(a)
    tgt_video, tgt_alpha, tgt_events, tgt_sound = render(b)
    if edit == "change_sound":
        edit_mask = np.zeros_like(src_alpha, dtype=bool)
    else:
        edit_mask = (src_alpha > 0) | (tgt_alpha > 0)
    motion = _motion_events(a if a is not None else b, cfg)

    def video(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x * 2 - 1, dtype=np.float32))

    src_audio = torch.from_numpy(rest_audio + src_sound)
    tgt_audio = src_audio.clone() if edit == "change_color" else torch.from_numpy(rest_audio + tgt_sound)
    meta = EditMeta(
        edit_type=edit,
        source_object=a,
        target_object=b,
        context_objects=tuple(context),
        source_alpha=torch.from_numpy(src_alpha),
        target_alpha=torch.from_numpy(tgt_alpha),
        edit_mask=torch.from_numpy(edit_mask),
        rest_video=video(rest),
        source_events=src_events,
        target_events=tgt_events,
        motion_events=motion,
        source_object_audio=torch.from_numpy(src_sound),
        target_object_audio=torch.from_numpy(tgt_sound),
        rest_audio=torch.from_numpy(rest_audio),
        fps=cfg.fps,
        sample_rate=cfg.sample_rate,
        seed=seed,
        index=index,
    )
    return SynthSample(video(src_video), video(tgt_video), src_audio, tgt_audio, instruction, meta)


class SyntheticAVEditDataset(torch.utils.data.Dataset):
    """``length`` samples of the synthetic domain; ``split="heldout"`` draws disjoint indices.

    Item ``i`` is ``make_sample(i, seed=seed)`` for training and
    ``make_sample(HELD_OUT_START + i, seed=seed)`` for the held-out split.
    """

    def __init__(
        self, length: int, *, split: str = "train", seed: int = 0, config: SynthConfig | None = None
    ):
        if split not in ("train", "heldout"):
            raise ValueError(f"split={split!r}; expected 'train' or 'heldout'")
        if not 0 < length <= HELD_OUT_START:
            raise ValueError(f"length={length}; expected 1..{HELD_OUT_START}")
        self.length, self.split, self.seed = length, split, seed
        self.config = config or SynthConfig()
        self.offset = HELD_OUT_START if split == "heldout" else 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> SynthSample:
        if not -self.length <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} samples")
        return make_sample(self.offset + (i % self.length), seed=self.seed, config=self.config)


def collate_samples(samples: list[SynthSample]) -> dict:
    """Batch samples: videos ``[B, 3, T, H, W]``, audio ``[B, N]``, instructions and metadata as lists."""
    return {
        "source_video": torch.stack([s.source_video for s in samples]),
        "target_video": torch.stack([s.target_video for s in samples]),
        "source_audio": torch.stack([s.source_audio for s in samples]),
        "target_audio": torch.stack([s.target_audio for s in samples]),
        "instruction": [s.instruction for s in samples],
        "meta": [s.meta for s in samples],
    }


__all__ = [
    "SynthConfig",
    "SynthSample",
    "EditMeta",
    "SceneObject",
    "SoundEvent",
    "MotionEvent",
    "Sound",
    "SOUNDS",
    "SHAPES",
    "PALETTE",
    "DEFAULT_SOUND",
    "EDIT_TYPES",
    "HELD_OUT_START",
    "make_sample",
    "SyntheticAVEditDataset",
    "collate_samples",
]
