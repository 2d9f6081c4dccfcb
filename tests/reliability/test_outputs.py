"""The output guard (arlm/io/outputs.py) on every verb that writes: an output is never an input, an existing file is
replaced only when arlm wrote it for the same purpose (or, with --overwrite, when it is of the kind written),
companion files are checked like the named output, and a folder replaced whole holds only arlm's files.

Each data-loss case of the issue that introduced the guard is here, and failed before it: `inspect attention`
overwriting the model's weights or a user's notes with a PNG, `ts backtest` deleting a user's PNG in its folder,
`ts forecast` overwriting a PNG beside its CSV."""

from __future__ import annotations

import struct

import pytest

from arlm.io.outputs import CSV, GGUF, PNG, WAV, Output, claim_dir, claim_file, model_file, png_text, safe_name, \
    software, wav_software
from tests.reliability.conftest import copy, refused, run, snapshot

TEXT = ["--text", "To be, or not"]


def user_png(path):
    """A PNG a user made (Pillow, no arlm mark)."""
    from PIL import Image

    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def ok(capsys, argv):
    code, out, err = run(capsys, argv)
    assert code == 0, err
    return out


# -- the cases of the issue ------------------------------------------------------------------------------
def test_inspect_never_writes_into_the_model_or_over_a_users_file(capsys, run_dir, tmp_path):
    model = copy(run_dir, tmp_path / "run")
    for out in (model / "best" / "model.safetensors", model / "loss.png"):
        refused(capsys, ["inspect", "attention", "--model", model, *TEXT, "--out", out], r"inside the model folder",
                keep=tmp_path)
    ok(capsys, ["generate", "--model", model, "--prompt", "A", "--max-new-tokens", "2"])  # the weights still load
    (tmp_path / "notes.txt").write_text("my notes\n")
    (tmp_path / "play.txt").write_text("To be, or not to be, that is the question. " * 4)
    for verb, args in (("attention", TEXT), ("heads", ["--data", tmp_path / "play.txt"])):
        refused(capsys, ["inspect", verb, "--model", model, *args, "--out", tmp_path / "notes.txt"],
                r"notes.txt exists and is not a PNG image; arlm will not replace it", keep=tmp_path)
        refused(capsys, ["inspect", verb, "--model", model, *args, "--out", tmp_path / "notes.txt", "--overwrite"],
                r"is not a PNG image", keep=tmp_path)


def test_ts_backtest_keeps_a_folder_holding_the_users_files(capsys, tmp_path):
    out = tmp_path / "bt"
    out.mkdir()
    user_png(out / "holiday.png")
    (out / "results.csv").write_text("a,b\n1,2\n")  # a results.csv arlm did not write
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--model", "seasonal-naive", "--out", out],
            r"--out .*bt holds files `arlm ts backtest` did not write \(holiday.png, results.csv\)", keep=tmp_path)
    new = tmp_path / "bt2"
    ok(capsys, ["ts", "backtest", "--dataset", "nile", "--model", "seasonal-naive", "--windows", "1", "--out", new])
    assert sorted(p.name for p in new.iterdir()) == ["nile.png", "results.csv"]
    assert png_text(new / "nile.png")["Software"] == software("ts backtest")
    ok(capsys, ["ts", "backtest", "--dataset", "nile", "--model", "ar", "--windows", "1", "--out", new])  # its own: replaced
    assert "ar" in (new / "results.csv").read_text()
    user_png(new / "mine.png")
    refused(capsys, ["ts", "backtest", "--dataset", "nile", "--model", "ar", "--out", new], r"did not write \(mine.png\)",
            keep=tmp_path)


def test_ts_forecast_checks_the_png_beside_its_csv(capsys, tmp_path):
    user_png(tmp_path / "chart.png")
    base = ["ts", "forecast", "--dataset", "nile", "--out"]
    refused(capsys, base + [tmp_path / "chart.csv"],
            r"chart.png \(written beside --out .*chart.csv\) exists and was not written by `arlm ts forecast`; choose "
            r"another name, or add --overwrite", keep=tmp_path)
    ok(capsys, base + [tmp_path / "chart.csv", "--overwrite"])
    assert png_text(tmp_path / "chart.png")["Software"] == software("ts forecast")
    ok(capsys, base + [tmp_path / "chart.csv"])  # both its own now: replaced without asking
    (tmp_path / "other.csv").write_text("date,sales\n2020-01-01,3\n2020-01-02,4\n")
    refused(capsys, base + [tmp_path / "other.csv"], r"other.csv exists and was not written by `arlm ts forecast`",
            keep=tmp_path)
    refused(capsys, base + [tmp_path / "chart.png"], r"--out must name a .csv file", keep=tmp_path)
    refused(capsys, ["ts", "forecast", "--csv", tmp_path / "other.csv", "--column", "sales", "--out",
                     tmp_path / "other.csv", "--overwrite"], r"is the CSV being read", keep=tmp_path)


