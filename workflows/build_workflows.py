"""Writes the example workflows from one definition each: the UI file (ComfyUI's template browser
lists ``workflows/*.json``) and its API-format twin for scripting (``workflows/api/*.json``, a
subfolder the template browser does not read).

    python workflows/build_workflows.py            # rewrite both formats of every workflow
    python workflows/build_workflows.py --check    # exit 1 if a file differs from what it would write

Thumbnails (``workflows/<name>.jpg``) are made separately by ``workflows/make_thumbnails.py``; the
README's screenshot, and the check that no node hides another with previews open in a real ComfyUI,
by ``workflows/screenshot_templates.py``.
Node input order, widget order and defaults come from the node classes themselves (ours) and from
:data:`CORE_NODES` (ComfyUI's, as of v0.3.64), so the UI files' positional ``widgets_values`` always
match the nodes they load into. Never reorder node inputs without rebuilding these files.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

from instructav2av.weights.registry import preset_files

HERE = Path(__file__).resolve().parent
PACK_ID = "instructav2av"  # registry id ([project] name)
PACK_VERSION = "0.1.0"
COMFY_VERSION = "0.3.64"
FRONTEND_VERSION = "1.27.10"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")

# ComfyUI core nodes the workflows use: (inputs in order as (name, type, optional, upload)), outputs).
CORE_NODES: dict[str, dict] = {
    "LoadVideo": {"inputs": [("file", "COMBO", False, True)], "outputs": [("VIDEO", "VIDEO")]},
    "GetVideoComponents": {
        "inputs": [("video", "VIDEO", False, False)],
        "outputs": [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
    },
    "CreateVideo": {
        "inputs": [("images", "IMAGE", False, False), ("fps", "FLOAT", False, False), ("audio", "AUDIO", True, False)],
        "outputs": [("VIDEO", "VIDEO")],
    },
    "SaveVideo": {
        "inputs": [("video", "VIDEO", False, False), ("filename_prefix", "STRING", False, False),
                   ("format", "COMBO", False, False), ("codec", "COMBO", False, False)],
        "outputs": [],
    },
    "MaskToImage": {"inputs": [("mask", "MASK", False, False)], "outputs": [("IMAGE", "IMAGE")]},
    "PreviewImage": {"inputs": [("images", "IMAGE", False, False)], "outputs": []},
}

# Layout. ComfyUI's frontend draws a video preview (Load Video, Save Video) and the sampler's live
# previews at the node's width and the media's aspect ratio below the widgets, growing the node or
# spilling over whatever lies below it: a portrait (9:16) clip needs width * 16/9. Such nodes go last
# in their column with that room reserved under them, so no preview ever hides another node.
# (Preview Image nodes fit their image inside the size given here.)
PREVIEW_GROWS = ("LoadVideo", "SaveVideo", "InstructAV2AVSampler")
COLUMN_STEP = 380  # x distance of the columns (nodes are 320 or 360 wide)
ROW_GAP = 80  # between stacked nodes: the next title bar (30) and room for a warning shown on a node


def preview_room(cls: str, width: float) -> int:
    """Height reserved under a node of type ``cls`` for a preview that grows it (0 for the others)."""
    return -(-int(width) * 16 // 9) if cls in PREVIEW_GROWS else 0


# Values of core widgets our workflows connect (ComfyUI's defaults), for the UI files' widgets_values.
CORE_WIDGET_DEFAULTS = {("CreateVideo", "fps"): 30.0}

# Every model file a workflow names comes from the registry (weights/registry.py): its URL and folder go
# into ComfyUI's ``models`` metadata, so the frontend's Missing Models dialog offers it for download.
EDIT_FILES = {f.slot: f.name for f in preset_files("ovi-720-5s")}

def _edit_note() -> str:
    from instructav2av.weights import registry

    def link(name: str) -> str:
        e = registry.get(name)
        return f"[{e.name}]({e.url})"

    f = EDIT_FILES
    return f"""## Edit a video with an instruction (InstructAV2AV on Ovi)

