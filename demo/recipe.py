"""The embedded demo model: its training recipe, its bundle, and its held-out evaluation.

The demo editor (preset ``demo``, DESIGN.md §5, docs/demo.md) is trained **from scratch** (no
Ovi weights: a full fine-tune of a freshly initialised editor) on the synthetic domain
(:mod:`.synthetic`), through the project's own :class:`~.trainer.Trainer`, in the paper's two
stages: stage 1 trains the video tower alone and then the audio tower alone, the cross-modal
attention bypassed; stage 2 trains both jointly with it. Training pairs are generated on the
fly (:class:`SyntheticLatents`: sample ``i`` of the seed, encoded by the exact demo codecs and
the one-hot instruction features of :mod:`..models.demo_text`), so the model never sees a pair
twice within the recipe and nothing but the seed has to be stored.

Files of a demo bundle (``assets/demo/`` ships one; ``instructav2av demo-train --out DIR``
writes one): ``editor.safetensors`` (bf16 editor weights), ``codecs.safetensors`` (the codecs'
per-channel normalisation), ``vocab.json`` (the instruction vocabulary), ``recipe.json`` (the
recipe, the sampling defaults and what the run measured). ``load_demo_bundle`` is registered as
``load_bundle(preset="demo")``.

The ablation in miniature (docs/demo.md) trains the same recipe in variants: ``no_sc`` (the
source half of both patch embeddings pinned at zero: source only through SIGA), ``no_siga``
(every SIGA gate pinned at G = 1: plain text cross-attention, source only through concatenation)
and ``joint_only`` (no stage 1; the joint stage gets the same compute).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.latents import LatentItem
from ..data.synthetic import HELD_OUT_START, SOUNDS, SynthConfig, make_sample
from ..models import siga
from ..models.configs import ModelConfig, get_preset
from ..weights.io import CheckpointFile, atomic_write, write_safetensors
from .codecs import DemoAudioCodec, DemoVideoCodec
from .text import DemoTextEncoder, build_vocabulary

logger = logging.getLogger(__name__)

PRESET = "demo"
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"
EDITOR_FILE, CODECS_FILE, VOCAB_FILE, RECIPE_FILE = "editor.safetensors", "codecs.safetensors", "vocab.json", "recipe.json"
BUNDLE_FILES = (EDITOR_FILE, CODECS_FILE, VOCAB_FILE, RECIPE_FILE)
VARIANTS = ("full", "no_sc", "no_siga", "joint_only")
# A gate logit this large makes 1 - G = sigmoid(-logit) exactly 0 in float32, and so its gradient:
# the pinned gate and the source path behind it never move, whatever the optimizer.
PINNED_GATE_BIAS = 1.0e4


# --------------------------------------------------------------------------------------------
# vocabulary, codecs and data
# --------------------------------------------------------------------------------------------


def fit_demo_codecs(config: SynthConfig | None = None, num_clips: int = 64, seed: int = 0):
    """The demo codecs with their normalisation fitted on ``num_clips`` training samples.

    Both source and target clips are used. Deterministic for fixed arguments.
    """
    cfg = config or SynthConfig()
    samples = [make_sample(i, seed=seed, config=cfg) for i in range(num_clips)]
    video = DemoVideoCodec().fit(
        torch.stack([v for s in samples for v in (s.source_video, s.target_video)]).split(16)
    )
    audio = DemoAudioCodec(sample_rate=cfg.sample_rate).fit(
        torch.stack([w for s in samples for w in (s.source_audio, s.target_audio)]).split(16)
    )
    return video, audio


def demo_vocabulary() -> list[str]:
    """Every word the synthetic instructions can use: the templates' words and every filler."""
    from ..data.synthetic import _TEMPLATES, DEFAULT_SOUND, PALETTE  # the templates are the domain's own

    texts = [re.sub(r"\{[^}]*\}", " ", t) for ts in _TEMPLATES.values() for t in ts]
    texts += [*DEFAULT_SOUND, *PALETTE] + [f"{s.name} {s.verb_s} {s.gerund}" for s in SOUNDS.values()]
    return build_vocabulary(texts)


def demo_text_encoder(config: ModelConfig | None = None) -> DemoTextEncoder:
    config = config or get_preset(PRESET)
    return DemoTextEncoder(demo_vocabulary(), config.video.text_len, config.video.text_dim)


def codecs_state(video: DemoVideoCodec, audio: DemoAudioCodec) -> dict[str, torch.Tensor]:
    return {**{f"video.{k}": v for k, v in video.state_dict().items()},
            **{f"audio.{k}": v for k, v in audio.state_dict().items()}}


def load_codecs(path: str | Path) -> tuple[DemoVideoCodec, DemoAudioCodec]:
    """The demo codecs with the normalisation stored in ``path`` (a ``codecs.safetensors``)."""
    video, audio = DemoVideoCodec(), DemoAudioCodec()
    with CheckpointFile(path) as f:
        for prefix, codec in (("video.", video), ("audio.", audio)):
            want = codec.state_dict()
            have = {k[len(prefix):]: f.read(k, torch.float32) for k in f.shapes if k.startswith(prefix)}
            if set(have) != set(want) or any(have[k].shape != want[k].shape for k in want):
                raise ValueError(f"{path}: not the demo codecs' normalisation (expected {sorted(prefix + k for k in want)})")
            codec.load_state_dict(have)
    return video, audio


