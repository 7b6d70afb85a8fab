"""The example workflows: well formed, type-correct, loadable by ComfyUI, and the demo one runs.

CI has no ComfyUI, so the core nodes the workflows use are frozen below with the inputs and outputs
ComfyUI v0.3.64 (commit a125cd84) reports in /object_info. The UI files are converted to the API
format here (independently of workflows/build_workflows.py, the way ComfyUI's frontend does it:
sockets from links, widgets positionally from ``widgets_values``) and must equal their API twins.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from instructav2av import NODE_CLASS_MAPPINGS
from instructav2av import editing as pipeline
from instructav2av.editing import bundle as bundle_module
from instructav2av.nodes.prompt_runner import run_prompt

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
UI_FILES = sorted(WORKFLOWS.glob("*.json"))  # what ComfyUI's template browser lists (top folder only)
API_DIR = WORKFLOWS / "api"
DEMO = "instructav2av_demo_cpu"

# ComfyUI v0.3.64 core nodes used by the workflows: name -> (section, type, options) per input, outputs.
CORE_NODES: dict[str, dict] = {
    "LoadVideo": {"inputs": {"file": ("required", "COMBO", {"options": None, "video_upload": True})},
                  "outputs": [("VIDEO", "VIDEO")], "output_node": False},
    "GetVideoComponents": {"inputs": {"video": ("required", "VIDEO", {})},
                           "outputs": [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")], "output_node": False},
    "CreateVideo": {"inputs": {"images": ("required", "IMAGE", {}),
                               "fps": ("required", "FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0}),
                               "audio": ("optional", "AUDIO", {})},
                    "outputs": [("VIDEO", "VIDEO")], "output_node": False},
    "SaveVideo": {"inputs": {"video": ("required", "VIDEO", {}),
                             "filename_prefix": ("required", "STRING", {"default": "video/ComfyUI"}),
                             "format": ("required", "COMBO", {"default": "auto", "options": ["auto", "mp4"]}),
                             "codec": ("required", "COMBO", {"default": "auto", "options": ["auto", "h264"]})},
                  "outputs": [], "output_node": True},
    "MaskToImage": {"inputs": {"mask": ("required", "MASK", {})}, "outputs": [("IMAGE", "IMAGE")], "output_node": False},
    "PreviewImage": {"inputs": {"images": ("required", "IMAGE", {})}, "outputs": [], "output_node": True},
}
UI_ONLY = {"MarkdownNote", "Note"}  # frontend-only nodes; never sent to the server
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MODEL_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")
# Our combos that list model files: their options depend on what the user has installed.
FILE_INPUTS = {
    ("InstructAV2AVModelLoader", "model_name"), ("InstructAV2AVModelLoader", "adapter_1"),
    ("InstructAV2AVModelLoader", "adapter_2"), ("InstructAV2AVVideoVAELoader", "vae_name"),
    ("InstructAV2AVAudioVAELoader", "vae_name"), ("InstructAV2AVAudioVAELoader", "vocoder_name"),
    ("InstructAV2AVTextEncoderLoader", "text_encoder_name"), ("LoadVideo", "file"),
}


def definitions() -> dict[str, dict]:
    """name -> {"inputs": {name: (section, type, options)} in order, "outputs": [(name, type)]}."""
    defs = dict(CORE_NODES)
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        inputs = {}
        for section in ("required", "optional"):
            for name, (kind, *opts) in spec.get(section, {}).items():
                opts = dict(opts[0]) if opts else {}
                if isinstance(kind, list):
                    kind, opts["options"] = "COMBO", kind
                inputs[name] = (section, kind, opts)
        defs[node_id] = {"inputs": inputs, "outputs": list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES)),
                         "output_node": getattr(cls, "OUTPUT_NODE", False)}
    return defs


DEFS = definitions()


def is_widget(kind: str, opts: dict) -> bool:
    return kind in WIDGET_TYPES and not opts.get("forceInput", False)


def widget_slots(defn: dict) -> list[str | None]:
    """The names behind each ``widgets_values`` position (None for the frontend's extra controls)."""
    slots = []
    for name, (_, kind, opts) in defn["inputs"].items():
        if is_widget(kind, opts):
            slots.append(name)
            if name in ("seed", "noise_seed") or opts.get("control_after_generate"):
                slots.append(None)  # "control after generate"
            if opts.get("video_upload") or opts.get("image_upload") or opts.get("audio_upload"):
                slots.append(None)  # the upload button
    return slots


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def ui_to_api(ui: dict) -> dict:
    links = {link[0]: link for link in ui["links"]}
    prompt = {}
    for n in ui["nodes"]:
        if n["type"] in UI_ONLY or n.get("mode", 0) != 0:
            continue
        defn = DEFS[n["type"]]
        inputs = {}
        values = dict(zip(widget_slots(defn), n.get("widgets_values", [])))
        values.pop(None, None)
        inputs.update(values)
        for entry in n.get("inputs", []):
            if entry.get("link") is not None:
                _, src, slot, *_ = links[entry["link"]]
                inputs[entry["name"]] = [str(src), slot]
        prompt[str(n["id"])] = {"class_type": n["type"], "inputs": inputs}
    return prompt


def check_value(cls: str, name: str, value, kind: str, opts: dict) -> None:
    where = f"{cls}.{name} = {value!r}"
    if kind == "COMBO":
        if (cls, name) in FILE_INPUTS:
            assert isinstance(value, str) and value, where
            if cls != "LoadVideo" and value != "none":
                assert value.endswith(MODEL_EXTENSIONS), f"{where}: not a model file name"
        else:
            assert value in opts["options"], f"{where} not in {opts['options']}"
    elif kind == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), where
        assert opts.get("min", -math.inf) <= value <= opts.get("max", math.inf), where
    elif kind == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), where
        assert opts.get("min", -math.inf) <= value <= opts.get("max", math.inf), where
    elif kind == "BOOLEAN":
        assert isinstance(value, bool), where
    elif kind == "STRING":
        assert isinstance(value, str), where
    else:
        raise AssertionError(f"{where}: {kind} inputs can only be connected, not given a value")


