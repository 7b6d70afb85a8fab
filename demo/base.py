"""The demo base generator: a small text-to-audio-video model of the synthetic domain, for FlowEdit.

FlowEdit edits with a *base* (plain, text-to-audio-video) model. To score it on the same held-out
synthetic cases as the trained demo editor (docs/flowedit.md), the demo ships a base model of the
domain beside the editor: the same codecs, a smaller DiT in base mode (no source concatenation, no
SIGA), trained from scratch by the project's own :class:`~..training.trainer.Trainer` on clips of the
domain captioned by :func:`describe` (``"a red circle and a blue square. Audio: beep and hum"``).

Files (beside the editor in ``assets/demo/``): ``base.safetensors`` (bf16 weights, base mode),
``base_vocab.json`` (the description vocabulary), ``base_recipe.json`` (recipe and what the run
measured); the codecs are the editor's ``codecs.safetensors``. ``load_base_bundle`` is registered as
``load_bundle(preset="demo", mode="base")`` (the ``demo-base`` loader).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.latents import LatentItem
from ..data.synthetic import HELD_OUT_START, PALETTE, SHAPES, SOUNDS, SceneObject, SynthConfig, make_sample
from ..models.configs import ModelConfig, get_preset
from ..weights.io import atomic_write
from .recipe import ASSETS, CODECS_FILE, SyntheticLatents, load_codecs
from .text import DemoTextEncoder, build_vocabulary

logger = logging.getLogger(__name__)

BASE_FILE, BASE_VOCAB_FILE, BASE_RECIPE_FILE = "base.safetensors", "base_vocab.json", "base_recipe.json"
BASE_LOADER = "demo-base"


def describe(objects: Sequence[SceneObject]) -> str:
    """A scene's description in Ovi's format: the shapes, then ``Audio:`` and their sounds."""
    if not objects:
        return "an empty floor. Audio: quiet"

    def join(words: list[str]) -> str:
        return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]

    return f"{join([f'a {o.color} {o.shape}' for o in objects])}. Audio: {join([o.sound for o in objects])}"


def scene_descriptions(sample) -> tuple[str, str]:
    """(source, target) descriptions of a synthetic edit: the context objects, then the edited one."""
    m = sample.meta
    context = list(m.context_objects)
    return (describe(context + ([m.source_object] if m.source_object else [])),
            describe(context + ([m.target_object] if m.target_object else [])))


def base_vocabulary() -> list[str]:
    words = [*PALETTE, *SHAPES, *SOUNDS, "a", "an", "and", "empty", "floor", "quiet", "audio", ",", ".", ":"]
    return build_vocabulary([" ".join(words)])


def base_config() -> ModelConfig:
    """The demo preset's clip and towers at a quarter of the width budget (< 8 MB in bf16)."""
    demo = get_preset("demo")
    towers = {m: dataclasses.replace(getattr(demo, m), dim=128, ffn_dim=256, num_heads=4, num_layers=4,
                                     conv_mlp_multiple_of=32) for m in ("video", "audio")}
    return dataclasses.replace(demo, name="demo-base", **towers)


