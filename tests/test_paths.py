"""A shared workflow cannot reach outside ComfyUI's folders (nodes/paths.py and the nodes that use it).

ComfyUI is the stand-in of tests/comfy_stubs.py, started with its input, output and temp folders in
``tmp/ComfyUI``; the real server is exercised in tests/test_comfyui_integration.py.
"""

from __future__ import annotations

import dataclasses
import os
import types

import pytest
from comfy_stubs import comfy_stubs
from media_fixtures import write_pairs

from instructav2av import NODE_CLASS_MAPPINGS
from instructav2av.models.configs import get_preset
from instructav2av.nodes import comfy_env, paths

SECRET_FILES = ("passwords.txt", "id_rsa", "diary")


def node(name: str):
    return NODE_CLASS_MAPPINGS[name]()


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """A ComfyUI with input/output/temp/models, an owner-allowed extra folder and a secret folder beside it."""
    base = tmp_path / "ComfyUI"
    for sub in ("input", "output", "temp", "models/text_encoders", "models/loras", "custom_nodes"):
        (base / sub).mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    for name in SECRET_FILES:
        (secret / name).write_text("do not show")
    shared = tmp_path / "shared_data"
    shared.mkdir()
    monkeypatch.setenv(paths.ALLOWED_DIRS_ENV, str(shared))
    monkeypatch.setattr(paths, "PACK_DIR", tmp_path / "pack")  # no allowed_folders.txt unless a test writes one
    with comfy_stubs(base / "models", base) as stubs:
        yield types.SimpleNamespace(base=base, input=base / "input", output=base / "output", models=base / "models",
                                    secret=secret, shared=shared, stubs=stubs, tmp=tmp_path)


def _validate_data_path(value):
    return NODE_CLASS_MAPPINGS["InstructAV2AVTrainingData"].VALIDATE_INPUTS(data_path=value)


def _tiny_model():
    config = dataclasses.replace(get_preset("tiny"), fps=16, area=32 * 32)
    return types.SimpleNamespace(config=config)


def _write_pairs(root, count: int = 1):
    write_pairs(root, count)


# --------------------------------------------------------------------------------------------
# the five cases of the issue, through the Training Data node
# --------------------------------------------------------------------------------------------


def test_workflow_paths_refused_four_times_and_accepted_once(comfy):
    (comfy.input / "escape").symlink_to(comfy.secret, target_is_directory=True)
    _write_pairs(comfy.shared / "pairs")
    refused = ["/etc", "~", "../../", "escape"]
    for value in refused:
        message = _validate_data_path(value)
        assert isinstance(message, str) and "refused" in message, (value, message)
        with pytest.raises(paths.PathRefused, match="refused"):
            node("InstructAV2AVTrainingData").open(_tiny_model(), value, 0, 0)
    accepted = str(comfy.shared / "pairs")
    assert _validate_data_path(accepted) is True
    dataset, report = node("InstructAV2AVTrainingData").open(_tiny_model(), accepted, 0, 0)
    assert report == "dataset OK: 1 pairs" and len(dataset.pairs) == 1


@pytest.mark.parametrize("value", ["/etc/passwd", "~root", "~/data", "a/../../b", "..\\..\\Windows", "input/..",
                                   "escape/sub", "C:\\Users", "\\\\server\\share"])
def test_more_spellings_are_refused(comfy, value):
    (comfy.input / "escape").symlink_to(comfy.secret, target_is_directory=True)
    assert "refused" in _validate_data_path(value)


def test_a_refused_path_reveals_nothing_about_the_folder(comfy):
    """The answer is the same whether the folder exists, is empty or full, and never lists what is in it."""
    (comfy.input / "to_secret").symlink_to(comfy.secret, target_is_directory=True)
    (comfy.input / "to_nothing").symlink_to(comfy.tmp / "does_not_exist", target_is_directory=True)
    a = _validate_data_path(str(comfy.secret))
    b = _validate_data_path(str(comfy.tmp / "does_not_exist"))
    assert a.replace(str(comfy.secret), "X") == b.replace(str(comfy.tmp / "does_not_exist"), "X")
    c = _validate_data_path("to_secret")
    d = _validate_data_path("to_nothing")
    assert c.replace("to_secret", "X") == d.replace("to_nothing", "X")
    for message in (a, c):
        assert not any(name in message for name in SECRET_FILES)
        assert "does not exist" not in message and "not found" not in message
    assert str(comfy.secret) not in c  # where the link leads is not told
    # and it says how to allow a folder
    assert paths.ALLOWED_DIRS_ENV in a and paths.ALLOWED_DIRS_FILE in a and "docs/nodes.md" in a
    with pytest.raises(paths.PathRefused) as info:
        node("InstructAV2AVTrainingData").open(_tiny_model(), "to_secret", 0, 0)
    assert not any(name in str(info.value) for name in SECRET_FILES)


