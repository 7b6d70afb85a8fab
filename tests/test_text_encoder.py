"""umT5 text encoder: every file layout gives the same embeddings, tokenizer discovery,
Wan-style truncation with a warning, the on-disk embedding cache, and wrong-file errors.

All models are tiny (2 layers, width 32) and written by the tests in each real key layout.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import types
from pathlib import Path

import pytest
import torch
from reference_code import load_wan_t5_module, wan_skip_reason
from safetensors.torch import save_file

from instructav2av.models.codecs.text_encoder import TEXT_LEN, build_umt5, clean_text
from instructav2av.weights.text_encoder import (
    detect_text_encoder_layout,
    hf_umt5_key_to_wan,
    load_text_encoder,
    wan_umt5_key_to_hf,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "replace the speaking man with a young woman in a gray blazer",
    "remove the chipmunk and its scream",
    "add a dark vintage sedan driving across the scene",
    "change what the woman says to we leave at dawn",
]
TINY = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
            relative_attention_num_buckets=32, relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1)
TEXTS = ["remove the chipmunk and its scream", "add a dark sedan", ""]


def _spiece_bytes() -> bytes:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=60,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram",
                                   minloglevel=2, hard_vocab_limit=False)
    return buf.getvalue()


def _tokenizer_json(spiece: bytes, path: Path) -> None:
    """A tokenizers-library file with the same vocabulary (what google/umt5-xxl ships as tokenizer.json)."""
    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    sp = spm.SentencePieceProcessor(model_proto=spiece)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.save(str(path))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("umt5")
    torch.manual_seed(0)
    model = build_umt5(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():  # norms too, so a misplaced norm weight cannot go unnoticed
            p.copy_(torch.randn_like(p) * 0.5)
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    spiece = _spiece_bytes()
    tok_dir = root / "umt5-xxl-tokenizer"
    tok_dir.mkdir()
    (tok_dir / "spiece.model").write_bytes(spiece)

    # Wan's models_t5_umt5-xxl-enc-bf16.pth layout (here fp32)
    torch.save({hf_umt5_key_to_wan(k): v for k, v in sd.items()}, root / "wan_umt5.pth")
    # ComfyUI umt5_xxl_fp16.safetensors: HF names, no embed_tokens, the tokenizer inside
    spiece_t = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)
    save_file({**{k: v.half() for k, v in sd.items()}, "spiece_model": spiece_t}, str(root / "comfy_fp16.safetensors"))
    # ComfyUI umt5_xxl_fp8_e4m3fn_scaled.safetensors: linears fp8 + fp32 scale_weight, a scaled_fp8 marker
    fp8, deq = {}, {}
    for k, v in sd.items():
        if k.endswith(("q.weight", "k.weight", "v.weight", "o.weight", "wi_0.weight", "wi_1.weight", "wo.weight")):
            scale = v.abs().max() / 448.0
            q = (v / scale).to(torch.float8_e4m3fn)
            fp8[k], fp8[k[: -len("weight")] + "scale_weight"] = q, scale.reshape(())
            deq[k] = q.float() * scale
        else:
            fp8[k], deq[k] = v.half(), v.half().float()
    fp8["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    save_file({**fp8, "spiece_model": spiece_t}, str(root / "comfy_fp8.safetensors"))
    # a Hugging Face folder with tokenizer.json
    hf = root / "hf"
    model.save_pretrained(hf)
    _tokenizer_json(spiece, hf / "tokenizer.json")

    reference_fp8 = build_umt5(TINY).eval()
    reference_fp8.load_state_dict({**deq, "encoder.embed_tokens.weight": deq["shared.weight"]})
    return types.SimpleNamespace(root=root, model=model, reference_fp8=reference_fp8, spiece=spiece, sd=sd)


def _ids(enc, text):
    return torch.tensor([enc.tokenize(text)])


@torch.no_grad()
def _reference(model, ids):
    return model(input_ids=ids).last_hidden_state[0]


def test_key_maps_follow_wan_names():
    assert wan_umt5_key_to_hf("blocks.3.ffn.gate.0.weight") == "encoder.block.3.layer.1.DenseReluDense.wi_0.weight"
    assert wan_umt5_key_to_hf("blocks.3.ffn.fc1.weight") == "encoder.block.3.layer.1.DenseReluDense.wi_1.weight"
    assert wan_umt5_key_to_hf("blocks.0.pos_embedding.embedding.weight") == \
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert wan_umt5_key_to_hf("token_embedding.weight") == "shared.weight"
    assert wan_umt5_key_to_hf("norm.weight") == "encoder.final_layer_norm.weight"
    with pytest.raises(KeyError):
        wan_umt5_key_to_hf("blocks.0.cross_attn.q.weight")


def test_wan_layout_file_is_exact(files):
    enc = load_text_encoder(files.root / "wan_umt5.pth", dtype=torch.float32)
    keys = torch.load(files.root / "wan_umt5.pth", weights_only=True).keys()
    assert detect_text_encoder_layout(keys) == "wan"
    assert len(keys) == 1 + 2 * 10 + 1  # Wan's count: embedding, 10 per block, final norm
    for text in TEXTS:
        (emb,) = enc.encode([text])
        ids = _ids(enc, text)
        assert emb.shape == (ids.shape[1], 32)
        torch.testing.assert_close(emb, _reference(files.model, ids), rtol=0, atol=0)


def test_tokenizer_found_next_to_weights_and_ids_end_with_eos(files):
    enc = load_text_encoder(files.root / "wan_umt5.pth", dtype=torch.float32)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=files.spiece)
    assert enc.tokenize("  remove the   chipmunk \n") == sp.encode("remove the chipmunk") + [1]
    assert enc.tokenize("") == [1]


def test_comfyui_fp16_and_fp8_scaled_files(files):
    fp16 = load_text_encoder(files.root / "comfy_fp16.safetensors", dtype=torch.float32)
    fp8 = load_text_encoder(files.root / "comfy_fp8.safetensors", dtype=torch.float32)
    for text in TEXTS:
        ids = _ids(fp16, text)  # the tokenizer embedded in the file
        ref = _reference(files.model, ids)
        (e16,), (e8,) = fp16.encode([text]), fp8.encode([text])
        # fp16 storage: rounding of the weights only
        torch.testing.assert_close(e16, ref, rtol=0, atol=2e-2)
        # fp8 storage: exactly the dequantised weights (weight * scale_weight) ...
        torch.testing.assert_close(e8, _reference(files.reference_fp8, ids), rtol=0, atol=1e-5)
        # ... which is within fp8's precision of the full-precision model
        assert (e8 - ref).abs().max() < 0.25 * ref.abs().max()


def test_hf_folder_with_tokenizer_json(files):
    enc = load_text_encoder(files.root / "hf", dtype=torch.float32)
    ref_enc = load_text_encoder(files.root / "wan_umt5.pth", dtype=torch.float32)
    for text in TEXTS:
        assert enc.tokenize(text) == ref_enc.tokenize(text)  # tokenizer.json == spiece.model
        torch.testing.assert_close(enc.encode([text])[0], ref_enc.encode([text])[0], rtol=0, atol=0)


def test_bf16_load_matches_model_in_bf16(files):
    enc = load_text_encoder(files.root / "wan_umt5.pth", dtype=torch.bfloat16)
    (emb,) = enc.encode(TEXTS[:1])
    assert emb.dtype == torch.bfloat16
    ref = _reference(files.model, _ids(enc, TEXTS[0]))
    assert (emb.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_explicit_tokenizer_path_and_missing_tokenizer(files, tmp_path):
    lonely = tmp_path / "umt5.pth"
    lonely.write_bytes((files.root / "wan_umt5.pth").read_bytes())
    with pytest.raises(FileNotFoundError, match="umt5-xxl-tokenizer"):
        load_text_encoder(lonely, dtype=torch.float32)
    enc = load_text_encoder(lonely, dtype=torch.float32, tokenizer_path=files.root / "hf" / "tokenizer.json")
    assert enc.tokenize("remove the chipmunk")[-1] == 1
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        load_text_encoder(lonely, tokenizer_path=tmp_path / "nothing")


def test_truncation_warns_where_it_cut(files, caplog):
    enc = load_text_encoder(files.root / "wan_umt5.pth", dtype=torch.float32)
    long_text = " ".join(CORPUS * 40)  # far over 512 tokens
    with caplog.at_level(logging.WARNING):
        (emb,) = enc.encode([long_text])
    assert emb.shape[0] == TEXT_LEN
    assert "truncated to 512 tokens" in caplog.text

    caplog.clear()
    enc.max_length = 12
    text = "the quick brown fox jumps over the lazy dog remove the chipmunk and its scream"
    ids = enc.tokenize(text)
    assert len(ids) == 12 and ids[-1] == 1
    kept_text = enc.tokenizer.decode(ids[:-1])
    message = caplog.records[-1].getMessage()
    assert "dropped" in message and "scream" in message  # the last words are the ones cut
    dropped_part = message.split("dropped")[1]
    assert "quick" not in dropped_part and "quick" in kept_text
    caplog.clear()
    enc.max_length = TEXT_LEN
    enc.tokenize("remove the chipmunk")
    assert not caplog.records  # short texts are silent


def test_embedding_cache_hit_miss_and_invalidation(files, tmp_path, monkeypatch):
    weights = tmp_path / "model" / "umt5.pth"
    weights.parent.mkdir()
    weights.write_bytes((files.root / "wan_umt5.pth").read_bytes())
    tok = files.root / "umt5-xxl-tokenizer"
    cache_dir = tmp_path / "cache"
    enc = load_text_encoder(weights, dtype=torch.float32, tokenizer_path=tok, cache_dir=cache_dir)
    fresh = enc.encode(TEXTS)
    assert (enc.cache.hits, enc.cache.misses) == (0, 3)
    calls = []
    real_forward = enc.model.forward
    monkeypatch.setattr(enc.model, "forward", lambda *a, **k: calls.append(1) or real_forward(*a, **k))
    again = enc.encode(TEXTS)
    assert (enc.cache.hits, enc.cache.misses) == (3, 3) and not calls  # the model did not run
    for a, b in zip(fresh, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    enc.encode(["a new instruction"])
    assert enc.cache.misses == 4 and len(calls) == 1

    # a changed weights file (new mtime) is another encoder: nothing is reused
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    enc2 = load_text_encoder(weights, dtype=torch.float32, tokenizer_path=tok, cache_dir=cache_dir)
    enc2.encode(TEXTS[:1])
    assert (enc2.cache.hits, enc2.cache.misses) == (0, 1)

    # a damaged entry is recomputed, not fatal
    for f in cache_dir.rglob("*.safetensors"):
        f.write_bytes(b"garbage")
    enc3 = load_text_encoder(weights, dtype=torch.float32, tokenizer_path=tok, cache_dir=cache_dir)
    torch.testing.assert_close(enc3.encode(TEXTS[:1])[0], fresh[0], rtol=0, atol=0)
    assert enc3.cache.misses == 1


def test_clean_text_like_wan():
    assert clean_text("  a  cat &amp;amp; sits\n on the mat  ") == "a cat & sits on the mat"


def test_wrong_files_are_named(files, tmp_path):
    vae_like = tmp_path / "vae.safetensors"
    save_file({"decoder.conv1.weight": torch.zeros(2, 2, 3, 3, 3), "encoder.conv1.weight": torch.zeros(2)},
              str(vae_like))
    with pytest.raises(ValueError, match=r"vae\.safetensors.*not a umT5 text encoder.*shared\.weight"):
        load_text_encoder(vae_like)

    # a T5 v1.1 encoder (Flux/SD3 t5xxl): position bias in block 0 only
    t5 = {k: v for k, v in files.sd.items() if ".1.layer.0.SelfAttention.relative_attention_bias" not in k}
    save_file(t5, str(tmp_path / "t5xxl.safetensors"))
    with pytest.raises(ValueError, match="is a T5 encoder"):
        load_text_encoder(tmp_path / "t5xxl.safetensors")

    broken = {hf_umt5_key_to_wan(k): v for k, v in files.sd.items() if "final_layer_norm" not in k}
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"broken\.pth.*missing \(first: 'encoder\.final_layer_norm\.weight'\)"):
        load_text_encoder(tmp_path / "broken.pth")

    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((files.root / "comfy_fp16.safetensors").read_bytes()[:5000])
    with pytest.raises(ValueError, match="cannot read .*cut.safetensors"):
        load_text_encoder(truncated)

    with pytest.raises(FileNotFoundError, match="text encoder not found"):
        load_text_encoder(tmp_path / "absent.safetensors")


def test_encode_rejects_non_text(files):
    enc = load_text_encoder(files.root / "wan_umt5.pth", dtype=torch.float32)
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode([1, 2])
    assert len(enc.encode("one text")) == 1


# --------------------------------------------------------------------------------------------
# Parity with Wan's own T5 encoder (WAN_PATH=Wan2.2 checkout, or OVI_PATH=Ovi's copy)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(wan_skip_reason() is not None, reason=wan_skip_reason() or "")
def test_parity_with_wan_t5(tmp_path, files):
    t5 = load_wan_t5_module()
    torch.manual_seed(1)
    wan = t5.T5Encoder(vocab=64, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2, num_buckets=32,
                       shared_pos=False, dropout=0.0).eval()
    with torch.no_grad():
        for p in wan.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    torch.save(wan.state_dict(), tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    enc = load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", dtype=torch.float32,
                            tokenizer_path=files.root / "umt5-xxl-tokenizer")
    enc16 = load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", dtype=torch.bfloat16,
                              tokenizer_path=files.root / "umt5-xxl-tokenizer")
    wan16 = copy.deepcopy(wan).to(torch.bfloat16)
    worst = {torch.float32: 0.0, torch.bfloat16: 0.0}
    for text in TEXTS + [" ".join(CORPUS)]:
        ids = _ids(enc, text)
        padded = torch.zeros(1, TEXT_LEN, dtype=torch.long)
        padded[0, : ids.shape[1]] = ids
        mask = (torch.arange(TEXT_LEN) < ids.shape[1]).long()[None]
        for e, w in ((enc, wan), (enc16, wan16)):
            with torch.no_grad():
                ref = w(padded, mask)[0, : ids.shape[1]]  # Wan pads to text_len 512 and trims
            got = e.encode([text])[0]
            worst[got.dtype] = max(worst[got.dtype], (got.float() - ref.float()).abs().max().item())
    print(f"\numT5 vs Wan's T5Encoder: fp32 max|diff| {worst[torch.float32]:.3g}, bf16 {worst[torch.bfloat16]:.3g}")
    assert worst[torch.float32] < 1e-5  # padding invariance: Wan attends over 512 masked slots, we do not pad
    assert worst[torch.bfloat16] < 0.05
