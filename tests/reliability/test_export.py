"""`arlm export`: a GGUF file or a Hugging Face folder, outputs checked before any work, and every bad
input refused by the contract."""

from __future__ import annotations

import json

import pytest

from tests.reliability.conftest import copy, refused, run

pytest.importorskip("gguf")


def test_export_gguf_and_hf(capsys, run_dir, tmp_path):
    code, out, err = run(capsys, ["export", "--model", run_dir, "--out", tmp_path / "m.gguf", "--gguf-type", "q8_0"])
    assert code == 0, err
    assert out.startswith("gpt2 layout, ") and "q8_0" in out and (tmp_path / "m.gguf").stat().st_size > 1000
    code, out, err = run(capsys, ["export", "--model", run_dir, "--out", tmp_path / "m.gguf", "--overwrite", "--json"])
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["dtype"] == "f16"
    code, out, err = run(capsys, ["export", "--model", run_dir, "--out", tmp_path / "hf", "--format", "hf"])
    assert code == 0, err
    assert (tmp_path / "hf" / "config.json").is_file()
    code, out, err = run(capsys, ["export", "--model", run_dir, "--out", tmp_path / "m.onnx", "--format", "onnx"])
    assert code == 0, err
    assert out.startswith("ONNX opset 17, KV cache as inputs/outputs") and err == ""


def test_export_refusals(capsys, run_dir, quantized_dir, char_data, tmp_path):
    from arlm.train.loop import train
    from tests.conftest import tiny_train_config

    model = copy(run_dir / "best", tmp_path / "m")
    (tmp_path / "taken.gguf").write_text("mine")
    refused(capsys, ["export", "--model", model, "--out", tmp_path / "taken.gguf"], r"exists and is not a GGUF file",
            keep=tmp_path)
    (tmp_path / "taken.gguf").write_bytes(b"GGUF" + bytes(20))
    refused(capsys, ["export", "--model", model, "--out", tmp_path / "taken.gguf"], r"already exists.*--overwrite",
            keep=tmp_path)
    refused(capsys, ["export", "--model", model, "--out", model / "x.gguf"], r"inside the model", keep=tmp_path)
    refused(capsys, ["export", "--model", model, "--out", tmp_path / "no" / "x.gguf"], r"does not exist", keep=tmp_path)
    refused(capsys, ["export", "--model", model, "--out", tmp_path], r"is a folder", keep=tmp_path)
    refused(capsys, ["export", "--model", quantized_dir, "--out", tmp_path / "q.gguf"], r"quantized.*--gguf-type",
            keep=tmp_path)
    refused(capsys, ["export", "--model", quantized_dir, "--out", tmp_path / "q.onnx", "--format", "onnx"],
            r"quantized.*export its float model$", keep=tmp_path)
    refused(capsys, ["export", "--model", model, "--out", tmp_path / "x.gguf", "--gguf-type", "q2_k"],
            r"--gguf-type.*invalid choice", keep=tmp_path)
    refused(capsys, ["export", "--model", tmp_path / "none", "--out", tmp_path / "x.gguf"], r"not found", keep=tmp_path)
    train(tiny_train_config(char_data, tmp_path / "lstm", max_steps=2, model={"type": "lstm"}))
    capsys.readouterr()
    refused(capsys, ["export", "--model", tmp_path / "lstm", "--out", tmp_path / "l.gguf"],
            r"only GPT models export to GGUF \(llama.cpp\); this is an LSTM model$", keep=tmp_path)