def test_relative_names_are_looked_for_in_input_then_output(comfy):
    (comfy.output / "built").mkdir()
    (comfy.input / "mine").mkdir()
    assert paths.resolve("mine", "data_path", bases=paths.input_bases()) == comfy.input / "mine"
    assert paths.resolve("built", "data_path", bases=paths.input_bases()) == comfy.output / "built"
    assert paths.resolve(str(comfy.output / "built"), "data_path", bases=paths.input_bases()) == comfy.output / "built"
    assert paths.resolve("nowhere", "data_path", bases=paths.input_bases()) == comfy.input / "nowhere"
    with pytest.raises(FileNotFoundError, match="not found"):  # a missing allowed path: the usual message
        node("InstructAV2AVTrainingData").open(_tiny_model(), "nowhere", 0, 0)
    assert "empty" in _validate_data_path("  ")
    assert _validate_data_path(None) is True  # a linked input: checked when the node runs


def test_allowed_folders_include_model_folders_and_extra_model_paths(comfy):
    extra = comfy.tmp / "big_disk" / "loras"  # what extra_model_paths.yaml adds
    extra.mkdir(parents=True)
    comfy.stubs.folder_paths.add_model_folder_path("loras", str(extra))
    assert _validate_data_path(str(extra)) is True
    assert _validate_data_path(str(comfy.models / "text_encoders")) is True
    assert _validate_data_path(str(comfy.base / "temp")) is True
    # custom_nodes is a "folder" of ComfyUI's too, but holds code: not readable
    assert "refused" in _validate_data_path(str(comfy.base / "custom_nodes"))
    # a link between two allowed folders is fine
    (comfy.input / "to_models").symlink_to(comfy.models, target_is_directory=True)
    assert _validate_data_path("to_models") is True


def test_the_owner_setting_file_and_variable(comfy, monkeypatch):
    other = comfy.tmp / "other"
    other.mkdir()
    assert "refused" in _validate_data_path(str(other))
    pack = comfy.tmp / "pack"
    pack.mkdir()
    (pack / paths.ALLOWED_DIRS_FILE).write_text(f"# folders workflows may read\n\n{other}  # the team's clips\nrelative/x\n")
    assert _validate_data_path(str(other)) is True  # read on every check: no restart
    assert paths.extra_folders() == [comfy.shared, other]  # the relative line is ignored
    monkeypatch.setenv(paths.ALLOWED_DIRS_ENV, os.pathsep.join([str(comfy.secret), ""]))
    assert _validate_data_path(str(comfy.secret / "diary")) is True
    monkeypatch.delenv(paths.ALLOWED_DIRS_ENV)
    (pack / paths.ALLOWED_DIRS_FILE).write_bytes(b"\xff\xfe not text")  # broken: allows nothing, no crash
    assert "refused" in _validate_data_path(str(other))
    (pack / paths.ALLOWED_DIRS_FILE).unlink()
    assert "refused" in _validate_data_path(str(comfy.shared))


def test_a_link_inside_an_allowed_extra_folder_that_leaves_it_is_refused(comfy):
    (comfy.shared / "sneaky").symlink_to(comfy.secret, target_is_directory=True)
    assert "refused" in _validate_data_path(str(comfy.shared / "sneaky"))
    assert "refused" in _validate_data_path(str(comfy.shared / "sneaky" / "diary"))


# --------------------------------------------------------------------------------------------
# the other path inputs
# --------------------------------------------------------------------------------------------


def test_tokenizer_path_is_checked_at_validation_and_at_run_time(comfy):
    cls = NODE_CLASS_MAPPINGS["InstructAV2AVTextEncoderLoader"]
    (comfy.models / "text_encoders" / "umt5-xxl-tokenizer").mkdir()
    (comfy.models / "text_encoders" / "umt5.safetensors").write_bytes(b"x")
    assert cls.VALIDATE_INPUTS(tokenizer_path="") is True
    assert cls.VALIDATE_INPUTS(tokenizer_path="umt5-xxl-tokenizer") is True
    assert "refused" in cls.VALIDATE_INPUTS(tokenizer_path="/etc")
    assert "refused" in cls.VALIDATE_INPUTS(tokenizer_path="../../../etc")
    with pytest.raises(paths.PathRefused, match="tokenizer_path '/etc/ssl' is refused"):
        node("InstructAV2AVTextEncoderLoader").load("umt5.safetensors", "fp32", "cpu", False, "/etc/ssl")
    (handle,) = node("InstructAV2AVTextEncoderLoader").load("umt5.safetensors", "fp32", "cpu", False,
                                                             "umt5-xxl-tokenizer")
    assert handle.name == "umt5.safetensors"


