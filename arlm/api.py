"""The Python API: ``arlm.load(dir)`` (``arlm.train(config)`` is ``arlm.train.loop.train``).

>>> m = arlm.load("runs/shakespeare-char")
>>> m.generate("ROMEO.", max_new_tokens=40, temperature=0.8, seed=1)   # continuation only
>>> for piece in m.stream("JULIET.", max_new_tokens=40): print(piece, end="")
>>> m.perplexity("To be, or not to be, that is the question.")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from arlm.config import EngineConfig, GenerateConfig, LoadConfig, from_dict, validated
from arlm.chat import ChatSession  # noqa: F401 (arlm.api.ChatSession, the public name)
from arlm.data.sft import ChatTemplate
from arlm.data.tasks import labels_of, read_example
from arlm.errors import UserError
from arlm.eval import fewshot
from arlm.eval.heads import evaluate_head
from arlm.eval.perplexity import evaluate_text
from arlm.eval.tasks import check_examples, check_metric, score
from arlm.generate.beam import beam_bytes, beam_search_batch
from arlm.generate.engine import Engine, decode_bytes, token_rules
from arlm.generate.grammar import GrammarConstraint, grammar_constraint
from arlm.generate.sampling import PrefixConstraint, banned_sequence_tokens
from arlm.generate.speculative import SpeculativeStats, speculative_ids
from arlm.generate.step import prompt_logprobs
from arlm.generate.stream import TextStream
from arlm.interop.load import load_model
from arlm.io.schema import CheckpointInfo, check_generation_defaults
from arlm.io.text import check_text
from arlm.model.heads import TASK_NAMES
from arlm.runtime import check_memory, resolve_device
from arlm.tokenizers.base import require_text, same_vocabulary, token_texts

log = logging.getLogger(__name__)


def generate_config(**controls) -> GenerateConfig:
    """A validated GenerateConfig from keyword controls; unknown names, wrong types, out-of-range values
    and text that is not valid Unicode are a UserError. For convenience a single ``stop`` string or bad
    word may be given alone, ``logit_bias`` as OpenAI's {token id: bias} and ``json_schema`` as a dict."""
    known = {f.name for f in dataclasses.fields(GenerateConfig)}
    unknown = sorted(set(controls) - known)
    if unknown:
        raise UserError(f"unknown generation option(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    for key in ("stop", "bad_words"):
        if isinstance(controls.get(key), str):
            controls[key] = [controls[key]]
    if isinstance(controls.get("logit_bias"), dict):
        controls["logit_bias"] = [f"{k}={v}" for k, v in controls["logit_bias"].items()]
    if isinstance(controls.get("json_schema"), dict):
        controls["json_schema"] = json.dumps(controls["json_schema"])
    for key in ("stop", "bad_words", "control", "json_schema", "regex"):
        if key in controls:
            check_strings_of(controls[key], key)
    cfg = from_dict(GenerateConfig, {k: v for k, v in controls.items() if v is not None or k == "seed"}, "generate options")
    cfg.validate()
    return cfg


def check_strings_of(value: Any, name: str) -> None:
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, str):
            check_text(v, name)


@dataclass
class TokenLogprob:
    """One token with its log-probability under the model (None for a prompt's first token) and the
    most likely alternatives at its position, as (token text, log-probability)."""

    token: str
    id: int
    logprob: float | None
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Completion:
    """One generated sequence: its text (stop string and end-of-text token excluded), why it ended
    ("stop": end-of-text or a stop string, "length": max_new_tokens, "time": max_time), and, when
    asked for, per-token log-probabilities of the generated tokens and of the prompt (``echo``)."""

    text: str
    finish_reason: str
    tokens: list[TokenLogprob] = field(default_factory=list)
    prompt_tokens: list[TokenLogprob] = field(default_factory=list)