# -- the other verbs that write ---------------------------------------------------------------------------
def test_image_sample_output(capsys, image_run, tmp_path):
    run_ = image_run / "run"
    base = ["image", "sample", "--model", run_, "--per-label", "1", "--scale", "1", "--out"]
    user_png(tmp_path / "mine.png")
    (tmp_path / "notes.png").write_text("not an image")
    refused(capsys, base + [tmp_path / "mine.png"], r"mine.png exists and was not written by `arlm image sample`",
            keep=tmp_path)
    refused(capsys, base + [tmp_path / "notes.png", "--overwrite"], r"is not a PNG image", keep=tmp_path)
    refused(capsys, base + [run_ / "grid.png"], r"inside the model folder", keep=run_)
    refused(capsys, ["image", "sample", "--model", run_, "--complete", image_run / "data", "--out",
                     image_run / "data" / "c.png"], r"inside the data folder", keep=image_run)
    ok(capsys, base + [tmp_path / "grid.png"])
    ok(capsys, base + [tmp_path / "grid.png"])  # its own grid: replaced
    ok(capsys, base + [tmp_path / "mine.png", "--overwrite"])
    assert png_text(tmp_path / "mine.png")["Software"] == software("image sample")


def test_audio_generate_checks_the_wav_and_the_png_beside_it(capsys, audio_run, tmp_path):
    base = ["audio", "generate", "--model", audio_run / "run", "--data", audio_run / "data", "--seconds", "0.01",
            "--prompt-seconds", "0.01", "--out"]
    user_png(tmp_path / "a.png")
    refused(capsys, base + [tmp_path / "a.wav"], r"a.png \(written beside --out .*a.wav\) exists and was not written by "
            r"`arlm audio generate`", keep=tmp_path)
    (tmp_path / "b.wav").write_text("not a wav")
    refused(capsys, base + [tmp_path / "b.wav", "--overwrite"], r"b.wav exists and is not a WAV file", keep=tmp_path)
    refused(capsys, base + [audio_run / "data" / "x.wav"], r"inside the data folder", keep=audio_run)
    ok(capsys, base + [tmp_path / "a.wav", "--overwrite"])
    assert wav_software(tmp_path / "a.wav").startswith(software("audio generate"))
    ok(capsys, base + [tmp_path / "a.wav"])  # both its own: replaced