def test_model_names_from_a_workflow_stay_in_their_folder(comfy):
    for name in ("../../../secret/diary", "/etc/passwd", "sub/../../x.safetensors"):
        with pytest.raises(paths.PathRefused):
            comfy_env.model_path("loras", name)


def test_model_names_stay_in_the_fallback_folder_too(tmp_path, monkeypatch):
    (tmp_path / "models" / "loras").mkdir(parents=True)
    (tmp_path / "diary").write_text("do not show")
    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path / "models"))
    with pytest.raises(paths.PathRefused):
        comfy_env.model_path("loras", "../../diary")


def test_every_path_like_string_input_is_checked():
    """A new STRING input that names a file must come with a check: this list has to be extended on purpose."""
    checked = {("InstructAV2AVTrainingData", "data_path"), ("InstructAV2AVTextEncoderLoader", "tokenizer_path"),
               ("InstructAV2AVTrain", "run_name"), ("InstructAV2AVMakeEditPairs", "dataset_name"),
               ("InstructAV2AVMakeEditPairs", "cutouts_folder"), ("InstructAV2AVMakeEditPairs", "sounds_folder"),
               ("InstructAV2AVMakeEditPairs", "clips_folder")}
    not_paths = {("InstructAV2AVSampler", "slg_layers"), ("InstructAV2AVSampler", "audio_ranges"),
                 ("InstructAV2AVInstructionEncode", "instruction"),
                 ("InstructAV2AVInstructionEncode", "video_negative"),
                 ("InstructAV2AVInstructionEncode", "audio_negative"),
                 ("InstructAV2AVFlowEditEncode", "source_prompt"), ("InstructAV2AVFlowEditEncode", "target_prompt"),
                 ("InstructAV2AVFlowEditEncode", "video_negative"), ("InstructAV2AVFlowEditEncode", "audio_negative"),
                 ("InstructAV2AVFlowEditSampler", "slg_layers"), ("InstructAV2AVFlowEditSampler", "audio_ranges"),
                 ("InstructAV2AVMakeEditPairs", "mask_name")}
    found = set()
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, (kind, _) in spec.get(section, {}).items():
                if kind == "STRING":
                    found.add((node_id, name))
    assert found == checked | not_paths, found ^ (checked | not_paths)
    for node_id, name in checked:
        assert name in NODE_CLASS_MAPPINGS[node_id].VALIDATE_INPUTS.__code__.co_varnames


# --------------------------------------------------------------------------------------------
# writes
# --------------------------------------------------------------------------------------------


def test_run_names_are_plain_folders_under_output(comfy):
    validate = NODE_CLASS_MAPPINGS["InstructAV2AVTrain"].VALIDATE_INPUTS
    assert validate(run_name="my_run") is True
    for bad in ("..", ".", "a/b", "../x", "/tmp/x", "~", ".hidden", "C:x", ""):
        assert validate(run_name=bad) is not True, bad
    runs = comfy_env.runs_dir()
    assert paths.writable_folder(runs, "my_run", "run_name") == comfy.output / "instructav2av_runs" / "my_run"
    runs.mkdir()
    (runs / "leak").symlink_to(comfy.secret, target_is_directory=True)
    with pytest.raises(paths.PathRefused, match="write only under"):
        paths.writable_folder(runs, "leak", "run_name")


def test_a_runs_folder_that_links_out_of_output_is_refused(comfy):
    (comfy.output / "instructav2av_runs").symlink_to(comfy.shared, target_is_directory=True)
    # the shared folder may be read, but never written
    with pytest.raises(paths.PathRefused, match="can be read, not written"):
        paths.writable_folder(comfy_env.runs_dir(), "my_run", "run_name")