def check_api(prompt: dict) -> None:
    assert prompt, "empty workflow"
    for nid, node in prompt.items():
        cls = node["class_type"]
        assert cls in DEFS, f"node {nid}: unknown node type {cls}"
        defn = DEFS[cls]
        unknown = set(node["inputs"]) - set(defn["inputs"])
        assert not unknown, f"node {nid} ({cls}): unknown inputs {unknown}"
        for name, (section, kind, opts) in defn["inputs"].items():
            if name not in node["inputs"]:
                assert section == "optional", f"node {nid} ({cls}): required input {name} missing"
                continue
            value = node["inputs"][name]
            if isinstance(value, list):  # a link
                src, slot = value
                assert src in prompt, f"node {nid}.{name} reads node {src}, which does not exist"
                outputs = DEFS[prompt[src]["class_type"]]["outputs"]
                assert 0 <= slot < len(outputs), f"node {nid}.{name}: node {src} has no output {slot}"
                out_type = outputs[slot][1]
                assert out_type == kind or kind == "*", f"node {nid}.{name} ({kind}) is fed {out_type} by node {src}"
            else:
                check_value(cls, name, value, kind, opts)
    assert any(DEFS[n["class_type"]]["output_node"] for n in prompt.values()), "no output node"


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def test_template_folder_holds_ui_workflows_with_thumbnails_and_api_twins():
    assert {p.stem for p in UI_FILES} >= {DEMO, "instructav2av_edit_video"}
    for path in UI_FILES:
        ui = load(path)
        assert "nodes" in ui and "links" in ui and ui.get("version") == 0.4, f"{path.name} is not a UI workflow"
        assert (API_DIR / path.name).is_file(), f"{path.name} has no API twin in workflows/api/"
        thumb = path.with_suffix(".jpg")
        if not thumb.is_file() and not _demo_available():
            continue  # thumbnails are rendered by the demo model (workflows/make_thumbnails.py)
        assert thumb.is_file(), f"{path.name} has no thumbnail {thumb.name}"
        from PIL import Image

        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.width >= 256 and im.height >= 128
    for path in API_DIR.glob("*.json"):
        assert (WORKFLOWS / path.name).is_file(), f"API workflow {path.name} has no UI twin"
        assert "nodes" not in load(path)