class SyntheticLatents:
    """:class:`~.dataset.LatentData` over the synthetic domain, encoded on demand.

    Item ``i`` is ``make_sample(offset + i, seed)`` through the demo codecs and the instruction
    encoder: deterministic, so a resumed run reads exactly what an uninterrupted one read, and
    nothing is held in memory (a few ms per item against ~100 ms of training per item).
    """

    def __init__(self, length: int, *, seed: int, video: DemoVideoCodec, audio: DemoAudioCodec,
                 text: DemoTextEncoder, split: str = "train", synth: SynthConfig | None = None):
        if length < 1 or split not in ("train", "heldout"):
            raise ValueError(f"length={length}, split={split!r}; expected length >= 1 and 'train' or 'heldout'")
        self.length, self.seed, self.split = length, seed, split
        self.offset = HELD_OUT_START if split == "heldout" else 0
        self.video, self.audio, self.text = video, audio, text
        self.synth = synth or SynthConfig()

    def __len__(self) -> int:
        return self.length

    def num_windows(self, i: int) -> int:
        return 1

    def bucket(self, i: int) -> tuple:
        return ()  # every clip has the same geometry

    @torch.no_grad()
    def item(self, i: int, window: int = 0) -> LatentItem:
        s = make_sample(self.offset + i, seed=self.seed, config=self.synth)
        videos = self.video.encode(torch.stack([s.source_video, s.target_video]))
        audios = self.audio.encode(torch.stack([s.source_audio, s.target_audio]))
        return LatentItem(f"synthetic-{self.split}-{self.seed}-{i}", self.text.encode([s.instruction])[0],
                          videos[0], videos[1], audios[0], audios[1])

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps([self.length, self.seed, self.offset, repr(self.synth), self.text.identity]).encode())
        for t in codecs_state(self.video, self.audio).values():
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# the recipe
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that decides the demo weights (with the code). ``steps`` per stage, in order."""

    seed: int = 0
    variant: str = "full"
    video_steps: int = 1100
    audio_steps: int = 800
    joint_steps: int = 900
    batch_size: int = 16
    learning_rate: float = 1e-3
    # "negative": the source half of each patch embedding starts as minus the noisy half (see
    # init_from_scratch); "zero": as the Ovi -> editor conversion
    source_init: str = "negative"
    warmup_steps: int = 100
    lr_scheduler: str = "cosine"
    # noise levels drawn uniformly, then shifted towards noise (sigma -> s*sigma / (1 + (s-1)*sigma)):
    # the first sampling steps, where the edit's structure is decided, run at sigma > 0.9, which the
    # trainer's default logit-normal draw almost never visits (measured: +4 dB PSNR after 300 steps)
    timestep_sampling: str = "uniform"
    shift: float = 3.0
    weight_decay: float = 0.01
    train_pairs: int = 1_000_000  # distinct generated pairs the data order draws from
    codec_clips: int = 64
    # exact float32 attention: ~20% less CPU time per training step than SDPA's bf16 CPU kernels here
    attention: str = "reference"
    # CPU time of one stage-1 step relative to a joint step (measured at the demo preset, batch 16);
    # joint_only turns the stage-1 steps into this many joint steps ("equal compute")
    video_step_cost: float = 0.64
    audio_step_cost: float = 0.27

    def __post_init__(self) -> None:
        if self.source_init not in ("negative", "zero"):
            raise ValueError(f"source_init={self.source_init!r}; expected 'negative' or 'zero'")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}; expected one of {', '.join(VARIANTS)}")
        for name in ("video_steps", "audio_steps", "joint_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected an integer >= 0")
        if not self.stages():
            raise ValueError("the recipe trains nothing: every stage has 0 steps")

    def stages(self) -> list[tuple[str, int]]:
        """``(stage, steps)`` in training order."""
        if self.variant == "joint_only":
            extra = self.video_steps * self.video_step_cost + self.audio_steps * self.audio_step_cost
            return [("joint", self.joint_steps + round(extra))] if self.joint_steps + extra > 0 else []
        plan = [("video", self.video_steps), ("audio", self.audio_steps), ("joint", self.joint_steps)]
        return [(s, n) for s, n in plan if n > 0]

    def scaled(self, factor: float) -> DemoRecipe:
        """The same recipe with every stage ``factor`` times as long (short ablation runs)."""
        return dataclasses.replace(self, **{k: max(1, round(getattr(self, k) * factor)) if getattr(self, k) else 0
                                            for k in ("video_steps", "audio_steps", "joint_steps")},
                                   warmup_steps=round(self.warmup_steps * min(1.0, factor)))

    def train_config(self, stage: str, steps: int, output_dir: Path, index: int):
        from ..training.config import TrainConfig

        return TrainConfig(
            stage=stage, adapter="full", new_params_lr_scale=1.0, learning_rate=self.learning_rate,
            weight_decay=self.weight_decay, warmup_steps=min(self.warmup_steps, steps - 1),
            lr_scheduler=self.lr_scheduler, timestep_sampling=self.timestep_sampling, shift=self.shift,
            steps=steps, batch_size=self.batch_size, seed=self.seed * 10 + index,
            mixed_precision="bf16", output_dir=str(output_dir), checkpoint_every=200, keep_checkpoints=1,
            log_every=50,
        )


def _first_convs(model: torch.nn.Module) -> list[tuple[torch.nn.Module, int]]:
    """Each tower's first layer (where source concatenation widens the input) and its noisy channel count."""
    return [(t.patch_embedding if t.config.modality == "video" else t.patch_embedding[0], t.config.in_dim)
            for t in (model.video_model, model.audio_model)]


@torch.no_grad()
def init_from_scratch(model: torch.nn.Module, source_init: str = "negative") -> None:
    """Initialisation for training the demo editor from scratch (no Ovi weights to start from).

    - The audio stem's convolutions get Xavier-uniform weights, like the video patch embedding
      (Ovi's init leaves them at PyTorch's default, which suits fine-tuning pretrained weights but
      makes the stem's output ~0.003 at this size: the audio tower then did not learn in 500 steps).
    - ``source_init="negative"``: the source half of each first layer is minus the noisy half, so
      the untrained embedding sees ``x_σ - source``: outside the edit the target velocity is exactly
      ``(x_σ - source) / σ``. Measured: 5 % lower video loss over steps 200-300 than zero-initialised
      source channels (docs/demo.md).
    """
    for conv in model.audio_model.patch_embedding.modules():
        if isinstance(conv, torch.nn.Conv1d):
            torch.nn.init.xavier_uniform_(conv.weight)
    if source_init == "negative":
        for conv, n in _first_convs(model):
            conv.weight[:, n:] = -conv.weight[:, :n]


