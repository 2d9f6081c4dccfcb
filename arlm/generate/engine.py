"""The decoding engine: many requests generated at once over a pool of KV-cache slots.

``Engine.add(prompt_ids, params)`` queues a request (a :class:`arlm.config.SamplingParams` each);
``step()`` admits waiting requests into free slots and runs their prompts into the cache, at most
``max_prefill_tokens`` a step (a prompt that is all in gives its first token), then feeds every
running sequence's last token through one batched decode step and samples each row with its own
controls; ``abort(id)`` drops a request. A finished or aborted sequence frees
its slot at once, so a new request joins the running batch between two steps (continuous batching,
Yu et al. 2022, "Orca"). ``LanguageModel.generate/stream/complete``, ``arlm generate``, ``chat``,
``eval --task`` and the server all decode through it.

Each sequence lives in one row ("slot") of the cache, from position 0, so rows never need padding:
a decode step is one token per row at each row's own position (rows up to the highest slot in use;
an empty slot's row computes nothing anyone reads). Prompts run in chunks of ``prefill_chunk``
tokens; the keys/values of every whole chunk at the start of a prompt are kept (a hash chain over
the chunks, as vLLM's automatic prefix caching), and a later prompt that starts with the same chunks
copies them instead of recomputing (a shared system prompt). Because chunks always start at
multiples of the chunk size, a prompt's keys/values are the same bits whether they were computed or
copied, and every row is computed independently of the others (the CPU kernels sum each row alike
at any batch size, arlm/model/kernels), so a seeded request gives the same tokens alone or in any
batch (tests/generate/test_engine.py).
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from arlm.config import EngineConfig, GenerateConfig, SamplingParams
from arlm.errors import UserError
from arlm.generate.grammar import grammar_constraint
from arlm.generate.sampling import (Controls, banned_ngram_tokens, banned_sequence_tokens, filters, forced_token,
                                    penalise, sample, token_logprobs)
from arlm.generate.step import CompiledStep, decode_step, prefill
from arlm.generate.stream import TextStream
from arlm.io.text import check_strings
from arlm.runtime import generator

log = logging.getLogger(__name__)


class Constraint(Protocol):
    """What a request may generate next (token healing's prefix, a structured-output grammar)."""

    def allowed(self, generated: list[int], vocab_size: int) -> torch.Tensor | None:
        """(V,) bool of the tokens allowed after ``generated``, or None when anything is. A mask with
        nothing allowed ends the sequence there."""

    def fresh(self) -> "Constraint":
        """The constraint for one more sequence of the same request (its own state, if it has one)."""


@dataclass
class Output:
    """What one sequence produced in a step: the token (``eos``: an end-of-text or stop token, which
    ends the sequence and is not part of its output; None: nothing was generated), the new text that is safe to show, the token's
    log-probability and top alternatives when asked for, and why it ended ("stop": end-of-text, a
    stop token or string; "length": max_new_tokens; "time": max_time; None while it runs)."""

    request_id: str
    index: int
    token: int | None
    text: str = ""
    eos: bool = False
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None  # finish_reason "error": what went wrong with this request (the others go on)


@dataclass
class Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    eos: frozenset[int]  # end-of-text and stop token ids
    bad_words: list[list[int]]
    bias: torch.Tensor | None  # (V,)
    skip_text: str = ""
    constraint: Constraint | None = None
    source: list[int] | None = None  # an encoder-decoder's source (``prompt`` is then the decoder's start)
    arrival: float = 0.0
    started: float = 0.0
    sequences: list["Sequence"] = field(default_factory=list)


@dataclass
class Sequence:
    request: Request
    index: int
    slot: int
    tokens: list[int]  # prompt + generated
    generator: torch.Generator | None
    stream: TextStream | None
    constraint: Constraint | None = None
    start: int = 0  # where the cache's position 0 is in ``tokens`` (moves when the window slides)
    finished: bool = False
    ready: bool = False  # its prompt is in the cache: it decodes
    filled: int = 0  # tokens of the window (from ``start``) in the cache while it is being run
    keys: list[bytes] = field(default_factory=list)  # prefix-cache keys of the window's whole chunks
    error: str | None = None  # its constraint failed (a grammar past llguidance's limits): it ends with this
    cached: int = 0  # tokens of the window copied from the prefix cache

    @property
    def generated(self) -> list[int]:
        return self.tokens[len(self.request.prompt):]


def token_rules(params: SamplingParams, tokenizer, vocab_size: int,
                device: torch.device) -> tuple[list[list[int]], torch.Tensor | None]:
    """A request's token-level rules, checked against the vocabulary: its bad words as token ids and
    its logit bias as a (V,) tensor (None without one); stop token ids are checked too."""
    bias = params.parsed_logit_bias()
    forced = [t for t in (params.forced_bos_token_id, params.forced_eos_token_id) if t is not None]
    for ids, what in ((list(bias), "logit_bias token id"), (params.stop_token_ids, "stop token id"),
                      (forced, "forced token id")):
        bad = [t for t in ids if t >= vocab_size]
        if bad:
            raise UserError(f"{what} {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
    bad_words = []
    for word in params.bad_words:
        if tokenizer is None:
            raise UserError("bad_words need the model's tokenizer files")
        ids = tokenizer.encode(word)
        if not ids:
            raise UserError(f"bad word {word!r} has no tokens")
        bad_words.append(ids)
    dense = None
    if bias:
        dense = torch.zeros(vocab_size, device=device)
        dense[list(bias)] = torch.tensor(list(bias.values()), device=device)
    return bad_words, dense


def window_keep(length: int) -> int:
    """Tokens kept when a sequence fills its cache and the window has to slide."""
    return max(1, length - length // 4)


class PrefixCache:
    """Keys/values of prompt chunks, keyed by a hash of the chunk and everything before it, least
    recently used dropped beyond ``capacity`` bytes."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.blocks: collections.OrderedDict[bytes, torch.Tensor] = collections.OrderedDict()
        self.bytes = 0
        self.hits = 0  # chunks copied instead of computed
        self.queries = 0  # chunks looked up

    @staticmethod
    def keys(tokens: list[int], chunk: int) -> list[bytes]:
        """The hash of each whole chunk of ``tokens`` with everything before it."""
        out, h = [], b""
        for i in range(len(tokens) // chunk):
            h = hashlib.blake2b(h + torch.tensor(tokens[i * chunk:(i + 1) * chunk]).numpy().tobytes(), digest_size=16).digest()
            out.append(h)
        return out

    def lookup(self, keys: list[bytes]) -> list[torch.Tensor]:
        found = []
        for k in keys:
            self.queries += 1
            if k not in self.blocks:
                break
            self.blocks.move_to_end(k)
            found.append(self.blocks[k])
            self.hits += 1
        return found

    def store(self, key: bytes, block: torch.Tensor) -> None:
        if key in self.blocks or block.nbytes > self.capacity:
            return
        self.blocks[key] = block
        self.bytes += block.nbytes
        while self.bytes > self.capacity:
            _, old = self.blocks.popitem(last=False)
            self.bytes -= old.nbytes


class Engine:
    """A model, its KV-cache slots and the requests decoding on them (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer=None, eos_ids: tuple[int, ...] = (),
                 config: EngineConfig | None = None):
        self.cfg = config or EngineConfig()
        self.cfg.validate()
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = tuple(eos_ids)
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.vocab_size
        self.max_len = min(self.cfg.max_len or model.config.block_size, model.config.block_size)
        self.seq2seq = getattr(model, "is_encoder_decoder", False)
        self.cache = model.new_cache(self.cfg.max_batch, self.max_len) if self.cfg.use_cache else None
        shareable = self.cfg.use_cache and model.can_rewind_cache and self.cfg.prefix_cache_mb > 0
        self.prefix = PrefixCache(self.cfg.prefix_cache_mb << 20) if shareable else None
        self.compiled = CompiledStep(model) if self.cfg.compile and self.cfg.use_cache and model.can_compile_decode else None
        if self.cfg.compile and self.compiled is None:
            log.info("compiled decoding applies to models with a fixed-shape cache; decoding this %s eagerly",
                     model.config.type.upper())
        B, V = self.cfg.max_batch, self.vocab_size
        self.seen = torch.zeros(B, V, dtype=torch.bool, device=self.device)  # prompt + generated, per slot
        self.counts = torch.zeros(B, V, device=self.device)  # generated, per slot
        self.slots: list[Sequence | None] = [None] * B
        self.waiting: collections.deque[Request] = collections.deque()
        self.prefilling: list[Request] = []  # admitted, prompt partly in the cache
        self.requests: dict[str, Request] = {}
        self._ids = itertools.count()
        self.generated_tokens = 0

    # -- requests --------------------------------------------------------------------------------
    def add(self, prompt_ids: list[int], params: SamplingParams, *, skip_text: str = "",
            constraint: Constraint | None = None, request_id: str | None = None,
            bad_words_ids: list[list[int]] | tuple = ()) -> str:
        """Queue a request; its id. Everything about it is checked here (UserError), before it waits.
        ``bad_words_ids`` adds token sequences to ban to the request's ``bad_words`` (text)."""
        params.validate()
        for name in ("stop", "bad_words", "json_schema", "regex"):  # the text policy of prompts (arlm/io/text.py)
            check_strings(getattr(params, name), name)
        V = self.vocab_size
        if not prompt_ids or not all(isinstance(t, int) and 0 <= t < V for t in prompt_ids):
            raise UserError(f"a prompt is a non-empty list of token ids in 0..{V - 1}")
        source = None
        if self.seq2seq:  # the prompt is the source; the decoder starts from its start token
            limit = self.model.config.source_len
            if len(prompt_ids) > limit:
                raise UserError(f"the source is {len(prompt_ids)} tokens; this encoder reads at most {limit} "
                                f"(max_source_len): shorten it")
            source, prompt_ids = list(prompt_ids), [self.model.config.decoder_start_token_id]
        if params.num_return_sequences > self.cfg.max_batch:
            raise UserError(f"num_return_sequences ({params.num_return_sequences}) exceeds the engine's max_batch "
                            f"({self.cfg.max_batch}); lower it")
        bad_words, dense = token_rules(params, self.tokenizer, V, self.device)
        bad_words += [list(b) for b in bad_words_ids]
        if (params.stop or skip_text) and self.tokenizer is None:
            raise UserError("stop strings need the model's tokenizer files")
        eos = frozenset(self.eos_ids) | frozenset(params.stop_token_ids)
        grammar = grammar_constraint(params, self.tokenizer, V, eos)
        if grammar is not None and constraint is not None:
            raise UserError("structured output (json_schema, regex) cannot be combined with token healing")
        constraint = grammar or constraint
        rid = request_id or f"req-{next(self._ids)}"
        if rid in self.requests:
            raise UserError(f"request id {rid!r} is already in use")
        req = Request(rid, list(prompt_ids), params, eos, bad_words, dense, skip_text, constraint, source, time.monotonic())
        self.requests[rid] = req
        self.waiting.append(req)
        return rid

    def abort(self, request_id: str) -> None:
        """Drop a request, waiting or running; its slots are free for the next step."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return
        if req in self.waiting:
            self.waiting.remove(req)
        if req in self.prefilling:
            self.prefilling.remove(req)
        for seq in req.sequences:
            self._free(seq)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    @property
    def running(self) -> list[Sequence]:
        """The sequences decoding (prompt in the cache)."""
        return [s for s in self.slots if s is not None and s.ready]

    def stats(self) -> dict[str, int]:
        return dict(running=sum(s is not None for s in self.slots), waiting=len(self.waiting),
                    waiting_rows=sum(r.params.num_return_sequences for r in self.waiting),
                    slots=len(self.slots), generated_tokens=self.generated_tokens,
                    prefix_hits=self.prefix.hits if self.prefix else 0,
                    prefix_queries=self.prefix.queries if self.prefix else 0)

    # -- one step ------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, first_tokens: Callable[[list[Output]], None] | None = None) -> list[Output]:
        """Run prompts into the cache (up to ``max_prefill_tokens`` of them a step), admitting waiting
        requests into free slots; then advance every sequence that was already decoding by one token.
        A request's first token comes from the step that finishes its prompt; with ``first_tokens``,
        each request's first outputs go to it as soon as its prompt is in, before the next prompt and
        the decode run (a server sends them that much sooner), and are not returned."""
        running = self.running
        outputs: list[Output] = []

        def handed_over() -> None:
            nonlocal outputs
            if first_tokens is not None and outputs:
                first_tokens(outputs)
                outputs = []

        # Also when nothing decodes: requests that arrive together and start together would end
        # together and come back together, every wave waiting for the whole wave's prompts.
        budget = self.cfg.max_prefill_tokens or math.inf
        for req in list(self.prefilling):
            if budget <= 0:
                break
            budget -= self._prefill(req, budget, outputs)
            handed_over()
        while budget > 0 and self.waiting and self.slots.count(None) >= self.waiting[0].params.num_return_sequences:
            req = self.waiting.popleft()
            if self._admit(req, outputs):
                budget -= self._prefill(req, budget, outputs)
            handed_over()
        if running:
            logits = self._decode(running)
            outputs += self._sample(running, logits)
        return outputs

    def _admit(self, req: Request, outputs: list[Output]) -> bool:
        """Give a request its slots (False: it has nothing to generate and is done)."""
        req.started = time.monotonic()
        n = req.params.num_return_sequences
        if req.params.max_new_tokens == 0:  # nothing to generate: no slot, no prefill
            outputs += [Output(req.id, i, None, finish_reason="length") for i in range(n)]
            self.requests.pop(req.id, None)
            return False
        free = [i for i, s in enumerate(self.slots) if s is None][:n]
        seed = req.params.seed
        for i, slot in enumerate(free):
            if req.params.greedy:
                gen = None
            else:  # unseeded: drawn from torch's global generator, so torch.manual_seed makes runs repeatable
                gen = generator(seed + i if seed is not None else int(torch.randint(1 << 62, ())), self.device)
            stream = TextStream(self.tokenizer, req.params.stop, req.skip_text) if self.tokenizer is not None else None
            seq = Sequence(req, i, slot, list(req.prompt), gen, stream,
                           req.constraint.fresh() if req.constraint is not None else None)
            self.slots[slot] = seq
            req.sequences.append(seq)
            self.seen[slot] = False
            self.seen[slot, req.prompt] = True
            self.counts[slot] = 0
        if req.source is not None and self.cache is not None:  # the encoder runs once, at admission
            first = req.sequences[0].slot
            self.model.prime_cache(self.cache.view(first, first + 1), torch.tensor([req.source], device=self.device))
        self._start_window(req.sequences[0])
        self.prefilling.append(req)
        return True

    def _prefill(self, req: Request, budget: float, outputs: list[Output]) -> int:
        """Run up to ``budget`` more prompt tokens of a request (at least one chunk); when its prompt
        is all in, its other sequences copy the first one's row, and each samples its first token.
        Returns the tokens computed."""
        first = req.sequences[0]
        logits, used = self._run_window(first, budget)
        if logits is not None:
            self.prefilling.remove(req)
            for seq in req.sequences:
                if seq is not first and self.cache is not None:
                    self.cache.copy_row(first.slot, seq.slot, len(req.prompt))
                seq.ready = True
            outputs += self._sample(req.sequences, logits.expand(len(req.sequences), -1))
        return used

    def _start_window(self, seq: Sequence) -> None:
        """Prepare to run a sequence's window (from ``seq.start``) into its slot: whole chunks at the
        start of a prompt come from the prefix cache when it has them."""
        seq.filled, seq.cached, seq.keys = 0, 0, []
        if self.cache is None or self.prefix is None or seq.start != 0:
            return
        chunk = self.cfg.prefill_chunk
        seq.keys = PrefixCache.keys(seq.tokens[:-1], chunk)
        for block in self.prefix.lookup(seq.keys):
            self.cache.write(seq.slot, seq.filled, block)
            seq.filled += chunk
        seq.cached = seq.filled

    def _run_window(self, seq: Sequence, budget: float = math.inf) -> tuple[torch.Tensor | None, int]:
        """Run the next chunks of a sequence's window into its slot, at least one, until ``budget``
        tokens are used: (next-token logits (1, V) once the whole window is in, else None; tokens
        run). Chunks start at multiples of ``prefill_chunk``, so the keys/values are the same bits
        however the work was split across steps; new whole prompt chunks go to the prefix cache."""
        tokens = seq.tokens[seq.start:]
        if self.cache is None:
            x = torch.tensor([tokens], device=self.device)
            src = {} if seq.request.source is None else {"src": torch.tensor([seq.request.source], device=self.device)}
            return self.model(x, last_only=True, **src)[0][:, -1, :], len(tokens)
        chunk, used, logits = self.cfg.prefill_chunk, 0, None
        row = self.cache.view(seq.slot, seq.slot + 1)
        while seq.filled < len(tokens) and used < budget:
            end = min(seq.filled - seq.filled % chunk + chunk, len(tokens))
            logits = prefill(self.model, row, tokens[seq.filled:end], seq.filled)
            used += end - seq.filled
            seq.filled = end
            i = end // chunk - 1
            if end % chunk == 0 and seq.cached // chunk <= i < len(seq.keys):
                self.prefix.store(seq.keys[i], self.cache.read(seq.slot, i * chunk, end))
        return (logits if seq.filled == len(tokens) else None), used

    def _window_logits(self, seq: Sequence) -> torch.Tensor:
        """Run a sequence's whole window into its slot at once: next-token logits (1, V)."""
        self._start_window(seq)
        logits, _ = self._run_window(seq)
        return logits

    def _decode(self, seqs: list[Sequence]) -> torch.Tensor:
        """Next-token logits (len(seqs), V) after each sequence's last token: one batched step over the
        slots, and a re-run of the window for a sequence whose cache is full (it slides)."""
        sliding = [s for s in seqs if len(s.tokens) - s.start > self.max_len]
        if self.cache is None:
            for s in sliding:
                s.start = len(s.tokens) - window_keep(self.max_len)
            return torch.cat([self._window_logits(s) for s in seqs])
        stepping = [s for s in seqs if s not in sliding]
        out = torch.empty(len(seqs), self.vocab_size, device=self.device)
        if stepping:
            hi = max(s.slot for s in stepping) + 1
            tokens = torch.zeros(hi, 1, dtype=torch.long)
            pos = torch.full((hi, 1), self.max_len - 1, dtype=torch.long)  # idle rows: see _idle_position
            for s in stepping:
                tokens[s.slot, 0] = s.tokens[-1]
                pos[s.slot, 0] = len(s.tokens) - 1 - s.start
            tokens, pos = tokens.to(self.device), pos.to(self.device)
            view = self.cache.view(0, hi)
            if self.compiled is not None:
                logits = self.compiled(self.model, view, tokens, pos)
            else:
                kv_len = max(len(s.tokens) - s.start for s in stepping)
                logits = decode_step(self.model, view, tokens, pos, kv_len)
            rows = torch.tensor([s.slot for s in stepping], device=self.device)
            out[[seqs.index(s) for s in stepping]] = logits.float().index_select(0, rows)
        for s in sliding:  # after the step: its idle row wrote into the slot it now rewrites
            s.start = len(s.tokens) - window_keep(self.max_len)
            out[seqs.index(s)] = self._window_logits(s)[0]
        return out

    # An idle row of a decode step (a free slot, or a sequence that slides or was just admitted) still
    # writes a key/value: at the last position, which holds nothing live: only a full cache uses it,
    # and a sequence with a full cache slides (rewrites its window) before its next step.

    def _controls(self, seqs: list[Sequence]) -> Controls:
        params = [s.request.params for s in seqs]
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        c = Controls(params)
        if any(p.repetition_penalty != 1.0 for p in params):
            c.seen = self.seen.index_select(0, slots)
        if any(p.frequency_penalty or p.presence_penalty for p in params):
            c.counts = self.counts.index_select(0, slots)
        banned = [self._banned(s) for s in seqs]
        if any(b is not None for b in banned):
            c.banned = torch.zeros(len(seqs), self.vocab_size, dtype=torch.bool, device=self.device)
            for i, b in enumerate(banned):
                if b is not None:
                    c.banned[i] = b
        if any(s.request.bias is not None for s in seqs):
            zero = torch.zeros(self.vocab_size, device=self.device)
            c.bias = torch.stack([zero if s.request.bias is None else s.request.bias for s in seqs])
        return c

    def _banned(self, seq: Sequence) -> torch.Tensor | None:
        """(V,) bool of what this sequence may not produce now, or None."""
        req, p = seq.request, seq.request.params
        ids: list[int] = []
        if p.no_repeat_ngram_size:
            ids += banned_ngram_tokens(seq.tokens, p.no_repeat_ngram_size)
        if req.bad_words:
            ids += banned_sequence_tokens(seq.tokens, req.bad_words)
        if len(seq.generated) < p.min_new_tokens:
            ids += sorted(req.eos)
        forced = forced_token(p, len(seq.generated))
        if forced is not None:
            banned = torch.ones(self.vocab_size, dtype=torch.bool, device=self.device)
            banned[forced] = False
            return banned
        try:
            allowed = seq.constraint.allowed(seq.generated, self.vocab_size) if seq.constraint is not None else None
        except UserError as e:  # this request's failure, not the batch's: it ends, the others go on
            seq.error = str(e)
            return torch.ones(self.vocab_size, dtype=torch.bool, device=self.device)
        if not ids and allowed is None:
            return None
        banned = torch.zeros(self.vocab_size, dtype=torch.bool, device=self.device)
        banned[ids] = True
        if allowed is not None:
            banned |= ~allowed.to(self.device)
        return banned

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[Output]:
        """Choose each sequence's next token with its own controls, record it, end what ended."""
        c = self._controls(seqs)
        dead = c.banned.all(dim=-1).tolist() if c.banned is not None else [False] * len(seqs)
        if any(dead):  # no token allowed (a finished grammar): the row ends; sample it unbanned and drop that
            c.banned[torch.tensor(dead, device=self.device)] = False
        penalised = penalise(logits, c)
        tokens = sample(filters(penalised, c), c.greedy, [s.generator for s in seqs], penalised).tolist()
        top = max(s.request.params.top_logprobs for s in seqs)
        want = any(s.request.params.logprobs or s.request.params.top_logprobs for s in seqs)
        chosen = torch.tensor(tokens, device=self.device)
        lp = token_logprobs(logits, chosen, top) if want else None
        slots = torch.tensor([s.slot for s in seqs], device=self.device)
        self.seen[slots, chosen] = True
        self.counts[slots, chosen] += 1
        self.generated_tokens += len(seqs) - sum(dead)
        outputs = []
        now = time.monotonic()
        for i, (seq, tok) in enumerate(zip(seqs, tokens)):
            if dead[i]:
                out = Output(seq.request.id, seq.index, None, error=seq.error)
                outputs.append(self._finish(seq, out, "error" if seq.error else "stop"))
                continue
            out = self._advance(seq, tok, now)
            if lp is not None and not out.eos and (seq.request.params.logprobs or seq.request.params.top_logprobs):
                out.logprob = float(lp[0][i])
                k = seq.request.params.top_logprobs
                if k:
                    out.top = list(zip(lp[1][i, :k].tolist(), lp[2][i, :k].tolist()))
            outputs.append(out)
        return outputs

    def _advance(self, seq: Sequence, tok: int, now: float) -> Output:
        """Append ``tok`` to ``seq``; its output, and the end of the sequence where it ends."""
        req, p = seq.request, seq.request.params
        if tok in req.eos:
            return self._finish(seq, Output(req.id, seq.index, tok, eos=True), "stop")
        seq.tokens.append(tok)
        out = Output(req.id, seq.index, tok, seq.stream.push(tok) if seq.stream is not None else "")
        if seq.stream is not None and seq.stream.done:
            return self._finish(seq, out, "stop")
        if len(seq.generated) >= p.max_new_tokens:
            return self._finish(seq, out, "length")
        if req.source is not None and len(seq.tokens) > self.max_len:  # the decoder's positions are all used
            return self._finish(seq, out, "length")
        if p.max_time and now - req.started >= p.max_time:
            return self._finish(seq, out, "time")
        return out

    def _finish(self, seq: Sequence, out: Output, reason: str) -> Output:
        if seq.stream is not None:
            out.text += seq.stream.finish()
        out.finish_reason = reason
        self._free(seq)
        if all(s.finished for s in seq.request.sequences):
            self.requests.pop(seq.request.id, None)
        return out

    def _free(self, seq: Sequence) -> None:
        seq.finished = True
        if self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None

    def run(self) -> list[Output]:
        """Step until every request has finished; every output in order."""
        outputs = []
        while self.has_unfinished():
            outputs += self.step()
        return outputs


def decode_bytes(model: torch.nn.Module, rows: int, length: int) -> int:
    """Memory an engine of ``rows`` slots decoding sequences of up to ``length`` tokens needs: the
    model's cache (at most one context window), the tokens, each slot's seen/count rows over the
    vocabulary, and a few float copies of each step's logits (penalties, filters, softmax)."""
    window = min(length, model.config.block_size)
    return model.cache_bytes(rows, window) + rows * length * 9 + rows * model.config.vocab_size * 4 * 10


def generate_ids(model: torch.nn.Module, prompts: list[int] | list[list[int]], params: SamplingParams,
                 eos_ids: tuple[int, ...] = (), **engine) -> list[list[int]]:
    """Token ids in, token ids out, through an engine: each prompt's ``num_return_sequences`` rows of
    generated ids (ending with the end-of-text token when one was produced), prompt by prompt.
    ``engine`` sets :class:`EngineConfig` options (a GenerateConfig's ``compile`` and ``use_cache``
    are taken from it)."""
    prompts = prompts if prompts and isinstance(prompts[0], list) else [prompts]
    n = params.num_return_sequences
    longest = max(len(p) for p in prompts)
    options = dict(max_batch=len(prompts) * n, max_len=longest + params.max_new_tokens + 1, prefix_cache_mb=0)
    if isinstance(params, GenerateConfig):
        options.update(compile=params.compile, use_cache=params.use_cache)
        params = params.sampling_params()
    engine_ = Engine(model, None, eos_ids, EngineConfig(**{**options, **engine}))
    order = {engine_.add(p, params): i * n for i, p in enumerate(prompts)}
    rows: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    while engine_.has_unfinished():
        for out in engine_.step():
            if out.token is not None:
                rows[order[out.request_id] + out.index].append(out.token)
    return rows
