"""Audio in and out: speech synthesised with Debian's espeak-ng (``arlm audio synthesize``), WAV files read
and written with soundfile (libsndfile), resampled with SciPy, and ``arlm audio prepare`` (files ->
mu-law tokenizer + shards). Each file is one utterance, a document of the token stream; the held-out
split is whole utterances drawn at random, so no held-out sample was heard in training.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from math import gcd
from pathlib import Path

import numpy as np

from arlm.config import AudioPrepareConfig, AudioSynthConfig
from arlm.data.prepare import check_output, collect_files, write_prepared
from arlm.errors import UserError
from arlm.io.atomic import atomic_dir, atomic_file
from arlm.io.files import read_text_file
from arlm.io.paths import output_dir
from arlm.runtime import check_memory
from arlm.tokenizers.audio import MuLawTokenizer

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise UserError("espeak-ng is not installed: `make system-packages` installs it as root (apt-get install "
                        "espeak-ng)")
    return path


def spoken_lines(files: list[str], count: int) -> list[str]:
    """The first ``count`` lines of 4 words or more (speech headings and stage directions are shorter).
    Every file is read (UTF-8 text, or a one-line refusal), also those after the count is reached."""
    texts = [read_text_file(Path(f), what="text file") for f in files]
    out = [" ".join(line.split()) for text in texts for line in text.splitlines()
           if len(line.split()) >= 4 and any(c.isalpha() for c in line)][:count]
    if not out:
        raise UserError(f"{', '.join(files)} holds no line of 4 words or more to speak")
    return out


def synthesize(cfg: AudioSynthConfig) -> dict:
    """One WAV per (line, voice, speed), written into a new folder atomically."""
    cfg.validate()
    exe = espeak()
    out = output_dir(cfg.out, "--out", replace_whole=True)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {cfg.out} is not empty; synthesize into a new folder")
    lines = spoken_lines(cfg.text, cfg.lines)
    t0 = time.perf_counter()
    n = 0
    with atomic_dir(out) as tmp:
        for i, line in enumerate(lines):
            for voice in cfg.voice:
                for speed in cfg.speed:
                    path = tmp / f"{i:05d}-{voice}-{speed}.wav"
                    run = subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(path), "--stdin"], input=line,
                                         capture_output=True, text=True)
                    if run.returncode != 0 or not path.is_file():
                        raise UserError(f"espeak-ng failed for voice {voice!r}: "
                                        f"{(run.stderr or run.stdout).strip()[:200] or 'no output'}; see `espeak-ng --voices`")
                    n += 1
    return {"files": n, "lines": len(lines), "voices": cfg.voice, "speeds": cfg.speed,
            "seconds": round(time.perf_counter() - t0, 2), "out": str(out)}


# What a file's header may declare: speech is recorded at 8 to 48 kHz; outside these rates the header is
# wrong or the file is not sound (a 1 Hz "recording" resampled to 8 kHz is 8,000 copies of each value).
MIN_RATE, MAX_RATE = 4_000, 384_000
MAX_CHANNELS = 64


def audio_info(path: Path, rate: int) -> int:
    """The samples ``path`` holds at ``rate`` Hz, from its header (soundfile), checked before anything is read:
    a readable file, a sample rate in MIN_RATE..MAX_RATE, a sane channel count, at least 2 samples."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise UserError(f"{path} is not an audio file soundfile can read ({str(e).strip()[:120]}); remove it") from None
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise UserError(f"{path} declares a sample rate of {info.samplerate:,} Hz; arlm reads audio recorded at "
                        f"{MIN_RATE:,} to {MAX_RATE:,} Hz (its header is wrong, or it is not a recording): remove it")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise UserError(f"{path} declares {info.channels} channels; arlm reads 1 to {MAX_CHANNELS}: remove it")
    samples = int(info.frames * rate // info.samplerate)
    if samples < 2:
        raise UserError(f"{path} holds {'no audio' if info.frames == 0 else 'less than two samples'} ({info.frames} "
                        f"frame(s)); an utterance needs some sound: remove it")
    return samples


def read_audio(path: Path, rate: int) -> np.ndarray:
    """A file as mono float64 samples in [-1, 1] at ``rate`` Hz (polyphase resampling, SciPy); its header checked
    first by :func:`audio_info`."""
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        wave, sr = sf.read(str(path), dtype="float64", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        raise UserError(f"{path} is not an audio file soundfile can read ({str(e).strip()[:120]}); remove it") from None
    wave = wave.mean(axis=1)
    if sr != rate and len(wave):
        g = gcd(int(sr), rate)
        wave = resample_poly(wave, rate // g, int(sr) // g)
    return np.clip(wave, -1.0, 1.0)


def write_wav(path: str | Path, wave: np.ndarray, rate: int, verb: str = "audio generate") -> Path:
    """16-bit PCM, written atomically and marked as made by ``arlm VERB`` (RIFF INFO ISFT; arlm/io/outputs.py)."""
    import soundfile as sf

    from arlm.io.outputs import software

    with atomic_file(path) as tmp:
        with sf.SoundFile(str(tmp), "w", samplerate=rate, channels=1, subtype="PCM_16", format="WAV") as f:
            f.software = software(verb)
            f.write(np.asarray(wave, dtype=np.float32))
    return Path(path)


def prepare_audio(cfg: AudioPrepareConfig) -> dict:
    """Read every file, hold out whole utterances, write the mu-law token folder atomically; the metadata."""
    cfg.validate()
    t0 = time.perf_counter()
    out = check_output(cfg.out)
    files = [f for f in collect_files(cfg.inputs, "**/*") if f.suffix.lower() in AUDIO_SUFFIXES]
    if len(files) < 2:
        raise UserError(f"{len(files)} audio file(s) (.wav, .flac, .ogg) found; give at least 2 (one is held out)")
    tok = MuLawTokenizer(cfg.sample_rate)
    total = sum(audio_info(f, cfg.sample_rate) for f in files)  # every header, before any file is read
    # each sample: float64 while read and resampled, int64 as an id, twice over while the splits are joined
    check_memory(total * 32, f"preparing {total / cfg.sample_rate / 3600:,.1f} hours of audio",
                 "prepare fewer or shorter files")
    waves = [read_audio(f, cfg.sample_rate) for f in files]
    order = np.random.default_rng(cfg.seed).permutation(len(files))
    n_test = max(1, int(round(len(files) * cfg.test_fraction)))
    test, train = sorted(order[:n_test].tolist()), sorted(order[n_test:].tolist())
    if not train:
        raise UserError("every file would be held out; lower --test-fraction")

    def stream(idx: list[int]) -> np.ndarray:
        parts = []
        for i in idx:
            parts += [np.array([tok.eot_id]), tok.encode_array(waves[i])]
        return np.concatenate(parts + [np.array([tok.eot_id])])

    train_ids, val_ids = stream(train), stream(test)
    meta = write_prepared(out, tok, train_ids, val_ids, modality="audio", documents=len(files),
                          val_fraction=cfg.test_fraction, split=f"files, seed {cfg.seed}",
                          sources=[str(files[i]) for i in train] + [str(files[i]) for i in test])
    meta.update(seconds=round(time.perf_counter() - t0, 2), train_files=len(train), test_files=len(test),
                train_seconds_audio=round(sum(len(waves[i]) for i in train) / cfg.sample_rate, 1),
                test_seconds_audio=round(sum(len(waves[i]) for i in test) / cfg.sample_rate, 1))
    return meta


def utterances(ids: np.ndarray, eot: int) -> list[np.ndarray]:
    """A split's token stream cut at end-of-text: each utterance's sample ids."""
    ids = np.asarray(ids, dtype=np.int64)
    cuts = np.flatnonzero(ids == eot)
    return [ids[a + 1:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a + 1]
