"""Supervised fine-tuning data: JSONL examples -> token ids with a loss mask.

Two record shapes, one per line:

* ``{"prompt": ..., "completion": ...}``: the model reads the prompt and learns the completion,
  followed by the end-of-text token (so it learns to stop);
* ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``: a conversation
  rendered with a chat template; the model learns every assistant turn (and its end-of-turn marker).

Only completion/assistant tokens are trained on: every other position's target is -1, which the
loss ignores (the "prompt loss masking" of instruction tuning, e.g. Ouyang et al. 2022).

Chat templates are Jinja, as in Hugging Face tokenizers (``chat_template`` in tokenizer_config.json
or ``chat_template.jinja``), rendered in a sandbox with ``messages``, ``add_generation_prompt``,
``bos_token`` and ``eos_token``. Which text is an assistant turn is found by rendering the
conversation up to each assistant message with and without it, so any template that renders
conversations incrementally works. Each piece is encoded separately, and a chat prompt at inference
time is encoded the same way, so training and chatting see the same token boundaries.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from arlm.data.loader import collate
from arlm.errors import UserError
from arlm.io.files import read_jsonl as read_jsonl_lines
from arlm.io.files import read_text_file
from arlm.tokenizers.base import EOT, Tokenizer
from arlm.tokenizers.pretrained import special_token_text

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")

# arlm's template for models whose tokenizer has none: plain text that any vocabulary trained on
# ordinary prose can spell ("User:", "Assistant:", newlines), each assistant turn ended by the
# end-of-text token so generation stops there.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}User: {{ m.content }}\n"
    "{% else %}Assistant: {{ m.content }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)
# What the default template writes before a user turn: generation stops if the model starts one.
DEFAULT_TURN_STOP = "\nUser:"


MAX_RENDERED = 1 << 24  # characters a template may build with * or ** (16M: far beyond any conversation)


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        """Jinja's sandbox (no attribute access to Python internals, no mutation), and arithmetic that
        cannot build a gigantic string or number: a template is data from a model folder."""

        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > 64:
                raise UserError("the chat template computes a power too large to be a chat template's")
            if operator == "*" and isinstance(left, (str, list, int)) and isinstance(right, (str, list, int)):
                sizes = [len(v) if isinstance(v, (str, list)) else abs(v) for v in (left, right)]
                if any(isinstance(v, (str, list)) for v in (left, right)) and sizes[0] * sizes[1] > MAX_RENDERED:
                    raise UserError("the chat template builds a text of more than 16M characters")
            return super().call_binop(context, operator, left, right)

    def raise_exception(message):  # templates from the Hub call this to reject a conversation
        raise UserError(f"the chat template rejected the conversation: {message}")

    env = Sandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise UserError(f"the chat template is not valid Jinja: {e}") from None


class ChatTemplate:
    """A Jinja chat template bound to a tokenizer's special tokens."""

    def __init__(self, template: str, tokenizer: Tokenizer):
        self.source = template
        self.template = _compile(template)
        self.tokenizer = tokenizer
        config = getattr(tokenizer, "config", {})
        self.eos_token = special_token_text(config.get("eos_token")) or EOT
        self.bos_token = special_token_text(config.get("bos_token")) or ""
        self.stop = [DEFAULT_TURN_STOP] if template == DEFAULT_CHAT_TEMPLATE else []

    @classmethod
    def for_model(cls, tokenizer: Tokenizer, template: str = "") -> "ChatTemplate":
        """``template`` (Jinja text, or a file holding it), else the tokenizer's own, else arlm's default."""
        if template and "{" not in template:
            if not Path(template).is_file():
                raise UserError(f"chat template {template!r} is neither a Jinja template (no {{ }} in it) nor a file")
            template = read_text_file(template)
        own = getattr(tokenizer, "config", {}).get("chat_template")
        if isinstance(own, list):  # several named templates (tokenizer_config.json): use "default"
            own = next((t.get("template") for t in own if t.get("name") == "default"), None)
        return cls(template or own or DEFAULT_CHAT_TEMPLATE, tokenizer)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                        eos_token=self.eos_token, bos_token=self.bos_token)
        except UserError:
            raise
        except (TemplateError, TypeError, ValueError, OverflowError, RecursionError, MemoryError) as e:
            raise UserError(f"the chat template failed on a conversation ({type(e).__name__}: {str(e)[:160]})") from None

    def pieces(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, is_assistant_turn) pieces, in order."""
        out: list[tuple[str, bool]] = []
        done = ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[:i + 1], add_generation_prompt=False)
            if not before.startswith(done) or not upto.startswith(before):
                raise UserError("the chat template does not render conversations incrementally (a conversation's "
                                "rendering is not a prefix of its continuation's), so assistant turns cannot be "
                                "located; use another template (--chat-template)")
            if upto == before:
                raise UserError(f"the chat template renders nothing for assistant message {i + 1}, so there is nothing "
                                f"to learn; use another template (--chat-template)")
            out += [(before[len(done):], False), (upto[len(before):], True)]
            done = upto
        return [(t, trained) for t, trained in out if t]

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a conversation followed by the start of an assistant turn (for chatting)."""
        return encode_text(self.tokenizer, self.render(messages, add_generation_prompt=True), self.eos_token)


