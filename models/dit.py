"""The twin-tower audio-video DiT: Ovi's FusionModel (base mode) and the InstructAV2AV editor.

``AVEditorDiT(config, editor=False)`` is Ovi: two Wan2.2-5B-style towers (``video_model``,
``audio_model``) whose blocks exchange information through bidirectional cross-modal
attention; its ``state_dict()`` keys and shapes are exactly Ovi's. ``editor=True`` adds the
InstructAV2AV pieces (docs/design-decisions.md): source concatenation at the patch
embeddings and Source-Instruction Gated Attention (SIGA) in every block of both towers.

Differences from Ovi's code that do not change the maths: inputs are batched tensors instead
of lists, the timestep embedding is computed once per sample instead of once per token (Ovi
broadcasts the same per-sample value to every token) or, with per-token timesteps (a clean
prefix, Ovi's ``first_frame_is_clean``), once per distinct value and gathered per token, and the
RoPE tables are computed per forward in float64 -> complex64 instead of being kept as float64
attributes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import siga
from .attention import backend_name
from .blocks import AudioPatchEmbedding, Block, Head, TokenTime, sinusoidal_embedding
from .configs import ModelConfig, TowerConfig
from .ops import cast_params, get_ops
from .rope import audio_rope, video_rope
from .step_cache import StepCache


class WanTower(nn.Module):
    """One Wan tower (Ovi's ``WanModel``): embeddings, blocks, head; ``editor`` doubles the input channels."""

    def __init__(self, config: TowerConfig, editor: bool, ops):
        super().__init__()
        if config.dim % config.num_heads or config.head_dim % 2:
            raise ValueError(
                f"{config.modality} tower: dim {config.dim} must split into {config.num_heads} heads of even size"
            )
        self.config = config
        self.editor = editor
        c, dim = config, config.dim
        in_channels = 2 * c.in_dim if editor else c.in_dim  # noisy latent first, source second
        if c.modality == "video":
            self.patch_embedding = ops.Conv3d(in_channels, dim, kernel_size=c.patch_size, stride=c.patch_size)
        elif c.modality == "audio":
            if tuple(c.patch_size) != (1,):
                raise ValueError(f"the audio tower has no patchify (patch_size (1,)), got {c.patch_size}")
            self.patch_embedding = AudioPatchEmbedding(in_channels, dim, c.audio_conv_hidden, ops)
        else:
            raise ValueError(f"tower modality must be 'video' or 'audio', got {c.modality!r}")
        self.text_embedding = nn.Sequential(
            ops.Linear(c.text_dim, dim), nn.GELU(approximate="tanh"), ops.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(ops.Linear(c.freq_dim, dim), nn.SiLU(), ops.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            Block(dim, c.ffn_dim, c.num_heads, c.eps, ops, editor) for _ in range(c.num_layers)
        )
        self.head = Head(dim, math.prod(c.patch_size) * c.out_dim, c.eps, ops)

    # -- embeddings ----------------------------------------------------------------------------
    def embed_time(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | TokenTime]:
        """Timestep [B] (1000 = noise) -> (e [B, dim] for the head, e0 [B, 6, dim] for the blocks).

        Per-token timesteps [B, N] -> (e [B, N, dim], e0 as a :class:`TokenTime`): the embedding
        runs once per distinct value (a clean prefix and a noisy rest are two rows).
        """
        if t.dim() == 2:
            values, index = torch.unique(t, return_inverse=True)
            e = self.time_embedding(sinusoidal_embedding(values, self.config.freq_dim).to(dtype))
            e0 = self.time_projection(e).unflatten(1, (6, self.config.dim))
            return e[index], TokenTime(e0, index)
        e = self.time_embedding(sinusoidal_embedding(t, self.config.freq_dim).to(dtype))
        return e, self.time_projection(e).unflatten(1, (6, self.config.dim))

    def embed_text(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, T, text_dim] -> (tokens [B, T', dim], counts [T'] or None).

        Ovi zero-pads the instruction to text_len before the MLP and attends every slot. All
        padded slots are the same row, so it is embedded once (T' = T + 1) and ``counts`` says
        it stands for text_len - T slots; attention weighs it accordingly (same result).
        """
        pad = self.config.text_len - context.shape[1]
        if pad == 0:
            return self.text_embedding(context), None
        counts = torch.ones(context.shape[1] + 1, dtype=torch.long)
        counts[-1] = pad
        return self.text_embedding(F.pad(context, (0, 0, 0, 1))), counts

    def embed_tokens(
        self, x: torch.Tensor, source: torch.Tensor | None, with_source: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, ...]]:
        """Latents -> (tokens [B, N, dim], source tokens or None, grid). Editor mode concatenates the source.

        ``with_source=False`` skips the source tokens (None): cached source keys/values need none.
        """
        grid = self.grid(x)
        if self.config.modality == "video":
            # [B, dim, F, H, W] -> [B, N, dim]; contiguous, or every later op would copy the stream
            tokens = (
                self.patch_embedding(torch.cat([x, source], dim=1) if self.editor else x)
                .flatten(2)
                .transpose(1, 2)
                .contiguous()
            )
        else:
            tokens = self.patch_embedding(torch.cat([x, source], dim=2) if self.editor else x)
        src = self.embed_source(source) if self.editor and with_source else None
        return tokens, src, grid

    def embed_source(self, source: torch.Tensor) -> torch.Tensor:
        """Source latent -> source tokens [B, N, dim]: Ovi's patch embedding (its first in_dim input channels)."""
        pe = self.patch_embedding
        if self.config.modality == "video":
            weight, bias = cast_params(pe, source)
            src = F.conv3d(source, weight[:, : self.config.in_dim], bias, stride=pe.stride)
            return src.flatten(2).transpose(1, 2).contiguous()
        return pe(source, in_channels=self.config.in_dim)

    def grid(self, x: torch.Tensor) -> tuple[int, ...]:
        if self.config.modality == "video":
            return tuple(n // p for n, p in zip(x.shape[2:], self.config.patch_size))
        return (x.shape[1],)

    def rope(self, grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
        if self.config.modality == "video":
            return video_rope(grid, self.config.head_dim, device)
        return audio_rope(grid[0], self.config.head_dim, self.config.rope_scale, device)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Head output [B, N, prod(patch)*out_dim] -> latent ([B, C, F, H, W] video, [B, L, C] audio)."""
        if self.config.modality == "audio":
            return x
        (f, h, w), (pf, ph, pw), c = grid, self.config.patch_size, self.config.out_dim
        x = x.view(x.shape[0], f, h, w, pf, ph, pw, c)  # Ovi's head layout: (p, q, r, c), c fastest
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], c, f * pf, h * ph, w * pw)


@dataclass
class _Stream:
    """Per-tower state that every block reads (computed once per forward)."""

    tower: WanTower
    grid: tuple[int, ...]
    rope: torch.Tensor
    e: torch.Tensor
    e0: torch.Tensor | TokenTime
    context: torch.Tensor
    context_counts: torch.Tensor | None
    source: torch.Tensor | None
    cache: siga.SourceKVCache | None = None
    cached: siga.SourceEntry | None = None  # this tower's cached source K/V (``cache`` given)

    def source_for(self, i: int, block: Block) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
        """What block ``i``'s SIGA reads: the source tokens, or their K/V from the cache (filled if absent)."""
        if self.cached is None:
            return self.source
        kv = self.cached.kv.get(i)
        if kv is None:
            kv = block.cross_attn.source_kv(self.source, self.rope)
            self.cached.store(i, *kv)
            self.cache.computed += 1
            return kv
        self.cache.reused += 1
        return self.cached.expand(*kv)


class AVEditorDiT(nn.Module):
    """Ovi's twin towers (``editor=False``) or the InstructAV2AV SIGA editor (``editor=True``).

    Build on ``meta`` to load a checkpoint without materialising random weights; nothing in
    the state dict is derived (RoPE tables are computed per forward). ``ops`` (see
    :mod:`.ops`) decides how Linear/Conv weights are stored and cast.
    """

    def __init__(self, config: ModelConfig, editor: bool = True, ops=None):
        super().__init__()
        v, a = config.video, config.audio
        if v.num_layers != a.num_layers:
            raise ValueError(
                f"towers must have equal depth (fused blocks), got video {v.num_layers}, audio {a.num_layers}"
            )
        if v.modality != "video" or a.modality != "audio":
            raise ValueError(f"config towers must be (video, audio), got ({v.modality}, {a.modality})")
        self.config = config
        self.editor = bool(editor)
        ops = get_ops(ops)
        self.video_model = WanTower(v, self.editor, ops)
        self.audio_model = WanTower(a, self.editor, ops)
        self.gradient_checkpointing = False
        self.compiled = False  # compile_blocks()
        self.block_swap = None  # runtime.offload.BlockSwap: brings swapped blocks to the device per layer
        self._compute_dtype: torch.dtype | None = None
        self.init_weights()

    @property
    def num_layers(self) -> int:
        return self.config.video.num_layers

    @property
    def compute_dtype(self) -> torch.dtype:
        """Activation dtype: set explicitly, else the stored weight dtype (bf16 for fp8 storage)."""
        if self._compute_dtype is not None:
            return self._compute_dtype
        dtype = self.video_model.time_embedding[0].weight.dtype
        return (
            dtype
            if dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
            else torch.bfloat16
        )

    @compute_dtype.setter
    def compute_dtype(self, dtype: torch.dtype | None) -> None:
        self._compute_dtype = dtype

    # -- torch.compile -------------------------------------------------------------------------
    def compile_blocks(self, enabled: bool = True, **options) -> None:
        """``torch.compile`` every block's two halves (off by default); ``enabled=False`` undoes it.

        The halves are what the fused forward calls (``attend_self``, ``attend_context_ffn``); the
        blocks of a tower share their compiled code (their parameters are graph inputs), so a model
        compiles once per tower and input shape. ``options`` go to ``torch.compile`` (e.g.
        ``mode="max-autotune"``, ``dynamic=True`` for changing clip sizes). The weights and the
        state dict are untouched. The first call pays the compilation (minutes on a small CPU).
        """
        for tower in (self.video_model, self.audio_model):
            for block in tower.blocks:
                for name in ("attend_self", "attend_context_ffn"):
                    block.__dict__.pop(name, None)  # back to the class's plain method
                    if enabled:
                        setattr(block, name, torch.compile(getattr(block, name), **options))
        self.compiled = bool(enabled)

    # -- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Ovi's scheme for training from scratch; in editor mode then the editor init (see below)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for tower in (self.video_model, self.audio_model):
            if tower.config.modality == "video":
                nn.init.xavier_uniform_(tower.patch_embedding.weight.flatten(1))
            for seq in (tower.text_embedding, tower.time_embedding):
                for m in seq.modules():
                    if isinstance(m, nn.Linear):
                        nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(tower.head.head.weight)
        for block in self.video_model.blocks:  # Ovi scales the video side's fusion projections down
            block.cross_attn.k_fusion.weight.div_(10.0)
            block.cross_attn.v_fusion.weight.div_(10.0)
        if self.editor:
            self.init_editor_weights()

    def set_attention_backend(self, name: str | None) -> None:
        """Carry attention backend ``name`` in every attention module of this model (``None`` or
        ``"auto"``: the process-wide choice, models/attention.py). Other models are not affected."""
        backend = None if name is None or backend_name(name) == "auto" else backend_name(name)
        for module in self.modules():
            if hasattr(module, "attention_backend"):
                module.attention_backend = backend

    @torch.no_grad()
    def init_editor_weights(self) -> None:
        """The documented Ovi -> editor initialisation, applied to this model's current base weights.

        Source half of the patch-embedding input channels = 0; ``k_source``/``v_source``/
        ``norm_k_source`` = copies of the block's ``self_attn.k``/``v``/``norm_k``; ``norm_source``
        = identity; ``gate.weight`` = 0 and ``gate.bias`` = GATE_INIT_BIAS (the table in siga.py).
        """
        if not self.editor:
            raise RuntimeError("init_editor_weights needs a model built with editor=True")
        for tower in (self.video_model, self.audio_model):
            first = tower.patch_embedding if tower.config.modality == "video" else tower.patch_embedding[0]
            first.weight[:, tower.config.in_dim :].zero_()
            siga.init_modules(tower.blocks)

    # -- forward -------------------------------------------------------------------------------
    def forward(
        self,
        video: torch.Tensor | None,
        audio: torch.Tensor | None,
        timestep: torch.Tensor,
        video_context: torch.Tensor | None,
        audio_context: torch.Tensor | None,
        video_source: torch.Tensor | None = None,
        audio_source: torch.Tensor | None = None,
        cross_modal: bool = True,
        skip_layers: Iterable[int] = (),
        return_gates: bool = False,
        video_timestep: torch.Tensor | None = None,
        audio_timestep: torch.Tensor | None = None,
        first_frame_is_clean: bool = False,
        source_cache: siga.SourceKVCache | None = None,
        step_cache: StepCache | None = None,
    ):
        """Predict the flow velocity ``v = noise - x0`` for both modalities.

        video [B, 48, F, H, W] and audio [B, L, 20] are the noisy latents (either may be None: that
        tower then runs alone, without cross-modal attention, as Ovi); timestep [B] is in Ovi's
        units (1000 = pure noise); contexts are instruction embeddings [B, T <= text_len, text_dim];
        sources (editor mode only) are clean source latents shaped like the noisy ones (None ->
        zeros, i.e. "no source"); ``cross_modal=False`` bypasses the cross-modal attention
        (stage-1 training); ``skip_layers`` skips those fused blocks in both towers (skip-layer
        guidance; unlike Ovi, whose single-tower path ignores it, it applies whenever a tower
        runs); ``return_gates`` (editor mode) also returns the SIGA gates.

        Per-token timesteps: ``video_timestep`` [B, Nv] (Nv = F'·H'·W' tokens after patchify,
        frame-major, as the tokens are flattened) and/or ``audio_timestep`` [B, La] replace
        ``timestep`` for that tower; a clean prefix has 0 there (see :func:`prefix_timesteps`).
        ``first_frame_is_clean`` is Ovi's image-to-video switch: the video tokens of the first
        latent frame get timestep 0, the rest ``timestep`` (audio untouched).

        Returns ``(video_pred, audio_pred)`` (None for an absent modality), plus with
        ``return_gates`` a dict ``{"video": [B, layers, Nv, heads], "audio": [B, layers, La, heads]}``
        of float32 gates G (NaN for skipped layers; None for an absent modality).

        ``source_cache`` (editor mode, no autograd): the SIGA source keys/values are read from it
        and computed only where absent (see :class:`~.siga.SourceKVCache`); results are the same as
        without it. Ignored while gradients are recorded (training) and in base mode.
        ``step_cache`` (no autograd, no gates): may skip every block and reuse the previous call's
        residual when the input barely changed (an approximation; see :mod:`.step_cache`).
        """
        inputs = {
            "video": (video, video_context, video_source),
            "audio": (audio, audio_context, audio_source),
        }
        towers = {"video": self.video_model, "audio": self.audio_model}
        present = [m for m, (x, _, _) in inputs.items() if x is not None]
        if not present:
            raise ValueError(
                "forward needs at least one of video [B, C, F, H, W] or audio [B, L, C] (both are None)"
            )
        if return_gates and not self.editor:
            raise ValueError("return_gates=True needs editor mode (the base model has no SIGA gates)")
        batch = inputs[present[0]][0].shape[0]
        skip = self._check_skip(skip_layers)
        dtype = self.compute_dtype
        timestep = self._check_timestep(timestep, batch).to(inputs[present[0]][0].device)
        token_t = {"video": video_timestep, "audio": audio_timestep}
        if first_frame_is_clean and video_timestep is not None:
            raise ValueError("give either first_frame_is_clean=True or video_timestep, not both")

        if source_cache is not None and not isinstance(source_cache, siga.SourceKVCache):
            raise TypeError(f"source_cache must be a SourceKVCache, got {type(source_cache).__name__}")
        cache = source_cache if self.editor and not torch.is_grad_enabled() else None
        needed = set(range(self.num_layers)) - skip
        streams: dict[str, _Stream] = {}
        xs: dict[str, torch.Tensor] = {}
        for m in present:
            x, ctx, src_arg = inputs[m]
            tower = towers[m]
            self._check_inputs(m, tower.config, x, ctx, src_arg, batch)
            x = x.to(dtype)
            src = src_arg
            if self.editor:
                src = torch.zeros_like(x) if src is None else src.to(dtype)
            cached = None if cache is None else cache.entry(m, src_arg, x)
            missing = cached is not None and not needed <= cached.kv.keys()
            xs[m], src_tokens, grid = tower.embed_tokens(x, src, with_source=cached is None)
            if missing:  # on the whole batch, as without the cache, so that the results are the same bits
                src_tokens = tower.embed_source(src)
            t_m = token_t[m]
            if m == "video" and first_frame_is_clean:
                t_m = prefix_timesteps(timestep, xs[m].shape[1], math.prod(grid[1:]))
            if t_m is not None:
                t_m = self._check_token_timestep(m, t_m, batch, xs[m].shape[1]).to(x.device)
            e, e0 = tower.embed_time(timestep if t_m is None else t_m, dtype)
            streams[m] = _Stream(
                tower, grid, tower.rope(grid, x.device), e, e0, *tower.embed_text(ctx.to(dtype)), src_tokens,
                cache, cached,
            )  # fmt: skip

        fused = len(present) == 2 and cross_modal
        gates: dict[str, list] = {m: [] for m in present}
        if step_cache is not None and not isinstance(step_cache, StepCache):
            raise TypeError(f"step_cache must be a StepCache, got {type(step_cache).__name__}")
        steps = step_cache if step_cache is not None and not torch.is_grad_enabled() and not return_gates else None
        if steps is not None:
            if self.block_swap is not None:  # the indicator reads block 0's modulation
                self.block_swap.fetch(0)
            indicators = {m: self._indicator(xs[m], s) for m, s in streams.items()}
            if steps.should_skip(indicators):
                if self.block_swap is not None:
                    self.block_swap.finish()
                return self._heads({m: xs[m] + steps.residual(m) for m in present}, streams, None)
            inputs_xs = dict(xs)
        for i in range(self.num_layers):
            if i in skip:
                for m in present:
                    gates[m].append(None)
                continue
            if self.gradient_checkpointing and torch.is_grad_enabled():
                out, layer_gates = checkpoint(
                    self._fetch_and_layer, i, xs, streams, fused, return_gates, use_reentrant=False
                )
            else:
                out, layer_gates = self._fetch_and_layer(i, xs, streams, fused, return_gates)
            xs = out
            for m in present:
                gates[m].append(layer_gates.get(m))
        if self.block_swap is not None:
            self.block_swap.finish()

        if steps is not None:
            steps.store({m: xs[m] - inputs_xs[m] for m in present})
        return self._heads(xs, streams, gates if return_gates else None)

    def _heads(self, xs: Mapping[str, torch.Tensor], streams: Mapping[str, _Stream], gates: dict | None):
        preds = {"video": None, "audio": None}
        for m, s in streams.items():
            preds[m] = s.tower.unpatchify(s.tower.head(xs[m], s.e), s.grid)
        if gates is None:
            return preds["video"], preds["audio"]
        return (
            preds["video"],
            preds["audio"],
            {m: self._stack_gates(gates.get(m)) for m in ("video", "audio")},
        )

    @staticmethod
    def _indicator(x: torch.Tensor, s: _Stream) -> torch.Tensor:
        """The first block's modulated input (moves with the latent and the timestep): step caching's measure."""
        block = s.tower.blocks[0]
        shift, scale = block.modulation(s.e0)[:2]
        return torch.addcmul(shift, block.norm1(x), 1 + scale)

    def _fetch_and_layer(self, i: int, *args):
        # inside the checkpointed function, so that a backward's recomputation fetches the block again
        if self.block_swap is not None:
            self.block_swap.fetch(i)
        return self._layer(i, *args)

    def _layer(
        self,
        i: int,
        xs: Mapping[str, torch.Tensor],
        streams: Mapping[str, _Stream],
        fused: bool,
        want_gates: bool,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Fused block i: both towers' block i, in Ovi's order (reference/ovi.md §1.3)."""
        blocks = {m: s.tower.blocks[i] for m, s in streams.items()}
        mods = {m: blocks[m].modulation(s.e0) for m, s in streams.items()}
        # 1. self-attention in each tower
        post_self = {m: blocks[m].attend_self(xs[m], mods[m], s.rope) for m, s in streams.items()}
        # 2. text (SIGA in editor mode) + cross-modal attention, then the FFN. Each tower attends to
        #    the other's post-self-attention state of this same block, so the exchange is symmetric.
        out, gates = {}, {}
        for m, s in streams.items():
            other = ("audio" if m == "video" else "video") if fused else None
            out[m], gates[m] = blocks[m].attend_context_ffn(
                post_self[m],
                mods[m],
                s.context,
                s.context_counts,
                s.rope,
                s.source_for(i, blocks[m]),
                post_self[other] if other else None,
                streams[other].rope if other else None,
                want_gates,
            )
        return out, {m: g for m, g in gates.items() if g is not None}

    # -- input checks --------------------------------------------------------------------------
    def _check_skip(self, skip_layers: Iterable[int]) -> set[int]:
        skip = set()
        for i in skip_layers or ():
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.num_layers:
                raise ValueError(
                    f"skip_layers must hold block indices in [0, {self.num_layers - 1}], got {i!r}"
                )
            skip.add(i)
        return skip

    @staticmethod
    def _check_timestep(timestep: torch.Tensor | float, batch: int) -> torch.Tensor:
        t = torch.as_tensor(timestep)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(
                f"timestep must be a scalar or shape [B]=[{batch}] (Ovi units, 1000 = noise), got {tuple(t.shape)}"
            )
        return t

    @staticmethod
    def _check_token_timestep(m: str, t: torch.Tensor, batch: int, tokens: int) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.shape != (batch, tokens):
            raise ValueError(
                f"{m}_timestep must be per token, shape [B, N]=[{batch}, {tokens}] ({m} tokens after patchify), "
                f"got {tuple(t.shape)}"
            )
        if not t.is_floating_point() or not torch.isfinite(t).all() or (t < 0).any():
            raise ValueError(f"{m}_timestep must hold finite timesteps >= 0 (Ovi units, 0 = clean, 1000 = noise)")
        return t

    def _check_inputs(self, m, c: TowerConfig, x, ctx, src, batch) -> None:
        if m == "video":
            ok = (
                x.dim() == 5
                and x.shape[1] == c.in_dim
                and all(n % p == 0 for n, p in zip(x.shape[2:], c.patch_size))
            )
            expected = f"[B, {c.in_dim}, F, H, W] with (F, H, W) divisible by the patch {tuple(c.patch_size)}"
        else:
            ok = x.dim() == 3 and x.shape[2] == c.in_dim and x.shape[1] > 0
            expected = f"[B, L, {c.in_dim}] (channel-last)"
        if not ok:
            raise ValueError(f"{m} latent has shape {tuple(x.shape)}; expected {expected}")
        if x.shape[0] != batch:
            raise ValueError(f"{m} batch size {x.shape[0]} differs from the other inputs' {batch}")
        if ctx is None:
            raise ValueError(
                f"{m}_context is None but {m} is given; pass the instruction embedding [B, T, {c.text_dim}]"
            )
        if ctx.dim() != 3 or ctx.shape[0] != batch or ctx.shape[2] != c.text_dim or ctx.shape[1] > c.text_len:
            raise ValueError(
                f"{m}_context has shape {tuple(ctx.shape)}; expected [B={batch}, T <= {c.text_len}, {c.text_dim}] "
                f"(truncate the instruction to {c.text_len} tokens)"
            )
        if src is not None:
            if not self.editor:
                raise ValueError(
                    f"{m}_source was given but the model is in base mode (editor=False); pass None"
                )
            if src.shape != x.shape:
                raise ValueError(
                    f"{m}_source has shape {tuple(src.shape)}; expected the noisy latent's {tuple(x.shape)}"
                )

    def _stack_gates(self, layers: list | None) -> torch.Tensor | None:
        if layers is None:
            return None
        ref = next(g for g in layers if g is not None) if any(g is not None for g in layers) else None
        if ref is None:
            return None
        return torch.stack([torch.full_like(ref, float("nan")) if g is None else g for g in layers], dim=1)


def prefix_timesteps(timestep: torch.Tensor, tokens: int, clean_tokens: int) -> torch.Tensor:
    """Per-token timesteps [B, tokens]: the first ``clean_tokens`` tokens 0 (clean), the rest ``timestep`` [B]."""
    if not 0 <= clean_tokens <= tokens:
        raise ValueError(f"clean_tokens must be in [0, {tokens}], got {clean_tokens}")
    t = torch.as_tensor(timestep, dtype=torch.float32)
    t = t.reshape(-1, 1).expand(t.numel(), tokens).clone()
    t[:, :clean_tokens] = 0.0
    return t


# -- Ovi -> editor conversion --------------------------------------------------------------------
def _patch_key(tower: TowerConfig, prefix: str) -> str:
    return (
        f"{prefix}.patch_embedding.weight"
        if tower.modality == "video"
        else f"{prefix}.patch_embedding.0.weight"
    )


def editor_state_dict_from_base(base_state_dict: Mapping[str, torch.Tensor], config: ModelConfig) -> dict:
    """Editor state dict from an Ovi (base-mode) state dict, with the documented initialisation.

    Every Ovi tensor is kept (not copied, except the two widened patch-embedding weights); the
    SIGA tensors are new (fresh clones, never aliases of Ovi's, so that training can move them
    apart). New tensors take the dtype of their Ovi counterparts (``cross_attn.o.bias``'s for
    the gate and ``norm_source``). Raises if the base dict is not a complete Ovi state dict.
    """
    with torch.device("meta"):
        expected = AVEditorDiT(config, editor=False).state_dict()
    missing = [k for k in expected if k not in base_state_dict]
    unexpected = [k for k in base_state_dict if k not in expected]
    if missing or unexpected:
        raise KeyError(
            f"not an Ovi base state dict for preset {config.name!r}: {len(missing)} missing keys "
            f"(first: {missing[:3]}), {len(unexpected)} unexpected keys (first: {unexpected[:3]})"
        )
    for k, t in expected.items():
        if tuple(base_state_dict[k].shape) != tuple(t.shape):
            raise ValueError(
                f"{k}: shape {tuple(base_state_dict[k].shape)} does not match preset {config.name!r}'s {tuple(t.shape)}"
            )

    out = dict(base_state_dict)
    for prefix, tower in (("video_model", config.video), ("audio_model", config.audio)):
        key = _patch_key(tower, prefix)
        w = base_state_dict[key]
        out[key] = torch.cat([w, torch.zeros_like(w)], dim=1)  # source channels start at zero
        shapes = siga.constant_shapes(tower.dim, tower.num_heads)
        for i in range(tower.num_layers):
            p = f"{prefix}.blocks.{i}."
            self_attn = {k[len(p + "self_attn."):]: v for k, v in base_state_dict.items() if k.startswith(p + "self_attn.")}
            new = siga.init_state(self_attn, shapes, like=base_state_dict[p + "cross_attn.o.bias"])
            out.update({f"{p}cross_attn.{k}": v for k, v in new.items()})
    return out


def init_editor_from_base(
    editor_model: AVEditorDiT, base_state_dict: Mapping[str, torch.Tensor]
) -> AVEditorDiT:
    """Load Ovi weights into an editor-mode model with the documented initialisation.

    A model on ``meta`` takes the tensors by assignment (nothing is copied twice); a
    materialised model copies them into its parameters.
    """
    if not editor_model.editor:
        raise ValueError("init_editor_from_base needs a model built with editor=True")
    sd = editor_state_dict_from_base(base_state_dict, editor_model.config)
    on_meta = next(editor_model.parameters()).is_meta
    editor_model.load_state_dict(sd, strict=True, assign=on_meta)
    return editor_model


GATE_INIT_BIAS = siga.GATE_INIT_BIAS  # its home is siga.py

__all__ = [
    "AVEditorDiT",
    "WanTower",
    "GATE_INIT_BIAS",
    "editor_state_dict_from_base",
    "init_editor_from_base",
    "prefix_timesteps",
]
