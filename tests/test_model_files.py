"""Model files without any network: the registry, resolution order, verification, and fetching from a
stand-in hub on 127.0.0.1 (``tests/hub_server.py``) through huggingface_hub."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from instructav2av.weights import download, registry
from instructav2av.weights.download import DownloadError, fetch
from instructav2av.weights.registry import CorruptModelFile, MissingModelFile, ModelFile

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import COMMIT, HubServer  # noqa: E402
from model_standins import standin_bytes, write_standin  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from instructav2av.cli import main; sys.exit(main(sys.argv[1:]))"]
TINY = ModelFile("tiny_vae.safetensors", "video_vae", "test-org/tiny", "split_files/vae/tiny_vae.safetensors",
                 "a tiny stand-in")


@pytest.fixture(autouse=True)
def _no_real_hub(monkeypatch, tmp_path):
    """Every test: an empty HF cache of its own, never the real hub."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("INSTRUCTAV2AV_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def _hf_cache_file(cache: Path, entry: ModelFile, data: bytes) -> Path:
    """Place ``data`` the way huggingface_hub lays out its cache (blob + snapshot link + ref)."""
    repo = cache / f"models--{entry.repo.replace('/', '--')}"
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / entry.revision).write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT / entry.path
    snap.parent.mkdir(parents=True, exist_ok=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    return snap


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


def test_registry_entries_are_complete_and_consistent():
    for e in registry.FILES.values():
        assert e.slot in registry.SLOTS and e.url.startswith("https://huggingface.co/") and e.repo.count("/") == 1
        assert e.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", e.sha256), e.name
        assert (e.size is None and e.sha256 is None) or e.source, f"{e.name}: a size or hash needs its source"
        if e.safetensors_alternative:
            alt = registry.get(e.safetensors_alternative)
            assert alt.slot == e.slot and alt.safetensors
    for preset in registry.OVI_PRESETS:
        files = registry.preset_files(preset)
        assert sorted(f.slot for f in files) == ["audio_vae", "model", "text_encoder", "video_vae", "vocoder"]
        assert all(f.safetensors for f in files), "every preset file must be one ComfyUI's frontend can download"
        assert all(preset in f.presets for f in files)
    assert registry.preset_files("ovi-720-5s", fp8=True)[0].name == "model_fp8_e4m3fn.safetensors"
    with pytest.raises(ValueError, match="no fp8 file of Ovi is published for ovi-960-5s"):
        registry.preset_files("ovi-960-5s", fp8=True)


def test_readme_model_table_is_the_registry():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert registry.markdown_table() in readme, "README's model table is stale: instructav2av models --markdown"


# --------------------------------------------------------------------------------------------
# Resolution: ComfyUI folders, then the HF cache, then the user's folder
# --------------------------------------------------------------------------------------------


def test_resolution_order_and_the_missing_file_message(tmp_path, monkeypatch):
    entry = registry.get("wan2.2_vae.safetensors")
    comfy, user = tmp_path / "comfy" / "vae", tmp_path / "mine"
    in_comfy = write_standin(comfy / entry.name, "video_vae", seed=1)
    in_cache = _hf_cache_file(tmp_path / "hf-cache", entry, standin_bytes("video_vae", seed=2))
    in_user = write_standin(user / "vae" / entry.name, "video_vae", seed=3)

    def find():
        return registry.locate(entry.name, "vae", comfy_dirs=[comfy], user_dirs=[user])

    assert (find().found, find().where) == (in_comfy, "comfyui")
    in_comfy.unlink()
    look = find()
    assert look.where == "hf-cache" and look.found.read_bytes() == in_cache.read_bytes()
    for p in (tmp_path / "hf-cache").rglob("*"):
        if p.is_symlink():
            p.unlink()
    assert (find().found, find().where) == (in_user, "user")
    in_user.unlink()
    with pytest.raises(MissingModelFile) as err:
        find().require()
    msg = str(err.value)
    assert str(comfy) in msg and str(tmp_path / "hf-cache") in msg and str(user) in msg  # every place looked
    assert "instructav2av download wan2.2_vae.safetensors" in msg and entry.url in msg
    # a name the registry does not know: the places, and the known files of that folder instead
    with pytest.raises(MissingModelFile, match="known vae files: wan2.2_vae.safetensors"):
        registry.locate("mine.safetensors", "vae", comfy_dirs=[comfy]).require()


def test_a_file_in_the_hf_cache_is_found_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = registry.get("umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    placed = _hf_cache_file(tmp_path / "hf-cache", entry, standin_bytes("text_encoder"))
    look = registry.locate(entry.name, "text_encoders", comfy_dirs=[tmp_path / "empty"])
    assert look.where == "hf-cache" and look.found == placed
    # and doctor sees it there
    from instructav2av.weights.doctor import check_files

    status = {s.entry.name: s for s in check_files([tmp_path / "models"])}
    assert status[entry.name].state == "ok" and status[entry.name].path == placed


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def test_a_corrupt_file_is_refused_with_a_clear_message(tmp_path):
    data = standin_bytes("video_vae")
    good = ModelFile("v.safetensors", "video_vae", "o/r", "v.safetensors", "x", size=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), source="test")
    p = tmp_path / "v.safetensors"
    p.write_bytes(data)
    assert registry.verify(p, good) == "size+sha256"
    p.write_bytes(data[:-10])
    with pytest.raises(CorruptModelFile, match=r"has .* bytes, the published file .*truncated.*instructav2av download v\.safetensors"):
        registry.verify(p, good)
    p.write_bytes(standin_bytes("video_vae", seed=7))  # same size, other content: another model's weights
    with pytest.raises(CorruptModelFile, match="its sha256 is .*another model's weights"):
        registry.verify(p, good)
    # no hash known: the loaders' key check catches another model's weights under the right name
    entry = registry.get("wan2.2_vae.safetensors")
    write_standin(p, "text_encoder")
    with pytest.raises(CorruptModelFile, match="named wan2.2_vae.safetensors .* holds a T5 / umT5 text encoder"):
        registry.key_check(p, entry)


def test_loaders_check_a_known_files_hash_once(tmp_path, monkeypatch):
    """Right name and keys, wrong content: the loader refuses it by sha256 (where the registry knows one); a
    file that passes is remembered by path, size and mtime, so 7 GB are hashed once, not on every load."""
    from instructav2av.nodes import comfy_env

    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path / "models"))
    name = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    write_standin(tmp_path / "models" / "text_encoders" / name, "text_encoder")
    with pytest.raises(CorruptModelFile, match=f"is not {name} as published: its sha256"):
        comfy_env.model_path("text_encoders", name)
    # a file whose registry entry knows its digest and matches: checked once, then remembered
    data = standin_bytes("text_encoder")
    entry = ModelFile("known.safetensors", "text_encoder", "o/r", "known.safetensors", "x",
                      sha256=hashlib.sha256(data).hexdigest(), source="test")
    monkeypatch.setitem(registry.FILES, entry.name, entry)
    p = tmp_path / "known.safetensors"
    p.write_bytes(data)
    assert registry.check_known(p) == "sha256"
    assert registry.check_known(p) == "verified before"
    p.write_bytes(standin_bytes("text_encoder", seed=5))  # changed on disk: checked again, and refused
    with pytest.raises(CorruptModelFile):
        registry.check_known(p)


