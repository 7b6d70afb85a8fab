"""make_pairs: the user's clips, cut-outs and sounds -> a dataset folder that Training Data reads.

Output (a new folder; one that holds anything is refused, never written over)::

    OUT/train/00000_add_sound/{source.mp4, target.mp4, instruction.txt}
    OUT/validation/...                          the held-out split (validation_fraction of the pairs)
    OUT/train.jsonl, OUT/validation.jsonl       manifests of each split (paths relative to OUT)
    OUT/manifest.jsonl                          every pair with its kind, split, choices and measurements
    OUT/report.json                             counts: made, rejected (why), skipped files (why)
    OUT/contact_sheet.png                       source | target frames of a few pairs

Everything is decided by ``seed``: the same config and media give the same pairs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from . import compose
from .assets import Assets, Skipped, fit_mask, load_assets
from .kinds import KINDS, NEEDS_CUTOUT, NEEDS_SOUND, TOUCHES_AUDIO, TOUCHES_VIDEO, Base, Maker

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation")
TRIES_PER_PAIR = 4  # attempts per wanted pair before the run stops short (and says why)


@dataclass
class PairsConfig:
    """What ``make-pairs`` reads from ``pairs.toml`` (relative paths are relative to that file)."""

    output: str = "pairs"
    clips: str | None = None
    cutouts: str | None = None
    sounds: str | None = None
    count: int = 200
    seed: int = 0
    validation_fraction: float = 0.1
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    fps: int = 24
    num_frames: int = 121
    sample_rate: int = 16000
    width: int = 512
    height: int = 288
    sync: str = "mixed"  # sound onsets: "random", "motion" (at the clip's biggest visual change) or "mixed"
    level_db: list[float] = field(default_factory=lambda: [-3.0, 6.0])  # sound level over the bed's RMS
    min_pixel_change: float = 0.002  # fraction of pixels that must visibly change (video kinds)
    min_audio_change_db: float = -30.0  # energy of the change vs the track (audio kinds)
    names: dict[str, str] = field(default_factory=dict)  # file stem -> name in instructions
    crf: int = 18
    max_clip_seconds: float = 20.0

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown pair kinds {unknown}; known: {', '.join(KINDS)}")
        if not self.kinds:
            raise ValueError(f"kinds is empty; choose from {', '.join(KINDS)}")
        if self.count < 1:
            raise ValueError(f"count must be at least 1; got {self.count}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in [0, 1); got {self.validation_fraction}")
        if self.sync not in ("random", "motion", "mixed"):
            raise ValueError(f"sync must be 'random', 'motion' or 'mixed'; got {self.sync!r}")
        if len(self.level_db) != 2 or self.level_db[0] > self.level_db[1]:
            raise ValueError(f"level_db must be [low, high] in dB; got {self.level_db}")

    @classmethod
    def from_dict(cls, data: dict, base: Path | None = None) -> PairsConfig:
        """A config from a parsed TOML (tables only group keys); paths made relative to ``base``."""
        flat: dict = {}
        for key, value in data.items():
            if isinstance(value, dict) and key != "names":
                flat.update(value)
            else:
                flat[key] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"unknown settings {unknown} in the pairs config; known: {', '.join(sorted(known))}")
        if base is not None:
            for key in ("output", "clips", "cutouts", "sounds"):
                if flat.get(key):
                    flat[key] = str(Path(base) / Path(flat[key]).expanduser())
        return cls(**flat)

    def spec(self):
        from ...media import ClipSpec

        return ClipSpec(fps=Fraction(self.fps), num_frames=self.num_frames, sample_rate=self.sample_rate,
                        area=self.width * self.height, height=self.height, width=self.width)


@dataclass
class PairsReport:
    """What a run made and left out (also written as ``report.json``)."""

    output: str
    made: Counter = field(default_factory=Counter)  # per kind
    splits: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)  # "invisible" / "inaudible" / "cannot make"
    skipped: list[Skipped] = field(default_factory=list)
    sounds_cut: int = 0
    seconds: float = 0.0
    contact_sheet: str | None = None
    sheet: torch.Tensor | None = field(default=None, repr=False)  # the contact sheet, [H, W, 3] in 0..1

    @property
    def total(self) -> int:
        return sum(self.made.values())

    def __str__(self) -> str:
        lines = [f"{self.total} pairs in {self.output} ({', '.join(f'{k}: {n}' for k, n in sorted(self.splits.items()))})"
                 f" in {self.seconds:.1f} s"]
        lines.append("  kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(self.made.items())))
        if self.rejected:
            lines.append("  rejected: " + ", ".join(f"{k} {n}" for k, n in sorted(self.rejected.items())))
        if self.sounds_cut:
            lines.append(f"  {self.sounds_cut} sound placements were longer than the clip and cut with a fade-out")
        if self.skipped:
            lines.append(f"  {len(self.skipped)} files skipped:")
            lines += [f"    {s.path}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"output": self.output, "pairs": self.total, "made": dict(self.made), "splits": dict(self.splits),
                "rejected": dict(self.rejected), "skipped": [asdict(s) for s in self.skipped],
                "sounds_cut": self.sounds_cut, "seconds": round(self.seconds, 2)}


def check_output(out: Path) -> None:
    """Refuse an output folder that holds anything (a dataset is never written over or mixed with another)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not empty; make-pairs writes a new dataset folder and "
                              "never writes over one: choose another output")


