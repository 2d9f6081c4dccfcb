"""The decode loop: prefill the prompt once, then one cached position per new token.

``prefill`` and ``decode_step`` are separate small functions so each can be compiled on its own.
When the sequence outgrows the model's context window, the window restarts from the last 3/4 of
it (one prefill), rather than recomputing the whole window for every token.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.fx.experimental._config as fx_config

from arlm.config import GenerateConfig
from arlm.generate.sampling import Rules, process_logits, sample
from arlm.model import kernels
from arlm.model.gpt import GPT
from arlm.runtime import generator

log = logging.getLogger(__name__)


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


_COMPILED: dict[str, object] = {}


def compiled_decode_step():
    """``decode_step`` compiled once per process by torch.compile (inductor). The slot ``pos`` becomes a
    dynamic size after its second value, so one graph serves every position; on CPU the linear layers
    are calls of the decoding kernels (arlm/model/kernels), built here before tracing starts."""
    kernels.library()
    if "decode_step" not in _COMPILED:
        # No size/stride assertions in the generated code: they re-check every input (~280 tensors of
        # GPT-2-124M, 0.3-0.5 ms of a 6 ms int8 step on a 2-core CPU) that Dynamo's guards already
        # matched to the graph before running it.
        _COMPILED["decode_step"] = torch.compile(decode_step, dynamic=None, options={"size_asserts": False})
    return _COMPILED["decode_step"]


RECOMPILE_LIMIT = 64  # graphs of the decode step per process


class GuardedSteps:
    """Calls of the compiled decode step during one generation.

    Before running a compiled graph, Dynamo checks its guards (one or more per tensor of the model);
    skipping most of them made 124M-model decoding 3-4% faster on a 2-core CPU (measured in one
    process, alternating, float32 and int8). Within one generation nothing the graph depends
    on changes except the position (and, with padding, the key mask's length), which become dynamic
    sizes after their second value. So once a call after the first has run without compiling a new
    graph, the remaining calls run under ``torch.compiler.set_stance(skip_guard_eval_unsafe=True)``,
    which checks only the guards that tell compiled graphs apart (every guard that has ever failed,
    and the non-parameter tensors: KV cache, quantized weights). That is the stance's documented
    condition of use: warmed up, no further recompilation needed."""

    def __init__(self):
        self.step = compiled_decode_step()
        self.calls = 0
        self.trusted = False
        self.refused = False

    def __call__(self, *args) -> torch.Tensor:
        if self.trusted:
            try:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return self.step(*args)
            except RuntimeError as e:
                # Dynamo raises (before running anything) when no graph matches under this stance,
                # e.g. when its recompile limit made the previous calls run uncompiled.
                if "skip_guard_eval_unsafe" not in str(e):
                    raise
                log.debug("compiled decode step: checking every guard for the rest of this generation (%s)", e)
                self.trusted, self.refused = False, True
        graphs = _graphs_compiled()
        # Each model, precision, batch layout and first position adds a graph; Dynamo's default limit
        # of 8 per function would silently leave a process that decodes with several models uncompiled.
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            out = self.step(*args)
        self.calls += 1
        self.trusted = not self.refused and self.calls >= 2 and _graphs_compiled() == graphs
        return out


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters  # Dynamo's own count of graphs compiled in this process

    return counters["stats"]["unique_graphs"]


PRECOMPILED_LIMIT = 16  # precompiled decode steps kept per process (least recently used dropped)
_PRECOMPILED: list[tuple[tuple, object]] = []  # (model structure, compiled step), most recently used last
_NOT_PRECOMPILED: set[tuple] = set()  # (model structure, unpadded) left to Dynamo's dispatch (not tried again)


class PrecompiledSteps:
    """Calls of the compiled decode step during one generation on CPU, without Dynamo in the way.

    Each call of a ``torch.compile``d function first goes through Dynamo's cache lookup (its guard
    check: ~0.5 ms a token for GPT-2-124M on a 2-core CPU, even with most guards skipped), and the
    graph's Python wrapper then calls ~110 kernels one by one. Here the step is compiled ahead of time
    (``torch.compile(...).aot_compile``, PyTorch's precompilation API) with inductor's C++ wrapper,
    and called directly: 1.0-1.2 ms less per token than :class:`GuardedSteps` (float32 and int8,
    measured alternating in one process), for a compile of 25-35 s instead of 15-25 s (cached on
    disk by inductor).

    Skipping guards is safe only while nothing the graph depends on changes. Within one generation
    that is everything but the position (and the key mask's length with it), a dynamic size of the
    graph. The guards Dynamo puts on it are bounds (1 <= pos <= cache length - 1) and one inequality
    at the very end, where the view of the whole cache is contiguous (listed for GPT-2 and Llama
    configurations, every precision, with and without padding). So the first call picks a graph by
    its full guard check (plus the model's module types, which precompiled guards leave out; sizes
    traced without duck shaping, so that a batch of 6 at position 5 does not tie the two) at
    positions 2, this one, the next and cache length - 2, and trusts it for every position between
    2 and cache length - 2. The others (the first token after a 1-token prompt, the last slot before
    the window slides) run eagerly: Dynamo specialises sizes 0 and 1, and the full cache would need
    a graph of its own. A sliding window shorter than the cache branches on the position mid-
    generation, so such models, and any step that cannot be precompiled or whose guards fail at
    those positions, take :class:`GuardedSteps` for the generation.
    """

    def __init__(self):
        self.fn = None
        self.last = 0  # highest trusted position
        self.fallback: GuardedSteps | None = None

    def __call__(self, model: GPT, token: torch.Tensor, pos: int, key_mask: torch.Tensor | None = None,
                 positions: torch.Tensor | None = None) -> torch.Tensor:
        args = (model, token, pos, key_mask, positions)
        if self.fallback is not None:
            return self.fallback(*args)
        if self.fn is None and 2 <= pos <= _cache_length(model) - 2:
            # a sliding window shorter than the cache adds a branch on the position
            self.fn = None if 0 < model.config.sliding_window < _cache_length(model) else _precompiled(args)
            if self.fn is None:
                self.fallback = GuardedSteps()
                return self.fallback(*args)
            self.last = _cache_length(model) - 2
        if self.fn is not None and 2 <= pos <= self.last:
            return self.fn(*args)
        return decode_step(*args)


def _cache_length(model: GPT) -> int:
    return model.cache_length()


def _at(args: tuple, pos: int) -> tuple:
    """The decode step's arguments moved to position ``pos``, for guard checks (shapes matter, not
    values; the key mask contiguous, as generate_ids passes it)."""
    model, token, _, key_mask, positions = args
    if key_mask is not None:
        key_mask = key_mask.new_ones(key_mask.size(0), pos + 1)
    return model, token, pos, key_mask, positions


def _precompiled(args: tuple):
    """A precompiled decode step whose guards pass for ``args`` moved to every position
    :class:`PrecompiledSteps` trusts it with (compiling one if none does), or None."""
    model, _, pos, key_mask, _ = args
    structure = (tuple(type(m) for m in model.modules()), key_mask is None)
    if structure in _NOT_PRECOMPILED:
        return None
    last = _cache_length(model) - 2
    probes = [args] + [_at(args, p) for p in sorted({2, pos + 1, last}) if p <= last]

    def fits(fn) -> bool:
        return all(fn.guard_check(*a) for a in probes)

    for i in range(len(_PRECOMPILED) - 1, -1, -1):
        key, fn = _PRECOMPILED[i]
        if key == structure and fits(fn):
            _PRECOMPILED.append(_PRECOMPILED.pop(i))
            return fn
    kernels.library()
    t = time.monotonic()
    try:
        # specialize_float: Python floats as constants (torch.compile's default; precompiling cannot
        # restart tracing to turn one into a tensor). No duck shapes: sizes that happen to be equal
        # at the first call (batch 6 at position 5: a key mask of 6 x 6) must not become one size.
        with torch._dynamo.config.patch(specialize_float=True), fx_config.patch(use_duck_shape=False):
            fn = torch.compile(decode_step, fullgraph=True, dynamic=True,
                               options={"size_asserts": False, "cpp_wrapper": True}).aot_compile((args, {}))
    except Exception as e:  # noqa: BLE001 - any failure to precompile leaves Dynamo's dispatch, which is correct
        log.warning("could not precompile the decode step (%s: %s); using torch.compile's usual dispatch",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        _NOT_PRECOMPILED.add(structure)
        return None
    log.debug("decode step precompiled in %.1fs", time.monotonic() - t)
    if not fits(fn):
        log.info("the decode step's graph depends on the position (e.g. a sliding window): compiled "
                 "decoding of this model uses torch.compile's usual dispatch")
        _NOT_PRECOMPILED.add(structure)
        return None
    fn.disable_guard_check()  # checked in fits(), once per generation
    _PRECOMPILED.append((structure, fn))
    del _PRECOMPILED[:-PRECOMPILED_LIMIT]
    return fn


def decode_bytes(model: torch.nn.Module, rows: int, length: int) -> int:
    """Memory one generation of ``rows`` sequences of up to ``length`` tokens needs: the model's
    decoding cache (at most one context window), the token buffers (ids and a padding mask), and a few
    float copies of each step's logits (penalties, filters, softmax)."""
    window = min(length, model.config.block_size)
    return model.cache_bytes(rows, window) + rows * length * 9 + rows * model.config.vocab_size * 4 * 8


def beam_bytes(model: torch.nn.Module, num_beams: int, length: int) -> int:
    """Memory of beam search: :func:`decode_bytes` for the beams, plus the 2 x num_beams candidate and
    finished sequences and the scores of every beam's every next token."""
    return decode_bytes(model, num_beams, length) + 6 * num_beams * length * 8 + num_beams * model.config.vocab_size * 4 * 6


def window_keep(block_size: int) -> int:
    """Tokens kept when the context window is full and has to slide."""
    return max(1, block_size - block_size // 4)


class Step(NamedTuple):
    """One decoding step for every row: the chosen tokens (B,) and, when asked for, their
    log-probabilities under the model (B,) and the ``top_logprobs`` most likely tokens (B, n)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


def token_logprobs(logits: torch.Tensor, chosen: torch.Tensor, top: int) -> tuple[torch.Tensor, ...]:
    """log-softmax of the model's raw ``logits`` (B, V) (before temperature, filters and penalties,
    as OpenAI's ``logprobs`` and transformers' ``output_logits``): the chosen tokens' (B,), and the
    ``top`` best ids and values (B, top)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    top = min(top, logp.size(-1))  # a vocabulary smaller than the alternatives asked for
    values, ids = torch.topk(logp, top, dim=-1) if top else (None, None)
    return logp.gather(1, chosen[:, None]).squeeze(1), ids, values


@torch.inference_mode()
def generate_ids(model: GPT, prompts: list[int] | list[list[int]], cfg: GenerateConfig, eos_ids: tuple[int, ...] = (),
                 finished: torch.Tensor | None = None, rules: Rules | None = None) -> Iterator[Step]:
    """Yield a :class:`Step` (the next token of every row, (B,)) at a time.

    ``prompts`` is one prompt (a list of ids) or several; each gives ``cfg.num_return_sequences``
    consecutive rows, so B = len(prompts) * num_return_sequences. Prompts of different lengths are
    left-padded into one batch, with a key mask and per-row position ids, so a row decodes exactly as
    it would alone. Each prompt must be non-empty and at most block_size long. A row is finished once
    it emits one of ``eos_ids``; the caller may also mark rows finished (e.g. on a stop string) through
    the ``finished`` bool tensor (B,). Generation ends when every row is finished, after
    max_new_tokens, or once ``cfg.max_time`` seconds have passed. ``rules`` carries the bad words and
    logit bias (min_new_tokens holds back ``eos_ids``). With ``cfg.use_cache`` False the window is
    recomputed for every token (same tokens).
    """
    t0 = time.monotonic()
    if prompts and isinstance(prompts[0], int):
        prompts = [prompts]
    rules = dataclasses.replace(rules or Rules(), eos_ids=tuple(eos_ids))
    block = model.config.block_size
    assert prompts and all(0 < len(p) <= block for p in prompts)
    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(cfg.num_return_sequences)]
    B, L = len(rows), max(len(p) for p in rows)
    if finished is None:
        finished = torch.zeros(B, dtype=torch.bool)
    # Every token so far, left-padded, in one buffer (B, L + max_new_tokens); `real` is False on padding.
    tokens = torch.zeros(B, L + cfg.max_new_tokens, dtype=torch.long, device=device)
    real = torch.ones(B, L + cfg.max_new_tokens, dtype=torch.bool, device=device)
    for b, p in enumerate(rows):
        tokens[b, L - len(p):L] = torch.tensor(p, device=device)
        real[b, :L - len(p)] = False
    padded = not bool(real[:, :L].all())  # equal lengths keep the plain (mask-free) path
    n = L  # tokens filled in
    gen = generator(cfg.seed, device) if cfg.seed is not None else None
    eos = torch.tensor(list(eos_ids), dtype=torch.long, device=device)
    greedy = cfg.greedy
    step = decode_step
    if cfg.compile and model.can_compile_decode:
        step = PrecompiledSteps() if device.type == "cpu" else GuardedSteps()
    elif cfg.compile:
        log.info("compiled decoding applies to models with a fixed-shape cache; decoding this %s eagerly",
                 model.config.type.upper())
    start = 0  # where the model's window begins in `tokens`

    def padding_inputs(new: int):
        """Key mask over the window and position ids of its last ``new`` tokens (None without padding)."""
        if not padded:
            return None, None
        window = real[:, start:n]
        positions = (window.long().cumsum(-1) - 1).clamp(min=0)  # a row's first real token is position 0
        # contiguous, as the token below: compiled steps are specialised on strides
        return window.contiguous(), positions[:, -new:].contiguous()

    def forward_window() -> torch.Tensor:
        key_mask, positions = padding_inputs(n - start)
        if cfg.use_cache:
            return prefill(model, tokens[:, start:n], key_mask, positions)
        logits, _ = model(tokens[:, start:n], last_only=True, key_mask=key_mask, positions=positions)
        return logits[:, -1, :]

    if cfg.use_cache:  # room for the whole sequence, up to one window (long-context models need not allocate it all)
        model.setup_cache(B, min(block, L + cfg.max_new_tokens))
    try:
        logits = forward_window() if cfg.max_new_tokens > 0 else None
        for i in range(cfg.max_new_tokens):
            context_mask = real[:, :n] if padded else None
            scores = process_logits(logits, tokens[:, :n], cfg, context_mask, rules, tokens[:, L:n])
            nxt = sample(scores, greedy, gen)  # (B,)
            tokens[:, n] = nxt
            n += 1
            yield Step(nxt, *token_logprobs(logits, nxt, cfg.top_logprobs)) if cfg.logprobs or cfg.top_logprobs else Step(nxt)
            if eos.numel():
                finished |= torch.isin(nxt, eos).cpu()
            if bool(finished.all()) or i == cfg.max_new_tokens - 1:
                break
            if cfg.max_time and time.monotonic() - t0 >= cfg.max_time:
                log.info("max_time (%gs) reached after %d new tokens", cfg.max_time, i + 1)
                break
            if n - start > block:
                start = n - window_keep(block)
                logits = forward_window()
            elif cfg.use_cache:
                # contiguous: a slice of the buffer has a stride that differs per generation (a recompile)
                logits = step(model, tokens[:, n - 1:n].contiguous(), n - 1 - start, *padding_inputs(1))
            else:
                logits = forward_window()
    finally:
        model.clear_cache()