def apply_variant(model: torch.nn.Module, variant: str) -> None:
    """Make a freshly built or loaded editor the ablation ``variant`` (idempotent; see module doc)."""
    if variant == "no_siga":
        for tower in (model.video_model, model.audio_model):
            siga.pin_gate(tower.blocks, PINNED_GATE_BIAS)
    elif variant == "no_sc":
        for conv, n in _first_convs(model):
            with torch.no_grad():
                conv.weight[:, n:].zero_()
            # The source half of the weight gets no gradient, so AdamW (zero moments) never moves it.
            conv.weight.register_hook(lambda g, n=n: torch.cat([g[:, :n], torch.zeros_like(g[:, n:])], dim=1))


def _stage_product(folder: Path, stage: str, steps: int) -> Path:
    return folder / f"editor_{stage}_step{steps:07d}.safetensors"


def _train_stages(recipe: DemoRecipe, config: ModelConfig, work: Path, data: SyntheticLatents,
                  empty: torch.Tensor, log: Callable[[str], None]) -> tuple[Path, dict, dict]:
    """Run the recipe's stages in order, each from the previous one's editor file.

    Returns the last stage's editor file, seconds per stage and the last loss per stage.
    """
    from ..models.dit import AVEditorDiT
    from ..training.trainer import Trainer
    from ..weights.dit import load_model

    previous = work
    seconds: dict[str, float] = {}
    losses: dict[str, float | None] = {}
    for index, (stage, steps) in enumerate(recipe.stages()):
        folder = work / f"{index}-{stage}"
        product = _stage_product(folder, stage, steps)
        if product.is_file():
            log(f"stage {stage}: already trained ({product}); skipping")
            previous = product
            continue
        if index == 0:  # from scratch: no Ovi weights in the demo
            torch.manual_seed(recipe.seed)
            model = AVEditorDiT(config, editor=True)
            init_from_scratch(model, recipe.source_init)
        else:
            model, _ = load_model(previous, dtype=torch.float32, editor=True)
        apply_variant(model, recipe.variant)
        model.set_attention_backend(recipe.attention)  # the recipe's choice, for this model only
        tc = recipe.train_config(stage, steps, folder, index)
        resume = (folder / "checkpoints" / "latest").is_file()
        if resume:
            tc = tc.updated(resume="latest")
        log(f"stage {stage}: {steps} steps of batch {recipe.batch_size}" + (" (resuming)" if resume else ""))
        t0 = time.perf_counter()
        result = Trainer(model, tc, data, empty_context=empty).train()
        seconds[stage] = round(time.perf_counter() - t0, 1)
        losses[stage] = result.loss
        if result.adapter != product:
            raise RuntimeError(f"stage {stage} did not end with {product} (got {result.adapter})")
        previous = product
        log(f"stage {stage}: done in {seconds[stage]:.0f} s, last loss {result.loss:.4f}")
    return previous, seconds, losses