def fit_messages(prompt_ids: Callable[[list[dict[str, str]]], list[int]], system: list[dict[str, str]],
                 messages: list[dict[str, str]], block_size: int, max_new_tokens: int,
                 min_reply: int = 16) -> tuple[list[int], int, int]:
    """Fit a conversation into the context window for the next reply.

    Drops the oldest turns (never the system prompt, never the newest message) until the prompt plus
    ``max_new_tokens`` fits in ``block_size``; if the newest message alone leaves less room than
    that, the reply is shortened, down to ``min_reply`` tokens. Returns (prompt ids, messages
    dropped, reply length). A message that leaves no room even so is a UserError.
    """
    dropped = 0
    while True:
        ids = prompt_ids(system + messages[dropped:])
        if len(ids) + max_new_tokens <= block_size:
            return ids, dropped, max_new_tokens
        if dropped < len(messages) - 1:
            dropped += 1
            while dropped < len(messages) - 1 and messages[dropped]["role"] != "user":  # restart at a user turn
                dropped += 1
            continue
        room = block_size - len(ids)
        if room >= min(min_reply, max_new_tokens):
            return ids, dropped, room
        raise UserError(f"the message is too long for this model: with the system prompt it takes {len(ids)} of the "
                        f"{block_size} tokens of context, leaving no room for a reply; shorten it")


def encode_text(tokenizer: Tokenizer, text: str, eos_token: str = EOT) -> list[int]:
    """Encode ``text``, turning each occurrence of ``eos_token`` into the tokenizer's end-of-text id
    (a character-level vocabulary cannot spell it; a BPE one would split it into ordinary pieces)."""
    ids: list[int] = []
    parts = text.split(eos_token) if eos_token else [text]
    for k, part in enumerate(parts):
        if k:
            if tokenizer.eot_id is None:
                raise UserError("the data uses an end-of-text token, but this tokenizer has none")
            ids.append(tokenizer.eot_id)
        if part:
            ids += tokenizer.encode(part)
    return ids