@torch.inference_mode()
def prompt_logprobs(model: GPT, ids: list[int], top: int = 0) -> list[tuple[float | None, list[tuple[int, float]]]]:
    """For each prompt token: its log-probability given the tokens before it (None for the first,
    which has no context), with the ``top`` most likely tokens at that position. The prompt must fit
    the context window."""
    assert 0 < len(ids) <= model.config.block_size
    device = next(model.parameters()).device
    idx = torch.tensor([ids], device=device)
    logits, _ = model(idx)  # (1, T, V)
    out: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
    if len(ids) > 1:
        chosen, top_ids, top_values = token_logprobs(logits[0, :-1], idx[0, 1:], top)
        for t in range(len(ids) - 1):
            alts = list(zip(top_ids[t].tolist(), top_values[t].tolist())) if top else []
            out.append((float(chosen[t]), alts))
    return out


@dataclass
class Hypothesis:
    tokens: list[int]  # generated tokens (prompt excluded), ending with the EOS token if one was emitted
    score: float  # sum of token log-probabilities / len(tokens) ** length_penalty


@torch.inference_mode()
def beam_search(model: GPT, prompt: list[int], cfg: GenerateConfig, eos_ids: tuple[int, ...] = (),
                early_stopping: bool | str | None = None, rules: Rules | None = None) -> list[Hypothesis]:
    """Beam search (Graves 2012; as in Hugging Face ``generate``): ``cfg.num_return_sequences`` best
    hypotheses first, using ``cfg.num_beams``, ``max_new_tokens``, ``length_penalty``, ``early_stopping``
    (``early_stopping`` here overrides it, and may also be ``"never"``), and the penalties
    (repetition, no-repeat-ngram, bad words, logit bias, min_new_tokens) applied to the
    log-probabilities as transformers does.

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
    rules = dataclasses.replace(rules or Rules(), eos_ids=tuple(eos_ids))
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

    model.setup_cache(nb, max_len)
    try:
        logits = prefill(model, seqs[:, :L0]) if max_new_tokens > 0 else None
        cur = L0
        while logits is not None:
            logp = process_logits(torch.log_softmax(logits.float(), dim=-1), seqs[:, :cur], penalties,
                                  rules=rules, generated=seqs[:, L0:cur])  # (nb, V)
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


# -- speculative decoding --------------------------------------------------------------------------


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
def speculative_ids(target: GPT, draft: GPT, prompt: list[int], cfg: GenerateConfig, eos_ids: tuple[int, ...] = (),
                    rules: Rules | None = None, num_draft: int = 4,
                    stats: SpeculativeStats | None = None) -> Iterator[Step]:
    """Generate one sequence with the ``target`` model, proposing ``num_draft`` tokens at a time with
    the smaller ``draft`` model and checking them with one target forward pass over all of them.

    Greedy decoding gives exactly the target's greedy tokens (a draft token is kept only if it is the
    target's argmax). With sampling, each draft token is kept or replaced by
    :func:`accept_or_resample`, so the output follows the target's distribution after the same
    controls (temperature, filters, penalties, computed with each position's own context). Both
    models must share the tokenizer, and prompt + max_new_tokens + num_draft must fit both context
    windows (no sliding here). ``stats`` (optional) collects the acceptance rate.
    """
    t0 = time.monotonic()
    stats = stats if stats is not None else SpeculativeStats()
    rules = dataclasses.replace(rules or Rules(), eos_ids=tuple(eos_ids))
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
        scores = process_logits(logits[None], ctx, cfg, rules=rules, generated=ctx[:, L:])[0]
        return scores if greedy else torch.softmax(scores, dim=-1).cpu()

    def draw(scores: torch.Tensor) -> int:
        return int(scores.argmax()) if greedy else int(torch.multinomial(scores, 1, generator=gen))

    target.setup_cache(1, total)
    draft.setup_cache(1, total)
    try:
        # Both caches hold seq[:-1]; each round feeds the tokens a model has not seen yet.
        t_len = d_len = L - 1
        if t_len:
            prefill(target, torch.tensor([seq[:-1]], device=device))
            prefill(draft, torch.tensor([seq[:-1]], device=device))
        produced = 0
        while produced < cfg.max_new_tokens:
            k = min(num_draft, cfg.max_new_tokens - produced)
            # 1. the draft proposes k tokens, one at a time
            proposals, q = [], []
            feed = seq[d_len:]
            for j in range(k):
                logits = decode_step(draft, torch.tensor([feed], device=device), d_len)[0]
                d_len += len(feed)
                q.append(dist(logits, seq + proposals))
                proposals.append(draw(q[-1]))
                feed = [proposals[-1]]
            # 2. the target scores all of them in one pass: rows for positions after seq[-1], x_1 .. x_k
            chunk = seq[t_len:] + proposals
            logits_all, _ = target(torch.tensor([chunk], device=device), pos=t_len)
            t_rows = logits_all[0, -(k + 1):]  # (k+1, V)
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
                yield Step(torch.tensor([tid], device=device))
                if tid in eos:
                    return
            if cfg.max_time and time.monotonic() - t0 >= cfg.max_time:
                return
    finally:
        target.clear_cache()
        draft.clear_cache()
