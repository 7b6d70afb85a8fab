"""DiT forward speed at the mid-size benchmark configuration (DESIGN.md §6).

Times one forward pass, bf16, batch 1, identical weights, for

  (a) Ovi's reference FusionModel (loaded from ``$OVI_PATH`` by ``tests/ovi_reference.py``:
      flash-attention replaced by SDPA, CUDA autocast mapped to CPU autocast), when available;
  (b) our ``AVEditorDiT`` in base mode (Ovi's maths);
  (c) our editor mode (source concatenation + SIGA), converted from the same weights;
  (d) the editor as the sampler runs it: the SIGA source keys/values cached (computed in an
      earlier step of the same edit, ``SourceKVCache``), i.e. one editor sampling pass;

and prints the ratios against the targets (base <= 0.8x reference, editor <= 1.3x reference,
an editor sampling pass with the source K/V cached <= 1.2x a base pass, issue 12) and the fraction of this machine's bf16 matmul throughput each reaches (target >= 50%).
Throughput is measured with a 2048^3 bf16 GEMM timed in the same rounds as the models. The
models' matmul FLOPs (attention included) are counted analytically (``forward_flops``) at the
work the maths needs, one count for Ovi and us: the time embedding once per sample (Ovi: once
per token) and the instruction's identical zero-padded rows once (Ovi: text_len - T times).

Every contender runs in turn for ``--reps`` rounds. Reported: medians (ratios: median of the
per-round ratios) and bests (the least disturbed round of each), on two clocks: wall time, and
process CPU time / threads. On a quiet machine the clocks agree; on a shared one the CPU clock
leaves out the time other processes held the cores (with ``--threads 1`` it is the steadiest
measurement a loaded machine allows).

Geometry: video latent [1, 48, 5, 32, 32] -> 5 x 16 x 16 = 1,280 tokens (patch 1x2x2), audio
latent [1, 40, 20] -> 40 tokens, a 128-token instruction (zero-padded to text_len 512 by both
models). Preset ``bench-mid``: dim 512, 4 layers, 4 heads of 128, ffn 2048. (The preset's own
clip geometry, 320x256, would give 400 video tokens; this script fixes the latent shape.)

    OVI_PATH=/work/refs/Ovi .venv/bin/python bench/dit_forward.py [--reps 7] [--threads 2] [--profile]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from instructav2av.models.configs import ModelConfig, TowerConfig, get_preset
from instructav2av.models.dit import AVEditorDiT, init_editor_from_base
from instructav2av.models.siga import SourceKVCache

VIDEO_SHAPE = (1, 48, 5, 32, 32)
AUDIO_SHAPE = (1, 40, 20)
CONTEXT_TOKENS = 128
BASE_TARGET = 0.8  # x reference time
EDITOR_TARGET = 1.3  # x reference (base) time
CACHED_TARGET = 1.2  # editor sampling pass, source K/V cached, x our base pass (issue 12)
THROUGHPUT_TARGET = 0.5  # of measured bf16 matmul throughput
REFERENCE, BASE, EDITOR, MATMUL = "reference (Ovi)", "ours, base", "ours, editor", "matmul"
CACHED = "editor, K/V cached"


def _load_reference_helper():
    """``tests/ovi_reference.py`` by path (the tests folder is not a package)."""
    path = Path(__file__).resolve().parents[1] / "tests" / "ovi_reference.py"
    spec = importlib.util.spec_from_file_location("ovi_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("ovi_reference", module)
    spec.loader.exec_module(module)
    return module


# -- analytic FLOPs ------------------------------------------------------------------------------
def _tower_flops(
    t: TowerConfig, n: int, n_other: int, text_tokens: int, editor: bool, cached: bool = False
) -> float:
    """Matmul FLOPs (2 per multiply-add) of one tower on ``n`` tokens, batch 1.

    The instruction counts as ``text_tokens`` + 1 rows: Ovi zero-pads it to text_len, but every
    padded row is the same, so one row (weighted by its count) is all the maths needs.
    """
    d, L = t.dim, min(text_tokens + 1, t.text_len)
    lin = lambda tokens, fin, fout: 2.0 * tokens * fin * fout  # noqa: E731
    attn = lambda nq, nk: 4.0 * nq * nk * d  # QK^T and AV over all heads  # noqa: E731
    cin = t.in_dim * (2 if editor else 1)
    if t.modality == "video":
        f = lin(n, cin * t.patch_size[0] * t.patch_size[1] * t.patch_size[2], d)
    else:  # Conv1d k7 stem, then the SwiGLU ConvMLP (three k7 convolutions)
        f = lin(n, cin * 7, d) + 3 * lin(n, d * 7, t.audio_conv_hidden)
        if editor and not cached:  # the source goes through the stem once more
            f += lin(n, t.in_dim * 7, d) + 3 * lin(n, d * 7, t.audio_conv_hidden)
    if editor and not cached and t.modality == "video":
        f += lin(n, t.in_dim * t.patch_size[0] * t.patch_size[1] * t.patch_size[2], d)
    f += lin(L, t.text_dim, d) + lin(L, d, d)  # text MLP on the padded context
    f += lin(1, t.freq_dim, d) + lin(1, d, d) + lin(1, d, 6 * d)  # time embedding, once per sample
    block = 4 * lin(n, d, d) + attn(n, n)  # self-attention
    block += 2 * lin(n, d, d) + 2 * lin(L, d, d) + attn(n, L)  # text attention (q, o, k, v)
    block += 2 * lin(n_other, d, d) + attn(n, n_other)  # k_fusion, v_fusion, attention
    if editor:  # SIGA: source K/V projections (cached: none), source attention, gate
        block += (0 if cached else 2 * lin(n, d, d)) + attn(n, n) + lin(n, 3 * d, t.num_heads)
    block += 2 * lin(n, d, t.ffn_dim)
    f += t.num_layers * block
    prod = 1
    for p in t.patch_size:
        prod *= p
    return f + lin(n, d, prod * t.out_dim)


def forward_flops(
    config: ModelConfig, video_tokens: int, audio_tokens: int, text_tokens: int, editor: bool,
    cached: bool = False,
) -> float:
    """Matmul FLOPs of one fused forward (both towers, cross-modal attention on), batch 1.

    ``cached``: the editor with its source keys/values cached (no source embedding, no K/V projections).
    """
    return _tower_flops(config.video, video_tokens, audio_tokens, text_tokens, editor, cached) + _tower_flops(
        config.audio, audio_tokens, video_tokens, text_tokens, editor, cached
    )


# -- timing --------------------------------------------------------------------------------------
CLOCKS = ("wall", "cpu")


def _interleaved_times(fns: dict, reps: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Per clock, the times of each callable, run in turn ``reps`` times.

    Running the contenders in turn lets a shared machine's changing load hit all of them alike
    (ratios are then taken per round). "cpu" is the process's CPU time divided by the thread
    count: on a quiet machine it matches the wall time of a fully threaded run; on a loaded one
    it leaves out the time other processes held the cores, which the wall clock cannot.
    """
    threads = torch.get_num_threads()
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {clock: {name: [] for name in fns} for clock in CLOCKS}
    for _ in range(reps):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            times["wall"][name].append(time.perf_counter() - w0)
            times["cpu"][name].append((time.process_time() - c0) / threads)
    return times


