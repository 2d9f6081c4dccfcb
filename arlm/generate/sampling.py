"""Logits -> logits functions, each small and pure, and the sampler that composes them.

All take ``logits`` of shape (B, V) and return a new tensor; removed tokens get -inf. Each control is
one value for every row or one value per row (rows of one batch are different requests): a row's
result depends only on its own logits and values, never on the other rows'. The order in
:func:`process` follows Hugging Face ``generate``: penalties and bans first, then temperature, top-k,
top-p, min-p, typical-p, so the same controls give the same distribution (tested against
transformers' logits processors). Frequency/presence penalties and the logit bias are OpenAI's (API
reference, "frequency_penalty", "presence_penalty", "logit_bias"); they come after the Hugging Face
penalties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from arlm.config import SamplingParams
from arlm.errors import UserError

Values = float | Sequence[float]


def _column(values: Values, logits: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One value per row as a (B, 1) column (one value: every row)."""
    t = torch.as_tensor(values, dtype=dtype or logits.dtype, device=logits.device)
    return t.reshape(1, 1).expand(logits.size(0), 1) if t.dim() == 0 else t.reshape(-1, 1)


def _any_row(values: Values, off) -> bool:
    """Whether any row's control is on (``off(value)`` is False), decided on the host without a sync."""
    return any(not off(v) for v in (values if isinstance(values, (list, tuple)) else [values]))


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: Values) -> torch.Tensor:
    """CTRL penalty (Keskar et al. 2019): tokens ``seen`` (B, V) in a row's context have positive
    logits divided by the penalty and negative logits multiplied by it, so both become less likely."""
    if not _any_row(penalty, lambda p: p == 1.0):
        return logits
    p = _column(penalty, logits)
    return torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)


def context_seen(context: torch.Tensor, vocab_size: int, context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, V) bool: the tokens of each row of ``context`` (B, L) (where ``context_mask`` is True)."""
    seen = torch.zeros(context.size(0), vocab_size, dtype=torch.bool, device=context.device)
    if context.numel() == 0:
        return seen
    if context_mask is not None:  # point left padding at the row's last token, which counts anyway
        context = torch.where(context_mask.bool(), context, context[:, -1:])
    return seen.scatter_(1, context, True)


def banned_ngram_tokens(seq: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram already present in ``seq`` (Paulus et al. 2018)."""
    if n <= 0 or len(seq) < n:
        return []
    prefix = tuple(seq[len(seq) - n + 1:]) if n > 1 else ()
    banned = []
    for i in range(len(seq) - n + 1):
        if tuple(seq[i:i + n - 1]) == prefix:
            banned.append(seq[i + n - 1])
    return banned


def banned_sequence_tokens(seq: list[int], sequences: list[list[int]]) -> list[int]:
    """Bad words (Hugging Face's ``bad_words_ids``): for each banned token sequence, its last token
    wherever ``seq`` ends with the rest of it (a one-token sequence is always banned)."""
    out = []
    for bad in sequences:
        n = len(bad) - 1
        if len(seq) >= n and (n == 0 or seq[len(seq) - n:] == bad[:-1]):
            out.append(bad[-1])
    return out


def frequency_presence_penalty(logits: torch.Tensor, counts: torch.Tensor, frequency: Values,
                               presence: Values) -> torch.Tensor:
    """OpenAI's penalties: subtract ``frequency * count + presence * (count > 0)`` from each token's
    logit, ``counts`` (B, V) being the tokens generated so far (the prompt does not count, as in
    OpenAI's and vLLM's servers)."""
    if not _any_row(frequency, lambda v: v == 0) and not _any_row(presence, lambda v: v == 0):
        return logits
    f, p = _column(frequency, logits), _column(presence, logits)
    return logits - f * counts - p * (counts > 0).to(logits.dtype)


def temperature(logits: torch.Tensor, t: Values) -> torch.Tensor:
    if not _any_row(t, lambda v: v == 1.0):
        return logits
    return logits / _column(t, logits)


def top_k(logits: torch.Tensor, k: int | Sequence[int]) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (ties with the k-th are kept; 0: keep all)."""
    B, V = logits.shape
    ks = [k] * B if isinstance(k, int) else list(k)
    on = [0 < x < V for x in ks]
    if not any(on):
        return logits
    k_max = max(x for x, o in zip(ks, on) if o)
    index = _column([x - 1 if o else 0 for x, o in zip(ks, on)], logits, torch.long)  # (B, 1)
    kth = torch.topk(logits, k_max, dim=-1).values.gather(1, index)  # (B, 1)
    return logits.masked_fill((logits < kth) & _column(on, logits, torch.bool), float("-inf"))


def top_p(logits: torch.Tensor, p: Values) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probabilities sum to at least ``p``; the most likely token is always kept."""
    if not _any_row(p, lambda v: v >= 1.0):
        return logits
    ps = p if isinstance(p, (list, tuple)) else [p] * logits.size(0)
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= _column([1 - v for v in ps], logits)  # the low tail whose total mass is at most 1 - p
    remove_sorted[..., -1:] = False
    remove_sorted &= _column([v < 1.0 for v in ps], logits, torch.bool)
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def min_p(logits: torch.Tensor, p: Values) -> torch.Tensor:
    """Min-p filter (Nguyen et al. 2024): keep tokens whose probability is at least ``p`` times the
    most likely token's, so the cut adapts to how confident the model is."""
    if not _any_row(p, lambda v: v <= 0.0):
        return logits
    probs = logits.softmax(dim=-1)
    threshold = _column(p, logits) * probs.amax(dim=-1, keepdim=True)  # (B, 1); 0 where off
    remove = probs < threshold
    remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)  # the top token always stays
    return logits.masked_fill(remove, float("-inf"))


