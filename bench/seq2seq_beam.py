"""Beam search on an encoder-decoder: arlm vs transformers' ``generate`` on the same random weights of
the Marian opus-mt shape (6 + 6 layers, d_model 512, 8 heads, FFN 2048, vocabulary 58,101, swish,
sinusoidal positions), float32, num_beams=4, the same sources (random token ids of 12 to 40 tokens),
64 new tokens. The end-of-text token's logit bias is lowered so every hypothesis runs the full 64
steps on both sides (a fixed amount of work); outputs are checked identical token for token.

Batch 1 (each source alone, one after the other) and batch 8 (the eight sources in one call: arlm's
``beam_search_batch``, transformers' padded batch). Alternating, median of ``--rounds``.

    .venv/bin/python bench/seq2seq_beam.py [--rounds 3] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# bench/kernels.py would shadow the `kernels` package that transformers' activations import
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
import transformers as tf  # noqa: E402

from arlm.config import GenerateConfig  # noqa: E402
from arlm.generate.beam import beam_search_batch  # noqa: E402
from arlm.interop.load import load_model  # noqa: E402

V, PAD, EOS = 58101, 58100, 0


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def marian() -> tf.MarianMTModel:
    config = tf.MarianConfig(vocab_size=V, decoder_vocab_size=V, d_model=512, encoder_layers=6, decoder_layers=6,
                             encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                             decoder_ffn_dim=2048, max_position_embeddings=512, activation_function="swish",
                             scale_embedding=True, pad_token_id=PAD, decoder_start_token_id=PAD, eos_token_id=EOS,
                             forced_eos_token_id=EOS, share_encoder_decoder_embeddings=True)
    torch.manual_seed(0)
    m = tf.MarianMTModel(config).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "embed_positions" not in name:
                p.add_(0.02 * torch.randn_like(p))
        m.final_logits_bias.normal_(0, 1)
        m.final_logits_bias[0, [EOS, PAD]] = -30.0  # every beam runs the full length; pad never wins
    return m


def hf_generate(m, sources: list[list[int]], new: int) -> list[list[int]]:
    S = max(len(s) for s in sources)
    ids = torch.full((len(sources), S), PAD)
    mask = torch.zeros(len(sources), S, dtype=torch.long)
    for i, s in enumerate(sources):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    out = m.generate(input_ids=ids, attention_mask=mask, num_beams=4, max_new_tokens=new, do_sample=False,
                     early_stopping=False, length_penalty=1.0, forced_eos_token_id=EOS, eos_token_id=EOS,
                     pad_token_id=PAD, decoder_start_token_id=PAD)
    rows = []
    for r in out.tolist():
        r = r[1:]  # the decoder start
        rows.append(r[:r.index(EOS) + 1] if EOS in r else r)
    return rows


def arlm_generate(model, sources: list[list[int]], new: int) -> list[list[int]]:
    cfg = GenerateConfig(num_beams=4, max_new_tokens=new, temperature=0.0, forced_eos_token_id=EOS)
    found = beam_search_batch(model, [[PAD]] * len(sources), cfg, (EOS,), sources=sources)
    return [hyps[0].tokens for hyps in found]


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    hf = marian()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours, _, _ = load_model(d)
    g = torch.Generator().manual_seed(1)
    sources = [torch.randint(1, PAD, (n,), generator=g).tolist() + [EOS] for n in (12, 40, 23, 31, 17, 35, 27, 20)]
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, transformers {tf.__version__}")
    print(f"Marian opus-mt shape: {n_params / 1e6:.1f}M parameters, float32, num_beams=4, "
          f"{args.new_tokens} new tokens, median of {args.rounds} rounds (alternating)")
    print(f"{'batch':>5s} {'transformers tok/s':>19s} {'arlm tok/s':>11s} {'ratio':>6s}  outputs")
    for batch in (1, 8):
        groups = [[s] for s in sources] if batch == 1 else [sources]
        times = {"hf": [], "arlm": []}
        outs = {}
        for _ in range(args.rounds):
            for name, fn in (("hf", lambda grp: hf_generate(hf, grp, args.new_tokens)),
                             ("arlm", lambda grp: arlm_generate(ours, grp, args.new_tokens))):
                t = time.perf_counter()
                outs[name] = [row for grp in groups for row in fn(grp)]
                times[name].append(time.perf_counter() - t)
        tokens = sum(len(r) for r in outs["arlm"])
        hf_tps, our_tps = tokens / statistics.median(times["hf"]), tokens / statistics.median(times["arlm"])
        same = "identical" if outs["hf"] == outs["arlm"] else "DIFFERENT"
        print(f"{batch:5d} {hf_tps:19.1f} {our_tps:11.1f} {our_tps / hf_tps:5.2f}x  {same}")


if __name__ == "__main__":
    main()
