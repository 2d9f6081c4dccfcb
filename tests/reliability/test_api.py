"""The Python API raises arlm.UserError (a ValueError) for every bad argument, before any work."""

from __future__ import annotations

import pytest

import arlm


@pytest.fixture(scope="module")
def lm(trained_model):
    return arlm.load(trained_model, device="cpu")


def test_user_error_is_a_value_error():
    assert issubclass(arlm.UserError, ValueError)


@pytest.mark.parametrize("args, kwargs", [
    ((123,), {}), ((None,), {}), (("nowhere/at/all",), {}),
    (("MODEL",), dict(device="tpu")), (("MODEL",), dict(precision="int3")), (("MODEL",), dict(device=5)),
])
def test_load(trained_model, args, kwargs):
    args = tuple(str(trained_model) if a == "MODEL" else a for a in args)
    with pytest.raises(arlm.UserError):
        arlm.load(*args, **kwargs)


@pytest.mark.parametrize("prompt, kwargs", [
    (5, {}), (None, {}), (b"bytes", {}), (["a", 5], {}), ([], {}),
    ("a", dict(max_new_tokens=10**10)), ("a", dict(max_new_tokens="5")), ("a", dict(max_new_tokens=2.5)),
    ("a", dict(temperature="hot")), ("a", dict(stop=5)), ("a", dict(stop=["a", 5])), ("a", dict(seed="x")),
    ("a", dict(num_return_sequences=10**7)), ("a", dict(top_k=True)), ("a\ud800", {}),
    ("a", dict(logit_bias={"x": 2})), ("a", dict(bad_words=[5])), ("a", dict(logit_bias={10**6: 1.0})),
])
def test_generate(lm, prompt, kwargs):
    with pytest.raises(arlm.UserError):
        lm.generate(prompt, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(num_return_sequences=10**20), dict(num_beams=10**20, num_return_sequences=10**20)])
def test_absurd_row_counts_are_refused_before_any_row_exists(lm, kwargs):
    for call in (lm.generate, lm.complete):
        with pytest.raises(arlm.UserError, match="memory|num_"):
            call("To", max_new_tokens=2, **kwargs)


def test_other_methods(lm):
    for call in (lambda: lm.evaluate("To be or not", batch_size=0), lambda: lm.evaluate(5),
                 lambda: lm.perplexity(b"x"), lambda: lm.perplexity("x", stride=-1), lambda: list(lm.stream(5)),
                 lambda: lm.complete(5), lambda: lm.evaluate_task([{}], "bleu"),
                 lambda: lm.evaluate_task([{"prompt": "a", "reference": "b"}], "meteor"),
                 lambda: arlm.api.ChatSession(lm).send(5)):
        with pytest.raises(arlm.UserError):
            call()


def test_convenient_forms(lm):
    """A single stop string or bad word, and OpenAI's {token id: bias} for logit_bias."""
    assert lm.generate("To", max_new_tokens=5, temperature=0, logit_bias={3: 100.0}) == \
        lm.generate("To", max_new_tokens=5, temperature=0, logit_bias=["3=100"])
    assert isinstance(lm.generate("To", max_new_tokens=5, bad_words="e", seed=1), str)


def test_seed_of_any_size(lm):
    a = lm.generate("To", max_new_tokens=10, seed=3)
    assert lm.generate("To", max_new_tokens=10, seed=2**64 + 3) == a
    assert isinstance(lm.generate("To", max_new_tokens=10, seed=-(2**100)), str)


@pytest.mark.parametrize("config, overrides", [
    (123, {}), ({"lr": "x"}, {}), ({}, dict(foo=1)), ("missing.toml", {}), ({"data": 5}, {}),
    ({"model": {"n_head": 0}}, {}), ({}, dict(callbacks=5)),
])
def test_train(char_data, tmp_path, config, overrides):
    kwargs = dict(data=str(char_data), out=str(tmp_path / "o"), max_steps=1, progress=False, device="cpu")
    if isinstance(config, dict):
        config = {**kwargs, **config}
        kwargs = {}
    callbacks = overrides.pop("callbacks", None)
    with pytest.raises(arlm.UserError):
        arlm.train(config, callbacks, **kwargs, **overrides)
    assert not (tmp_path / "o").exists()