1. Load a video with sound (**Load Video**). The model edits **5 s** at 24 fps: longer clips are
   trimmed from *start_seconds*, or split into windows (*length: all windows* in **Encode Source**).
2. Write what to change in **Encode Instruction**, e.g. *replace the dog with a cat and its bark with a meow*.
   Everything it does not name is kept.
3. Queue. **Gate Map** shows where the model chose to edit.

**An editor must be trained first.** Ovi's own weights (below) load as an *untrained* editor: it
regenerates rather than edits until you choose, in **Load Editor Model**, your adapter (`adapter_1`,
from `models/loras`, made by the training nodes or `instructav2av train`) or an editor file from
training as `model_name`. Without one, try the CPU demo workflow (`instructav2av_demo_cpu`).

**Models** (the Missing Models dialog offers each; or run `instructav2av download --preset ovi-720-5s`,
or turn on a loader's *download_missing*):
- `models/diffusion_models`: {link(f["model"])} (Ovi 1.0, 720x720, 5 s)
- `models/vae`: {link(f["video_vae"])}
- `models/mmaudio`: {link(f["audio_vae"])} and {link(f["vocoder"])}
- `models/text_encoders`: {link(f["text_encoder"])}

Memory: the editor has 11.7 B parameters (23 GB in bf16, 12 GB as fp8). `instructav2av doctor` says
what this machine has.
"""


DEMO_NOTE = """## InstructAV2AV demo (runs on a CPU)

The embedded demo model (29 MB, shipped with the pack) edits its synthetic domain: shapes that
move and make their own sounds. **Demo Clip** gives a held-out clip and the instruction the model
is asked to follow on it: *{instruction}*. Queue: the edit takes seconds.

The output goes to `output/video/InstructAV2AV_demo_*.mp4`; **Gate Map** shows where the model edited.
"""


def _our_nodes() -> dict[str, dict]:
    """Inputs/outputs of this pack's nodes, read from the classes."""
    from instructav2av import NODE_CLASS_MAPPINGS

    nodes = {}
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        inputs = []
        for section in ("required", "optional"):
            for name, (kind, *opts) in spec.get(section, {}).items():
                opts = opts[0] if opts else {}
                kind = "COMBO" if isinstance(kind, list) else kind
                inputs.append((name, kind, section == "optional", False, opts))
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        nodes[node_id] = {"inputs": inputs, "outputs": list(zip(names, cls.RETURN_TYPES)), "ours": True}
    return nodes


def node_defs() -> dict[str, dict]:
    defs = {k: {"inputs": [(*i, {}) for i in v["inputs"]], "outputs": v["outputs"], "ours": False}
            for k, v in CORE_NODES.items()}
    defs.update(_our_nodes())
    return defs


def is_widget(kind: str, opts: dict) -> bool:
    return kind in WIDGET_TYPES and not opts.get("forceInput", False)


# --------------------------------------------------------------------------------------------
# The workflows: API-format node dicts plus a layout column per node
# --------------------------------------------------------------------------------------------


OVI_SAMPLING = {"steps": 50, "shift": 5.0, "solver": "unipc", "video_instruction_scale": 4.0,
                "video_source_scale": 1.5, "audio_instruction_scale": 3.0, "audio_source_scale": 1.5}


def demo_sampling() -> dict:
    """The demo bundle's own sampling settings (its recipe.json, chosen on held-out cases)."""
    from instructav2av.demo import recipe as demo

    sampling = demo.DEFAULT_SAMPLING
    recipe = demo.ASSETS / demo.RECIPE_FILE
    if recipe.is_file():
        sampling = demo.DemoSampling(**json.loads(recipe.read_text()).get("sampling", {}))
    return {k: getattr(sampling, k) for k in OVI_SAMPLING}


def _common_tail(first: int, model: str, vvae: str, avae: str, seed: int, sampling: dict, prefix: str) -> dict:
    """Sampler -> decode -> video out, plus the gate map previews; ``first`` is the sampler's id."""
    s, d, cv, sv, g, mi, pv, pa = (str(first + i) for i in range(8))
    return {
        s: ("InstructAV2AVSampler", "Sampler", 3, {
            "model": [model, 0], "instruction": [str(first - 2), 0], "source": [str(first - 1), 0], "seed": seed,
            **sampling, "slg_layers": "auto", "denoise": 1.0, "batch_guidance": True, "preview": True,
            "audio_ranges": "", "feather": 1}),
        d: ("InstructAV2AVDecode", "Decode", 4, {"latents": [s, 0], "video_vae": [vvae, 0 if vvae != model else 1],
                                                 "audio_vae": [avae, 0 if avae != model else 2]}),
        cv: ("CreateVideo", "Create Video", 5, {"images": [d, 0], "fps": [d, 2], "audio": [d, 1]}),
        sv: ("SaveVideo", "Save Video", 6, {"video": [cv, 0], "filename_prefix": prefix, "format": "auto",
                                            "codec": "auto"}),
        g: ("InstructAV2AVGateMap", "Gate Map", 4, {"latents": [s, 0], "sigma": 0.5, "scale": "stretch",
                                                    "plot_width": 512, "plot_height": 128}),
        mi: ("MaskToImage", "Video gate as image", 5, {"mask": [g, 0]}),
        pv: ("PreviewImage", "Video gate (bright = edited)", 7, {"images": [mi, 0]}),
        pa: ("PreviewImage", "Audio gate over time", 7, {"images": [g, 1]}),
    }


def demo_instruction() -> str:
    """The bundled clip's instruction, as the Demo Clip node outputs it (whitespace collapsed)."""
    from instructav2av.demo import recipe as demo

    return " ".join((demo.ASSETS / demo.INSTRUCTION_FILE).read_text(encoding="utf-8").split())


def demo_workflow() -> dict:
    nodes = {
        "1": ("InstructAV2AVDemoLoader", "Load Demo Model", 0, {"precision": "bf16"}),
        "2": ("InstructAV2AVDemoClip", "Demo Clip", 0, {}),
        "3": ("InstructAV2AVInstructionEncode", "Encode Instruction", 1, {
            "text_encoder": ["1", 3], "instruction": ["2", 3], "video_negative": "", "audio_negative": "",
            "keep_loaded": False}),
        "4": ("InstructAV2AVSourceEncode", "Encode Source", 2, {
            "model": ["1", 0], "video_vae": ["1", 1], "audio_vae": ["1", 2], "images": ["2", 0], "fps": ["2", 2],
            "fit": "crop", "length": "one window", "start_seconds": 0.0, "audio": ["2", 1], "window_join": "context",
            "overlap": 0}),
    }
    nodes.update(_common_tail(5, "1", "1", "1", seed=0, sampling=demo_sampling(), prefix="video/InstructAV2AV_demo"))
    return {"nodes": nodes, "note": ("Read me", DEMO_NOTE.format(instruction=demo_instruction()))}


def _ovi_inputs(loader_title: str, mode: str) -> dict:
    """Nodes 1-6 of the Ovi-sized templates: the video with sound, its components and the four loaders
    (the editor model loaded in `mode`)."""
    return {
        "1": ("LoadVideo", "Load Video (with sound)", 1, {"file": "input_video.mp4"}),
        "2": ("GetVideoComponents", "Get Video Components", 2, {"video": ["1", 0]}),
        "3": ("InstructAV2AVModelLoader", loader_title, 0, {
            "model_name": EDIT_FILES["model"], "precision": "bf16", "attention": "auto", "preset": "auto",
            "adapter_1": "none", "adapter_1_strength": 1.0, "adapter_2": "none",
            "adapter_2_strength": 1.0, "download_missing": False, "mode": mode}),
        "4": ("InstructAV2AVVideoVAELoader", "Load Video VAE", 0, {
            "vae_name": EDIT_FILES["video_vae"], "precision": "bf16", "tile_size": 256, "tile_overlap": 64,
            "frames_per_chunk": 1, "download_missing": False}),
        "5": ("InstructAV2AVAudioVAELoader", "Load Audio VAE", 0, {
            "vae_name": EDIT_FILES["audio_vae"], "vocoder_name": EDIT_FILES["vocoder"], "precision": "fp32",
            "download_missing": False}),
        "6": ("InstructAV2AVTextEncoderLoader", "Load Text Encoder", 0, {
            "text_encoder_name": EDIT_FILES["text_encoder"], "precision": "bf16", "device": "auto",
            "cache_embeddings": True, "tokenizer_path": "", "download_missing": False}),
    }


def edit_workflow() -> dict:
    nodes = {
        **_ovi_inputs("Load Editor Model", "editor"),
        "7": ("InstructAV2AVInstructionEncode", "Encode Instruction", 1, {
            "text_encoder": ["6", 0],
            "instruction": "replace the speaking man with a young woman in a gray blazer, and his voice with hers",
            "video_negative": "", "audio_negative": "", "keep_loaded": False}),
        "8": ("InstructAV2AVSourceEncode", "Encode Source", 2, {
            "model": ["3", 0], "video_vae": ["4", 0], "audio_vae": ["5", 0], "images": ["2", 0], "fps": ["2", 2],
            "fit": "crop", "length": "one window", "start_seconds": 0.0, "audio": ["2", 1], "window_join": "context",
            "overlap": 0}),
    }
    nodes.update(_common_tail(9, "3", "4", "5", seed=42, sampling=OVI_SAMPLING, prefix="video/InstructAV2AV"))
    return {"nodes": nodes, "note": ("Models and how to use", _edit_note())}


def _flowedit_note() -> str:
    from instructav2av.weights import registry

    def link(name: str) -> str:
        e = registry.get(name)
        return f"[{e.name}]({e.url})"

    f = EDIT_FILES
    return f"""## Edit with Ovi, no training (FlowEdit)

Real edits with Ovi's own weights, before any editor is trained.

1. Load a video with sound (**Load Video**). Ovi edits **5 s** at 24 fps (longer: *length* in **Encode Source**).
2. In **Encode FlowEdit Descriptions**, describe the clip as it is (*source_prompt*) and as you want it
   (*target_prompt*), in Ovi's format: the picture, speech in `<S>...<E>`, the sound in
   `<AUDCAP>...<ENDAUDCAP>` (this 720x720 model; the 960 models read `Audio: ...`). Keep them alike except
   for the change: what they share is kept.
3. **FlowEdit Sampler**: *edit* picks video, audio or both (the other stays the source, exactly); raise
   *n_max* or the target scales for a stronger edit. Optional *mask* (any segmentation node) and
   *audio_ranges* fence the edit. Queue.

**Models** (the Missing Models dialog offers each; or `instructav2av download --preset ovi-720-5s`):
- `models/diffusion_models`: {link(f["model"])} (loaded with *mode: base*: Ovi as it is)
- `models/vae`: {link(f["video_vae"])}
- `models/mmaudio`: {link(f["audio_vae"])} and {link(f["vocoder"])}
- `models/text_encoders`: {link(f["text_encoder"])}

Details: docs/flowedit.md. Defaults are not tuned on Ovi (no GPU where this was built).
"""


def flowedit_workflow() -> dict:
    nodes = {
        **_ovi_inputs("Load Ovi (base mode)", "base"),
        "7": ("InstructAV2AVFlowEditEncode", "Encode FlowEdit Descriptions", 1, {
            "text_encoder": ["6", 0],
            "source_prompt": "A man in a blue shirt talks in a sunny kitchen. <S>Dinner is ready.<E> "
                             "<AUDCAP>A calm male voice, dishes clinking<ENDAUDCAP>",
            "target_prompt": "A young woman in a gray blazer talks in a sunny kitchen. <S>Dinner is ready.<E> "
                             "<AUDCAP>A calm female voice, dishes clinking<ENDAUDCAP>",
            "video_negative": "jitter, bad hands, blur, distortion",
            "audio_negative": "robotic, muffled, echo, distorted"}),
        "8": ("InstructAV2AVSourceEncode", "Encode Source", 2, {
            "model": ["3", 0], "video_vae": ["4", 0], "audio_vae": ["5", 0], "images": ["2", 0], "fps": ["2", 2],
            "fit": "crop", "length": "one window", "start_seconds": 0.0, "audio": ["2", 1], "window_join": "context",
            "overlap": 0}),
        "9": ("InstructAV2AVFlowEditSampler", "FlowEdit Sampler", 3, {
            "model": ["3", 0], "descriptions": ["7", 0], "source": ["8", 0], "edit": "both", "seed": 42,
            "steps": 50, "shift": 5.0, "video_n_max": 33, "video_n_min": 0, "audio_n_max": 33, "audio_n_min": 0,
            "video_source_scale": 4.0, "video_target_scale": 4.0, "audio_source_scale": 3.0,
            "audio_target_scale": 3.0, "slg_layers": "auto", "n_avg": 1, "batch_guidance": True, "preview": True,
            "audio_ranges": "", "feather": 1}),
        "10": ("InstructAV2AVDecode", "Decode", 4, {"latents": ["9", 0], "video_vae": ["4", 0],
                                                    "audio_vae": ["5", 0]}),
        "11": ("CreateVideo", "Create Video", 5, {"images": ["10", 0], "fps": ["10", 2], "audio": ["10", 1]}),
        "12": ("SaveVideo", "Save Video", 6, {"video": ["11", 0], "filename_prefix": "video/InstructAV2AV_flowedit",
                                              "format": "auto", "codec": "auto"}),
    }
    return {"nodes": nodes, "note": ("Models and how to use", _flowedit_note())}


WORKFLOWS = {
    "instructav2av_demo_cpu": demo_workflow,
    "instructav2av_edit_video": edit_workflow,
    "instructav2av_flowedit_ovi": flowedit_workflow,
}


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def to_api(workflow: dict) -> dict:
    return {nid: {"inputs": inputs, "class_type": cls, "_meta": {"title": title}}
            for nid, (cls, title, _, inputs) in workflow["nodes"].items()}


def _model_entries(values: dict) -> list[dict]:
    from instructav2av.weights import registry

    return [registry.workflow_entry(v) for v in values.values() if isinstance(v, str) and v in registry.FILES]


def to_ui(name: str, workflow: dict, defs: dict) -> dict:
    """ComfyUI's UI format (schema version 0.4), laid out in columns."""
    nodes, links = [], []
    ids = list(workflow["nodes"])
    # The frontend lists a node's sockets in definition order, then the widgets that were turned into
    # sockets (here: the linked ones); a link's target slot is the index in that list.
    slots: dict[str, list[str]] = {}
    for nid in ids:
        cls, _, _, inputs = workflow["nodes"][nid]
        d = defs[cls]["inputs"]
        sockets = [i[0] for i in d if not is_widget(i[1], i[4])]
        linked_widgets = [i[0] for i in d if is_widget(i[1], i[4]) and isinstance(inputs.get(i[0]), list)]
        slots[nid] = sockets + linked_widgets
    out_links: dict[tuple[str, int], list[int]] = {}
    link_id = 0
    incoming: dict[str, dict[str, int]] = {}
    for nid in ids:
        cls, _, _, inputs = workflow["nodes"][nid]
        for key, value in inputs.items():
            if isinstance(value, list):
                link_id += 1
                src, slot = value
                src_cls = workflow["nodes"][src][0]
                kind = defs[src_cls]["outputs"][slot][1]
                links.append([link_id, int(src), slot, int(nid), slots[nid].index(key), kind])
                out_links.setdefault((src, slot), []).append(link_id)
                incoming.setdefault(nid, {})[key] = link_id
    # execution order: a node after everything it reads
    order: dict[str, int] = {}

    def depth(nid: str) -> int:
        if nid not in order:
            srcs = [v[0] for v in workflow["nodes"][nid][3].values() if isinstance(v, list)]
            order[nid] = 1 + max((depth(s) for s in srcs), default=-1)
        return order[nid]

    ranked = sorted(ids, key=lambda n: (depth(n), int(n)))
    for nid in ids:
        cls, title, column, inputs = workflow["nodes"][nid]
        d = defs[cls]
        widgets, by_name = [], {}
        for iname, kind, optional, upload, opts in d["inputs"]:
            linked = incoming.get(nid, {}).get(iname)
            if is_widget(kind, opts):
                value = inputs.get(iname, opts.get("default"))
                if isinstance(value, list):  # linked: the widget keeps a plain value the link overrides
                    value = opts["default"] if "default" in opts else CORE_WIDGET_DEFAULTS[(cls, iname)]
                widgets.append(value)
                if iname in ("seed", "noise_seed") or opts.get("control_after_generate"):
                    widgets.append("fixed")
                if upload:
                    widgets.append("image")
                if linked is not None:
                    by_name[iname] = {"name": iname, "type": kind, "widget": {"name": iname}, "link": linked}
            else:
                entry = {"name": iname, "type": kind, "link": linked}
                if optional:
                    entry["shape"] = 7
                by_name[iname] = entry
        ui_inputs = [by_name[name] for name in slots[nid]]
        outputs = [{"name": oname, "type": otype, "slot_index": i, "links": out_links.get((nid, i), [])}
                   for i, (oname, otype) in enumerate(d["outputs"])]
        n_widgets = sum(1 for i in d["inputs"] if is_widget(i[1], i[4]))
        size = [320, 60 + 24 * (len(ui_inputs) + len(outputs)) + 26 * n_widgets]
        if cls in ("InstructAV2AVInstructionEncode",):
            size[1] += 160
        if cls in ("PreviewImage", "SaveVideo"):
            size = [360, 400]
        props = {"Node name for S&R": cls}
        props.update({"cnr_id": PACK_ID, "ver": PACK_VERSION} if d["ours"] else {"cnr_id": "comfy-core",
                                                                                  "ver": COMFY_VERSION})
        if models := _model_entries(inputs):
            props["models"] = models
        nodes.append({
            "id": int(nid), "type": cls, "pos": [40 + COLUMN_STEP * column, 40], "size": size, "flags": {},
            "order": ranked.index(nid), "mode": 0, "inputs": ui_inputs, "outputs": outputs, "title": title,
            "properties": props, "widgets_values": widgets,
        })
    # stack each column top-down in definition order, nodes whose preview grows them last
    columns: dict[int, list[dict]] = {}
    for node, nid in zip(nodes, ids):
        columns.setdefault(workflow["nodes"][nid][2], []).append(node)
    for stack in columns.values():
        y = 40
        for node in sorted(stack, key=lambda n: n["type"] in PREVIEW_GROWS):
            node["pos"][1] = y
            y += node["size"][1] + preview_room(node["type"], node["size"][0]) + ROW_GAP
    note_title, note_text = workflow["note"]
    note_id = max(int(i) for i in ids) + 1
    nodes.append({
        "id": note_id, "type": "MarkdownNote", "pos": [-420, 40], "size": [420, 520], "flags": {},
        "order": len(ids), "mode": 0, "inputs": [], "outputs": [], "title": note_title, "properties": {},
        "widgets_values": [note_text],
    })
    all_models = {m["name"]: m for n in nodes for m in n["properties"].get("models", [])}
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{PACK_ID}/{name}")),
        "revision": 0,
        "last_node_id": note_id,
        "last_link_id": link_id,
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.6, "offset": [440, 60]}, "frontendVersion": FRONTEND_VERSION},
        "models": list(all_models.values()),
        "version": 0.4,
    }


def render() -> dict[Path, str]:
    defs = node_defs()
    files = {}
    for name, make in WORKFLOWS.items():
        wf = make()
        files[HERE / f"{name}.json"] = json.dumps(to_ui(name, wf, defs), indent=2, ensure_ascii=False) + "\n"
        files[HERE / "api" / f"{name}.json"] = json.dumps(to_api(wf), indent=2, ensure_ascii=False) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in render().items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        sys.stderr.write(f"{'out of date' if args.check else 'wrote'}: {path.relative_to(HERE.parent)}\n")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
