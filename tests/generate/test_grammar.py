"""Structured output through llguidance: every sampled output of a random model parses and validates
against its JSON schema (or matches its regular expression), for sampling, greedy, beam search and
speculative decoding, and end-of-text comes only where the grammar accepts."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
import torch

from arlm.config import EngineConfig, GPTConfig, SamplingParams
from arlm.errors import UserError
from arlm.generate.engine import Engine
from arlm.model.gpt import GPT
from tests.conftest import CORPUS

SCHEMAS = {
    "person": {"type": "object", "additionalProperties": False, "required": ["name", "age"],
               "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12},
                              "age": {"type": "integer", "minimum": 0, "maximum": 120}}},
    "tags": {"type": "array", "minItems": 1, "maxItems": 4, "items": {"enum": ["red", "green", "blue", "none"]}},
    "nested": {"type": "object", "additionalProperties": False, "required": ["ok", "point", "note"],
               "properties": {"ok": {"type": "boolean"},
                              "point": {"type": "object", "additionalProperties": False, "required": ["x", "y"],
                                        "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                                       "y": {"enum": [None, 1, "one"]}}},
                              "note": {"type": "string", "maxLength": 6, "pattern": "^[a-z ]*$"}}},
    "choice": {"enum": ["yes", "no", "maybe"]},
}


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A random GPT over a byte-level BPE trained on Shakespeare (its vocabulary can spell any JSON)."""
    from arlm.api import load
    from arlm.interop.load import save_model
    from arlm.tokenizers import BPETokenizer

    tok = BPETokenizer.train([(CORPUS / "hamlet.txt").read_text(encoding="utf-8")[:60_000]], vocab_size=400)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    path = tmp_path_factory.mktemp("models") / "bpe"
    save_model(path, model.eval(), tok)
    return load(path, device="cpu")


def engine_texts(lm, prompt: str, params: list[SamplingParams]) -> list[tuple[str, str]]:
    engine = Engine(lm.model, lm.tokenizer, lm.eos_ids, EngineConfig(max_batch=16))
    ids = lm.tokenizer.encode(prompt)
    order = [engine.add(ids, p) for p in params]
    texts, reasons = {i: "" for i in order}, {}
    for out in engine.run():
        texts[out.request_id] += out.text
        if out.finish_reason:
            reasons[out.request_id] = out.finish_reason
    return [(texts[i], reasons[i]) for i in order]


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_fifty_sampled_outputs_parse_and_validate(lm, name):
    schema = SCHEMAS[name]
    params = [SamplingParams(max_new_tokens=120, temperature=1.0, seed=i, json_schema=json.dumps(schema))
              for i in range(50)]
    outputs = engine_texts(lm, "The answer: ", params)
    for text, reason in outputs:
        assert reason == "stop", (text, reason)
        jsonschema.validate(json.loads(text), schema)
    assert len({t for t, _ in outputs}) > (2 if name == "choice" else 10)  # sampled, not one forced text


def test_without_the_constraint_the_model_writes_no_json(lm):
    """The random model does not produce JSON by itself: the grammar does the work."""
    params = [SamplingParams(max_new_tokens=30, seed=i) for i in range(10)]
    for text, _ in engine_texts(lm, "The answer: ", params):
        with pytest.raises(ValueError):
            json.loads(text)


def test_plain_decoding_does_not_need_llguidance(lm, monkeypatch):
    """Only structured output imports llguidance: without it installed, plain requests still decode."""
    import sys

    monkeypatch.setitem(sys.modules, "llguidance", None)  # `import llguidance` now raises ImportError
    texts = engine_texts(lm, "The answer: ", [SamplingParams(max_new_tokens=8, seed=1)])
    assert len(texts) == 1 and texts[0][0]
    with pytest.raises(ImportError):
        engine_texts(lm, "The answer: ", [SamplingParams(max_new_tokens=8, regex="[a-z]+")])


def test_regex_outputs_match(lm):
    pattern = r"[A-Z][a-z]{2,6} [0-9]{3}(-[a-z]{1,3})?"
    outs = engine_texts(lm, "Code: ", [SamplingParams(max_new_tokens=40, seed=i, regex=pattern) for i in range(30)])
    for text, reason in outs:
        assert re.fullmatch(pattern, text), text


def test_end_of_text_only_where_the_grammar_accepts(lm):
    """A bias that makes end-of-text almost certain still gives complete JSON: the grammar bans it until then."""
    eot = lm.tokenizer.eot_id
    schema = json.dumps(SCHEMAS["person"])
    params = [SamplingParams(max_new_tokens=120, seed=i, json_schema=schema, logit_bias=[f"{eot}=100"]) for i in range(10)]
    for text, reason in engine_texts(lm, "x", params):
        jsonschema.validate(json.loads(text), SCHEMAS["person"])


@pytest.mark.parametrize("controls", [dict(temperature=0), dict(num_beams=3, num_return_sequences=2),
                                      dict(num_return_sequences=3, seed=4)])
def test_greedy_beams_and_several_sequences_follow_the_schema(lm, controls):
    schema = SCHEMAS["nested"]
    texts = lm.generate("A: ", max_new_tokens=120, json_schema=schema, **controls)  # a dict is accepted too
    texts = [texts] if isinstance(texts, str) else texts
    assert len(texts) == controls.get("num_return_sequences", 1)
    for text in texts:
        jsonschema.validate(json.loads(text), schema)


def test_speculative_decoding_follows_the_schema(lm, tmp_path):
    from arlm.interop.load import save_model

    torch.manual_seed(1)
    draft = GPT(GPTConfig(vocab_size=lm.model.config.vocab_size, block_size=256, n_layer=1, n_head=1, n_embd=16))
    save_model(tmp_path / "draft", draft.eval(), lm.tokenizer)
    schema = SCHEMAS["person"]
    for seed in range(5):
        text = lm.generate("A: ", max_new_tokens=80, seed=seed, json_schema=json.dumps(schema),
                           draft_model=str(tmp_path / "draft"))
        jsonschema.validate(json.loads(text), schema)
    assert lm.last_speculative.proposed > 0


@pytest.mark.parametrize("controls, message", [
    (dict(json_schema="{not json"), "not valid JSON"),
    (dict(json_schema="[1, 2]"), "must be a JSON object"),
    (dict(json_schema='{"type": "wat"}'), "json_schema cannot be used"),
    (dict(regex="(ab"), "regex cannot be used"),
    (dict(regex="a", json_schema='{"type": "object"}'), "not both"),
    (dict(regex="a+", token_healing=True), "cannot be combined with token_healing"),
])
def test_bad_constraints_are_refused_with_the_reason(lm, controls, message):
    with pytest.raises(UserError, match=re.escape(message)):
        lm.generate("x", max_new_tokens=5, **controls)


def test_a_vocabulary_that_cannot_spell_the_grammar_is_refused(trained_model):
    from arlm.api import load

    m = load(trained_model, device="cpu")  # characters of Shakespeare: no '{'
    with pytest.raises(UserError, match="cannot write any text"):
        m.generate("x", max_new_tokens=5, json_schema='{"type": "object"}')
    text = m.generate("x", max_new_tokens=20, regex="[a-z]{3,5}!", seed=0)
    assert re.fullmatch("[a-z]{3,5}!", text)