@dataclass
class Example:
    """One training example: ``ids`` and, per position, whether the model learns that token."""

    ids: np.ndarray  # (n,) int64
    trained: np.ndarray  # (n,) bool

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (n - 1 each); untrained targets are -1."""
        y = np.where(self.trained[1:], self.ids[1:], -1)
        return self.ids[:-1], y


def encode_example(record: dict[str, Any], tokenizer: Tokenizer, template: ChatTemplate | None) -> Example:
    """A checked JSONL record -> Example. Prompt/completion pairs are plain text (no template)."""
    if "messages" in record:
        assert template is not None
        pieces = template.pieces(record["messages"])
        eos = template.eos_token
    else:
        pieces = [(record["prompt"], False), (record["completion"] + EOT, True)]
        eos = EOT
    ids, trained = [], []
    for text, is_trained in pieces:
        piece = encode_text(tokenizer, text, eos)
        ids += piece
        trained += [is_trained] * len(piece)
    return Example(np.asarray(ids, dtype=np.int64), np.asarray(trained, dtype=bool))


def check_record(rec: Any, where: str) -> dict[str, Any]:
    """Validate one JSONL record; errors name the line and say what shape is expected."""
    shapes = 'expected {"prompt": TEXT, "completion": TEXT} or {"messages": [{"role": ..., "content": ...}, ...]}'
    if not isinstance(rec, dict):
        raise UserError(f"{where}: {shapes}, got {type(rec).__name__}")
    if "messages" in rec:
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"{where}: 'messages' must be a non-empty list")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise UserError(f"{where}: message {j + 1} must be {{\"role\": one of {'/'.join(ROLES)}, "
                                f"\"content\": TEXT}}, got {json.dumps(m, ensure_ascii=False)[:120]}")
        if not any(m["role"] == "assistant" for m in msgs):
            raise UserError(f"{where}: the conversation has no assistant message, so there is nothing to learn")
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]}
    if "prompt" in rec and "completion" in rec:
        if not isinstance(rec["prompt"], str) or not isinstance(rec["completion"], str):
            raise UserError(f"{where}: 'prompt' and 'completion' must be strings")
        if not rec["completion"]:
            raise UserError(f"{where}: 'completion' is empty, so there is nothing to learn")
        return {"prompt": rec["prompt"], "completion": rec["completion"]}
    raise UserError(f"{where}: {shapes}; found keys: {', '.join(rec) or 'none'}")


def read_jsonl(path: str | Path, errors: str = "strict", hint: str = "") -> list[Any]:
    """Records of a JSONL file of examples (blank lines skipped); a malformed line, or text that is not
    valid Unicode, is a UserError naming it (``errors="replace"``: U+FFFD instead)."""
    records = [rec for _, rec in read_jsonl_lines(path, errors, hint)]
    if not records:
        raise UserError(f"{path} holds no examples")
    return records


class ExampleData:
    """What the training loop asks of JSONL examples held in memory (``train`` and ``val`` lists of rows
    already cut to the model's lengths, ``meta``, ``tokenizer``, and a ``collate``): one example per row."""

    tokenizer: Any
    meta: dict
    train: list
    val: list

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def record(self) -> dict:
        """What a checkpoint records about its training data."""
        return self.meta

    def check_block_size(self, block_size: int) -> None:
        """Nothing to check: examples were cut to the model's lengths when read."""

    def check_ids(self, vocab_size: int) -> None:
        """Nothing to check: the ids come from the model's own tokenizer."""

    def sampling(self, block_size: int) -> tuple[int, int, int]:
        """(size, window, stride) for the training sampler: one example per row."""
        return len(self.train) + 1, 1, 1

    def rows(self, picks: list[int], block_size: int) -> list:
        return [self.train[i] for i in picks]

    def collate(self, rows: list):
        raise NotImplementedError

    def val_batches(self, batch_size: int, limit: int | None = None) -> list:
        """The held-out examples (the first ``limit`` of them, or all) as batches."""
        rows = self.val[:limit]
        return [self.collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]


class SFTData(ExampleData):
    """Fine-tuning examples split into train/val (the last ``val_fraction`` of the file is held out).

    Rows for the training loop come from :meth:`rows` (padding: one example per row) or, with
    ``packing``, from windows of all training examples laid end to end (each still ending in the
    end-of-text token; attention crosses example boundaries, as in GPT-style packing, but the loss
    is still only on completion tokens).
    """

    def __init__(self, path: str | Path, tokenizer: Tokenizer, block_size: int, val_fraction: float,
                 template: str = "", packing: bool = False):
        self.path = Path(path)
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.packing = packing
        records = [check_record(r, f"{path} example {i + 1}") for i, r in enumerate(read_jsonl(path))]
        chat = any("messages" in r for r in records)
        self.template = ChatTemplate.for_model(tokenizer, template) if chat else None
        examples, cut = [], 0
        for i, rec in enumerate(records):
            try:
                ex = encode_example(rec, tokenizer, self.template)
            except UserError as e:
                raise UserError(f"{path} example {i + 1}: {e}") from None
            if len(ex.ids) > block_size + 1:  # keep the beginning: the prompt and the start of the answer
                ex, cut = Example(ex.ids[:block_size + 1], ex.trained[:block_size + 1]), cut + 1
            examples.append(ex)
        dropped = [i for i, ex in enumerate(examples) if not ex.trained[1:].any()]
        examples = [ex for ex in examples if ex.trained[1:].any()]
        if cut:
            log.warning("%d of %d examples are longer than the context window (%d tokens) and were cut to fit",
                        cut, len(records), block_size)
        if dropped:
            log.warning("%d examples have no completion tokens left inside the context window and were skipped "
                        "(first: example %d)", len(dropped), dropped[0] + 1)
        if not examples:
            raise UserError(f"{path}: no example has a completion token inside the context window ({block_size} tokens); "
                            f"shorten the prompts, or fine-tune a model with a longer context")
        n_val = max(1, int(round(len(examples) * val_fraction)))
        if len(examples) - n_val < 1:
            raise UserError(f"{path}: {len(examples)} usable example(s) cannot be split into training and validation; "
                            f"add examples")
        self.train, self.val = examples[:-n_val], examples[-n_val:]
        if packing:
            ids = np.concatenate([ex.ids for ex in self.train])
            trained = np.concatenate([ex.trained for ex in self.train])
            if len(ids) < block_size + 1:
                raise UserError(f"{path}: the training examples hold {len(ids)} tokens, fewer than one packed window "
                                f"({block_size + 1}); turn packing off")
            self._packed = (ids, np.where(trained, ids, -1))
        self.meta = {
            "format": "sft", "source": str(self.path), "examples": len(examples), "train_examples": len(self.train),
            "val_examples": len(self.val), "chat": chat, "packing": packing, "vocab_size": tokenizer.vocab_size,
            "train_tokens": int(sum(len(ex.ids) for ex in self.train)),
            "trained_tokens": int(sum(int(ex.trained.sum()) for ex in self.train)),
        }

    def sampling(self, block_size: int) -> tuple[int, int, int]:
        """(size, window, stride) for the training sampler: example indices (one example per row), or
        windows of the packed examples."""
        if self.packing:
            return len(self._packed[0]), block_size, 1
        return len(self.train) + 1, 1, 1

    def rows(self, picks: list[int], block_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(x, y) rows for the sampler's picks (example indices, or packed window starts)."""
        if self.packing:
            ids, labels = self._packed
            T = block_size
            return [(ids[s:s + T], labels[s + 1:s + 1 + T]) for s in picks]
        return [self.train[i].xy() for i in picks]

    def val_batches(self, batch_size: int, limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The held-out examples (the first ``limit`` of them, or all) as padded batches."""
        rows = [ex.xy() for ex in self.val[:limit]]
        return [collate(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