def test_train_refuses_a_new_run_in_a_used_run_folder(comfy):
    run = comfy.output / "instructav2av_runs" / "old"
    run.mkdir(parents=True)
    (run / "loss.csv").write_text("step,loss\n1,0.5\n")
    train = node("InstructAV2AVTrain")
    with pytest.raises(FileExistsError, match="turn on resume"):
        train.train("base.safetensors", None, None, None, None, "joint", "lora", 4, 1e-3, 1, 1, 1, 0, False, 0,
                    "old", False)
    assert (run / "loss.csv").read_text() == "step,loss\n1,0.5\n"
    with pytest.raises(paths.PathRefused):
        train.train("base.safetensors", None, None, None, None, "joint", "lora", 4, 1e-3, 1, 1, 1, 0, False, 0,
                    "..", False)


def test_a_published_file_never_follows_a_link_planted_under_its_name(comfy):
    from instructav2av.nodes import train

    src = comfy.tmp / "adapter.safetensors"
    src.write_bytes(b"new adapter")
    planted = comfy.models / "loras" / "run.safetensors"
    planted.symlink_to(comfy.secret / "planted.safetensors")  # dangling: exists() is False
    with pytest.raises(FileExistsError):
        train._publish(src, planted)
    assert not (comfy.secret / "planted.safetensors").exists() and planted.is_symlink()


def test_without_comfyui_nodes_use_the_model_and_run_folders_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(comfy_env.MODELS_DIR_ENV, str(tmp_path / "models"))
    monkeypatch.delenv(paths.ALLOWED_DIRS_ENV, raising=False)
    monkeypatch.setattr(paths, "PACK_DIR", tmp_path / "pack")
    assert [r.kind for r in paths.read_roots()] == ["output", "models"]
    assert _validate_data_path(str(tmp_path / "runs" / "x")) is True
    assert "refused" in _validate_data_path(str(tmp_path / "elsewhere"))


# --------------------------------------------------------------------------------------------
# what a dataset names
# --------------------------------------------------------------------------------------------


def _open_error(value: str) -> str:
    with pytest.raises(ValueError) as info:
        node("InstructAV2AVTrainingData").open(_tiny_model(), value, "model", 0)
    return str(info.value)


def test_a_manifest_cannot_name_files_outside_the_allowed_folders(comfy):
    manifest = comfy.input / "pairs.jsonl"
    manifest.write_text("\n".join([
        '{"name": "abs", "source": "/etc/passwd", "target": "/etc/hostname", "instruction": "x"}',
        '{"name": "up", "source": "../../secret/diary", "target": "../../secret/id_rsa", "instruction": "x"}',
        '{"name": "text", "source": "a.mp4", "target": "b.mp4", "instruction_file": "../../secret/passwords.txt"}',
        '{"name": "none", "source": "../../secret/nothing.mp4", "target": "../../secret/nothing2.mp4", '
        '"instruction": "x"}',
    ]) + "\n")
    message = _open_error("pairs.jsonl")
    for name in ("abs", "up", "text", "none"):
        assert f"{name}: [refused path]" in message, message
    assert "do not show" not in message and "unreadable" not in message and "missing" not in message
    # a refused file that exists reads exactly like one that does not
    lines = {line.split(":")[0].strip(): line for line in message.splitlines() if "refused path" in line}
    assert lines["up"].replace("up", "X") == lines["none"].replace("none", "X")
    assert str(comfy.secret) not in message


def test_a_dataset_folder_cannot_link_out_of_the_allowed_folders(comfy):
    data = comfy.input / "data"
    _write_pairs(data, 1)
    (data / "linked_pair").symlink_to(comfy.secret, target_is_directory=True)
    (data / "pair0" / "instruction.txt").unlink()
    (data / "pair0" / "instruction.txt").symlink_to(comfy.secret / "passwords.txt")
    message = _open_error("data")
    assert "linked_pair: [refused path]" in message and "pair0: [refused path]" in message, message
    assert not any(name in message for name in SECRET_FILES) and "do not show" not in message
    assert str(comfy.secret) not in message


def test_the_command_line_reads_datasets_anywhere(tmp_path):
    """Not confined: open_pairs without a check reads a manifest's absolute paths as given."""
    from instructav2av.data.pairs import ClipWindowing, open_pairs

    _write_pairs(tmp_path / "elsewhere", 1)
    manifest = tmp_path / "m" / "pairs.jsonl"
    manifest.parent.mkdir()
    manifest.write_text(f'{{"source": "{tmp_path}/elsewhere/pair0/source.mp4", '
                        f'"target": "../elsewhere/pair0/target.mp4", "instruction": "x"}}\n')
    pairs = open_pairs(manifest, ClipWindowing.from_model(_tiny_model().config))
    assert len(pairs) == 1 and pairs.check(0) == []