MM_SIZE = 2048


def _matmul(size: int = MM_SIZE):
    """One bf16 ``size``-cubed GEMM, timed with the models to give the machine's matmul speed."""
    a = torch.randn(size, size, dtype=torch.bfloat16)
    b = torch.randn(size, size, dtype=torch.bfloat16)
    return lambda: torch.mm(a, b)


def _verdict(ok: bool) -> str:
    return "OK" if ok else "MISSED"


def _report(clock: str, times: dict[str, list[float]], flops: dict[str, float]) -> None:
    """Median statistics, and best-of-rounds ones (the least disturbed run of each, on a shared machine)."""
    times = dict(times)
    mm = times.pop(MATMUL)
    stats = {"median": statistics.median, "best": min}
    peak = {k: 2.0 * MM_SIZE**3 / f(mm) for k, f in stats.items()}
    print(f"[{clock} clock]  bf16 matmul ({MM_SIZE}^3 GEMM): median {peak['median'] / 1e9:.0f} GFLOP/s, "
          f"best {peak['best'] / 1e9:.0f} GFLOP/s")  # fmt: skip
    for name, ts in times.items():
        cols = [f"{k} {f(ts) * 1e3:7.1f} ms = {flops[name] / f(ts) / peak[k]:5.1%}" for k, f in stats.items()]
        print(f"  {name:<18} {flops[name] / 1e9:5.1f} GFLOP   " + "   ".join(cols) + "  of matmul throughput")
    if REFERENCE in times:
        for name, target in ((BASE, BASE_TARGET), (EDITOR, EDITOR_TARGET)):
            per_round = statistics.median(x / r for x, r in zip(times[name], times[REFERENCE]))
            best = min(times[name]) / min(times[REFERENCE])
            print(f"  {name:<18} vs reference: {per_round:.2f}x (median per-round) {_verdict(per_round <= target)}, "
                  f"{best:.2f}x (best) {_verdict(best <= target)}   target <= {target}x")  # fmt: skip
    for name, target in ((EDITOR, None), (CACHED, CACHED_TARGET)):
        per_round = statistics.median(x / r for x, r in zip(times[name], times[BASE]))
        best = min(times[name]) / min(times[BASE])
        verdict = f"{_verdict(per_round <= target)} / {_verdict(best <= target)}   target <= {target}x" if target else "(no target)"
        print(f"  {name:<18} vs our base: {per_round:.2f}x (median per-round), {best:.2f}x (best)  {verdict}")
    frac = {k: flops[BASE] / f(times[BASE]) / peak[k] for k, f in stats.items()}
    print(f"  {BASE:<16} throughput: {frac['median']:.1%} (median) {_verdict(frac['median'] >= THROUGHPUT_TARGET)}, "
          f"{frac['best']:.1%} (best) {_verdict(frac['best'] >= THROUGHPUT_TARGET)}   "
          f"target >= {THROUGHPUT_TARGET:.0%}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="timed forwards per model (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads (the project's CPUs have 2 cores)"
    )
    ap.add_argument("--profile", action="store_true", help="print torch.profiler tables for our two modes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ref_helper = _load_reference_helper()
    config = get_preset("bench-mid")
    nv = VIDEO_SHAPE[2] * (VIDEO_SHAPE[3] // 2) * (VIDEO_SHAPE[4] // 2)
    na = AUDIO_SHAPE[1]
    video = torch.randn(VIDEO_SHAPE).bfloat16()
    audio = torch.randn(AUDIO_SHAPE).bfloat16()
    ctx = torch.randn(1, CONTEXT_TOKENS, config.video.text_dim).bfloat16()
    t = torch.tensor([700.0])

    reason = ref_helper.skip_reason()
    reference = None
    if reason is None:
        reference = ref_helper.build_reference_fusion_model(
            *ref_helper.ovi_tower_configs(config), precision="bf16"
        )
        ref_helper.randomize_(reference)
        state = reference.state_dict()
    else:
        state = ref_helper.randomize_(AVEditorDiT(config, editor=False)).state_dict()
    base = AVEditorDiT(config, editor=False)
    base.load_state_dict(state, strict=True)
    base = base.to(torch.bfloat16).eval()
    with torch.device("meta"):
        editor = AVEditorDiT(config, editor=True)
    editor = init_editor_from_base(editor, state).to(torch.bfloat16).eval()
    source_v, source_a = torch.randn_like(video), torch.randn_like(audio)
    cache = SourceKVCache()
    with torch.no_grad():  # an earlier step of the same edit fills the cache
        editor(video, audio, t, ctx, ctx, video_source=source_v, audio_source=source_a, source_cache=cache)

    runs = {}
    if reference is not None:
        runs[REFERENCE] = lambda: ref_helper.run_reference(reference, video, audio, t, ctx, ctx)
    runs[BASE] = lambda: base(video, audio, t, ctx, ctx)
    runs[EDITOR] = lambda: editor(video, audio, t, ctx, ctx, video_source=source_v, audio_source=source_a)
    runs[CACHED] = lambda: editor(
        video, audio, t, ctx, ctx, video_source=source_v, audio_source=source_a, source_cache=cache
    )
    base_flops = forward_flops(config, nv, na, CONTEXT_TOKENS, editor=False)
    flops = {
        REFERENCE: base_flops,
        BASE: base_flops,
        EDITOR: forward_flops(config, nv, na, CONTEXT_TOKENS, editor=True),
        CACHED: forward_flops(config, nv, na, CONTEXT_TOKENS, editor=True, cached=True),
    }

    print(f"bench-mid: dim {config.video.dim}, {config.video.num_layers} layers, head_dim {config.video.head_dim}; "
          f"{nv} video + {na} audio tokens, {CONTEXT_TOKENS}-token instruction; bf16, batch 1, "
          f"{torch.get_num_threads()} threads, {args.reps} interleaved rounds")  # fmt: skip
    if reference is None:
        print(f"reference not run: {reason}")
    with torch.no_grad():
        times = _interleaved_times({MATMUL: _matmul(), **runs}, args.reps, args.warmup)
    for clock in CLOCKS:
        _report(clock, times[clock], flops)

    if args.profile:
        for name in (BASE, EDITOR, CACHED):
            with torch.no_grad(), torch.profiler.profile() as prof:
                runs[name]()
            print(f"\n== profile: {name} ==")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