def test_doctor_reports_a_corrupt_file_and_exits_1(tmp_path):
    from instructav2av.weights.doctor import report

    write_standin(tmp_path / "vae" / "wan2.2_vae.safetensors", "audio_vae")
    text, status = report([tmp_path])
    assert status == 1 and re.search(r"CORRUPT\s+wan2.2_vae.safetensors .*MMAudio audio VAE", text)


def test_doctor_reads_a_comfyui_checkout_and_its_extra_model_paths(tmp_path):
    from instructav2av.weights.doctor import report

    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "vae").mkdir(parents=True)
    (comfy / "comfyui_version.py").write_text('__version__ = "0.3.64"\n')
    (comfy / "extra_model_paths.yaml").write_text(
        f"mine:\n    base_path: {tmp_path / 'elsewhere'}\n    text_encoders: |\n        te\n        te2\n")
    write_standin(comfy / "models" / "vae" / "wan2.2_vae.safetensors", "video_vae")
    write_standin(tmp_path / "elsewhere" / "te2" / "umt5_xxl_fp16.safetensors", "text_encoder")
    text, status = report([tmp_path / "models"], comfyui=comfy)
    assert status == 0 and f"ComfyUI 0.3.64 ({comfy})" in text
    assert re.search(r"ok\s+wan2.2_vae.safetensors .*keys: the Wan2.2 VAE", text)
    assert re.search(rf"ok\s+umt5_xxl_fp16.safetensors\s+\({tmp_path / 'elsewhere' / 'te2'}", text)


