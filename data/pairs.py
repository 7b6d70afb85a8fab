"""Training pairs: where they come from (folders, manifests, generators, memory), and their validation.

Two layers:

- **Pairs** (pixels + waveforms + instruction text) come from a :class:`PairSource`: a folder of
  ``NAME/{source.mp4, target.mp4, instruction.txt}`` (:class:`FolderPairs`), a JSONL manifest
  (:class:`ManifestPairs`), the synthetic generator (:class:`SyntheticPairs`) or a list in memory
  (:class:`InMemoryPairs`). Every source gives each pair a stable ``name``, a content
  ``fingerprint`` (the cache key) and its training windows, so all feed the same cache and trainer.
  :func:`validate_pairs` lists **every** problem of a source at once, with counts.
- **Latents** (what the trainer reads) come from a :class:`LatentData`: the on-disk cache
  (``training.cache.CachedLatents``) or :class:`InMemoryLatents`. An item is a :class:`LatentItem`
  (one training window); items with the same :meth:`LatentData.bucket` have equal shapes and may
  share a batch (aspect buckets).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


# --------------------------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------------------------


@dataclass
class PairItem:
    """One training window in pixel space: videos ``[3, T, H, W]`` in [-1, 1], mono audio ``[N]``."""

    name: str
    source_video: torch.Tensor
    target_video: torch.Tensor
    source_audio: torch.Tensor
    target_audio: torch.Tensor
    instruction: str

    def check(self) -> list[str]:
        """What is wrong with this item (empty list: nothing)."""
        out = []
        for what in ("source_video", "target_video"):
            v = getattr(self, what)
            if v.ndim != 4 or v.shape[0] != 3:
                out.append(f"{what} has shape {tuple(v.shape)}; expected [3, T, H, W]")
        for what in ("source_audio", "target_audio"):
            if getattr(self, what).ndim != 1:
                out.append(f"{what} has shape {tuple(getattr(self, what).shape)}; expected mono [N]")
        if not out:
            if self.source_video.shape != self.target_video.shape:
                out.append(f"source video {tuple(self.source_video.shape)} and target video "
                           f"{tuple(self.target_video.shape)} differ in length or size")
            if self.source_audio.shape != self.target_audio.shape:
                out.append(f"source audio ({self.source_audio.shape[0]} samples) and target audio "
                           f"({self.target_audio.shape[0]}) differ in length")
        if not self.instruction.strip():
            out.append("the instruction is empty")
        for what in ("source_video", "target_video", "source_audio", "target_audio"):
            if not torch.isfinite(getattr(self, what)).all():
                out.append(f"{what} contains NaN or Inf")
        return out


@dataclass(frozen=True)
class Problem:
    """One problem of one pair: ``kind`` is a short category (counted), ``detail`` says what and where."""

    name: str
    kind: str
    detail: str


@runtime_checkable
class PairSource(Protocol):
    """Where training pairs come from. Indices are ``0 .. len-1``; names are unique and stable."""

    def __len__(self) -> int: ...

    def name(self, i: int) -> str: ...

    def fingerprint(self, i: int) -> str:
        """Changes whenever pair ``i``'s content (clips, instruction, windowing) changes."""
        ...

    def instruction(self, i: int) -> str: ...

    def windows(self, i: int) -> list[PairItem]:
        """Pair ``i`` decoded and conformed, as its training windows (at least one)."""
        ...

    def check(self, i: int) -> list[Problem]:
        """Problems of pair ``i`` found without decoding it all (headers, files, text)."""
        ...


