"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes
tokens, the target model checks them in one pass, over caches of the engine's kind."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from arlm.config import GenerateConfig
from arlm.generate.sampling import process_logits
from arlm.generate.step import prefill
from arlm.runtime import generator


@dataclass
class SpeculativeStats:
    """Draft tokens proposed and accepted by the target over one generation."""

    proposed: int = 0
    accepted: int = 0
    rounds: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def accept_or_resample(p: torch.Tensor, q: torch.Tensor, x: int, u: float,
                       generator: torch.Generator | None = None) -> tuple[bool, int]:
    """One step of speculative sampling (Leviathan et al. 2023, algorithm 1; Chen et al. 2023):
    keep the draft's token ``x`` ~ q with probability min(1, p(x) / q(x)) (``u`` is a uniform draw);
    otherwise draw from the residual norm(max(0, p - q)). The result is distributed exactly as p.
    ``p``, ``q``: probabilities (V,). Returns (accepted, token)."""
    if u * float(q[x]) < float(p[x]):  # u < p(x)/q(x) without dividing by a zero q(x)
        return True, x
    residual = (p - q).clamp(min=0)
    total = float(residual.sum())
    if total <= 0:  # p == q up to rounding: any draw from p is right
        residual, total = p, 1.0
    return False, int(torch.multinomial(residual / total, 1, generator=generator))


@torch.inference_mode()
def speculative_ids(target: torch.nn.Module, draft: torch.nn.Module, prompt: list[int], cfg: GenerateConfig,
                    eos_ids: tuple[int, ...] = (), num_draft: int = 4, stats: SpeculativeStats | None = None,
                    banned: Callable[[list[int]], torch.Tensor | None] = lambda seq: None,
                    bias: torch.Tensor | None = None) -> Iterator[int]:
    """Generate one sequence with the ``target`` model, proposing ``num_draft`` tokens at a time with
    the smaller ``draft`` model and checking them with one target forward pass over all of them.

    Greedy decoding gives exactly the target's greedy tokens (a draft token is kept only if it is the
    target's argmax). With sampling, each draft token is kept or replaced by
    :func:`accept_or_resample`, so the output follows the target's distribution after the same
    controls (temperature, filters, penalties, computed with each position's own context). Both
    models must share the tokenizer, and prompt + max_new_tokens + num_draft must fit both context
    windows (no sliding here). ``stats`` (optional) collects the acceptance rate; ``banned(seq)``
    gives what may not follow ``seq`` (bad words, end-of-text before min_new_tokens, an output
    format's grammar). Each model has a one-row cache of the engine's kind; a rejected draft is
    undone by writing later positions again (the mask hides what lies beyond).
    """
    t0 = time.monotonic()
    stats = stats if stats is not None else SpeculativeStats()
    params = cfg.sampling_params()
    assert target.config.vocab_size == draft.config.vocab_size, "target and draft need the same vocabulary"
    total = len(prompt) + cfg.max_new_tokens + num_draft
    limit = min(target.config.block_size, draft.config.block_size)
    if total > limit:
        raise ValueError(f"speculative decoding needs prompt + max_new_tokens + num_draft <= block_size ({total} > {limit})")
    assert prompt and num_draft >= 1
    device = next(target.parameters()).device
    greedy = cfg.greedy
    gen = generator(cfg.seed) if cfg.seed is not None else None
    eos = set(eos_ids)
    L = len(prompt)
    seq = list(prompt)

    def dist(logits: torch.Tensor, context: list[int]) -> torch.Tensor:
        """Processed next-token scores (V,) after ``context``: logits for greedy, probabilities otherwise."""
        ctx = torch.tensor([context], device=device)
        ban = banned(context)
        scores = process_logits(logits[None], ctx, params, banned=None if ban is None else ban[None], bias=bias,
                                generated=ctx[:, L:])[0]
        return scores if greedy else torch.softmax(scores, dim=-1).cpu()

    def draw(scores: torch.Tensor) -> int:
        return int(scores.argmax()) if greedy else int(torch.multinomial(scores, 1, generator=gen))

    t_cache, d_cache = target.new_cache(1, total), draft.new_cache(1, total)
    # Both caches hold seq[:-1]; each round feeds the tokens a model has not seen yet.
    t_len = d_len = L - 1
    if t_len:
        prefill(target, t_cache, seq[:-1])
        prefill(draft, d_cache, seq[:-1])
    produced = 0
    while produced < cfg.max_new_tokens:
        k = min(num_draft, cfg.max_new_tokens - produced)
        # 1. the draft proposes k tokens, one at a time
        proposals, q = [], []
        feed = seq[d_len:]
        for j in range(k):
            logits = prefill(draft, d_cache, feed, d_len)[0]
            d_len += len(feed)
            q.append(dist(logits, seq + proposals))
            proposals.append(draw(q[-1]))
            feed = [proposals[-1]]
        # 2. the target scores all of them in one pass: rows for positions after seq[-1], x_1 .. x_k
        chunk = seq[t_len:] + proposals
        t_rows = prefill(target, t_cache, chunk, t_len, last_only=False)[-(k + 1):]  # (k+1, V)
        # 3. keep the longest acceptable prefix, then one token from the target
        accepted = []
        for j, x in enumerate(proposals):
            p = dist(t_rows[j], seq + accepted)
            if greedy:
                ok, tok = int(p.argmax()) == x, int(p.argmax())
            else:
                u = float(torch.rand(1, generator=gen))
                ok, tok = accept_or_resample(p, q[j], x, u, gen)
            if not ok:
                break
            accepted.append(x)
        else:
            tok = draw(dist(t_rows[k], seq + accepted))  # every draft token kept: a bonus token
        stats.rounds += 1
        stats.proposed += k
        stats.accepted += len(accepted)
        # caches: keep what matches the new sequence (later slots are overwritten next round)
        t_len = len(seq) + len(accepted)
        d_len = min(d_len, len(seq) + len(accepted))
        new = accepted + [tok]
        seq += new
        for tid in new[:cfg.max_new_tokens - produced]:
            produced += 1
            yield tid
            if tid in eos:
                return
        if cfg.max_time and time.monotonic() - t0 >= cfg.max_time:
            return
