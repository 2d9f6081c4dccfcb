"""The training loop: resume == uninterrupted, checkpoints, metrics, early stopping, schedules."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from arlm.config import TrainConfig
from arlm.errors import UserError
from arlm.interop.load import load_model
from arlm.io.checkpoint import resolve_checkpoint, trainer_state
from arlm.train.loop import build_config, train
from arlm.train.optim import lr_at, param_groups
from tests.conftest import tiny_train_config


def _records(out, key):
    return [(r["step"], r[key]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if key in r]


@pytest.mark.parametrize("sampling, optimizer", [("random", "adamw"), ("epoch", "adamw"), ("random", "muon")])
def test_resume_equals_uninterrupted(sampling, optimizer, char_data, tmp_path):
    """Stop at step 7 (between evaluations), resume, and get exactly the losses of one straight run
    (with epoch sampling the order continues from the saved position; with Muon its momentum and
    AdamW's moments both come back)."""
    kw = dict(max_steps=16, eval_interval=5, grad_accum_steps=2, sampling=sampling, optimizer=optimizer,
              model=dict(dropout=0.1))
    straight = tmp_path / "straight"
    train(tiny_train_config(char_data, straight, **kw))

    split = tmp_path / "split"
    first = train(tiny_train_config(char_data, split, **kw), callbacks=[lambda rec: rec["step"] == 7])
    assert first["status"] == "callback" and first["step"] == 7
    assert json.loads((split / "latest" / "config.json").read_text())["step"] == 7
    second = train({"resume": str(split)})
    assert second["status"] == "completed" and second["step"] == 16

    assert _records(split, "loss") == _records(straight, "loss")  # every step, exactly
    assert _records(split, "val_loss") == _records(straight, "val_loss")
    a, b = load_file(straight / "latest" / "model.safetensors"), load_file(split / "latest" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_outputs_checkpoints_and_metrics(trained_model):
    out = trained_model
    for name in ("model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt"):
        assert (out / "latest" / name).is_file()
    assert not (out / "best" / "trainer_state.pt").exists()
    assert (out / "loss.png").stat().st_size > 1000
    cfg = json.loads((out / "best" / "config.json").read_text())
    assert cfg["model"]["n_layer"] == 2 and cfg["train"]["max_steps"] == 60 and "data" in cfg
    losses = [v for _, v in _records(out, "loss")]
    assert len(losses) == 60 and losses[-1] < losses[0] - 0.5  # it learned
    final = _records(out, "final_val_loss")
    assert len(final) == 1 and final[0][1] < math.log(cfg["model"]["vocab_size"])
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".old")]
    assert leftovers == []


