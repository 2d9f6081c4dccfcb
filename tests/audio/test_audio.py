"""Audio end to end on tiny configs: utterances held out whole, the LPC baseline by hand and on an AR(2)
process, bits per sample == a direct token-by-token sum, generation to WAV/PNG, espeak-ng synthesis,
and refusals that write nothing."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from arlm.config import AudioPrepareConfig, AudioSynthConfig, GPTConfig
from arlm.data.audio import prepare_audio, read_audio, synthesize, utterances
from arlm.data.loader import TokenData
from arlm.errors import UserError
from arlm.eval.audio import adaptive_scale, lpc_bits_per_sample, lpc_predict, model_bits_per_sample, unigram_bits_per_sample
from arlm.model.gpt import GPT
from arlm.tokenizers.audio import MuLawTokenizer
from arlm.train.loop import train
from tests.conftest import CORPUS, tiny_train_config
from tests.reliability.conftest import refused, run


def _tone(path, freq, seconds=0.3, rate=16000, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, len(t))
    sf.write(str(path), 0.5 * np.sin(2 * np.pi * freq * t) * np.hanning(len(t)) + noise, rate)


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    (root / "wav").mkdir()
    for i in range(12):
        _tone(root / "wav" / f"{i:02d}.wav", 200 + 40 * i, seed=i)
    prepare_audio(AudioPrepareConfig(inputs=[str(root / "wav")], out=str(root / "data"), test_fraction=0.25))
    train(tiny_train_config(root / "data", root / "run", max_steps=30, batch_size=4, model=dict(block_size=64)))
    return root


def test_utterances_are_held_out_whole(tones):
    data = TokenData.open(tones / "data")
    tok = data.tokenizer
    assert isinstance(tok, MuLawTokenizer) and data.meta.modality == "audio"
    test, train_ = utterances(data.val, tok.eot_id), utterances(data.train, tok.eot_id)
    assert (len(train_), len(test)) == (9, 3)
    held = data.meta.sources[-3:]  # the held-out files are listed last
    for u, f in zip(test, held):
        assert (u == tok.encode_array(read_audio(f, 8000))).all()
    assert len(test[0]) == 2400  # 0.3 s at 8 kHz (resampled from 16 kHz)


def test_lpc_by_hand_and_on_an_ar2_process():
    assert np.allclose(lpc_predict(np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.25])), [0.0, 0.5, 1.25])
    errors = np.array([1.0, -3.0, 2.0, 100.0])
    assert np.allclose(adaptive_scale(errors, window=2), [1e-5, 1.0, 2.0, 2.5])  # only past errors count
    rng = np.random.default_rng(0)
    x = np.zeros(40_000)
    for t in range(2, len(x)):  # a strongly correlated AR(2), like voiced speech
        x[t] = 1.6 * x[t - 1] - 0.8 * x[t - 2] + rng.normal(0, 0.01)
    tok = MuLawTokenizer(8000)
    ids = [tok.encode_array(np.clip(x[i:i + 10_000], -1, 1)) for i in range(0, 40_000, 10_000)]
    lpc = lpc_bits_per_sample(tok, ids[:3], ids[3:], order=2)
    unigram = unigram_bits_per_sample(ids[:3], ids[3:], 256)
    assert lpc < unigram - 1.5, (lpc, unigram)


def test_bits_per_sample_is_the_direct_sum():
    torch.manual_seed(0)
    tok = MuLawTokenizer(8000)
    model = GPT(GPTConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()
    utts = [np.array([128, 130, 127, 140, 100, 90, 128, 128, 129, 200, 30, 128]), np.array([5, 250, 128])]
    got = model_bits_per_sample(model, tok, utts, torch.device("cpu"), batch_size=3)
    total = 0.0
    with torch.no_grad():
        for u in utts:
            seq = [tok.eot_id] + u.tolist()
            for t in range(1, len(seq)):  # every context fits the window: the whole utterance so far
                logits, _ = model(torch.tensor([seq[max(0, t - 16):t]]))
                total -= torch.log_softmax(logits[0, -1].double(), -1)[seq[t]].item()
    assert got == pytest.approx(total / 15 / math.log(2), rel=1e-5)


def test_the_cli_evaluates_and_generates(tones, tmp_path, capsys):
    code, out, err = run(capsys, ["audio", "eval", "--model", tones / "run", "--data", tones / "data", "--json",
                                  "--lpc-order", 8])
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    assert r["test_utterances"] == 3 and r["test_samples"] == 7200
    assert 0 < r["lpc_bits_per_sample"] < r["unigram_bits_per_sample"] <= 8 and 0 < r["model_bits_per_sample"] < 9
    code, out, err = run(capsys, ["audio", "generate", "--model", tones / "run", "--data", tones / "data",
                                  "--out", tmp_path / "g.wav", "--prompt-seconds", 0.05, "--seconds", 0.02])
    assert code == 0, err
    wave, rate = sf.read(str(tmp_path / "g.wav"))
    assert rate == 8000 and len(wave) == 400 + 160 and (tmp_path / "g.png").stat().st_size > 1000


def test_refusals_write_nothing(tones, trained_model, tmp_path, capsys):
    (tmp_path / "mine.wav").write_bytes(b"mine")
    refused(capsys, ["audio", "generate", "--model", tones / "run", "--data", tones / "data", "--out", tmp_path / "g.mp3"],
            "must be a .wav file", tmp_path)
    refused(capsys, ["audio", "generate", "--model", tones / "run", "--data", tones / "data", "--out", tmp_path / "g.wav",
                     "--utterance", 3], "has 3 utterances", tmp_path)
    refused(capsys, ["audio", "eval", "--model", trained_model, "--data", tones / "data"], "not trained on audio", tmp_path)
    refused(capsys, ["audio", "prepare", tmp_path / "mine.wav", "--out", tmp_path / "d"], "at least 2", tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.wav").write_bytes(b"RIFF nonsense")
    (tmp_path / "src" / "b.wav").write_bytes(b"RIFF nonsense")
    refused(capsys, ["audio", "prepare", tmp_path / "src", "--out", tmp_path / "d"], "not an audio file soundfile can read",
            tmp_path)
    refused(capsys, ["generate", "--model", tones / "run"], "generates audio, not text", tmp_path)
    assert (tmp_path / "mine.wav").read_bytes() == b"mine"


def test_a_data_folder_of_another_rate_is_refused(tones, tmp_path):
    prepare_audio(AudioPrepareConfig(inputs=[str(tones / "wav")], out=str(tmp_path / "d16"), sample_rate=16000))
    from arlm.api import load
    from arlm.audio.workflows import open_data

    with pytest.raises(UserError, match="--sample-rate 8000"):
        open_data(load(tones / "run"), str(tmp_path / "d16"))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed: `make test` installs it "
                                                                "with apt when run as root (apt-get install espeak-ng)")
def test_speech_is_synthesized_with_espeak(tmp_path):
    r = synthesize(AudioSynthConfig(text=[str(CORPUS / "hamlet.txt")], out=str(tmp_path / "speech"), lines=2,
                                    voice=["en-us", "en-gb"], speed=[150]))
    files = sorted((tmp_path / "speech").iterdir())
    assert r["files"] == 4 and len(files) == 4
    wave, rate = sf.read(str(files[0]))
    assert rate == 22050 and len(wave) > rate // 2 and np.abs(wave).max() > 0.05  # half a second of sound at least
    with pytest.raises(UserError, match="espeak-ng failed for voice 'xx-nothing'"):
        synthesize(AudioSynthConfig(text=[str(CORPUS / "hamlet.txt")], out=str(tmp_path / "bad"), lines=1,
                                    voice=["xx-nothing"]))
    assert not (tmp_path / "bad").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "take1.wav").write_bytes(b"mine")
    with pytest.raises(UserError, match="is not empty; synthesize into a new folder"):
        synthesize(AudioSynthConfig(text=[str(CORPUS / "hamlet.txt")], out=str(tmp_path / "mine"), lines=1))
    assert (tmp_path / "mine" / "take1.wav").read_bytes() == b"mine"