def train_demo(
    out: str | Path,
    recipe: DemoRecipe = DemoRecipe(),
    *,
    work_dir: str | Path | None = None,
    config: ModelConfig | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = logger.info,
) -> dict:
    """Train a demo bundle into ``out`` (see module doc); returns what ``recipe.json`` records.

    ``work_dir`` (default ``out/run-<variant>``) keeps the stages' checkpoints: running the same
    command again resumes the unfinished stage and skips the finished ones. ``config`` replaces
    the ``demo`` preset (tests use a tiny one). Existing bundle files are never replaced unless
    ``overwrite``.
    """
    from ..weights.dit import load_model, save_editor

    out = Path(out)
    config = config or get_preset(PRESET)
    taken = [out / f for f in BUNDLE_FILES if (out / f).exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, taken))} already exist(s); choose another --out or pass --overwrite")
    work = Path(work_dir) if work_dir is not None else out / f"run-{recipe.variant}"
    started = time.perf_counter()
    video_codec, audio_codec = fit_demo_codecs(SynthConfig(), num_clips=recipe.codec_clips, seed=recipe.seed)
    text = DemoTextEncoder(demo_vocabulary(), config.video.text_len, config.video.text_dim)
    data = SyntheticLatents(recipe.train_pairs, seed=recipe.seed, video=video_codec, audio=audio_codec, text=text)
    previous, seconds, losses = _train_stages(recipe, config, work, data, text.encode([""])[0], log)

    model, _ = load_model(previous, dtype=torch.bfloat16, editor=True)
    record = {
        "recipe": dataclasses.asdict(recipe),
        "preset": config.name,
        "config": config.to_dict(),
        "stages": recipe.stages(),
        "stage_seconds": seconds,
        "last_loss": losses,
        "train_seconds": round(time.perf_counter() - started, 1),
        "threads": torch.get_num_threads(),
        "sampling": dataclasses.asdict(DEFAULT_SAMPLING),
        "command": "instructav2av demo-train " + " ".join(recipe_flags(recipe)),
    }
    out.mkdir(parents=True, exist_ok=True)
    save_editor(model, out / EDITOR_FILE, overwrite=overwrite,
                origin=f"demo-train: trained from scratch on the synthetic domain, variant {recipe.variant}",
                extra_metadata={"recipe": json.dumps(dataclasses.asdict(recipe))})
    atomic_write(out / CODECS_FILE, lambda f: write_safetensors(f, codecs_state(video_codec, audio_codec),
                                                                 {"format": "instructav2av-demo-codecs"}),
                 overwrite=overwrite)
    text.save(out / VOCAB_FILE, overwrite=overwrite)
    atomic_write(out / RECIPE_FILE, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()),
                 overwrite=overwrite)
    return record


def recipe_flags(recipe: DemoRecipe) -> list[str]:
    """Command-line flags that reproduce ``recipe`` (only those that differ from the defaults)."""
    default = DemoRecipe()
    flags = []
    for f in dataclasses.fields(DemoRecipe):
        value = getattr(recipe, f.name)
        if value != getattr(default, f.name):
            flags += [f"--{f.name.replace('_', '-')}", str(value)]
    return flags


# --------------------------------------------------------------------------------------------
# the bundle
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSampling:
    """Sampling settings of the demo bundle (chosen on held-out cases, docs/demo.md)."""

    steps: int = 16
    shift: float = 3.0
    solver: str = "euler"
    video_instruction_scale: float = 1.0
    video_source_scale: float = 1.0
    audio_instruction_scale: float = 1.0
    audio_source_scale: float = 1.0

    def guidance(self):
        from ..samplers import EditGuidance

        return EditGuidance(self.video_instruction_scale, self.video_source_scale, self.audio_instruction_scale,
                            self.audio_source_scale)


DEFAULT_SAMPLING = DemoSampling()


def _bundle_folder(model: str | Path | None) -> tuple[Path, Path]:
    """(folder of the bundle files, editor file) for ``model`` = None, a bundle folder or an editor file."""
    path = Path(model).expanduser() if model is not None else ASSETS
    folder, editor = (path, path / EDITOR_FILE) if path.is_dir() or model is None else (path.parent, path)
    missing = [str(p) for p in (editor, folder / CODECS_FILE, folder / VOCAB_FILE) if not p.is_file()]
    if missing:
        if editor.is_file():  # an editor without its companions, e.g. from merge-adapter into another folder
            raise FileNotFoundError(
                f"demo bundle incomplete: {', '.join(missing)} not found. A demo editor reads the codecs and "
                f"vocabulary of the bundle it came from beside it: copy {CODECS_FILE} and {VOCAB_FILE} from that "
                f"bundle's folder (the shipped one: {ASSETS}) into {folder} (`instructav2av merge-adapter` does "
                "this itself when its base is a demo bundle's editor)")
        raise FileNotFoundError(f"demo bundle incomplete: {', '.join(missing)} not found; write a bundle with "
                                f"`instructav2av demo-train --out {folder}` (see assets/demo/README.md)")
    return folder, editor


