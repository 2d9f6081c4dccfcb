"""Beam search over the engine's cache and decode step: one cache row per beam, reordered as beams
survive (Graves 2012; as in Hugging Face ``generate``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlm.config import GenerateConfig
from arlm.generate.sampling import banned_sequence_tokens, forced_token, process_logits
from arlm.generate.step import decode_step, prefill
from arlm.model import kernels


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


def beam_search(model: torch.nn.Module, prompt: list[int], cfg: GenerateConfig, eos_ids: tuple[int, ...] = (),
                early_stopping: bool | str | None = None, bad_words: list[list[int]] | tuple = (),
                bias: torch.Tensor | None = None, constraint=None, source: list[int] | None = None) -> list[Hypothesis]:
    """:func:`beam_search_batch` for one prompt (an encoder-decoder's: its ``source``)."""
    return beam_search_batch(model, [prompt], cfg, eos_ids, early_stopping, bad_words, bias, constraint,
                             None if source is None else [source])[0]


def _start(model: torch.nn.Module, cache, prompts: list[list[int]], sources: list[list[int]] | None,
           nb: int) -> torch.Tensor:
    """Run each prompt (after its source, for an encoder-decoder) into the first row of its ``nb`` rows
    and copy it to the others; each prompt's next-token logits, repeated per beam (N * nb, V)."""
    device = next(model.parameters()).device
    first = []
    for n, prompt in enumerate(prompts):
        row = n * nb
        if sources is not None:
            model.prime_cache(cache.view(row, row + 1), torch.tensor([sources[n]], device=device))
        first.append(prefill(model, cache.view(row, row + 1), prompt))
        for b in range(1, nb):
            cache.copy_row(row, row + b, len(prompt))
    return torch.cat(first).repeat_interleave(nb, dim=0)


@torch.inference_mode()
def beam_search_batch(model: torch.nn.Module, prompts: list[list[int]], cfg: GenerateConfig,
                      eos_ids: tuple[int, ...] = (), early_stopping: bool | str | None = None,
                      bad_words: list[list[int]] | tuple = (), bias: torch.Tensor | None = None, constraint=None,
                      sources: list[list[int]] | None = None) -> list[list[Hypothesis]]:
    """Beam search (Graves 2012; as in Hugging Face ``generate``) over several prompts at once: for each,
    ``cfg.num_return_sequences`` best hypotheses first. See :func:`_search`. The many rows (prompts x
    beams) take the fastest matrix products measured here (arlm/model/kernels: throughput mode)."""
    with kernels.throughput_mode():
        return _search(model, prompts, cfg, eos_ids, early_stopping, bad_words, bias, constraint, sources)


def _search(model: torch.nn.Module, prompts: list[list[int]], cfg: GenerateConfig, eos_ids: tuple[int, ...],
            early_stopping: bool | str | None, bad_words: list[list[int]] | tuple, bias: torch.Tensor | None,
            constraint, sources: list[list[int]] | None) -> list[list[Hypothesis]]:
    """Beam search over several prompts: for each, ``cfg.num_return_sequences`` best hypotheses first,
    using ``cfg.num_beams``, ``max_new_tokens``,
    ``length_penalty``, ``early_stopping`` (``early_stopping`` here overrides it, and may also be
    ``"never"``), the penalties (repetition, no-repeat-ngram, bad words, logit bias, min_new_tokens,
    forced first/last token) applied to the log-probabilities as transformers does, and a
    structured-output ``constraint`` (arlm/generate/grammar.py). An encoder-decoder's ``sources`` are
    encoded once each; its prompts are the decoder's start.

    Every prompt's beams are rows of one cache, at each row's own positions, so prompts of any
    lengths step together: one decode step feeds all N x num_beams rows. Per prompt, each step
    extends every live beam by every token and keeps the ``num_beams`` best continuations by summed
    log-probability. A continuation that emits EOS, or reaches ``max_new_tokens``, becomes a finished
    hypothesis scored ``sum_logprob / length ** length_penalty`` (length = generated tokens), and the
    best ``num_beams`` finished ones are kept. As in transformers, ``2 * num_beams`` candidates (more
    with several EOS ids) are ranked per step so enough stay live when the best ones end; only
    candidates within the top ``num_beams`` may finish. A prompt's search stops when every candidate
    has stopped, when ``early_stopping=True`` and ``num_beams`` hypotheses are finished, or when no
    live beam can beat the worst finished one: the bound assumes the score at the current length
    (``early_stopping`` False) or, for ``"never"`` with a positive length penalty, at the maximum
    length. A stopped prompt's results stay as they are while the others go on.
    """
    nb, G, length_penalty = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty
    early_stopping = cfg.early_stopping if early_stopping is None else early_stopping
    N = len(prompts)
    assert N and all(prompts) and 1 <= cfg.num_return_sequences <= nb
    if G == 0:
        return [[Hypothesis([], 0.0) for _ in range(cfg.num_return_sequences)] for _ in prompts]
    penalties = cfg.sampling_params(temperature=0.0)  # process_logits then applies only the penalties
    lengths = [len(p) for p in prompts]
    if max(lengths) + G > model.config.block_size:
        raise ValueError(f"beam search needs prompt + max_new_tokens <= block_size "
                         f"({max(lengths) + G} > {model.config.block_size})")
    device = next(model.parameters()).device
    R = N * nb
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    K = max(2, 1 + len(eos_ids)) * nb  # candidates ranked per step
    in_top = torch.arange(K, device=device) < nb  # only these may finish
    NEG = -1.0e9  # "impossible" score, kept finite so sums stay ordered as in transformers
    L0 = torch.tensor(lengths, device=device).repeat_interleave(nb)  # (R,) each row's prompt length
    Lmax = max(lengths)
    ctx, ctx_mask = _prompt_rows(prompts, nb, device)

    gen = torch.zeros(N, nb, G, dtype=torch.long, device=device)  # generated tokens of the live beams
    live_scores = torch.full((N, nb), NEG, device=device)
    live_scores[:, 0] = 0.0  # all beams start identical: expand only the first
    fin = _Finished(gen.clone(), torch.full((N, nb), NEG, device=device), torch.zeros(N, nb, dtype=torch.long, device=device),
                    torch.zeros(N, nb, dtype=torch.bool, device=device))
    active = torch.ones(N, dtype=torch.bool, device=device)  # prompts still searching

    # sources of up to the longest one: the cross-attention part is no bigger than this batch needs
    cache = model.new_cache(R, Lmax + G, **({"source_len": max(map(len, sources))} if sources is not None else {}))
    logits = _start(model, cache, prompts, sources, nb)
    g = 0
    while True:
        generated = gen.view(R, G)[:, :g]
        banned = _banned_rows(prompts, generated, g, cfg, eos_ids, bad_words, logits.shape, device, constraint,
                              live_scores.view(-1) > NEG / 2, nb)
        logp = _log_probs(logits, penalties, ctx, ctx_mask, generated, banned, bias, g)  # (R, V)
        V = logp.size(-1)
        total = (logp.view(N, nb, V) + live_scores[..., None]).view(N, nb * V)
        top_scores, top_idx = torch.topk(total, K, dim=1)  # (N, K) best first
        src, tok = top_idx // V, top_idx % V
        cand = torch.gather(gen, 1, src[..., None].expand(N, K, G)).clone()  # (N, K, G)
        cand[:, :, g] = tok
        stops = torch.isin(tok, eos) | (g + 1 >= G)  # (N, K)

        # live beams for the next step: the best candidates that did not stop
        live_rank = top_scores + stops.float() * NEG
        keep = torch.topk(live_rank, nb, dim=1).indices  # (N, nb)
        new_gen = torch.gather(cand, 1, keep[..., None].expand(N, nb, G))
        new_live = torch.gather(live_rank, 1, keep)
        src_rows = torch.gather(src, 1, keep) + torch.arange(N, device=device)[:, None] * nb  # (N, nb) cache rows

        # finished hypotheses: this step's stopped top candidates, scored by length, join the best nb so far
        finishing = stops & in_top
        fin.merge(cand, top_scores / (g + 1) ** length_penalty + (~finishing).float() * NEG, finishing, g + 1, active)
        gen, live_scores = new_gen, new_live

        g += 1
        best_len = G if (early_stopping == "never" and length_penalty > 0) else g
        best_possible = live_scores[:, 0] / best_len ** length_penalty  # (N,)
        worst = torch.where(fin.done, fin.scores.min(dim=1, keepdim=True).values, NEG)  # an open slot takes anything
        improvable = (best_possible[:, None] > worst).any(dim=1)
        full = fin.done.all(dim=1) if early_stopping is True else torch.zeros_like(active)
        active = active & improvable & ~full & ~stops.all(dim=1)
        if not bool(active.any()):
            break
        cache.reorder(src_rows.view(-1), Lmax + g - 1)  # the positions written so far
        pos = (L0 + g - 1)[:, None]  # (R, 1) each row feeds its last token at its own position
        logits = decode_step(model, cache, gen.view(R, G)[:, g - 1:g], pos, Lmax + g)
    return [[Hypothesis(fin.gen[n, i, :int(fin.lens[n, i])].tolist(), float(fin.scores[n, i]))
             for i in range(cfg.num_return_sequences)] for n in range(N)]


@dataclass
class _Finished:
    """Each prompt's best ``nb`` finished hypotheses: tokens (N, nb, G), scores, lengths, and whether a
    slot holds one (an empty slot scores NEG)."""

    gen: torch.Tensor
    scores: torch.Tensor
    lens: torch.Tensor
    done: torch.Tensor

    def merge(self, cand: torch.Tensor, scores: torch.Tensor, finishing: torch.Tensor, length: int,
              active: torch.Tensor) -> None:
        """Keep the best nb of the kept and this step's candidates (N, K, ...); a stopped prompt's stay."""
        N, nb, G = self.gen.shape
        merged = torch.cat([self.scores, scores], 1)  # (N, nb + K)
        pick = torch.topk(merged, nb, dim=1).indices
        old = ~active[:, None]
        self.scores = torch.where(old, self.scores, torch.gather(merged, 1, pick))
        self.gen = torch.where(old[..., None], self.gen,
                               torch.gather(torch.cat([self.gen, cand], 1), 1, pick[..., None].expand(N, nb, G)))
        self.lens = torch.where(old, self.lens, torch.gather(torch.cat([self.lens, torch.full_like(scores, length,
                                                                                                 dtype=torch.long)], 1), 1, pick))
        self.done = torch.where(old, self.done, torch.gather(torch.cat([self.done, finishing], 1), 1, pick))


def _prompt_rows(prompts: list[list[int]], nb: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's prompt, left-padded (R, Lmax), and where it is real: the repetition penalty and the
    n-gram ban read prompt + generated."""
    Lmax = max(map(len, prompts))
    ctx = torch.zeros(len(prompts) * nb, Lmax, dtype=torch.long, device=device)
    mask = torch.zeros_like(ctx, dtype=torch.bool)
    for n, p in enumerate(prompts):
        ctx[n * nb:(n + 1) * nb, Lmax - len(p):] = torch.tensor(p, device=device)
        mask[n * nb:(n + 1) * nb, Lmax - len(p):] = True
    return ctx, mask


def _log_probs(logits: torch.Tensor, penalties, ctx: torch.Tensor, ctx_mask: torch.Tensor, generated: torch.Tensor,
               banned: torch.Tensor | None, bias: torch.Tensor | None, g: int) -> torch.Tensor:
    """Each row's next-token log-probabilities after the penalties, bans, bias and forced tokens, as
    transformers' processors apply them in beam search (skipped where none is on: a step over many
    rows then costs one log-softmax)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (R, V)
    needs_context = penalties.repetition_penalty != 1.0 or penalties.no_repeat_ngram_size > 0
    if needs_context or penalties.frequency_penalty or penalties.presence_penalty or bias is not None:
        context = torch.cat([ctx, generated], 1) if needs_context else ctx[:, :0]
        mask = torch.cat([ctx_mask, torch.ones_like(generated, dtype=torch.bool)], 1) if needs_context else None
        logp = process_logits(logp, context, penalties, context_mask=mask, banned=banned, bias=bias, generated=generated)
    elif banned is not None:
        logp = logp.masked_fill(banned, float("-inf"))
    return force_tokens(logp, g, penalties)


def _banned_rows(prompts, generated: torch.Tensor, g: int, cfg: GenerateConfig, eos_ids, bad_words, shape, device,
                 constraint, live: torch.Tensor, nb: int) -> torch.Tensor | None:
    """(R, V) bool: :func:`_beam_banned` of every prompt's beams (``live``: (R,) which rows are live
    beams), or None when nothing is banned (then nothing is read back from the device)."""
    if not bad_words and not (g < cfg.min_new_tokens and eos_ids) and constraint is None:
        return None
    rows, live = generated.tolist(), live.tolist()
    parts = [_beam_banned([p + r for r in rows[n * nb:(n + 1) * nb]], g, cfg.min_new_tokens, eos_ids, bad_words,
                          (nb, shape[-1]), device, constraint, live[n * nb:(n + 1) * nb])
             for n, p in enumerate(prompts)]
    return torch.cat(parts)


def force_tokens(logp: torch.Tensor, generated: int, params) -> torch.Tensor:
    """transformers' ForcedBOS/ForcedEOS processors on log-probabilities (R, V): the forced token
    (:func:`forced_token`) scores 0, every other -inf."""
    forced = forced_token(params, generated)
    if forced is None:
        return logp
    out = torch.full_like(logp, float("-inf"))
    out[:, forced] = 0.0
    return out


def beam_bytes(model: torch.nn.Module, num_beams: int, length: int, prompts: int = 1) -> int:
    """Memory of beam search over ``prompts`` prompts: the beams' cache and logits, plus the 2 x num_beams
    candidate and finished sequences and the scores of every beam's every next token."""
    window = min(length, model.config.block_size)
    rows = prompts * num_beams
    return (model.cache_bytes(rows, window) + rows * length * 9 + rows * model.config.vocab_size * 4 * 8
            + 6 * rows * length * 8 + rows * model.config.vocab_size * 4 * 6)
