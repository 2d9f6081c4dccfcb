"""The Python API: ``arlm.load(dir)`` (``arlm.train(config)`` is ``arlm.train.loop.train``).

>>> m = arlm.load("runs/shakespeare-char")
>>> m.generate("ROMEO.", max_new_tokens=40, temperature=0.8, seed=1)   # continuation only
>>> for piece in m.stream("JULIET.", max_new_tokens=40): print(piece, end="")
>>> m.perplexity("To be, or not to be, that is the question.")
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Iterator

import torch

from arlm.config import GenerateConfig, from_dict
from arlm.errors import UserError
from arlm.eval.perplexity import evaluate_text
from arlm.generate.decode import beam_search, generate_ids
from arlm.generate.stream import TextStream
from arlm.runtime import resolve_device
from arlm.train.checkpoint import load_model

log = logging.getLogger(__name__)


def generate_config(**controls) -> GenerateConfig:
    """A validated GenerateConfig from keyword controls; unknown names are a UserError."""
    known = {f.name for f in dataclasses.fields(GenerateConfig)}
    unknown = sorted(set(controls) - known)
    if unknown:
        raise UserError(f"unknown generation option(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    if isinstance(controls.get("stop"), str):
        controls["stop"] = [controls["stop"]]
    cfg = from_dict(GenerateConfig, {k: v for k, v in controls.items() if v is not None or k == "seed"}, "generate options")
    cfg.validate()
    return cfg


class LanguageModel:
    """A loaded model and its tokenizer, ready to generate and score text."""

    def __init__(self, model, tokenizer, config: dict[str, Any]):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = model.transformer.wte.weight.device
        # Defaults that came with the model (a Hugging Face generation_config.json); options given
        # to generate()/stream() or on the command line override them.
        self.generation_defaults: dict[str, Any] = dict(config.get("generation") or {})
        eos = config.get("eos_token_ids") or ([tokenizer.eot_id] if tokenizer and tokenizer.eot_id is not None else [])
        self.eos_ids: tuple[int, ...] = tuple(eos)

    def generate_config(self, **controls) -> GenerateConfig:
        """Validated decoding options: this model's defaults overlaid with ``controls``."""
        return generate_config(**{**self.generation_defaults, **controls})

    @property
    def block_size(self) -> int:
        return self.model.config.block_size

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt ids, cut from the left to the context window (with a warning); an empty
        prompt starts from the end-of-text token, i.e. unconditional generation."""
        self._need_tokenizer()
        encode = getattr(self.tokenizer, "encode_prompt", self.tokenizer.encode)  # adds BOS where the tokenizer does
        ids = encode(prompt) if prompt else []
        if not ids:
            if self.tokenizer.eot_id is None:
                raise UserError("empty prompt: this tokenizer has no end-of-text token to start from; give a prompt")
            ids = [self.tokenizer.eot_id]
        if len(ids) > self.block_size:
            log.warning("prompt is %d tokens, longer than the context window (%d): keeping the last %d",
                        len(ids), self.block_size, self.block_size)
            ids = ids[-self.block_size:]
        return ids

    def stream_sequences(self, prompt: str, cfg: GenerateConfig) -> Iterator[tuple[int, str]]:
        """An iterator of ``(sequence index, new text)`` as tokens arrive, for ``cfg.num_return_sequences``
        rows. The prompt is checked here, before anything is generated or printed."""
        ids = self.encode_prompt(prompt)
        if cfg.num_beams > 1:
            if len(ids) + cfg.max_new_tokens > self.block_size:
                raise UserError(f"beam search needs the prompt ({len(ids)} tokens) plus max_new_tokens "
                                f"({cfg.max_new_tokens}) to fit the context window ({self.block_size}); "
                                f"shorten one of them")
            return self._beam_texts(ids, cfg)
        return self._stream_ids(ids, cfg)

    def _beam_texts(self, ids: list[int], cfg: GenerateConfig) -> Iterator[tuple[int, str]]:
        """Beam search decides a sequence only at the end, so each text arrives whole."""
        for b, hyp in enumerate(beam_search(self.model, ids, cfg, self.eos_ids)):
            stream = TextStream(self.tokenizer, cfg.stop)
            pieces = []
            for tok in hyp.tokens:
                if tok in self.eos_ids:
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
        n_prompts = len(ids) if ids and isinstance(ids[0], list) else 1
        B = n_prompts * cfg.num_return_sequences
        streams = [TextStream(self.tokenizer, cfg.stop) for _ in range(B)]
        finished = torch.zeros(B, dtype=torch.bool)
        eos = self.eos_ids
        for nxt in generate_ids(self.model, ids, cfg, eos, finished):
            for b, tok in enumerate(nxt.tolist()):
                if streams[b].done:
                    continue
                if tok in eos:
                    piece = streams[b].finish()
                else:
                    piece = streams[b].push(tok)
                    if streams[b].done:  # a stop string was produced
                        finished[b] = True
                if piece:
                    yield b, piece
        for b, s in enumerate(streams):
            piece = s.finish()
            if piece:
                yield b, piece

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
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not all(isinstance(p, str) for p in prompts):
            raise UserError("prompt must be a string or a list of strings")
        n = cfg.num_return_sequences
        if cfg.num_beams > 1:  # one beam search per prompt
            texts = []
            for p in prompts:
                row = [""] * n
                for b, piece in self.stream_sequences(p, cfg):
                    row[b] += piece
                texts.extend(row)
        else:  # all prompts in one left-padded batch; every prompt is checked before decoding starts
            ids = [self.encode_prompt(p) for p in prompts]
            texts = [""] * (len(prompts) * n)
            for b, piece in self._stream_ids(ids, cfg):
                texts[b] += piece
        results = [texts[i * n:(i + 1) * n] if n > 1 else texts[i] for i in range(len(prompts))]
        return results[0] if isinstance(prompt, str) else results

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise UserError(f"{self.config.get('path', 'this model')} has no tokenizer files (tokenizer.json, or "
                            f"vocab.json + merges.txt): copy its base model's tokenizer files into the folder")

    def evaluate(self, text: str, batch_size: int = 8, stride: int = 0) -> dict[str, Any]:
        """Loss, perplexity, bits per character/byte of ``text``; ``stride`` > 0 slides the window
        (Hugging Face's strided method), 0 uses non-overlapping windows."""
        self._need_tokenizer()
        return evaluate_text(self.model, self.tokenizer, text, batch_size, self.device, stride)

    def perplexity(self, text: str, stride: int = 0) -> float:
        return self.evaluate(text, stride=stride)["perplexity"]


def load(path: str | Path, device: str = "auto") -> LanguageModel:
    dev = resolve_device(device)
    model, tokenizer, config = load_model(path, dev)
    return LanguageModel(model, tokenizer, config)