def load_demo_bundle(*, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                     model: str | Path | None = None, **files):
    """The demo :class:`~instructav2av.editing.bundle.EditorBundle` (registered as ``load_bundle(preset="demo")``).

    ``model``: another demo bundle folder or editor file (e.g. an ablation run); default the
    shipped ``assets/demo``. The codecs and vocabulary come from the editor file's folder.
    """
    from ..editing.bundle import EditDefaults, EditorBundle
    from ..weights.dit import load_model

    given = sorted(k for k, v in files.items() if v is not None)
    if given:
        raise ValueError(f"the demo bundle brings its own codecs and instruction encoder; do not pass "
                         f"{', '.join(given)} (only model= may name another demo editor file or folder)")
    folder, editor = _bundle_folder(model)
    net, info = load_model(editor, dtype=dtype, device=device, editor=True)
    video, audio = load_codecs(folder / CODECS_FILE)
    text = DemoTextEncoder.load(folder / VOCAB_FILE)
    if text.text_dim != info.config.video.text_dim:
        raise ValueError(f"{folder / VOCAB_FILE} makes {text.text_dim}-wide features; {editor} expects "
                         f"{info.config.video.text_dim} (files from different demo bundles?)")
    sampling = DEFAULT_SAMPLING
    if (folder / RECIPE_FILE).is_file():
        sampling = DemoSampling(**json.loads((folder / RECIPE_FILE).read_text()).get("sampling", {}))
    defaults = EditDefaults(steps=sampling.steps, shift=sampling.shift, solver=sampling.solver,
                            guidance=sampling.guidance())
    return EditorBundle(net, video.to(device), audio.to(device), text, info.config, device=device, dtype=dtype,
                        defaults=defaults, name="demo")


def _register() -> None:
    from ..editing.bundle import register_bundle_loader

    register_bundle_loader(PRESET, load_demo_bundle)


_register()


# --------------------------------------------------------------------------------------------
# the bundled demo clip
# --------------------------------------------------------------------------------------------

CLIP_FILE, CLIP_INFO_FILE, INSTRUCTION_FILE = "clip.mp4", "clip.json", "instruction.txt"
DEMO_CLIP_FIRST = 1000  # held-out offsets from here serve the demo clip; evaluations use 0, 1, 2, ...
# The bundled clip is *chosen*: held-out case 1020 (seed 0), a "remove" edit of picture and sound that
# the shipped model gets right. Its accuracy over all edit types is lower (docs/demo.md gives it per type).
DEMO_CLIP_OFFSET = 1020


def demo_clip_offset(data_seed: int = 0, edit_type: str | None = None) -> int:
    """The demo clip's held-out offset: :data:`DEMO_CLIP_OFFSET`, or the first offset >=
    :data:`DEMO_CLIP_FIRST` with an ``edit_type`` edit and two objects in view."""
    if edit_type is None:
        return DEMO_CLIP_OFFSET
    for offset in range(DEMO_CLIP_FIRST, DEMO_CLIP_FIRST + 1000):
        m = make_sample(HELD_OUT_START + offset, seed=data_seed).meta
        if m.edit_type == edit_type and m.context_objects:
            return offset
    raise ValueError(f"no {edit_type!r} edit with two objects among 1000 held-out samples of seed {data_seed}")


