"""models/siga.py: the one SIGA initialisation gives the same editor applied to modules or to a state dict."""

from __future__ import annotations

import torch

from instructav2av.models import siga
from instructav2av.models.configs import get_preset
from instructav2av.models.dit import AVEditorDiT, editor_state_dict_from_base


def test_module_and_state_dict_initialisation_agree_and_follow_the_table():
    config = get_preset("tiny")
    torch.manual_seed(0)
    base = AVEditorDiT(config, editor=False)
    editor = AVEditorDiT(config, editor=True)
    widened = {"video_model.patch_embedding.weight", "audio_model.patch_embedding.0.weight"}
    shared = {k: v for k, v in base.state_dict().items() if k not in widened}
    editor.load_state_dict(shared, strict=False)  # the shared (Ovi) weights; SIGA still random
    with torch.no_grad():
        for key in widened:
            noisy = base.state_dict()[key]
            editor.get_parameter(key)[:, : noisy.shape[1]] = noisy
    editor.init_editor_weights()
    from_modules = editor.state_dict()
    from_state = editor_state_dict_from_base(base.state_dict(), config)
    assert from_modules.keys() == from_state.keys()
    for key, value in from_state.items():
        assert torch.equal(from_modules[key], value), key
    block = "video_model.blocks.1."
    for new, old in siga.COPIED_FROM_SELF_ATTN.items():
        assert torch.equal(from_state[block + "cross_attn." + new], from_state[block + "self_attn." + old])
    for name, value in siga.CONSTANTS.items():
        assert (from_state[block + "cross_attn." + name] == value).all()
    assert from_state[block + siga.GATE_WEIGHT_KEY].shape[0] == config.video.num_heads


def test_every_siga_module_is_declared_in_an_editor_block():
    editor = AVEditorDiT(get_preset("tiny"), editor=True)
    names = {n for n, _ in editor.audio_model.blocks[0].cross_attn.named_children()}
    assert set(siga.MODULES) <= names
    base_names = {n for n, _ in AVEditorDiT(get_preset("tiny"), editor=False).audio_model.blocks[0].cross_attn.named_children()}
    assert not set(siga.MODULES) & base_names