@dataclass
class DatasetReport:
    """Every problem of a dataset, with counts per kind."""

    total: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    @property
    def bad_pairs(self) -> set[str]:
        return {p.name for p in self.problems}

    def __str__(self) -> str:
        if self.ok:
            return f"dataset OK: {self.total} pairs"
        counts = ", ".join(f"{kind}: {n}" for kind, n in self.counts.most_common())
        lines = [f"dataset has problems in {len(self.bad_pairs)} of {self.total} pairs ({counts}):"]
        lines += [f"  {p.name}: [{p.kind}] {p.detail}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_problems(self) -> None:
        if not self.ok:
            raise ValueError(str(self))


def validate_pairs(source: PairSource, *, decode: bool = False) -> DatasetReport:
    """Check every pair of ``source`` and report all problems at once (never stops at the first).

    ``decode=True`` also decodes every window (catches clips truncated in the middle, at the
    cost of reading everything; the cache builder does that anyway and reports the same way).
    """
    report = DatasetReport(total=len(source))
    names = Counter(source.name(i) for i in range(len(source)))
    for name, n in names.items():
        if n > 1:
            report.problems.append(Problem(name, "duplicate name", f"{n} pairs share the name {name!r}"))
    for i in range(len(source)):
        found = source.check(i)
        report.problems.extend(found)
        if decode and not found:
            try:
                for item in source.windows(i):
                    report.problems.extend(Problem(item.name, "bad window", d) for d in item.check())
            except (ValueError, OSError) as exc:
                report.problems.append(Problem(source.name(i), "unreadable clip", str(exc)))
    return report


def _hash_file(path: Path, h: hashlib._Hash) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)


@dataclass(frozen=True)
class ClipWindowing:
    """How clips become training windows: the model's clip geometry plus the window layout.

    ``num_frames`` per window (1 + 4k) at ``fps``; ``stride`` frames between window starts (0: one
    window from the start); ``height``/``width`` fix the size (else ``area`` and each clip's
    aspect ratio decide it, in multiples of 32, which makes aspect buckets).
    """

    fps: int
    num_frames: int
    sample_rate: int
    area: int
    height: int | None = None
    width: int | None = None
    stride: int = 0
    fit: str = "crop"

    def __post_init__(self) -> None:
        if not isinstance(self.num_frames, int) or self.num_frames < 1 or (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames={self.num_frames!r}: a training window needs 1 + 4k frames (e.g. 17, 121); "
                             "the video VAE folds 4 frames into one latent frame after the first")

    @classmethod
    def from_model(cls, config, *, num_frames: int = 0, stride: int = 0, height: int = 0, width: int = 0
                   ) -> ClipWindowing:
        return cls(fps=config.fps, num_frames=num_frames or config.num_frames, sample_rate=config.sample_rate,
                   area=config.area, height=height or None, width=width or None, stride=stride)

    def key(self) -> str:
        return json.dumps([self.fps, self.num_frames, self.sample_rate, self.area, self.height, self.width,
                           self.stride, self.fit])

    def spec(self):
        from ..media import ClipSpec

        return ClipSpec(fps=Fraction(self.fps), num_frames=self.num_frames, sample_rate=self.sample_rate,
                        area=self.area, height=self.height, width=self.width)


@dataclass(frozen=True)
class _ClipProbe:
    width: int
    height: int
    fps: Fraction
    duration: float
    has_audio: bool


def probe_clip(path: Path) -> _ClipProbe:
    """Header facts of a video file, after decoding its first frame. Raises ``ValueError`` if unreadable."""
    import av

    from ..media import MediaError

    if not path.is_file():
        raise MediaError(f"{path} does not exist")
    if path.stat().st_size == 0:
        raise MediaError(f"{path} is empty (0 bytes)")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise MediaError(f"{path} has no video stream")
            vs = c.streams.video[0]
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            if not rate:
                raise MediaError(f"{path}: the video stream declares no frame rate")
            if vs.duration is not None and vs.time_base is not None:
                duration = float(vs.duration * vs.time_base)
            elif c.duration is not None:
                duration = c.duration / 1e6
            else:
                duration = float(vs.frames / rate) if vs.frames else 0.0
            next(c.decode(video=0))  # the first frame decodes
            return _ClipProbe(vs.codec_context.width, vs.codec_context.height, Fraction(rate), duration,
                              bool(c.streams.audio))
    except StopIteration:
        raise MediaError(f"{path}: the video stream has no decodable frames") from None
    except av.FFmpegError as exc:
        raise MediaError(f"cannot read {path}: {exc} (truncated, damaged or not a media file?)") from None


# ``check_path(path, what)``: raises ValueError when ``path`` must not be read (ComfyUI's allowed folders);
# ``what`` names the file for the message ("the source of pair3").
PathCheck = Callable[[Path, str], object]


class _FilePairs:
    """Shared logic of folder and manifest datasets: files on disk, conformed to a windowing.

    With ``check_path``, every file or pair folder is checked before it is touched; a refused one makes
    its pair a "refused path" problem, whose text is the check's own (nothing is read from it).
    """

    def __init__(self, windowing: ClipWindowing, require_audio: bool = False, check_path: PathCheck | None = None):
        self.windowing = windowing
        self.require_audio = require_audio
        self._check_path = check_path
        self._entries: list[dict] = []  # name, source, target, instruction (text) or instruction_file
        self._fingerprints: dict[int, str] = {}
        self._bad: dict[int, list[Problem]] = {}

    def _refused(self, path: Path, what: str) -> str | None:
        """The check's message when ``path`` may not be read, else None."""
        if self._check_path is None:
            return None
        try:
            self._check_path(path, what)
        except ValueError as exc:
            return str(exc)
        return None

    def _add_bad(self, name: str, kind: str, detail: str) -> None:
        self._bad[len(self._entries)] = [Problem(name, kind, detail)]
        self._entries.append({"name": name, "instruction": "", "source": None, "target": None, "bad": True})

    def __len__(self) -> int:
        return len(self._entries)

    def name(self, i: int) -> str:
        return self._entries[i]["name"]

    def instruction(self, i: int) -> str:
        e = self._entries[i]
        if "instruction" in e:
            return e["instruction"].strip()
        return Path(e["instruction_file"]).read_text(encoding="utf-8").strip()

    def fingerprint(self, i: int) -> str:
        if i not in self._fingerprints:
            e = self._entries[i]
            h = hashlib.sha256()
            for key in ("source", "target"):
                _hash_file(Path(e[key]), h)
            h.update(self.instruction(i).encode())
            h.update(self.windowing.key().encode())
            self._fingerprints[i] = h.hexdigest()[:32]
        return self._fingerprints[i]

    def check(self, i: int) -> list[Problem]:
        e = self._entries[i]
        if e.get("bad"):
            return list(self._bad[i])
        name = e["name"]
        out = []
        probes = {}
        for key in ("source", "target"):
            path = e.get(key)
            if path is None or not Path(path).is_file():
                out.append(Problem(name, f"missing {key}", f"no {key} clip" + (f" at {path}" if path else "")))
                continue
            try:
                probes[key] = probe_clip(Path(path))
            except (ValueError, OSError) as exc:
                out.append(Problem(name, "unreadable clip", str(exc)))
        if "instruction" not in e and not Path(e.get("instruction_file", "")).is_file():
            out.append(Problem(name, "missing instruction", f"no instruction file at {e.get('instruction_file')}"))
        else:
            try:
                if not self.instruction(i):
                    out.append(Problem(name, "empty instruction", "the instruction is empty or only whitespace"))
            except (UnicodeDecodeError, OSError) as exc:
                out.append(Problem(name, "unreadable instruction", f"{e.get('instruction_file')}: {exc}"))
        if len(probes) == 2:
            s, t = probes["source"], probes["target"]
            if (s.width, s.height) != (t.width, t.height):
                out.append(Problem(name, "size mismatch",
                                   f"source is {s.width}x{s.height}, target {t.width}x{t.height}; expected equal sizes"))
            frame = 1.0 / float(min(s.fps, t.fps))
            if s.fps != t.fps or abs(s.duration - t.duration) > frame + 1e-6:
                out.append(Problem(name, "length mismatch",
                                   f"source is {s.duration:.3f} s at {float(s.fps):g} fps, target {t.duration:.3f} s at "
                                   f"{float(t.fps):g} fps; expected the same length and frame rate"))
            if self.require_audio:
                for key, p in probes.items():
                    if not p.has_audio:
                        out.append(Problem(name, "no audio", f"the {key} clip has no audio stream"))
        return out

    def windows(self, i: int) -> list[PairItem]:
        from ..media import conform, read_clip

        e, w = self._entries[i], self.windowing
        spec = w.spec()
        clips = {k: read_clip(e[k]) for k in ("source", "target")}
        frames = min(round(c.duration * w.fps) for c in clips.values())
        starts = [0]
        if w.stride:
            starts = list(range(0, max(frames - w.num_frames, 0) + 1, w.stride))
        text = self.instruction(i)
        items = []
        for j, s in enumerate(starts):
            c = {k: conform(v, spec, fit=w.fit, start=s / w.fps) for k, v in clips.items()}
            items.append(PairItem(f"{e['name']}#{j}" if len(starts) > 1 else e["name"], c["source"].video,
                                  c["target"].video, c["source"].audio, c["target"].audio, text))
        return items


