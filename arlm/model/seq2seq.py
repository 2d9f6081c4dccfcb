"""The encoder-decoder Transformer (Vaswani et al. 2017), read top to bottom from the smallest part to
the whole: T5, BART, mBART, Pegasus and Marian are this one class with different config values
(arlm/config.py, ``Seq2SeqConfig``, whose docstring tabulates them).

The encoder reads the whole source at once (bidirectional self-attention); the decoder writes the
target one token at a time (causal self-attention) and, in every block, attends to the encoder's
output (cross-attention). Decoding computes the encoder's output and each decoder block's
cross-attention keys/values once per request and keeps them in the request's cache row beside the
decoder's own keys/values (:class:`Seq2SeqCache`), so a decode step costs what a GPT's step costs
plus one attention over the source per block.

Shapes: B batch, S source positions, T new target positions, K target positions visible (cache +
new), C = n_embd, nh = n_head, hs = head width, H = MLP hidden width, V = vocab_size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from arlm.config import Seq2SeqConfig
from arlm.model import kernels
from arlm.model.gpt import GPT, MLP
from arlm.model.layers import Linear, cache_mask, make_norm

LEARNED_OFFSET = 2  # BART's learned positions start at row 2 (fairseq reserved rows 0-1 for padding)


# -- positions ---------------------------------------------------------------------------------------


def relative_bucket(rel: torch.Tensor, bidirectional: bool, buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position ``rel`` = key position - query position (Raffel et al.
    2020, section 2.1; Mesh TensorFlow's ``_relative_position_bucket``): half the buckets hold exact
    distances 0 .. b/2 - 1, the other half distances up to ``max_distance`` on a log scale, and
    everything farther shares the last bucket. Bidirectional (encoder): the sign takes half the
    buckets; causal (decoder): only keys at or before the query are told apart."""
    out = torch.zeros_like(rel)
    if bidirectional:
        buckets //= 2
        out = out + (rel > 0).long() * buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    exact = buckets // 2
    far = exact + (torch.log(rel.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                   * (buckets - exact)).long()
    far = torch.clamp(far, max=buckets - 1)
    return out + torch.where(rel < exact, rel, far)


def sinusoids(n: int, dim: int) -> torch.Tensor:
    """(n, dim) fixed position encodings of Vaswani et al. (2017, section 3.5), laid out as Marian and
    Pegasus do: the sines of every frequency in the first half of the channels, the cosines in the
    second (not interleaved). Computed in float64, as their numpy original."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    return torch.cat([torch.sin(angle[:, 0::2]), torch.cos(angle[:, 1::2])], dim=1).float()


# -- attention ---------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention. Self-attention takes queries, keys and values from ``x`` through one fused
    projection ``c_attn`` = [q; k; v]; cross-attention takes queries from ``x`` (``q``) and keys and
    values from the encoder's output (``c_kv`` = [k; v], computed once per source by :meth:`keys_values`).

    ``mask`` is boolean (True = may attend) or float (added to the scores: T5's relative position
    bias, with -inf where attending is not allowed), broadcastable to (B, nh, T, K).
    """

    def __init__(self, cfg: Seq2SeqConfig, cross: bool):
        super().__init__()
        self.n_head, self.hs, self.cross = cfg.n_head, cfg.hs, cross
        inner = cfg.n_head * cfg.hs
        if cross:
            self.q = Linear(cfg.n_embd, inner, bias=cfg.bias)
            self.c_kv = Linear(cfg.n_embd, 2 * inner, bias=cfg.bias)
        else:
            self.c_attn = Linear(cfg.n_embd, 3 * inner, bias=cfg.bias)
        self.c_proj = Linear(inner, cfg.n_embd, bias=cfg.bias)
        self.scale = None if cfg.scale_attention else 1.0  # None: 1/sqrt(hs); T5 folds it into its weights
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.hs).transpose(1, 2)  # (B, nh, T, hs)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of the encoder's output ``memory`` (B, S, C): 2 x (B, nh, S, hs)."""
        k, v = self.c_kv(memory).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention: ``kv`` is this layer's cache (new keys/values stored at ``input_pos`` (B, T),
        then the first K = mask.size(-1) positions attended). Cross-attention: ``kv`` is the source's
        keys/values from :meth:`keys_values`."""
        B, T, _ = x.shape
        if self.cross:
            q = self.heads(self.q(x))
            k, v = kv
        else:
            q, k, v = (self.heads(t) for t in self.c_attn(x).chunk(3, dim=-1))  # 3 x (B, nh, T, hs)
            if kv is not None:
                k_cache, v_cache = kv
                rows = torch.arange(B, device=x.device)[:, None]  # (B, 1)
                k_cache[rows, :, input_pos] = k.transpose(1, 2).to(k_cache.dtype)  # indexed (B, T, nh, hs)
                v_cache[rows, :, input_pos] = v.transpose(1, 2).to(v_cache.dtype)
                K = mask.size(-1)
                k, v = k_cache[:, :, :K], v_cache[:, :, :K]
        y = self.attend(q, k, v, mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.hs)
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """One query per row on CPU with a boolean mask: arlm's decoding kernel (it scales by 1/sqrt(hs),
        so an unscaled model's queries are multiplied back first); otherwise PyTorch's fused attention."""
        if (not self.training and (mask is None or mask.dtype == torch.bool)
                and kernels.attend_usable(q, k, v) and k.size(1) == q.size(1)):
            if self.scale is not None:
                q = q * (self.scale * math.sqrt(self.hs))
            return kernels.attend(q, k, v, mask).to(q.dtype)
        if k.dtype != q.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale,
                                              dropout_p=self.dropout if self.training else 0.0)


class Block(nn.Module):
    """An encoder block (self-attention, MLP) or a decoder block (causal self-attention,
    cross-attention, MLP). Pre-norm: x + f(norm(x)) (T5, mBART, Pegasus); post-norm: norm(x + f(x))
    (the original Transformer; BART, Marian)."""

    def __init__(self, cfg: Seq2SeqConfig, decoder: bool):
        super().__init__()
        self.post_norm = cfg.post_norm
        self.ln_1 = make_norm(cfg)
        self.attn = Attention(cfg, cross=False)
        if decoder:
            self.ln_x = make_norm(cfg)
            self.cross = Attention(cfg, cross=True)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg, bias=cfg.bias)

    def residual(self, x: torch.Tensor, norm: nn.Module, f) -> torch.Tensor:
        return norm(x + f(x)) if self.post_norm else x + f(norm(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, kv=None, input_pos: torch.Tensor | None = None,
                memory_kv=None, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.residual(x, self.ln_1, lambda h: self.attn(h, mask, kv, input_pos))
        if memory_kv is not None:
            x = self.residual(x, self.ln_x, lambda h: self.cross(h, memory_mask, memory_kv))
        return self.residual(x, self.ln_2, self.mlp)  # (B, T, C)


class Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention): token embedding (the
    model's, shared) + positions -> blocks -> final norm. Positions are learned rows, fixed sinusoids,
    or T5's relative buckets (one table of per-head biases for the whole stack, added in every block)."""

    def __init__(self, cfg: Seq2SeqConfig, decoder: bool):
        super().__init__()
        self.cfg, self.decoder = cfg, decoder
        n_pos = cfg.block_size if decoder else cfg.source_len
        if cfg.pos_embedding == "learned":
            self.wpe = nn.Embedding(n_pos + LEARNED_OFFSET, cfg.n_embd)
        elif cfg.pos_embedding == "relative":
            self.rel_bias = nn.Embedding(cfg.relative_buckets, cfg.n_head)
        self.register_buffer("sinusoids", None, persistent=False)
        self.ln_emb = make_norm(cfg) if cfg.embedding_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg, decoder) for _ in range(cfg.decoder_layers if decoder else cfg.n_layer)])
        self.ln_f = make_norm(cfg) if cfg.final_norm else None
        self.checkpointing = False

    def init_buffers(self, device) -> None:
        if self.cfg.pos_embedding == "sinusoidal":
            n = self.cfg.block_size if self.decoder else self.cfg.source_len
            self.sinusoids = sinusoids(n, self.cfg.n_embd).to(device)

    def embed(self, tok: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Scaled token embeddings ``tok`` (B, T, C) plus absolute positions (B or 1, T), normalised."""
        if self.cfg.pos_embedding == "learned":
            tok = tok + self.wpe(positions + LEARNED_OFFSET)
        elif self.cfg.pos_embedding == "sinusoidal":
            tok = tok + self.sinusoids[positions].to(tok.dtype)
        if self.ln_emb is not None:
            tok = self.ln_emb(tok)
        return self.drop(tok)

    def position_bias(self, q_pos: torch.Tensor, k_len: int, allowed: torch.Tensor | None) -> torch.Tensor | None:
        """The attention mask of this stack: ``allowed`` (bool, broadcastable to (B, 1, T, K)) as it is, or
        with relative positions T5's bias (B or 1, nh, T, K), -inf where not allowed. ``q_pos`` (B or 1, T)."""
        if self.cfg.pos_embedding != "relative":
            return allowed
        rel = torch.arange(k_len, device=q_pos.device)[None, None, :] - q_pos[:, :, None]  # (B, T, K)
        bucket = relative_bucket(rel, not self.decoder, self.cfg.relative_buckets, self.cfg.relative_max_distance)
        bias = self.rel_bias(bucket).permute(0, 3, 1, 2)  # (B, nh, T, K)
        if allowed is not None:
            bias = bias.masked_fill(~allowed, float("-inf"))
        return bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache_kv=None, input_pos=None,
                memory_kv=None, memory_mask=None) -> torch.Tensor:
        for i, block in enumerate(self.h):
            kv = None if cache_kv is None else cache_kv[i]
            mem = None if memory_kv is None else memory_kv[i]
            if self.checkpointing and self.training and torch.is_grad_enabled():
                # keep only each block's input; recompute its activations during backward (Chen et al. 2016)
                x = torch.utils.checkpoint.checkpoint(block, x, mask, None, None, mem, memory_mask, use_reentrant=False)
            else:
                x = block(x, mask, kv, input_pos, mem, memory_mask)
        return self.ln_f(x) if self.ln_f is not None else x


