"""The GPT model: a decoder-only Transformer, read top to bottom from the smallest part to the whole.

The default configuration is GPT-2 (Radford et al. 2019): learned token and position embeddings,
pre-LayerNorm blocks of causal multi-head self-attention and a GELU MLP, a final LayerNorm, and an
output layer that shares its weight with the token embedding (weight tying, Press & Wolf 2017).

The same class is the Llama family (Touvron et al. 2023; Mistral, Qwen2, SmolLM...) through config
options: rotary positions (RoPE), RMSNorm, a gated SiLU MLP (SwiGLU), grouped-query attention
(Ainslie et al. 2023) where several query heads share one key/value head, untied output layer.

Shapes: B batch, T new positions, S = positions visible (cache + new), C = n_embd, nh = n_head,
nkv = n_kv_head, hs = head width, H = MLP hidden width, V = vocab_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from arlm.config import GPTConfig
from arlm.model import kernels
from arlm.model.layers import KVCache, Linear, apply_rope, cache_mask, make_norm, rope_cos_sin, rope_inv_freq


class ReLU2(nn.Module):
    """relu(x)^2 (So et al. 2021, Primer): cheaper than GELU, and better on small GPTs (modded-nanogpt)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class GELUTanh(nn.GELU):
    """GPT-2's "gelu_new" (Hendrycks & Gimpel 2016): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). On CPU
    it runs arlm's kernel (arlm/model/kernels/activation.cpp: PyTorch's costs as much as the matrix product
    before it); elsewhere, and inside torch.compile, PyTorch's."""

    def __init__(self):
        super().__init__(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.gelu_tanh(x) if kernels.gelu_usable(x) else super().forward(x)


ACTIVATIONS = {
    "gelu_tanh": GELUTanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "relu2": ReLU2,
}


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) v for one new query per row, written as reductions: inside
    torch.compile it becomes a few fused loops instead of one attention kernel call per layer (about
    70 us each on CPU, measured). q (B, nh, 1, hs); k, v (B, nkv, S, hs); ``mask`` (B, 1, 1, S), True
    where a key may be attended; query head h reads key/value head h // (nh / nkv)."""
    B, nh, _, hs = q.shape
    nkv = k.size(1)
    qg = q.view(B, nkv, nh // nkv, 1, hs)  # (B, nkv, g, 1, hs)
    scores = (qg * k[:, :, None]).sum(-1) / math.sqrt(hs)  # (B, nkv, g, S)
    if mask is not None:
        scores = scores.masked_fill(~mask.view(B, 1, 1, -1), float("-inf"))
    p = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    y = (p[..., None] * v[:, :, None]).sum(-2)  # (B, nkv, g, hs)
    return y.reshape(B, nh, 1, hs)


class CausalSelfAttention(nn.Module):
    """Self-attention where each position sees only itself and earlier positions.

    Queries, keys and values come out of one fused projection ``c_attn``: [q (nh*hs); k (nkv*hs); v (nkv*hs)].
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.hs = cfg.n_head, cfg.kv_heads, cfg.hs
        self.qk_norm, self.norm_eps = cfg.qk_norm, cfg.norm_eps
        qkv_bias = cfg.bias or cfg.qkv_bias or cfg.attn_bias
        self.c_attn = Linear(cfg.n_embd, (cfg.n_head + 2 * self.n_kv_head) * self.hs, bias=qkv_bias)
        self.c_proj = Linear(cfg.n_head * self.hs, cfg.n_embd, bias=cfg.bias or cfg.attn_bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                input_pos: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.hs
        q, k, v = self.c_attn(x).split([nh * hs, nkv * hs, nkv * hs], dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.qk_norm:  # unit RMS per head: the attention logits stay bounded whatever the weights grow to
            q, k = F.rms_norm(q, (hs,), eps=self.norm_eps), F.rms_norm(k, (hs,), eps=self.norm_eps)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:
            # store the new keys/values at each row's positions, then attend over the cache's first
            # S positions (the mask hides what a row has not reached): (B, nkv, S, hs)
            k_cache, v_cache = kv
            rows = torch.arange(B, device=x.device)[:, None]  # (B, 1)
            k_cache[rows, :, input_pos] = k.transpose(1, 2).to(k_cache.dtype)  # indexed (B, T, nkv, hs)
            v_cache[rows, :, input_pos] = v.transpose(1, 2).to(v_cache.dtype)
            S = mask.size(-1)
            k, v = k_cache[:, :, :S], v_cache[:, :, :S]
        if T == 1 and kv is not None and not self.training and kernels.attend_usable(q, k, v):
            y = kernels.attend(q, k, v, mask).to(q.dtype)  # decoding on CPU: arlm/model/kernels/attention.cpp
        elif T == 1 and kv is not None and torch.compiler.is_compiling():
            y = one_query_attention(q, k, v, mask)  # decoding: fused into the compiled step
        else:
            if k.dtype != q.dtype:  # a lower-precision cache (prefill; the decode paths read it as it is)
                k, v = k.to(q.dtype), v.to(q.dtype)
            y = self.attend(q, k, v, mask, T)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, nh * hs)  # re-assemble heads: (B, T, nh*hs)
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, T: int) -> torch.Tensor:
        """PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels where
        available), or on CPU for causal sequences of up to kernels.MAX_CAUSAL_T positions arlm's kernel.
        Without a mask the T positions are the whole sequence: causal."""
        kw = dict(attn_mask=mask, is_causal=mask is None and T > 1, dropout_p=self.dropout if self.training else 0.0,
                  enable_gqa=self.n_kv_head != self.n_head)
        if kw["is_causal"] and kw["dropout_p"] == 0.0 and kernels.causal_usable(q, k, v):
            return kernels.causal_attention(q, k, v)  # CPU training and prefill: arlm/model/kernels/causal.cpp
        if q.dtype != torch.bfloat16 or q.device.type != "cpu":
            return F.scaled_dot_product_attention(q, k, v, **kw)
        # On CPU, PyTorch's flash attention is several times slower in bfloat16 than in float32, even with
        # AVX512-BF16 (backward at (12, 4, 64, 32): 5.1 vs 0.8 ms, measured): attend in float32 (under
        # autocast too, which would cast back), and hand bfloat16 on to the output projection.
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw).to(torch.bfloat16)


class MLP(nn.Module):
    """Position-wise feed-forward network: C -> H -> activation -> C, or gated: C -> 2H -> act(gate) * up -> C.
    (The encoder-decoder's too: any config with n_embd, hidden_size, mlp, activation and dropout, with
    ``bias`` given.)"""

    def __init__(self, cfg: GPTConfig, bias: bool | None = None):
        super().__init__()
        self.gated = cfg.mlp == "gated"
        H = cfg.hidden_size
        bias = (cfg.bias or cfg.mlp_bias) if bias is None else bias
        self.c_fc = Linear(cfg.n_embd, (2 if self.gated else 1) * H, bias=bias)  # gated: [gate; up]
        self.act = ACTIVATIONS[cfg.activation]()
        self.c_proj = Linear(H, cfg.n_embd, bias=bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, H) or (B, T, 2H)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up  # (B, T, H)
        else:
            h = self.act(h)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope=None, mask: torch.Tensor | None = None, kv=None,
                input_pos: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, mask, kv, input_pos)
        x = x + self.mlp(self.ln_2(x))
        return x  # (B, T, C)


def attention_mask(T: int, key_mask: torch.Tensor | None, device, window: int = 0) -> torch.Tensor | None:
    """Boolean mask (True = may attend) for a window of T tokens without a cache.

    None when plain causal attention is right (no padding, no sliding window in reach). ``key_mask``
    (B, T) marks real tokens (False = padding). A padding query is allowed to see itself so its row
    is never empty: an all-masked row would make softmax NaN, and the NaN would reach real tokens
    through the values. With a sliding ``window``, query i sees keys j with i - window < j <= i
    (Mistral; Jiang et al. 2023).
    """
    slides = 0 < window < T
    if key_mask is None and not slides:
        return None
    pos = torch.arange(T, device=device)
    mask = pos[None, :] <= pos[:, None]  # (T, T)
    if slides:
        mask = mask & (pos[None, :] > pos[:, None] - window)
    if key_mask is not None:
        mask = (mask & key_mask.bool()[:, None, None, :]) | (pos[None, :] == pos[:, None])  # (B, 1, T, T)
    return mask


class GPT(nn.Module):
    """Token (+ position) embeddings -> n_layer blocks -> norm -> logits over the vocabulary."""

    # what the rest of arlm may ask of it (arlm/model/registry.py)
    is_encoder_decoder = False
    can_rewind_cache = True  # a KV cache is cut back by writing later slots again
    can_compile_decode = True
    can_checkpoint_activations = True

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set before building the model"
        self.config = cfg
        self.checkpointing = False  # activation checkpointing while training (set by the training loop)
        self.cache_dtype: torch.dtype | None = None  # KV cache dtype (default: the embeddings'); see compress/quantize.py
        modules = dict(wte=nn.Embedding(cfg.vocab_size, cfg.n_embd))
        if cfg.pos_embedding == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules.update(
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=make_norm(cfg),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.register_buffer("rope_inv_freq", None, persistent=False)
        self.init_buffers()
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth (Radford et al. 2019, section 2.3).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if cfg.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def float_param(self) -> torch.Tensor:
        """A floating-point parameter: the device and dtype the model computes in (the embedding's, or,
        where a quantizer replaced the layers from outside, the norms')."""
        return next(p for p in self.parameters() if p.is_floating_point())

    def init_buffers(self) -> None:
        """(Re)compute the non-learned buffers, e.g. after building on the meta device and loading weights."""
        if self.config.pos_embedding == "rope":
            self.rope_inv_freq = rope_inv_freq(self.config).to(self.float_param().device)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (tied weights once); position embeddings excluded by default, as in the scaling-law papers."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    # -- KV cache ------------------------------------------------------------------------------
    def new_cache(self, rows: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache of ``rows`` sequences of up to ``max_len`` positions (default: block_size),
        for the caller to pass to :meth:`forward`."""
        cfg = self.config
        p = self.float_param()
        return KVCache.empty(cfg.n_layer, rows, cfg.kv_heads, max_len or cfg.block_size, cfg.hs,
                             self.cache_dtype or p.dtype, p.device)

    @staticmethod
    def parameter_count(cfg: GPTConfig) -> int:
        """Parameters a model of ``cfg`` has (tied weights once), from the config alone: nothing is built,
        so an absurd config is measured before it allocates anything."""
        C, H, V = cfg.n_embd, cfg.hidden_size, cfg.vocab_size
        q_kv = (cfg.n_head + 2 * cfg.kv_heads) * cfg.hs
        up = 2 * H if cfg.mlp == "gated" else H
        qkv_bias, out_bias, mlp_bias = cfg.bias or cfg.qkv_bias or cfg.attn_bias, cfg.bias or cfg.attn_bias, cfg.bias or cfg.mlp_bias
        norm = C * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
        block = (C * q_kv + qkv_bias * q_kv + cfg.n_head * cfg.hs * C + out_bias * C
                 + C * up + mlp_bias * up + H * C + mlp_bias * C + 2 * norm)
        positions = cfg.block_size * C if cfg.pos_embedding == "learned" else 0
        return V * C + positions + cfg.n_layer * block + norm + (0 if cfg.tie_embeddings else V * C)

    def cache_bytes(self, batch_size: int, max_len: int) -> int:
        """Memory of a KV cache of ``batch_size`` rows and ``max_len`` positions: keys and values per layer."""
        cfg = self.config
        dtype = self.cache_dtype or self.float_param().dtype
        return 2 * cfg.n_layer * batch_size * cfg.kv_heads * max_len * cfg.hs * dtype.itemsize

    def attention_flops_per_token(self) -> float:
        """Training FLOPs per token of attention's scores and weighted sum over a full window: 12 x n_layer
        x T x C (as nanoGPT's ``estimate_mfu``; causal masking not subtracted)."""
        cfg = self.config
        return 12.0 * cfg.n_layer * cfg.block_size * cfg.n_head * cfg.hs

    # -- forward -------------------------------------------------------------------------------
    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the final hidden states, soft-capped when configured: c tanh(z / c) (Gemma 2)."""
        logits = self.lm_head(x)
        c = self.config.logit_softcap
        return c * torch.tanh(logits / c) if c else logits

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                input_pos: torch.Tensor | None = None, kv_len: int | None = None, last_only: bool = False,
                key_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None):
        """Logits for token ids ``idx`` (B, T); with ``targets`` (B, T) also the mean cross-entropy loss.

        Decoding passes a ``cache`` (:meth:`new_cache`; B of its rows, row b for sequence b) and each
        token's position in its sequence, ``input_pos`` (B, T): the new keys/values are stored there and
        each token attends to its row's positions up to its own, among the cache's first ``kv_len``
        (default: all; a shorter length saves work where the caller knows every row is shorter).
        Without a cache the T tokens are the whole window: for batches of unequal texts (left padding),
        ``key_mask`` (B, T) marks the real tokens and ``positions`` (B, T) gives each token's position
        id (default 0 .. T-1). Target id -1 is ignored by the loss (padding / masked prompt).
        ``last_only`` returns logits for the last position only (all that sampling needs).
        """
        B, T = idx.shape
        window = self.config.sliding_window
        if cache is not None:
            positions = input_pos
            mask = cache_mask(input_pos, kv_len or cache.max_len, window)  # (B, 1, T, S)
        else:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
            if positions is None:
                positions = torch.arange(T, dtype=torch.long, device=idx.device)[None]  # (1, T)
            mask = attention_mask(T, key_mask, idx.device, window)
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.rope_inv_freq is not None:
            rope = rope_cos_sin(positions, self.rope_inv_freq)  # 2 x (B or 1, 1, T, hs)
        else:
            x = x + self.transformer.wpe(positions)  # (B, T, C)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            if self.checkpointing and self.training and torch.is_grad_enabled():
                # keep only each block's input; recompute its activations during backward (Chen et al. 2016)
                x = torch.utils.checkpoint.checkpoint(block, x, rope, mask, use_reentrant=False)
            else:
                x = block(x, rope, mask, kv, input_pos)
        x = self.transformer.ln_f(x)  # (B, T, C)
        if targets is None:
            if last_only:
                x = x[:, -1:, :]  # (B, 1, C)
            return self.head(x), None  # (B, T, V)
        logits = self.head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss
