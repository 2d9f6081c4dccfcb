"""Logits -> logits functions, each small and pure, and the sampler that composes them.

All take ``logits`` of shape (B, V) and return a new tensor; removed tokens get -inf. The order
in :func:`process_logits` follows Hugging Face ``generate``: penalties and bans first, then temperature,
top-k, top-p, min-p, typical-p, so the same controls give the same distribution (tested against
transformers' logits processors). Frequency/presence penalties and the logit bias are OpenAI's
(API reference, "frequency_penalty", "presence_penalty", "logit_bias"); they come after the
Hugging Face penalties.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from arlm.config import GenerateConfig
from arlm.errors import UserError


def repetition_penalty(logits: torch.Tensor, context: torch.Tensor, penalty: float,
                       context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """CTRL penalty (Keskar et al. 2019): tokens in ``context`` (B, L) have positive logits divided
    by ``penalty`` and negative logits multiplied by it, so both become less likely. Positions where
    ``context_mask`` is False (padding) do not count."""
    if penalty == 1.0 or context.numel() == 0:
        return logits
    if context_mask is not None:  # point padding at the row's last token: already counted, so no effect
        context = torch.where(context_mask, context, context[:, -1:])
    seen = torch.gather(logits, 1, context)  # (B, L)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return logits.scatter(1, context, seen)


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


def no_repeat_ngram(logits: torch.Tensor, context: torch.Tensor, n: int,
                    context_mask: torch.Tensor | None = None) -> torch.Tensor:
    if n <= 0:
        return logits
    out = logits.clone()
    seqs = context.tolist()
    if context_mask is not None:  # left padding: each row's real tokens only
        seqs = [[t for t, keep in zip(seq, row) if keep] for seq, row in zip(seqs, context_mask.tolist())]
    for b, seq in enumerate(seqs):
        banned = banned_ngram_tokens(seq, n)
        if banned:
            out[b, banned] = float("-inf")
    return out


def frequency_presence_penalty(logits: torch.Tensor, generated: torch.Tensor, frequency: float,
                               presence: float) -> torch.Tensor:
    """OpenAI's penalties: subtract ``frequency * count + presence * (count > 0)`` from each token's
    logit, counting the tokens generated so far in ``generated`` (B, G) (the prompt does not count,
    as in OpenAI's and vLLM's servers)."""
    if (frequency == 0 and presence == 0) or generated.numel() == 0:
        return logits
    counts = torch.zeros_like(logits).scatter_add_(1, generated, torch.ones_like(generated, dtype=logits.dtype))
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def ban_sequences(logits: torch.Tensor, context: torch.Tensor, sequences: list[list[int]] | tuple = (),
                  context_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bad words (Hugging Face's ``bad_words_ids``): for each banned token sequence, forbid its last
    token wherever the context ends with the rest of it (a one-token sequence is always forbidden)."""
    if not sequences:
        return logits
    out = logits.clone()
    always = [seq[0] for seq in sequences if len(seq) == 1]
    if always:
        out[:, always] = float("-inf")
    longer = [seq for seq in sequences if len(seq) > 1]
    if longer:
        rows = context.tolist()
        if context_mask is not None:
            rows = [[t for t, keep in zip(r, m) if keep] for r, m in zip(rows, context_mask.tolist())]
        for b, row in enumerate(rows):
            for seq in longer:
                n = len(seq) - 1
                if len(row) >= n and row[len(row) - n:] == seq[:-1]:
                    out[b, seq[-1]] = float("-inf")
    return out