def write_demo_clip(folder: str | Path, *, data_seed: int = 0, edit_type: str | None = None,
                    overwrite: bool = False) -> dict:
    """Write the demo clip (a held-out synthetic source), its instruction and where it came from."""
    from ..media import write_clip

    folder = Path(folder)
    taken = [folder / f for f in (CLIP_FILE, CLIP_INFO_FILE, INSTRUCTION_FILE) if (folder / f).exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, taken))} already exist(s); pass --overwrite to replace them")
    offset = demo_clip_offset(data_seed, edit_type)
    s = make_sample(HELD_OUT_START + offset, seed=data_seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_clip(folder / CLIP_FILE, s.source_video, s.meta.fps, s.source_audio, s.meta.sample_rate, overwrite=overwrite)
    info = {"data_seed": data_seed, "heldout_offset": offset, "index": HELD_OUT_START + offset,
            "edit_type": s.meta.edit_type, "instruction": s.instruction}
    atomic_write(folder / CLIP_INFO_FILE, lambda f: f.write((json.dumps(info, indent=1) + "\n").encode()),
                 overwrite=overwrite)
    atomic_write(folder / INSTRUCTION_FILE, lambda f: f.write((s.instruction + "\n").encode()), overwrite=overwrite)
    return info


def demo_clip_sample(folder: str | Path = ASSETS):
    """``(sample, info)``: the synthetic sample (with its ground truth) that ``folder``'s demo clip shows."""
    path = Path(folder) / CLIP_INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; write the demo clip with `instructav2av demo-train --clip-only --out {folder}`")
    info = json.loads(path.read_text())
    return make_sample(int(info["index"]), seed=int(info["data_seed"])), info


# --------------------------------------------------------------------------------------------
# held-out evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def edit_samples(bundle, samples, *, seed: int = 0, steps: int | None = None, shift: float | None = None,
                 solver: str | None = None, guidance=None, batch_size: int = 8, step_cache: float = 0.0):
    """Edit synthetic samples in batches with ``bundle``; returns ``[(video [3,T,H,W], audio [N])]``.

    ``step_cache``: the sampler's step-caching threshold (0 = off; ``bench/step_speedups.py``)."""
    from ..editing.stages import decode_latents
    from ..samplers import EditConditioning, sample

    d = bundle.defaults
    outputs = []
    empty = bundle.text_encoder.encode([""])[0]
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        dev = bundle.device
        video = bundle.video_codec.encode(torch.stack([s.source_video for s in chunk]).to(dev))
        audio = bundle.audio_codec.encode(torch.stack([s.source_audio for s in chunk]).to(dev))
        ctx = bundle.text_encoder.encode([s.instruction for s in chunk])
        width = max(c.shape[0] for c in ctx)  # zero rows are exact: the model zero-pads to text_len anyway
        ctx = torch.stack([torch.nn.functional.pad(c, (0, 0, 0, width - c.shape[0])) for c in ctx]).to(dev)
        neg = empty[None].expand(len(chunk), -1, -1).to(dev)
        v, a = sample(bundle.model, EditConditioning.of(video, audio, ctx, neg, neg), steps=steps or d.steps,
                      shift=d.shift if shift is None else shift, solver=solver or d.solver, seed=seed,
                      guidance=guidance or d.guidance, dtype=bundle.dtype, step_cache=step_cache)
        frames, waves = decode_latents(bundle, v, a, num_samples=chunk[0].source_audio.shape[0])
        outputs += list(zip(frames, waves))
    return outputs


def evaluate_heldout(bundle, count: int, *, data_seed: int = 0, start: int = 0, batch_size: int = 8,
                     **sampling) -> tuple[dict, list[dict]]:
    """Edit held-out samples ``start .. start+count-1`` of ``data_seed`` and score them.

    Returns ``(summary, per-sample results)`` (:func:`.metrics.evaluate_synthetic`, :func:`.metrics.summarize`).
    """
    from ..evaluation.metrics import evaluate_synthetic, summarize

    if count < 1:
        raise ValueError(f"count={count}; expected at least one held-out case")
    samples = [make_sample(HELD_OUT_START + start + i, seed=data_seed) for i in range(count)]
    outputs = edit_samples(bundle, samples, batch_size=batch_size, **sampling)
    results = [evaluate_synthetic(v, a, s) for (v, a), s in zip(outputs, samples)]
    return summarize(results), results


__all__ = [
    "DemoRecipe",
    "DemoSampling",
    "DEFAULT_SAMPLING",
    "SyntheticLatents",
    "VARIANTS",
    "apply_variant",
    "init_from_scratch",
    "train_demo",
    "recipe_flags",
    "load_demo_bundle",
    "load_codecs",
    "codecs_state",
    "demo_vocabulary",
    "demo_text_encoder",
    "edit_samples",
    "evaluate_heldout",
    "write_demo_clip",
    "demo_clip_sample",
    "demo_clip_offset",
]