def test_workflow_files_are_up_to_date_with_the_nodes():
    """workflows/build_workflows.py writes every workflow file; rerun it after changing a node's inputs."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(WORKFLOWS / "build_workflows.py"), "--check"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"run `python workflows/build_workflows.py`: {done.stderr}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_is_consistent(path):
    ui = load(path)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    assert ui["last_node_id"] >= max(nodes) and ui["last_link_id"] >= max(link[0] for link in ui["links"])
    for n in ui["nodes"]:
        assert n["type"] in DEFS or n["type"] in UI_ONLY, f"node {n['id']}: unknown node type {n['type']}"
    seen = set()
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id not in seen
        seen.add(link_id)
        s, d = nodes[src], nodes[dst]
        assert link_id in s["outputs"][src_slot]["links"] and s["outputs"][src_slot]["type"] == kind
        assert d["inputs"][dst_slot]["link"] == link_id and d["inputs"][dst_slot]["type"] == kind
        assert DEFS[s["type"]]["outputs"][src_slot][1] == kind, f"link {link_id}: {s['type']} output {src_slot} is not {kind}"
        _, want, _ = DEFS[d["type"]]["inputs"][d["inputs"][dst_slot]["name"]]
        assert want == kind, f"link {link_id}: {d['type']}.{d['inputs'][dst_slot]['name']} takes {want}, gets {kind}"
        assert s["order"] < d["order"], f"link {link_id}: node {src} must run before node {dst}"
    for n in ui["nodes"]:
        for entry in n.get("inputs", []):
            assert entry.get("link") is None or entry["link"] in seen
        if n["type"] in UI_ONLY:
            continue
        defn = DEFS[n["type"]]
        assert len(n["widgets_values"]) == len(widget_slots(defn)), f"node {n['id']} ({n['type']}): widget count"
        for name, value in zip(widget_slots(defn), n["widgets_values"]):
            if name is None:  # the frontend's extra controls: seed control or upload button
                assert value in ("fixed", "increment", "decrement", "randomize", "image"), value
            else:  # linked widgets too: the frontend shows the value again when the link is removed
                _, kind, opts = defn["inputs"][name]
                check_value(n["type"], name, value, kind, opts)
        sockets = [name for name, (_, kind, opts) in defn["inputs"].items() if not is_widget(kind, opts)]
        listed = [e["name"] for e in n["inputs"] if "widget" not in e]
        assert listed == sockets, f"node {n['id']} ({n['type']}): socket inputs {listed} != {sockets}"
        for name, (section, kind, opts) in defn["inputs"].items():
            if section == "required" and not is_widget(kind, opts):
                entry = next(e for e in n["inputs"] if e["name"] == name)
                assert entry["link"] is not None, f"node {n['id']} ({n['type']}): required input {name} unconnected"
    for model in ui.get("models", []):
        assert model["directory"] in ("diffusion_models", "vae", "mmaudio", "text_encoders", "loras")
        assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith(model["name"])


# What ComfyUI's frontend (1.27, measured in Chromium) adds below a node once media is loaded or made:
# Load Video and Save Video show a player, the sampler its live previews, each at the node's width and
# the media's aspect ratio, growing the node or spilling over what lies below it; a portrait (9:16)
# clip is the tallest case. Preview Image fits its image inside the node's own size.
TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT: the title bar sits above a node's pos
PREVIEW_BELOW = {"LoadVideo": 16 / 9, "SaveVideo": 16 / 9, "InstructAV2AVSampler": 16 / 9}


def node_boxes(ui: dict) -> dict[str, tuple[float, float, float, float]]:
    """title -> (x0, y0, x1, y1) of each node with its title bar and the room its preview can take."""
    boxes = {}
    for n in ui["nodes"]:
        (x, y), (w, h) = n["pos"], n["size"]
        boxes[f"{n['title']} (#{n['id']})"] = (x, y - TITLE_HEIGHT, x + w, y + h + w * PREVIEW_BELOW.get(n["type"], 0))
    return boxes


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_no_node_hides_another_with_previews_open(path):
    """Issue 11, item 13: Load Video's preview hid Load Editor Model's widgets. The live check with
    previews open is workflows/screenshot_templates.py (a real ComfyUI in Chromium)."""
    boxes = node_boxes(load(path))
    hidden = [f"{a} x {b}" for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(boxes.items())
              for b, (bx0, by0, bx1, by1) in list(boxes.items())[i + 1 :]
              if min(ax1, bx1) > max(ax0, bx0) and min(ay1, by1) > max(ay0, by0)]
    assert not hidden, f"{path.name}: overlapping nodes: {hidden}"


def test_demo_note_quotes_the_bundled_instruction():
    """The demo template's note names the instruction the Demo Clip node really outputs (issue 11, item 15)."""
    from instructav2av.nodes.demo import demo_files

    _, instruction = demo_files()
    notes = [n for n in load(WORKFLOWS / f"{DEMO}.json")["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1 and f"*{instruction}*" in notes[0]["widgets_values"][0]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_api_twin_is_valid_and_equals_the_ui_file(path):
    api = load(API_DIR / path.name)
    check_api(api)
    converted = ui_to_api(load(path))
    assert converted == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


def test_workflow_checks_catch_mistakes():
    api = load(API_DIR / f"{DEMO}.json")
    bad = json.loads(json.dumps(api))
    bad["5"]["inputs"]["steps"] = 0
    with pytest.raises(AssertionError, match="steps"):
        check_api(bad)
    bad = json.loads(json.dumps(api))
    bad["6"]["inputs"]["latents"] = ["4", 0]  # IAV2AV_SOURCE into an IAV2AV_LATENTS input
    with pytest.raises(AssertionError, match="fed IAV2AV_SOURCE"):
        check_api(bad)
    bad = json.loads(json.dumps(api))
    bad["5"]["inputs"]["solver"] = "heun"
    with pytest.raises(AssertionError, match="heun"):
        check_api(bad)
    bad = json.loads(json.dumps(api))
    bad["7"]["class_type"] = "CreateVideoFromNothing"
    with pytest.raises(AssertionError, match="unknown node type"):
        check_api(bad)


# --------------------------------------------------------------------------------------------
# the demo workflow, run in Python in graph order
# --------------------------------------------------------------------------------------------


def run_api(prompt: dict) -> dict:
    """Execute our nodes in dependency order; core nodes are sinks that record what they receive
    (MaskToImage, a channel copy, is done here so its output can be checked)."""
    received: dict[str, dict] = {}

    def core(nid: str, cls: str, kwargs: dict) -> tuple:
        received[nid] = kwargs
        return (kwargs["mask"][..., None].expand(-1, -1, -1, 3),) if cls == "MaskToImage" else (None,)

    run_prompt(prompt, NODE_CLASS_MAPPINGS, core)
    return received


def check_demo_outputs(prompt: dict, received: dict) -> None:
    by_class = {}
    for nid, kwargs in received.items():
        by_class.setdefault(prompt[nid]["class_type"], []).append(kwargs)
    (video,) = by_class["CreateVideo"]
    images, audio, fps = video["images"], video["audio"], video["fps"]
    assert images.ndim == 4 and images.shape[-1] == 3 and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    assert audio["waveform"].ndim == 3 and audio["waveform"].shape[:2] == (1, 1)
    frames_s, audio_s = images.shape[0] / fps, audio["waveform"].shape[-1] / audio["sample_rate"]
    # the contract: the audio covers exactly the video (frames/fps·sr rounded): within one sample
    assert abs(frames_s - audio_s) <= 1 / audio["sample_rate"], f"video {frames_s:.4f} s vs audio {audio_s:.4f} s"
    assert 1.0 <= fps <= 120.0  # CreateVideo's range
    previews = sorted((kw["images"] for kw in by_class["PreviewImage"]), key=lambda t: t.shape[0])
    assert previews[0].shape == (1, 128, 512, 3)  # audio gate plot
    assert previews[1].shape == images.shape  # video gate, one mask per output frame


def test_demo_workflow_runs_on_a_tiny_editor(monkeypatch, tmp_path):
    """The demo graph end to end with the tiny test editor standing in for the embedded model."""
    import test_nodes

    from instructav2av.media import write_clip
    from instructav2av.nodes import demo

    images, audio, instruction = test_nodes.source_clip(frames=17)
    clip = write_clip(tmp_path / "clip.mp4", images.mul(255).round().to(torch.uint8), 16, audio["waveform"][0, 0], 16000)
    monkeypatch.setattr(demo, "demo_files", lambda: (clip, instruction))
    monkeypatch.setitem(bundle_module._LOADERS, "demo", test_nodes.tiny_bundle)
    prompt = load(API_DIR / f"{DEMO}.json")
    prompt["5"]["inputs"]["steps"] = 2
    prompt["1"]["inputs"]["precision"] = "fp32"
    received = run_api(prompt)
    check_demo_outputs(prompt, received)
    (video,) = [kw for nid, kw in received.items() if prompt[nid]["class_type"] == "CreateVideo"]
    assert video["images"].shape == (9, 32, 32, 3) and video["fps"] == 16.0


def _demo_available() -> bool:
    try:
        from instructav2av.nodes.demo import demo_files

        demo_files()
        return "demo" in pipeline.bundle_loaders() and bundle_module._named_loader("demo") is not None
    except (FileNotFoundError, RuntimeError, ImportError):
        return False


@pytest.mark.skipif(not _demo_available(), reason="the embedded demo model (assets/demo, training/demo.py) is not built")
def test_demo_workflow_runs_the_embedded_model():
    prompt = load(API_DIR / f"{DEMO}.json")
    received = run_api(prompt)
    check_demo_outputs(prompt, received)
