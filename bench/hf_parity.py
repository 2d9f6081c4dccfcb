"""Numerical parity with transformers at sizes larger than the tests use, and forward-pass speed.

For each architecture: a random transformers model (every tensor perturbed) is saved, loaded by
arlm's own code, and both run the same inputs in float32. Prints the max |logit difference| for a
full forward, a KV-cached token-by-token pass, and a left-padded batch, whether 64 greedy tokens are
identical, and the time of one 512-token forward pass of each (median of 5, alternating).

    .venv/bin/python bench/hf_parity.py
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch
import transformers as tf

from arlm.config import GenerateConfig
from arlm.generate.engine import generate_ids
from arlm.interop.load import load_model

V = 4096
ARCHS = {
    "gpt2 (12x768, tied)": tf.GPT2Config(vocab_size=V, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                                          bos_token_id=0, eos_token_id=0),
    "llama (GQA 12q/4kv, untied)": tf.LlamaConfig(vocab_size=V, hidden_size=768, intermediate_size=2048,
                                                  num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
                                                  max_position_embeddings=1024),
    "llama3.1 rope scaling, MQA": tf.LlamaConfig(
        vocab_size=V, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=1, max_position_embeddings=1024, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 256}),
    "qwen2 (q/k/v biases, tied)": tf.Qwen2Config(vocab_size=V, hidden_size=512, intermediate_size=1408,
                                                 num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
                                                 max_position_embeddings=1024, tie_word_embeddings=True),
}


def timed(fn, reps: int = 5) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, transformers {tf.__version__}, {torch.get_num_threads()} threads, float32")
    print(f"{'architecture':30s} {'full':>9s} {'cached':>9s} {'padded':>9s} {'greedy64':>9s} "
          f"{'hf ms':>7s} {'arlm ms':>8s} {'ratio':>6s}")
    for name, config in ARCHS.items():
        torch.manual_seed(0)
        hf = tf.AutoModelForCausalLM.from_config(config).eval()
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
        with tempfile.TemporaryDirectory() as d:
            hf.save_pretrained(d)
            from tokenizers import Tokenizer, models

            tf.PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE({"a": 0}, []))).save_pretrained(d)
            ours, _, _ = load_model(d)
        x = torch.randint(0, V, (2, 96), generator=torch.Generator().manual_seed(1))
        full = (ours(x)[0] - hf(x).logits).abs().max().item()

        cache = ours.new_cache(2, 96)
        pos = lambda a, b: torch.arange(a, b)[None].expand(2, -1)  # noqa: E731
        steps = [ours(x[:, :32], cache=cache, input_pos=pos(0, 32), kv_len=32)[0]]
        steps += [ours(x[:, t:t + 1], cache=cache, input_pos=pos(t, t + 1))[0] for t in range(32, 96)]
        cached = (torch.cat(steps, 1) - hf(x).logits).abs().max().item()

        mask = torch.ones_like(x)
        mask[1, :40] = 0
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ref = hf(input_ids=x, attention_mask=mask, position_ids=pos).logits
        got = ours(x, key_mask=mask.bool(), positions=pos)[0]
        padded = (ref - got)[mask.bool()].abs().max().item()

        prompt = x[:1, :16]
        want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=64,
                           min_new_tokens=64, pad_token_id=0)[0, 16:].tolist()
        have = generate_ids(ours, prompt[0].tolist(), GenerateConfig(temperature=0.0, max_new_tokens=64))[0]

        long = torch.randint(0, V, (1, 512), generator=torch.Generator().manual_seed(2))
        t_hf, t_ours = [], []
        for _ in range(5):
            t_hf.append(timed(lambda: hf(long), 1))
            t_ours.append(timed(lambda: ours(long), 1))
        a, b = statistics.median(t_hf) * 1e3, statistics.median(t_ours) * 1e3
        print(f"{name:30s} {full:9.1e} {cached:9.1e} {padded:9.1e} {str(want == have):>9s} {a:7.1f} {b:8.1f} {a / b:5.2f}x")


if __name__ == "__main__":
    main()
