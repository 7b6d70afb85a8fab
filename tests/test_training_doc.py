"""docs/training.md holds: its quick-start commands run as written (tiny preset, synthetic data, no
download), its example configs parse, its adapter-size table is what the meta-device count says,
and the docs link to it (issue 11, items 7, 8 and 9)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from instructav2av.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "training.md"


def _blocks(marker: str) -> list[str]:
    """The fenced block (or table) right after each ``<!-- test: MARKER -->`` comment."""
    text = DOC.read_text(encoding="utf-8")
    out = []
    for m in re.finditer(rf"<!-- test: {marker} -->\n", text):
        rest = text[m.end():]
        if rest.startswith("```"):
            body = rest.split("\n", 1)[1]
            out.append(body[: body.index("```")])
        else:  # a table: the lines up to the first blank one
            out.append(rest.split("\n\n", 1)[0])
    assert out, f"no '<!-- test: {marker} -->' block in {DOC}"
    return out


def test_the_quick_start_runs_as_written(tmp_path, monkeypatch):
    """Two stages, then a resume, on the tiny preset with synthetic pairs: no model file anywhere."""
    from instructav2av.weights.adapters import read_adapter_info

    monkeypatch.chdir(tmp_path)
    (commands,) = _blocks("run")
    lines = [line for line in commands.splitlines() if line.strip()]
    assert len(lines) >= 5
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "instructav2av", line
        assert cli_main(argv[1:]) == 0, line
    final = tmp_path / "runs" / "tiny-joint" / "adapter_joint_step0000006.safetensors"  # as the doc says
    info = read_adapter_info(final)
    assert info.stage == "joint" and info.steps == 6 and info.metadata["base_file"].startswith("stand-in tiny")
    assert {"video_model", "audio_model"} == {m.split(".")[0] for m in info.lora_modules}
    assert (tmp_path / "runs" / "tiny-joint" / "loss.csv").read_text().count("\n") == 7  # header + 6 steps


def test_the_example_configs_parse(tmp_path):
    from instructav2av.training.config import load_train_config

    configs = _blocks("config")
    assert len(configs) == 3
    stages = []
    for i, body in enumerate(configs):
        path = tmp_path / f"c{i}.toml"
        path.write_text(body)
        cfg = load_train_config(path)
        stages.append(cfg.stage)
        assert cfg.base.endswith("model.safetensors") and cfg.vocoder and cfg.base_precision == "auto"
    assert stages == ["video", "audio", "joint"]


def test_the_adapter_size_table_is_the_meta_device_count():
    from instructav2av.models.configs import get_preset
    from instructav2av.training.config import TrainConfig
    from instructav2av.training.footprint import footprint

    (table,) = _blocks("sizes")
    rows = [[c.strip().strip("`") for c in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert {r[0] for r in rows} == {"tiny", "small", "demo", "ovi-720-5s"}
    for preset, stage, trainable, new, size in rows:
        if preset == "ovi-720-5s" and stage != "video":  # 12.8 B parameters: one stage keeps the suite fast
            continue
        fp = footprint(get_preset(preset), TrainConfig(stage=stage))
        assert (f"{fp.trainable:,}", f"{fp.new:,}", f"{fp.file_bytes / 1e6:,.1f} MB") == (trainable, new, size), (
            preset, stage)


def test_the_docs_link_to_the_guide_and_the_launch_module_runs():
    for doc in (ROOT / "docs" / "nodes.md", ROOT / "README.md"):
        text = doc.read_text(encoding="utf-8")
        links = re.findall(r"\]\(([^)#:]+\.md)\)", text)
        assert any(Path(link).name == "training.md" and (doc.parent / link).is_file() for link in links), doc
    for link in re.findall(r"\]\(([^)#:]+\.md)\)", (ROOT / "docs" / "nodes.md").read_text(encoding="utf-8")):
        assert (ROOT / "docs" / link).is_file(), f"docs/nodes.md: dead link {link}"
    # the multi-process launch runs the package as a module
    out = subprocess.run([sys.executable, "-m", "instructav2av.cli", "train", "--help"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "--estimate" in out.stdout, out.stderr


@pytest.mark.parametrize("bad", ["synthetic:0", "synthetic:four"])
def test_a_bad_synthetic_spec_is_a_clear_error(bad, capsys):
    assert cli_main(["train", "--preset", "tiny", "--data", bad, "--check-data"]) == 1
    assert "synthetic:COUNT" in capsys.readouterr().err
