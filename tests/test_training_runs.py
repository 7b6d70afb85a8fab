"""Training runs keep to themselves (issue 11): a new run never mixes with or deletes another run's
files, ``latest`` never leads to another run, and a run's randomness is its seed's alone."""

from __future__ import annotations

import pytest
import torch
from test_trainer import EMPTY, config, tiny_editor, tiny_items, trainable_state

from instructav2av.cli import main as cli_main
from instructav2av.data.latents import InMemoryLatents
from instructav2av.training.trainer import Trainer


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- item 2 --------------------------------------------------------------------------------------------


def test_a_new_run_in_a_used_folder_is_refused_and_the_old_run_is_untouched(tmp_path):
    first = Trainer(tiny_editor(), config(tmp_path, steps=3, checkpoint_every=1, keep_checkpoints=2),
                    InMemoryLatents(tiny_items(2)), empty_context=EMPTY)
    first.train()
    before = _snapshot(tmp_path)
    assert "loss.csv" in before and "checkpoints/step-0000003/state.json" in before
    # another configuration, the same folder, no resume: on main it wrote into loss.csv, then pruning
    # kept the old run's step 2 and 3 and deleted the new run's only checkpoint
    with pytest.raises(FileExistsError, match="already holds a training run .*loss.csv"):
        Trainer(tiny_editor(), config(tmp_path, steps=1, learning_rate=1e-3, checkpoint_every=1, keep_checkpoints=2),
                InMemoryLatents(tiny_items(2)), empty_context=EMPTY)
    assert _snapshot(tmp_path) == before
    # resuming the same run is what continues it
    again = Trainer(tiny_editor(), config(tmp_path, steps=4, checkpoint_every=1, keep_checkpoints=2,
                                          resume="latest"), InMemoryLatents(tiny_items(2)), empty_context=EMPTY)
    assert again.step == 3


def test_latest_naming_a_missing_checkpoint_never_falls_back_to_another(tmp_path):
    Trainer(tiny_editor(), config(tmp_path, steps=2, checkpoint_every=1, keep_checkpoints=3),
            InMemoryLatents(tiny_items(2)), empty_context=EMPTY).train()
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-0000002"
    for f in (ckpts / "step-0000002").iterdir():
        f.unlink()
    (ckpts / "step-0000002").rmdir()
    with pytest.raises(FileNotFoundError, match="names step-0000002, which is not a complete checkpoint"):
        Trainer(tiny_editor(), config(tmp_path, steps=3, checkpoint_every=1, keep_checkpoints=3, resume="latest"),
                InMemoryLatents(tiny_items(2)), empty_context=EMPTY)
    # an explicit folder still resumes
    t = Trainer(tiny_editor(), config(tmp_path, steps=3, checkpoint_every=1, keep_checkpoints=3,
                                      resume=str(ckpts / "step-0000001")), InMemoryLatents(tiny_items(2)),
                empty_context=EMPTY)
    assert t.step == 1


def test_train_refuses_a_used_output_folder_before_loading(tmp_path, monkeypatch, capsys):
    from test_train_cli import _no_loading

    run = tmp_path / "run"
    run.mkdir()
    (run / "loss.csv").write_text("step,loss\n1,0.5\n")
    _no_loading(monkeypatch)
    from instructav2av.cli import train as train_cli

    monkeypatch.setattr(train_cli, "check_files", lambda config: None)
    code = cli_main(["train", "--preset", "tiny", "--data", "synthetic:2", "--output-dir", str(run)])
    err = capsys.readouterr().err
    assert code == 1 and "already holds a training run" in err and "resume" in err
    assert (run / "loss.csv").read_text() == "step,loss\n1,0.5\n"


# -- item 5 --------------------------------------------------------------------------------------------


def test_lora_dropout_runs_with_the_same_seed_are_identical_and_leave_the_callers_rng_alone(tmp_path):
    def run(folder, seed=0):
        model = tiny_editor()  # (seeds the global generator itself)
        torch.manual_seed(123)
        torch.rand(7)  # whatever the caller did before
        host = torch.get_rng_state()
        t = Trainer(model, config(folder, steps=3, lora_dropout=0.3, seed=seed),
                    InMemoryLatents(tiny_items(2)), empty_context=EMPTY)
        t.train()
        assert torch.equal(torch.get_rng_state(), host)  # the caller's (e.g. ComfyUI's) generator is untouched
        return trainable_state(t)

    a = run(tmp_path / "a")
    b = run(tmp_path / "b")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    c = run(tmp_path / "c", seed=1)
    assert any(not torch.equal(a[k], c[k]) for k in a if ".lora_" in k)


def test_a_resumed_lora_dropout_run_matches_an_uninterrupted_one(tmp_path):
    whole = Trainer(tiny_editor(), config(tmp_path / "whole", steps=4, lora_dropout=0.3),
                    InMemoryLatents(tiny_items(2)), empty_context=EMPTY)
    whole.train()

    part = Trainer(tiny_editor(), config(tmp_path / "part", steps=4, lora_dropout=0.3),
                   InMemoryLatents(tiny_items(2)), empty_context=EMPTY, should_stop=lambda: part.step == 2)
    assert part.train().stopped  # Cancel: a checkpoint at step 2
    torch.rand(11)  # the process goes on using its generator before the resume
    resumed = Trainer(tiny_editor(), config(tmp_path / "part", steps=4, lora_dropout=0.3, resume="latest"), InMemoryLatents(tiny_items(2)), empty_context=EMPTY)
    resumed.train()
    a, b = trainable_state(whole), trainable_state(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pruning_never_deletes_a_checkpoint_of_another_configuration(tmp_path):
    """Even when another run's checkpoint sits in the folder (copied there by hand, say)."""
    import shutil

    other = tmp_path / "other"
    Trainer(tiny_editor(), config(other, steps=5, learning_rate=1e-3, checkpoint_every=5),
            InMemoryLatents(tiny_items(2)), empty_context=EMPTY).train()
    mine = tmp_path / "mine"
    Trainer(tiny_editor(), config(mine, steps=1, checkpoint_every=1, keep_checkpoints=1),
            InMemoryLatents(tiny_items(2)), empty_context=EMPTY).train()
    shutil.copytree(other / "checkpoints" / "step-0000005", mine / "checkpoints" / "step-0000005")
    # on main, pruning kept the higher step 5 and deleted this run's step 3, leaving 'latest' dangling
    Trainer(tiny_editor(), config(mine, steps=3, checkpoint_every=1, keep_checkpoints=1, resume="latest"),
            InMemoryLatents(tiny_items(2)), empty_context=EMPTY).train()
    left = sorted(p.name for p in (mine / "checkpoints").iterdir())
    assert left == ["latest", "step-0000003", "step-0000005"]  # its own newest, and the other run's untouched
    assert (mine / "checkpoints" / "latest").read_text() == "step-0000003"


def test_another_runs_validation_edits_mark_the_folder_as_used(tmp_path):
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "step-0000010_a.mp4").write_bytes(b"an edit of another run")
    with pytest.raises(FileExistsError, match="validation/step-0000010_a.mp4"):
        Trainer(tiny_editor(), config(tmp_path, steps=1), InMemoryLatents(tiny_items(2)), empty_context=EMPTY)