def typical_p(logits: torch.Tensor, mass: Values) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2023): rank tokens by how far their surprisal
    -log p is from the distribution's entropy H, and keep the closest ones until their probability
    adds up to ``mass``."""
    if not _any_row(mass, lambda v: v >= 1.0):
        return logits
    masses = mass if isinstance(mass, (list, tuple)) else [mass] * logits.size(0)
    logp = logits.log_softmax(dim=-1)
    entropy = -(logp.exp() * logp).nansum(dim=-1, keepdim=True)  # (B, 1); nansum: 0 * -inf terms
    distance = (-logp - entropy).abs()  # (B, V)
    sorted_dist, order = torch.sort(distance, dim=-1)
    cum = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    # index of the first token at which the kept mass reaches `mass` (the last token if never)
    last = (cum < _column(masses, logits)).sum(dim=-1, keepdim=True).clamp_(max=logits.size(-1) - 1)  # (B, 1)
    remove_sorted = sorted_dist > sorted_dist.gather(-1, last)
    remove_sorted[..., :1] = False  # the most typical token always stays
    remove_sorted &= _column([v < 1.0 for v in masses], logits, torch.bool)
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


@dataclass
class Controls:
    """The controls of one decoding step, one entry per row (each row's request's SamplingParams), and
    the per-row token state they need: ``seen`` (B, V) bool, the tokens of each row's context (the
    repetition penalty), ``counts`` (B, V), the tokens each row generated (frequency and presence
    penalties), ``banned`` (B, V) bool, what each row may not produce now (no-repeat n-grams, bad
    words, end-of-text before min_new_tokens, a structured-output or token-healing constraint), and
    ``bias`` (B, V), the logit bias. Tensors are None where no row needs them."""

    params: list[SamplingParams]
    seen: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    banned: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def values(self, name: str) -> list:
        return [getattr(p, name) for p in self.params]

    @property
    def greedy(self) -> list[bool]:
        return [p.greedy for p in self.params]


def penalise(logits: torch.Tensor, c: Controls) -> torch.Tensor:
    """The penalties, bans and biases of every row (what greedy decoding takes the argmax of)."""
    logits = logits.float()
    if c.seen is not None:
        logits = repetition_penalty(logits, c.seen, c.values("repetition_penalty"))
    if c.counts is not None:
        logits = frequency_presence_penalty(logits, c.counts, c.values("frequency_penalty"), c.values("presence_penalty"))
    if c.banned is not None:
        logits = logits.masked_fill(c.banned, float("-inf"))
    if c.bias is not None:
        logits = logits + c.bias
    # A strong penalty (repetition_penalty 1e-40 divides by it) can overflow float32 to +inf, whose softmax
    # is NaN: keep such tokens the most likely ones instead. (No-op for ordinary values.)
    return logits.clamp(max=torch.finfo(logits.dtype).max)


def process(logits: torch.Tensor, c: Controls) -> torch.Tensor:
    """Every control of every row, in transformers' order: the distribution each row samples from
    (greedy rows are left at temperature 1; they take the argmax of :func:`penalise`)."""
    return filters(penalise(logits, c), c)


def filters(logits: torch.Tensor, c: Controls) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p and typical-p of every row, after :func:`penalise`."""
    if all(c.greedy):
        return logits  # greedy: the remaining filters cannot change the argmax
    logits = temperature(logits, [1.0 if p.greedy else p.temperature for p in c.params])
    logits = top_k(logits, c.values("top_k"))
    logits = top_p(logits, c.values("top_p"))
    logits = min_p(logits, c.values("min_p"))
    return typical_p(logits, c.values("typical_p"))