class SyntheticScenes(SyntheticLatents):
    """Captioned clips of the synthetic domain: item ``i`` is the source (even) or target (odd) clip of
    sample ``i // 2`` with its description; the trainer in base mode ignores the (equal) source."""

    @torch.no_grad()
    def item(self, i: int, window: int = 0) -> LatentItem:
        s = make_sample(self.offset + i // 2, seed=self.seed, config=self.synth)
        text = scene_descriptions(s)[i % 2]
        video = s.target_video if i % 2 else s.source_video
        audio = s.target_audio if i % 2 else s.source_audio
        v = self.video.encode(video[None])[0]
        a = self.audio.encode(audio[None])[0]
        return LatentItem(f"scene-{self.seed}-{i}", self.text.encode([text])[0], v, v, a, a)


@dataclass(frozen=True)
class BaseRecipe:
    seed: int = 0
    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    shift: float = 3.0

    def train_config(self, output_dir: Path):
        from ..training.config import TrainConfig

        return TrainConfig(stage="joint", adapter="full", new_params_lr_scale=1.0, learning_rate=self.learning_rate,
                           weight_decay=0.01, warmup_steps=min(self.warmup_steps, self.steps - 1),
                           lr_scheduler="cosine", timestep_sampling="uniform", shift=self.shift, steps=self.steps,
                           batch_size=self.batch_size, seed=self.seed, mixed_precision="bf16",
                           output_dir=str(output_dir), checkpoint_every=100, keep_checkpoints=1, log_every=25)


def train_base(out: str | Path, recipe: BaseRecipe = BaseRecipe(), *, config: ModelConfig | None = None,
               overwrite: bool = False, log: Callable[[str], None] = logger.info) -> dict:
    """Train the base generator into ``out`` (``base.safetensors``, ``base_vocab.json``, ``base_recipe.json``;
    the run's checkpoints under ``out/run-base``, resumed when run again). The codecs are the shipped
    editor's; copy ``codecs.safetensors`` beside the result to load it from another folder."""
    from ..models.attention import get_attention_backend, set_attention_backend
    from ..models.dit import AVEditorDiT
    from ..training.trainer import Trainer
    from ..weights.dit import load_model, save_editor
    from .recipe import init_from_scratch

    out = Path(out)
    config = config or base_config()
    taken = [out / f for f in (BASE_FILE, BASE_VOCAB_FILE, BASE_RECIPE_FILE) if (out / f).exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, taken))} already exist(s); choose another folder or overwrite")
    work = out / "run-base"
    started = time.perf_counter()
    # the shipped editor's codecs (the base bundle reads them from beside the editor)
    video, audio = load_codecs(ASSETS / CODECS_FILE)
    text = DemoTextEncoder(base_vocabulary(), config.video.text_len, config.video.text_dim)
    data = SyntheticScenes(2_000_000, seed=recipe.seed, video=video, audio=audio, text=text)
    torch.manual_seed(recipe.seed)
    model = AVEditorDiT(config, editor=False)
    init_from_scratch(model, source_init="zero")  # the audio stem's Xavier init (no source half in base mode)
    tc = recipe.train_config(work)
    if (work / "checkpoints" / "latest").is_file():
        tc = tc.updated(resume="latest")
    before = get_attention_backend()
    set_attention_backend("reference")
    try:
        result = Trainer(model, tc, data, empty_context=text.encode([""])[0]).train()
    finally:
        set_attention_backend(None if before == "auto" else before)
    model, _ = load_model(result.adapter, dtype=torch.bfloat16, editor=False)
    record = {"recipe": dataclasses.asdict(recipe), "config": config.to_dict(), "last_loss": result.loss,
              "train_seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads()}
    out.mkdir(parents=True, exist_ok=True)
    save_editor(model, out / BASE_FILE, overwrite=overwrite,
                origin="demo base generator: trained from scratch on captioned synthetic clips (base mode)")
    text.save(out / BASE_VOCAB_FILE, overwrite=overwrite)
    atomic_write(out / BASE_RECIPE_FILE, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()),
                 overwrite=overwrite)
    log(f"base generator: {recipe.steps} steps in {record['train_seconds']:.0f} s, last loss {result.loss:.4f}")
    return record


def load_base_bundle(*, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                     model: str | Path | None = None, **files):
    """The demo base generator as an :class:`~..editing.bundle.EditorBundle` in base mode."""
    from ..editing.bundle import EditDefaults, EditorBundle
    from ..weights.dit import load_model

    if any(v is not None for v in files.values()):
        raise ValueError("the demo base bundle brings its own codecs and text encoder; pass only model=")
    folder = Path(model).expanduser() if model is not None else ASSETS
    folder = folder if folder.is_dir() else folder.parent
    missing = [str(folder / f) for f in (BASE_FILE, BASE_VOCAB_FILE, CODECS_FILE) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"demo base generator incomplete: {', '.join(missing)} not found (train it with "
                                "demo.base.train_base)")
    net, info = load_model(folder / BASE_FILE, dtype=dtype, device=device, editor=False)
    video, audio = load_codecs(folder / CODECS_FILE)
    text = DemoTextEncoder.load(folder / BASE_VOCAB_FILE)
    return EditorBundle(net, video.to(device), audio.to(device), text, info.config, device=device, dtype=dtype,
                        defaults=EditDefaults(steps=16, shift=3.0, solver="euler"), name="demo-base", mode="base")


def _register() -> None:
    from ..editing.bundle import register_bundle_loader

    register_bundle_loader(BASE_LOADER, load_base_bundle)


_register()


# --------------------------------------------------------------------------------------------
# held-out comparison: FlowEdit on the base generator vs the trained editor, with and without the mask
# --------------------------------------------------------------------------------------------


