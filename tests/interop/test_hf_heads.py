"""Task heads against transformers on the same tiny random weights: GPT-2, Llama, Mistral and Qwen2
folders with a sequence-classification, token-classification or question-answering head load with
their logits (padded batches, within 1e-4), export back to a folder transformers loads with the same
logits, and what arlm refuses, by name."""

from __future__ import annotations

import json
import time

import pytest
import torch

from arlm.cli import main
from arlm.errors import UserError
from arlm.interop.hf import export_hf
from arlm.interop.load import load_model, model_head
from arlm.model.heads import TaskBatch
from arlm.tokenizers.char import CharTokenizer

tf = pytest.importorskip("transformers")

V = 40
GPT2 = dict(vocab_size=V, n_positions=32, n_embd=24, n_layer=2, n_head=3, pad_token_id=0, bos_token_id=1, eos_token_id=1)
LLAMA = dict(vocab_size=V, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=1)
CASES = {
    "GPT2ForSequenceClassification": ("GPT2Config", GPT2, 3),
    "GPT2ForTokenClassification": ("GPT2Config", GPT2, 5),
    "GPT2ForQuestionAnswering": ("GPT2Config", GPT2, None),
    "LlamaForSequenceClassification": ("LlamaConfig", LLAMA, 4),
    "LlamaForTokenClassification": ("LlamaConfig", LLAMA, 3),
    "LlamaForQuestionAnswering": ("LlamaConfig", LLAMA, None),
    "MistralForTokenClassification": ("MistralConfig", LLAMA, 2),
    "Qwen2ForQuestionAnswering": ("Qwen2Config", LLAMA, None),
}


def make(name: str, seed: int = 0):
    cfg_cls, base, labels = CASES[name]
    torch.manual_seed(seed)
    extra = {} if labels is None else {"num_labels": labels, "id2label": {i: f"T{i}" for i in range(labels)}}
    hf = getattr(tf, name)(getattr(tf, cfg_cls)(**base, **extra)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.2 * torch.randn_like(p))  # away from the initial zeros and ones
    return hf


def padded_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([11, 6, 3])
    ids = torch.randint(2, V, (3, 11), generator=g)
    for b, n in enumerate(lengths):
        ids[b, n:] = 0
    return ids, lengths


def hf_logits(hf, ids, lengths):
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=(torch.arange(ids.size(1))[None] < lengths[:, None]).long())
    return out.logits if getattr(out, "logits", None) is not None else torch.stack([out.start_logits, out.end_logits], -1)


def close_on_real_positions(ours, want, lengths, per_position: bool) -> float:
    if not per_position:
        return float((ours - want).abs().max())
    real = torch.arange(ours.size(1))[None] < lengths[:, None]
    return float((ours - want)[real].abs().max())


@pytest.mark.parametrize("name", list(CASES))
def test_head_logits_match_transformers(tmp_path, name):
    hf = make(name)
    hf.save_pretrained(tmp_path)
    model, _, info = load_model(tmp_path)
    task = info.head.task
    assert task == {"SequenceClassification": "classify", "TokenClassification": "ner",
                    "QuestionAnswering": "qa"}[name.split("For")[1]]
    assert info.head.labels == ([] if task == "qa" else [f"T{i}" for i in range(CASES[name][2])])
    assert model_head(tmp_path) == info.head  # from config.json alone
    ids, lengths = padded_batch()
    with torch.no_grad():
        ours, _ = model(TaskBatch(ids, lengths))
    assert close_on_real_positions(ours, hf_logits(hf, ids, lengths), lengths, task != "classify") <= 1e-4


@pytest.mark.parametrize("name", ["GPT2ForSequenceClassification", "GPT2ForTokenClassification",
                                  "LlamaForQuestionAnswering", "MistralForTokenClassification"])
def test_export_gives_transformers_the_same_head(tmp_path, name):
    hf = make(name, seed=3)
    hf.save_pretrained(tmp_path / "in")
    model, _, info = load_model(tmp_path / "in")
    tok = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz .,;:!?'ABCDE"])
    export_hf(model, tok, tmp_path / "out", info)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    # (a Mistral without a sliding window is a Llama: arlm writes the plainer layout)
    assert config["architectures"] == [name.replace("Mistral", "Llama")]
    back = getattr(tf, config["architectures"][0]).from_pretrained(tmp_path / "out").eval()
    ids, lengths = padded_batch(seed=5)
    want, got = hf_logits(hf, ids, lengths), hf_logits(back, ids, lengths)
    if info.head.task == "classify":  # transformers finds the last token by its padding id: the exported end-of-text
        ids = ids.masked_fill(torch.arange(ids.size(1))[None] >= lengths[:, None], config["pad_token_id"])
        got = hf_logits(back, ids, lengths)
    assert close_on_real_positions(got, want, lengths, info.head.task != "classify") <= 1e-5
    again, _, info2 = load_model(tmp_path / "out")
    assert info2.head == info.head


def test_generating_verbs_refuse_a_head_by_name(tmp_path, capsys):
    make("GPT2ForSequenceClassification").save_pretrained(tmp_path / "hf")
    model, _, info = load_model(tmp_path / "hf")
    export_hf(model, CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz "]), tmp_path / "m", info)  # with a tokenizer
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "abc"]) == 2
    err = capsys.readouterr().err
    assert "text classification head" in err and "arlm eval --task" in err and len(err.strip().splitlines()) == 1
    text = tmp_path / "t.txt"
    text.write_text("abc abc abc")
    assert main(["eval", "--model", str(tmp_path / "m"), "--data", str(text)]) == 2
    assert "labels text instead of writing it" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "m"), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 2
    assert "exports as a Hugging Face folder (--format hf), not GGUF" in capsys.readouterr().err
    assert main(["compress", "quantize", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "q")]) == 2
    assert "compression works on language models" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "m", "t.txt"]  # nothing written

    from fastapi.testclient import TestClient

    import arlm
    from arlm.config import ServeConfig
    from arlm.serve.app import create_app

    with TestClient(create_app(ServeConfig(), lm=arlm.load(tmp_path / "m"))) as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/health")).status_code == 503:  # loading
            assert time.monotonic() < deadline
        assert health.status_code == 500 and "text classification head" in health.json()["message"]


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(id2label={"0": "a", "2": "b"}), "map every id"),
    (lambda c: c.update(id2label={"0": "a", "1": ""}), "map every id"),
    (lambda c: (c.pop("id2label"), c.update(num_labels=10 ** 9)), "num_labels must be an integer from 1"),
    (lambda c: (c.pop("id2label"), c.update(num_labels=1)), "at least 2 labels"),
    (lambda c: c.update(architectures=["GPT2ForMultipleChoice"]), None),  # not a head arlm reads: a causal LM's weights?
    (lambda c: c.update(architectures=["LlamaForSequenceClassification"]), "is not one arlm loads"),
])
def test_damaged_head_config_is_named(tmp_path, change, message):
    hf = make("GPT2ForSequenceClassification")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    change(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=message or "unexpected weights score.weight"):
        load_model(tmp_path)


def test_missing_head_weight_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    make("LlamaForTokenClassification").save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["score.weight"]
    save_file(sd, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError, match="'score.weight' .*LlamaForTokenClassification head.* is missing"):
        load_model(tmp_path)
