"""Beam search over the engine's cache and decode step: one cache row per beam, reordered as beams
survive (Graves 2012; as in Hugging Face ``generate``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlm.config import GenerateConfig
from arlm.generate.sampling import banned_sequence_tokens, process_logits
from arlm.generate.step import decode_step, prefill


def _beam_banned(rows: list[list[int]], generated: int, min_new_tokens: int, eos_ids, bad_words,
                 shape, device, constraint=None, live: list[bool] | None = None) -> torch.Tensor | None:
    """(nb, V) bool: bad words completed by each beam, end-of-text before min_new_tokens, and what a
    structured-output ``constraint`` does not allow after each live beam (a beam with nothing
    allowed may only end)."""
    if not bad_words and not (generated < min_new_tokens and eos_ids) and constraint is None:
        return None
    banned = torch.zeros(shape, dtype=torch.bool, device=device)
    for b, row in enumerate(rows):
        banned[b, banned_sequence_tokens(row, list(bad_words))] = True
    if generated < min_new_tokens:
        banned[:, list(eos_ids)] = True
    if constraint is not None:
        L0 = len(rows[0]) - generated
        for b, row in enumerate(rows):
            if live is None or live[b]:  # dead rows (impossible scores) may hold tokens the grammar refused
                banned[b] |= ~constraint.allowed(row[L0:], shape[-1]).to(device)
                if bool(banned[b].all()):
                    banned[b, list(eos_ids)] = False
    return banned


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens (prompt excluded), ending with the EOS token if one was emitted
    score: float  # sum of token log-probabilities / len(tokens) ** length_penalty


@torch.inference_mode()
def beam_search(model: torch.nn.Module, prompt: list[int], cfg: GenerateConfig, eos_ids: tuple[int, ...] = (),
                early_stopping: bool | str | None = None, bad_words: list[list[int]] | tuple = (),
                bias: torch.Tensor | None = None, constraint=None) -> list[Hypothesis]:
    """Beam search (Graves 2012; as in Hugging Face ``generate``): ``cfg.num_return_sequences`` best
    hypotheses first, using ``cfg.num_beams``, ``max_new_tokens``, ``length_penalty``, ``early_stopping``
    (``early_stopping`` here overrides it, and may also be ``"never"``), and the penalties
    (repetition, no-repeat-ngram, bad words, logit bias, min_new_tokens) applied to the
    log-probabilities as transformers does, and a structured-output ``constraint`` (arlm/generate/grammar.py).

    Each step extends every live beam by every token and keeps the ``num_beams`` best continuations by
    summed log-probability. A continuation that emits EOS, or reaches ``max_new_tokens``, becomes a
    finished hypothesis scored ``sum_logprob / length ** length_penalty`` (length = generated tokens),
    and the best ``num_beams`` finished ones are kept. As in transformers, ``2 * num_beams`` candidates
    (more with several EOS ids) are ranked per step so enough stay live when the best ones end;
    only candidates within the top ``num_beams`` may finish. Search stops when every candidate has
    stopped, when ``early_stopping=True`` and ``num_beams`` hypotheses are finished, or when no live
    beam can beat the worst finished one: the bound assumes the score at the current length
    (``early_stopping`` False) or, for ``"never"`` with a positive length penalty, at the maximum length.
    """
    num_beams, max_new_tokens, length_penalty = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    early_stopping = cfg.early_stopping if early_stopping is None else early_stopping
    assert prompt and 1 <= cfg.num_return_sequences <= num_beams
    penalties = cfg.sampling_params(temperature=0.0)  # process_logits then applies only the penalties
    L0, nb = len(prompt), num_beams
    max_len = L0 + max_new_tokens
    if max_len > model.config.block_size:
        raise ValueError(f"beam search needs prompt + max_new_tokens <= block_size ({max_len} > {model.config.block_size})")
    device = next(model.parameters()).device
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    K = max(2, 1 + len(eos_ids)) * nb  # candidates ranked per step
    in_top = torch.arange(K, device=device) < nb  # only these may finish
    NEG = -1.0e9  # "impossible" score, kept finite so sums stay ordered as in transformers

    seqs = torch.zeros(nb, max_len, dtype=torch.long, device=device)
    seqs[:, :L0] = torch.tensor(prompt, device=device)
    live_scores = torch.full((nb,), NEG, device=device)
    live_scores[0] = 0.0  # all beams start identical: expand only the first
    fin_seqs, fin_scores = seqs.clone(), torch.full((nb,), NEG, device=device)
    fin_lens = torch.zeros(nb, dtype=torch.long, device=device)
    fin_done = torch.zeros(nb, dtype=torch.bool, device=device)
    improvable = True

    cache = model.new_cache(nb, max_len)  # every beam a row; row 0 holds the prompt, copied to the rest
    logits = prefill(model, cache.view(0, 1), prompt).expand(nb, -1) if max_new_tokens > 0 else None
    for b in range(1, nb):
        cache.copy_row(0, b, L0)
    cur = L0
    while logits is not None:
        banned = _beam_banned(seqs[:, :cur].tolist(), cur - L0, cfg.min_new_tokens, eos_ids, bad_words, logits.shape,
                              device, constraint, (live_scores > NEG / 2).tolist())
        logp = process_logits(torch.log_softmax(logits.float(), dim=-1), seqs[:, :cur], penalties,
                              banned=banned, bias=bias, generated=seqs[:, L0:cur])  # (nb, V)
        V = logp.size(-1)
        total = (logp + live_scores[:, None]).view(-1)  # (nb*V,)
        top_scores, top_idx = torch.topk(total, K)  # (K,) best first
        src, tok = top_idx // V, top_idx % V
        cand = seqs[src]  # (K, max_len)
        cand[:, cur] = tok
        stops = torch.isin(tok, eos) | (cur + 1 >= max_len)  # (K,)

        # live beams for the next step: the best candidates that did not stop
        live_rank = top_scores + stops.float() * NEG
        keep = torch.topk(live_rank, nb).indices
        seqs, live_scores, src_rows = cand[keep], live_rank[keep], src[keep]

        # finished hypotheses: merge this step's stopped top candidates into the best nb so far
        gen_len = cur + 1 - L0
        new_scores = top_scores / gen_len ** length_penalty
        if early_stopping is True and bool(fin_done.all()):
            new_scores = new_scores + NEG  # full, and the caller asked to stop at full
        if not improvable:
            new_scores = new_scores + NEG
        finishing = stops & in_top
        new_scores = new_scores + (~finishing).float() * NEG
        merged = torch.cat([fin_scores, new_scores])
        pick = torch.topk(merged, nb).indices
        fin_scores = merged[pick]
        fin_seqs = torch.cat([fin_seqs, cand])[pick]
        fin_lens = torch.cat([fin_lens, torch.full((K,), gen_len, device=device)])[pick]
        fin_done = torch.cat([fin_done, finishing])[pick]

        cur += 1
        best_len = (max_len - L0) if (early_stopping == "never" and length_penalty > 0) else (cur - L0)
        best_possible = live_scores[0] / best_len ** length_penalty
        worst = torch.where(fin_done, fin_scores.min(), NEG)  # an open slot can take anything
        improvable = improvable and bool((best_possible > worst).any())
        if not improvable or (early_stopping is True and bool(fin_done.all())) or bool(stops.all()):
            break
        cache.reorder(src_rows)
        logits = decode_step(model, cache, seqs[:, cur - 1:cur], torch.full((nb, 1), cur - 1, device=device), cur)
    return [Hypothesis(fin_seqs[i, L0:L0 + int(fin_lens[i])].tolist(), float(fin_scores[i]))
            for i in range(cfg.num_return_sequences)]


def beam_bytes(model: torch.nn.Module, num_beams: int, length: int) -> int:
    """Memory of beam search: the beams' cache and logits, plus the 2 x num_beams candidate and finished
    sequences and the scores of every beam's every next token."""
    window = min(length, model.config.block_size)
    return (model.cache_bytes(num_beams, window) + num_beams * length * 9 + num_beams * model.config.vocab_size * 4 * 8
            + 6 * num_beams * length * 8 + num_beams * model.config.vocab_size * 4 * 6)