def usable_kinds(config: PairsConfig, assets: Assets, has_masks: bool = False) -> list[str]:
    """The configured kinds the assets can make; why the others cannot is logged. ``ValueError`` if none."""
    out, why = [], []
    for kind in config.kinds:
        if kind in NEEDS_SOUND and not assets.sounds:
            why.append(f"{kind} (no usable sounds)")
        elif kind in NEEDS_CUTOUT and not assets.cutouts:
            why.append(f"{kind} (no usable cut-outs)")
        elif kind.startswith("recolour") and not (assets.cutouts or has_masks):
            why.append(f"{kind} (no cut-outs and no mask)")
        elif kind in ("replace_sound", "recolour_and_replace_sound") and len(assets.sounds) < 2:
            why.append(f"{kind} (needs two sounds)")
        else:
            out.append(kind)
    if why:
        logger.warning("left out pair kinds: %s", "; ".join(why))
    if not out:
        raise ValueError("none of the configured pair kinds can be made: " + "; ".join(why))
    return out


def _base(clip, mask, name: str, spec, rng: np.random.Generator) -> Base:
    from ...media import Clip, conform

    spare = max(0.0, clip.duration - spec.duration)
    start = float(rng.uniform(0, spare)) if spare > 0 else 0.0
    c = conform(clip, spec, start=start)
    m = None
    if mask is not None:
        # The mask goes through the same retiming, crop and resize as the frames: it stays on its object.
        mask = mask.expand(clip.num_frames, -1, -1) if mask.shape[0] == 1 else mask
        mclip = Clip(frames=mask[..., None].expand(-1, -1, -1, 3), fps=clip.fps, audio=torch.zeros(1, 0),
                     sample_rate=0, has_audio=False, start=clip.start, timestamps=clip.timestamps)
        m = ((conform(mclip, spec, start=start).video[0] + 1) / 2).clamp(0, 1)
    return Base(c.video, c.audio, float(c.fps), c.sample_rate, name, m)


class _Bases:
    """Conformed windows of the clips. A clip no longer than a window has one window: it is conformed once
    and kept (its padding warning is logged once); longer clips get a random start per pair."""

    def __init__(self, assets: Assets, masks: dict[int, torch.Tensor], spec):
        self.assets, self.masks, self.spec = assets, masks, spec
        self._kept: dict[int, Base] = {}

    def get(self, i: int, rng: np.random.Generator) -> Base:
        if i in self._kept:
            return self._kept[i]
        clip = self.assets.clips[i]
        base = _base(clip, self.masks.get(i), self.assets.clip_names[i], self.spec, rng)
        if clip.duration <= self.spec.duration and len(self._kept) < 16:
            self._kept[i] = base
        return base


def _uint8(video: torch.Tensor) -> torch.Tensor:
    """``[3, T, H, W]`` in -1..1 -> ``[T, H, W, 3]`` uint8 in one pass (the writer's per-frame path is slower)."""
    return video.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous()


def contact_sheet(samples: list[tuple[torch.Tensor, torch.Tensor, str]], thumb_height: int = 96) -> torch.Tensor:
    """Rows of (source frame | target frame) for ``samples`` of (source video, target video, kind), each at the
    frame where they differ most; float ``[H, W, 3]`` in 0..1."""
    rows = []
    for src, tgt, _ in samples:
        diff = (src - tgt).abs().mean(dim=(0, 2, 3))
        t = int(diff.argmax()) if float(diff.max()) > 0 else src.shape[1] // 2
        pair = torch.cat([src[:, t], torch.full((3, src.shape[2], 4), 1.0), tgt[:, t]], dim=2)
        h, w = pair.shape[1:]
        pair = torch.nn.functional.interpolate(pair[None], size=(thumb_height, max(1, round(w * thumb_height / h))),
                                               mode="bilinear", align_corners=False, antialias=True)[0]
        rows.append(pair)
    if not rows:
        return torch.zeros(thumb_height, thumb_height, 3)
    width = max(r.shape[2] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[2], 0, 4), value=1.0) for r in rows]
    return ((torch.cat(rows, dim=1) + 1) / 2).clamp(0, 1).permute(1, 2, 0).contiguous()


def _save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(path, optimize=True)