def test_doctor_on_a_fresh_machine_prints_a_useful_report_and_exits_0(tmp_path):
    env = {**os.environ, "INSTRUCTAV2AV_MODELS_DIR": str(tmp_path / "models"), "HF_HUB_CACHE": str(tmp_path / "c"),
           "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([*CLI, "doctor"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    for section in ("== versions", "torch ", "== devices", "cpu:", "attention: sdpa", "== memory advice",
                    "== model files", "missing  model.safetensors", "instructav2av download --preset ovi-720-5s",
                    "0 file(s) ok"):
        assert section in out.stdout, section
    assert "Traceback" not in out.stderr


# --------------------------------------------------------------------------------------------
# Fetching through huggingface_hub from a stand-in hub on 127.0.0.1
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch):
    """The hub client writes what it receives in 10 MB chunks; the stand-in files are smaller."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 32_768)


def test_fetch_with_progress_resume_after_a_cut_connection_and_hash_check(tmp_path, small_chunks):
    data = standin_bytes("video_vae") + os.urandom(300_000)  # a VAE's keys, padded to several chunks
    with HubServer({(TINY.repo, TINY.path): data}) as hub:
        hub.cut_at = 100_000  # the first GET dies after 100 kB
        seen = []
        path = fetch(TINY, tmp_path / "vae", endpoint=hub.endpoint, progress=lambda n, total: seen.append((n, total)))
        gets = [r for r in hub.requests if r[0] == "GET"]
    assert path == tmp_path / "vae" / TINY.name and path.read_bytes() == data
    # resumed where the cut left it (at the last whole chunk the client had written)
    assert len(gets) == 2 and gets[0][2] is None and gets[1][2] == "bytes=98304-", gets
    assert seen and seen[-1] == (len(data), len(data)) and [n for n, _ in seen] == sorted(n for n, _ in seen)
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == [TINY.name]  # no staging left behind
    # a second fetch finds it, checks it, and does not download again
    with HubServer({(TINY.repo, TINY.path): data}) as hub:
        assert fetch(TINY, tmp_path / "vae", endpoint=hub.endpoint) == path
        assert not hub.requests


def test_fetch_refuses_content_whose_hash_differs_and_keeps_nothing(tmp_path):
    data = os.urandom(50_000)
    with HubServer({(TINY.repo, TINY.path): data}) as hub:
        hub.wrong_sha.add((TINY.repo, TINY.path))  # the bytes do not match the sha256 the hub states
        with pytest.raises(DownloadError, match="failed its check and was deleted: .*sha256"):
            fetch(TINY, tmp_path / "vae", endpoint=hub.endpoint)
    assert not list((tmp_path / "vae").rglob("*.safetensors")) and not (tmp_path / "vae" / download.STAGING).exists()
    # the registry's own sha256 wins over the hub's: a changed repository is named as such
    pinned = ModelFile(TINY.name, "video_vae", TINY.repo, TINY.path, "x", sha256="0" * 64, source="test")
    with HubServer({(TINY.repo, TINY.path): data}) as hub, pytest.raises(DownloadError, match="the repository changed"):
        fetch(pinned, tmp_path / "vae", endpoint=hub.endpoint)
    assert not (tmp_path / "vae" / TINY.name).exists()


def test_an_existing_file_with_the_wrong_content_is_left_alone(tmp_path):
    entry = registry.get("wan2.2_vae.safetensors")
    mine = write_standin(tmp_path / "vae" / entry.name, "text_encoder")
    before = mine.read_bytes()
    with pytest.raises(DownloadError, match="exists but is not the published file .* left as it is"):
        fetch(entry, tmp_path / "vae", endpoint="http://127.0.0.1:9")
    assert mine.read_bytes() == before


def test_offline_and_unreachable_hub_fail_at_once(tmp_path, monkeypatch):
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"could not reach http://127\.0\.0\.1:9 .*get it by hand: https://huggingface\.co/"):
        fetch(TINY, tmp_path / "vae")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="offline"):
        fetch(TINY, tmp_path / "vae")
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "vae" / TINY.name).exists()


def test_a_moved_repository_and_a_removed_file_are_named(tmp_path):
    with HubServer({("other-org/other", "x.safetensors"): b"x"}) as hub:
        with pytest.raises(DownloadError, match="repository test-org/tiny was not found .*moved, renamed"):
            fetch(TINY, tmp_path, endpoint=hub.endpoint)
    with HubServer({(TINY.repo, "elsewhere.safetensors"): b"x"}) as hub:
        with pytest.raises(DownloadError, match="no longer holds split_files/vae/tiny_vae.safetensors"):
            fetch(TINY, tmp_path, endpoint=hub.endpoint)


def test_a_full_disk_during_the_fetch_leaves_nothing(tmp_path, monkeypatch, small_chunks):
    import huggingface_hub.file_download as fd

    real = fd.http_get

    def filling_up(url, temp_file, **kw):
        class Full:
            def __init__(self):
                self.written = 0

            def write(self, b):
                if self.written + len(b) > 100_000:
                    raise OSError(errno.ENOSPC, "No space left on device")
                self.written += len(b)
                return temp_file.write(b)

            def __getattr__(self, name):
                return getattr(temp_file, name)

        return real(url, Full(), **kw)

    monkeypatch.setattr(fd, "http_get", filling_up)
    data = os.urandom(200_000)
    with HubServer({(TINY.repo, TINY.path): data}) as hub:
        hub.chunk = 10_000
        with pytest.raises(DownloadError, match="filled up while fetching tiny_vae.safetensors.*nothing was kept"):
            fetch(TINY, tmp_path / "vae", endpoint=hub.endpoint)
    assert list((tmp_path / "vae").iterdir()) == []


def test_a_read_only_models_folder_is_named(tmp_path, monkeypatch):
    def refuse(self, *a, **k):
        raise PermissionError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "touch", refuse)
    with pytest.raises(DownloadError, match=r"cannot write to the models folder .*read-only.*--models-dir"):
        fetch(TINY, tmp_path / "vae", endpoint="http://127.0.0.1:9")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_really_read_only_folder(tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae").chmod(0o555)
    try:
        with pytest.raises(DownloadError, match="cannot write to the models folder"):
            fetch(TINY, tmp_path / "vae", endpoint="http://127.0.0.1:9")
    finally:
        (tmp_path / "vae").chmod(0o755)


def _cli(args, env, **kw):
    return subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_cli_download_through_hf_endpoint_and_a_killed_fetch_leaves_nothing_under_the_final_name(tmp_path):
    entry = registry.get("wan2.2_vae.safetensors")
    data = standin_bytes("video_vae") + os.urandom(400_000)
    models = tmp_path / "models"
    with HubServer({(entry.repo, entry.path): data}) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "c"),
               "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
        hub.delay, hub.chunk = 0.2, 20_000  # ~4 s for the whole file
        proc = _cli(["download", entry.name, "--models-dir", str(models)], env)
        deadline = time.monotonic() + 60
        while not any(r[0] == "GET" for r in hub.requests):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert not (models / "vae" / entry.name).exists()
        assert not [p for p in models.rglob("*") if p.suffix in (".safetensors", ".sft", ".pth", ".pt")]
        # the next run fetches it whole
        hub.delay = 0.0
        out = _cli(["download", entry.name, "--models-dir", str(models)], env).communicate(timeout=120)
    assert (models / "vae" / entry.name).read_bytes() == data, out
    # a moved repository through the CLI: a message, no traceback
    with HubServer({("x/y", "z"): b"z"}) as hub:
        env["HF_ENDPOINT"] = hub.endpoint
        proc = _cli(["download", "model.safetensors", "--models-dir", str(models)], env)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "chetwinlow1/Ovi was not found" in stderr and "Traceback" not in stderr


# --------------------------------------------------------------------------------------------
# Inside ComfyUI (stubbed): folders at start-up, the loaders' download switch; the templates
# --------------------------------------------------------------------------------------------


def test_startup_creates_the_model_folders_and_registers_mmaudio(tmp_path):
    from comfy_stubs import comfy_stubs

    from instructav2av.nodes import comfy_env

    with comfy_stubs(tmp_path) as stubs:
        made = comfy_env.register_model_folders()
        assert "mmaudio" in stubs.folder_paths.folder_names_and_paths
        for folder in comfy_env.MODEL_FOLDERS:
            assert (tmp_path / folder).is_dir()
        assert str(tmp_path / "mmaudio") in made
        assert comfy_env.register_model_folders() == []  # nothing left to create


def test_loader_download_switch_fetches_a_missing_file_into_comfyuis_folder(tmp_path, monkeypatch):
    from comfy_stubs import comfy_stubs

    from instructav2av import NODE_CLASS_MAPPINGS
    from instructav2av.nodes import comfy_env

    entry = registry.get("wan2.2_vae.safetensors")
    data = standin_bytes("video_vae")
    loader = NODE_CLASS_MAPPINGS["InstructAV2AVVideoVAELoader"]()
    with comfy_stubs(tmp_path / "models") as stubs, HubServer({(entry.repo, entry.path): data}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        assert entry.name in loader.INPUT_TYPES()["required"]["vae_name"][0]  # offered before it exists
        assert loader.INPUT_TYPES()["optional"]["download_missing"][1]["default"] is False
        with pytest.raises(MissingModelFile, match="instructav2av download wan2.2_vae.safetensors"):
            comfy_env.model_path("vae", entry.name)  # the switch is off: nothing is fetched
        assert not hub.requests
        path = comfy_env.model_path("vae", entry.name, download=True)
        assert path == tmp_path / "models" / "vae" / entry.name and path.read_bytes() == data
        assert stubs.progress and stubs.progress[-1][:2] == (len(data), len(data))  # shown on the node


def _template_files(wf: dict) -> list[tuple[str, str]]:
    """(input, value) of every model-file input of our loaders in an API-format workflow."""
    out = []
    for node in wf.values():
        if node["class_type"].startswith("InstructAV2AV") and "Loader" in node["class_type"]:
            for key, value in node["inputs"].items():
                if isinstance(value, str) and (key.endswith("_name") or key.startswith("adapter_")):
                    out.append((key, value))
    return out


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "workflows").glob("*.json")))
def test_templates_name_only_downloadable_files_and_list_them_for_the_frontend(name):
    import json

    api = json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text())
    ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())
    listed = {m["name"]: m for m in ui.get("models", [])}
    for key, value in _template_files(api):
        if value == "none":
            continue
        assert value in registry.FILES, f"{name}: {key} defaults to {value!r}, a file no one can download"
        assert value in listed, f"{name}: {value} is not in the workflow's models metadata"
    for m in listed.values():
        entry = registry.get(m["name"])
        assert m == registry.workflow_entry(entry.name)
        # what the frontend's Missing Models dialog accepts for its Download button
        assert m["url"].startswith("https://huggingface.co/") and m["name"].endswith((".safetensors", ".sft"))
        assert m["directory"] in ("diffusion_models", "vae", "mmaudio", "text_encoders", "loras")
    for node in ui["nodes"]:
        for m in node.get("properties", {}).get("models", []):
            assert m["name"] in node["widgets_values"], "the frontend only checks models its widgets name"


def test_download_dry_run_lists_files_targets_and_companions(tmp_path, capsys):
    from instructav2av.cli import main

    assert main(["download", "models_t5_umt5-xxl-enc-bf16.pth", "--dry-run", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"-> {tmp_path / 'text_encoders' / 'models_t5_umt5-xxl-enc-bf16.pth'}" in out
    assert "umt5-xxl-tokenizer/spiece.model: https://huggingface.co/Wan-AI/Wan2.2-TI2V-5B/resolve/main/google/umt5-xxl/spiece.model" in out
    assert main(["download", "--preset", "ovi-960-5s", "--fp8", "--dry-run"]) == 2
    assert "no fp8 file of Ovi is published for ovi-960-5s" in capsys.readouterr().err
    assert main(["download", "nope.safetensors"]) == 2
    assert "'nope.safetensors' is not a file this pack knows" in capsys.readouterr().err
