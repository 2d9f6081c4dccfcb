"""Structured output: a request's JSON schema or regular expression as a token mask per step.

The grammar is compiled and matched by ``llguidance`` (Microsoft's Guidance team's Rust parser; the
same library vLLM and llama.cpp use for this): at each step it gives the set of tokens that keep the
output a prefix of some text the grammar accepts, and whether the output may end there. The engine
bans everything else before sampling (arlm/generate/engine.py), as do beam search and speculative
decoding, so end-of-text is possible only where the grammar accepts; a sequence with no allowed token
left (a finished grammar on a model without end-of-text, a vocabulary that cannot spell what comes
next) ends there.
"""

from __future__ import annotations

import copy
import json
import logging
import weakref

import numpy as np
import torch

from arlm.config import SamplingParams
from arlm.errors import UserError

log = logging.getLogger(__name__)

# Built once per tokenizer (a large vocabulary takes about a second).
_LL_TOKENIZERS: "weakref.WeakKeyDictionary[object, tuple]" = weakref.WeakKeyDictionary()
# Stop reasons that mean "no token can continue the text" (the vocabulary cannot spell what the
# grammar needs next), not a failure of the grammar (limits, internal errors).
NOTHING_MORE = ("NoExtension", "NoExtensionBias", "EndOfSentence")
# Compact JSON (no optional whitespace): a small or random model would otherwise fill the output with it.
JSON_OPTIONS = {"whitespace_flexible": False}


def grammar_text(params: SamplingParams) -> str | None:
    """The llguidance grammar of a request's ``json_schema`` or ``regex`` (None without either),
    checked: an invalid schema or expression is a UserError naming the problem."""
    if not (params.json_schema or params.regex):
        return None  # (before importing llguidance: plain decoding does not need it)
    import llguidance

    if params.json_schema:
        schema = params.parsed_json_schema()
        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=JSON_OPTIONS)
        except ValueError as e:
            raise UserError(f"json_schema cannot be used: {e}") from None
        what = "json_schema"
    else:
        grammar, what = llguidance.LLMatcher.grammar_from_regex(params.regex), "regex"
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem:
        raise UserError(f"{what} cannot be used: {_one_line(problem)}")
    return grammar


def _one_line(message: str) -> str:
    """llguidance's multi-line report (source excerpt, caret, error) as its one telling line."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    errors = [ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")]
    return (errors[0] if errors else lines[0] if lines else "unknown error")[:300]


def ll_tokenizer(tokenizer, vocab_size: int):
    """llguidance's view of an arlm tokenizer: (LLTokenizer, the id it treats as end-of-text)."""
    import llguidance

    hit = _LL_TOKENIZERS.get(tokenizer)
    if hit is not None and hit[0].vocab_size == max(vocab_size, tokenizer.vocab_size):
        return hit
    n = max(vocab_size, tokenizer.vocab_size)
    if hasattr(tokenizer, "tok"):  # byte-level BPE or a Hugging Face tokenizer: llguidance reads the same JSON
        try:
            ll = llguidance.LLTokenizer(tokenizer.tok.to_str(), n_vocab=n, eos_token=tokenizer.eot_id)
        except (ValueError, RuntimeError) as e:
            raise UserError(f"structured output cannot use this tokenizer ({_one_line(str(e))})") from None
    else:  # a character vocabulary: each id is its character's UTF-8 bytes
        ll = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_CharWrapper(tokenizer)), n_vocab=n)
    _LL_TOKENIZERS[tokenizer] = hit = (ll, ll.eos_token)
    return hit


class _ByteWrapper:
    """A vocabulary of the 256 bytes and an end token, which can spell any text: what a grammar accepts at all."""

    eos_token_id, bos_token_id, special_token_ids = 256, None, [256]
    tokens = [bytes([b]) for b in range(256)] + [b"<|end|>"]

    def __call__(self, text):
        return list(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)


def accepts_nothing(grammar: str) -> bool:
    """Whether ``grammar`` accepts no text at all, whatever the vocabulary (a schema that only refers to
    itself): with bytes as tokens, nothing may come first and the empty text is not accepted."""
    import llguidance

    global _BYTES
    if _BYTES is None:
        _BYTES = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteWrapper()), n_vocab=257)
    m = llguidance.LLMatcher(_BYTES, grammar, log_level=0)
    if m.is_error():
        return False  # reported by the caller's own matcher
    bits = np.unpackbits(np.frombuffer(m.compute_bitmask(), dtype=np.uint8), bitorder="little")
    return not bits[:256].any() and not m.is_accepting()


_BYTES = None


