"""`arlm image` and `arlm audio` with hostile files: damaged PNG/JPEG/WAV, headers that declare absurd sizes or rates,
files without samples; each refused in one line before it is decoded, nothing written. And the verbs that read text
(`inspect`) refuse models of other modalities by name."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import soundfile as sf

from tests.reliability.conftest import refused, run, tone


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring ``width`` x ``height`` grey pixels, then one tiny IDAT and IEND: a few
    hundred bytes that claim any size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def images(folder, n=3):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("name, content, pattern", [
    ("huge.png", png_header(12000, 12000), r"huge.png is 12,000x12,000 pixels, more than arlm reads"),  # 4 GB before
    ("wide.png", png_header(2 ** 31 - 1, 1), r"pixels, more than arlm reads"),
    ("empty.png", b"", r"empty.png is not an image Pillow can read"),
    ("text.jpg", b"hello, not a jpeg", r"text.jpg is not an image Pillow can read"),
    ("cut.png", None, r"cut.png is not an image Pillow can read"),
])
def test_damaged_and_absurd_images(capsys, tmp_path, name, content, pattern):
    src = images(tmp_path / "src")
    if content is None:  # a real PNG cut in half
        from PIL import Image

        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(src / name)
        (src / name).write_bytes((src / name).read_bytes()[:200])
    else:
        (src / name).write_bytes(content)
    refused(capsys, ["image", "prepare", "--source", src, "--out", tmp_path / "out"], pattern, keep=tmp_path)


def test_images_beyond_memory_are_refused_before_decoding(capsys, tmp_path, monkeypatch):
    src = images(tmp_path / "src", 4)
    monkeypatch.setattr("arlm.runtime.available_memory", lambda device=None: 10_000)
    refused(capsys, ["image", "prepare", "--source", src, "--out", tmp_path / "out", "--size", "64x64"],
            r"4 images of 64x64 needs about .* more than the .* of memory available; resize them", keep=tmp_path)
    refused(capsys, ["image", "prepare", "--source", "digits", "--out", tmp_path / "out", "--shift", "8"],
            r"training images with 288 shifted copies each needs about", keep=tmp_path)


def test_an_image_grid_is_bounded_before_sampling(capsys, image_run, tmp_path):
    refused(capsys, ["image", "sample", "--model", image_run / "run", "--per-label", "1000", "--scale", "64", "--out",
                     tmp_path / "g.png"], r"the grid would be 576,064x5,824 pixels, more than", keep=tmp_path)


def wavs(folder, n=3):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        tone(folder / f"{i}.wav", 200 + 50 * i, seed=i)
    return folder


@pytest.mark.parametrize("make, pattern", [
    (lambda p: sf.write(str(p), np.zeros(9600, np.float32), 1), r"declares a sample rate of 1 Hz; arlm reads audio "
                                                                 r"recorded at 4,000 to 384,000 Hz"),  # 77 MB before
    (lambda p: sf.write(str(p), np.zeros(0, np.float32), 8000), r"holds no audio \(0 frame\(s\)\)"),  # accepted before
    (lambda p: sf.write(str(p), np.zeros(1, np.float32), 48000), r"holds less than two samples"),
    (lambda p: p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt "), r"is not an audio file soundfile can read"),
    (lambda p: p.write_bytes(b""), r"is not an audio file soundfile can read"),
    (lambda p: p.write_bytes(b"ID3" + bytes(100)), r"is not an audio file soundfile can read"),
])
def test_damaged_and_absurd_audio(capsys, tmp_path, make, pattern):
    src = wavs(tmp_path / "src")
    make(src / "bad.wav")
    refused(capsys, ["audio", "prepare", src, "--out", tmp_path / "out"], pattern, keep=tmp_path)


def test_audio_beyond_memory_is_refused_before_reading(capsys, tmp_path, monkeypatch):
    src = wavs(tmp_path / "src")
    monkeypatch.setattr("arlm.runtime.available_memory", lambda device=None: 10_000)
    refused(capsys, ["audio", "prepare", src, "--out", tmp_path / "out"], r"preparing 0.0 hours of audio needs about",
            keep=tmp_path)


def test_audio_eval_with_an_empty_held_out_split(capsys, audio_run, tmp_path):
    """A prepared folder whose held-out utterance has no samples (as `audio prepare` let a 0-frame file through):
    a one-line refusal, where eval divided by zero."""
    from arlm.data.loader import TokenData
    from arlm.data.prepare import write_prepared

    data = TokenData.open(audio_run / "data")
    eot = data.tokenizer.eot_id
    write_prepared(tmp_path / "data", data.tokenizer, np.asarray(data.train, dtype=np.int64), np.array([eot, eot]),
                   modality="audio", documents=3)
    for verb in (["eval"], ["generate", "--out", tmp_path / "g.wav"]):
        refused(capsys, ["audio", *verb, "--model", audio_run / "run", "--data", tmp_path / "data"],
                r"held-out split .* (holds no utterance|has 0 utterances)", keep=tmp_path)
    val = np.asarray(data.val, dtype=np.int64)
    write_prepared(tmp_path / "short", data.tokenizer, np.concatenate([[eot], val[1:101], [eot]]), val,
                   modality="audio", documents=3)
    refused(capsys, ["audio", "eval", "--model", audio_run / "run", "--data", tmp_path / "short", "--lpc-order", "64"],
            r"--lpc-order 64 needs more than 128 training samples; the training split of .* has 100", keep=tmp_path)


@pytest.mark.parametrize("verb", ["tokens", "lens", "attention", "heads"])
@pytest.mark.parametrize("which", ["image_run", "audio_run", "series_run"])
def test_inspect_reads_text_models_only(capsys, request, tmp_path, verb, which):
    """`inspect tokens` on an image model printed a cut-off sentence ("images must be 8x8 ..., got "); on an audio
    or series model it raised from numpy."""
    root = request.getfixturevalue(which)
    (tmp_path / "t.txt").write_text("some text to read")
    args = {"heads": ["--data", tmp_path / "t.txt"], "attention": ["--text", "hi", "--out", tmp_path / "a.png"]}
    what = {"image_run": "images", "audio_run": "audio", "series_run": "forecasts"}[which]
    refused(capsys, ["inspect", verb, "--model", root / "run", *args.get(verb, ["--text", "hi"])],
            rf"this model generates {what}, not text; see `arlm (image|audio|ts) --help`", keep=tmp_path)


def test_image_tokenizer_names_what_it_was_given():
    from arlm.errors import UserError
    from arlm.tokenizers.image import PixelTokenizer

    tok = PixelTokenizer(8, 8, levels=4)
    with pytest.raises(UserError, match=r"images must be 8x8 for this tokenizer, got a value of shape \(\) \(str\)"):
        tok.encode("hello")
    with pytest.raises(UserError, match=r"got 4x4$"):
        tok.encode(np.zeros((4, 4)))


def test_the_pixel_grid_and_wav_outputs_carry_the_mark(capsys, image_run, audio_run, tmp_path):
    from arlm.io.outputs import png_text, software, wav_software

    code, _, err = run(capsys, ["image", "sample", "--model", image_run / "run", "--per-label", "1", "--out",
                                tmp_path / "grid.png"])
    assert code == 0, err
    assert png_text(tmp_path / "grid.png")["Software"] == software("image sample")
    code, _, err = run(capsys, ["audio", "generate", "--model", audio_run / "run", "--data", audio_run / "data",
                                "--seconds", "0.01", "--out", tmp_path / "g.wav"])
    assert code == 0 and err == "", err  # no warning about a spectrogram shorter than its window
    assert wav_software(tmp_path / "g.wav").startswith(software("audio generate"))
    assert png_text(tmp_path / "g.png")["Software"] == software("audio generate")


def test_synthesize_checks_every_text_and_its_size_first(capsys, tmp_path):
    text = tmp_path / "lines.txt"
    text.write_text("one two three four five\n" * 50)
    refused(capsys, ["audio", "synthesize", "--text", text, "--text", tmp_path / "missing.txt", "--out", tmp_path / "s"],
            r"text file not found: .*missing.txt", keep=tmp_path)  # was skipped once the first file gave the lines
    (tmp_path / "tone.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x80\x81")
    refused(capsys, ["audio", "synthesize", "--text", text, "--text", tmp_path / "tone.wav", "--out", tmp_path / "s"],
            r"tone.wav is not valid UTF-8", keep=tmp_path)
    refused(capsys, ["audio", "synthesize", "--text", text, "--lines", "100000", "--out", tmp_path / "s"],
            r"would be 600,000 files, more than 20,000; lower --lines", keep=tmp_path)
