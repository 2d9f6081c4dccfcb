"""Tokenizers that come with Hugging Face checkpoints: ``tokenizer.json``, or GPT-2's ``vocab.json`` + ``merges.txt``.

They behave as ``transformers``' fast tokenizers do (same ids, same decoded text): special tokens in
the text are recognised, and a prompt gets whatever the tokenizer's post-processor adds (Llama's
BOS). ``tokenizer_config.json`` supplies the end/begin-of-sequence tokens and the chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors

from arlm.config import validated
from arlm.errors import UserError
from arlm.io.files import read_json
from arlm.io.schema import HFTokenizerConfig
from arlm.io.files import read_text_file
from arlm.tokenizers.base import EOT, TOKENIZER_CONFIG, TOKENIZER_FILE, library_failure
from arlm.tokenizers.spm import marian_tokenizer, t5_tokenizer

CHAT_TEMPLATE_FILE = "chat_template.jinja"


def special_token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def gpt2_tokenizer_from_files(vocab: Path, merges: Path) -> HFTokenizer:
    """GPT-2's byte-level BPE from its two files, with GPT-2's pre-tokenizer (regex split, no prefix space)."""
    try:
        tok = HFTokenizer(models.BPE.from_file(str(vocab), str(merges), fuse_unk=False))
    except BaseException as e:
        if not library_failure(e):
            raise
        raise UserError(f"cannot read the GPT-2 tokenizer files {vocab.name} / {merges.name}: {e}") from None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if tok.token_to_id(EOT) is not None:
        tok.add_special_tokens([EOT])
    return tok


def _model_type(d: Path) -> str | None:
    """The model_type of the folder's config.json, if it has a readable one."""
    try:
        data = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("model_type") if isinstance(data, dict) and isinstance(data.get("model_type"), str) else None


class PretrainedTokenizer:
    kind = "hf"
    modality = "text"

    def __init__(self, tok: HFTokenizer, config: dict[str, Any] | None = None,
                 eos_id: int | None = None, bos_id: int | None = None):
        self.tok = tok
        self.config = dict(config or {})  # tokenizer_config.json, written back on save
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        eos, bos = special_token_text(self.config.get("eos_token")), special_token_text(self.config.get("bos_token"))
        self.eot_id = tok.token_to_id(eos) if eos else eos_id
        self.bos_id = tok.token_to_id(bos) if bos else bos_id

    @classmethod
    def from_dir(cls, directory: str | Path, eos_id: int | None = None, bos_id: int | None = None) -> "PretrainedTokenizer":
        """Load from a Hugging Face model folder; ``eos_id``/``bos_id`` (from config.json) fill in
        when tokenizer_config.json does not name the special tokens."""
        d = Path(directory)
        config = read_json(d / TOKENIZER_CONFIG, "fix or delete it") if (d / TOKENIZER_CONFIG).is_file() else {}
        validated(HFTokenizerConfig, config, str(d / TOKENIZER_CONFIG), unknown="ignore")
        if (d / CHAT_TEMPLATE_FILE).is_file():  # transformers 5 saves the chat template beside the config
            config["chat_template"] = read_text_file(d / CHAT_TEMPLATE_FILE)
        if (d / TOKENIZER_FILE).is_file():
            try:
                tok = HFTokenizer.from_file(str(d / TOKENIZER_FILE))
            except BaseException as e:
                if not library_failure(e):
                    raise
                raise UserError(f"{d / TOKENIZER_FILE} is not a tokenizer file the tokenizers library can read: {e}") from None
        elif (d / "vocab.json").is_file() and (d / "merges.txt").is_file():
            tok = gpt2_tokenizer_from_files(d / "vocab.json", d / "merges.txt")
            if tok.token_to_id(EOT) is not None:  # GPT-2's convention when nothing else is said
                config = {"eos_token": EOT, "bos_token": EOT, **config}
        elif (d / "spiece.model").is_file():  # T5, mT5: SentencePiece only
            kind = _model_type(d)
            if kind not in (None, "t5", "mt5"):  # Pegasus' spiece.model numbers its pieces after 103 others
                raise UserError(f"{d} has a SentencePiece spiece.model but no tokenizer.json; arlm converts T5's, not "
                                f"{kind}'s: write tokenizer.json with transformers "
                                f"(AutoTokenizer.from_pretrained('{d}').save_pretrained('{d}'))")
            extra = config.get("extra_ids", 100)
            if not isinstance(extra, int) or isinstance(extra, bool) or not 0 <= extra <= 100_000:
                raise UserError(f"{d / TOKENIZER_CONFIG}: extra_ids must be an integer between 0 and 100000, got {extra!r}")
            tok, implied = t5_tokenizer(d / "spiece.model", extra)
            config = {**implied, **config}
        elif (d / "source.spm").is_file() and (d / "vocab.json").is_file():  # Marian (opus-mt)
            tok, implied = marian_tokenizer(d)
            config = {**{k: v for k, v in implied.items() if v}, **config}
        elif (d / "tokenizer.model").is_file():
            raise UserError(
                f"{d} has only a SentencePiece tokenizer.model; arlm reads tokenizer.json. Write one with "
                f"transformers: AutoTokenizer.from_pretrained('{d}').save_pretrained('{d}')"
            )
        else:
            raise UserError(f"{d} has no tokenizer (tokenizer.json, vocab.json + merges.txt, spiece.model, or "
                            f"Marian's source.spm + target.spm + vocab.json)")
        out = cls(tok, config, eos_id, bos_id)
        for key in ("eos_token", "bos_token"):
            text = special_token_text(config.get(key))
            if text and tok.token_to_id(text) is None:
                raise UserError(f"{d / TOKENIZER_CONFIG}: {key} {text!r} is not in the tokenizer's vocabulary "
                                f"({TOKENIZER_FILE}); fix the file")
        if out.vocab_size <= 0:
            raise UserError(f"{d / TOKENIZER_FILE} holds no tokens")
        return out

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of a prompt with the special tokens the tokenizer adds itself (e.g. Llama's BOS)."""
        return self.tok.encode(text, add_special_tokens=True).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        self.tok.save(str(d / TOKENIZER_FILE))
        config = dict(self.config)
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        for key, token_id in (("eos_token", self.eot_id), ("bos_token", self.bos_id)):
            if key not in config and token_id is not None:
                config[key] = self.tok.id_to_token(token_id)
        (d / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
