"""Mutation run: plant one bug at a time in a temporary copy of the tree and run the CI tests that
should catch it. Every planted bug must make those tests fail.

    .venv/bin/python bench/mutations.py                       # all mutations, table on stdout
    .venv/bin/python bench/mutations.py --out docs/mutations.md --only siga-no-rope,ffn-shift-scale

Each mutation is anchored on a code snippet (found wherever it lives in the tree, so files may
move) that must occur exactly once; a missing or ambiguous anchor is reported as such (and makes
the run fail), never skipped silently. The copy is made once, each bug is applied to it, its tests
run, and the file is restored. Before the mutations, the unmutated copy must pass every test file
the run uses (otherwise a "caught" would mean nothing). Only the test files named per mutation run
(``-x``: the first failure is enough), so the whole run takes minutes on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "instructav2av"


@dataclass(frozen=True)
class Mutation:
    name: str
    area: str
    what: str  # the planted bug, in words
    old: str  # anchor: must occur exactly once in the package's code (tests/ and bench/ excluded)
    new: str
    tests: tuple[str, ...]  # test files (or node ids) that must fail


M = Mutation
MUTATIONS = [
    # -- the DiT (Ovi's fused model) -------------------------------------------------------------
    M("ffn-shift-scale", "DiT", "FFN modulation: shift and scale swapped",
      "shift, scale, ffn_gate = mod[3:]", "scale, shift, ffn_gate = mod[3:]", ("tests/test_golden.py",)),
    M("self-attn-gate-scale", "DiT", "self-attention modulation: gate and scale swapped",
      "shift, scale, gate = mod[:3]", "shift, gate, scale = mod[:3]", ("tests/test_golden.py",)),
    M("head-shift-scale", "DiT", "output head modulation: shift and scale swapped",
      "shift, scale = (self.modulation.to(device=e.device, dtype=e.dtype) + e.unsqueeze(1))",
      "scale, shift = (self.modulation.to(device=e.device, dtype=e.dtype) + e.unsqueeze(1))", ("tests/test_golden.py",)),
    M("time-embedding-sin-cos", "DiT", "timestep embedding as [sin, cos] instead of Wan's [cos, sin]",
      "torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)",
      "torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)", ("tests/test_golden.py",)),
    M("rope-split", "DiT", "3-D RoPE: time and height rotation pairs swapped (22/21/21 -> 21/22/21)",
      "return c - 2 * (c // 3), c // 3, c // 3", "return c // 3, c - 2 * (c // 3), c // 3", ("tests/test_golden.py",)),
    M("audio-rope-scale", "DiT", "audio RoPE without Ovi's temporal scaling factor",
      "freqs = scale * _spectrum(time_pairs, theta, dtype, device)", "freqs = _spectrum(time_pairs, theta, dtype, device)",
      ("tests/test_golden.py",)),
    M("text-padding-once", "DiT", "padded instruction slots attended once instead of text_len - T times",
      "attention(q, k, v, k_counts=context_counts, backend=", "attention(q, k, v, backend=", ("tests/test_golden.py",)),
    M("fusion-norm", "DiT", "cross-modal attention without its pre-attention LayerNorm",
      "tgt = self.pre_attn_norm_fusion(other)", "tgt = other", ("tests/test_golden.py",)),
    M("unpatchify-axes", "DiT", "video unpatchify with the two spatial patch axes swapped",
      "x.permute(0, 7, 1, 4, 2, 5, 3, 6)", "x.permute(0, 7, 1, 4, 2, 6, 3, 5)", ("tests/test_golden.py",)),
    # -- SIGA ------------------------------------------------------------------------------------
    M("siga-no-rope", "SIGA", "source path without RoPE on its keys",
      "k = apply_rope(self.heads(self.norm_k_source(self.k_source(src))), rope)",
      "k = self.heads(self.norm_k_source(self.k_source(src)))", ("tests/test_siga_formula.py",)),
    M("siga-gate-inputs", "SIGA", "gate inputs reordered ([f̂_c; f̂_x; f_h])",
      "torch.cat([from_source.flatten(2), out.flatten(2), x], dim=-1)",
      "torch.cat([out.flatten(2), from_source.flatten(2), x], dim=-1)", ("tests/test_siga_formula.py",)),
    M("siga-no-source-norm", "SIGA", "source tokens without norm_source",
      "src = self.norm_source(source)", "src = source", ("tests/test_siga_formula.py",)),
    M("siga-gate-flipped", "SIGA", "gate applied the wrong way round (G on the source, 1 - G on the text)",
      "keep = torch.sigmoid(-logits)", "keep = torch.sigmoid(logits)", ("tests/test_siga_formula.py",)),
    M("siga-source-channels", "SIGA", "source features from the source half of the patch embedding",
      "weight[:, : self.config.in_dim], bias, stride=pe.stride",
      "weight[:, self.config.in_dim :], bias, stride=pe.stride", ("tests/test_siga_formula.py",)),
    # -- solvers and guidance --------------------------------------------------------------------
    M("euler-sign", "solvers", "Euler step integrates the wrong way (σ - σ_next)",
      "return torch.add(x, v, alpha=s_next - s)", "return torch.add(x, v, alpha=s - s_next)",
      ("tests/test_samplers.py",)),
    M("unipc-order2", "solvers", "UniPC predictor: second-order weight halved",
      "k = -a_t * hphi * 0.5 / rk", "k = -a_t * hphi * 0.25 / rk", ("tests/test_samplers.py",)),
    M("dpm-midpoint", "solvers", "DPM++(2M) midpoint coefficient wrong",
      "((-a_t * hphi * (1.0 + 0.5 / r0), 0), (a_t * hphi * 0.5 / r0, 1))",
      "((-a_t * hphi * (1.0 + 0.25 / r0), 0), (a_t * hphi * 0.25 / r0, 1))", ("tests/test_samplers.py",)),
    M("shift-formula", "solvers", "timestep shift σ' = sσ / (1 + sσ) instead of sσ / (1 + (s-1)σ)",
      "return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)", "return shift * sigmas / (1.0 + shift * sigmas)",
      ("tests/test_samplers.py",)),
    M("guidance-weights", "solvers", "editing guidance: instruction and source scales exchanged",
      "return s_ins, s_src - s_ins, 1.0 - s_src", "return s_src, s_ins - s_src, 1.0 - s_ins",
      ("tests/test_samplers.py",)),
    # -- conforming ------------------------------------------------------------------------------
    M("audio-offset-rate", "conforming", "audio start offset computed at the output sample rate",
      "first = round(start * rate)", "first = round(start * out_rate)", ("tests/test_sync.py", "tests/test_media.py")),
    M("retime-start-of-frame", "conforming", "retiming samples the start of each output frame, not its middle",
      "mids = start + (k + 0.5) / float(spec.fps)", "mids = start + k / float(spec.fps)",
      ("tests/test_sync.py", "tests/test_media.py")),
    M("downmix-first-channel", "conforming", "stereo downmixed by keeping the first channel instead of the mean",
      "mono = window.float().mean(0) if window.shape[0] > 1 else window[0].float()", "mono = window[0].float()",
      ("tests/test_sync.py", "tests/test_media.py")),
    M("window-overlap", "conforming", "consecutive edit windows start one frame early (overlap by a frame)",
      "stride = spec.num_frames - overlap\n", "stride = spec.num_frames - overlap - 1\n",
      ("tests/test_sync.py",)),
    M("audio-length-floor", "conforming", "target audio length rounded down instead of half up",
      "return math.floor(exact + Fraction(1, 2))", "return math.floor(exact)",
      ("tests/test_media.py", "tests/test_sync.py")),
    # -- writers ---------------------------------------------------------------------------------
    M("write-clip-no-reservation", "writers", "write_clip publishes by copying over the chosen name (no atomic reservation)",
      "os.link(tmp, candidate)  # fails if the name was taken meanwhile: no silent overwrite",
      "candidate.write_bytes(tmp.read_bytes())", ("tests/test_safety_paths.py", "tests/test_media.py")),
    M("train-node-overwrites", "writers", "Train node publishes its adapter over an existing file of the same name",
      'open(target, "xb") as dst', 'open(target, "wb") as dst', ("tests/test_safety_paths.py", "tests/test_nodes.py")),
    M("trainer-product-name-taken", "writers", "trainer writes its product under a name taken during the run",
      "        while path.exists():\n            path = self.output_dir", "        while False:\n            path = self.output_dir",
      ("tests/test_safety_paths.py",)),
    M("atomic-write-replaces", "writers", "atomic_write replaces a file that appeared while it wrote",
      "            try:\n                os.link(tmp, path)\n", "            try:\n                os.replace(tmp, path)\n",
      ("tests/test_checkpoint.py",)),
    # -- checkpoint loading ----------------------------------------------------------------------
    M("shape-check-removed", "checkpoint loading", "the DiT loader's shape check removed (torch's raw error instead)",
      "if k in found and tuple(found[k]) != tuple(s)]", "if False]", ("tests/test_safety_paths.py",)),
    M("wan-vae-conv-swap", "checkpoint loading", "Wan VAE key map with the residual blocks' two convolutions swapped "
      "(consistently, both directions)",
      '("residual.2.", "conv1."),\n    ("residual.3.gamma", "norm2.gamma"),\n    ("residual.6.", "conv2."),',
      '("residual.2.", "conv2."),\n    ("residual.3.gamma", "norm2.gamma"),\n    ("residual.6.", "conv1."),',
      ("tests/test_golden.py", "tests/test_video_vae.py")),
    M("umt5-ffn-swap", "checkpoint loading", "umT5 key map with the FFN's GELU and linear branches swapped "
      "(consistently, both directions)",
      '("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),  # the GELU branch\n'
      '    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),  # the linear branch',
      '("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_1.weight"),\n'
      '    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_0.weight"),',
      ("tests/test_golden.py", "tests/test_text_encoder.py")),
    M("fp8-scale-ignored", "checkpoint loading", "fp8-scaled umT5 weights loaded without their scale",
      "v = v.float() * scale.float() if scale is not None else v.float()", "v = v.float()",
      ("tests/test_text_encoder.py",)),
    M("weight-norm-axis", "checkpoint loading", "BigVGAN weight norm folded over the whole tensor instead of per row",
      "dim = varying[0] if varying else 0", "dim = -1", ("tests/test_golden.py", "tests/test_audio_vae.py")),
    M("mmaudio-norm-fan", "checkpoint loading", "MMAudio conv weights normalised with the wrong fan-in factor",
      "w = w / torch.add(_NORM_EPS, norm, alpha=math.sqrt(1.0 / fan_in))",
      "w = w / torch.add(_NORM_EPS, norm, alpha=1.0 / fan_in)", ("tests/test_golden.py", "tests/test_audio_vae.py")),
    # -- ComfyUI memory --------------------------------------------------------------------------
    M("comfy-no-free-memory", "ComfyUI memory", "models moved to the GPU without asking ComfyUI to free room",
      "mm.free_memory(int(1.1 * sum(_weight_bytes(o) for o in movable)), device)", "pass",
      ("tests/test_safety_paths.py",)),
    M("comfy-no-offload", "ComfyUI memory", "models left on the GPU after the node",
      "            for o in movable:\n                o.to(parked)", "            for o in movable:\n                pass",
      ("tests/test_safety_paths.py",)),
]


def _code_files(root: Path) -> list[Path]:
    skip = {"tests", "bench", ".git", ".venv", "__pycache__", "workflows", "assets"}
    return [p for p in root.rglob("*.py") if not (set(p.relative_to(root).parts[:-1]) & skip)]


def _locate(root: Path, anchor: str) -> tuple[Path | None, str]:
    hits = [(p, p.read_text().count(anchor)) for p in _code_files(root)]
    hits = [(p, n) for p, n in hits if n]
    if not hits:
        return None, "anchor not found"
    if len(hits) > 1 or hits[0][1] > 1:
        where = ", ".join(f"{p.relative_to(root)} x{n}" for p, n in hits)
        return None, f"anchor ambiguous ({where})"
    return hits[0][0], ""


def _copy_tree(dest: Path) -> Path:
    """The working tree (git's files, tracked and untracked-not-ignored) under dest/instructav2av."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    tree = dest / PACKAGE
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / rel)
    return tree


