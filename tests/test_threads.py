"""`edit --threads`, and a default thread count that suits a shared machine (issue 11, item 17)."""

from __future__ import annotations

import pytest
import torch
from media_fixtures import make_video

from instructav2av.cli import main
from instructav2av.editing import bundle as bundle_module
from instructav2av.runtime import threads as threads_module
from instructav2av.runtime.threads import default_threads


@pytest.fixture
def machine(monkeypatch):
    """A machine with 8 usable CPUs where torch would take all 8; set ``load`` to make it busy."""
    state = {"load": 0.0}
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads_module, "usable_cpus", lambda: 8.0)
    monkeypatch.setattr(threads_module.torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(threads_module.os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    return state


def test_the_default_takes_only_the_idle_cpus(machine, monkeypatch):
    assert default_threads()[0] == 8  # an idle machine: torch's own choice
    machine["load"] = 5.2
    assert default_threads()[0] == 3
    machine["load"] = 30.0  # busier than it has cores: one thread, never zero
    threads, why = default_threads()
    assert threads == 1 and "load average 30.0" in why
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # the user's setting wins
    assert default_threads() == (8, "OMP_NUM_THREADS")


@pytest.fixture
def loader(monkeypatch):
    seen = []

    def load_bundle(**kwargs):
        seen.append(torch.get_num_threads())
        raise RuntimeError("the stand-in loader stops here")

    monkeypatch.setattr(bundle_module, "load_bundle", load_bundle)
    return seen


def test_edit_threads_flag(loader, tmp_path, capsys):
    src = make_video(tmp_path / "src.mp4", fps=24, seconds=1.0, size=(32, 32))
    before = torch.get_num_threads()
    base = ["edit", str(src), "make it red", "-o", str(tmp_path / "out.mp4"), "--preset", "demo"]
    assert main([*base, "--threads", "3"]) == 1
    assert loader == [3]  # the model loads (and runs) with the threads asked for
    assert torch.get_num_threads() == before  # and the caller's setting is back afterwards
    assert main([*base, "--threads", "0"]) == 1
    assert "--threads" in capsys.readouterr().err and loader == [3]  # refused before loading


def test_edit_without_threads_uses_the_default(loader, tmp_path, monkeypatch):
    src = make_video(tmp_path / "src.mp4", fps=24, seconds=1.0, size=(32, 32))
    monkeypatch.setattr(threads_module, "default_threads", lambda: (2, "test"))
    assert main(["edit", str(src), "make it red", "-o", str(tmp_path / "out.mp4"), "--preset", "demo"]) == 1
    assert loader == [2]
