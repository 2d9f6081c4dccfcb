"""SentencePiece model files as Hugging Face ``tokenizers`` tokenizers, for folders that have no
``tokenizer.json``: T5/mT5's ``spiece.model``, and Marian's ``source.spm`` + ``target.spm`` +
``vocab.json`` (the opus-mt folders on the Hugging Face hub ship no other tokenizer).

The file is read with the ``sentencepiece`` package's own protobuf definition and rebuilt from its own
settings, as transformers' ``convert_slow_tokenizer`` does: a Unigram model over the pieces and their
scores, the normaliser spec in SentencePiece's order (the precompiled character map, removal of extra
spaces, whitespace escaped as "▁", a dummy prefix), and a decoder that undoes them. The end-of-source
token is appended as both families' tokenizers do. Tested against ``SentencePieceProcessor.encode``
and transformers' ``MarianTokenizer`` (tests/tokenizers/test_spm.py).

Marian's ids are those of ``vocab.json``, shared by source and target: a piece's score is the source
model's (pieces only the target model has are stored behind a private-use mark, so encoding a source never
produces them and text only they could cover becomes ``<unk>`` as in Marian), and its language codes
(``>>fra<<``) are kept whole.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import Unigram

from arlm.errors import UserError

log = logging.getLogger(__name__)

UNIGRAM = 1  # sentencepiece TrainerSpec.model_type
SPECIAL = ("</s>", "<unk>", "<pad>")
HIDDEN = "\ue000"  # a private-use character: marks pieces the source model cannot produce (see marian_tokenizer)


def read_proto(path: Path):
    """The ModelProto of a SentencePiece file (UserError when it is not one)."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:  # pragma: no cover - a dependency of arlm
        raise UserError("reading SentencePiece files needs the sentencepiece package: pip install sentencepiece") from None
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends: a damaged file
        raise UserError(f"{path} is not a SentencePiece model file ({type(e).__name__}); re-download it") from None
    if not proto.pieces:
        raise UserError(f"{path} holds no SentencePiece pieces; re-download it")
    if proto.trainer_spec.model_type != UNIGRAM:
        raise UserError(f"{path} is a SentencePiece {('BPE' if proto.trainer_spec.model_type == 2 else 'non-unigram')} "
                        f"model; arlm converts unigram models (T5, Marian): write tokenizer.json with transformers "
                        f"(AutoTokenizer.from_pretrained(d).save_pretrained(d))")
    return proto


def _pipeline(tok: Tokenizer, proto) -> Tokenizer:
    """Normaliser, pre-tokeniser and decoder in SentencePiece's order (its normalizer_spec)."""
    spec = proto.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # only spaces: SentencePiece leaves newlines alone
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    if spec.add_dummy_prefix:
        # every stretch between special tokens gets its own prefix, as Marian encodes the text after a
        # language code and T5's (legacy) tokenizer the text between sentinels
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    parts = [decoders.Replace("▁", " ")]
    if spec.add_dummy_prefix:  # fuse first: Strip applies to each token
        parts += [decoders.Fuse(), decoders.Strip(content=" ", left=1)]
    tok.decoder = decoders.Sequence(parts)
    return tok


def _append_eos(tok: Tokenizer, eos: str) -> None:
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A $B {eos}",
                                                       special_tokens=[(eos, tok.token_to_id(eos))])


def t5_tokenizer(path: Path, extra_ids: int = 100) -> tuple[Tokenizer, dict]:
    """T5's ``spiece.model`` (ids as in the file, then ``extra_ids`` sentinels numbered from the top,
    ``<extra_id_0>`` last, as T5's tokenizer numbers them) and the tokenizer_config it implies."""
    proto = read_proto(path)
    pieces = [(p.piece, p.score) for p in proto.pieces]
    tok = _pipeline(Tokenizer(Unigram(pieces, proto.trainer_spec.unk_id, False)), proto)
    extra = extra_ids
    specials = [p.piece for p in proto.pieces if p.type in (2, 3)]  # unknown, control (pad, </s>)
    tok.add_special_tokens(specials)
    tok.add_special_tokens([f"<extra_id_{i}>" for i in range(extra - 1, -1, -1)])  # new ids, after the pieces
    eos = proto.trainer_spec.eos_piece or "</s>"
    if tok.token_to_id(eos) is None:
        raise UserError(f"{path} has no end-of-sequence piece {eos!r}")
    _append_eos(tok, eos)
    return tok, {"eos_token": eos, "pad_token": proto.trainer_spec.pad_piece or "<pad>",
                 "unk_token": proto.trainer_spec.unk_piece or "<unk>"}


def marian_tokenizer(d: Path) -> tuple[Tokenizer, dict]:
    """Marian's source.spm + target.spm over vocab.json's ids, and the tokenizer_config it implies."""
    vocab_file = d / "vocab.json"
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{vocab_file} is not a JSON vocabulary ({e}); re-download it") from None
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              for k, v in vocab.items()):
        raise UserError(f"{vocab_file} must map each piece to an id")
    n = max(vocab.values(), default=-1) + 1
    if n <= 0 or n > 10_000_000 or len(set(vocab.values())) != len(vocab) or min(vocab.values()) < 0 or len(vocab) != n:
        raise UserError(f"{vocab_file} must give every id 0..N-1 to exactly one piece")
    for token in ("</s>", "<unk>"):
        if token not in vocab:
            raise UserError(f"{vocab_file} has no {token} token, which Marian's tokenizer needs")
    source = read_proto(d / "source.spm")
    if not (d / "target.spm").is_file():
        raise UserError(f"{d} has source.spm but no target.spm; re-download the folder")
    read_proto(d / "target.spm")  # checked: the decoder's pieces are vocab.json's
    scores = {p.piece: p.score for p in source.pieces if p.type == 1}
    floor = min(scores.values(), default=0.0)
    missing = [p for p in scores if p not in vocab]
    if missing:
        log.warning("%d pieces of %s are not in vocab.json (e.g. %r): text that needs them is split differently "
                    "than Marian's tokenizer, which maps them to <unk>", len(missing), d / "source.spm", missing[0])
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    # A piece only the target model has must never be produced from a source (Marian's tokenizer makes
    # text it cannot cover <unk>): it is stored behind HIDDEN, which no normalised text contains, and the
    # decoder removes the mark again.
    codes = [piece for piece, _ in by_id if re.fullmatch(r">>.+<<", piece)]  # matched whole, before the model
    units = [(piece if piece in scores or piece in SPECIAL or piece in codes else HIDDEN + piece,
              scores.get(piece, floor)) for piece, _ in by_id]
    tok = _pipeline(Tokenizer(Unigram(units, vocab["<unk>"], False)), source)
    tok.decoder = decoders.Sequence([decoders.Replace(HIDDEN, ""), tok.decoder])
    tok.add_special_tokens([t for t in SPECIAL if t in vocab] + codes)
    _append_eos(tok, "</s>")
    return tok, {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>" if "<pad>" in vocab else None}
