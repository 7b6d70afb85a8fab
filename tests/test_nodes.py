"""The ComfyUI nodes without ComfyUI: definitions, model folders, and the node graph on a tiny editor.

The graph tests build a tiny bundle from the real classes (AVEditorDiT editor at test size, the demo
codecs, and a byte-level instruction encoder module) and register it under the ``demo`` name, so
"Load Demo Model" returns it; the real embedded demo model is exercised in test_workflows.py.
ComfyUI's own code paths (folders, progress, previews, interrupt) run against tests/comfy_stubs.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from comfy_stubs import InterruptProcessingException, comfy_stubs
from torch import nn

from instructav2av import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from instructav2av import editing as pipeline
from instructav2av.demo.codecs import DemoAudioCodec, DemoVideoCodec
from instructav2av.editing import bundle as bundle_module
from instructav2av.models.configs import get_preset
from instructav2av.models.dit import AVEditorDiT
from instructav2av.nodes import comfy_env
from instructav2av.nodes.handles import TextEncoderHandle

STEPS = 2
WIDGETS = ("INT", "FLOAT", "STRING", "BOOLEAN")
CORE_SOCKETS = {"IMAGE", "AUDIO", "MASK"}


def node(name: str):
    return NODE_CLASS_MAPPINGS[name]()


# --------------------------------------------------------------------------------------------
# a tiny editor bundle
# --------------------------------------------------------------------------------------------


class ByteEncoder(nn.Module):
    """A real (tiny) instruction encoder: one learned vector per UTF-8 byte, at most 15 tokens."""

    def __init__(self, dim: int = 32, max_tokens: int = 15):
        super().__init__()
        torch.manual_seed(1)
        self.embedding = nn.Embedding(256, dim)
        self.max_tokens = max_tokens

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        ids = [torch.tensor(list(t.encode())[: self.max_tokens], dtype=torch.long) for t in texts]
        return [self.embedding(i.to(self.embedding.weight.device)) for i in ids]


def tiny_config():
    base = get_preset("tiny")  # 9 frames, 2 blocks, text_dim 32, text_len 16
    audio = dataclasses.replace(base.audio, in_dim=250, out_dim=250)  # the demo audio codec's channels
    return dataclasses.replace(base, name="nodes-test", audio=audio, fps=16, area=32 * 32)


def tiny_bundle(device, dtype, random_gates: bool = True, **files) -> pipeline.EditorBundle:
    torch.manual_seed(0)
    model = AVEditorDiT(tiny_config(), editor=True)
    if random_gates:  # a fresh editor has a zero head and constant gates: make the edit depend on its inputs
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("head.head.weight", "cross_attn.gate.weight")):
                    p.normal_(0.0, 0.05)
    return pipeline.EditorBundle(model.to(device, dtype), DemoVideoCodec(), DemoAudioCodec(), ByteEncoder(),
                                 tiny_config(), device=device, dtype=dtype)


@pytest.fixture
def tiny_demo(monkeypatch):
    """'Load Demo Model' returns the tiny bundle."""
    monkeypatch.setitem(bundle_module._LOADERS, "demo", tiny_bundle)
    return node("InstructAV2AVDemoLoader").load("fp32")


def source_clip(frames: int = 17, seed: int = 0) -> tuple[torch.Tensor, dict, str]:
    """A synthetic clip (32x32 at 16 fps) as ComfyUI IMAGE + AUDIO, and its instruction."""
    from instructav2av.data.synthetic import make_sample

    s = make_sample(seed, seed=7)
    images = s.source_video[:, :frames].permute(1, 2, 3, 0).add(1.0).mul(0.5).contiguous()
    samples = round(frames / 16 * 16000)
    audio = {"waveform": s.source_audio[:samples].reshape(1, 1, -1).clone(), "sample_rate": 16000}
    return images, audio, s.instruction


@contextmanager
def forward_calls(module: nn.Module):
    """A list that gains one entry per forward call of `module` while the block runs."""
    calls: list[int] = []
    hook = module.register_forward_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        hook.remove()


def run_graph(bundle, images, audio, instruction, *, seed=0, length="one window", steps=STEPS, join=None, overlap=0,
              **sampler):
    model, vvae, avae, te = bundle
    (instr,) = node("InstructAV2AVInstructionEncode").encode(te, instruction, "", "")
    joins = {} if join is None else {"window_join": join, "overlap": overlap}
    (src,) = node("InstructAV2AVSourceEncode").encode(model, vvae, avae, images, 16.0, "crop", length, 0.0, audio,
                                                      **joins)
    opts = dict(shift=5.0, solver="unipc", video_instruction_scale=4.0, video_source_scale=1.5,
                audio_instruction_scale=3.0, audio_source_scale=1.5, slg_layers="auto", denoise=1.0)
    opts.update(sampler)
    (latents,) = node("InstructAV2AVSampler").sample(model, instr, src, seed, steps, **opts)
    out = node("InstructAV2AVDecode").decode(latents, vvae, avae)
    return src, latents, out


# --------------------------------------------------------------------------------------------
# definitions
# --------------------------------------------------------------------------------------------


def test_every_node_registered_with_display_name():
    assert len(NODE_CLASS_MAPPINGS) >= 11
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("InstructAV2AV") and node_id.isidentifier()
        assert NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("InstructAV2AV ")
        assert cls.CATEGORY.startswith("InstructAV2AV")
        assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 40


def _check_input(node_id: str, name: str, spec: tuple) -> None:
    where = f"{node_id}.{name}"
    assert isinstance(spec, tuple) and len(spec) == 2, f"{where}: expected (type, options)"
    kind, opts = spec
    assert isinstance(opts, dict) and isinstance(opts.get("tooltip"), str) and len(opts["tooltip"]) > 10, \
        f"{where}: every input needs a tooltip"
    if isinstance(kind, list):
        assert kind and all(isinstance(o, str) and o for o in kind), f"{where}: combo must be non-empty strings"
        assert len(set(kind)) == len(kind), f"{where}: duplicate combo entries"
        if "default" in opts:
            assert opts["default"] in kind, f"{where}: default {opts['default']!r} not among the options"
    elif kind in ("INT", "FLOAT"):
        lo, hi, default = opts["min"], opts["max"], opts["default"]
        assert lo <= default <= hi, f"{where}: default {default} outside [{lo}, {hi}]"
        if kind == "INT":
            assert all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, default)), where
        assert opts.get("step", 1) > 0, where
    elif kind == "BOOLEAN":
        assert isinstance(opts["default"], bool), where
    elif kind == "STRING":
        assert isinstance(opts["default"], str), where
    else:
        assert kind.startswith("IAV2AV_") or kind in CORE_SOCKETS, f"{where}: unexpected socket type {kind}"


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_node_definition_is_well_formed(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    for section in ("required", "optional"):
        for name, item in spec.get(section, {}).items():
            _check_input(node_id, name, item)
    assert isinstance(cls.RETURN_TYPES, tuple) and all(isinstance(t, str) for t in cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    assert all(isinstance(t, str) and t for t in cls.OUTPUT_TOOLTIPS)
    # the function takes exactly the inputs: required ones without defaults, optional ones with
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    names = [p for p in params if p != "self"]
    required, optional = set(spec["required"]), set(spec.get("optional", {}))
    assert set(names) == required | optional, f"{node_id}.{cls.FUNCTION} parameters differ from its inputs"
    for name in optional:
        assert params[name].default is not inspect.Parameter.empty, f"{node_id}: optional {name} needs a default"
    for name in required:
        assert params[name].default is inspect.Parameter.empty, f"{node_id}: required {name} must not have a default"


def test_importing_the_nodes_does_not_import_comfyui():
    code = ("import sys, instructav2av as p; p.NODE_CLASS_MAPPINGS; "
            "bad = [m for m in sys.modules if m == 'folder_paths' or m == 'comfy' or m.startswith('comfy.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------------------------
# model folders
# --------------------------------------------------------------------------------------------


def test_plain_model_folders_without_comfyui(tmp_path, monkeypatch):
    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path))
    assert comfy_env.choices("loras", "none") == ["none"]  # never an empty combo
    # a folder with no files offers the registry's files for it (a workflow naming them validates)
    assert comfy_env.choices("vae") == ["wan2.2_vae.safetensors", "Wan2.2_VAE.pth"]
    (tmp_path / "vae" / "sub").mkdir(parents=True)
    (tmp_path / "vae" / "sub" / "b.safetensors").write_bytes(b"x")
    (tmp_path / "vae" / "a.pth").write_bytes(b"x")
    (tmp_path / "vae" / "notes.txt").write_text("not a model")
    assert comfy_env.list_models("vae") == ["a.pth", "sub/b.safetensors"]
    assert comfy_env.choices("vae") == ["a.pth", "sub/b.safetensors", "wan2.2_vae.safetensors", "Wan2.2_VAE.pth"]
    assert comfy_env.model_path("vae", "sub/b.safetensors") == tmp_path / "vae" / "sub" / "b.safetensors"
    with pytest.raises(FileNotFoundError, match=r"'missing.pth' not found. Looked in:\n  - ComfyUI vae folder .*vae"):
        comfy_env.model_path("vae", "missing.pth")
    with pytest.raises(FileNotFoundError, match=r"(?s)not found.*instructav2av download wan2.2_vae.safetensors.*https://"):
        node("InstructAV2AVVideoVAELoader").load("wan2.2_vae.safetensors", "bf16", 0, 0, 1)
    with pytest.raises(ValueError, match="unknown model folder"):
        comfy_env.list_models("checkpoints")
    with pytest.raises((FileNotFoundError, ValueError), match="diffusion_models"):
        node("InstructAV2AVModelLoader").load("(no files in models/diffusion_models)", "bf16", "auto", "auto")


def test_comfyui_folders_and_the_mmaudio_folder(tmp_path):
    for folder, name in (("mmaudio", "v1-16.pth"), ("mmaudio", "best_netG.pt"), ("vae", "mmaudio_single.safetensors"),
                         ("vae", "wan2.2_vae.safetensors")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / name).write_bytes(b"x")
    with comfy_stubs(tmp_path) as stubs:
        assert comfy_env.comfy_available()
        spec = NODE_CLASS_MAPPINGS["InstructAV2AVAudioVAELoader"].INPUT_TYPES()["required"]
        assert "mmaudio" in stubs.folder_paths.folder_names_and_paths  # registered on first use
        assert stubs.folder_paths.folder_names_and_paths["mmaudio"][1]  # with model extensions
        files = spec["vae_name"][0]
        assert files[:2] == ["best_netG.pt", "v1-16.pth"] and "mmaudio_single.safetensors" in files
        assert spec["vocoder_name"][0][0] == "none"
        assert comfy_env.model_path("mmaudio", "v1-16.pth") == tmp_path / "mmaudio" / "v1-16.pth"
        assert NODE_CLASS_MAPPINGS["InstructAV2AVVideoVAELoader"].INPUT_TYPES()["required"]["vae_name"][0] == \
            ["mmaudio_single.safetensors", "wan2.2_vae.safetensors", "Wan2.2_VAE.pth"]
        with pytest.raises(FileNotFoundError, match="models/mmaudio"):
            node("InstructAV2AVAudioVAELoader").load("gone.pth", "none", "fp32")
    assert not comfy_env.comfy_available()


# --------------------------------------------------------------------------------------------
# loaders with real files
# --------------------------------------------------------------------------------------------


def test_model_loader_reads_an_editor_file(tmp_path, monkeypatch):
    from instructav2av.weights.dit import save_editor

    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path))
    (tmp_path / "diffusion_models").mkdir()
    model = tiny_bundle("cpu", torch.float32).model
    save_editor(model, tmp_path / "diffusion_models" / "editor.safetensors", origin="test")
    assert "editor.safetensors" in NODE_CLASS_MAPPINGS["InstructAV2AVModelLoader"].INPUT_TYPES()["required"][
        "model_name"][0]
    (handle,) = node("InstructAV2AVModelLoader").load("editor.safetensors", "fp32", "sdpa", "auto")
    assert handle.config == tiny_config() and handle.attention == "sdpa" and handle.dtype == torch.float32
    for (k, a), b in zip(handle.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k
    (fp8,) = node("InstructAV2AVModelLoader").load("editor.safetensors", "fp8_e4m3fn", "auto", "auto")
    assert fp8.model.video_model.blocks[0].self_attn.q.weight.dtype == torch.float8_e4m3fn
    assert fp8.dtype == torch.bfloat16
    with pytest.raises(FileNotFoundError, match="loras"):
        node("InstructAV2AVModelLoader").load("editor.safetensors", "fp32", "auto", "auto", adapter_1="gone.safetensors")


def test_video_vae_loader_sets_tiling(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    from instructav2av.models.codecs.video_vae import build_video_vae

    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path))
    (tmp_path / "vae").mkdir()
    vae = build_video_vae(seed=0)
    save_file({k: v.contiguous() for k, v in vae.vae.state_dict().items()}, str(tmp_path / "vae" / "tiny.safetensors"))
    loader = NODE_CLASS_MAPPINGS["InstructAV2AVVideoVAELoader"]
    assert loader.VALIDATE_INPUTS(tile_size=64, tile_overlap=64) != True  # noqa: E712 (an error string)
    (handle,) = node("InstructAV2AVVideoVAELoader").load("tiny.safetensors", "fp32", 64, 32, 2)
    assert handle.codec.tiling.tile_size == 64 and handle.codec.tiling.overlap == 32
    assert handle.codec.tiling.frames_per_chunk == 2 and handle.codec.latent_shape(5, 64, 64) == (48, 2, 4, 4)
    (untiled,) = node("InstructAV2AVVideoVAELoader").load("tiny.safetensors", "fp32", 0, 64, 1)
    assert untiled.codec.tiling.tile_size is None


def test_instruction_encoder_frees_the_text_encoder():
    loads = []

    def load():
        loads.append(1)
        return ByteEncoder()

    handle = TextEncoderHandle(name="bytes", load=load)
    assert loads == []  # the loader node only prepares
    (instr,) = node("InstructAV2AVInstructionEncode").encode(handle, "  make the   square red ", "blurry", "")
    assert loads == [1] and handle.encoder is None  # loaded for the call, freed after
    assert instr.text == "make the square red"  # whitespace normalised as the pipeline does
    assert set(instr.embeddings) == {"make the square red", "blurry", ""}
    assert instr.embeddings["make the square red"].shape == (15, 32)  # the encoder's 15-token cap
    assert instr.embeddings[""].shape == (0, 32)
    node("InstructAV2AVInstructionEncode").encode(handle, "make it blue", "", "", keep_loaded=True)
    assert loads == [1, 1] and handle.encoder is not None
    with pytest.raises(ValueError, match="instruction is empty"):
        node("InstructAV2AVInstructionEncode").encode(handle, "   ", "", "")
    kept = TextEncoderHandle(name="kept", encoder=ByteEncoder())  # no way to reload: kept after use
    node("InstructAV2AVInstructionEncode").encode(kept, "make it blue", "", "")
    assert kept.encoder is not None


# --------------------------------------------------------------------------------------------
# the graph
# --------------------------------------------------------------------------------------------


def test_edit_graph_outputs_core_types(tiny_demo):
    images, audio, instruction = source_clip(frames=9)
    src, latents, (out_images, out_audio, fps) = run_graph(tiny_demo, images, audio, instruction)
    assert len(src.windows) == 1 and src.windows[0].video.shape == (1, 48, 3, 16, 16)
    assert src.windows[0].audio.shape == (1, 37, 250)  # 9000 samples / hop 250 + 1
    assert out_images.shape == (9, 32, 32, 3) and out_images.dtype == torch.float32
    assert 0.0 <= float(out_images.min()) and float(out_images.max()) <= 1.0
    assert out_audio["sample_rate"] == 16000 and out_audio["waveform"].shape == (1, 1, 9000)
    assert fps == 16.0
    # the edit is a function of the seed
    _, _, (again, again_audio, _) = run_graph(tiny_demo, images, audio, instruction)
    _, _, (other, _, _) = run_graph(tiny_demo, images, audio, instruction, seed=1)
    assert torch.equal(out_images, again) and torch.equal(out_audio["waveform"], again_audio["waveform"])
    assert not torch.equal(out_images, other)
    # denoise 0 returns the source through the codecs (exact demo codecs: within rounding)
    _, _, (kept, kept_audio, _) = run_graph(tiny_demo, images, audio, instruction, denoise=0.0)
    assert (kept - images).abs().max() < 1e-4
    assert (kept_audio["waveform"] - audio["waveform"]).abs().max() < 1e-4


def test_windows_cover_a_long_source_and_padding_is_cut(tiny_demo):
    images, audio, instruction = source_clip(frames=17)  # 17 frames; the model takes 9
    src, _, (one, one_audio, _) = run_graph(tiny_demo, images, audio, instruction, steps=1)
    assert len(src.windows) == 1 and one.shape[0] == 9 and one_audio["waveform"].shape[-1] == 9000
    src, _, (whole, whole_audio, _) = run_graph(tiny_demo, images, audio, instruction, length="all windows", steps=1,
                                                join="consecutive")
    assert [w.start for w in src.windows] == [0.0, 9 / 16] and [w.valid_frames for w in src.windows] == [9, 8]
    assert whole.shape == (17, 32, 32, 3) and whole_audio["waveform"].shape == (1, 1, 17000)
    assert torch.equal(whole[:9], one)  # window 1 is the one-window edit (same seed, same latents)
    short, short_audio, _ = source_clip(frames=5)  # shorter than the model's clip: padded, then cut back
    _, _, (cut, cut_audio, _) = run_graph(tiny_demo, short, short_audio, instruction, steps=1)
    assert cut.shape[0] == 5 and cut_audio["waveform"].shape[-1] == 5000
    with pytest.raises(ValueError, match="start_seconds"):
        node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images, 16.0, "crop", "one window", 2.0, audio)


def test_sampler_checks_its_options(tiny_demo):
    images, audio, instruction = source_clip(frames=9)
    with pytest.raises(ValueError, match=r"slg_layers \[5\] do not exist"):
        run_graph(tiny_demo, images, audio, instruction, slg_layers="5")
    with pytest.raises(ValueError, match="slg_layers must be"):
        run_graph(tiny_demo, images, audio, instruction, slg_layers="eleven")
    with pytest.raises(ValueError, match="instruction_scale"):
        run_graph(tiny_demo, images, audio, instruction, video_instruction_scale=float("nan"))
    other = dataclasses.replace(tiny_demo[0], config=dataclasses.replace(tiny_config(), name="other", num_frames=5))
    (instr,) = node("InstructAV2AVInstructionEncode").encode(tiny_demo[3], instruction, "", "")
    (src,) = node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images, 16.0, "crop", "one window", 0.0, audio)
    with pytest.raises(ValueError, match="connect the same model"):
        node("InstructAV2AVSampler").sample(other, instr, src, 0, STEPS, 5.0, "unipc", 4, 1.5, 3, 1.5, "auto", 1.0)


def test_progress_previews_and_interrupt_within_one_step(tiny_demo, tmp_path):
    images, audio, instruction = source_clip(frames=9)
    with forward_calls(tiny_demo[0].model) as calls, comfy_stubs(tmp_path) as stubs:
        run_graph(tiny_demo, images, audio, instruction, steps=3)
        sampled = [p for p in stubs.progress if p[1] == 3]
        assert [v for v, _, _ in sampled[:3]] == [1, 2, 3]
        fmt, image, size = sampled[0][2]  # ComfyUI's preview tuple with a decoded frame
        assert fmt == "JPEG" and image.size == (32, 32) and size == comfy_env.PREVIEW_SIZE
        per_step = len(calls) // 3
        # Cancel is pressed during sampling step 1 (progress: 1 source-encoding update, then 1 per
        # step): the sampler stops before step 2 and raises ComfyUI's own exception.
        stubs.progress.clear()
        stubs.interrupt_after = 2
        calls.clear()
        with pytest.raises(InterruptProcessingException):
            run_graph(tiny_demo, images, audio, instruction, steps=10)
        assert len(calls) == per_step  # only the step that was running when Cancel came
        assert not stubs.interrupt  # ComfyUI's flag was consumed


def test_gate_map_shapes_and_the_untrained_gate(tiny_demo, monkeypatch):
    images, audio, instruction = source_clip(frames=17)
    _, latents, (out_images, out_audio, _) = run_graph(tiny_demo, images, audio, instruction, length="all windows",
                                                       steps=1)
    mask, plot = node("InstructAV2AVGateMap").gates(latents, 0.5, "stretch", 256, 64)
    assert mask.shape == out_images.shape[:3] and plot.shape == (1, 64, 256, 3)
    assert float(mask.min()) == 0.0 and float(mask.max()) == 1.0  # random gates, stretched
    # an editor fresh from Ovi's weights: gate weight 0, bias 6 -> G = sigmoid(6) everywhere
    monkeypatch.setitem(bundle_module._LOADERS, "demo",
                        lambda device, dtype, **f: tiny_bundle(device, dtype, random_gates=False))
    fresh = node("InstructAV2AVDemoLoader").load("fp32")
    _, latents, _ = run_graph(fresh, images, audio, instruction, steps=1)
    raw, plot = node("InstructAV2AVGateMap").gates(latents, 0.3, "raw")
    assert torch.allclose(raw, torch.full_like(raw, 1 / (1 + math.exp(-6.0))), atol=1e-5)
    flat, _ = node("InstructAV2AVGateMap").gates(latents, 0.3, "stretch")
    assert torch.all(flat == 0.5)
    with pytest.raises(ValueError, match="sigma"):
        node("InstructAV2AVGateMap").gates(latents, 1.5, "raw")


def test_gate_tokens_map_to_frames_and_pixels():
    from instructav2av.samplers.gates import curve_image, stretch, video_gate_frames

    grid = torch.tensor([0.0, 0.5, 1.0]).reshape(3, 1, 1).expand(3, 2, 2)  # latent frames 0, 1, 2
    frames = video_gate_frames(grid, 9, 8, 8, temporal_factor=4)
    # Wan's causal layout: latent frame 0 -> pixel frame 0, latent frame f -> frames 4f-3 .. 4f
    assert frames.shape == (9, 8, 8)
    assert [round(float(f.mean()), 3) for f in frames] == [0.0, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    left_right = video_gate_frames(torch.tensor([[[0.0, 1.0]]]), 1, 4, 8, 4)[0, 0]
    assert left_right[0] < 0.1 and left_right[-1] > 0.9 and torch.all(left_right.diff() >= 0)  # bilinear
    assert torch.equal(stretch(torch.tensor([0.9, 0.95, 1.0])), torch.tensor([0.0, 0.5, 1.0]))
    plot = curve_image(torch.tensor([0.0, 1.0]), height=10, width=20)
    orange = (plot == torch.tensor([1.0, 0.6, 0.1])).all(-1)
    assert not orange[:, :10].any() and orange[:, 10:].all()  # value 0 on the left half, 1 on the right
    with pytest.raises(ValueError, match="token grid"):
        video_gate_frames(torch.zeros(4, 4), 9, 8, 8, 4)


def test_demo_clip_node_reads_the_bundled_clip(tmp_path, monkeypatch):
    from instructav2av.media import write_clip
    from instructav2av.nodes import demo

    images, audio, instruction = source_clip(frames=17)
    path = write_clip(tmp_path / "clip.mp4", images.mul(255).round().to(torch.uint8), 16, audio["waveform"][0, 0],
                      16000)
    monkeypatch.setattr(demo, "demo_files", lambda: (path, instruction))
    out_images, out_audio, fps, text = node("InstructAV2AVDemoClip").load()
    assert out_images.shape == (17, 32, 32, 3) and fps == 16.0 and text == instruction
    assert out_audio["sample_rate"] == 16000 and abs(out_audio["waveform"].shape[-1] - 17000) < 1100
    monkeypatch.undo()
    from instructav2av.demo import recipe as demo_training

    monkeypatch.setattr(demo_training, "ASSETS", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="demo clip is missing"):
        demo.demo_files()


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_loaders_name_a_file_of_the_wrong_kind(tmp_path, monkeypatch):
    """Each loader says what the chosen file looks like and what it expects instead of failing deep inside."""
    from safetensors.torch import save_file

    from instructav2av.models.codecs.video_vae import build_video_vae
    from instructav2av.weights.dit import save_editor

    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path))
    for folder in ("diffusion_models", "vae", "mmaudio"):
        (tmp_path / folder).mkdir()
    vae = {k: v.contiguous() for k, v in build_video_vae(seed=0).vae.state_dict().items()}
    save_file(vae, str(tmp_path / "diffusion_models" / "a_vae.safetensors"))
    save_file(vae, str(tmp_path / "mmaudio" / "a_video_vae.safetensors"))
    save_editor(tiny_bundle("cpu", torch.float32).model, tmp_path / "vae" / "an_editor.safetensors", origin="test")
    with pytest.raises(ValueError, match=r"not an Ovi or InstructAV2AV model checkpoint: it looks like .*VAE"):
        node("InstructAV2AVModelLoader").load("a_vae.safetensors", "fp32", "auto", "auto")
    with pytest.raises(ValueError, match=r"not a Wan2.2 video VAE.*looks like an InstructAV2AV editor"):
        node("InstructAV2AVVideoVAELoader").load("an_editor.safetensors", "fp32", 0, 64, 1)
    with pytest.raises(ValueError, match=r"does not fit the MMAudio 16 kHz VAE.*expected MMAudio"):
        node("InstructAV2AVAudioVAELoader").load("a_video_vae.safetensors", "none", "fp32")


def test_image_and_audio_of_different_durations(tiny_demo, caplog):
    """The frames decide the duration: shorter audio is padded with silence, longer audio cut, both logged."""
    images, audio, instruction = source_clip(frames=9)  # 0.5625 s
    _, long_audio, _ = source_clip(frames=17)
    short_audio = {"waveform": audio["waveform"][..., :4000].clone(), "sample_rate": 16000}
    for sound, said in ((short_audio, "padded with silence"), (long_audio, "the extra audio is ignored")):
        caplog.clear()
        with caplog.at_level("WARNING"):
            (src,) = node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images, 16.0, "crop", "one window",
                                                              0.0, sound)
        assert any(said in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
        assert (src.windows[0].valid_frames, src.windows[0].valid_samples) == (9, 9000)
    # the padding is silence: the encoded audio equals that of a source whose tail is zeroed by hand
    (padded,) = node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images, 16.0, "crop", "one window", 0.0,
                                                         short_audio)
    zeroed = audio["waveform"].clone()
    zeroed[..., 4000:] = 0
    (by_hand,) = node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images, 16.0, "crop", "one window", 0.0,
                                                          {"waveform": zeroed, "sample_rate": 16000})
    assert torch.equal(padded.windows[0].audio, by_hand.windows[0].audio)


def test_cancelled_run_leaves_nothing_and_the_next_run_works(tiny_demo, tmp_path):
    images, audio, instruction = source_clip(frames=9)
    with comfy_stubs(tmp_path) as stubs:
        stubs.interrupt_after = 2
        with pytest.raises(InterruptProcessingException):
            run_graph(tiny_demo, images, audio, instruction, steps=10)
        stubs.interrupt_after = None  # Cancel was pressed once; the user queues the graph again
        _, _, (after, after_audio, _) = run_graph(tiny_demo, images, audio, instruction)
    _, _, (fresh, fresh_audio, _) = run_graph(tiny_demo, images, audio, instruction)
    assert torch.equal(after, fresh) and torch.equal(after_audio["waveform"], fresh_audio["waveform"])
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".mp4", ".tmp", ".part")]


# --------------------------------------------------------------------------------------------
# warnings on the screen (issue 11, item 12)
# --------------------------------------------------------------------------------------------


def test_warnings_reach_the_node_on_screen_inside_comfyui(tiny_demo, tmp_path):
    """Inside ComfyUI's executor a node's warnings are shown on it (progress text) and returned as ui text."""
    images, audio, _ = source_clip(frames=9)
    _, long_audio, _ = source_clip(frames=17)
    from instructav2av.demo import recipe as demo

    demo_words = TextEncoderHandle(name="demo", encoder=demo.demo_text_encoder())
    with comfy_stubs(tmp_path) as stubs:
        stubs.executing = "4"
        silent = node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images, 16.0, "crop", "one window", 0.0)
        longer = node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images, 16.0, "crop", "one window", 0.0,
                                                          long_audio)
        stubs.executing = "3"
        words = node("InstructAV2AVInstructionEncode").encode(demo_words, "remove the purple zebra", "", "")
        stubs.executing = "5"
        quiet = node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images, 16.0, "crop", "one window", 0.0,
                                                         audio)
    for result, said in ((silent, "has no audio; using a silent track"), (longer, "the extra audio is ignored"),
                         (words, "does not know the words 'purple', 'zebra'")):
        assert set(result) == {"ui", "result"} and any(said in t for t in result["ui"]["text"]), result["ui"]
    assert silent["result"][0].windows[0].valid_frames == 9  # the node's own output is unchanged
    shown = {}  # node id -> the texts shown on it, in order (each shows the warnings of its run so far)
    for node_id, text in stubs.texts:
        shown.setdefault(node_id, []).append(text)
    assert "silent track" in shown["4"][0] and "extra audio is ignored" in shown["4"][1] and "zebra" in shown["3"][0]
    assert "silent track" not in shown["4"][1]  # a new run starts with a clean slate
    assert isinstance(quiet, tuple) and "5" not in shown  # nothing to say: the plain result, nothing shown
    # outside ComfyUI (scripts, the CLI, tests) the node returns its plain tuple
    (src,) = node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images, 16.0, "crop", "one window", 0.0)
    assert src.windows[0].valid_frames == 9


def test_a_single_image_as_the_source_is_refused(tiny_demo):
    images, _, _ = source_clip(frames=9)
    _, long_audio, _ = source_clip(frames=17)
    with pytest.raises(ValueError, match=r"single image.*edits video clips.*Get Video Components"):
        node("InstructAV2AVSourceEncode").encode(*tiny_demo[:3], images[:1], 16.0, "crop", "one window", 0.0,
                                                 long_audio)


# --------------------------------------------------------------------------------------------
# validation (issue 11, item 14)
# --------------------------------------------------------------------------------------------


def test_custom_validation_leaves_comfyui_its_own_checks():
    """ComfyUI skips its own checks (file combo, min/max) for every input VALIDATE_INPUTS names, for all of
    them when it takes **kwargs, and repeats a failure once per named input (execution.validate_inputs)."""
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        if hasattr(cls, "VALIDATE_INPUTS"):
            spec = inspect.getfullargspec(cls.VALIDATE_INPUTS)
            assert spec.varkw is None, f"{node_id}.VALIDATE_INPUTS takes **{spec.varkw}: ComfyUI then checks nothing"
    loader = NODE_CLASS_MAPPINGS["InstructAV2AVVideoVAELoader"]
    assert inspect.getfullargspec(loader.VALIDATE_INPUTS).args == ["cls", "tile_size", "tile_overlap"]
    assert loader.VALIDATE_INPUTS(tile_size=256, tile_overlap=64) is True
    assert loader.VALIDATE_INPUTS(tile_size=0, tile_overlap=64) is True  # no tiling: the overlap is unused
    # so their min/max (which ComfyUI no longer checks) and the rules between them are checked here
    assert "[0, tile_size), got 64 with tile_size 64" in loader.VALIDATE_INPUTS(tile_size=64, tile_overlap=64)
    assert "multiple of 16" in loader.VALIDATE_INPUTS(tile_size=256, tile_overlap=40)
    assert "between 0 and 1024" in loader.VALIDATE_INPUTS(tile_size=4096, tile_overlap=2048)
    assert "between 0 and 4096" in loader.VALIDATE_INPUTS(tile_size=8192, tile_overlap=64)


@pytest.mark.parametrize("join", ["context", "blend"])
def test_overlapping_windows_in_the_graph(tiny_demo, tmp_path, join):
    """Encode Source's window_join (issue 17): overlapping windows, the clean context, "window k of n" on
    the node, and the joined result as long as the source."""
    images, audio, instruction = source_clip(frames=17)
    images = torch.cat([images, images.flip(0)])[:25]  # 25 frames of the same scene (the sample has 17)
    wave = audio["waveform"]
    audio = {"waveform": torch.cat([wave, wave.flip(-1)], dim=-1)[..., :25000], "sample_rate": 16000}
    with comfy_stubs(tmp_path) as stubs:
        stubs.executing = "7"  # as ComfyUI's executor sets it around the node
        src, latents, (whole, whole_audio, _) = run_graph(tiny_demo, images, audio, instruction, length="all windows",
                                                          steps=1, join=join, overlap=1)
        texts = [t for node_id, t in stubs.texts if node_id == "7"]
    # 9-frame windows, 1 latent frame of overlap = 1 frame: windows start every 8 frames
    assert [w.start for w in src.windows] == [0.0, 0.5, 1.0]
    assert [w.overlap_frames for w in src.windows] == [0, 1, 1]
    assert [w.context for w in src.windows] == ([0, 1, 1] if join == "context" else [0, 0, 0])
    assert whole.shape == (25, 32, 32, 3) and whole_audio["waveform"].shape == (1, 1, 25000)
    if join == "context":  # each window starts with its clean prefix: the previous result's end, re-encoded
        assert len(latents.video) == 3
    assert [t for t in texts if t.startswith("window ")] == ["window 1 of 3", "window 2 of 3", "window 3 of 3"]
    with pytest.raises(ValueError, match="must be shorter than the window"):
        run_graph(tiny_demo, images, audio, instruction, length="all windows", steps=1, join=join, overlap=3)


def test_join_modes_match_the_editing_package():
    from instructav2av.editing.windows import DEFAULT_JOIN, JOIN_MODES
    from instructav2av.nodes import encode

    assert set(encode.JOIN_MODES) == set(JOIN_MODES) and encode.DEFAULT_JOIN == DEFAULT_JOIN


def test_cancel_between_windows(tiny_demo, tmp_path):
    images, audio, instruction = source_clip(frames=17)
    with forward_calls(tiny_demo[0].model) as calls, comfy_stubs(tmp_path) as stubs:
        run_graph(tiny_demo, images, audio, instruction, length="all windows", steps=1, join="context", overlap=1)
        per_window = len(calls) // 2
        # progress: 2 source-encoding updates, then 1 per step; Cancel comes with window 1's only step
        stubs.progress.clear()
        stubs.interrupt_after = 3
        calls.clear()
        with pytest.raises(InterruptProcessingException):
            run_graph(tiny_demo, images, audio, instruction, length="all windows", steps=1, join="context",
                      overlap=1)
        assert len(calls) == per_window  # window 2 never started