def suppress(logits: torch.Tensor, token_ids: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Forbid ``token_ids`` (e.g. the end-of-text tokens before min_new_tokens)."""
    return logits.index_fill(1, torch.tensor(list(token_ids), device=logits.device), float("-inf")) if token_ids else logits


def add_bias(logits: torch.Tensor, bias: dict[int, float] | None) -> torch.Tensor:
    """OpenAI's ``logit_bias``: add a fixed value to chosen tokens' logits (-100 bans, +100 forces)."""
    if not bias:
        return logits
    ids = torch.tensor(list(bias), device=logits.device)
    values = torch.tensor(list(bias.values()), dtype=logits.dtype, device=logits.device)
    return logits.index_add(1, ids, values.expand(logits.size(0), -1))


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    return logits if t == 1.0 else logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits per row (ties with the k-th are kept)."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
    probabilities sum to at least ``p``; the most likely token is always kept."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - p)  # the low tail whose total mass is at most 1 - p
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Min-p filter (Nguyen et al. 2024): keep tokens whose probability is at least ``p`` times the
    most likely token's, so the cut adapts to how confident the model is."""
    if p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = p * probs.amax(dim=-1, keepdim=True)  # (B, 1)
    remove = probs < threshold
    remove.scatter_(-1, probs.argmax(dim=-1, keepdim=True), False)  # the top token always stays
    return logits.masked_fill(remove, float("-inf"))


def typical_p(logits: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2023): rank tokens by how far their surprisal
    -log p is from the distribution's entropy H, and keep the closest ones until their probability
    adds up to ``mass``."""
    if mass >= 1.0:
        return logits
    logp = logits.log_softmax(dim=-1)
    entropy = -(logp.exp() * logp).nansum(dim=-1, keepdim=True)  # (B, 1); nansum: 0 * -inf terms
    distance = (-logp - entropy).abs()  # (B, V)
    sorted_dist, order = torch.sort(distance, dim=-1)
    cum = logits.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    # index of the first token at which the kept mass reaches `mass` (the last token if never)
    last = (cum < mass).sum(dim=-1, keepdim=True).clamp_(max=logits.size(-1) - 1)  # (B, 1)
    remove_sorted = sorted_dist > sorted_dist.gather(-1, last)
    remove_sorted[..., :1] = False  # the most typical token always stays
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


class PrefixConstraint:
    """Token healing (Lundberg, "The art of prompt design: prompt boundaries and token healing", 2023;
    transformers' ``token_healing``): the caller removes a prompt's last token, and each row's new
    tokens must first spell its text, ``prefixes[row]``. Only tokens consistent with what is left of
    the prefix are allowed, those that start with it or are a start of it, so the model chooses the
    token it would have seen in training (``"\\n    "`` rather than ``"\\n"`` + ``"    "``).
    ``token_texts[id]`` is each token's text (None: never allowed while a prefix is left)."""

    def __init__(self, token_texts: list[str | None], prefixes: list[str]):
        self.texts = token_texts
        self.prefixes = prefixes
        self.spelt = not any(prefixes)  # every row has spelt its prefix: nothing left to constrain
        self._masks: dict[str, torch.Tensor] = {}

    def left(self, row: int, generated: list[int]) -> str:
        """What ``generated`` has not yet spelt of the row's prefix ("" once it has)."""
        prefix, done = self.prefixes[row], 0
        for tok in generated:
            if done >= len(prefix):
                break
            done += len(self.texts[tok] or "")
        return prefix[done:]

    def allowed(self, left: str) -> torch.Tensor:
        """(V,) bool: the tokens that may come next while ``left`` remains to be spelt."""
        if left not in self._masks:
            self._masks[left] = torch.tensor([t is not None and (t.startswith(left) or left.startswith(t))
                                              for t in self.texts])
        return self._masks[left]


def constrain_prefix(logits: torch.Tensor, generated: torch.Tensor, constraint: PrefixConstraint) -> torch.Tensor:
    """Ban, in each row still spelling its prefix, every token inconsistent with the rest of it. Once
    every row has spelt its prefix (a token or two), later steps skip this (no more host reads of
    ``generated``, which grows by a token per step)."""
    if constraint.spelt:
        return logits
    lefts = [constraint.left(b, row) for b, row in enumerate(generated.tolist())]
    constraint.spelt = not any(lefts)
    keep = torch.ones_like(logits, dtype=torch.bool)
    for b, left in enumerate(lefts):
        if left:
            mask = constraint.allowed(left).to(logits.device)
            keep[b, :mask.numel()] = mask
            keep[b, mask.numel():] = False  # ids past the tokenizer's (padded embedding rows)
    return logits.masked_fill(~keep, float("-inf"))


@dataclass
class Rules:
    """Decoding constraints that need token ids (resolved from text by the caller) or the step number."""

    eos_ids: tuple[int, ...] = ()
    bad_words_ids: list[list[int]] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    prefix: PrefixConstraint | None = None  # token healing


def process_logits(logits: torch.Tensor, context: torch.Tensor, cfg: GenerateConfig,
                   context_mask: torch.Tensor | None = None, rules: Rules | None = None,
                   generated: torch.Tensor | None = None) -> torch.Tensor:
    """Apply every enabled control to next-token ``logits`` (B, V) given ``context`` ids (B, L)
    (``context_mask`` (B, L): False on left padding, which the penalties ignore). ``generated``
    (B, G) are the tokens generated so far (the last G of the context): they drive the frequency and
    presence penalties and min_new_tokens, which holds back the ``rules.eos_ids`` while G is smaller."""
    logits = logits.float()
    rules = rules or Rules()
    logits = repetition_penalty(logits, context, cfg.repetition_penalty, context_mask)
    logits = no_repeat_ngram(logits, context, cfg.no_repeat_ngram_size, context_mask)
    logits = ban_sequences(logits, context, rules.bad_words_ids, context_mask)
    if generated is not None:
        logits = frequency_presence_penalty(logits, generated, cfg.frequency_penalty, cfg.presence_penalty)
        if generated.size(1) < cfg.min_new_tokens:
            logits = suppress(logits, rules.eos_ids)
    logits = add_bias(logits, rules.logit_bias)
    if rules.prefix is not None and generated is not None:
        logits = constrain_prefix(logits, generated, rules.prefix)
    # A strong penalty (repetition_penalty 1e-40 divides by it) can overflow float32 to +inf, whose softmax
    # is NaN: keep such tokens the most likely ones instead. (No-op for ordinary values.)
    logits = logits.clamp(max=torch.finfo(logits.dtype).max)
    if cfg.greedy:
        return logits  # greedy: the remaining filters cannot change the argmax
    logits = temperature(logits, cfg.temperature)
    logits = top_k(logits, cfg.top_k)
    logits = top_p(logits, cfg.top_p)
    logits = min_p(logits, cfg.min_p)
    return typical_p(logits, cfg.typical_p)


def sample(logits: torch.Tensor, greedy: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row, (B,): the argmax, or a draw from softmax(logits)."""
    if greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits, dim=-1)
    try:
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
    except RuntimeError:
        if not bool(torch.isinf(logits).all(dim=-1).any()):
            raise
        # (checked only after the draw fails: no extra work, nor a host sync, on every step)
        raise UserError("every token is banned at this step (bad_words, logit_bias and min_new_tokens leave nothing "
                        "to sample); loosen them") from None
