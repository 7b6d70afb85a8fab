"""Per-token timesteps in the DiT (issue 17, item 1): a clean prefix at t = 0, the rest noisy.

Parity with Ovi's own ``first_frame_is_clean`` is in tests/test_golden.py (always) and
tests/test_ovi_parity.py (with $OVI_PATH); here: the scalar / per-sample path is unchanged bit for
bit, and the per-token path means what it says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from instructav2av.models.configs import get_preset
from instructav2av.models.dit import AVEditorDiT, prefix_timesteps

GOLDEN = Path(__file__).parent / "golden"



def _model(editor: bool) -> AVEditorDiT:
    torch.manual_seed(5)
    m = AVEditorDiT(get_preset("tiny"), editor=editor).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _inputs(editor: bool):
    g = torch.Generator().manual_seed(3)
    x = dict(video=torch.randn(2, 48, 3, 4, 6, generator=g), audio=torch.randn(2, 12, 20, generator=g),
             video_context=torch.randn(2, 5, 32, generator=g), audio_context=torch.randn(2, 5, 32, generator=g))
    src = {}
    if editor:
        src = dict(video_source=torch.randn(2, 48, 3, 4, 6, generator=g),
                   audio_source=torch.randn(2, 12, 20, generator=g))
    return x, src


def _run(m, x, src, t, **kw):
    with torch.no_grad():
        return m(x["video"], x["audio"], t, x["video_context"], x["audio_context"], **src, **kw)


@pytest.mark.parametrize("editor", [False, True], ids=["base", "editor"])
def test_scalar_timestep_bit_identical_to_before(editor):
    """Outputs recorded by the code before per-token timesteps existed (tests/golden/make_scalar_timestep.py,
    single thread). Bit-identical on the CPU kind and torch that recorded them; elsewhere BLAS may
    round differently, so 1e-6 there."""
    before = load_file(GOLDEN / "dit_scalar_timestep.safetensors")
    with safe_open(GOLDEN / "dit_scalar_timestep.safetensors", "pt") as f:
        meta = f.metadata()
    same_machine = meta["torch"] == torch.__version__ and meta["cpu"] == torch.backends.cpu.get_cpu_capability()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = _model(editor)
        x, src = _inputs(editor)
        tag = "editor" if editor else "base"
        for name, t in (("scalar", torch.tensor(700.0)), ("batch", torch.tensor([937.0, 312.0]))):
            v, a = _run(m, x, src, t)
            for mod, out in (("video", v), ("audio", a)):
                ref = before[f"{tag}.{name}.{mod}"]
                if same_machine:
                    assert torch.equal(out, ref), f"{tag} {name} {mod}: no longer bit-identical"
                else:
                    assert (out - ref).abs().max() < 1e-6
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("editor", [False, True], ids=["base", "editor"])
def test_uniform_per_token_equals_per_sample(editor):
    m = _model(editor)
    x, src = _inputs(editor)
    t = torch.tensor([937.0, 312.0])
    v0, a0 = _run(m, x, src, t)
    nv = 3 * 2 * 3
    v1, a1 = _run(m, x, src, t, video_timestep=t[:, None].expand(2, nv), audio_timestep=t[:, None].expand(2, 12))
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a1, a0, rtol=1e-5, atol=1e-5)


def test_per_token_time_reaches_each_token():
    """Token n's time conditioning is its own: a clean first frame changes the output, and equals
    first_frame_is_clean; per-sample rows are not mixed (sample 1 alone gives the same result)."""
    m = _model(False)
    x, src = _inputs(False)
    t = torch.tensor([937.0, 312.0])
    per_frame = 2 * 3
    tv = prefix_timesteps(t, 3 * per_frame, per_frame)
    assert tv[:, :per_frame].eq(0).all() and tv[1, per_frame:].eq(312.0).all()
    v_clean, a_clean = _run(m, x, src, t, video_timestep=tv)
    v_plain, _ = _run(m, x, src, t)
    assert (v_clean - v_plain).abs().max() > 1e-3
    v_ovi, a_ovi = _run(m, x, src, t, first_frame_is_clean=True)
    assert torch.equal(v_clean, v_ovi) and torch.equal(a_clean, a_ovi)
    one = {k: v[1:] for k, v in x.items()}
    v1, _ = _run(m, one, src, t[1:], video_timestep=tv[1:])
    torch.testing.assert_close(v1, v_clean[1:], rtol=1e-5, atol=1e-5)
    # an audio prefix: only the audio tower's own time changes
    ta = prefix_timesteps(t, 12, 5)
    _, a_pref = _run(m, x, src, t, audio_timestep=ta)
    assert (a_pref - a_clean).abs().max() > 1e-3


def test_per_token_time_with_gradient_checkpointing_and_bf16():
    m = _model(True)
    x, src = _inputs(True)
    t = torch.tensor([500.0, 200.0])
    tv = prefix_timesteps(t, 18, 6)
    ref_v, _ = _run(m, x, src, t, video_timestep=tv)
    m.gradient_checkpointing = True
    m.train()
    v, a = m(x["video"], x["audio"], t, x["video_context"], x["audio_context"], **src, video_timestep=tv)
    (v.square().mean() + a.square().mean()).backward()
    torch.testing.assert_close(v.detach(), ref_v, rtol=1e-5, atol=1e-5)
    assert m.video_model.time_embedding[0].weight.grad is not None
    m16 = _model(True).to(torch.bfloat16)
    x16 = {k: v.bfloat16() for k, v in x.items()}
    src16 = {k: v.bfloat16() for k, v in src.items()}
    v16, _ = _run(m16, x16, src16, t, video_timestep=tv)
    assert v16.dtype == torch.bfloat16 and ((v16.float() - ref_v).norm() / ref_v.norm()) < 0.05


def test_bad_per_token_timesteps():
    m = _model(False)
    x, src = _inputs(False)
    t = torch.tensor([500.0, 200.0])
    with pytest.raises(ValueError, match=r"video_timestep must be per token, shape \[B, N\]=\[2, 18\]"):
        _run(m, x, src, t, video_timestep=torch.zeros(2, 17))
    with pytest.raises(ValueError, match="audio_timestep must hold finite"):
        _run(m, x, src, t, audio_timestep=torch.full((2, 12), -1.0))
    with pytest.raises(ValueError, match="either first_frame_is_clean"):
        _run(m, x, src, t, video_timestep=torch.zeros(2, 18), first_frame_is_clean=True)
    with pytest.raises(ValueError, match="clean_tokens must be in"):
        prefix_timesteps(t, 4, 5)