def make_pairs(config: PairsConfig, *, assets: Assets | None = None, masks: dict[int, torch.Tensor] | None = None,
               progress: Callable[[int, int], None] | None = None, sheet_rows: int = 8) -> PairsReport:
    """Make ``config.count`` pairs into ``config.output`` (a new folder) and return the report.

    ``assets`` replaces reading the config's folders (the node passes its inputs); ``masks`` maps a clip's
    index to its MASK (``[T or 1, H, W]``, the clip's size) for recolouring inside it.
    """
    from ...media import write_clip

    t0 = time.perf_counter()
    out = Path(config.output)
    check_output(out)
    if assets is None:
        assets = load_assets(clips=_opt(config.clips), cutouts=_opt(config.cutouts), sounds=_opt(config.sounds),
                             sample_rate=config.sample_rate, names=config.names,
                             max_clip_seconds=config.max_clip_seconds)
    if not assets.clips:
        raise ValueError("no usable clips: give a folder of video clips (clips = ...) or an IMAGE"
                         + (f"; skipped: {'; '.join(f'{s.path}: {s.reason}' for s in assets.skipped)}"
                            if assets.skipped else ""))
    masks = {i: fit_mask(m, assets.clips[i].height, assets.clips[i].width) for i, m in (masks or {}).items()}
    for i, m in masks.items():
        if m.shape[0] not in (1, assets.clips[i].num_frames):
            raise ValueError(f"the mask has {m.shape[0]} frames and its clip {assets.clips[i].num_frames}; give one "
                             "mask for all frames or one per frame")
    kinds = usable_kinds(config, assets, has_masks=bool(masks))
    spec = config.spec()
    bases = _Bases(assets, masks, spec)
    maker = Maker(assets, level_db=tuple(config.level_db), sync=config.sync)
    report = PairsReport(output=str(out), skipped=list(assets.skipped))
    n_val = round(config.count * config.validation_fraction)
    val = set(np.random.default_rng([config.seed, 1]).permutation(config.count)[:n_val].tolist())
    out.mkdir(parents=True, exist_ok=True)
    manifests = {s: [] for s in SPLITS}
    everything, samples = [], []
    made = attempt = 0
    while made < config.count and attempt < config.count * TRIES_PER_PAIR:
        rng = np.random.default_rng([config.seed, 0, attempt])
        kind = kinds[attempt % len(kinds)]  # round robin: every kind gets its share
        attempt += 1
        ci = int(rng.integers(len(assets.clips)))
        base = bases.get(ci, rng)
        try:
            edit = maker.make(kind, base, rng)
        except ValueError as exc:
            report.rejected["cannot make"] += 1
            logger.debug("attempt %d (%s): %s", attempt, kind, exc)
            continue
        px = compose.pixel_change(edit.source_video, edit.target_video)
        db = compose.audio_change_db(edit.source_audio, edit.target_audio)
        if kind in TOUCHES_VIDEO and px < config.min_pixel_change:
            report.rejected["invisible"] += 1
            continue
        if kind in TOUCHES_AUDIO and db < config.min_audio_change_db:
            report.rejected["inaudible"] += 1
            continue
        split = "validation" if made in val else "train"
        name = f"{made:05d}_{kind}"
        folder = out / split / name
        folder.mkdir(parents=True)
        for what, video, audio in (("source", edit.source_video, edit.source_audio),
                                   ("target", edit.target_video, edit.target_audio)):
            write_clip(folder / f"{what}.mp4", _uint8(video), config.fps, audio, config.sample_rate, crf=config.crf,
                       preset="veryfast")
        (folder / "instruction.txt").write_text(edit.instruction + "\n", encoding="utf-8")
        rel = f"{split}/{name}"
        line = {"name": name, "source": f"{rel}/source.mp4", "target": f"{rel}/target.mp4",
                "instruction": edit.instruction}
        manifests[split].append(line)
        everything.append({**line, "split": split, "kind": kind, "clip": base.name,
                           "pixel_change": round(px, 5), "audio_change_db": None if math.isinf(db) else round(db, 2),
                           **edit.info})
        if len(samples) < sheet_rows and kind in TOUCHES_VIDEO:
            samples.append((edit.source_video, edit.target_video, kind))
        report.made[kind] += 1
        report.splits[split] += 1
        made += 1
        if progress is not None:
            progress(made, config.count)
    for split, lines in manifests.items():
        _write_lines(out / f"{split}.jsonl", lines)
    _write_lines(out / "manifest.jsonl", everything)
    sheet = contact_sheet(samples)
    _save_png(sheet, out / "contact_sheet.png")
    report.contact_sheet = str(out / "contact_sheet.png")
    report.sounds_cut = maker.cut_count
    report.seconds = time.perf_counter() - t0
    if made < config.count:
        logger.warning("made %d of %d pairs: %d attempts were rejected (%s)", made, config.count, attempt - made,
                       dict(report.rejected))
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")
    report.sheet = sheet  # the node shows it without reading the file back
    return report


def _opt(p: str | None) -> Path | None:
    return Path(p) if p else None


def _write_lines(path: Path, lines: list[dict]) -> None:
    with open(path, "x", encoding="utf-8") as f:  # "x": never over an existing file
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