class FolderPairs(_FilePairs):
    """A folder of pairs: ``ROOT/NAME/source.<ext>``, ``target.<ext>``, ``instruction.txt``.

    Every sub-folder is a pair (a hidden one, ``.cache`` say, is skipped); missing files are
    reported by :func:`validate_pairs`, not raised here.
    """

    def __init__(self, root: str | os.PathLike, windowing: ClipWindowing, *, require_audio: bool = False,
                 check_path: PathCheck | None = None):
        super().__init__(windowing, require_audio, check_path)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder {self.root} not found; expected a folder of "
                                    "NAME/source.mp4, NAME/target.mp4, NAME/instruction.txt")
        for p in sorted(p for p in self.root.iterdir() if not p.name.startswith(".")):
            # Checked before is_dir(): a link to a refused folder is reported without looking into it.
            refused = self._refused(p, f"pair folder {p.name}")
            if refused is not None:
                self._add_bad(p.name, "refused path", refused)
                continue
            if not p.is_dir():
                continue
            self._add_folder(p)
        if not self._entries:
            raise ValueError(f"dataset folder {self.root} has no pair folders; expected "
                             "NAME/source.mp4, NAME/target.mp4, NAME/instruction.txt")

    def _add_folder(self, d: Path) -> None:
        entry = {"name": d.name, "instruction_file": str(d / "instruction.txt")}
        files = [d / "instruction.txt", *(d / f"{key}{s}" for key in ("source", "target") for s in VIDEO_SUFFIXES)]
        for f in files:
            refused = self._refused(f, f"{f.name} of pair {d.name}") if os.path.lexists(f) else None
            if refused is not None:
                self._add_bad(d.name, "refused path", refused)
                return
        for key in ("source", "target"):
            found = [d / f"{key}{s}" for s in VIDEO_SUFFIXES if (d / f"{key}{s}").is_file()]
            if found:
                entry[key] = str(found[0])
        self._entries.append(entry)


class ManifestPairs(_FilePairs):
    """A JSONL manifest: one object per line with ``source``, ``target`` (paths, relative to the
    manifest's folder) and ``instruction`` (text) or ``instruction_file``; ``name`` is optional."""

    def __init__(self, manifest: str | os.PathLike, windowing: ClipWindowing, *, require_audio: bool = False,
                 check_path: PathCheck | None = None):
        super().__init__(windowing, require_audio, check_path)
        self.path = Path(manifest)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest {self.path} not found; expected a .jsonl file")
        base = self.path.parent
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            name = f"line {n}"
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                self._add_bad(name, "bad manifest line", f"{self.path}:{n}: {exc}")
                continue
            name = str(obj.get("name") or Path(str(obj.get("source", name))).parent.name or name)
            if obj.get("name") is None and any(e["name"] == name for e in self._entries):
                name = f"{name}@{n}"
            entry: dict = {"name": name}
            for key in ("source", "target"):
                if obj.get(key):
                    entry[key] = str(base / obj[key])
            if "instruction" in obj:
                entry["instruction"] = str(obj["instruction"])
            elif obj.get("instruction_file"):
                entry["instruction_file"] = str(base / obj["instruction_file"])
            else:
                entry["instruction_file"] = ""
            refused = None
            for key in ("source", "target", "instruction_file"):
                if entry.get(key) and refused is None:
                    refused = self._refused(Path(entry[key]), f"the {key} of {name}")
            if refused is not None:
                self._add_bad(name, "refused path", refused)
                continue
            self._entries.append(entry)
        if not self._entries:
            raise ValueError(f"manifest {self.path} lists no pairs")


