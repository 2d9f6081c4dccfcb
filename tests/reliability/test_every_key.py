"""Every key of every metadata file arlm reads, set to hostile values: the verb that reads the file either
works or refuses by the contract (one line, status 1 or 2, no traceback), never anything else.

The default run tries three values per key; ``make test-slow`` tries fourteen (wrong types, NaN,
infinities, sizes near 2**63, empty and nested containers). Written after fuzzing found configs whose
sizes overflowed even the meta device.
"""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest

from tests.reliability.conftest import check_refusal, run

FEW = ["x", None, 10**18]
MANY = FEW + [-1, 0, 1e308, math.nan, math.inf, [], {}, True, -(10**18), [1, "a"], {"a": 1}]


def key_paths(d: dict, prefix: tuple = ()):
    for k, v in d.items():
        yield prefix + (k,)
        if isinstance(v, dict):
            yield from key_paths(v, prefix + (k,))


def hostile_copies(src, name, tmp_path, values):
    """(label, folder) for each key path of ``src/name`` set to each of ``values``, in a fresh copy."""
    base = json.loads((src / name).read_text())
    for i, path in enumerate(key_paths(base)):
        for j, value in enumerate(values):
            data = copy.deepcopy(base)
            node = data
            for k in path[:-1]:
                node = node[k]
            node[path[-1]] = value
            folder = shutil.copytree(src, tmp_path / f"{i}-{j}")
            (folder / name).write_text(json.dumps(data))
            yield f"{name}:{'.'.join(path)}={value!r}", folder
            shutil.rmtree(folder)


def verbs(run_dir, hf_dir, char_data, quantized_dir):
    gen = ["--prompt", "A", "--max-new-tokens", "3", "--device", "cpu"]
    step = json.loads((run_dir / "latest" / "config.json").read_text())["step"]  # resume by one step only
    small = ["--max-steps", "1", "--no-progress", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size",
             "16", "--batch-size", "2", "--eval-batches", "1", "--no-final-eval", "--device", "cpu"]
    return [
        (run_dir / "best", "config.json", lambda m, t: ["generate", "--model", m, *gen]),
        (run_dir / "latest", "config.json", lambda m, t: ["train", "--resume", m, "--max-steps", str(step + 1), "--no-progress",
                                                          "--no-final-eval"]),
        (char_data, "meta.json", lambda m, t: ["train", "--data", m, "--out", t / "o", *small]),
        (hf_dir, "config.json", lambda m, t: ["generate", "--model", m, *gen]),
        (quantized_dir, "config.json", lambda m, t: ["generate", "--model", m, *gen]),
        (hf_dir, "generation_config.json", lambda m, t: ["generate", "--model", m, "--prompt", "A", "--device", "cpu"]),
        (hf_dir, "tokenizer_config.json", lambda m, t: ["convert", "--from-hf", m, "--out", t / "c"]),
    ]


def check_every_key(capsys, dirs, tmp_path, values):
    cases = 0
    for src, name, argv in verbs(*dirs):
        for label, folder in hostile_copies(src, name, tmp_path, values):
            out = tmp_path / "outputs"
            out.mkdir()
            code, _, err = run(capsys, argv(folder, out))
            if code:
                try:
                    check_refusal(code, err, argv(folder, out)[0], None, code if code in (1, 2) else 2, mid_run=True)
                except AssertionError as e:
                    raise AssertionError(f"{label}: {e}") from None
            shutil.rmtree(out)
            cases += 1
    return cases


def test_every_key_of_every_file(capsys, run_dir, hf_dir, char_data, quantized_dir, tmp_path):
    assert check_every_key(capsys, (run_dir, hf_dir, char_data, quantized_dir), tmp_path, FEW) > 200


@pytest.mark.slow
def test_every_key_of_every_file_many_values(capsys, run_dir, hf_dir, char_data, quantized_dir, tmp_path):
    assert check_every_key(capsys, (run_dir, hf_dir, char_data, quantized_dir), tmp_path, MANY) > 1000