def truth_mask(sample, pad_seconds: float = 0.05) -> tuple[torch.Tensor | None, list[tuple[float, float]]]:
    """The ground-truth fence of a synthetic edit: the edited object's pixels (source or target) and the
    time spans of its sounds (padded); None / [] where that modality is not edited."""
    m = sample.meta
    video = m.edit_mask.float() if m.edits_video and bool(m.edit_mask.any()) else None
    ranges = []
    if m.edits_audio:
        for e in (*m.source_events, *m.target_events):
            ranges.append((max(0.0, e.time - pad_seconds), e.time + e.duration + pad_seconds))
    return video, ranges


@torch.no_grad()
def compare_heldout(editor, base, count: int, *, data_seed: int = 0, seed: int = 0, flowedit_steps: int = 16,
                    settings=None, log: Callable[[str], None] = logger.info) -> dict[str, dict]:
    """Score four methods on held-out cases ``0 .. count-1``: the editor and FlowEdit on ``base``, each
    without and with the ground-truth mask. Returns ``{method: summary}`` (:func:`..evaluation.metrics.summarize`,
    plus per-edit-type accuracies)."""
    from ..editing.stages import decode_latents
    from ..evaluation.metrics import evaluate_synthetic, summarize
    from ..samplers import sample as edit_sample
    from ..samplers.flowedit import FlowEditSettings, flowedit
    from ..samplers.masks import build_preserve_mask

    settings = settings or FlowEditSettings(video_n_max=12, audio_n_max=12)
    results: dict[str, list[dict]] = {k: [] for k in ("editor", "editor+mask", "flowedit", "flowedit+mask")}
    d = editor.defaults
    for i in range(count):
        s = make_sample(HELD_OUT_START + i, seed=data_seed)
        cfg = SynthConfig()
        vmask, ranges = truth_mask(s)
        for name, b in (("editor", editor), ("flowedit", base)):
            video = b.video_codec.encode(s.source_video[None].to(b.device))
            audio = b.audio_codec.encode(s.source_audio[None].to(b.device))
            for masked in (False, True):
                preserve = None
                if masked:
                    preserve = build_preserve_mask(video_mask=vmask, audio_ranges=ranges or None, video_latent=video,
                                                   audio_latent=audio, num_frames=cfg.num_frames,
                                                   duration=cfg.duration, allow_empty=True)
                if name == "editor":
                    ctx = b.text_encoder.encode([s.instruction])[0][None].to(b.device)
                    neg = b.text_encoder.encode([""])[0][None].to(b.device)
                    v, a = edit_sample(b.model, video_source=video, audio_source=audio, video_context=ctx,
                                       audio_context=ctx, video_negative=neg, audio_negative=neg, steps=d.steps,
                                       shift=d.shift, solver=d.solver, seed=seed, guidance=d.guidance,
                                       preserve=preserve)
                else:
                    src_text, tar_text = scene_descriptions(s)
                    src, tar, neg = (b.text_encoder.encode([t])[0][None].to(b.device) for t in (src_text, tar_text, ""))
                    v, a = flowedit(b.model, video_source=video, audio_source=audio, source_context=src,
                                    target_context=tar, video_negative=neg, audio_negative=neg,
                                    steps=flowedit_steps, shift=b.defaults.shift, seed=seed, settings=settings,
                                    preserve=preserve)
                frames, wave = decode_latents(b, v, a, num_samples=s.source_audio.shape[0])
                r = evaluate_synthetic(frames[0], wave[0], s)
                results[name + ("+mask" if masked else "")].append(r)
        log(f"held-out case {i + 1}/{count} ({s.meta.edit_type}) scored")
    out = {}
    for method, rs in results.items():
        summary = summarize(rs)
        for edit_type in sorted({r["edit_type"] for r in rs}):
            sub = summarize([r for r in rs if r["edit_type"] == edit_type])
            summary[f"{edit_type}/count"] = sub["count"]
            for key in ("video_edit_correct", "audio_edit_correct"):
                if key in sub:
                    summary[f"{edit_type}/{key}"] = sub[key]
        out[method] = summary
    return out


__all__ = ["describe", "scene_descriptions", "base_vocabulary", "base_config", "SyntheticScenes", "BaseRecipe",
           "train_base", "load_base_bundle", "truth_mask", "compare_heldout", "BASE_LOADER"]
