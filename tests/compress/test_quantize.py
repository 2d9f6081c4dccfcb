"""Quantized checkpoints (arlm/compress/quantize.py): every form saves, loads without re-quantizing and
generates through the public API; the invariants of decoding hold for them (cache == no cache, batch
== one by one); what cannot be quantized is refused with the fix."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import arlm
from arlm.compress import int4
from arlm.compress.quantize import quant_spec, quantization_of, quantize_model
from arlm.config import GenerateConfig, GPTConfig
from arlm.errors import UserError
from arlm.generate.engine import generate_ids
from arlm.interop.load import load_model, save_model
from arlm.io.schema import CheckpointInfo
from arlm.model import kernels
from arlm.model.gpt import GPT
from arlm.model.weights import state_to_save
from arlm.tokenizers.char import CharTokenizer

FORMS = [("int8", 0, False), ("int4", 32, False), ("int4", 64, True), ("int4", 128, False)]
TOK = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz .,;:!?'\nABCDEFGHIJKLMNOPQRSTUVWXYZ"])


def tiny_gpt(tie: bool, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=TOK.vocab_size, n_layer=2, n_head=2, n_embd=128, block_size=64, tie_embeddings=tie, **kw)
    return GPT(cfg).eval()


def saved(tmp_path, model, spec, name="q"):
    q = quantize_model(copy.deepcopy(model), spec)
    save_model(tmp_path / name, q, TOK, CheckpointInfo(model=model.config, quantization=spec))
    return q, tmp_path / name


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("method, group, asym", FORMS)
def test_save_load_generate(tmp_path, tie, method, group, asym):
    model = tiny_gpt(tie)
    spec = quant_spec(method, group, asym)
    q, path = saved(tmp_path, model, spec)
    x = torch.randint(0, TOK.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref, mine = model(x)[0], q(x)[0]
        loaded, tok, info = load_model(path)
        again = loaded(x)[0]
    assert info.quantization == spec and quantization_of(loaded) == spec
    assert torch.equal(again, mine)  # the saved numbers are what decoding uses
    assert (mine - ref).abs().max() < (0.05 if method == "int8" else 0.5) * ref.abs().max()
    state = loaded.state_dict()
    if method == "int4":
        assert state["transformer.h.0.mlp.c_fc.codes"].dtype == torch.uint8
        assert ("transformer.h.0.mlp.c_fc.offsets" in state) == asym
    assert not [k for k in state if k.startswith("transformer.wte")] == tie  # tied: the output layer's matrix only
    float_bytes = sum(t.numel() * 4 for t in state_to_save(model).values())
    assert (path / "model.safetensors").stat().st_size < (0.35 if method == "int8" else 0.25) * float_bytes
    lm = arlm.load(path)
    text = lm.generate("to be", max_new_tokens=8, min_new_tokens=8, temperature=0)
    assert isinstance(text, str) and len(text) == 8


def test_loading_never_requantizes(tmp_path, monkeypatch):
    _, path = saved(tmp_path, tiny_gpt(True), quant_spec("int4", 32, False))

    def refuse(*a, **k):
        raise AssertionError("quantized again while loading")

    monkeypatch.setattr(int4, "quantize_groups", refuse)
    monkeypatch.setattr(int4.Int4Linear, "from_float", classmethod(refuse))
    lm = arlm.load(path)
    assert lm.generate("ab", max_new_tokens=3, temperature=0)


def test_precision_options_on_a_quantized_model(tmp_path):
    _, path = saved(tmp_path, tiny_gpt(True), quant_spec("int4", 32, False))
    assert arlm.load(path, precision="float32").model.cache_dtype == torch.bfloat16  # decoded as stored, on CPU
    assert quantization_of(arlm.load(path, precision="auto").model).method == "int4"
    for precision in ("bfloat16", "int8"):
        with pytest.raises(UserError, match=r"already quantized \(int4.*without --precision"):
            arlm.load(path, precision=precision)


@pytest.mark.parametrize("method, group, asym", FORMS)
def test_cache_equals_no_cache_and_batch_equals_one_by_one(tmp_path, monkeypatch, method, group, asym):
    _, path = saved(tmp_path, tiny_gpt(False, seed=3), quant_spec(method, group, asym))
    model = arlm.load(path).model
    prompts = [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11, 12]]
    cfg = GenerateConfig(max_new_tokens=12, min_new_tokens=12, temperature=0)
    together = generate_ids(model, prompts, cfg)
    assert together == [generate_ids(model, [p], cfg)[0] for p in prompts]  # the same bits in any batch
    # logits of a prefill and single-token steps over the cache == a full recompute (a float32 cache here;
    # arlm.load keeps it in bfloat16 on CPU for speed): to float rounding through dequantized weights, and
    # within the rounding of its int8 activations through the int4 kernel. A wrong position or a stale
    # cache row would move logits by their own size.
    model.cache_dtype = torch.float32
    x = torch.randint(0, TOK.vocab_size, (2, 20), generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(kernels, "int4_usable", lambda *a: False)
    full, stepped = _full_and_stepped(model, x)
    assert (stepped - full).abs().max() <= 1e-4 * full.abs().max()
    monkeypatch.undo()
    full, stepped = _full_and_stepped(model, x)
    assert (stepped - full).abs().max() <= (1e-4 if method == "int8" else 0.03) * full.abs().max()


def _full_and_stepped(model, x):
    """Logits of a full forward, and of a prefill of 7 positions then one position at a time over the cache."""
    pos = lambda a, b: torch.arange(a, b)[None].expand(2, -1)  # noqa: E731
    with torch.inference_mode():
        full = model(x)[0]
        cache = model.new_cache(2, 24)
        parts = [model(x[:, :7], cache=cache, input_pos=pos(0, 7), kv_len=7)[0]]
        parts += [model(x[:, t:t + 1], cache=cache, input_pos=pos(t, t + 1))[0] for t in range(7, 20)]
    return full, torch.cat(parts, dim=1)


def test_refusals():
    with pytest.raises(UserError, match=r"c_attn has 96 inputs.*group size 128.*--group-size"):
        quantize_model(_odd_width(), quant_spec("int4", 128, False))
    q = quantize_model(tiny_gpt(True), quant_spec("int8", 0, False))
    with pytest.raises(UserError, match="already quantized"):
        quantize_model(q, quant_spec("int4", 32, False))
    with pytest.raises(UserError, match="group_size 32, 64 or 128"):
        quant_spec("int4", 48, False)


def _odd_width() -> GPT:
    """A model 96 wide: its layers have 96 or 384 inputs, 96 not a multiple of 128."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, n_layer=1, n_head=2, n_embd=96, block_size=16)).eval()