def _pytest(tree: Path, tests: tuple[str, ...], timeout: int) -> tuple[bool, str, float]:
    """(passed, first failing test or the reason, seconds)."""
    env = {**os.environ, "PYTHONPATH": str(tree.parent), "PYTHONDONTWRITEBYTECODE": "1"}
    for var in ("OVI_PATH", "WAN_PATH", "MMAUDIO_PATH", "BIGVGAN_PATH"):  # CI has no reference checkouts
        env.pop(var, None)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-W",
                               "ignore::DeprecationWarning", *tests], cwd=tree, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout} s", time.perf_counter() - t0
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return True, "", seconds
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)
    return False, failed[0] if failed else out.strip().splitlines()[-1][:200], seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated mutation names")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) to this file")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per pytest run")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only.split(",")]
    if args.list:  # and whether each anchor is found exactly once in the tree as it is now
        bad = 0
        for m in chosen:
            path, problem = _locate(ROOT, m.old)
            bad += path is None
            print(f"{m.name:<28} {m.area:<20} {problem or path.relative_to(ROOT)}  {m.what}")
        return 1 if bad else 0
    if len({m.name for m in MUTATIONS}) != len(MUTATIONS):
        raise SystemExit("mutation names must be unique")

    rows, failures = [], 0
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        tree = _copy_tree(Path(tmp))
        check = subprocess.run([sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"], cwd=tmp,
                               env={**os.environ, "PYTHONPATH": tmp}, capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(tree)):
            raise SystemExit(f"the copy does not shadow the installed package: {check.stdout or check.stderr}")
        all_tests = tuple(sorted({t for m in chosen for t in m.tests}))
        print(f"baseline: {' '.join(all_tests)}", flush=True)
        ok, why, seconds = _pytest(tree, all_tests, args.timeout * 3)
        if not ok:
            raise SystemExit(f"the unmutated tree fails its own tests ({why}); fix that first")
        print(f"baseline passed in {seconds:.0f} s", flush=True)
        for m in chosen:
            path, problem = _locate(tree, m.old)
            if path is None:
                rows.append((m, "NOT RUN", problem, 0.0))
                failures += 1
                print(f"{m.name}: {problem}", flush=True)
                continue
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new, 1))
            try:
                passed, caught_by, seconds = _pytest(tree, m.tests, args.timeout)
            finally:
                path.write_text(original)
            status = "SURVIVED" if passed else "caught"
            failures += passed
            rows.append((m, status, caught_by, seconds, path.relative_to(tree)))
            print(f"{m.name}: {status} {caught_by} ({seconds:.0f} s)", flush=True)

    lines = ["| # | area | planted bug | file | result | caught by | s |", "|---|---|---|---|---|---|---|"]
    for i, (m, status, caught_by, seconds, *where) in enumerate(rows, 1):
        file = f"`{where[0]}`" if where else "–"
        lines.append(f"| {i} | {m.area} | {m.what} (`{m.name}`) | {file} | {status} | `{caught_by}` | {seconds:.0f} |")
    table = "\n".join(lines)
    summary = f"{sum(r[1] == 'caught' for r in rows)} of {len(rows)} planted bugs caught"
    print("\n" + table + "\n\n" + summary)
    if args.out:
        head = ("# Mutation run: what the CI suite catches\n\nEach row is one bug planted in a temporary copy of "
                "the tree by `bench/mutations.py`, and the CI test that failed because of it (the first failure; "
                "`-x`).\n\n")
        args.out.write_text(head + table + "\n\n" + summary + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
