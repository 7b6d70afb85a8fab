"""The pack inside a real ComfyUI: registration, template listing, and the CPU demo workflow via the API.

Runs only when ``COMFYUI_PATH`` points at a ComfyUI checkout (``COMFYUI_PYTHON``: the interpreter
with ComfyUI's requirements and this pack's, default: this one). The pack is installed from the
archive the Comfy Registry would get: the ``comfy node pack`` archive of this checkout (its
git-tracked files minus ``.comfyignore``; comfy-cli is a test extra) is unpacked into a temporary
``custom_nodes`` folder, added with ``--extra-model-paths-config``, under the folder name the
README's install step clones into, so what ComfyUI shows is what a user who followed the README
sees. ComfyUI is started headless on the CPU on a free port, with its input, output, temp and user
folders in a temporary directory and an in-memory database, so the checkout is not written to.
The server is always stopped.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest
from registry_check import pack

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
PACK = re.search(r"^git clone .+ (\S+)$", README, re.M).group(1)  # the folder the README installs into
COMFYUI = os.environ.get("COMFYUI_PATH")
PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
START_TIMEOUT = 300
RUN_TIMEOUT = 600

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the integration test"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post_raw(url: str, payload: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:  # ComfyUI explains a rejected prompt in the body
        return exc.code, json.loads(exc.read() or b"{}")


def _post(url: str, payload: dict):
    status, body = _post_raw(url, payload)
    if status != 200:
        raise AssertionError(f"POST {url} failed ({status}): {json.dumps(body)[:4000]}")
    return body


def _install_from_archive(root: Path, work: Path) -> tuple[Path, Path]:
    """Unpack the registry archive as ``work/custom_nodes/<PACK>``; returns it and the extra-paths
    file that adds ``work/custom_nodes`` to ComfyUI's custom-node folders."""
    installed = root / "custom_nodes" / PACK
    if installed.exists() or installed.is_symlink():
        pytest.fail(f"{installed} exists: ComfyUI would load it as well as the packed archive under test; "
                    "move it out of custom_nodes for the run")
    nodes = work / "custom_nodes"
    with zipfile.ZipFile(pack(work / "archive")) as archive:
        archive.extractall(nodes / PACK)
    extra = work / "extra_custom_nodes.yaml"
    extra.write_text(f"instructav2av_pack:\n  custom_nodes: {json.dumps(str(nodes))}\n")
    return nodes / PACK, extra


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    root = Path(COMFYUI).expanduser().resolve()
    assert (root / "main.py").is_file(), f"COMFYUI_PATH={root} is not a ComfyUI checkout (no main.py)"
    work = tmp_path_factory.mktemp("comfyui")
    pack_dir, extra_paths = _install_from_archive(root, work)
    dirs = {name: work / name for name in ("input", "output", "temp", "user")}
    for d in dirs.values():
        d.mkdir()
    # the model files live outside the checkout, reached through an extra_model_paths.yaml (as users do);
    # mmaudio is registered there first, so the pack's start-up creates its folder here, not in the checkout
    models = work / "models"
    extra = work / "extra_model_paths.yaml"
    extra.write_text("instructav2av_test:\n    base_path: " + str(models) + "\n"
                     + "".join(f"    {f}: {f}\n" for f in ("diffusion_models", "vae", "mmaudio", "text_encoders", "loras")))
    port = _free_port()
    log = (work / "server.log").open("w")
    # (--lowvram cannot be tested here: ComfyUI refuses it together with --cpu, and without a GPU it needs --cpu)
    cmd = [PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
           "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK, "--database-url", "sqlite:///:memory:",
           "--extra-model-paths-config", str(extra_paths),
           "--input-directory", str(dirs["input"]), "--output-directory", str(dirs["output"]),
           "--temp-directory", str(dirs["temp"]), "--user-directory", str(dirs["user"]),
           "--extra-model-paths-config", str(extra)]
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"ComfyUI exited with {proc.returncode}:\n{(work / 'server.log').read_text()[-4000:]}")
            try:
                _get(f"{url}/system_stats", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI did not start in {START_TIMEOUT} s") from None
                time.sleep(1)
        # ComfyUI's import-time report names the folder each pack was loaded from
        assert f"seconds: {pack_dir}\n" in (work / "server.log").read_text(), "the pack was not loaded from the archive"
        yield {"url": url, "input": dirs["input"], "output": dirs["output"], "log": work / "server.log", "root": root,
               "work": work, "models": models, "pack": pack_dir}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


def test_every_node_is_registered(comfyui):
    from instructav2av import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    info = _get(f"{comfyui['url']}/object_info")
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, f"not registered: {missing}\n{comfyui['log'].read_text()[-4000:]}"
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        entry = info[node_id]
        assert entry["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert tuple(entry["output"]) == cls.RETURN_TYPES and entry["category"] == cls.CATEGORY
        assert entry["description"] == cls.DESCRIPTION
        assert set(entry["input"]["required"]) == set(cls.INPUT_TYPES()["required"])
    # the mmaudio folder was registered with ComfyUI
    assert "mmaudio" in json.dumps(_get(f"{comfyui['url']}/models"))


def test_template_browser_lists_the_ui_workflows_only(comfyui):
    listing = _get(f"{comfyui['url']}/api/workflow_templates")
    ui_files = sorted(p.stem for p in (comfyui["pack"] / "workflows").glob("*.json"))
    assert sorted(listing.get(PACK, [])) == ui_files  # the API twins in workflows/api/ are not listed
    with urllib.request.urlopen(f"{comfyui['url']}/api/workflow_templates/{PACK}/{ui_files[0]}.json") as r:
        assert "nodes" in json.loads(r.read())


def _post_rejected(url: str, payload: dict) -> tuple[int, dict]:
    """POST a prompt that must be refused; (HTTP status, ComfyUI's JSON answer)."""
    req = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            raise AssertionError(f"POST {url} was accepted: {r.read().decode(errors='replace')}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _training_data_prompt(data_path: str) -> dict:
    """Demo model -> Training Data -> Preview Any (ComfyUI's core text preview, an output node)."""
    return {
        "1": {"class_type": "InstructAV2AVDemoLoader", "inputs": {"precision": "fp32"}},
        "2": {"class_type": "InstructAV2AVTrainingData",
              "inputs": {"model": ["1", 0], "data_path": data_path, "num_frames": "model", "window_stride": 0}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }


def test_a_path_outside_the_allowed_folders_fails_validation_and_the_server_goes_on(comfyui):
    from instructav2av.data.synthetic import make_sample
    from instructav2av.media import write_clip

    url = comfyui["url"]
    secret = comfyui["work"] / "secret"
    secret.mkdir()
    (secret / "passwords.txt").write_text("do not show")
    (comfyui["input"] / "escape").symlink_to(secret, target_is_directory=True)
    for refused in ("/etc", "escape", "../../", "~"):
        status, answer = _post_rejected(f"{url}/prompt", {"prompt": _training_data_prompt(refused),
                                                          "client_id": uuid.uuid4().hex})
        assert status == 400, answer
        errors = answer["node_errors"]["2"]["errors"]
        assert errors[0]["type"] == "custom_validation_failed", errors
        detail = errors[0]["details"]
        assert detail.startswith("data_path - data_path ") and "is refused" in detail, detail
        assert "INSTRUCTAV2AV_ALLOWED_DIRS" in detail  # how to allow a folder
        body = json.dumps(answer)
        assert "passwords" not in body and "passwd" not in body and str(secret) not in body
    # the server goes on: a valid path (a dataset in ComfyUI's input folder) validates and runs
    sample = make_sample(0, seed=3)
    pair = comfyui["input"] / "pairs" / "pair0"
    pair.mkdir(parents=True)
    write_clip(pair / "source.mp4", sample.source_video, 16, sample.source_audio, 16000)
    write_clip(pair / "target.mp4", sample.target_video, 16, sample.target_audio, 16000)
    (pair / "instruction.txt").write_text(sample.instruction)
    prompt_id = _post(f"{url}/prompt", {"prompt": _training_data_prompt("pairs"),
                                        "client_id": uuid.uuid4().hex})["prompt_id"]
    entry = _wait_for(url, prompt_id, RUN_TIMEOUT)
    assert entry["status"]["status_str"] == "success", entry["status"].get("messages")
    assert entry["outputs"]["3"]["text"] == ["dataset OK: 1 pairs"]


def test_readme_names_the_template_category_comfyui_shows(comfyui):
    """The template browser titles a pack's templates with its folder name (issue 11, item 15)."""
    listing = _get(f"{comfyui['url']}/api/workflow_templates")
    said = re.search(r"template browser under \*([^*]+)\*", README).group(1)
    assert said == PACK and PACK in listing, f"README says the templates are under *{said}*; ComfyUI lists {sorted(listing)}"


def test_validation_reports_a_missing_vae_file_and_a_bad_overlap_once_per_input(comfyui):
    """Issue 11, item 14: ComfyUI's own file check runs on the VAE loader, and its tiling rule is reported
    on the two inputs it concerns, not on all five."""
    prompt = json.loads((ROOT / "workflows" / "api" / "instructav2av_edit_video.json").read_text())
    vae = next(k for k, n in prompt.items() if n["class_type"] == "InstructAV2AVVideoVAELoader")
    prompt[vae]["inputs"]["vae_name"] = "no_such_vae.safetensors"
    status, body = _post_raw(f"{comfyui['url']}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert status == 400, body
    errors = body["node_errors"][vae]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("value_not_in_list", "vae_name")], errors
    prompt[vae]["inputs"]["tile_overlap"] = prompt[vae]["inputs"]["tile_size"]
    status, body = _post_raw(f"{comfyui['url']}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    custom = [e for e in body["node_errors"][vae]["errors"] if e["type"] == "custom_validation_failed"]
    assert sorted(e["extra_info"]["input_name"] for e in custom) == ["tile_overlap", "tile_size"], custom
    assert all("tile_size" in e["details"] and "overlap" in e["details"] for e in custom)


def _progress_texts(ws) -> list[tuple[str, str]]:
    """(node id, text) of the progress-text messages waiting on a ComfyUI websocket (binary event 3)."""
    texts = []
    ws.settimeout(0.5)
    while True:
        try:
            message = ws.recv()
        except Exception:  # websocket.WebSocketTimeoutException: nothing more waiting
            return texts
        if isinstance(message, bytes) and struct.unpack(">I", message[:4])[0] == 3:
            length = struct.unpack(">I", message[4:8])[0]
            texts.append((message[8 : 8 + length].decode(), message[8 + length :].decode()))


def test_warnings_are_shown_on_their_nodes(comfyui):
    """Issue 11, item 12: a source without sound and words the demo model does not know are shown on the
    nodes that met them (progress text over the websocket) and kept in /history (ui text)."""
    websocket = pytest.importorskip("websocket")
    prompt = json.loads((ROOT / "workflows" / "api" / "instructav2av_demo_cpu.json").read_text())
    source = next(k for k, n in prompt.items() if n["class_type"] == "InstructAV2AVSourceEncode")
    words = next(k for k, n in prompt.items() if n["class_type"] == "InstructAV2AVInstructionEncode")
    del prompt[source]["inputs"]["audio"]
    prompt[words]["inputs"]["instruction"] = "remove the purple zebra"
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://{comfyui['url'].split('://', 1)[1]}/ws?clientId={client_id}", timeout=30)
    try:
        prompt_id = _post(f"{comfyui['url']}/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
        entry = _wait_for(comfyui["url"], prompt_id, RUN_TIMEOUT)
        shown = _progress_texts(ws)
    finally:
        ws.close()
    assert entry["status"]["status_str"] == "success", entry["status"].get("messages")
    assert "silent track" in " ".join(entry["outputs"][source]["text"])
    assert "'purple', 'zebra'" in " ".join(entry["outputs"][words]["text"])
    assert any(n == source and "silent track" in t for n, t in shown), shown
    assert any(n == words and "zebra" in t for n, t in shown), shown


def _wait_for(url: str, prompt_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        history = _get(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        assert time.monotonic() < deadline, f"prompt {prompt_id} did not finish in {timeout} s"
        time.sleep(0.2)


def test_demo_workflow_runs_and_saves_an_mp4_with_both_streams(comfyui):
    import av

    prompt = json.loads((comfyui["pack"] / "workflows" / "api" / "instructav2av_demo_cpu.json").read_text())
    client_id = uuid.uuid4().hex
    prompt_id = _post(f"{comfyui['url']}/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
    entry = _wait_for(comfyui["url"], prompt_id, RUN_TIMEOUT)
    if entry["status"]["status_str"] != "success":
        raise AssertionError(f"the demo workflow failed:\n{json.dumps(entry['status'].get('messages'), indent=1)[-4000:]}")
    saved = [item for out in entry["outputs"].values() for item in out.get("images", [])
             if item.get("filename", "").endswith(".mp4")]
    assert len(saved) == 1, entry["outputs"]
    path = comfyui["output"] / saved[0]["subfolder"] / saved[0]["filename"]
    with av.open(str(path)) as container:
        kinds = sorted(s.type for s in container.streams)
        assert kinds == ["audio", "video"], f"{path.name} has streams {kinds}"
        fps = float(container.streams.video[0].average_rate)
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
        rate = container.streams.audio[0].rate
    assert frames >= 5 and abs(frames / fps - samples / rate) < 0.1, (frames, fps, samples, rate)
    # the editor went through ComfyUI's ModelPatcher and load_models_gpu, and ComfyUI's own list of
    # loaded models holds it (issue 12, Build 1)
    log = comfyui["log"].read_text()
    assert "Requested to load AVEditorDiT" in log, log[-3000:]  # ComfyUI names the patched model
    assert re.search(r"editor loaded by ComfyUI \(ModelPatcher\) on cpu; ComfyUI's loaded models: .*AVEditorDiT", log), \
        log[-3000:]


def test_cancel_stops_the_sampler_within_a_step(comfyui):
    url = comfyui["url"]
    prompt = json.loads((comfyui["pack"] / "workflows" / "api" / "instructav2av_demo_cpu.json").read_text())
    sampler = next(n for n in prompt.values() if n["class_type"] == "InstructAV2AVSampler")
    sampler["inputs"]["steps"] = 1000  # far longer than the test waits
    sampler["inputs"]["seed"] = 12345  # a new input: ComfyUI must not answer from its cache
    before = {p.name for p in comfyui["output"].rglob("*.mp4")}
    prompt_id = _post(f"{url}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while not _get(f"{url}/queue")["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(8)  # well into sampling (the models are loaded and cached from the earlier run)
    req = urllib.request.Request(f"{url}/interrupt", data=b"{}", headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).close()
    t0 = time.monotonic()
    entry = _wait_for(url, prompt_id, 120)
    waited = time.monotonic() - t0
    kinds = [m[0] for m in entry["status"]["messages"]]
    assert "execution_interrupted" in kinds and "execution_error" not in kinds, kinds
    assert waited < 10, f"the sampler took {waited:.1f} s to stop"
    assert {p.name for p in comfyui["output"].rglob("*.mp4")} == before  # nothing saved
    assert not [p for p in comfyui["output"].rglob("*") if p.is_file() and p.suffix != ".mp4"]  # no partial file
    # the next run works: the same graph, queued again with its normal length
    sampler["inputs"]["steps"] = 4
    prompt_id = _post(f"{url}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
    entry = _wait_for(url, prompt_id, RUN_TIMEOUT)
    assert entry["status"]["status_str"] == "success", entry["status"].get("messages")
    assert len({p.name for p in comfyui["output"].rglob("*.mp4")} - before) == 1


# registry slot -> (loader node, its input listing files of that kind)
LOADER_INPUTS = {
    "model": ("InstructAV2AVModelLoader", "model_name"),
    "video_vae": ("InstructAV2AVVideoVAELoader", "vae_name"),
    "audio_vae": ("InstructAV2AVAudioVAELoader", "vae_name"),
    "vocoder": ("InstructAV2AVAudioVAELoader", "vocoder_name"),
    "text_encoder": ("InstructAV2AVTextEncoderLoader", "text_encoder_name"),
}


def test_object_info_offers_every_registry_file_in_its_loader(comfyui):
    from instructav2av.weights import registry

    info = _get(f"{comfyui['url']}/object_info")
    assert (comfyui["models"] / "mmaudio").is_dir()  # created at start-up
    for entry in registry.FILES.values():
        if entry.slot == "tokenizer":
            continue
        node, key = LOADER_INPUTS[entry.slot]
        options = info[node]["input"]["required"][key][0]
        assert entry.name in options, f"{entry.name} is not offered by {node}.{key}"
    for node, _ in LOADER_INPUTS.values():
        assert info[node]["input"]["optional"]["download_missing"][1]["default"] is False


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "workflows").glob("*.json")))
def test_each_template_validates_with_the_files_it_lists(comfyui, name):
    """Stand-ins (right names and keys, tiny) for every file a template lists, then POST /prompt: not rejected."""
    import shutil

    sys.path.insert(0, str(Path(__file__).parent))
    from model_standins import write_standin

    from instructav2av.weights import registry

    ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    for m in ui.get("models", []):
        write_standin(comfyui["models"] / m["directory"] / m["name"], registry.get(m["name"]).slot)
    info = _get(f"{comfyui['url']}/object_info")  # a fresh listing sees the new files
    for m in ui.get("models", []):
        entry = registry.get(m["name"])
        if entry.slot in LOADER_INPUTS:
            node, key = LOADER_INPUTS[entry.slot]
            assert m["name"] in info[node]["input"]["required"][key][0]
    prompt = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    for node in prompt.values():
        if node["class_type"] == "LoadVideo":
            shutil.copy(ROOT / "assets" / "demo" / "clip.mp4", comfyui["input"] / node["inputs"]["file"])
    answer = _post(f"{comfyui['url']}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
    assert answer.get("prompt_id") and not answer.get("node_errors"), answer
    entry = _wait_for(comfyui["url"], answer["prompt_id"], RUN_TIMEOUT)  # leave the server idle for the next test
    if ui.get("models"):
        # the stand-ins are not real weights: the run stops at a loader with a message naming the file
        errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
        assert errors and "Traceback" not in errors[0]["exception_message"], errors


def test_doctor_in_comfyuis_environment_on_a_fresh_machine(tmp_path):
    """`instructav2av doctor` with ComfyUI's interpreter, pointed at the checkout, nothing downloaded: a useful
    report (ComfyUI's version, devices, every file missing with its download command) and exit status 0."""
    root = Path(COMFYUI).expanduser().resolve()
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "instructav2av").symlink_to(ROOT, target_is_directory=True)  # importable by its name
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkg"), "HF_HUB_CACHE": str(tmp_path / "hf"),
           "INSTRUCTAV2AV_MODELS_DIR": str(tmp_path / "models")}
    code = "import sys; from instructav2av.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([PYTHON, "-c", code, "doctor", "--comfyui", str(root)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    version = (root / "comfyui_version.py").read_text()
    assert f"ComfyUI {version.split('=')[-1].strip().strip(chr(34))} ({root})" in out.stdout
    for part in ("== devices", "attention: sdpa", "missing  model.safetensors",
                 "instructav2av download --preset ovi-720-5s", "0 corrupt"):
        assert part in out.stdout, part
    assert "Traceback" not in out.stderr


def test_make_edit_pairs_runs_on_loaded_media(comfyui):
    """Make Edit Pairs in the real ComfyUI: a loaded image as the clip, cut-outs and sounds from the input
    folder; the dataset lands under output/instructav2av_pairs/ and its manifest is readable."""
    import numpy as np
    from pair_media import bark, write_cutout, write_wav
    from PIL import Image

    name = f"pairs_{uuid.uuid4().hex[:8]}"
    Image.fromarray((np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)).save(
        comfyui["input"] / f"{name}.png")
    for folder in ("cuts", "sfx"):
        (comfyui["input"] / f"{name}_{folder}").mkdir()
    write_cutout(comfyui["input"] / f"{name}_cuts" / "kite.png")
    write_wav(comfyui["input"] / f"{name}_sfx" / "door_slam.wav", bark(0.2, f0=120))
    write_wav(comfyui["input"] / f"{name}_sfx" / "whistle.wav", bark(0.2, f0=900))
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": f"{name}.png"}},
        "2": {"class_type": "InstructAV2AVMakeEditPairs",
              "inputs": {"images": ["1", 0], "fps": 12.0, "dataset_name": name, "count": 4, "seed": 0,
                         "num_frames": 5, "width": 64, "height": 64, "validation_fraction": 0.25,
                         "cutouts_folder": f"{name}_cuts", "sounds_folder": f"{name}_sfx"}},
    }
    prompt_id = _post(f"{comfyui['url']}/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})["prompt_id"]
    entry = _wait_for(comfyui["url"], prompt_id, RUN_TIMEOUT)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"].get("messages"))[-4000:]
    out = comfyui["output"] / "instructav2av_pairs" / name
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4 and (out / "train.jsonl").is_file() and (out / "contact_sheet.png").is_file()
