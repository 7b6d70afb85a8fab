"""The memory planner's arithmetic (issue 12, Build 4) against hand-computed small cases; the check
against measured RSS is bench/memory_planner.py (never a timed test)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers_ckpt import ovi_key_shapes

from instructav2av.cli import main
from instructav2av.models.configs import get_preset
from instructav2av.runtime import memory
from instructav2av.runtime.memory import (
    Settings,
    attention_workspace,
    dit_weights,
    parse_size,
    plan,
    trace_peak,
)
from instructav2av.training.footprint import planner_hooks

TINY = get_preset("tiny")


def test_trace_counts_live_storages_and_frees_them():
    x = torch.empty(10, 10, device="meta")  # made before: its views are not new memory

    def fn():
        a = torch.empty(100, dtype=torch.float32, device="meta")  # 400 B
        b = torch.empty(50, dtype=torch.float32, device="meta")  # 200 B -> 600 live
        x.t().reshape(-1)  # a view of x: nothing new... reshape of a transpose copies: 400 B -> 1000 peak
        del a
        c = torch.empty(300, dtype=torch.uint8, device="meta")  # 200 + 300 live
        return b, c

    assert trace_peak(fn, [x]) == 1000
    assert trace_peak(lambda: x.view(100).add_(1), [x]) == 0  # in place on a view: no allocation


def test_dit_weights_by_hand():
    shapes = ovi_key_shapes(TINY, editor=True)
    n = sum(torch.Size(s).numel() for s in shapes.values())
    w = dit_weights("tiny", "bf16")
    assert w.params == n and w.total == 2 * n
    # fp8: every Linear weight 1 byte + a 4-byte scale, everything else 2 bytes
    linear = {k for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2 and "modulation" not in k}
    want = sum(torch.Size(s).numel() + 4 if k in linear else 2 * torch.Size(s).numel() for k, s in shapes.items())
    assert dit_weights("tiny", "bf16", "e4m3fn").total == want
    per_block = sum(2 * torch.Size(s).numel() for k, s in shapes.items() if ".blocks.1." in k)
    assert w.block[1] == per_block and len(w.block) == 2


def test_swap_and_placement_arithmetic():
    base = Settings(preset="small", mode="forward", device="cuda")
    w = dit_weights("small", "bf16")
    p0, p3 = plan(base), plan(dataclasses.replace(base, blocks_to_swap=3))
    assert p0.device["resident weights"] == w.total
    assert p3.device["resident weights"] == w.total - sum(w.block[:3])
    assert p3.device["streamed weights (2 blocks in flight)"] == sum(sorted(w.block[:3])[-2:])
    assert p3.host["swapped blocks (pinned)"] == sum(w.block[:3])
    assert p0.device["activations"] == p3.device["activations"] > 0
    streamed = plan(dataclasses.replace(base, blocks_to_swap=3, stream_blocks=True))
    assert "swapped blocks (pinned)" not in streamed.host
    assert streamed.host["blocks being read from the file"] == sum(sorted(w.block[:3])[-2:])
    cpu = plan(dataclasses.replace(base, device="cpu"))  # a CPU run: everything is host memory, no CUDA context
    assert cpu.host_peak == memory.HOST_BASELINE + memory.CPU_RUNTIME + cpu.device_peak
    assert "CUDA context and slack" not in cpu.device and p0.device["CUDA context and slack"] == memory.CUDA_OVERHEAD


def test_attention_workspace_formula():
    s = Settings(preset="tiny")
    v_tok, a_tok = s.tokens()
    n, heads = max(v_tok, a_tok), TINY.video.num_heads
    assert attention_workspace(s, 2) == 2 * heads * n * 4
    assert attention_workspace(dataclasses.replace(s, attention="math"), 1) == heads * n * n * 8


def test_activations_grow_with_tokens_and_batch():
    act = memory.dit_activations
    one = act("small", "bf16", "", (3, 8, 8), 10, 1, False, True, 4)
    assert act("small", "bf16", "", (3, 16, 16), 10, 1, False, True, 4) > 3 * one
    assert act("small", "bf16", "", (3, 8, 8), 10, 2, False, True, 4) > 1.5 * one
    # training keeps every block's activations without checkpointing, one block's with it
    hooks = planner_hooks()
    ckpt = act("small", "bf16", "", (3, 8, 8), 10, 1, True, True, 4, hooks)
    full = act("small", "bf16", "", (3, 8, 8), 10, 1, True, False, 4, hooks)
    assert full > ckpt > one
    with pytest.raises(ValueError, match="training hooks"):
        plan(Settings(preset="small", mode="train"))
    p = plan(Settings(preset="small", mode="train", lora_rank=4), hooks)
    trainable = hooks.trainable("small", 4)
    assert p.device["trainable parameters (fp32)"] == 4 * trainable
    assert p.device["optimizer state (AdamW, fp32)"] == 8 * trainable


@pytest.mark.parametrize("text, want", [("12GB", 12e9), ("12 GiB", 12 * 1024**3), ("11.5", 11.5e9), ("512MB", 512e6)])
def test_parse_size(text, want):
    assert parse_size(text) == int(want)


@pytest.mark.parametrize("bad", ["twelve", "-3GB", "0"])
def test_parse_size_refuses(bad):
    with pytest.raises(ValueError, match="budget"):
        parse_size(bad)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="blocks_to_swap=3 but tiny has 2 blocks per tower"):
        plan(Settings(preset="tiny", blocks_to_swap=3))
    with pytest.raises(ValueError, match="1 \\+ 4k frames"):
        plan(Settings(preset="tiny", frames=10))


def test_budget_picks_a_fitting_plan_or_names_the_closest(capsys):
    base = Settings(preset="small", mode="forward")
    peaks = {n: plan(dataclasses.replace(base, blocks_to_swap=n)).device_peak for n in range(5)}
    best, smallest = memory.fit_budget(base, peaks[2])
    assert best is not None and best.device_peak <= peaks[2]
    assert smallest.device_peak <= min(peaks.values())
    none, closest = memory.fit_budget(base, smallest.device_peak - 1)
    assert none is None and closest.device_peak == smallest.device_peak


def test_plan_command(capsys):
    assert main(["plan", "--preset", "small", "--train", "--lora-rank", "4"]) == 0
    out = capsys.readouterr().out
    assert "LoRA training (rank 4" in out and "peak device memory" in out and "optimizer state" in out
    assert main(["plan", "--preset", "small", "--train", "--budget", "0.5GB"]) == 1  # below the CUDA allowance
    out = capsys.readouterr().out
    assert out.startswith("nothing fits 0.50 GB: the closest setting needs") and "GB over" in out


def test_image_peak_rss_covers_what_this_process_holds():
    from instructav2av.runtime.meter import image_peak_rss

    held = bytearray(64 * 2**20)  # touched: resident
    held[:: 4096] = b"x" * len(held[:: 4096])
    now = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:"))
    assert image_peak_rss() >= now >= len(held)
