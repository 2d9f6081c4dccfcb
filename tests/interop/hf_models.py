"""Tiny random Hugging Face checkpoints built with transformers itself (no network), for parity tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import CORPUS

# Mixed text for tokenizer training and tests: English, Chinese, emoji, code.
MIXED_TEXT = (
    (CORPUS / "hamlet.txt").read_text(encoding="utf-8")[5_000:9_000]
    + "\n床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
    + "Emoji: 🙂🚀👩‍💻 ünïcödé — “quotes”\n"
    + "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\tprint(f'{x!r}')  # ok\n"
)

VOCAB = 384


def bpe_tokenizer(vocab_size: int = VOCAB):
    """A byte-level BPE trained on MIXED_TEXT with GPT-2's pre-tokenizer; <|endoftext|> is id vocab-1's neighbour."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([MIXED_TEXT], trainer)
    return tok


def hf_config(kind: str, **overrides):
    """A transformers config of ``kind``: gpt2, llama, mistral or qwen2, vocabulary VOCAB, context 128."""
    import transformers as tf

    eos = overrides.pop("eos_token_id", 0)
    if kind == "gpt2":
        base = dict(vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4, bos_token_id=eos,
                    eos_token_id=eos)
        return tf.GPT2Config(**{**base, **overrides})
    base = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, bos_token_id=eos, eos_token_id=eos)
    cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config}[kind]
    return cls(**{**base, **overrides})


def make_hf_model(path: Path, kind: str, seed: int = 0, tokenizer: bool = True, **overrides):
    """Save a random model (every tensor perturbed, so a swapped or misplaced weight shows) to ``path``."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(kind, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(path)
    if tokenizer:
        PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer(), eos_token="<|endoftext|>",
                                bos_token="<|endoftext|>").save_pretrained(path)
    return model
