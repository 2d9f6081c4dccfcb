"""Few-shot evaluation: the harness's layout and sampler, log-likelihoods that equal a direct
computation, acc/acc_norm, the refusals; and lm-evaluation-harness's own CLI (`lm_eval --model arlm`)
giving the same figures as `arlm eval --task FILE --few-shot K` on the same file."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import arlm
from arlm.cli import main
from arlm.errors import UserError
from arlm.eval import fewshot
from tests.conftest import CORPUS


def choice_file(path: Path, n: int = 24, seed: int = 0) -> list[dict]:
    """Multiple-choice examples from Hamlet: the first half of a line, its true second half and three
    second halves of other lines."""
    lines = [l.strip() for l in (CORPUS / "hamlet.txt").read_text(encoding="utf-8")[2_000:30_000].splitlines()
             if len(l.strip()) > 30]
    rnd = random.Random(seed)
    picked = rnd.sample(lines, n + 40)
    out = []
    for i, line in enumerate(picked[:n]):
        cut = line.rfind(" ", 0, len(line) // 2)
        others = [l[l.rfind(" ", 0, len(l) // 2) + 1:] for l in rnd.sample(picked[n:], 3)]
        choices = others + [line[cut + 1:]]
        rnd.shuffle(choices)
        out.append({"prompt": line[:cut], "choices": choices, "answer": choices.index(line[cut + 1:])})
    path.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    return out


def test_demonstrations_follow_the_harness_sampler():
    records = [{"prompt": str(i)} for i in range(10)]
    demos = fewshot.demonstrations(records, 3, seed=7)
    rnd = random.Random(7)
    for i, d in enumerate(demos):
        want = [j for j in rnd.sample(range(10), 4) if j != i][:3]
        assert d == want and i not in d and len(set(d)) == 3
    assert fewshot.demonstrations(records, 3, seed=7) == demos  # the seed fixes them
    assert fewshot.demonstrations(records, 3, seed=8) != demos
    prompts, targets = [r["prompt"] for r in records], [f"a{i}" for i in range(10)]
    assert fewshot.context(prompts, targets, [4, 2], "Q") == "4 a4\n\n2 a2\n\nQ"


def test_loglikelihood_equals_a_direct_computation(trained_model):
    lm = arlm.load(trained_model)
    requests = [("HAMLET. To be, or not", " to be"), ("", "Horatio"), ("My lord ", "Hamlet")]
    got = lm.loglikelihood(requests, batch_size=2)
    for (ctx, cont), (ll, greedy) in zip(requests, got):
        ctx_ids = lm.tokenizer.encode(ctx.rstrip()) or [lm.tokenizer.eot_id]
        whole = lm.tokenizer.encode(ctx + cont)
        cont_ids = whole[len(lm.tokenizer.encode(ctx.rstrip())):] if ctx else lm.tokenizer.encode(cont)
        ids = torch.tensor([ctx_ids + cont_ids])
        with torch.no_grad():
            logp = F.log_softmax(lm.model(ids[:, :-1])[0][0].float(), -1)
        n = len(cont_ids)
        want = logp[-n:].gather(-1, ids[0, -n:, None]).sum()
        assert abs(ll - float(want)) < 1e-4
        assert greedy == bool((logp[-n:].argmax(-1) == ids[0, -n:]).all())
    # one text scored whole == the sum of its rolling windows' log-likelihoods, every token once
    text = (CORPUS / "hamlet.txt").read_text(encoding="utf-8")[5_000:5_000 + 3 * lm.block_size]
    (rolled,) = lm.loglikelihood_rolling([text])
    ids = [lm.tokenizer.eot_id] + lm.tokenizer.encode(text)
    total, T = 0.0, lm.block_size
    with torch.no_grad():
        for s in range(0, len(ids) - 1, T):
            window = torch.tensor([ids[s:s + T + 1]])
            logp = F.log_softmax(lm.model(window[:, :-1])[0][0].float(), -1)
            total += float(logp.gather(-1, window[0, 1:, None]).sum())
    assert abs(rolled - total) < 1e-2 and rolled < 0


def test_choices_scores_and_refusals(trained_model, tmp_path):
    examples = choice_file(tmp_path / "mc.jsonl", n=12)
    lm = arlm.load(trained_model)
    scores, predictions = lm.evaluate_choices(examples, few_shot=2)
    assert set(scores) == {"acc", "acc_norm", "few_shot", "examples"} and len(predictions) == 12
    # acc from the log-likelihoods by hand
    ctxs = fewshot.contexts([e["prompt"] for e in examples], [e["choices"][e["answer"]] for e in examples], examples, 2)
    hits = 0
    for c, e in zip(ctxs, examples):
        lls = [ll for ll, _ in lm.loglikelihood([(c, " " + x) for x in e["choices"]])]
        hits += max(range(4), key=lambda j: lls[j]) == e["answer"]
    assert scores["acc"] == pytest.approx(100 * hits / 12)
    bad = [
        (lambda: lm.evaluate_choices(examples, few_shot=12), "needs 12 other examples"),
        (lambda: lm.evaluate_choices([{**examples[0], "answer": 9}]), "'answer' must be the index"),
        (lambda: lm.evaluate_choices([{**examples[0], "answer": "nope"}]), "is not one of its choices"),
        (lambda: lm.evaluate_choices([{**examples[0], "choices": ["one"]}]), "2 to"),
        (lambda: lm.evaluate_choices(examples, few_shot=-1), "few_shot must be"),
        (lambda: lm.loglikelihood([("a",)]), "pairs"),
    ]
    for call, message in bad:
        with pytest.raises(UserError, match=message):
            call()


def test_cli_few_shot(trained_model, tmp_path, capsys):
    choice_file(tmp_path / "mc.jsonl", n=12)
    assert main(["eval", "--model", str(trained_model), "--task", str(tmp_path / "mc.jsonl"), "--few-shot", "3",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["few_shot"] == 3 and out["examples"] == 12 and 0 <= out["acc"] <= 100
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"prompt": f"{w}:", "reference": w.upper()}) + "\n"
                           for w in ["to", "be", "or", "not", "that", "is"]), encoding="utf-8")
    assert main(["eval", "--model", str(trained_model), "--task", str(gen), "--few-shot", "2", "--metric", "exact",
                 "--max-new-tokens", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["few_shot"] == 2
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    for argv, message in [
        (["--task", str(tmp_path / "mc.jsonl"), "--few-shot", "12"], "needs 12 other examples"),
        (["--task", str(tmp_path / "mc.jsonl"), "--metric", "bleu"], "--metric does not apply"),
        (["--task", str(tmp_path / "mc.jsonl"), "--max-new-tokens", "3"], "does not apply"),
        (["--task", str(gen), "--few-shot", "2", "--chat"], "drop chat"),
        (["--data", str(gen), "--few-shot", "2"], "--few-shot applies to --task"),
    ]:
        assert main(["eval", "--model", str(trained_model), *argv]) == 2
        assert message in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
output_type: {kind}
doc_to_text: "{{{{prompt}}}}"
{extra}
"""


def run_lm_eval(model: Path, out: Path, tasks: str, shots: int, tasks_dir: Path | None = None) -> dict:
    """lm-evaluation-harness's own command on ``tasks`` (comma-separated); its results by task."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(out / "hf")}
    cmd = [str(Path(sys.executable).parent / "lm_eval"), "--model", "arlm", "--model_args", f"path={model}",
           "--tasks", tasks, "--include_path", str(tasks_dir or out / "tasks"), "--num_fewshot", str(shots),
           "--batch_size", "4", "--output_path", str(out / "results")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = sorted((out / "results").rglob("results_*.json"))
    return json.loads(found[-1].read_text())["results"]


def test_lm_eval_cli_equals_arlm(trained_model, tmp_path):
    pytest.importorskip("lm_eval")
    if not (Path(sys.executable).parent / "lm_eval").exists():
        pytest.skip("the lm_eval command is not installed beside this Python")
    examples = choice_file(tmp_path / "mc.jsonl", n=20)
    words = ["to", "be", "or", "not", "that", "is", "the", "question"]
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps({"prompt": f"{w}:", "reference": w}) + "\n" for w in words))
    texts = [(CORPUS / "hamlet.txt").read_text(encoding="utf-8")[s:s + 300] for s in range(3_000, 30_000, 4_500)]
    (tmp_path / "roll.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    (tmp_path / "tasks").mkdir()
    for name, data, kind, extra in [
        ("arlm_mc", "mc", "multiple_choice",
         'doc_to_choice: "{{choices}}"\ndoc_to_target: answer\nmetric_list:\n  - metric: acc\n  - metric: acc_norm'),
        ("arlm_gen", "gen", "generate_until",
         'doc_to_target: "{{reference}}"\ngeneration_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 6\n'
         'metric_list:\n  - metric: exact_match'),
        ("arlm_roll", "roll", "loglikelihood_rolling",
         'doc_to_target: "{{prompt}}"\nmetric_list:\n  - metric: word_perplexity'),
    ]:
        (tmp_path / "tasks" / f"{name}.yaml").write_text(TASK_YAML.format(
            name=name, data=tmp_path / f"{data}.jsonl", kind=kind, extra=extra))
    lm = arlm.load(trained_model)
    shots = 3  # demonstrations drawn by the harness's sampler and by arlm's must be the same records
    three = run_lm_eval(trained_model, tmp_path, "arlm_mc,arlm_gen,arlm_roll", shots)
    ours, _ = lm.evaluate_choices(examples, few_shot=shots)
    theirs = three["arlm_mc"]
    assert theirs["acc,none"] * 100 == pytest.approx(ours["acc"], abs=1e-9), (theirs, ours)
    assert theirs["acc_norm,none"] * 100 == pytest.approx(ours["acc_norm"], abs=1e-9), (theirs, ours)
    zero = three  # (generation and rolling tasks below: their contexts are the same at any K here)
    # generate_until: the harness's exact match of arlm's greedy text after the same 3 demonstrations, cut at
    # the newline (arlm's evaluate_task lays out and draws them as the harness does)
    gen = [{"prompt": f"{w}:", "reference": w} for w in words]
    contexts = fewshot.contexts([g["prompt"] for g in gen], [g["reference"] for g in gen], gen, shots)
    made = [lm.generate(c, max_new_tokens=6, temperature=0.0, stop=["\n"]) for c in contexts]
    want = sum(m.split("\n")[0] == w for m, w in zip(made, words)) / len(words)
    assert zero["arlm_gen"]["exact_match,none"] == pytest.approx(want, abs=1e-12)
    # loglikelihood_rolling: word perplexity exp(-sum of log-likelihoods / words)
    lls = lm.loglikelihood_rolling(texts)
    n_words = sum(len(__import__("re").split(r"\s+", t)) for t in texts)
    assert zero["arlm_roll"]["word_perplexity,none"] == pytest.approx(math.exp(-sum(lls) / n_words), rel=1e-9)