def process_logits(logits: torch.Tensor, context: torch.Tensor, params: SamplingParams,
                   context_mask: torch.Tensor | None = None, banned: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None, generated: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`process` with the same ``params`` for every row of ``logits`` (B, V), from the context ids
    (B, L) (False in ``context_mask`` on padding): the repetition penalty and no-repeat n-grams come
    from the context, the frequency/presence penalties from the ``generated`` ids (B, G), and
    ``banned`` (B, V) / ``bias`` (V,) are added as they are."""
    V = logits.size(-1)
    if params.no_repeat_ngram_size:
        rows = context.tolist()
        if context_mask is not None:
            rows = [[t for t, keep in zip(r, m) if keep] for r, m in zip(rows, context_mask.tolist())]
        ngram = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        for b, row in enumerate(rows):
            ngram[b, banned_ngram_tokens(row, params.no_repeat_ngram_size)] = True
        banned = ngram if banned is None else banned | ngram
    counts = None
    if generated is not None and generated.numel():
        counts = torch.zeros_like(logits, dtype=torch.float).scatter_add_(1, generated, torch.ones_like(generated, dtype=torch.float))
    c = Controls([params] * logits.size(0), seen=context_seen(context, V, context_mask), counts=counts, banned=banned,
                 bias=None if bias is None else bias.expand(logits.size(0), -1))
    return process(logits, c)


def forced_token(params: SamplingParams, generated: int) -> int | None:
    """The token a sequence must produce now (transformers' ForcedBOS/ForcedEOS processors), or None."""
    if params.forced_bos_token_id is not None and generated == 0:
        return params.forced_bos_token_id
    if params.forced_eos_token_id is not None and generated == params.max_new_tokens - 1:
        return params.forced_eos_token_id
    return None


def sample(logits: torch.Tensor, greedy: list[bool], generators: list[torch.Generator | None],
           penalised: torch.Tensor | None = None) -> torch.Tensor:
    """Next token per row, (B,): the argmax of ``penalised`` (default ``logits``) for greedy rows, a
    draw from softmax(logits) with the row's own generator for the others (so a row's draw does not
    depend on which other rows share the batch).

    A draw is one uniform number per row placed on the row's cumulative distribution (inverse-CDF
    sampling, summed in float64): torch.multinomial draws an exponential per vocabulary entry, about
    1 ms a row for GPT-2's 50,257 tokens on one core, which at 16 rows took 15% of a decode step."""
    out = (logits if penalised is None else penalised).argmax(dim=-1)
    sampled = [b for b, g in enumerate(greedy) if not g]
    if not sampled:
        return out
    probs = torch.softmax(logits[sampled].float(), dim=-1)
    cdf = probs.double().cumsum(dim=-1)  # (S, V)
    total = cdf[:, -1]
    if bool(~torch.isfinite(total).all() | (total <= 0).any()):
        raise UserError("every token is banned at this step (bad_words, logit_bias, min_new_tokens or the "
                        "output format leave nothing to sample); loosen them")
    u = torch.stack([torch.rand((), dtype=torch.float64, generator=generators[b], device=cdf.device) for b in sampled])
    idx = torch.searchsorted(cdf, (u * total).unsqueeze(-1), right=True).squeeze(-1)  # first entry past the draw
    # u * total rounded up to total would land past the end: the last token with any probability instead
    V = probs.size(-1)
    last = V - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
    out[sampled] = torch.minimum(idx, last)
    return out


class PrefixConstraint:
    """Token healing (Lundberg, "The art of prompt design: prompt boundaries and token healing", 2023;
    transformers' ``token_healing``): the caller removes a prompt's last token, and the sequence's new
    tokens must first spell its text, ``prefix``. Only tokens consistent with what is left of the prefix
    are allowed, those that start with it or are a start of it, so the model chooses the token it
    would have seen in training (``"\\n    "`` rather than ``"\\n"`` + ``"    "``). ``token_texts[id]``
    is each token's text (None: never allowed while a prefix is left); shared by every request."""

    def __init__(self, token_texts: list[str | None], prefix: str):
        self.texts = token_texts
        self.prefix = prefix
        self._masks: dict[str, torch.Tensor] = {}

    def left(self, generated: list[int]) -> str:
        """What ``generated`` has not yet spelt of the prefix ("" once it has)."""
        done = 0
        for tok in generated:
            if done >= len(self.prefix):
                break
            done += len(self.texts[tok] or "")
        return self.prefix[done:]

    def allowed(self, generated: list[int], vocab_size: int) -> torch.Tensor | None:
        """(V,) bool: the tokens that may come next, or None once the prefix is spelt."""
        left = self.left(generated)
        if not left:
            return None
        if left not in self._masks:
            mask = torch.zeros(vocab_size, dtype=torch.bool)
            ok = [i for i, t in enumerate(self.texts[:vocab_size]) if t is not None and (t.startswith(left) or left.startswith(t))]
            mask[ok] = True  # ids past the tokenizer's (padded embedding rows) stay banned
            self._masks[left] = mask
        return self._masks[left]

    def fresh(self) -> "PrefixConstraint":
        return self  # a function of ``generated`` alone: one object serves every sequence


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int) -> tuple[torch.Tensor, ...]:
    """log-softmax of the model's raw ``logits`` (B, V) (before temperature, filters and penalties,
    as OpenAI's ``logprobs`` and transformers' ``output_logits``): the chosen tokens' (B,), and the
    ``top`` best ids and values (B, top)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = min(top, logp.size(-1))  # a vocabulary smaller than the alternatives asked for
    values, ids = torch.topk(logp, top, dim=-1) if top else (None, None)
    return logp.gather(1, chosen[:, None]).squeeze(1), ids, values
