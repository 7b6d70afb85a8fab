"""The demo base generator's pieces: scene descriptions, the trainer in base mode, its bundle (CPU, tiny)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from instructav2av.data.synthetic import HELD_OUT_START, make_sample
from instructav2av.demo import base
from instructav2av.demo.recipe import ASSETS, CODECS_FILE
from instructav2av.demo.text import DemoTextEncoder


def test_descriptions_name_every_object_and_sound_and_the_vocabulary_covers_them():
    text = DemoTextEncoder(base.base_vocabulary(), 24, 128)
    seen = set()
    for i in range(40):
        s = make_sample(HELD_OUT_START + i, seed=0)
        src, tar = base.scene_descriptions(s)
        seen.add(s.meta.edit_type)
        m = s.meta
        if m.source_object is not None:
            assert f"{m.source_object.color} {m.source_object.shape}" in src and m.source_object.sound in src
        if m.target_object is not None:
            assert f"{m.target_object.color} {m.target_object.shape}" in tar and m.target_object.sound in tar
        assert ". Audio: " in src and ". Audio: " in tar
        for t in (src, tar):
            ids = text.tokenize(t)
            emb = text.encode([t])[0]
            assert emb.shape[0] <= 24
            assert 0 not in ids  # no <unk>
    assert seen == {"replace", "remove", "insert", "change_sound", "change_color"}
    assert base.describe([]) == "an empty floor. Audio: quiet"


def test_truth_mask_fences_the_edited_object():
    for i in range(20):
        s = make_sample(HELD_OUT_START + i, seed=0)
        video, ranges = base.truth_mask(s)
        if s.meta.edit_type == "change_sound":
            assert video is None and ranges
        if s.meta.edit_type == "change_color":
            assert ranges == [] and video is not None and torch.equal(video.bool(), s.meta.edit_mask)


def test_trainer_in_base_mode_trains_a_generator_the_base_bundle_loads(tmp_path):
    config = base.base_config()
    small = {m: dataclasses.replace(getattr(config, m), dim=32, ffn_dim=64, num_heads=2, num_layers=1)
             for m in ("video", "audio")}
    config = dataclasses.replace(config, **small)
    record = base.train_base(tmp_path, base.BaseRecipe(steps=2, batch_size=2, warmup_steps=1), config=config)
    assert record["last_loss"] > 0 and (tmp_path / base.BASE_FILE).is_file()
    shutil.copy(ASSETS / CODECS_FILE, tmp_path / CODECS_FILE)
    bundle = base.load_base_bundle(model=tmp_path, dtype=torch.float32)
    assert bundle.mode == "base" and bundle.model.editor is False and bundle.config == config
    with pytest.raises(FileExistsError):
        base.train_base(tmp_path, base.BaseRecipe(steps=2, batch_size=2, warmup_steps=1), config=config)


def test_trainer_refuses_validation_edits_with_a_base_model():
    from instructav2av.models.configs import get_preset
    from instructav2av.models.dit import AVEditorDiT
    from instructav2av.training.config import TrainConfig
    from instructav2av.training.trainer import Trainer

    model = AVEditorDiT(get_preset("tiny"), editor=False)
    with pytest.raises(ValueError, match="validation edits need an editor"):
        Trainer(model, TrainConfig(adapter="full"), data=None, empty_context=torch.zeros(1, 32),
                validation=[object()])
    with pytest.raises(ValueError, match="only as a full fine-tune"):
        Trainer(model, TrainConfig(adapter="lora"), data=None, empty_context=torch.zeros(1, 32))


def test_compare_heldout_scores_four_methods_on_the_same_cases():
    from instructav2av.demo.recipe import load_codecs
    from instructav2av.editing import EditDefaults, EditorBundle
    from instructav2av.models.dit import AVEditorDiT
    from instructav2av.samplers import EditGuidance
    from instructav2av.samplers.flowedit import FlowEditSettings

    config = base.base_config()
    config = dataclasses.replace(config, **{m: dataclasses.replace(getattr(config, m), dim=32, ffn_dim=64,
                                                                   num_heads=2, num_layers=1)
                                            for m in ("video", "audio")})
    video, audio = load_codecs(ASSETS / CODECS_FILE)
    text = DemoTextEncoder(base.base_vocabulary(), config.video.text_len, config.video.text_dim)
    torch.manual_seed(0)
    bundles = {}
    for editor in (True, False):
        model = AVEditorDiT(config, editor=editor)
        with torch.no_grad():  # a fresh model predicts zero velocity: give it a head
            for name, p in model.named_parameters():
                if name.endswith("head.head.weight"):
                    p.normal_(0.0, 0.05)
        bundles[editor] = EditorBundle(model, video, audio, text, config, dtype=torch.float32,
                                       defaults=EditDefaults(steps=2, shift=3.0, solver="euler",
                                                             guidance=EditGuidance(1.0, 1.0, 1.0, 1.0)),
                                       mode="editor" if editor else "base")
    out = base.compare_heldout(bundles[True], bundles[False], 2, flowedit_steps=2,
                               settings=FlowEditSettings(video_n_max=2, audio_n_max=2))
    assert set(out) == {"editor", "editor+mask", "flowedit", "flowedit+mask"}
    for summary in out.values():
        assert summary["count"] == 2 and "psnr_preserved" in summary
    # the ground-truth fence keeps the outside of the edit: preservation can only improve
    for method in ("editor", "flowedit"):
        assert out[method + "+mask"]["psnr_preserved"] >= out[method]["psnr_preserved"] - 1e-6