def test_model_folders_are_replaced_only_when_they_hold_a_model(capsys, run_dir, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_text("{}")
    (mixed / "thesis.tex").write_text("\\documentclass{article}")
    for argv in (["export", "--format", "hf", "--model", run_dir], ["convert", "--to-hf", run_dir],
                 ["compress", "quantize", "--model", run_dir, "--no-baseline", "--decode-tokens", "0"]):
        refused(capsys, [*argv, "--out", mixed, "--overwrite"], r"holds files `arlm .*` did not write \(thesis.tex\)",
                keep=tmp_path)
    ok(capsys, ["export", "--format", "hf", "--model", run_dir, "--out", tmp_path / "hf"])
    refused(capsys, ["export", "--format", "hf", "--model", run_dir, "--out", tmp_path / "hf"],
            r"already exists; choose another folder or add --overwrite", keep=tmp_path)
    ok(capsys, ["convert", "--to-hf", run_dir, "--out", tmp_path / "hf", "--overwrite"])


def test_exports_replace_only_a_file_of_their_format(capsys, run_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    refused(capsys, ["export", "--model", run_dir, "--out", tmp_path / "notes.txt", "--overwrite"],
            r"notes.txt exists and is not a GGUF file", keep=tmp_path)
    ok(capsys, ["export", "--model", run_dir, "--out", tmp_path / "m.gguf"])
    refused(capsys, ["export", "--model", run_dir, "--format", "onnx", "--out", tmp_path / "m.gguf", "--overwrite"],
            r"m.gguf exists and is not an ONNX model", keep=tmp_path)
    ok(capsys, ["export", "--model", run_dir, "--out", tmp_path / "m.gguf", "--overwrite"])


# -- the guard itself -------------------------------------------------------------------------------------
def test_marks_are_read_from_the_files_own_metadata(tmp_path):
    import soundfile as sf
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Title", "x")
    info.add_text("Software", "arlm inspect heads")
    Image.new("L", (2, 2)).save(tmp_path / "a.png", pnginfo=info)
    assert png_text(tmp_path / "a.png") == {"Title": "x", "Software": "arlm inspect heads"}
    assert Output(PNG, "inspect heads").ours(tmp_path / "a.png")
    assert not Output(PNG, "inspect attention").ours(tmp_path / "a.png")
    assert not Output(PNG, "inspect").ours(tmp_path / "a.png")  # a prefix of the verb is another verb
    with sf.SoundFile(str(tmp_path / "a.wav"), "w", samplerate=8000, channels=1, format="WAV") as f:
        f.software = "arlm audio generate"
        f.write([0.0] * 10)
    assert Output(WAV, "audio generate").ours(tmp_path / "a.wav")
    sf.write(str(tmp_path / "b.wav"), [0.0] * 10, 8000)  # libsndfile alone marks nothing
    assert wav_software(tmp_path / "b.wav") == "" and WAV.test(tmp_path / "b.wav")
    for junk in (b"", b"\x89PNG\r\n\x1a\n" + struct.pack(">I4s", 1 << 30, b"tEXt"), b"RIFF\xff\xff\xff\xffWAVE"):
        (tmp_path / "j").write_bytes(junk)
        assert png_text(tmp_path / "j") == {} and wav_software(tmp_path / "j") == ""
    (tmp_path / "r.csv").write_text("series,model,mase,wql\nnile,ar,1,1\n")
    assert Output(CSV, "ts backtest", "series,model,mase,wql").ours(tmp_path / "r.csv")
    assert not Output(CSV, "ts backtest", "model,step").ours(tmp_path / "r.csv")


def test_claims_check_every_path_before_anything_is_written(tmp_path):
    from arlm.errors import UserError

    user_png(tmp_path / "x.png")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="exists and was not written by `arlm ts forecast`; choose another name$"):
        claim_file(tmp_path / "x.csv", "--out", Output(CSV, "ts forecast", "a"),
                   companions=[(tmp_path / "x.png", Output(PNG, "ts forecast"))])  # a verb without --overwrite
    with pytest.raises(UserError, match="is a folder"):
        claim_file(tmp_path, "--out", Output(GGUF, "export"))
    with pytest.raises(UserError, match="/dev/null is not a regular file"):  # nothing read from it, nothing replaced
        claim_file("/dev/null", "--out", Output(PNG, "inspect heads"), overwrite=True)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model.safetensors").write_bytes(b"x")
    (tmp_path / "m" / "model-00001-of-00002.safetensors").write_bytes(b"x")
    assert claim_dir(tmp_path / "m", "--out", "convert", model_file, overwrite=True) == (tmp_path / "m").resolve()
    (tmp_path / "m" / "sub").mkdir()
    with pytest.raises(UserError, match=r"did not write \(sub/\)"):
        claim_dir(tmp_path / "m", "--out", "convert", model_file, overwrite=True)
    assert snapshot(tmp_path) == {**before, **{k: v for k, v in snapshot(tmp_path).items() if "/m" in k}}


@pytest.mark.parametrize("name, expected", [("nile", "nile"), ("../../etc/passwd", "etc_passwd"), ("a b/c", "a_b_c"),
                                            ("...", "series"), ("", "series"), ("co2.ppm", "co2.ppm")])
def test_safe_names(name, expected):
    assert safe_name(name) == expected


def test_a_backtest_plot_is_named_inside_its_folder(capsys, tmp_path):
    (tmp_path / "s.csv").write_text("../../escape\n" + "".join(f"{(i * 7) % 11 + i}\n" for i in range(40)))
    ok(capsys, ["ts", "backtest", "--csv", tmp_path / "s.csv", "--column", "../../escape", "--model", "ar",
                "--horizon", "4", "--windows", "1", "--out", tmp_path / "bt"])
    assert sorted(p.name for p in (tmp_path / "bt").iterdir()) == ["escape.png", "results.csv"]
    assert not (tmp_path.parent / "escape.png").exists()