# -- the cache ----------------------------------------------------------------------------------------


class Seq2SeqCache(NamedTuple):
    """What decoding keeps per sequence (one row each): the decoder's keys/values ``k[i]``, ``v[i]``
    (rows, nh, max_len, hs) as a GPT's KVCache, and the cross-attention keys/values of the encoder's
    output ``ck[i]``, ``cv[i]`` (rows, nh, max_source, hs) with each row's source length ``src_len``
    (rows,). The cross part is written once per request (:meth:`EncoderDecoder.prime_cache`)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    ck: list[torch.Tensor]
    cv: list[torch.Tensor]
    src_len: torch.Tensor

    @property
    def rows(self) -> int:
        return self.k[0].size(0)

    @property
    def max_len(self) -> int:
        return self.k[0].size(2)

    def view(self, start: int, stop: int) -> "Seq2SeqCache":
        """Rows ``start .. stop-1`` (the same memory)."""
        return Seq2SeqCache(*([t[start:stop] for t in ts] for ts in (self.k, self.v, self.ck, self.cv)),
                            self.src_len[start:stop])

    def copy_row(self, src: int, dst: int, length: int) -> None:
        """Row ``src``'s source and its first ``length`` target positions into row ``dst``."""
        for t in (*self.k, *self.v):
            t[dst, :, :length] = t[src, :, :length]
        n = int(self.src_len[src])
        for t in (*self.ck, *self.cv):
            t[dst, :, :n] = t[src, :, :n]
        self.src_len[dst] = n

    def reorder(self, rows: torch.Tensor, length: int | None = None) -> None:
        """Make row b hold what row ``rows[b]`` held in its first ``length`` target positions (default
        all), in place: beam search keeps its surviving beams. Beams move only among the rows of their
        own source, which all hold the same source part: it is not copied."""
        n = length or self.max_len
        for t in (*self.k, *self.v):
            t[:, :, :n] = t[:, :, :n].index_select(0, rows)