def test_new_run_does_not_replace_an_existing_one(trained_model, char_data, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_model, run)
    before = (run / "best" / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already holds a training run; continue it with --resume"):
        train(tiny_train_config(char_data, run, max_steps=2))
    assert (run / "best" / "model.safetensors").read_bytes() == before
    s = train(tiny_train_config(char_data, run, max_steps=2, eval_interval=1, overwrite=True))
    assert s["step"] == 2 and len(_records(run, "loss")) == 2  # old metrics gone, not mixed in


def test_model_loads_back_with_identical_weights(trained_model):
    model, tok, cfg = load_model(trained_model / "latest")
    saved = load_file(trained_model / "latest" / "model.safetensors")
    assert torch.equal(model.transformer.wte.weight, saved["transformer.wte.weight"])
    assert model.lm_head.weight is model.transformer.wte.weight
    assert resolve_checkpoint(trained_model).name == "best"


def test_early_stopping(char_data, tmp_path):
    # A learning rate far too small never improves by min_delta: stop after `patience` evaluations.
    cfg = tiny_train_config(char_data, tmp_path / "es", max_steps=200, eval_interval=2, patience=2,
                            lr=1e-6, min_lr=1e-6, min_delta=1.0)
    s = train(cfg)
    assert s["status"] == "early_stopped" and s["step"] == 6  # best at 2, no gain at 4 and 6


def test_target_loss_stops_at_the_first_evaluation_reaching_it(char_data, tmp_path):
    # An untrained model's loss is about ln(vocab): a target above it is reached at the first evaluation,
    # one far below it never; either way the whole split is scored at the end.
    s = train(tiny_train_config(char_data, tmp_path / "hit", max_steps=50, eval_interval=4, target_loss=50.0,
                                  final_eval=True))
    assert s["status"] == "target_reached" and s["step"] == 4 and s["val_loss"] > 0
    evals = _records(tmp_path / "hit", "val_loss")
    assert [step for step, _ in evals] == [4] and evals[0][1] <= 50.0
    s = train(tiny_train_config(char_data, tmp_path / "miss", max_steps=8, eval_interval=4, target_loss=0.01,
                                  final_eval=True))
    assert s["status"] == "completed" and s["step"] == 8 and "val_loss" in s


def test_max_steps_reached_cannot_resume_without_more_steps(trained_model):
    with pytest.raises(UserError, match="already reached step 60; pass a larger --max-steps"):
        train({"resume": str(trained_model)})


def test_resume_with_incompatible_config(trained_model):
    with pytest.raises(UserError, match="cannot resume with a different model: n_layer is 2 .* but 4 was given"):
        train({"resume": str(trained_model), "max_steps": 80, "model": {"n_layer": 4}})
    with pytest.raises(UserError, match="cannot resume with a different data"):
        train({"resume": str(trained_model), "max_steps": 80, "data": "elsewhere"})


def test_truncated_and_missing_checkpoints(trained_model, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(trained_model / "latest", bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged or truncated"):
        load_model(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        load_model(bad)
    with pytest.raises(UserError, match="model folder not found"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no checkpoint"):
        load_model(tmp_path / "empty")
    shutil.copytree(trained_model / "latest", tmp_path / "state")
    (tmp_path / "state" / "trainer_state.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match="trainer_state.pt is damaged or truncated"):
        trainer_state(tmp_path / "state")


def test_interrupted_swap_recovers_previous_checkpoint(trained_model, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_model, run)
    (run / "best").rename(run / "best.old")  # as if the process died between the two renames
    model, _, cfg = load_model(run)
    assert cfg.path.endswith("best") and (run / "best").is_dir() and not (run / "best.old").exists()


def test_config_errors(char_data, tmp_path):
    with pytest.raises(UserError, match="unknown config key 'n_layers' in train config \\[model\\]; did you mean 'n_layer'"):
        build_config(tiny_train_config(char_data, tmp_path, model={"n_layers": 3}))
    with pytest.raises(UserError, match="config key 'lr' in train config must be a number, got str 'fast'"):
        build_config(tiny_train_config(char_data, tmp_path, lr="fast"))
    with pytest.raises(UserError, match="n_embd \\(30\\) must be divisible by model.n_head \\(4\\)"):
        build_config(tiny_train_config(char_data, tmp_path, model={"n_embd": 30, "n_head": 4}))
    with pytest.raises(UserError, match="block_size \\+ 1"):
        train(tiny_train_config(char_data, tmp_path / "big", model={"block_size": 10_000}))
    assert not (tmp_path / "big" / "latest").exists()


def test_preset_then_explicit_model_keys():
    cfg = build_config({"data": "d", "out": "o", "preset": "gpt2", "model": {"n_layer": 3}})
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size) == (3, 768, 1024)


def test_lr_schedules():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1 / 11) and lr_at(9, cfg) == pytest.approx(10 / 11)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # halfway through cosine: the midpoint
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    cfg.lr_schedule = "linear"
    assert lr_at(60, cfg) == pytest.approx(0.55) and lr_at(35, cfg) == pytest.approx(0.775)
    cfg.lr_schedule = "constant"
    assert lr_at(100, cfg) == 1.0



def _torch_lrs(scheduler_cls, steps, **kw):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = scheduler_cls(opt, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_and_cyclic_schedules_match_torch():
    """After warmup, the step schedule is torch's StepLR and the cyclic one CyclicLR (triangular),
    entered at its peak (half a cycle in) so that it continues from the warmed-up lr."""
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=5, max_steps=200, lr_schedule="step", lr_step_size=30,
                      lr_decay_factor=0.5)
    want = _torch_lrs(torch.optim.lr_scheduler.StepLR, 195, step_size=30, gamma=0.5)
    assert [lr_at(5 + t, cfg) for t in range(195)] == pytest.approx(want)
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=5, max_steps=200, lr_schedule="cyclic", lr_cycle_steps=20)
    want = _torch_lrs(torch.optim.lr_scheduler.CyclicLR, 215, base_lr=0.1, max_lr=1.0, step_size_up=20,
                      mode="triangular", cycle_momentum=False)[20:]
    assert [lr_at(5 + t, cfg) for t in range(195)] == pytest.approx(want)
    cfg.lr_cycle_steps = 0  # default: an eighth of the steps after warmup
    assert lr_at(5, cfg) == 1.0 and lr_at(5 + 195 // 8, cfg) == pytest.approx(0.1)


def test_plateau_schedule_matches_torch():
    """Validation losses fed to plateau_update and to ReduceLROnPlateau (patience one less, absolute
    threshold = min_delta): the same learning rate after every evaluation."""
    from arlm.train.optim import plateau_update

    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, lr_schedule="plateau", plateau_patience=2,
                      lr_decay_factor=0.5, min_delta=0.01)
    losses = [3.0, 2.5, 2.5, 2.6, 2.2, 2.195, 2.2, 2.3, 2.1, 2.1, 2.1, 2.1, 2.0]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1, threshold=0.01,
                                                     threshold_mode="abs")
    plateau, best, ours, theirs = {"scale": 1.0, "bad": 0}, float("inf"), [], []
    for loss in losses:
        improved = loss < best - cfg.min_delta
        best = loss if improved else best
        plateau_update(plateau, improved, cfg)
        ours.append(lr_at(100, cfg, plateau["scale"]))
        ref.step(loss)
        theirs.append(opt.param_groups[0]["lr"])
    assert ours == pytest.approx(theirs) and min(ours) < 0.2  # it did drop, several times


def test_plateau_schedule_in_training_is_resumed(char_data, tmp_path):
    """A run whose learning rate drops on a plateau, stopped and resumed, continues with the lowered rate."""
    kw = dict(max_steps=12, eval_interval=2, lr_schedule="plateau", plateau_patience=1, lr_decay_factor=0.5,
              min_lr=0.0, min_delta=10.0, warmup_steps=0)  # no evaluation counts as an improvement: a drop at every one
    straight = tmp_path / "straight"
    train(tiny_train_config(char_data, straight, **kw))
    lrs = dict(_records(straight, "lr"))
    # the first evaluation (step 2) improves on nothing-yet; each later one drops the rate for the steps after it
    assert lrs[4] == pytest.approx(3e-3) and lrs[5] == pytest.approx(1.5e-3) and lrs[12] == pytest.approx(3e-3 / 16)
    split = tmp_path / "split"
    train(tiny_train_config(char_data, split, **kw), callbacks=[lambda rec: rec["step"] == 5])
    train({"resume": str(split)})
    assert _records(split, "lr") == _records(straight, "lr") and _records(split, "loss") == _records(straight, "loss")

def test_weight_decay_only_on_matrices():
    from arlm.config import GPTConfig
    from arlm.model.gpt import GPT

    m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8))
    groups = param_groups(m, TrainConfig(weight_decay=0.1))
    for g in groups:
        assert g["weight_decay"] == (0.1 if g["params"][0].dim() == 2 else 0.0) and g["lr_scale"] == 1.0
        assert len({p.dim() for p in g["params"]}) == 1
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))


def test_embedding_and_head_rates_and_wsd_schedule():
    """embedding_lr / head_lr put those weights in groups whose rate is that multiple of the schedule's;
    wsd holds lr, then falls linearly to min_lr over the last lr_decay_fraction of the steps."""
    from arlm.config import GPTConfig
    from arlm.model.gpt import GPT

    m = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=8, tie_embeddings=False))
    cfg = TrainConfig(lr=1e-3, embedding_lr=0.05, head_lr=2e-3)
    scale = {id(p): g["lr_scale"] for g in param_groups(m, cfg) for p in g["params"]}
    assert scale[id(m.transformer.wte.weight)] == scale[id(m.transformer.wpe.weight)] == pytest.approx(50.0)
    assert scale[id(m.lm_head.weight)] == pytest.approx(2.0) and scale[id(m.transformer.h[0].attn.c_attn.weight)] == 1.0
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, lr_schedule="wsd", lr_decay_fraction=0.2)
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[9] == pytest.approx(10 / 11) and lrs[10:88] == [1.0] * 78
    assert lrs[99] == pytest.approx(1.0 - 0.9 * 11 / 22) and lrs[109] == pytest.approx(1.0 - 0.9 * 21 / 22)
    assert lr_at(110, cfg) == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_outputs_have_ordinary_permissions(trained_model):
    """Temporary-name writes must not leave checkpoints private (mkdtemp/mkstemp default to 0700/0600)."""
    import os
    import stat

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((trained_model / "best").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((trained_model / "loss.png").stat().st_mode) == 0o666 & ~mask


def test_llama_style_model_trains_saves_and_loads(char_data, tmp_path):
    """RoPE + RMSNorm + SwiGLU + grouped-query attention + untied output through the one loop."""
    from arlm.interop.load import load_model

    model = dict(pos_embedding="rope", norm="rmsnorm", mlp="gated", activation="silu", bias=False, n_kv_head=1,
                 tie_embeddings=False)
    summary = train(tiny_train_config(char_data, tmp_path / "run", max_steps=30, model=model))
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0] - 0.5
    m, _, _ = load_model(tmp_path / "run")
    assert m.lm_head.weight is not m.transformer.wte.weight
    assert not torch.equal(m.lm_head.weight, m.transformer.wte.weight)


def test_activation_checkpointing_changes_memory_not_results(char_data, tmp_path):
    """Recomputing each block in backward gives the same gradients, and a run with dropout the same
    losses (checkpointing replays the dropout masks)."""
    from arlm.config import GPTConfig
    from arlm.model import build_model

    torch.manual_seed(0)
    m = build_model(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)).train()
    x = torch.randint(0, 30, (3, 16))
    grads = []
    for on in (False, True):
        m.checkpointing = on
        m.zero_grad()
        m(x, x)[1].backward()
        grads.append([p.grad.clone() for p in m.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))

    kw = dict(max_steps=6, model=dict(dropout=0.1))
    train(tiny_train_config(char_data, tmp_path / "plain", **kw))
    train(tiny_train_config(char_data, tmp_path / "ckpt", activation_checkpointing=True, **kw))
    a, b = _records(tmp_path / "plain", "loss"), _records(tmp_path / "ckpt", "loss")
    assert len(a) == 6 and all(abs(u[1] - v[1]) < 1e-5 for u, v in zip(a, b))
    with pytest.raises(UserError, match="applies to GPT"):
        train(tiny_train_config(char_data, tmp_path / "lstm", activation_checkpointing=True, model=dict(type="lstm")))
