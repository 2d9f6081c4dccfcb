"""A multi-turn conversation with a loaded model (``arlm chat`` and the Python API): the whole
conversation kept, each reply generated from as much of it as fits the context window."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from arlm.config import CHAT_DEFAULTS, GenerateConfig
from arlm.data.sft import fit_messages
from arlm.errors import UserError
from arlm.io.atomic import atomic_write_text
from arlm.io.outputs import JSONL, Output, claim_file
from arlm.io.text import check_text

if TYPE_CHECKING:
    from arlm.api import LanguageModel


class ChatSession:
    """A multi-turn conversation with a model: ``send`` streams the reply to a user message.

    The whole conversation is kept (``messages``, for ``save``); each reply is generated from as much
    of it as fits the context window with room for the reply (:func:`arlm.data.sft.fit_messages`:
    the oldest turns go first, the system prompt never).
    """

    def __init__(self, lm: LanguageModel, system: str = "", template: str = "", **controls):
        self.lm = lm
        self.template = lm.chat_template(template)
        # precedence: the options given, then the model's own defaults, then chat's
        chat = {k: v for k, v in CHAT_DEFAULTS.items() if k not in lm.generation_defaults}
        self.cfg = lm.generate_config(**{**chat, **controls})
        if self.cfg.num_return_sequences != 1 or self.cfg.num_beams > 1:
            raise UserError("chat produces one reply at a time: use num_return_sequences=1 and num_beams=1")
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.dropped = 0  # messages left out of the last reply's context

    def reset(self) -> None:
        self.messages = []
        self.dropped = 0

    def _system(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}] if self.system else []

    def conversation(self) -> list[dict[str, str]]:
        """The system prompt (if any) and every message so far, in the JSONL ``messages`` format."""
        return self._system() + list(self.messages)

    def send(self, text: str) -> Iterator[str]:
        """Add a user message and return an iterator of the reply's pieces; the reply joins the
        conversation once the iterator is exhausted. A message that cannot fit raises here, at once."""
        check_text(text, "the message")
        check_text(self.system, "the system prompt")
        if not text.strip():
            raise UserError("empty message")
        self.messages.append({"role": "user", "content": text})
        try:
            ids, self.dropped, room = fit_messages(self.template.prompt_ids, self._system(), self.messages, self.lm.block_size,
                                                   self.cfg.max_new_tokens)
        except UserError:
            self.messages.pop()
            raise
        cfg = dataclasses.replace(self.cfg, max_new_tokens=room, stop=self.cfg.stop + self.template.stop)
        if cfg.seed is not None:  # reproducible, but not the same random numbers for every reply
            cfg.seed += sum(m["role"] == "assistant" for m in self.messages)
        return self._reply(ids, cfg)

    def _reply(self, ids: list[int], cfg: GenerateConfig) -> Iterator[str]:
        reply = []
        for _, piece in self.lm._stream_ids(ids, cfg):
            reply.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(reply).strip()})

    def save(self, path: str | Path) -> Path:
        """Write the conversation as one JSON line ({"messages": [...]}, the fine-tuning format), atomically. An
        existing file is replaced only if it is a conversation saved so (arlm/io/outputs.py)."""
        claim_file(path, "the conversation file", Output(JSONL, "chat", keys=frozenset({"messages"})))
        atomic_write_text(path, json.dumps({"messages": self.conversation()}, ensure_ascii=False) + "\n")
        return Path(path)
