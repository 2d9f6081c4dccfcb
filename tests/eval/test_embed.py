"""arlm embed: vectors equal the hidden states pooled by hand, a padded batch equals one text at a
time, .npy and Parquet hold them, k-means and LDA agree with labels as scikit-learn computes it, and
every refusal leaves the files as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import arlm
from arlm.cli import main
from arlm.errors import UserError
from tests.conftest import CORPUS


def corpus(path, n_per: int = 12) -> list[dict]:
    """Lines of two different works, labelled by work."""
    rows = []
    for name in ("hamlet.txt", "sonnets.txt"):
        lines = [l.strip() for l in (CORPUS / name).read_text(encoding="utf-8")[3_000:20_000].splitlines()
                 if len(l.strip()) > 25]
        rows += [{"text": l, "label": name.split(".")[0]} for l in lines[:n_per]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def test_vectors_are_pooled_hidden_states(trained_model):
    lm = arlm.load(trained_model)
    texts = ["To be, or not to be", "Alas, poor Yorick!", "O"]
    mean, last = lm.embed(texts, "mean"), lm.embed(texts, "last")
    for i, t in enumerate(texts):
        ids = torch.tensor([lm.tokenizer.encode(t)])
        seen = []
        h = lm.model.transformer.ln_f.register_forward_hook(lambda _m, _i, out: seen.append(out))
        with torch.no_grad():
            lm.model(ids)
        h.remove()
        states = seen[0][0]
        assert np.allclose(mean[i], states.mean(0).numpy(), atol=1e-5)
        assert np.allclose(last[i], states[-1].numpy(), atol=1e-5)
        assert np.allclose(lm.embed([t], "mean", batch_size=1)[0], mean[i], atol=1e-5)  # batch == one by one
    with pytest.raises(UserError, match="pooling"):
        lm.embed(texts, "max")
    with pytest.raises(UserError, match="non-empty list"):
        lm.embed([])


def test_cli_writes_vectors_and_scores_groups(trained_model, tmp_path, capsys):
    rows = corpus(tmp_path / "lines.jsonl")
    lm = arlm.load(trained_model)
    want = lm.embed([r["text"] for r in rows])
    assert main(["embed", "--model", str(trained_model), "--input", str(tmp_path / "lines.jsonl"),
                 "--out", str(tmp_path / "v.npy"), "--clusters", "2", "--topics", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.allclose(np.load(tmp_path / "v.npy"), want, atol=1e-6)
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    unit = want / np.linalg.norm(want, axis=1, keepdims=True)
    found = KMeans(n_clusters=2, n_init=10, random_state=0).fit_predict(unit)
    assert out["kmeans"]["ari"] == pytest.approx(adjusted_rand_score([r["label"] for r in rows], found), abs=1e-6)
    assert out["labels"] == 2 and -1 <= out["lda"]["ari"] <= 1 and len(out["lda"]["top_words"]) == 2
    # Parquet: the texts, labels, groups and vectors
    assert main(["embed", "--model", str(trained_model), "--input", str(tmp_path / "lines.jsonl"),
                 "--out", str(tmp_path / "v.parquet"), "--clusters", "2"]) == 0
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "v.parquet")
    assert table.column_names == ["text", "label", "cluster", "embedding"]
    assert np.allclose(np.array(table.column("embedding").to_pylist()), want, atol=1e-6)
    assert table.column("cluster").to_pylist() == found.tolist() or \
        table.column("cluster").to_pylist() == (1 - found).tolist()
    # a plain text file: one text per line, no labels
    (tmp_path / "lines.txt").write_text("\n".join(r["text"] for r in rows) + "\n\n", encoding="utf-8")
    assert main(["embed", "--model", str(trained_model), "--input", str(tmp_path / "lines.txt"), "--clusters", "3",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["texts"] == len(rows) and "ari" not in out["kmeans"]


def test_refusals_leave_files_alone(trained_model, tmp_path, capsys):
    rows = corpus(tmp_path / "lines.jsonl", n_per=3)
    (tmp_path / "notes.npy").write_text("my notes", encoding="utf-8")
    np.save(tmp_path / "theirs.npy", np.zeros(3))
    (tmp_path / "partial.jsonl").write_text(json.dumps({"text": "a b c", "label": "x"}) + "\n" + json.dumps({"text": "d e"}) + "\n")
    (tmp_path / "nofield.jsonl").write_text(json.dumps({"body": "a b c"}) + "\n")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    base = ["embed", "--model", str(trained_model)]
    lines = str(tmp_path / "lines.jsonl")
    for argv, message in [
        (["--input", lines], "nothing to do"),
        (["--out", str(tmp_path / "v.npy")], "add --input"),
        (["--input", lines, "--out", str(tmp_path / "v.csv")], ".npy or .parquet"),
        (["--input", lines, "--clusters", "1"], "--clusters must be"),
        (["--input", lines, "--clusters", "7"], "more than the 6 texts"),
        (["--input", lines, "--topics", "100000"], "--topics must be"),
        (["--input", lines, "--out", str(tmp_path / "notes.npy")], "is not a NumPy array"),
        (["--input", lines, "--out", str(tmp_path / "theirs.npy")], "--overwrite"),
        (["--input", lines, "--out", str(trained_model / "v.npy")], "inside the model folder"),
        (["--input", lines, "--out", lines.replace(".jsonl", ".parquet"), "--max-texts", "2"], "more than --max-texts"),
        (["--input", str(tmp_path / "partial.jsonl"), "--clusters", "2"], "label every text or none"),
        (["--input", str(tmp_path / "nofield.jsonl"), "--clusters", "2"], "under 'text'"),
        (["--input", str(tmp_path / "missing.jsonl"), "--clusters", "2"], "missing.jsonl"),
    ]:
        assert main(base + argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before
