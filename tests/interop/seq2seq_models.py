"""Tiny random encoder-decoders of every family transformers and arlm share, saved as Hugging Face
folders (every tensor perturbed, so a mixed-up weight shows), and a word-level tokenizer that appends
</s> as T5's and Marian's do."""

from __future__ import annotations

from pathlib import Path

import torch

V = 99
WORDS = "the a cat dog sat on mat ran to house big small red blue and is was".split()


def configs(tf) -> dict:
    common = dict(vocab_size=V, d_model=32)
    bart = dict(encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64, **common)
    return {
        "t5": tf.T5Config(d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj="relu",
                          relative_attention_num_buckets=8, relative_attention_max_distance=20, **common),
        "t5-v1.1": tf.T5Config(d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                               tie_word_embeddings=False, **common),
        "mt5": tf.MT5Config(d_kv=8, d_ff=48, num_layers=2, num_heads=4, **common),
        "bart": tf.BartConfig(**bart),
        "mbart": tf.MBartConfig(scale_embedding=True, **bart),
        "pegasus": tf.PegasusConfig(**bart),
        "marian": tf.MarianConfig(decoder_vocab_size=V, pad_token_id=V - 1, decoder_start_token_id=V - 1, eos_token_id=0,
                                  activation_function="swish", **bart),
    }


def make_seq2seq(tf, name: str, d: Path, seed: int = 0):
    """Save family ``name``'s tiny model to ``d``; the transformers model (eval mode)."""
    torch.manual_seed(seed)
    m = tf.AutoModelForSeq2SeqLM.from_config(configs(tf)[name]).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "embed_positions" not in n or name in ("bart", "mbart"):  # (fixed sinusoids stay exact)
                p.add_(0.05 * torch.randn_like(p))
        if hasattr(m, "final_logits_bias"):
            m.final_logits_bias.normal_()
    m.save_pretrained(d)
    return m


def word_tokenizer(tf, vocab_size: int, pad: int = 0, eos: int = 1):
    """A transformers fast tokenizer over WORDS (+ filler tokens up to ``vocab_size``) that appends </s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {"<pad>": pad, "</s>": eos}
    for w in ["<unk>"] + WORDS + [f"w{i}" for i in range(vocab_size)]:
        while len(vocab) < vocab_size and w not in vocab:
            free = next(i for i in range(vocab_size) if i not in vocab.values())
            vocab[w] = free
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