class LanguageModel:
    """A loaded model and its tokenizer, ready to generate and score text."""

    def __init__(self, model, tokenizer, info: CheckpointInfo):
        self.model = model
        self.tokenizer = tokenizer
        self.info = info  # the typed config.json (or what a Hugging Face folder's files say)
        self.device = next(model.parameters()).device
        # Defaults that came with the model (a Hugging Face generation_config.json); options given
        # to generate()/stream() or on the command line override them.
        self.generation_defaults: dict[str, Any] = dict(info.generation)
        self.last_speculative: SpeculativeStats | None = None  # acceptance figures of the last speculative run
        self._drafts: dict[str, Any] = {}
        self._token_texts: list[str | None] | None = None
        eos = info.eos_token_ids or ([tokenizer.eot_id] if tokenizer and tokenizer.eot_id is not None else [])
        self.eos_ids: tuple[int, ...] = tuple(eos)
        # an encoder-decoder (T5, BART, Marian...): the prompt is the source; the output is the target
        self.seq2seq: bool = getattr(model, "is_encoder_decoder", False)

    def generate_config(self, **controls) -> GenerateConfig:
        """Validated decoding options: this model's defaults overlaid with ``controls`` (a bad default that
        is not overridden names its file and the flag that overrides it)."""
        generate_config(**dict(controls))  # the caller's own options first
        check_generation_defaults(self.generation_defaults, controls, self.info.generation_source or self.info.path)
        return generate_config(**{**self.generation_defaults, **controls})

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    def encode_prompt(self, prompt: str, control: str = "") -> list[int]:
        """Prompt ids, cut from the left to the context window (with a warning); an empty
        prompt starts from the end-of-text token, i.e. unconditional generation. A ``control`` code
        starts a new document with it, as the model saw codes in training."""
        self._need_tokenizer()
        check_text(prompt, "the prompt")
        encode = getattr(self.tokenizer, "encode_prompt", self.tokenizer.encode)  # adds BOS where the tokenizer does
        if self.seq2seq:
            return self._encode_source(prompt, control, encode)
        ids = encode(prompt) if prompt else []
        if control:
            known = self.info.data.get("controls")
            if known is not None and control not in known:
                raise UserError(f"this model was not trained with the control code {control!r}; it knows: "
                                f"{', '.join(known[:50])}" + (" ..." if len(known) > 50 else ""))
            if known is None:
                log.warning("this model's training data records no control codes; conditioning on %r anyway", control)
            ids = ([self.tokenizer.eot_id] if self.tokenizer.eot_id is not None else []) + encode(control + prompt)
        if not ids:
            if self.tokenizer.eot_id is None:
                raise UserError("empty prompt: this tokenizer has no end-of-text token to start from; give a prompt")
            ids = [self.tokenizer.eot_id]
        if len(ids) > self.block_size:
            log.warning("prompt is %d tokens, longer than the context window (%d): keeping the last %d",
                        len(ids), self.block_size, self.block_size)
            ids = ids[-self.block_size:]
        return ids

    def _encode_source(self, text: str, control: str, encode) -> list[int]:
        """An encoder-decoder's source ids (with the end-of-source token its tokenizer appends): refused
        when empty or longer than the encoder reads, rather than cut (a cut source is another task)."""
        if control:
            raise UserError("control codes condition a decoder-only model's text; an encoder-decoder takes a source: "
                            "drop --control")
        if not text:
            raise UserError("an encoder-decoder needs a source text to transform (the prompt); it is empty")
        ids = encode(text)
        limit = self.model.config.source_len
        if not ids:
            raise UserError("the source text has no tokens under this model's tokenizer")
        if len(ids) > limit:
            raise UserError(f"the source is {len(ids)} tokens; this encoder reads at most {limit} (max_source_len): "
                            f"shorten it or split it into parts")
        return ids

    def _decoder_prompt(self, ids: list[int]) -> list[int]:
        """What the decoder starts from: an encoder-decoder's start token, or a decoder-only model's prompt."""
        return [self.model.config.decoder_start_token_id] if self.seq2seq else ids

    def _check_beams(self, prompts: list[list[int]], cfg: GenerateConfig) -> None:
        """Beam search's length and memory checks, before anything is decoded."""
        longest = max(len(self._decoder_prompt(ids)) for ids in prompts)
        if longest + cfg.max_new_tokens > self.block_size:
            what = ("the decoder's start token" if self.seq2seq else f"the prompt ({longest} tokens)")
            raise UserError(f"beam search needs {what} plus max_new_tokens ({cfg.max_new_tokens}) to fit the "
                            f"{'decoder' if self.seq2seq else 'context window'} ({self.block_size} positions); "
                            f"lower max_new_tokens")
        check_memory(beam_bytes(self.model, cfg.num_beams, longest + cfg.max_new_tokens, len(prompts)),
                     f"beam search with num_beams={cfg.num_beams} over {len(prompts)} prompt(s)",
                     "lower num_beams or the number of prompts", self.device)

    def stream_sequences(self, prompt: str, cfg: GenerateConfig) -> Iterator[tuple[int, str]]:
        """An iterator of ``(sequence index, new text)`` as tokens arrive, for ``cfg.num_return_sequences``
        rows. The prompt is checked here, before anything is generated or printed."""
        ids = self.encode_prompt(prompt, cfg.control)
        if cfg.num_beams > 1:
            return self._beams([ids], cfg)
        return self._stream_ids(ids, cfg)

    def _beams(self, prompts: list[list[int]], cfg: GenerateConfig) -> Iterator[tuple[int, str]]:
        """Beam search over every prompt at once (rows: prompt index * num_return_sequences + beam),
        checked now, before anything is printed. An encoder-decoder's output ends where its decoder's
        positions do, as in the engine (max_new_tokens is capped there)."""
        if self.seq2seq and cfg.max_new_tokens > self.block_size - 1:
            cfg = dataclasses.replace(cfg, max_new_tokens=self.block_size - 1)
        self._check_beams(prompts, cfg)
        eos = tuple(self.eos_ids) + tuple(t for t in cfg.stop_token_ids if t not in self.eos_ids)
        return self._beam_texts(prompts, cfg, eos, self._token_rules(cfg), self._grammar(cfg, eos))

    def _token_rules(self, cfg: GenerateConfig) -> tuple[list[list[int]], torch.Tensor | None]:
        """Bad words and logit bias as tokens (beam search, speculative decoding; the engine resolves its own)."""
        if cfg.bad_words:
            self._need_tokenizer()
        return token_rules(cfg, self.tokenizer, self.model.config.vocab_size, self.device)

    def _grammar(self, cfg: GenerateConfig, eos: tuple[int, ...]) -> GrammarConstraint | None:
        """The request's structured-output constraint (beam search, speculative decoding; the engine builds its own)."""
        return grammar_constraint(cfg, self.tokenizer, self.model.config.vocab_size, eos)

    def _beam_texts(self, prompts: list[list[int]], cfg: GenerateConfig, eos: tuple[int, ...], rules,
                    grammar: GrammarConstraint | None) -> Iterator[tuple[int, str]]:
        """Beam search decides a sequence only at the end, so each text arrives whole."""
        bad_words, bias = rules
        starts = [self._decoder_prompt(ids) for ids in prompts]
        found = beam_search_batch(self.model, starts, cfg, eos, bad_words=bad_words, bias=bias, constraint=grammar,
                                  sources=prompts if self.seq2seq else None)
        n = cfg.num_return_sequences
        for b, hyp in ((i * n + j, h) for i, hyps in enumerate(found) for j, h in enumerate(hyps)):
            stream = TextStream(self.tokenizer, cfg.stop)
            pieces = []
            for tok in hyp.tokens:
                if tok in eos:
                    break
                pieces.append(stream.push(tok))
                if stream.done:
                    break
            pieces.append(stream.finish())
            if "".join(pieces):
                yield b, "".join(pieces)

    def _stream_ids(self, ids: list[int] | list[list[int]], cfg: GenerateConfig) -> Iterator[tuple[int, str]]:
        """``(row, new text)`` for one prompt's ids or several prompts' (decoded as one left-padded
        batch; row = prompt index * num_return_sequences + sequence index)."""
        events = self._decode(ids, cfg)  # everything is checked here, before the first token
        return ((b, piece) for b, piece, _ in events if piece)

    def _decode(self, ids: list[int] | list[list[int]], cfg: GenerateConfig) -> Iterator[tuple[int, str, Any]]:
        """Check this generation (memory, bad words and biases, the draft model) now, then return an
        iterator of ``(row, new text, event)`` per generated token and then per row at the end.
        ``event`` is ``("token", id, logprob, top_ids, top_logprobs)`` for a token the row kept, or
        ``("end", finish_reason)`` once per row. Rows are prompt index * num_return_sequences +
        sequence index. Nothing is decoded (or printed by a caller) before every check has passed."""
        prompts = ids if ids and isinstance(ids[0], list) else [ids]
        n = cfg.num_return_sequences
        B = len(prompts) * n
        longest = max(len(self._decoder_prompt(p)) for p in prompts)
        if self.seq2seq and (cfg.token_healing or cfg.draft_model):
            raise UserError(f"{'token healing' if cfg.token_healing else 'speculative decoding (draft_model)'} works "
                            f"with decoder-only models; an encoder-decoder's prompt is its source: drop it")
        check_memory(decode_bytes(self.model, B, longest + cfg.max_new_tokens + 1),
                     f"generating {B} sequence(s) (num_return_sequences={n} x {len(prompts)} "
                     f"prompt(s)) of up to {longest + cfg.max_new_tokens} tokens",
                     "lower num_return_sequences, the number of prompts or max_new_tokens", self.device)
        if cfg.draft_model:
            return self._speculative(prompts, cfg)
        skips = [""] * len(prompts)
        if cfg.token_healing:
            prompts, skips = self._heal(prompts)
        engine = Engine(self.model, self.tokenizer, self.eos_ids, EngineConfig(
            max_batch=B, max_len=longest + cfg.max_new_tokens + 1, prefix_cache_mb=0, compile=cfg.compile,
            use_cache=cfg.use_cache))
        rows = {}
        for i, (p, skip) in enumerate(zip(prompts, skips)):
            # a healed prompt also generates (and does not show) the token it re-spells
            params = cfg.sampling_params(max_new_tokens=cfg.max_new_tokens + bool(skip))
            constraint = PrefixConstraint(self.token_texts, skip) if skip else None
            rows[engine.add(p, params, skip_text=skip, constraint=constraint)] = i * n
        return self._engine_events(engine, rows)

    @staticmethod
    def _engine_events(engine: Engine, rows: dict[str, int]) -> Iterator[tuple[int, str, Any]]:
        while engine.has_unfinished():
            for out in engine.step():
                if out.error:
                    raise UserError(out.error)
                row = rows[out.request_id] + out.index
                event = None
                if out.token is not None and not out.eos and out.logprob is not None:
                    event = ("token", out.token, out.logprob, [i for i, _ in out.top], [v for _, v in out.top])
                if out.text or event:
                    yield row, out.text, event
                if out.finish_reason:
                    yield row, "", ("end", out.finish_reason)

    @property
    def token_texts(self) -> list[str | None]:
        """Each token id's text (computed once; see :func:`arlm.tokenizers.base.token_texts`)."""
        if self._token_texts is None:
            self._need_tokenizer()
            self._token_texts = token_texts(self.tokenizer)
        return self._token_texts

    def _heal(self, prompts: list[list[int]]) -> tuple[list[list[int]], list[str]]:
        """Token healing: each prompt without its last token, and that token's text for the output to
        re-spell. A prompt is left whole when it is a single token, or ends in a token with no text of
        its own (end-of-text, part of a character) or whose text differs at the start of a text."""
        texts = self.token_texts
        out, prefixes = [], []
        for ids in prompts:
            full, head = self.tokenizer.decode(ids), self.tokenizer.decode(ids[:-1])
            tail = full[len(head):] if full.startswith(head) else ""
            if len(ids) > 1 and ids[-1] < len(texts) and tail and texts[ids[-1]] == tail:
                out.append(ids[:-1])
                prefixes.append(tail)
            else:
                out.append(ids)
                prefixes.append("")
        return out, prefixes

    def draft(self, path: str) -> "LanguageModel":
        """The draft model at ``path`` (loaded once, on this model's device), checked to share the vocabulary."""
        if path not in self._drafts:
            d = load(path, device=str(self.device))
            # the same token ids must mean the same text
            if d.model.config.vocab_size != self.model.config.vocab_size or (
                    self.tokenizer is not None and d.tokenizer is not None and not same_vocabulary(d.tokenizer, self.tokenizer)):
                raise UserError(f"draft model {path} does not share this model's tokenizer "
                                f"(vocabulary {d.model.config.vocab_size} vs {self.model.config.vocab_size})")
            self._drafts[path] = d
        return self._drafts[path]

    def _speculative(self, prompts: list[list[int]], cfg: GenerateConfig) -> Iterator[tuple[int, str, Any]]:
        if len(prompts) > 1:
            raise UserError("speculative decoding (draft_model) takes one prompt at a time")
        ids = prompts[0]
        if cfg.logprobs or cfg.top_logprobs:
            raise UserError("logprobs are not reported with speculative decoding; drop --draft-model to get them")
        draft = self.draft(cfg.draft_model)
        cannot = [m.config.kind for m in (self.model, draft.model) if not m.can_rewind_cache]
        if cannot:
            raise UserError(f"speculative decoding rewinds the decoding cache, which {cannot[0]} model's state cannot "
                            f"do; drop --draft-model")
        need = len(ids) + cfg.max_new_tokens + cfg.num_draft_tokens
        limit = min(self.block_size, draft.block_size)
        if need > limit:
            raise UserError(f"speculative decoding needs prompt ({len(ids)} tokens) + max_new_tokens ({cfg.max_new_tokens}) "
                            f"+ num_draft_tokens ({cfg.num_draft_tokens}) <= the smaller context window ({limit}); "
                            f"lower max_new_tokens")
        bad_words, bias = self._token_rules(cfg)
        eos = tuple(self.eos_ids) + tuple(cfg.stop_token_ids)
        grammar = self._grammar(cfg, eos)
        if grammar is not None and not eos:
            raise UserError("structured output with speculative decoding needs a model with an end-of-text token; "
                            "drop --draft-model")
        V = self.model.config.vocab_size

        def banned(seq: list[int]) -> torch.Tensor | None:
            ids_ = banned_sequence_tokens(seq, bad_words) + (list(eos) if len(seq) - len(ids) < cfg.min_new_tokens else [])
            if not ids_ and grammar is None:
                return None
            mask = torch.zeros(V, dtype=torch.bool, device=self.device)
            mask[ids_] = True
            if grammar is not None:
                mask |= ~grammar.allowed(seq[len(ids):], V).to(self.device)
                if bool(mask.all()):  # the grammar is complete (or stuck): the sequence ends here
                    mask[list(eos)] = False
            return mask

        self.last_speculative = stats = SpeculativeStats()
        tokens = speculative_ids(self.model, draft.model, ids, cfg, eos, cfg.num_draft_tokens, stats, banned, bias)
        return self._speculative_events(tokens, cfg, set(eos), stats)

    def _speculative_events(self, tokens: Iterator[int], cfg: GenerateConfig, eos: set[int],
                            stats: SpeculativeStats) -> Iterator[tuple[int, str, Any]]:
        stream = TextStream(self.tokenizer, cfg.stop)
        reason, count, t0 = "length", 0, time.monotonic()
        for tok in tokens:
            count += 1
            if tok in eos:
                reason = "stop"
                break
            piece = stream.push(tok)
            if piece:
                yield 0, piece, None
            if stream.done:
                reason = "stop"
                break
        if reason == "length" and cfg.max_time and count < cfg.max_new_tokens and time.monotonic() - t0 >= cfg.max_time:
            reason = "time"
        yield 0, stream.finish(), ("end", reason)
        log.info("speculative decoding: %d of %d draft tokens accepted (%.0f%%) in %d rounds",
                 stats.accepted, stats.proposed, 100 * stats.acceptance_rate, stats.rounds)

    def _token_logprob(self, tid: int, logprob: float | None, top_ids: list[int], top_values: list[float]) -> TokenLogprob:
        decode = self.tokenizer.decode if self.tokenizer is not None else (lambda ids: f"<{ids[0]}>")
        return TokenLogprob(decode([tid]), tid, logprob, [(decode([i]), v) for i, v in zip(top_ids, top_values)])

    def complete(self, prompt: str, **controls) -> list[Completion]:
        """Generate ``num_return_sequences`` completions of ``prompt`` with their finish reasons and,
        with ``logprobs``/``top_logprobs``/``echo``, per-token log-probabilities under the model (the
        raw distribution, before temperature, filters and penalties)."""
        cfg = self.generate_config(**controls)
        ids = self.encode_prompt(prompt, cfg.control)
        n = cfg.num_return_sequences
        if cfg.num_beams > 1:
            if cfg.logprobs or cfg.top_logprobs:
                raise UserError("logprobs are reported for sampling and greedy decoding, not for beam search")
            stream = self.stream_sequences(prompt, cfg)  # checked (memory included) before anything per row exists
            texts = [""] * n
            for b, piece in stream:
                texts[b] += piece
            out = [Completion(t, "stop") for t in texts]
        else:
            events = self._decode(ids, cfg)
            out = [Completion("", "length") for _ in range(n)]
            for b, piece, event in events:
                out[b].text += piece
                if event and event[0] == "token":
                    out[b].tokens.append(self._token_logprob(*event[1:]))
                elif event and event[0] == "end":
                    out[b].finish_reason = event[1]
        if cfg.echo and self.seq2seq:
            raise UserError("echo reports the prompt's tokens as a decoder-only model continues them; an "
                            "encoder-decoder's prompt is its source: drop echo")
        if cfg.echo:
            echoed = [self._token_logprob(tid, lp, [i for i, _ in top], [v for _, v in top])
                      for tid, (lp, top) in zip(ids, prompt_logprobs(self.model, ids, cfg.top_logprobs))]
            for c in out:
                c.prompt_tokens = echoed
        return out

    def stream(self, prompt: str, **controls) -> Iterator[str]:
        """Yield the continuation of ``prompt`` piece by piece (one sequence)."""
        cfg = self.generate_config(**controls)
        if cfg.num_return_sequences != 1:
            raise UserError("stream() produces one sequence; use generate() for num_return_sequences > 1")
        for _, piece in self.stream_sequences(prompt, cfg):
            yield piece

    def generate(self, prompt: str | list[str], **controls) -> str | list[str] | list[list[str]]:
        """The continuation of ``prompt`` (without the prompt): a str, or a list of str for a list of
        prompts. With ``num_return_sequences=n > 1`` each prompt gives a list of n strings."""
        cfg = self.generate_config(**controls)
        if not isinstance(prompt, (str, list, tuple)):
            raise UserError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise UserError("prompt must be a string or a non-empty list of strings")
        n = cfg.num_return_sequences
        # every prompt is checked before decoding starts; beam search runs them together, as does the engine
        ids = [self.encode_prompt(p, cfg.control) for p in prompts]
        stream = self._beams(ids, cfg) if cfg.num_beams > 1 else self._stream_ids(ids, cfg)
        texts = [""] * (len(prompts) * n)
        for b, piece in stream:
            texts[b] += piece
        results = [texts[i * n:(i + 1) * n] if n > 1 else texts[i] for i in range(len(prompts))]
        return results[0] if isinstance(prompt, str) else results

    def chat_template(self, template: str = "") -> ChatTemplate:
        """The chat template: ``template``, else the one this model was fine-tuned with, else its
        tokenizer's, else arlm's default."""
        self._need_tokenizer()
        if self.seq2seq:
            raise UserError("chat templates lay out a conversation for a decoder-only model; this encoder-decoder "
                            "transforms one source text: use generate (or /v1/completions) instead of chat")
        if not isinstance(template, str):
            raise UserError(f"template must be a string (Jinja text or a file name), got {type(template).__name__}")
        return ChatTemplate.for_model(self.tokenizer, template or self.info.chat_template or "")

    def evaluate_task(self, examples: list[dict[str, str]], metric: str, batch_size: int = 8, chat: bool = False,
                      few_shot: int = 0, few_shot_seed: int = fewshot.SEED, **controls) -> tuple[dict[str, Any], list[str]]:
        """Generate for each example's prompt (greedy unless ``controls`` say otherwise), after
        ``few_shot`` demonstrations drawn from the other examples (arlm/eval/fewshot.py), and score the
        outputs against the references with ``metric``; returns (scores, predictions)."""
        check_metric(metric)
        raw = examples
        examples = check_examples(examples)
        if few_shot:
            if chat:
                raise UserError("few-shot demonstrations are laid out as plain text; drop chat (or few_shot)")
            prompts = fewshot.contexts([ex["prompt"] for ex in examples], [ex["reference"] for ex in examples],
                                       list(raw), few_shot, few_shot_seed)
            examples = [{"prompt": p, "reference": ex["reference"]} for p, ex in zip(prompts, examples)]
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        controls = {"temperature": 0.0, **controls}
        cfg = self.generate_config(**controls)
        if cfg.num_return_sequences != 1:
            raise UserError("task evaluation scores one prediction per prompt: use num_return_sequences=1")
        template = self.chat_template() if chat else None
        if template is not None:
            cfg = dataclasses.replace(cfg, stop=cfg.stop + template.stop)
        predictions: list[str] = []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            if template is not None:
                ids = [template.prompt_ids([{"role": "user", "content": ex["prompt"]}])[-self.block_size:] for ex in chunk]
            else:
                ids = [self.encode_prompt(ex["prompt"]) for ex in chunk]
            texts = [""] * len(chunk)
            for b, piece in (self._beams(ids, cfg) if cfg.num_beams > 1 else self._stream_ids(ids, cfg)):
                texts[b] += piece
            predictions += texts
        return score(metric, predictions, [ex["reference"] for ex in examples]), predictions

    def _scoring(self) -> tuple[Any, list[int]]:
        """The encoder and the start token (end-of-text) of log-likelihood scoring."""
        self._need_tokenizer()
        if self.seq2seq:
            raise UserError("log-likelihood scoring of a continuation is a decoder-only model's; score an "
                            "encoder-decoder with generation tasks")
        if self.tokenizer.eot_id is None:
            raise UserError("this tokenizer has no end-of-text token to start a text from")
        return getattr(self.tokenizer, "encode_prompt", self.tokenizer.encode), [self.tokenizer.eot_id]

    def loglikelihood(self, requests: list[tuple[str, str]], batch_size: int = 8) -> list[tuple[float, bool]]:
        """For each (context, continuation): the continuation's log-probability after the context, and
        whether greedy decoding gives it (lm-evaluation-harness's ``loglikelihood``)."""
        encode, start = self._scoring()
        if not isinstance(requests, (list, tuple)) or not all(
                isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in requests):
            raise UserError("requests must be a list of (context, continuation) text pairs")
        pairs = [fewshot.pair_ids(encode, start, check_text(c, "a context"), check_text(x, "a continuation"))
                 for c, x in requests]
        return fewshot.loglikelihoods(self.model, pairs, batch_size)

    def loglikelihood_rolling(self, texts: list[str], batch_size: int = 8) -> list[float]:
        """Each text's log-probability, every token scored once in windows of the model's length after
        the end-of-text token (lm-evaluation-harness's ``loglikelihood_rolling``)."""
        _, start = self._scoring()
        per_text = [fewshot.rolling_pairs(self.tokenizer.encode(check_text(t, "a text")), start[0], self.block_size)
                    for t in texts]
        lls = iter(fewshot.loglikelihoods(self.model, [p for pairs in per_text for p in pairs], batch_size))
        return [sum(next(lls)[0] for _ in pairs) for pairs in per_text]  # (batched across texts)

    def evaluate_choices(self, examples: list[dict[str, Any]], few_shot: int = 0, seed: int = fewshot.SEED,
                         batch_size: int = 8) -> tuple[dict[str, Any], list[int]]:
        """Multiple-choice accuracy (``acc``, ``acc_norm``) of ``{"prompt", "choices", "answer"}`` examples
        after ``few_shot`` demonstrations each; returns (scores, predicted choice indices)."""
        if not isinstance(examples, (list, tuple)) or not examples:
            raise UserError("examples must be a non-empty list of {prompt, choices, answer}")
        parsed = [fewshot.read_choice(ex, f"example {i + 1}") for i, ex in enumerate(examples)]
        ctxs = fewshot.contexts([ex["prompt"] for ex in parsed], [ex["choices"][ex["answer"]] for ex in parsed],
                                list(examples), few_shot, seed)
        requests = [(c, fewshot.TARGET_DELIMITER + choice) for c, ex in zip(ctxs, parsed) for choice in ex["choices"]]
        lls = iter(ll for ll, _ in self.loglikelihood(requests, batch_size))
        per = [[next(lls) for _ in ex["choices"]] for ex in parsed]
        scores = fewshot.choice_scores(per, [ex["choices"] for ex in parsed], [ex["answer"] for ex in parsed])
        predictions = scores.pop("predictions")
        scores.pop("predictions_norm")
        return {**scores, "few_shot": few_shot, "examples": len(parsed)}, predictions

    def embed(self, texts: list[str], pooling: str = "mean", batch_size: int = 16):
        """One vector per text (N, C) float32 array: the mean or the last of its tokens' final hidden
        states (an encoder-decoder's encoder output); texts longer than the window are cut to its start."""
        from arlm.eval.embed import check_features, pooled

        check_features(self.model)
        if self.tokenizer is None:
            raise UserError(f"{self.info.path or 'this model'} has no tokenizer files: copy its base model's into the folder")
        require_text(self.tokenizer)
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise UserError("texts must be a non-empty list of strings")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        return pooled(self.model, self.feature_rows(texts), pooling, batch_size)

    def feature_rows(self, texts: list[str]) -> list[list[int]]:
        """Token ids of texts whose hidden states are read, with the special tokens the tokenizer adds
        (BOS, [CLS] ... [SEP], </s>) as the model saw them in training."""
        encode = getattr(self.tokenizer, "encode_prompt", self.tokenizer.encode)
        return [encode(check_text(t, f"text {i + 1}")) or [self.tokenizer.eot_id or 0] for i, t in enumerate(texts)]

    def evaluate_head(self, examples: list[dict[str, Any]], batch_size: int = 16) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Scores of this model's task head on labelled ``examples`` (the JSONL records of its task, as
        fine-tuning reads them; arlm/data/tasks.py) and one prediction record per example."""
        head = self.info.head
        if head is None:
            raise UserError(f"{self.info.path or 'this model'} has no task head: score generated text with evaluate_task")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(examples, (list, tuple)) or not examples:
            raise UserError("examples must be a non-empty list")
        parsed = [read_example(head.task, ex, f"example {i + 1}") for i, ex in enumerate(examples)]
        labels_of(head.task, parsed, head.labels, "examples")  # every label one the head knows
        return evaluate_head(self.model, self.tokenizer, parsed, batch_size)

    def require_language_model(self) -> None:
        """Refuse, by name, a model whose output layer is a task head (arlm/model/heads.py), or a
        masked-language-model encoder (arlm/model/encoder.py), which fills masks instead of writing on."""
        if getattr(self.model, "is_masked_lm", False):
            raise UserError(f"{self.info.path or 'this model'} is a masked-language-model encoder (BERT): it predicts "
                            f"masked tokens from both sides instead of continuing text; use "
                            f"arlm.pipeline('fill-mask', model=...) or its features")
        if self.info.head is not None:
            raise UserError(f"{self.info.path or 'this model'} has a {TASK_NAMES[self.info.head.task]} head in place of its "
                            f"output layer: it labels text instead of writing it; score it with `arlm eval --task FILE`")

    def _need_tokenizer(self) -> None:
        """A text tokenizer and a language model's output layer: every text verb (generate, chat, eval,
        serve) needs both."""
        self.require_language_model()
        if self.tokenizer is None:
            raise UserError(f"{self.info.path or 'this model'} has no tokenizer files (tokenizer.json, or "
                            f"vocab.json + merges.txt): copy its base model's tokenizer files into the folder")
        require_text(self.tokenizer)

    def evaluate(self, text: str, batch_size: int = 8, stride: int = 0) -> dict[str, Any]:
        """Loss, perplexity, bits per character/byte of ``text``; ``stride`` > 0 slides the window
        (Hugging Face's strided method), 0 uses non-overlapping windows."""
        self._need_tokenizer()
        if self.seq2seq:
            raise UserError("the perplexity of a text is a decoder-only model's score; score an encoder-decoder on "
                            "source/target pairs with eval --task (BLEU, chrF, ROUGE)")
        check_text(text, "the text to evaluate")
        for name, value, low in (("batch_size", batch_size, 1), ("stride", stride, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"{name} must be an integer >= {low}, got {value!r}")
        return evaluate_text(self.model, self.tokenizer, text, batch_size, self.device, stride)

    def perplexity(self, text: str, stride: int = 0) -> float:
        return self.evaluate(text, stride=stride)["perplexity"]


def load(path: str | Path, device: str = LoadConfig.device, precision: str = LoadConfig.precision) -> LanguageModel:
    """Load a checkpoint, training output or Hugging Face folder. ``precision``: float32, bfloat16,
    int8 (weight-only, per-channel scales) or auto (bfloat16 on GPUs that support it); see
    arlm.compress.quantize."""
    from arlm.compress.quantize import quantize

    opts = validated(LoadConfig, {"model": str(path) if isinstance(path, Path) else path, "device": device,
                                  "precision": precision}, "arlm.load options", name_source=False)
    dev = resolve_device(opts.device)
    model, tokenizer, info = load_model(opts.model, dev)
    quantize(model, opts.precision)
    return LanguageModel(model, tokenizer, info)
