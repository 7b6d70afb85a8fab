"""The memory planner: peak device memory and peak host RAM of an edit or a training run, before anything loads.

Every figure comes from shapes, on PyTorch's ``meta`` device (no weights, no memory, no files):

- **weights**: the models are built on ``meta`` and their tensors counted in the dtype each one is
  stored in (fp8 Linears: one byte plus a 4-byte scale; everything else in the compute dtype);
- **activations**: one DiT forward (and, for training, its backward) is *run* on ``meta`` tensors
  under a dispatch mode that follows every storage the real run would allocate, including the
  per-layer weight upcasts and the fetched swap blocks' temporaries, and frees it when the real run
  would; the peak of the live bytes is the activation figure. Attention kernels are replaced by
  their output (the memory-efficient kernels' only allocation of note) and their workspace is added
  by formula (:func:`attention_workspace`), because ``meta`` would otherwise trace PyTorch's
  reference ``tokens²`` path;
- **VAE decode**: :func:`estimate_vae_memory` runs one tile's first chunks of the Wan2.2 VAE on
  ``meta`` (activations + causal cache) and adds the output;
- **text encoder**: umT5-XXL built on ``meta`` (its weights; its activations at 512 tokens are small).

Phases and placement (what is on the device when): the instruction is encoded first (the text
encoder on the device, or on the CPU with ``text_encoder="cpu"``; ``"offload"`` moves it off the
device after encoding, ComfyUI's default flow; ``"device"`` keeps it there, as ``instructav2av edit``
does today), then the DiT samples (resident weights + two swapped blocks in flight + activations +
attention workspace), then the VAE decodes (the DiT's resident part still loaded). Peak device memory
is the largest phase; peak host RAM is the process baseline plus whatever waits in host memory
(swapped blocks unless streamed from the file, an offloaded or CPU text encoder) plus, on a CPU run,
everything. :data:`HOST_BASELINE` and :data:`CUDA_OVERHEAD` are measured constants (docs/memory.md).
``bench/memory_planner.py`` checks the figures against measured peak RSS on this CPU.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import lru_cache
from itertools import product

import torch
from diffusers import AutoencoderKLWan
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..models.codecs.video_vae import NO_TILING, VAETiling, VideoVAE
from ..models.configs import ModelConfig, get_preset
from .meter import LiveBytes

GB = 1e9
GIB = 1024**3
# RSS of a Python process that has imported torch and this package (measured on this machine's
# torch 2.9.1 CPU wheel: 0.70 GB; CUDA builds load more libraries, but those are host RAM only)
HOST_BASELINE = int(0.70 * GB)
# what the first model build and forward add on top on the CPU (lazily loaded kernels, oneDNN/MKL
# buffers and thread pools), measured with the 1 MB "tiny" model: 0.18 GB
CPU_RUNTIME = int(0.18 * GB)
# a CUDA process also maps the CUDA libraries and context into host memory: an allowance, not measured here
CUDA_HOST_RUNTIME = int(1.0 * GB)
# CUDA context, cuBLAS workspace and allocator slack on the device: a round allowance
CUDA_OVERHEAD = int(0.8 * GB)
TEXT_TOKENS = 512  # Ovi's text_len: the instruction is padded to it before the text embedding
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FP8 = {"e4m3fn": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
TEXT_ENCODER_PLACEMENTS = ("device", "offload", "cpu")
ATTENTION_KINDS = ("flash", "math")


@dataclass(frozen=True)
class Settings:
    """What a run is: the clip, the precision, and where weights and work go."""

    preset: str = "ovi-720-5s"
    width: int = 0  # 0: the preset's square area
    height: int = 0
    frames: int = 0  # 0: the preset's
    dtype: str = "bf16"
    fp8: str = ""  # "", "e4m3fn" or "e5m2": the DiT's Linears stored as scaled fp8
    blocks_to_swap: int = 0
    stream_blocks: bool = False
    batch_guidance: bool = True
    vae_tiling: bool = False
    text_encoder: str = "offload"  # "device" | "offload" | "cpu"
    text_encoder_fp8: bool = False
    vae: str = "offload"  # "device": the VAEs stay on the device (the edit command) | "offload": only to decode
    attention: str = "flash"
    device: str = "cuda"  # "cuda" or "cpu" (then device memory is host RAM)
    mode: str = "edit"  # "edit" | "train" | "forward" (one DiT forward: what the CPU bench measures)
    lora_rank: int = 32
    gradient_checkpointing: bool = True
    batch: int = 1

    def check(self) -> Settings:
        config = get_preset(self.preset)
        problems = []
        if self.dtype not in DTYPE_BYTES:
            problems.append(f"dtype {self.dtype!r}: expected one of {', '.join(DTYPE_BYTES)}")
        if self.fp8 not in ("", *FP8):
            problems.append(f"fp8 {self.fp8!r}: expected '' (none), e4m3fn or e5m2")
        if not 0 <= self.blocks_to_swap <= config.video.num_layers:
            problems.append(f"blocks_to_swap={self.blocks_to_swap} but {config.name} has {config.video.num_layers} "
                            "blocks per tower")
        if self.text_encoder not in TEXT_ENCODER_PLACEMENTS:
            problems.append(f"text_encoder {self.text_encoder!r}: expected one of {', '.join(TEXT_ENCODER_PLACEMENTS)}")
        if self.vae not in ("device", "offload"):
            problems.append(f"vae {self.vae!r}: expected device or offload")
        if self.attention not in ATTENTION_KINDS:
            problems.append(f"attention {self.attention!r}: expected one of {', '.join(ATTENTION_KINDS)}")
        if self.mode not in ("edit", "train", "forward"):
            problems.append(f"mode {self.mode!r}: expected edit, train or forward")
        if self.device not in ("cuda", "cpu"):
            problems.append(f"device {self.device!r}: expected cuda or cpu")
        for name in ("width", "height", "frames"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if (self.width > 0) != (self.height > 0):
            problems.append("give both width and height, or neither (the preset's area)")
        if self.frames and (self.frames - 1) % 4:
            problems.append(f"frames={self.frames}: the Wan2.2 VAE takes 1 + 4k frames (e.g. 17, 121)")
        if self.batch < 1 or self.lora_rank < 1:
            problems.append("batch and lora_rank must be >= 1")
        if problems:
            raise ValueError("memory plan settings: " + "; ".join(problems))
        return self

    @property
    def config(self) -> ModelConfig:
        return get_preset(self.preset)

    def geometry(self) -> tuple[int, int, int, int]:
        """(latent frames, latent height, latent width, audio latents) of the clip."""
        c = self.config
        frames = self.frames or c.num_frames
        if self.width:
            h, w = self.height, self.width
        else:
            side = int(math.sqrt(c.area)) // 32 * 32
            h = w = side
        lf = 1 + (frames - 1) // 4
        audio = max(1, math.ceil(c.audio_latents * frames / c.num_frames))
        return lf, h // 16, w // 16, audio

    def tokens(self) -> tuple[int, int]:
        lf, lh, lw, audio = self.geometry()
        p = self.config.video.patch_size
        return lf * (lh // p[1]) * (lw // p[2]), audio


# -- live-storage tracing on meta ---------------------------------------------------------------------


class _LiveBytes(TorchDispatchMode):
    """Follows every storage made inside the mode; ``peak`` is the most bytes alive at once."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        # storages made before the trace (weights, inputs): their views are not new memory
        self.known = {StorageWeakRef(t.untyped_storage()) for t in existing}
        self.live: dict[StorageWeakRef, int] = {}
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # storages the program dropped since the last op are free before this op allocates
        for r in [r for r in self.live if r.expired()]:
            self.now -= self.live.pop(r)
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                ref = StorageWeakRef(st)
                if ref not in self.live and ref not in self.known:
                    self.live[ref] = st.nbytes()
                    self.now += st.nbytes()
        self.peak = max(self.peak, self.now)
        return out


