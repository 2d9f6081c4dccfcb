"""The Python API: arlm.load(...).generate / .stream / .perplexity, arlm.train(...)."""

from __future__ import annotations

import logging

import pytest
import torch

import arlm
from arlm.errors import UserError


@pytest.fixture(scope="module")
def lm(trained_model):
    return arlm.load(trained_model, device="cpu")


def test_generate_returns_continuation_only(lm):
    out = lm.generate("HAMLET.", max_new_tokens=25, temperature=0)
    assert isinstance(out, str) and 0 < len(out) <= 25
    assert out == lm.generate("HAMLET.", max_new_tokens=25, temperature=0)  # greedy is deterministic


def test_list_of_prompts_and_several_sequences(lm):
    outs = lm.generate(["To be", "KING."], max_new_tokens=10, seed=0)
    assert isinstance(outs, list) and len(outs) == 2 and all(isinstance(o, str) for o in outs)
    many = lm.generate("To be", max_new_tokens=10, seed=0, num_return_sequences=3)
    assert len(many) == 3 and len(set(many)) > 1


def test_stream_concatenates_to_generate(lm):
    kw = dict(max_new_tokens=30, temperature=0.8, top_p=0.9, seed=5)
    assert "".join(lm.stream("Lord", **kw)) == lm.generate("Lord", **kw)


def test_stop_string_is_cut(lm):
    full = lm.generate("The", max_new_tokens=40, temperature=0)
    stop = full[5:7]
    cut = lm.generate("The", max_new_tokens=40, temperature=0, stop=stop)
    assert cut == full[: full.index(stop)]


def test_perplexity_is_lower_on_shakespeare_than_on_noise(lm):
    assert lm.perplexity("And what is the matter with the lord?") < lm.perplexity("zqxj vkqw pfzx qqqq jjjj")


def test_long_prompt_is_cut_from_the_left_with_a_warning(lm, caplog):
    prompt = "the time is out of joint; " * 10
    with caplog.at_level(logging.WARNING, logger="arlm"):
        out = lm.generate(prompt, max_new_tokens=5, temperature=0)
    assert "longer than the context window" in caplog.text and len(out) <= 5
    assert out == lm.generate(prompt[-lm.block_size:], max_new_tokens=5, temperature=0)


@pytest.mark.parametrize("controls, message", [
    (dict(temperature=-1), "temperature must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-3), "top_k must be >= 0"),
    (dict(max_new_tokens=-1), "max_new_tokens must be between 0 and"),
    (dict(temprature=0.5), "unknown generation option"),
])
def test_bad_controls(lm, controls, message):
    with pytest.raises(UserError, match=message):
        lm.generate("x", **controls)


def test_prompt_outside_char_vocabulary(lm):
    with pytest.raises(UserError, match=r"outside this character-level vocabulary: '世' \(U\+4E16\)"):
        lm.generate("Hello 世界", max_new_tokens=3)


def test_empty_prompt_generates_a_new_document(lm):
    assert len(lm.generate("", max_new_tokens=10, seed=1)) > 0


def test_train_api_from_dict(char_data, tmp_path):
    from tests.conftest import tiny_train_config

    import json

    from safetensors.torch import load_file

    summary = arlm.train(tiny_train_config(char_data, tmp_path / "run", max_steps=4, eval_interval=2))
    assert summary["status"] == "completed" and summary["step"] == 4 and summary["best"] == str(tmp_path / "run" / "best")
    m = arlm.load(tmp_path / "run", device="cpu")
    saved = load_file(tmp_path / "run" / "best" / "model.safetensors")
    assert torch.equal(m.model.transformer.wte.weight, saved["transformer.wte.weight"])  # the run's best checkpoint
    out = m.generate("a", max_new_tokens=3, min_new_tokens=3, seed=0)
    chars = set(json.loads((char_data / "tokenizer.json").read_text(encoding="utf-8"))["chars"])
    assert len(out) == 3 and set(out) <= chars  # three new characters of the corpus's own alphabet
    assert out == m.generate("a", max_new_tokens=3, min_new_tokens=3, seed=0)  # the seed decides them


def test_bpe_model_end_to_end_with_chinese_prompt(tmp_path):
    """Byte-level BPE: any prompt is in vocabulary, and streamed pieces are whole characters."""
    from arlm.config import PrepareConfig
    from arlm.data.prepare import prepare
    from tests.conftest import CORPUS, tiny_train_config

    (tmp_path / "mixed.txt").write_text((CORPUS / "sonnets.txt").read_text(encoding="utf-8")[:20_000]
                                        + "\n床前明月光，疑是地上霜。举头望明月，低头思故乡。🌙\n" * 20, encoding="utf-8")
    prepare(PrepareConfig(inputs=[str(tmp_path / "mixed.txt")], out=str(tmp_path / "d"), tokenizer="bpe", vocab_size=400))
    arlm.train(tiny_train_config(tmp_path / "d", tmp_path / "run", max_steps=30, eval_interval=30))
    m = arlm.load(tmp_path / "run")
    kw = dict(max_new_tokens=60, seed=0)
    pieces = list(m.stream("举头望明月，", **kw))
    # Reference: the same ids from the decode loop, decoded once at the end.
    from arlm.api import generate_config
    from arlm.generate.engine import generate_ids

    eos = (m.tokenizer.eot_id,)
    ids = generate_ids(m.model, m.encode_prompt("举头望明月，"), generate_config(**kw), eos)[0]
    ids = ids[: ids.index(eos[0])] if eos[0] in ids else ids
    assert "".join(pieces) == m.tokenizer.decode(ids)  # no piece was emitted that later changed
    assert m.perplexity("低头思故乡") > 1


def test_list_of_prompts_is_one_batch_equal_to_one_by_one(trained_model):
    m = arlm.load(trained_model, device="cpu")
    prompts = ["KING.", "O", "What say you, my lord"]
    batch = m.generate(prompts, max_new_tokens=8, temperature=0)
    assert batch == [m.generate(p, max_new_tokens=8, temperature=0) for p in prompts]
    several = m.generate(prompts[:2], max_new_tokens=5, temperature=0, num_return_sequences=2)
    assert several == [[batch[0][:5]] * 2, [batch[1][:5]] * 2]


def test_complete_reports_finish_reasons_and_logprobs(lm):
    [c] = lm.complete("HAMLET.", max_new_tokens=12, temperature=0, logprobs=True, top_logprobs=2, echo=True)
    assert c.finish_reason == "length" and c.text == lm.generate("HAMLET.", max_new_tokens=12, temperature=0)
    assert "".join(t.token for t in c.tokens) == c.text and all(t.logprob <= 0 for t in c.tokens)
    assert all(t.token == t.top[0][0] for t in c.tokens)  # greedy picks the most likely token
    assert [t.token for t in c.prompt_tokens] == list("HAMLET.") and c.prompt_tokens[0].logprob is None
    stop = c.text[3:5]
    [s] = lm.complete("HAMLET.", max_new_tokens=12, temperature=0, stop=stop)
    assert s.finish_reason == "stop" and s.text == c.text[:c.text.index(stop)]
    [t] = lm.complete("HAMLET.", max_new_tokens=500, temperature=0, max_time=1e-9)
    assert t.finish_reason == "time" and len(t.text) <= 1


def test_bad_words_and_logit_bias_through_the_api(lm):
    plain = lm.generate("KING.", max_new_tokens=60, temperature=0)
    word = plain[2:4]
    assert word not in lm.generate("KING.", max_new_tokens=60, temperature=0, bad_words=[word])
    z = lm.tokenizer.encode("z")[0]
    assert lm.generate("KING.", max_new_tokens=5, temperature=0, logit_bias=[f"{z}=100"]) == "zzzzz"
    with pytest.raises(UserError, match="outside the vocabulary"):
        lm.generate("KING.", logit_bias=["99999=1"])
    with pytest.raises(UserError, match="TOKEN_ID=BIAS"):
        lm.generate("KING.", logit_bias=["z=1"])


def test_speculative_decoding_through_the_api(lm, trained_model):
    want = lm.generate("ROMEO.", max_new_tokens=20, temperature=0)
    assert lm.generate("ROMEO.", max_new_tokens=20, temperature=0, draft_model=str(trained_model)) == want
    assert lm.last_speculative.acceptance_rate == 1.0  # the model as its own draft
    rounds = lm.last_speculative.rounds
    stop = want[3:5]
    assert lm.generate("ROMEO.", max_new_tokens=20, temperature=0, draft_model=str(trained_model), stop=stop) == want[:want.index(stop)]
    assert lm.last_speculative.rounds < rounds  # decoding ended at the stop string, not at max_new_tokens
    with pytest.raises(UserError, match="context window"):
        lm.generate("ROMEO.", max_new_tokens=1000, draft_model=str(trained_model))


SCRIPTED = "龍🐉 and 汉字, 👨‍👩‍👧!"


@pytest.fixture
def byte_model(tmp_path, monkeypatch):
    """A byte-level BPE model whose decoder is scripted to emit SCRIPTED one byte-token at a time."""
    from arlm.config import GPTConfig
    from arlm.model.gpt import GPT
    from arlm.tokenizers import BPETokenizer
    from arlm.interop.load import save_model

    tok = BPETokenizer.train(["plain ascii only"], vocab_size=260)
    ids = tok.encode(SCRIPTED)
    assert len(ids) > len(SCRIPTED)  # characters really are split over several tokens
    save_model(tmp_path / "m", GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=1, n_embd=8)), tok)

    script = iter(ids)

    def scripted(logits, greedy, generators, penalised=None):  # the engine's sampler, replaced
        return torch.tensor([next(script)])

    monkeypatch.setattr("arlm.generate.engine.sample", scripted)
    return tmp_path / "m", ids


def test_stream_iterator_never_splits_a_character(byte_model):
    path, ids = byte_model
    pieces = list(arlm.load(path, device="cpu").stream("x", max_new_tokens=len(ids)))
    assert "".join(pieces) == SCRIPTED
    assert all(p and "\ufffd" not in p for p in pieces)
    assert len(pieces) > 5  # streamed in many pieces, not at the end


def test_cli_streams_whole_characters(byte_model, monkeypatch):
    from arlm.cli import main

    path, ids = byte_model
    writes = []

    class Recorder:
        def write(self, s):
            writes.append(s)

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", Recorder())
    assert main(["generate", "--model", str(path), "--prompt", "x", "--max-new-tokens", str(len(ids)), "--device", "cpu"]) == 0
    assert "".join(writes) == "x" + SCRIPTED + "\n"
    assert all("\ufffd" not in w for w in writes) and len(writes) > 5
