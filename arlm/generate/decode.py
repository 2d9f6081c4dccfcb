"""The decode loop: prefill the prompt once, then one cached position per new token.

``prefill`` and ``decode_step`` are separate small functions so each can be compiled on its own.
When the sequence outgrows the model's context window, the window restarts from the last 3/4 of
it (one prefill), rather than recomputing the whole window for every token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import torch

from arlm.config import GenerateConfig
from arlm.generate.sampling import process_logits, sample
from arlm.model.gpt import GPT


def prefill(model: GPT, idx: torch.Tensor, key_mask: torch.Tensor | None = None,
            positions: torch.Tensor | None = None) -> torch.Tensor:
    """Run the whole window ``idx`` (B, T) from cache slot 0; next-token logits (B, V).
    ``key_mask``/``positions`` describe left padding (see ``GPT.forward``)."""
    logits, _ = model(idx, pos=0, last_only=True, key_mask=key_mask, positions=positions)
    return logits[:, -1, :]


def decode_step(model: GPT, token: torch.Tensor, pos: int, key_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
    """Feed one token per row (B, 1) at cache slot ``pos`` through the KV cache; logits (B, V)."""
    logits, _ = model(token, pos=pos, last_only=True, key_mask=key_mask, positions=positions)
    return logits[:, -1, :]


def window_keep(block_size: int) -> int:
    """Tokens kept when the context window is full and has to slide."""
    return max(1, block_size - block_size // 4)


@torch.inference_mode()
def generate_ids(model: GPT, prompts: list[int] | list[list[int]], cfg: GenerateConfig, eos_ids: tuple[int, ...] = (),
                 finished: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of every row, (B,), one step at a time.

    ``prompts`` is one prompt (a list of ids) or several; each gives ``cfg.num_return_sequences``
    consecutive rows, so B = len(prompts) * num_return_sequences. Prompts of different lengths are
    left-padded into one batch, with a key mask and per-row position ids, so a row decodes exactly as
    it would alone. Each prompt must be non-empty and at most block_size long. A row is finished once
    it emits one of ``eos_ids``; the caller may also mark rows finished (e.g. on a stop string) through
    the ``finished`` bool tensor (B,). Generation ends when every row is finished or after
    max_new_tokens. With ``cfg.use_cache`` False the window is recomputed for every token (same tokens).
    """
    if prompts and isinstance(prompts[0], int):
        prompts = [prompts]
    block = model.config.block_size
    assert prompts and all(0 < len(p) <= block for p in prompts)
    device = model.transformer.wte.weight.device
    rows = [p for p in prompts for _ in range(cfg.num_return_sequences)]
    B, L = len(rows), max(len(p) for p in rows)
    if finished is None:
        finished = torch.zeros(B, dtype=torch.bool)
    tokens = torch.zeros(B, L, dtype=torch.long, device=device)  # (B, L): everything so far, left-padded
    real = torch.zeros(B, L, dtype=torch.bool, device=device)  # False where padding
    for b, p in enumerate(rows):
        tokens[b, L - len(p):] = torch.tensor(p, device=device)
        real[b, L - len(p):] = True
    padded = not bool(real.all())  # equal lengths keep the plain (mask-free) path
    gen = None
    if cfg.seed is not None:
        gen = torch.Generator(device=device).manual_seed(cfg.seed)
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    greedy = cfg.temperature == 0
    start = 0  # where the model's window begins in `tokens`

    def padding_inputs(new: int):
        """Key mask over the window and position ids of its last ``new`` tokens (None without padding)."""
        if not padded:
            return None, None
        window = real[:, start:]
        positions = (window.long().cumsum(-1) - 1).clamp(min=0)  # a row's first real token is position 0
        return window, positions[:, -new:]

    def forward_window() -> torch.Tensor:
        key_mask, positions = padding_inputs(tokens.size(1) - start)
        if cfg.use_cache:
            return prefill(model, tokens[:, start:], key_mask, positions)
        logits, _ = model(tokens[:, start:], last_only=True, key_mask=key_mask, positions=positions)
        return logits[:, -1, :]

    if cfg.use_cache:  # room for the whole sequence, up to one window (long-context models need not allocate it all)
        model.setup_cache(B, min(block, L + cfg.max_new_tokens))
    try:
        logits = forward_window() if cfg.max_new_tokens > 0 else None
        for i in range(cfg.max_new_tokens):
            context_mask = real if padded else None
            nxt = sample(process_logits(logits, tokens, cfg, context_mask), greedy, gen)  # (B,)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            real = torch.cat([real, torch.ones(B, 1, dtype=torch.bool, device=device)], dim=1)
            yield nxt
            if eos.numel():
                finished |= torch.isin(nxt, eos).cpu()
            if bool(finished.all()) or i == cfg.max_new_tokens - 1:
                break
            if tokens.size(1) - start > block:
                start = tokens.size(1) - window_keep(block)
                logits = forward_window()
            elif cfg.use_cache:
                logits = decode_step(model, nxt[:, None], tokens.size(1) - 1 - start, *padding_inputs(1))
            else:
                logits = forward_window()
    finally:
        model.clear_cache()


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens (prompt excluded), ending with the EOS token if one was emitted
    score: float  # sum of token log-probabilities / len(tokens) ** length_penalty


@torch.inference_mode()
def beam_search(model: GPT, prompt: list[int], cfg: GenerateConfig, eos_ids: tuple[int, ...] = (),
                early_stopping: bool | str | None = None) -> list[Hypothesis]:
    """Beam search (Graves 2012; as in Hugging Face ``generate``): ``cfg.num_return_sequences`` best
    hypotheses first, using ``cfg.num_beams``, ``max_new_tokens``, ``length_penalty``, ``early_stopping``
    (``early_stopping`` here overrides it, and may also be ``"never"``), and the penalties
    (repetition, no-repeat-ngram) applied to the log-probabilities as transformers does.

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
    penalties = dataclasses.replace(cfg, temperature=0.0)  # process_logits then applies only the penalties
    L0, nb = len(prompt), num_beams
    max_len = L0 + max_new_tokens
    if max_len > model.config.block_size:
        raise ValueError(f"beam search needs prompt + max_new_tokens <= block_size ({max_len} > {model.config.block_size})")
    device = model.transformer.wte.weight.device
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

    model.setup_cache(nb, max_len)
    try:
        logits = prefill(model, seqs[:, :L0]) if max_new_tokens > 0 else None
        cur = L0
        while logits is not None:
            logp = process_logits(torch.log_softmax(logits.float(), dim=-1), seqs[:, :cur], penalties)  # (nb, V)
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
            model.reorder_cache(src_rows)
            logits = decode_step(model, seqs[:, cur - 1:cur], cur - 1)
    finally:
        model.clear_cache()
    return [Hypothesis(fin_seqs[i, L0:L0 + int(fin_lens[i])].tolist(), float(fin_scores[i]))
            for i in range(cfg.num_return_sequences)]