@contextmanager
def _attention_on_meta():
    """The attention call returns its output only (see the module docstring for the workspace)."""
    from ..models import blocks

    real = blocks.attention

    def fake(q, k, v, k_lens=None, k_counts=None, backend=None):
        return torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)

    blocks.attention = fake
    try:
        yield
    finally:
        blocks.attention = real


def trace_peak(fn: Callable[[], object], existing: Iterable[torch.Tensor] = ()) -> int:
    """Peak bytes of the storages ``fn`` allocates on ``meta``; ``existing``: tensors made before it
    (weights, inputs), whose views and in-place results are not new memory."""
    mode = _LiveBytes(existing)
    with mode:
        result = fn()
    del result
    return mode.peak


# -- the video VAE (encode/decode working memory, by one tile's chunks on meta) -----------------------


@dataclass(frozen=True)
class VAEMemoryEstimate:
    """Bytes for one encode or decode. ``working`` is the peak of live tensors inside one tile
    (activations + causal cache), measured on the ``meta`` device; backends add their own
    convolution workspaces on top (see docs/parity-video-vae.md for measured ratios)."""

    weights: int
    working: int
    output: int

    @property
    def total(self) -> int:
        return self.weights + self.working + self.output


def _meta_vae(vae_or_config: VideoVAE | dict, dtype: torch.dtype) -> VideoVAE:
    config = dict(vae_or_config.vae.config) if isinstance(vae_or_config, VideoVAE) else dict(vae_or_config)
    accepted = set(inspect.signature(AutoencoderKLWan.__init__).parameters) - {"self"}
    with torch.device("meta"):
        vae = nn.Module.to(AutoencoderKLWan(**{k: v for k, v in config.items() if k in accepted}), dtype)
    return VideoVAE(vae)


