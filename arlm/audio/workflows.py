"""``arlm audio eval`` and ``arlm audio generate``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from arlm.config import AudioEvalConfig, AudioGenerateConfig, SamplingParams
from arlm.data.audio import utterances, write_wav
from arlm.data.loader import TokenData
from arlm.errors import UserError
from arlm.eval.audio import lpc_bits_per_sample, model_bits_per_sample, unigram_bits_per_sample
from arlm.generate.engine import generate_ids
from arlm.io.outputs import PNG, WAV, Output, claim_file
from arlm.tokenizers.audio import MuLawTokenizer
from arlm.tokenizers.base import expect_tokenizer


def audio_tokenizer(tok) -> MuLawTokenizer:
    return expect_tokenizer(tok, MuLawTokenizer, "audio", "audio")


def open_data(lm, path: str) -> tuple[MuLawTokenizer, TokenData]:
    tok = audio_tokenizer(lm.tokenizer)
    fix = f"use the folder the model was trained on, or prepare one with --sample-rate {tok.sample_rate}"
    return tok, TokenData.open_matching(path, tok, fix)


def split_utterances(data: TokenData, tok: MuLawTokenizer, path: str, split: str) -> list[np.ndarray]:
    """The utterances of a prepared folder's ``split`` ("training" or "held-out"); refused when it has none (a
    folder prepared from files without samples, before `audio prepare` refused them)."""
    utts = utterances(data.train if split == "training" else data.val, tok.eot_id)
    if not utts:
        raise UserError(f"the {split} split of {path} holds no utterance with samples; prepare it again with "
                        f"`arlm audio prepare` from files that hold sound")
    return utts


def evaluate_audio(lm, cfg: AudioEvalConfig) -> dict:
    """Bits per sample of the held-out utterances: the model, the unigram and the LPC baselines."""
    tok, data = open_data(lm, cfg.data)
    t0 = time.perf_counter()
    train, test = split_utterances(data, tok, cfg.data, "training"), split_utterances(data, tok, cfg.data, "held-out")
    if sum(len(u) for u in train) <= 2 * cfg.lpc_order:
        raise UserError(f"--lpc-order {cfg.lpc_order} needs more than {2 * cfg.lpc_order} training samples; the "
                        f"training split of {cfg.data} has {sum(len(u) for u in train)}: lower --lpc-order")
    out = {"test_utterances": len(test), "test_samples": int(sum(len(u) for u in test)),
           "sample_rate": tok.sample_rate, "context_samples": lm.block_size}
    out["model_bits_per_sample"] = model_bits_per_sample(lm.model, tok, test, lm.device, cfg.batch_size)
    out["unigram_bits_per_sample"] = unigram_bits_per_sample(train, test, tok.levels)
    out["lpc_bits_per_sample"] = lpc_bits_per_sample(tok, train, test, cfg.lpc_order)
    out["lpc_order"] = cfg.lpc_order
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


def generate_outputs(cfg: AudioGenerateConfig, model_dir: str) -> Path:
    """--out (a WAV) and the PNG beside it, checked before the model loads (arlm/io/outputs.py)."""
    return claim_file(cfg.out, "--out", Output(WAV, "audio generate"), overwrite=cfg.overwrite,
                      input_folders=[("model folder", model_dir), ("data folder", cfg.data)],
                      companions=[(Path(cfg.out).with_suffix(".png"), Output(PNG, "audio generate"))])


def continue_utterance(lm, cfg: AudioGenerateConfig, out: Path) -> dict:
    """The first ``prompt_seconds`` of a held-out utterance, continued for ``seconds``: WAV + PNG (``out``, from
    :func:`generate_outputs`, and the PNG beside it)."""
    tok, data = open_data(lm, cfg.data)
    test = split_utterances(data, tok, cfg.data, "held-out")
    if cfg.utterance >= len(test):
        raise UserError(f"--utterance {cfg.utterance}: the held-out split has {len(test)} utterances (0..{len(test) - 1})")
    given = test[cfg.utterance][:max(1, int(cfg.prompt_seconds * tok.sample_rate))]
    prompt = [tok.eot_id] + given.tolist()[-(lm.block_size - 1):]
    params = SamplingParams(max_new_tokens=int(cfg.seconds * tok.sample_rate), temperature=cfg.temperature,
                            seed=cfg.seed, logit_bias=[f"{tok.eot_id}=-100"])  # samples only, never end-of-text
    new = generate_ids(lm.model, prompt, params, ())[0]
    wave = np.concatenate([tok.decode(given), tok.decode(new)])
    write_wav(out, wave, tok.sample_rate)
    png = Path(cfg.out).with_suffix(".png")  # beside the name given, as checked
    from arlm.viz.audio import waveform_and_spectrogram

    waveform_and_spectrogram(wave, tok.sample_rate, len(given) / tok.sample_rate, png)
    return {"wav": cfg.out, "png": str(Path(cfg.out).with_suffix(".png")), "prompt_seconds": round(len(given) / tok.sample_rate, 3),
            "generated_seconds": round(len(new) / tok.sample_rate, 3)}
