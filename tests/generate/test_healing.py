"""Token healing: a prompt's last token is dropped and the output must first re-spell it, with the
token the model would have seen in training."""

from __future__ import annotations

import pytest
import torch

import arlm
from arlm.config import GenerateConfig, GPTConfig
from arlm.errors import UserError
from arlm.generate.sampling import PrefixConstraint
from arlm.generate.stream import TextStream
from arlm.model.gpt import GPT
from arlm.tokenizers.base import token_texts

CODE = "def f(x):\n    if x:\n        return x\n    return None\n\n\nclass A:\n    pass\n" * 40


@pytest.fixture(scope="module")
def code_lm(tmp_path_factory):
    """A random GPT over a byte-level BPE that merged newlines with the indentation after them."""
    from arlm.tokenizers import BPETokenizer
    from arlm.interop.load import save_model

    tok = BPETokenizer.train([CODE], vocab_size=300)
    path = tmp_path_factory.mktemp("healing") / "m"
    torch.manual_seed(0)
    save_model(path, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)), tok)
    return arlm.load(path, device="cpu")


def test_token_texts_read_as_inside_a_text():
    class SentencePieceLike:
        """Decodes as SentencePiece does: the first token loses its word-start space."""
        vocab_size, eot_id = 4, 3
        pieces = ["▁a", "▁the", "ing", ""]

        def encode(self, text):
            return [0] if text == "a" else []

        def decode(self, ids):
            return "".join(self.pieces[i] for i in ids).replace("▁", " ").removeprefix(" ")

    assert SentencePieceLike().decode([1]) == "the"
    assert token_texts(SentencePieceLike()) == [" a", " the", "ing", None]


def test_prompt_boundary_is_healed_with_the_merged_token(code_lm):
    tok = code_lm.tokenizer
    prompt = "def g(y):\n"
    ids = tok.encode(prompt)
    assert tok.decode(ids[-1:]) == "\n"  # the prompt ends in a lone newline token ...
    merged = [i for i, t in enumerate(code_lm.token_texts) if t and t.startswith("\n") and len(t) > 1]
    assert any(code_lm.token_texts[i].startswith("\n    ") for i in merged)  # ... that training merged away

    out = code_lm.complete(prompt, token_healing=True, temperature=0, max_new_tokens=6, logprobs=True)[0]
    first = out.tokens[0].id
    # the first token is the model's best among those that spell "\n" or start with it, given the prompt without its newline
    logits, _ = code_lm.model(torch.tensor([ids[:-1]]))
    allowed = torch.tensor([t is not None and (t.startswith("\n") or "\n".startswith(t)) for t in code_lm.token_texts])
    assert first == int(logits[0, -1].masked_fill(~allowed, float("-inf")).argmax())
    spelt = "".join(code_lm.token_texts[t.id] for t in out.tokens)
    assert spelt.startswith("\n") and out.text == spelt[1:]  # the re-spelt newline is not returned
    assert len(out.tokens) == 7  # max_new_tokens does not count the re-spelt token


def test_healed_and_plain_batches_agree_row_by_row(code_lm):
    prompts = ["def g(y):\n", "class B", "    return"]
    batch = code_lm.generate(prompts, token_healing=True, temperature=0, max_new_tokens=5)
    assert batch == [code_lm.generate(p, token_healing=True, temperature=0, max_new_tokens=5) for p in prompts]


def test_character_model_heals_to_the_same_output(trained_model):
    """With one character per token the removed token is the only one that re-spells it."""
    lm = arlm.load(trained_model, device="cpu")
    prompts = ["KING.\n", "What say you, my lo", "O"]
    kw = dict(temperature=0, max_new_tokens=12)
    assert lm.generate(prompts, token_healing=True, **kw) == lm.generate(prompts, **kw)


def test_stop_string_is_searched_after_the_re_spelt_text(code_lm):
    tok = code_lm.tokenizer
    stream = TextStream(tok, stop=["\n"], skip="\n")
    text = "".join(stream.push(i) for i in tok.encode("\n        return x\n    pass")) + stream.finish()
    assert text == "        return x"


def test_constraint_allows_only_tokens_that_spell_the_prefix():
    texts = ["a", "ab", "abc", "b", None]
    c = PrefixConstraint(texts, "ab")
    assert c.allowed([], 6).tolist() == [True, True, True, False, False, False]  # id 5: past the tokenizer
    # after "a", "b" is left: only tokens spelling "b..." remain
    assert c.allowed([0], 6).tolist() == [False, False, False, True, False, False]
    assert c.left([1, 3]) == "" and c.left([2]) == ""
    # once the prefix is spelt the constraint is done
    assert c.allowed([1], 6) is None and c.allowed([0, 3], 6) is None


@pytest.mark.parametrize("kw", [dict(num_beams=2), dict(draft_model="x")])
def test_token_healing_refuses_beams_and_drafts(kw):
    with pytest.raises(UserError, match="token_healing"):
        GenerateConfig(token_healing=True, **kw).validate()