def _chunk_passes(vm: VideoVAE, x: torch.Tensor, mode: str, frames_per_chunk: int, steps: int) -> Iterator[None]:
    # The first chunk plus a few steady-state chunks reach the peak: the cache is full by then.
    cache: list = [None] * (vm._n_enc_convs if mode == "encode" else vm._n_dec_convs)
    for i in range(steps):
        n = 1 if i == 0 else frames_per_chunk * (vm.temporal_factor if mode == "encode" else 1)
        xi = x[:, :, :n]
        if mode == "encode":
            h = vm.vae.quant_conv(vm.vae.encoder(xi, feat_cache=cache, feat_idx=[0]))
        else:
            h = vm.vae.decoder(vm.vae.post_quant_conv(xi), feat_cache=cache, feat_idx=[0], first_chunk=i == 0)
        del h
        yield


def estimate_vae_memory(vae_or_config: VideoVAE | dict, frames: int, height: int, width: int,
                        tiling: VAETiling | None = None, dtype: torch.dtype = torch.bfloat16,
                        mode: str = "decode", batch: int = 1) -> VAEMemoryEstimate:
    """Memory for encoding (``mode="encode"``) or decoding a ``frames x height x width`` clip.

    Runs one tile's first chunks on the ``meta`` device (no real memory, no real compute) and
    tracks the live tensors; the output (float32, on the output device) and the blend weights
    are added analytically. Works for the real config without loading any weights.
    """
    if mode not in ("encode", "decode"):
        raise ValueError(f"mode must be 'encode' or 'decode', got {mode!r}")
    tiling = tiling or NO_TILING
    vm = _meta_vae(vae_or_config, dtype)
    c, lf, lh, lw = vm.latent_shape(frames, height, width)
    s = vm.spatial_factor
    th = min(lh, tiling.tile_size // s) if tiling.tile_size else lh
    tw = min(lw, tiling.tile_size // s) if tiling.tile_size else lw
    p = vm.patch_size
    if mode == "encode":
        n_in = tiling.frames_per_chunk * vm.temporal_factor
        x = torch.empty(batch, 3 * p * p, n_in, th * s // p, tw * s // p, device="meta", dtype=dtype)
        output = batch * c * lf * lh * lw * 4
    else:
        x = torch.empty(batch, c, tiling.frames_per_chunk, th, tw, device="meta", dtype=dtype)
        output = batch * 3 * frames * height * width * 4
    tiled = tiling.tile_size is not None and (lh > th or lw > tw)
    if tiled:  # weight map over the output plane
        output += (lh * lw if mode == "encode" else height * width) * 4
    weights = sum(t.numel() * t.element_size() for t in vm.vae.state_dict().values())
    tracker = LiveBytes(count_meta=True)
    with torch.no_grad(), tracker:
        for _ in _chunk_passes(vm, x, mode, tiling.frames_per_chunk, steps=3):
            pass
    return VAEMemoryEstimate(weights=weights, working=tracker.peak, output=output)


# -- weights ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DitWeights:
    block: tuple[int, ...]  # bytes of fused block i (both towers)
    other: int  # embeddings, heads
    params: int

    @property
    def total(self) -> int:
        return sum(self.block) + self.other


@lru_cache(maxsize=32)
def dit_weights(preset: str, dtype: str, fp8: str = "") -> DitWeights:
    """Bytes of the editor's weights as stored: fp8 Linears 1 byte + a float32 scale, the rest in ``dtype``."""
    from ..models.dit import AVEditorDiT
    from ..weights.dit import linear_weight_keys

    config = get_preset(preset)
    with torch.device("meta"):
        model = AVEditorDiT(config, editor=True)
    linears = linear_weight_keys(config, True)
    per = DTYPE_BYTES[dtype]
    block = [0] * config.video.num_layers
    other = params = 0
    for key, t in model.state_dict().items():
        n = t.numel()
        params += n
        size = n + 4 if (fp8 and key in linears) else n * per
        parts = key.split(".")
        if parts[1] == "blocks":
            block[int(parts[2])] += size
        else:
            other += size
    return DitWeights(tuple(block), other, params)


@dataclass(frozen=True)
class TrainingHooks:
    """What the planner needs from the training package (above it in the import order), passed in by
    the caller: ``prepare(model, lora_rank)`` injects the run's LoRA layers into a meta model and marks
    what trains; ``trainable(preset, lora_rank)`` counts the trainable parameters.
    ``training.footprint.planner_hooks()`` makes them."""

    prepare: Callable[[torch.nn.Module, int], None]
    trainable: Callable[[str, int], int]


@lru_cache(maxsize=4)
def text_encoder_params() -> int:
    from ..models.codecs.text_encoder import UMT5_XXL_CONFIG, build_umt5

    with torch.device("meta"):
        model = build_umt5(UMT5_XXL_CONFIG)
    return sum(p.numel() for p in model.parameters())


def video_vae_bytes(dtype: str) -> int:
    return _vae_estimate(dtype, (1, 16, 16), False).weights


AUDIO_CODEC_BYTES = int(0.45 * GB)  # MMAudio 16k VAE + BigVGAN vocoder (~0.2 B parameters) in bf16, rounded up


@lru_cache(maxsize=64)
def _vae_estimate(dtype: str, latent: tuple[int, int, int], tiling: bool) -> VAEMemoryEstimate:
    from ..models.codecs.video_vae import VAETiling, wan22_vae_config

    f, h, w = latent
    frames, height, width = 4 * (f - 1) + 1, 16 * h, 16 * w
    return estimate_vae_memory(wan22_vae_config(), frames, height, width,
                               tiling=VAETiling(tile_size=256) if tiling else None, dtype=DTYPES[dtype])


def vae_decode_bytes(dtype: str, latent: tuple[int, int, int], tiling: bool) -> int:
    """Working memory + output of decoding a [1, 48, F, H, W] latent with the Wan2.2 VAE
    (:func:`estimate_vae_memory`: one tile's chunks traced on meta; tiling: 256x256-pixel tiles)."""
    e = _vae_estimate(dtype, latent, tiling)
    return e.working + e.output


# -- the DiT's activations -------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def dit_activations(preset: str, dtype: str, fp8: str, video_tokens_grid: tuple[int, int, int], audio: int,
                    batch: int, train: bool, checkpointing: bool, lora_rank: int,
                    training: TrainingHooks | None = None) -> int:
    """Peak bytes one forward (``train``: forward + backward) allocates beyond the stored weights, traced on meta."""
    from ..models.dit import AVEditorDiT
    from ..models.ops import cast_ops, scaled_fp8_ops

    config = get_preset(preset)
    compute = DTYPES[dtype]
    ops = scaled_fp8_ops if fp8 else cast_ops
    with torch.device("meta"):
        model = AVEditorDiT(config, editor=True, ops=ops)
    if fp8:
        for m in model.modules():
            if isinstance(m, scaled_fp8_ops.Linear):
                m.weight = torch.nn.Parameter(torch.empty_like(m.weight, dtype=FP8[fp8]), requires_grad=False)
    model.to(compute) if not fp8 else _to_dtype_except_fp8(model, compute)
    model.compute_dtype = compute
    f, h, w = video_tokens_grid
    v = torch.empty(batch, config.video.in_dim, f, h, w, dtype=compute, device="meta")
    a = torch.empty(batch, audio, config.audio.in_dim, dtype=compute, device="meta")
    ctx = torch.empty(batch, min(64, config.video.text_len), config.video.text_dim, dtype=compute, device="meta")
    t = torch.full((batch,), 500.0, device="meta")
    model.requires_grad_(False)
    if train:
        if training is None:
            raise ValueError("planning a training run needs the training hooks: "
                             "plan(settings, training=instructav2av.training.footprint.planner_hooks())")
        training.prepare(model, lora_rank)
        model.gradient_checkpointing = checkpointing
        model.train()

        def run():
            out = model(v, a, t, ctx, ctx, v, a)
            loss = out[0].float().square().mean() + out[1].float().square().mean()
            loss.backward()
            return None
    else:
        def run():
            with torch.no_grad():
                return model(v, a, t, ctx, ctx, v, a)
    with _attention_on_meta():
        return trace_peak(run, [*model.parameters(), *model.buffers(), v, a, ctx, t])


def _to_dtype_except_fp8(model: torch.nn.Module, dtype: torch.dtype) -> None:
    for p in model.parameters():
        if p.dtype not in FP8.values() and p.is_floating_point():
            p.data = p.data.to(dtype)


def attention_workspace(s: Settings, batch: int) -> int:
    """Extra bytes of the largest attention call: flash/memory-efficient kernels keep a float32
    log-sum-exp per query and head; the reference ("math") path materialises the float32 scores."""
    v_tok, a_tok = s.tokens()
    heads = s.config.video.num_heads
    n = max(v_tok, a_tok)
    if s.attention == "math":
        return batch * heads * n * n * 4 * 2  # scores and their softmax
    return batch * heads * n * 4


# -- the plan --------------------------------------------------------------------------------------------


@dataclass
class Plan:
    settings: Settings
    device: dict[str, int] = field(default_factory=dict)  # component -> bytes at the device's peak phase
    host: dict[str, int] = field(default_factory=dict)
    phase: str = ""  # which phase sets the device peak
    phases: dict[str, int] = field(default_factory=dict)

    @property
    def device_peak(self) -> int:
        return sum(self.device.values())

    @property
    def host_peak(self) -> int:
        return sum(self.host.values())


def guidance_batch(s: Settings) -> int:
    """Largest model call of an edit step: the full and source-only passes share a call when batched
    (the unconditional pass skips layers, so it runs alone); one at a time otherwise."""
    return 2 if s.batch_guidance else 1


def plan(settings: Settings, training: TrainingHooks | None = None) -> Plan:
    """Peak device memory and peak host RAM of ``settings``, by component (see the module docstring)."""
    s = settings.check()
    c = s.config
    lf, lh, lw, audio = s.geometry()
    p = c.video.patch_size
    grid = (lf, lh - lh % p[1], lw - lw % p[2])
    train = s.mode == "train"
    w = dit_weights(s.preset, s.dtype, s.fp8)
    swapped = sum(w.block[: s.blocks_to_swap])
    in_flight = sum(sorted(w.block[: s.blocks_to_swap], reverse=True)[:2])
    resident = w.total - swapped
    batch = s.batch if train or s.mode == "forward" else guidance_batch(s)
    act = dit_activations(s.preset, s.dtype, s.fp8, grid, audio, batch, train,
                          s.gradient_checkpointing, s.lora_rank, training if train else None)
    attn = attention_workspace(s, batch)
    out = Plan(s)
    cpu = s.device == "cpu"
    te = 0 if s.mode != "edit" else text_encoder_params() * (1 if s.text_encoder_fp8 else DTYPE_BYTES[s.dtype])
    vae_w = video_vae_bytes(s.dtype) + AUDIO_CODEC_BYTES if s.mode != "forward" else 0
    sample = {"resident weights": resident, "streamed weights (2 blocks in flight)": in_flight,
              "activations": act, "attention workspace": attn}
    if train:
        trainable = training.trainable(s.preset, s.lora_rank)
        # resident, never swapped: the trainable parameters' float32 master copies (LoRA A/B and the
        # editor's new layers; the latter are also counted, in the compute dtype, inside the blocks)
        sample["trainable parameters (fp32)"] = trainable * 4
        sample["optimizer state (AdamW, fp32)"] = trainable * 8  # two moments (grads are in the trace)
    phases: dict[str, dict[str, int]] = {"sample": dict(sample)}
    if s.mode == "edit":
        # "device" placements keep a model on the device through every phase (the edit command today);
        # "offload" loads it for its own phase only (ComfyUI's flow: it unloads what the next node displaces)
        kept = {}
        if s.vae == "device":
            kept["VAEs"] = vae_w
        if s.text_encoder == "device":
            kept["text encoder"] = te
        phases["sample"].update(kept)
        decode = {"VAEs": vae_w, "VAE decode": vae_decode_bytes(s.dtype, (lf, lh, lw), s.vae_tiling), **kept}
        if s.vae == "device":  # nothing is unloaded for the decode
            decode["resident weights"] = resident
        phases["decode"] = decode
        if s.text_encoder != "cpu":  # "offload": the text encoder encodes before the editor is loaded
            phases["instruction"] = {"text encoder": te, "text encoder activations": TEXT_TOKENS * 4096 * 4 * 8}
            if s.text_encoder == "device":
                phases["instruction"].update({"resident weights": resident, **kept})
    if not cpu:
        for ph in phases.values():
            ph["CUDA context and slack"] = CUDA_OVERHEAD
    totals = {k: sum(v.values()) for k, v in phases.items()}
    out.phase = max(totals, key=totals.get)
    out.device = {k: v for k, v in phases[out.phase].items() if v}
    out.phases = totals
    host = {"process (Python, torch, this package)": HOST_BASELINE,
            "compute runtime (kernels, libraries)": CPU_RUNTIME if cpu else CUDA_HOST_RUNTIME}
    if cpu:
        host.update(out.device)
        if s.blocks_to_swap and not s.stream_blocks:  # the host copies the fetches are made from
            host["swapped blocks (host copies)"] = swapped
    else:
        if s.blocks_to_swap and not s.stream_blocks:
            host["swapped blocks (pinned)"] = swapped
        elif s.blocks_to_swap:
            host["blocks being read from the file"] = in_flight
        if s.mode == "edit" and s.text_encoder in ("cpu", "offload"):
            host["text encoder"] = te
        if s.mode == "edit" and s.vae == "offload":
            host["VAEs (offloaded)"] = vae_w
    out.host = {k: v for k, v in host.items() if v}
    return out


# -- fitting a budget ------------------------------------------------------------------------------------


def _candidates(base: Settings) -> Iterable[Settings]:
    edit = base.mode == "edit"
    choices = product(
        ("offload", "device", "cpu") if edit else (base.text_encoder,),
        ("offload", "device") if edit else (base.vae,),
        ("", "e4m3fn"),
        (True, False) if edit else (base.batch_guidance,),
        (False, True) if edit else (base.vae_tiling,),
        range(base.config.video.num_layers + 1),
    )
    for te, vae, fp8, batched, tiling, n in choices:
        yield replace(base, text_encoder=te, vae=vae, fp8=fp8, batch_guidance=batched, vae_tiling=tiling,
                      blocks_to_swap=n)


def slowness(p: Plan) -> tuple:
    """Rank of a fitting plan, fastest first: the text encoder on the CPU costs most (tens of seconds
    per edit), then the weight bytes moved per step by the swap, then unbatched guidance, then
    tiled decoding; fp8 only breaks ties (it halves the bytes a swap moves, so it wins there)."""
    s = p.settings
    moved = p.host.get("swapped blocks (pinned)", 0) + p.host.get("blocks being read from the file", 0)
    return (s.text_encoder == "cpu", moved, not s.batch_guidance, s.vae_tiling, bool(s.fp8), s.text_encoder == "device",
            s.vae == "device")


def fit_budget(base: Settings, budget: int, training: TrainingHooks | None = None) -> tuple[Plan | None, Plan]:
    """(the fastest plan within ``budget`` device bytes or None, the plan with the smallest device peak)."""
    plans = [plan(s, training) for s in _candidates(base)]
    fitting = [p for p in plans if p.device_peak <= budget]
    smallest = min(plans, key=lambda p: p.device_peak)
    return (min(fitting, key=slowness) if fitting else None), smallest


def parse_size(text: str) -> int:
    """'12GB', '12 GiB', '12g', '11.5' (GB) -> bytes."""
    t = text.strip().lower().replace(" ", "")
    for suffix, unit in (("gib", GIB), ("gb", GB), ("g", GB), ("mib", 1024**2), ("mb", 1e6)):
        if t.endswith(suffix):
            t, mult = t[: -len(suffix)], unit
            break
    else:
        mult = GB
    try:
        value = float(t)
    except ValueError:
        raise ValueError(f"budget {text!r}: expected a size like 12GB, 12GiB or 11.5") from None
    if not value > 0:
        raise ValueError(f"budget {text!r} must be positive")
    return int(value * mult)


def describe(p: Plan) -> str:
    s = p.settings
    lf, lh, lw, audio = s.geometry()
    v_tok, a_tok = s.tokens()
    what = {"edit": "edit", "train": f"LoRA training (rank {s.lora_rank}, batch {s.batch}, "
                                     f"{'gradient checkpointing' if s.gradient_checkpointing else 'no checkpointing'})",
            "forward": f"one DiT forward (batch {s.batch})"}[s.mode]
    lines = [
        f"{s.preset}, {lw * 16}x{lh * 16}x{s.frames or s.config.num_frames} frames ({v_tok:,} video + {a_tok} audio "
        f"tokens), {what} on {s.device}",
        f"  {s.dtype}{', DiT Linears in scaled fp8 ' + s.fp8 if s.fp8 else ''}, {s.blocks_to_swap} of "
        f"{s.config.video.num_layers} blocks swapped{' (streamed from the file)' if s.stream_blocks else ''}, "
        f"guidance {'batched' if s.batch_guidance else 'sequential'}, VAE {'tiled' if s.vae_tiling else 'untiled'}, "
        f"text encoder {s.text_encoder}, VAEs {s.vae}, attention {s.attention}",
        f"  peak device memory {p.device_peak / GB:6.2f} GB (phase: {p.phase})",
        *(f"    {k:<40} {v / GB:7.2f} GB" for k, v in p.device.items()),
        f"  peak host RAM      {p.host_peak / GB:6.2f} GB",
        *(f"    {k:<40} {v / GB:7.2f} GB" for k, v in p.host.items()),
    ]
    return "\n".join(lines)


__all__ = ["VAEMemoryEstimate", "estimate_vae_memory", "Settings", "Plan", "TrainingHooks", "plan", "fit_budget", "parse_size", "describe", "trace_peak", "dit_weights",
           "dit_activations", "attention_workspace", "vae_decode_bytes", "slowness", "HOST_BASELINE", "CPU_RUNTIME",
           "CUDA_OVERHEAD", "GB"]
