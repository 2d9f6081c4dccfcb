"""Token ids -> text, incrementally, for streaming.

Two rules: never emit half of a multi-byte character (a byte-level BPE token can end inside one;
its decode then ends in U+FFFD until the rest arrives), and never emit text that may turn out to be
the start of a stop string (it is held back until it cannot be, or the stop string is cut off).
With token healing, the text that re-spells the prompt's removed last token is not new and is skipped.
"""

from __future__ import annotations

from arlm.tokenizers import Tokenizer


class TextStream:
    """Collects one sequence's generated ids; ``push`` returns the text that is safe to show now."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str] | tuple[str, ...] = (), skip: str = ""):
        self.tokenizer = tokenizer
        self.stop = list(stop)
        self.skip = skip  # the healed prompt text that the generated text starts with
        self.ids: list[int] = []
        self.text = ""  # decoded text so far (complete characters only)
        self.emitted = 0  # characters of self.text already returned
        self.done = False

    def push(self, token_id: int) -> str:
        if self.done:
            return ""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for its remaining bytes
        if self.skip and self.skip.startswith(text):
            return ""  # still re-spelling the healed prompt text
        self.text = self._new(text)
        if self.stop:
            longest = max(len(s) for s in self.stop)
            search_from = max(0, self.emitted - longest)
            hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                self.done = True
                return self._take(len(self.text))
            # Hold back a tail that could still grow into a stop string.
            return self._take(len(self.text) - (longest - 1))
        return self._take(len(self.text))

    def finish(self) -> str:
        """The rest of the text once generation ended (including a held-back tail)."""
        if not self.done:
            self.text = self._new(self.tokenizer.decode(self.ids))  # a trailing U+FFFD now stays: the bytes never came
            self.done = True
        return self._take(len(self.text))

    def _new(self, text: str) -> str:
        return text[len(self.skip):] if text.startswith(self.skip) else text

    def _take(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        piece = self.text[self.emitted:upto]
        self.emitted = upto
        return piece