class InMemoryPairs:
    """Pairs already in memory (e.g. from a ComfyUI graph or a test), one window each."""

    def __init__(self, items: Sequence[PairItem]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        return self.items[i].name

    def instruction(self, i: int) -> str:
        return self.items[i].instruction.strip()

    def fingerprint(self, i: int) -> str:
        it = self.items[i]
        h = hashlib.sha256(it.instruction.encode())
        for t in (it.source_video, it.target_video, it.source_audio, it.target_audio):
            t = t.detach().to("cpu", torch.float32).contiguous()
            h.update(str(tuple(t.shape)).encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:32]

    def check(self, i: int) -> list[Problem]:
        it = self.items[i]
        out = []
        for d in it.check():
            kind = "empty instruction" if "instruction" in d else (
                "length or size mismatch" if "differ" in d else "bad tensor")
            out.append(Problem(it.name, kind, d))
        return out

    def windows(self, i: int) -> list[PairItem]:
        return [self.items[i]]


class SyntheticPairs:
    """The synthetic editing domain (``training.synthetic``) as a pair source: sample ``i`` of ``seed``."""

    def __init__(self, length: int, *, seed: int = 0, split: str = "train", config=None):
        from .synthetic import SyntheticAVEditDataset

        self.data = SyntheticAVEditDataset(length, split=split, seed=seed, config=config)

    def __len__(self) -> int:
        return len(self.data)

    def name(self, i: int) -> str:
        return f"synthetic-{self.data.split}-{self.data.seed}-{i:07d}"

    def instruction(self, i: int) -> str:
        return self.data[i].instruction

    def fingerprint(self, i: int) -> str:
        blob = json.dumps([self.data.seed, self.data.offset + i, repr(self.data.config)])
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def check(self, i: int) -> list[Problem]:
        return []

    def windows(self, i: int) -> list[PairItem]:
        s = self.data[i]
        return [PairItem(self.name(i), s.source_video, s.target_video, s.source_audio, s.target_audio, s.instruction)]


SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_HELDOUT_PREFIX = "synthetic-heldout:"


def synthetic_spec(spec: str) -> tuple[str, int, int] | None:
    """``(split, count, seed)`` of a synthetic-data spec (``synthetic:COUNT[:SEED]`` or
    ``synthetic-heldout:COUNT[:SEED]``), None for anything else (a path); a malformed spec raises."""
    text = str(spec).strip()
    for prefix, split in ((SYNTHETIC_PREFIX, "train"), (SYNTHETIC_HELDOUT_PREFIX, "heldout")):
        if text.startswith(prefix):
            parts = text[len(prefix):].split(":")
            if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts) and int(parts[0]) > 0:
                return split, int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
            raise ValueError(f"{text!r}: expected {prefix}COUNT or {prefix}COUNT:SEED (COUNT >= 1 pairs of the "
                             "synthetic domain, e.g. synthetic:64)")
    return None


def open_pairs(path: str | os.PathLike, windowing: ClipWindowing, *, require_audio: bool = False,
               check_path: PathCheck | None = None) -> PairSource:
    """A folder or a ``.jsonl`` manifest, whichever ``path`` is (``check_path``: see :class:`_FilePairs`); or ``synthetic:COUNT[:SEED]``
    (``synthetic-heldout:...``): pairs of the synthetic domain (:mod:`.synthetic`), made on the fly
    (32x32 pixels, 17 frames at 16 fps, 16 kHz audio, whatever ``windowing`` says)."""
    spec = synthetic_spec(str(path))
    if spec is not None:
        split, count, seed = spec
        return SyntheticPairs(count, seed=seed, split=split)
    path = Path(path)
    if path.is_dir():
        return FolderPairs(path, windowing, require_audio=require_audio, check_path=check_path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return ManifestPairs(path, windowing, require_audio=require_audio, check_path=check_path)
    raise FileNotFoundError(f"dataset {path} not found or not a folder/.jsonl manifest; expected a folder of "
                            "NAME/{source.mp4,target.mp4,instruction.txt} or a JSONL manifest")


__all__ = [
    "PairItem",
    "PairSource",
    "Problem",
    "DatasetReport",
    "validate_pairs",
    "ClipWindowing",
    "probe_clip",
    "FolderPairs",
    "ManifestPairs",
    "InMemoryPairs",
    "SyntheticPairs",
    "open_pairs",
]
