"""Fine-tuning through the one training loop: full and LoRA, on JSONL examples, from our checkpoints and
Hugging Face folders; resume == uninterrupted; adapter-only checkpoints; replay; masked-loss
accumulation equal to one big batch."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import arlm
from arlm.config import TrainConfig
from arlm.errors import UserError
from arlm.model import GPT
from arlm.train.loop import optimizer_step, train
from tests.conftest import tiny_train_config

WORDS = ["lord", "king", "night", "cold", "heart", "guard", "mouse", "watch"]


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory):
    """Prompt/completion pairs with a rule to learn: the completion repeats the prompt's word."""
    f = tmp_path_factory.mktemp("sft") / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"say {w}:", "completion": f" {w} {w}."}) + "\n"
                         for _ in range(5) for w in WORDS), encoding="utf-8")
    return f


def ft_config(base, data, out, **kw):
    cfg = tiny_train_config(data, out, init_from=str(base), max_steps=30, eval_interval=10, lr=3e-3, batch_size=8,
                            final_eval=True)
    cfg.pop("model")
    cfg.update(kw)
    return cfg


def weights(path):
    return load_file(str(path / "model.safetensors"))


def test_full_finetune_learns_the_completions(trained_model, sft_file, tmp_path):
    s = train(ft_config(trained_model, sft_file, tmp_path / "ft", max_steps=150, eval_interval=50, lr=1e-2))
    metrics = [json.loads(ln) for ln in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in metrics if "val_loss" in r]
    assert vals[-1] < vals[0] and s["val_loss"] < 1.5
    m = arlm.load(tmp_path / "ft", device="cpu")
    assert m.generate("say king:", max_new_tokens=20, temperature=0) == " king king."  # and stops: it learned EOT
    saved = json.loads((tmp_path / "ft" / "best" / "config.json").read_text())
    assert saved["data"]["format"] == "sft" and saved["model"]["n_embd"] == 32


def test_lora_finetune_keeps_base_weights_and_resumes_exactly(trained_model, sft_file, tmp_path):
    base = weights(trained_model / "best")
    kw = dict(lora_rank=4, lora_dropout=0.1, lr=1e-2, max_steps=20, eval_interval=5)
    train(ft_config(trained_model, sft_file, tmp_path / "whole", **kw))
    saved = weights(tmp_path / "whole" / "latest")
    assert all(torch.equal(saved[k], v) for k, v in base.items())  # frozen
    assert any(".lora_B" in k and saved[k].abs().sum() > 0 for k in saved)
    # stop at step 10, resume to 20: the same losses and weights as the uninterrupted run
    train(ft_config(trained_model, sft_file, tmp_path / "split", **{**kw, "max_steps": 20}),
          callbacks=[lambda r: r.get("step") == 10 and "val_loss" in r])
    train({"resume": str(tmp_path / "split"), "progress": False})
    resumed = weights(tmp_path / "split" / "latest")
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)
    def losses(d):
        records = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in records if "final_val_loss" not in r]

    assert losses(tmp_path / "whole") == losses(tmp_path / "split")
    # loading merges the adapters: the merged model is an ordinary one with the adapted behaviour
    m = arlm.load(tmp_path / "whole" / "latest", device="cpu")
    assert isinstance(m.model, GPT) and not any("lora" in k for k in m.model.state_dict())


def test_adapter_only_checkpoint_loads_like_the_full_one(trained_model, sft_file, tmp_path):
    kw = dict(lora_rank=4, lr=1e-2, max_steps=10, eval_interval=10, seed=3)
    train(ft_config(trained_model, sft_file, tmp_path / "full", **kw))
    train(ft_config(trained_model, sft_file, tmp_path / "adapter", adapter_only=True, **kw))
    small = weights(tmp_path / "adapter" / "best")
    assert small and all(".lora_" in k for k in small)
    a, b = arlm.load(tmp_path / "full", device="cpu"), arlm.load(tmp_path / "adapter", device="cpu")
    idx = torch.randint(0, a.model.config.vocab_size, (2, 16))
    torch.testing.assert_close(a.model(idx)[0], b.model(idx)[0], rtol=0, atol=0)
    info = json.loads((tmp_path / "adapter" / "best" / "config.json").read_text())["lora"]
    assert info["adapter_only"] and info["base"] == str(trained_model.resolve())


def test_lora_finetune_of_a_hugging_face_model_exports(sft_file, tmp_path):
    tf = pytest.importorskip("transformers")
    from tests.interop.hf_models import make_hf_model

    make_hf_model(tmp_path / "hf", "gpt2")
    s = train(ft_config(tmp_path / "hf", sft_file, tmp_path / "ft", lora_rank=4, lr=1e-2, max_steps=10, eval_interval=5))
    assert s["val_loss"] < 20
    m = arlm.load(tmp_path / "ft", device="cpu")
    from arlm.interop.hf import export_hf
    from arlm.interop.load import load_model

    model, tok, info = load_model(tmp_path / "ft")
    export_hf(model, tok, tmp_path / "export", info)
    hf = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    idx = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, m.model(idx)[0], rtol=1e-4, atol=1e-4)


def test_masked_accumulation_equals_one_big_batch():
    """Micro-batches with different numbers of trained targets give the step of the whole batch
    (SGD with lr 1: the weight change is the gradient)."""
    cfg = TrainConfig(grad_clip=0.0)
    cfg.model.vocab_size, cfg.model.block_size, cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head = 40, 8, 1, 16, 2
    cfg.model.dropout = 0.0
    torch.manual_seed(0)
    x = torch.randint(0, 40, (4, 8))
    y = x.roll(-1, 1)
    y[0, :6] = -1  # the first micro-batch keeps 2 + 8 targets, the second 16
    split = [(x[:2], y[:2], int((y[:2] != -1).sum())), (x[2:], y[2:], int((y[2:] != -1).sum()))]
    results = []
    for batches in (split, [(x, y, int((y != -1).sum()))]):
        torch.manual_seed(0)
        model = GPT(cfg.model)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        cfg.grad_accum_steps = len(batches)
        loss = optimizer_step(model, model, opt, torch.amp.GradScaler("cpu", enabled=False), batches, 1.0, cfg,
                              torch.device("cpu"), torch.float32)
        results.append((float(loss), [p.detach().clone() for p in model.parameters()]))
    (loss_a, wa), (loss_b, wb) = results
    assert abs(loss_a - loss_b) < 1e-6
    for a, b in zip(wa, wb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_replay_mixes_the_original_corpus(trained_model, char_data, sft_file, tmp_path):
    s = train(ft_config(trained_model, sft_file, tmp_path / "replay", replay_data=str(char_data), replay_fraction=0.25,
                        max_steps=10, eval_interval=5))
    assert s["status"] == "completed"
    vals = [json.loads(ln) for ln in (tmp_path / "replay" / "metrics.jsonl").read_text().splitlines()]
    assert all("replay_val_loss" in r for r in vals if "val_loss" in r)


def test_finetune_errors(trained_model, sft_file, char_data, tmp_path):
    with pytest.raises(UserError, match="only model.dropout"):
        train({**ft_config(trained_model, sft_file, tmp_path / "a"), "model": {"n_layer": 3}})
    with pytest.raises(UserError, match="start from a model"):
        train(tiny_train_config(sft_file, tmp_path / "b"))
    with pytest.raises(UserError, match="replay needs both"):
        train(ft_config(trained_model, sft_file, tmp_path / "c", replay_fraction=0.5))
    with pytest.raises(UserError, match="adapter_only needs LoRA"):
        train(ft_config(trained_model, sft_file, tmp_path / "d", adapter_only=True))
    with pytest.raises(UserError, match="model folder not found"):
        train(ft_config(tmp_path / "missing", sft_file, tmp_path / "e"))


def test_token_count_is_what_the_model_was_fed(trained_model, sft_file, tmp_path, char_data):
    """Padded fine-tuning batches are as long as their longest example, not the context window: tokens
    and tokens/s (and MFU) count the positions actually run. Pre-training windows are always full."""
    from tests.conftest import TINY_MODEL

    T = TINY_MODEL["block_size"]
    lines = [json.loads(ln) for ln in sft_file.read_text().splitlines()]
    shortest, longest = (f(len(r["prompt"] + r["completion"]) for r in lines) for f in (min, max))
    s = train(ft_config(trained_model, sft_file, tmp_path / "ft", max_steps=4, eval_interval=4))
    assert 4 * 8 * shortest <= s["tokens"] <= 4 * 8 * longest < 4 * 8 * T  # 4 steps of 8 rows, each padded to its batch's longest
    s = train(tiny_train_config(char_data, tmp_path / "pre", max_steps=3, eval_interval=3, grad_accum_steps=2))
    assert s["tokens"] == 3 * 2 * 4 * T  # steps x micro-batches x rows x window
