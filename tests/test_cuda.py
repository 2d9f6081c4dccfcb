"""The same invariants on a CUDA GPU: model, KV cache, decoding in every precision, compiled decoding,
parity with transformers, speculative and beam search, training in float32/bfloat16/float16 with
fused AdamW and torch.compile, checkpoints that move between GPU and CPU, LoRA and evaluation.

Skipped where no GPU is present (CI and the project's CPU machines); run them on a GPU machine with
``pytest -m cuda``. Float32 comparisons run with TF32 off, so CPU and GPU differ only by summation order.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

import arlm
from arlm.config import EngineConfig, GenerateConfig
from arlm.generate.beam import beam_search
from arlm.generate.engine import Engine, generate_ids
from arlm.generate.speculative import SpeculativeStats, speculative_ids
from arlm.model.gpt import GPT
from arlm.interop.load import load_model
from arlm.train.loop import train
from tests.conftest import CORPUS, hamlet_agreement, tiny_train_config
from tests.generate.test_decode import run
from tests.model.test_gpt import ARCHS, tiny

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU (on a GPU machine: pytest -m cuda)", allow_module_level=True)
pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def no_tf32():
    """Exact float32 matrix products (TF32 would differ from the CPU by ~1e-3)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def on(model: GPT, device) -> GPT:
    """A copy of ``model`` on ``device`` (the original stays where it is)."""
    return copy.deepcopy(model).to(device)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_forward_and_loss_match_the_cpu(arch):
    cpu = tiny(block_size=48, **ARCHS[arch])
    gpu = on(cpu, CUDA)
    x, y = torch.randint(0, 50, (3, 40)), torch.randint(0, 50, (3, 40))
    ref_logits, ref_loss = cpu(x, y)
    logits, loss = gpu(x.to(CUDA), y.to(CUDA))
    torch.testing.assert_close(logits.cpu(), ref_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss.cpu(), ref_loss, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_kv_cache_equals_full_recompute(arch):
    m = on(tiny(block_size=48, **ARCHS[arch]), CUDA)
    x = torch.randint(0, 50, (2, 30), device=CUDA)
    with torch.no_grad():
        full, _ = m(x)
        cache = m.new_cache(2, 48)
        pos = lambda a, b: torch.arange(a, b, device=CUDA)[None].expand(2, -1)  # noqa: E731
        parts = [m(x[:, :20], cache=cache, input_pos=pos(0, 20), kv_len=20)[0]]
        parts += [m(x[:, t:t + 1], cache=cache, input_pos=pos(t, t + 1))[0] for t in range(20, 30)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_generation_on_gpu_equals_the_cpu_and_batches_equal_one_by_one():
    """Greedy tokens past the window (the cache restarts), a left-padded batch == each prompt alone,
    and seeded sampling: cached == uncached on the GPU."""
    cpu = tiny(block_size=32)
    gpu = on(cpu, CUDA)
    prompts = [[5, 17, 3, 42, 8], [9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    greedy = dict(max_new_tokens=80, temperature=0)
    assert run(gpu, prompts[0], **greedy) == run(cpu, prompts[0], **greedy)
    batch = run(gpu, prompts, **greedy)
    assert batch == [run(gpu, p, **greedy)[0] for p in prompts]
    assert batch == run(gpu, prompts, use_cache=False, **greedy)
    sampled = dict(max_new_tokens=40, temperature=0.9, top_k=20, top_p=0.95, repetition_penalty=1.2, seed=3,
                   num_return_sequences=2)
    assert run(gpu, prompts, **sampled) == run(gpu, prompts, use_cache=False, **sampled)


def test_compiled_decode_step_equals_eager():
    m = on(tiny(block_size=64), CUDA)
    prompts = [[5, 17, 3, 42, 8], [9, 4]]
    kw = dict(max_new_tokens=40, temperature=0, logprobs=True)
    def run_(compile):
        e = Engine(m, None, (), EngineConfig(max_batch=2, compile=compile))
        for p in prompts:
            e.add(p, GenerateConfig(**kw).sampling_params())
        outs = e.run()
        return [o.token for o in outs], torch.tensor([o.logprob for o in outs])

    (t_eager, lp_eager), (t_compiled, lp_compiled) = run_(False), run_(True)
    assert t_compiled == t_eager
    torch.testing.assert_close(lp_compiled, lp_eager, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_low_precision_decoding_agrees_with_float32(trained_model, precision):
    """bfloat16 (the whole model) and int8 weights on the GPU: next-token agreement with the CPU's
    float32 model on real text, and cached greedy decoding == recomputing every window."""
    ref = arlm.load(trained_model, device="cpu")
    q = arlm.load(trained_model, device="cuda", precision=precision)
    assert hamlet_agreement(ref, q) >= 0.97
    prompts = ["HAMLET.\n", "What say you, my lord?"]
    kw = dict(max_new_tokens=60, temperature=0)
    assert q.generate(prompts, **kw) == q.generate(prompts, use_cache=False, **kw)


def test_matches_transformers_logits_and_generate(tmp_path):
    """Hugging Face GPT-2 and Llama checkpoints on the GPU: our logits and greedy tokens == transformers'."""
    from tests.interop.hf_models import VOCAB, make_hf_model

    for kind in ("gpt2", "llama"):
        hf = make_hf_model(tmp_path / kind, kind, seed=1).to(CUDA)
        ours, _, _ = load_model(tmp_path / kind, CUDA)
        x = torch.randint(1, VOCAB, (2, 24), device=CUDA)
        with torch.no_grad():
            torch.testing.assert_close(ours(x)[0], hf(x).logits, atol=1e-4, rtol=1e-4)
            want = hf.generate(x[:1], attention_mask=torch.ones_like(x[:1]), max_new_tokens=40, min_new_tokens=40,
                               do_sample=False, pad_token_id=0)[0, 24:].tolist()
        assert run(ours, x[0].tolist(), max_new_tokens=40, temperature=0)[0] == want


def test_speculative_and_beam_search():
    target = on(tiny(block_size=48, n_layer=3), CUDA)
    draft = on(tiny(block_size=48, n_layer=1), CUDA)
    prompt = [3, 1, 4, 1, 5]
    cfg = GenerateConfig(max_new_tokens=30, temperature=0)
    stats = SpeculativeStats()
    spec = list(speculative_ids(target, draft, prompt, cfg, stats=stats))
    assert spec == run(target, prompt, max_new_tokens=30, temperature=0)[0] and stats.rounds > 0
    beams = GenerateConfig(max_new_tokens=12, num_beams=4, num_return_sequences=2, length_penalty=1.0)
    cpu_target = on(target, "cpu")
    got, want = beam_search(target, prompt, beams), beam_search(cpu_target, prompt, beams)
    assert [h.tokens for h in got] == [h.tokens for h in want]
    assert [h.score for h in got] == pytest.approx([h.score for h in want], abs=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_training_on_the_gpu(char_data, tmp_path, dtype):
    """The one loop on CUDA: autocast (float16 with a gradient scaler), fused AdamW; the loss falls,
    and the checkpoint loads on the CPU and gives the GPU's logits."""
    out = tmp_path / dtype
    s = train(tiny_train_config(char_data, out, device="cuda", dtype=dtype, max_steps=40, eval_interval=20,
                                lr=1e-2, final_eval=True))
    assert s["status"] == "completed" and s["device"].startswith("cuda") and s["dtype"] == dtype
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses[-1] < losses[0] - 0.5 and s["mfu"] > 0
    cpu, _, _ = load_model(out, "cpu")
    gpu, _, _ = load_model(out, "cuda")
    assert next(gpu.parameters()).is_cuda
    x = torch.randint(0, cpu.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.to(CUDA))[0].cpu(), cpu(x)[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_matches_eager(char_data, tmp_path, mode):
    """torch.compile, and with reduce-overhead its CUDA graphs (replayed every step, evaluation between)."""
    kw = dict(device="cuda", max_steps=12, eval_interval=4)
    eager = train(tiny_train_config(char_data, tmp_path / "eager", **kw))
    compiled = train(tiny_train_config(char_data, tmp_path / "compiled", compile=True, compile_mode=mode, **kw))
    losses = lambda out: [r["loss"] for r in  # noqa: E731
                          map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), abs=1e-3)
    assert compiled["best_val_loss"] == pytest.approx(eager["best_val_loss"], abs=1e-3)


def test_resume_on_the_gpu_equals_uninterrupted(char_data, tmp_path):
    """Stop at step 7, resume: the losses of one straight run (dropout on: the CUDA random state is
    part of the checkpoint)."""
    kw = dict(device="cuda", max_steps=14, eval_interval=5, model=dict(dropout=0.1))
    train(tiny_train_config(char_data, tmp_path / "straight", **kw))
    first = train(tiny_train_config(char_data, tmp_path / "split", **kw), callbacks=[lambda rec: rec["step"] == 7])
    assert first["status"] == "callback"
    assert train({"resume": str(tmp_path / "split")})["status"] == "completed"
    records = lambda out: [(r["step"], r["loss"]) for r in  # noqa: E731
                           map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    got, want = records(tmp_path / "split"), records(tmp_path / "straight")
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-5)


@pytest.mark.parametrize("compile", [False, True])
def test_muon_and_the_recipe_options_on_the_gpu(char_data, tmp_path, compile):
    """Muon (torch.optim.Muon) beside fused AdamW under bfloat16 autocast, with the speedrun options
    (qk_norm, soft-capped logits, relu2, wsd), eager and compiled: the loss falls; eager, a stopped and
    resumed run continues the straight one (Muon's momentum is in the checkpoint)."""
    kw = dict(device="cuda", dtype="bfloat16", optimizer="muon", max_steps=30, eval_interval=10, lr=1e-2,
              lr_schedule="wsd", compile=compile, model=dict(qk_norm=True, logit_softcap=15.0, activation="relu2"))
    s = train(tiny_train_config(char_data, tmp_path / "straight", **kw))
    records = lambda out: [(r["step"], r["loss"]) for r in  # noqa: E731
                           map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    losses = [v for _, v in records(tmp_path / "straight")]
    assert s["status"] == "completed" and losses[-1] < losses[0] - 0.5
    if compile:
        return
    train(tiny_train_config(char_data, tmp_path / "split", **kw), callbacks=[lambda rec: rec["step"] == 13])
    train({"resume": str(tmp_path / "split")})
    got, want = records(tmp_path / "split"), records(tmp_path / "straight")
    assert [st for st, _ in got] == [st for st, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=1e-4)


def test_lora_finetune_and_evaluation(trained_model, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {w}:", "completion": f" {w} {w}."}) + "\n"
                            for _ in range(5) for w in ("lord", "king", "night", "cold")), encoding="utf-8")
    cfg = tiny_train_config(data, tmp_path / "lora", init_from=str(trained_model), device="cuda", lora_rank=4,
                            max_steps=20, eval_interval=10, lr=1e-2, batch_size=8, final_eval=True)
    cfg.pop("model")
    s = train(cfg)
    assert s["status"] == "completed"
    text = (CORPUS / "hamlet.txt").read_text(encoding="utf-8")[60_000:64_000]
    gpu, cpu = arlm.load(trained_model, device="cuda"), arlm.load(trained_model, device="cpu")
    assert gpu.evaluate(text)["loss"] == pytest.approx(cpu.evaluate(text)["loss"], abs=1e-4)
    assert arlm.load(tmp_path / "lora", device="cuda").generate("say king:", max_new_tokens=10, temperature=0)


def test_matmul_peak_on_the_gpu_leaves_the_rng_alone():
    from arlm.train.throughput import matmul_peak

    state = torch.cuda.get_rng_state()
    peak = matmul_peak(CUDA, torch.bfloat16, seconds=0.2)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    assert 1e12 < peak < 1e16  # FLOP/s: anything from a laptop GPU to beyond an H200