# -- the model --------------------------------------------------------------------------------------


class EncoderDecoder(nn.Module):
    """Shared token embedding -> encoder over the source; decoder over the target with cross-attention
    -> (scaled) output layer (+ fixed logits bias) -> logits over the vocabulary."""

    # what the rest of arlm may ask of it (arlm/model/registry.py)
    is_encoder_decoder = True
    can_rewind_cache = False  # prefix caching and speculative decoding assume a decoder-only cache
    can_compile_decode = False
    can_checkpoint_activations = True

    def __init__(self, cfg: Seq2SeqConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set before building the model"
        self.config = cfg
        self.cache_dtype: torch.dtype | None = None
        self.shared = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.encoder = Stack(cfg, decoder=False)
        self.decoder = Stack(cfg, decoder=True)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.shared.weight
        if cfg.logits_bias:  # a buffer, as in BART: loaded and saved, not trained
            self.register_buffer("final_logits_bias", torch.zeros(cfg.vocab_size))
        self.apply(GPT._init_weights)  # N(0, 0.02) weights, zero biases (BART's init_std; GPT-2's)
        self.init_buffers()

    @property
    def checkpointing(self) -> bool:
        return self.encoder.checkpointing

    @checkpointing.setter
    def checkpointing(self, on: bool) -> None:
        self.encoder.checkpointing = self.decoder.checkpointing = on

    float_param = GPT.float_param  # the device and dtype it computes in

    def init_buffers(self) -> None:
        """(Re)compute the non-learned buffers (sinusoids), e.g. after building on the meta device."""
        device = self.shared.weight.device
        for stack in (self.encoder, self.decoder):
            stack.init_buffers(device)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(s.wpe.weight.numel() for s in (self.encoder, self.decoder) if hasattr(s, "wpe"))
        return n

    @staticmethod
    def parameter_count(cfg: Seq2SeqConfig) -> int:
        """Parameters of a model of ``cfg`` (tied weights once), from the config alone."""
        C, H, V, inner = cfg.n_embd, cfg.hidden_size, cfg.vocab_size, cfg.n_head * cfg.hs
        b = int(cfg.bias)
        norm = C * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
        up = 2 * H if cfg.mlp == "gated" else H
        attn = 4 * C * inner + b * (3 * inner + C)
        mlp = C * up + b * up + H * C + b * C
        enc_block, dec_block = attn + mlp + 2 * norm, 2 * attn + mlp + 3 * norm
        stacks = cfg.n_layer * enc_block + cfg.decoder_layers * dec_block
        stacks += 2 * norm * (int(cfg.embedding_norm) + int(cfg.final_norm))
        if cfg.pos_embedding == "learned":
            stacks += (cfg.source_len + cfg.block_size + 2 * LEARNED_OFFSET) * C
        elif cfg.pos_embedding == "relative":
            stacks += 2 * cfg.relative_buckets * cfg.n_head
        return V * C + stacks + (0 if cfg.tie_embeddings else V * C)

    def attention_flops_per_token(self) -> float:
        """Training FLOPs per target token of attention scores and sums: the decoder's self- and
        cross-attention and (per source token, taken as one per target token) the encoder's."""
        cfg = self.config
        inner = cfg.n_head * cfg.hs
        return 12.0 * inner * (cfg.n_layer * cfg.source_len + cfg.decoder_layers * (cfg.block_size + cfg.source_len))

    # -- cache -----------------------------------------------------------------------------------------
    def new_cache(self, rows: int, max_len: int | None = None, source_len: int | None = None) -> Seq2SeqCache:
        """An empty cache of ``rows`` sequences of up to ``max_len`` target positions (default block_size)
        and sources of up to ``source_len`` tokens (default max_source_len)."""
        cfg = self.config
        p = self.float_param()
        dtype = self.cache_dtype or p.dtype
        L, nh, hs, S = cfg.decoder_layers, cfg.n_head, cfg.hs, source_len or cfg.source_len

        def zeros(n):
            return [torch.zeros(rows, nh, n, hs, dtype=dtype, device=p.device) for _ in range(L)]
        return Seq2SeqCache(zeros(max_len or cfg.block_size), zeros(max_len or cfg.block_size), zeros(S), zeros(S),
                            torch.zeros(rows, dtype=torch.long, device=p.device))

    def cache_bytes(self, batch_size: int, max_len: int) -> int:
        cfg = self.config
        dtype = self.cache_dtype or self.float_param().dtype
        return 2 * cfg.decoder_layers * batch_size * cfg.n_head * cfg.hs * (max_len + cfg.source_len) * dtype.itemsize

    @torch.inference_mode()
    def prime_cache(self, cache: Seq2SeqCache, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> None:
        """Run the encoder over ``src`` (B, S) (``src_mask`` (B, S): True for real tokens, which come
        first) and store each decoder block's cross-attention keys/values in the cache's first B rows."""
        memory = self.encode(src, src_mask)
        S = src.size(1)
        for i, (k, v) in enumerate(self.memory_kv(memory)):
            cache.ck[i][:src.size(0), :, :S] = k.to(cache.ck[i].dtype)
            cache.cv[i][:src.size(0), :, :S] = v.to(cache.cv[i].dtype)
        lengths = src_mask.sum(1) if src_mask is not None else torch.full((src.size(0),), S, device=src.device)
        cache.src_len[:src.size(0)] = lengths

    # -- forward -------------------------------------------------------------------------------------
    def embed_tokens(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.shared(idx)  # (B, T, C)
        return x * math.sqrt(self.config.n_embd) if self.config.scale_embedding else x

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output (B, S, C) for source ids ``src`` (B, S); ``src_mask`` (B, S) marks real
        tokens (padded keys are not attended)."""
        S = src.size(1)
        if S > self.config.source_len:
            raise ValueError(f"source of {S} tokens exceeds max_source_len {self.config.source_len}")
        pos = torch.arange(S, device=src.device)[None]  # (1, S)
        x = self.encoder.embed(self.embed_tokens(src), pos)
        allowed = src_mask.bool()[:, None, None, :] if src_mask is not None else None  # (B, 1, 1, S)
        return self.encoder(x, self.encoder.position_bias(pos, S, allowed))

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder block's cross-attention keys/values of the encoder's output."""
        return [block.cross.keys_values(memory) for block in self.decoder.h]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the decoder's output: T5 1.0 rescales it by d^-0.5 (its output layer is the
        unscaled embedding); BART's family adds a fixed bias."""
        if self.config.scale_decoder_output:
            x = x * self.config.n_embd ** -0.5
        logits = self.lm_head(x)
        if not self.config.logits_bias:
            return logits
        # In place when nothing is recorded for backward: at beam search's many rows over a 58k-word
        # vocabulary a second logits tensor costs as much as the add.
        return logits.add_(self.final_logits_bias) if not torch.is_grad_enabled() else logits + self.final_logits_bias

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: Seq2SeqCache | None = None,
                input_pos: torch.Tensor | None = None, kv_len: int | None = None, last_only: bool = False,
                key_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None, *,
                src: torch.Tensor | None = None, src_mask: torch.Tensor | None = None):
        """Logits for target ids ``idx`` (B, T) given a source; with ``targets`` (B, T) also the mean
        cross-entropy (target -1 ignored).

        Without a cache the source is ``src`` (B, S) (``src_mask`` marking its real tokens) and ``idx`` is
        the whole target window from position 0 (training, scoring, decoding without a cache). With a
        ``cache`` primed by :meth:`prime_cache`, ``idx`` are new tokens at ``input_pos`` (B, T), as a
        GPT's decode step; ``kv_len`` bounds the target positions attended. ``key_mask`` and
        ``positions`` (a GPT's left padding) do not apply: targets are right-padded. ``idx`` may also be
        a (src, src_mask, targets' inputs) batch, which is how the training loop passes pairs.
        """
        if isinstance(idx, tuple):  # a training batch (arlm/data/pairs.py: Seq2SeqBatch): source, its mask, targets
            src, src_mask, idx = idx
        B, T = idx.shape
        if cache is None:
            if src is None:
                raise ValueError("an encoder-decoder needs the source: src= or a cache from prime_cache")
            if T > self.config.block_size:
                raise ValueError(f"target of {T} tokens exceeds block_size {self.config.block_size}")
            memory_kv = self.memory_kv(self.encode(src, src_mask))
            memory_mask = src_mask.bool()[:, None, None, :] if src_mask is not None else None
            q_pos = torch.arange(T, device=idx.device)[None]  # (1, T)
            allowed = q_pos[0][None, :] <= q_pos[0][:, None]  # (T, T) causal
            mask = self.decoder.position_bias(q_pos, T, allowed)
            kv = None
        else:
            S = int(cache.src_len[:B].max().clamp(min=1))
            memory_kv = [(k[:B, :, :S], v[:B, :, :S]) for k, v in zip(cache.ck, cache.cv)]
            lengths = cache.src_len[:B].clamp(min=1)  # an idle row (length 0) attends to one stale key, not none
            memory_mask = (torch.arange(S, device=idx.device)[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)
            q_pos = input_pos
            K = kv_len or cache.max_len
            mask = self.decoder.position_bias(q_pos, K, cache_mask(input_pos, K))  # (B, 1 or nh, T, K)
            kv = list(zip(cache.k, cache.v))
        x = self.decoder.embed(self.embed_tokens(idx), q_pos)
        x = self.decoder(x, mask, kv, q_pos if cache is not None else None, memory_kv, memory_mask)
        if targets is None:
            if last_only:
                x = x[:, -1:, :]
            return self.head(x), None
        logits = self.head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss
