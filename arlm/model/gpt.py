"""The GPT model: a decoder-only Transformer, read top to bottom from the smallest part to the whole.

Architecture of GPT-2 (Radford et al. 2019): learned token and position embeddings, pre-LayerNorm
blocks of causal multi-head self-attention and a GELU MLP, a final LayerNorm, and an output layer
that shares its weight with the token embedding (weight tying, Press & Wolf 2017).

Shapes: B batch, T sequence length, C = n_embd, nh = n_head, hs = C // nh, V = vocab_size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import GPTConfig
from arlm.model.layers import KVCache


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where each position sees only itself and earlier positions."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, pos: int | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

        mask, causal = None, True
        if self.kv_cache is not None and pos is not None:
            k, v = self.kv_cache.update(pos, k, v)  # (B, nh, pos+T, hs)
            if pos > 0:
                # Query i sits at absolute position pos+i and may see keys 0..pos+i.
                causal = False
                if T > 1:
                    rows = torch.arange(pos, pos + T, device=x.device).unsqueeze(1)
                    mask = torch.arange(pos + T, device=x.device).unsqueeze(0) <= rows  # (T, pos+T)
        # PyTorch's fused scaled-dot-product attention (flash / memory-efficient kernels where available).
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: C -> 4C -> GELU -> C."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        # GPT-2 uses the tanh approximation of GELU (Hendrycks & Gimpel 2016).
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, pos: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), pos)
        x = x + self.mlp(self.ln_2(x))
        return x  # (B, T, C)


class GPT(nn.Module):
    """Token + position embeddings -> n_layer blocks -> LayerNorm -> logits over the vocabulary."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set before building the model"
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's
        # variance does not grow with depth (Radford et al. 2019, section 2.3).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default, as in the scaling-law papers."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    # -- KV cache ------------------------------------------------------------------------------
    def setup_cache(self, batch_size: int, max_len: int | None = None) -> None:
        """Attach a fresh KV cache of ``max_len`` positions (default: block_size) to every layer."""
        cfg = self.config
        max_len = max_len or cfg.block_size
        p = self.transformer.wte.weight
        for block in self.transformer.h:
            block.attn.kv_cache = KVCache(batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head, p.dtype, p.device)

    def clear_cache(self) -> None:
        for block in self.transformer.h:
            block.attn.kv_cache = None

    # -- forward -------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                pos: int | None = None, last_only: bool = False):
        """Logits for token ids ``idx`` (B, T); with ``targets`` (B, T) also the mean cross-entropy loss.

        ``pos`` is the absolute position of ``idx[:, 0]`` when a KV cache is attached (prefill at 0,
        then one decode step at a time). Target id -1 is ignored by the loss (padding / masked prompt).
        ``last_only`` returns logits for the last position only (all that sampling needs).
        """
        B, T = idx.shape
        start = pos or 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        positions = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, pos)
        x = self.transformer.ln_f(x)  # (B, T, C)
        if targets is None:
            if last_only:
                x = x[:, -1:, :]  # (B, 1, C)
            return self.lm_head(x), None  # (B, T, V)
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss
