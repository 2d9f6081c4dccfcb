"""The server through the official `openai` client: completions and chat, streamed and not, n, stop,
seed, logprobs, response_format; outputs equal `arlm generate`'s (the Python API's) on the same seeds."""

from __future__ import annotations

import json
import math

import jsonschema
import openai
import pytest

PROMPT = "To be, or not to be"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]


@pytest.mark.parametrize("controls", [dict(seed=3), dict(seed=7, temperature=0.7, top_p=0.9),
                                      dict(temperature=0), dict(seed=1, presence_penalty=1.5, frequency_penalty=0.5)])
def test_completion_equals_arlm_generate_on_the_same_seed(client, bpe_lm, controls):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=24, **controls)
    ours = bpe_lm.generate(PROMPT, max_new_tokens=24, **controls)
    assert r.choices[0].text == ours and ours
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 24 and r.usage.prompt_tokens == len(bpe_lm.tokenizer.encode(PROMPT))


def test_stream_gives_the_same_text_as_one_response(client):
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, seed=5)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, seed=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert len([c for c in chunks if c.choices]) > 5  # token by token, not one piece
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_n_choices_are_the_seeded_sequences_of_arlm_generate(client, bpe_lm):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=16, n=3, seed=11)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == bpe_lm.generate(PROMPT, max_new_tokens=16, num_return_sequences=3, seed=11)
    assert len({c.text for c in r.choices}) == 3


def test_stop_cuts_the_text_and_reports_stop(client):
    free = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, seed=2).choices[0].text
    stop = free[10:13]
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=40, seed=2, stop=[stop])
    assert r.choices[0].text == free[:free.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_completion_logprobs_match_the_text(client):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, seed=4, logprobs=3)
    lp = r.choices[0].logprobs
    assert joined(lp.tokens) == r.choices[0].text
    assert len(lp.token_logprobs) == 12 and all(v <= 0 for v in lp.token_logprobs)
    assert all(len(top) == 3 for top in lp.top_logprobs)
    assert all(max(top.values()) >= v - 1e-6 for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    assert lp.text_offset[0] == 0


def test_echo_returns_the_prompt_and_its_logprobs(client):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=4, seed=4, echo=True, logprobs=1)
    assert r.choices[0].text.startswith(PROMPT)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(v is not None for v in lp.token_logprobs[1:])
    assert joined(lp.tokens) == r.choices[0].text


def joined(tokens: list[str]) -> str:
    """The text of OpenAI-style token strings (``bytes:\\xNN`` for a token that is part of a character)."""
    raw = b"".join(bytes.fromhex(t[6:].replace("\\x", "")) if t.startswith("bytes:") else t.encode() for t in tokens)
    return raw.decode("utf-8", "replace")


def test_chat_streamed_and_not_agree(client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Who is there?"}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, seed=9)
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=20, seed=9, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                       seed=1, logprobs=True, top_logprobs=4)
    content = r.choices[0].logprobs.content
    assert 0 < len(content) <= 8
    for entry in content:
        assert len(entry.top_logprobs) == 4
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6
        assert sum(math.exp(t.logprob) for t in entry.top_logprobs) <= 1.0 + 1e-5


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "lines"],
          "properties": {"name": {"type": "string", "maxLength": 10}, "lines": {"type": "integer", "minimum": 0, "maximum": 99}}}


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema(client, stream):
    fmt = {"type": "json_schema", "json_schema": {"name": "speaker", "schema": SCHEMA}}
    for seed in range(5):
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Who?"}],
                                           max_tokens=100, seed=seed, response_format=fmt, stream=stream)
        text = "".join(c.choices[0].delta.content or "" for c in r if c.choices) if stream else r.choices[0].message.content
        jsonschema.validate(json.loads(text), SCHEMA)


def test_response_format_json_object(client):
    r = client.completions.create(model="tiny", prompt="{", max_tokens=100, seed=0, temperature=0.5,
                                  extra_body={"response_format": {"type": "json_object"}})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].text), dict)
    assert r.choices[0].text.startswith("{")


def test_errors_are_openai_errors(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="x", max_tokens=1, temperature=7)
    with pytest.raises(openai.BadRequestError, match="json_schema cannot be used"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}})
    with pytest.raises(openai.BadRequestError, match="context_length_exceeded|at most"):
        client.completions.create(model="tiny", prompt="word " * 500, max_tokens=1)