def test_lstm_is_refused():
    from arlm.config import LSTMConfig
    from arlm.model.registry import build_model

    lstm = build_model(LSTMConfig(vocab_size=TOK.vocab_size, n_layer=1, n_embd=32, block_size=16))
    with pytest.raises(UserError, match="GPT models.*LSTM"):
        quantize_model(lstm, quant_spec("int8", 0, False))


@pytest.mark.parametrize("change, pattern", [
    (lambda c: c["quantization"].update(method="int3"), r"method.*quantization.*int8.*int4.*int3"),
    (lambda c: c["quantization"].update(group_size=48), r"group_size 32, 64 or 128"),
    (lambda c: c["quantization"].update(group_size=64), r"codes|scales.*shape"),
    (lambda c: c["quantization"].update(symmetric=False), r"offsets is missing"),
    (lambda c: c.update(quantization={"method": "int8"}), r"holds uint8.*int8|shape|missing|unexpected"),
    (lambda c: c.pop("quantization"), r"unexpected tensor|missing"),
    (lambda c: c.update(lora={"rank": 2, "alpha": 4, "targets": ["c_attn"]}), r"quantized or LoRA"),
])
def test_damaged_config_is_one_clear_error(tmp_path, change, pattern):
    _, path = saved(tmp_path, tiny_gpt(False), quant_spec("int4", 32, False))
    cfg = json.loads((path / "config.json").read_text())
    change(cfg)
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=pattern):
        load_model(path)


def test_codes_of_the_wrong_dtype(tmp_path):
    from safetensors.torch import load_file, save_file

    _, path = saved(tmp_path, tiny_gpt(False), quant_spec("int4", 32, False))
    sd = load_file(path / "model.safetensors")
    sd["transformer.h.0.attn.c_attn.codes"] = sd["transformer.h.0.attn.c_attn.codes"].float()
    save_file(sd, path / "model.safetensors")
    with pytest.raises(UserError, match=r"c_attn.codes holds float32.*stores uint8"):
        load_model(path)
    sd["transformer.h.0.attn.c_attn.codes"] = sd["transformer.h.0.attn.c_attn.codes"].to(torch.uint8)
    sd["transformer.h.0.attn.c_attn.scales"] = sd["transformer.h.0.attn.c_attn.scales"].float()
    save_file(sd, path / "model.safetensors")
    with pytest.raises(UserError, match=r"c_attn.scales holds float32.*stores float16"):
        load_model(path)