class _CharWrapper:
    """The attributes llguidance's TokenizerWrapper reads, for a CharTokenizer."""

    def __init__(self, tok):
        self.eos_token_id = tok.eot_id
        self.bos_token_id = None
        self.tokens = [c.encode("utf-8", "surrogatepass") for c in tok.chars] + [b"<|endoftext|>"]
        self.special_token_ids = [tok.eot_id]
        self._stoi = tok.stoi

    def __call__(self, text):
        text = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        return [self._stoi[c] for c in text if c in self._stoi]


class GrammarConstraint:
    """A request's grammar as the engine's Constraint: ``allowed(generated)`` is the (V,) mask of the
    tokens that may come next, with the end ids allowed only where the grammar accepts. The matcher
    follows whatever ``generated`` it is asked about (rolling back to the common prefix), so beam
    search and speculative decoding can ask about rows and drafts in any order; ``fresh()`` gives each
    sequence of a request its own matcher."""

    def __init__(self, grammar: str, tokenizer, vocab_size: int, end_ids: tuple[int, ...] | frozenset[int]):
        import llguidance

        self.grammar, self.tokenizer, self.vocab_size = grammar, tokenizer, vocab_size
        self.end_ids = sorted(end_ids)
        self._end_set = frozenset(end_ids)
        ll, self.ll_eos = ll_tokenizer(tokenizer, vocab_size)
        self.matcher = llguidance.LLMatcher(ll, grammar, log_level=0)
        if self.matcher.is_error():
            raise UserError(f"the output format cannot be used: {_one_line(self.matcher.get_error())}")
        self.consumed: list[int] = []
        first = self.allowed([], vocab_size)
        first[self.end_ids] = False
        if not first.any() and not self.matcher.is_accepting():
            if accepts_nothing(grammar):
                raise UserError("the output format accepts no text at all (a JSON schema whose only content is a $ref "
                                "to itself, or an empty enum); fix the schema or expression")
            raise UserError("this model's vocabulary cannot write any text the output format accepts "
                            "(its first character is not a token); use a model whose tokenizer covers it")

    def fresh(self) -> "GrammarConstraint":
        other = copy.copy(self)
        other.matcher = self.matcher.deep_copy()
        other.matcher.reset()
        other.consumed = []
        return other

    def _follow(self, generated: list[int]) -> bool:
        """Bring the matcher to ``generated``; False if that holds an end id (speculative decoding
        asks about drafts past one; only the end may follow it). The usual call extends what was
        consumed by one token, which costs one comparison of lists and one token."""
        n = len(self.consumed)
        if generated[:n] == self.consumed:
            common = n
        else:  # another beam, or a rejected draft: back to the common prefix
            common = next((i for i, (a, b) in enumerate(zip(self.consumed, generated)) if a != b),
                          min(n, len(generated)))
            self.matcher.rollback(n - common)
            del self.consumed[common:]
        for tok in generated[common:]:  # (what was consumed holds no end id)
            if tok in self._end_set:
                return False
            if not self.matcher.consume_token(tok):
                self._failed()
            self.consumed.append(tok)
        return True

    def _failed(self):
        """The matcher is in its error state: a grammar past llguidance's limits on this text (or a
        token it did not allow, which would be our bug). The request ends with the reason."""
        raise UserError(f"the output format could not be followed: {_one_line(self.matcher.get_error())}; "
                        f"simplify the schema or expression")

    def allowed(self, generated: list[int], vocab_size: int) -> torch.Tensor:
        if not self._follow(generated):
            mask = torch.zeros(vocab_size, dtype=torch.bool)
            mask[self.end_ids] = True
            return mask
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        if self.matcher.is_error():
            reason = (self.matcher.get_error().splitlines() or [""])[0].strip()
            if self.matcher.stop_reason() not in NOTHING_MORE and reason not in NOTHING_MORE:
                self._failed()
            return torch.zeros(vocab_size, dtype=torch.bool)  # nothing this vocabulary can write: it ends
        mask = torch.from_numpy(bits[:vocab_size].astype(bool))
        end = bool(bits[self.ll_eos]) if self.ll_eos is not None else False
        if self.ll_eos is not None and self.ll_eos < vocab_size:
            mask[self.ll_eos] = False
        if self.end_ids:
            mask[self.end_ids] = end
        return mask


def grammar_constraint(params: SamplingParams, tokenizer, vocab_size: int,
                       end_ids: tuple[int, ...] | frozenset[int]) -> GrammarConstraint | None:
    """The constraint of a request's ``json_schema``/``regex`` (None without one)."""
    grammar = grammar_text(params)
    if grammar is None:
        return None
    if tokenizer is None:
        raise UserError("structured output (json_schema, regex) needs the model's tokenizer files")
    return GrammarConstraint(grammar, tokenizer, vocab_size, end_ids)
