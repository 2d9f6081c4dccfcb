"""A bidirectional Transformer encoder trained to fill masked tokens: BERT (Devlin et al. 2019), top to
bottom. Every token attends to every other (padding excepted), so the model predicts a masked token
from both sides, where a GPT reads only what comes before.

    ids -> token + position + token-type embeddings -> LayerNorm -> dropout
        -> n_layer x [x = LN(x + attn(x)); x = LN(x + mlp(x))]    (post-norm, as BERT)
        -> MLM head: dense -> GELU -> LayerNorm -> (tied) embedding^T + bias -> logits

Names follow arlm's GPT where the parts are the same (``wte``, ``wpe``, ``c_attn`` with q, k, v fused,
``c_proj``, ``c_fc``); arlm/interop/hf_bert.py maps them to and from ``BertForMaskedLM``. A batch's
``key_mask`` marks real tokens (right padding); ``forward(idx, targets)`` returns the mean
cross-entropy over the positions whose target is not -1 (the masked ones).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import EncoderConfig
from arlm.errors import UserError
from arlm.model.layers import Linear

ACT = {"gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu, "silu": F.silu}


class SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.n_head, self.hs = cfg.n_head, cfg.n_embd // cfg.n_head
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, cfg.hidden_size)
        self.c_proj = Linear(cfg.hidden_size, cfg.n_embd)
        self.act = ACT[cfg.activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attn, self.mlp = SelfAttention(cfg), MLP(cfg)
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.ln_1(x + self.drop(self.attn(x, mask)))  # post-norm (BERT)
        return self.ln_2(x + self.drop(self.mlp(x)))


class MaskedLM(nn.Module):
    """Embeddings, encoder blocks and the masked-language-model head."""

    # what the rest of arlm may ask of it (arlm/model/registry.py)
    is_encoder_decoder = False
    is_masked_lm = True  # fills masks; it does not continue text (no decoding cache)
    can_rewind_cache = False
    can_compile_decode = False
    can_checkpoint_activations = False

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            wtt=nn.Embedding(cfg.type_vocab_size, cfg.n_embd),
            ln_emb=nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
        ))
        self.mlm = nn.ModuleDict(dict(dense=Linear(cfg.n_embd, cfg.n_embd), ln=nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)))
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=True)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.checkpointing = False
        if not self.float_param().is_meta:
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """BERT's initialisation: normal(0, 0.02) weights, zero biases, unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def float_param(self) -> torch.Tensor:
        return self.transformer.wte.weight

    def init_buffers(self) -> None:
        pass

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    @staticmethod
    def parameter_count(cfg: EncoderConfig) -> int:
        C, V, H = cfg.n_embd, cfg.vocab_size, cfg.hidden_size
        embeddings = (V + cfg.block_size + cfg.type_vocab_size) * C + 2 * C
        block = (3 * C * C + 3 * C) + (C * C + C) + (C * H + H) + (H * C + C) + 4 * C
        head = C * C + C + 2 * C + V + (0 if cfg.tie_embeddings else V * C)
        return embeddings + cfg.n_layer * block + head

    def attention_flops_per_token(self) -> float:
        cfg = self.config
        return 12.0 * cfg.n_layer * cfg.block_size * cfg.n_embd

    def new_cache(self, rows: int, max_len: int | None = None):
        raise UserError("a masked-language-model encoder (BERT) fills masks; it does not generate text token by token")

    def cache_bytes(self, batch_size: int, max_len: int) -> int:
        return 0

    def hidden(self, idx: torch.Tensor, key_mask: torch.Tensor | None = None,
               token_types: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output (B, T, C); ``key_mask`` (B, T) marks real tokens."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)[None]  # (1, T)
        types = torch.zeros_like(idx) if token_types is None else token_types
        e = self.transformer
        x = e.drop(e.ln_emb(e.wte(idx) + e.wpe(pos) + e.wtt(types)))  # (B, T, C)
        mask = None if key_mask is None else key_mask.bool()[:, None, None, :]  # (B, 1, 1, T): keys a query may read
        for block in e.h:
            x = block(x, mask)
        return x

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache=None, input_pos=None,
                kv_len=None, last_only: bool = False, key_mask: torch.Tensor | None = None, positions=None):
        """Logits (B, T, V) at every position; with ``targets`` (B, T; -1 where not scored) the loss."""
        if cache is not None:
            raise UserError("a masked-language-model encoder (BERT) reads a whole text at once; it has no decoding cache")
        x = self.hidden(idx, key_mask)
        x = self.mlm.ln(ACT[self.config.activation](self.mlm.dense(x)))  # BERT's prediction-head transform
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss
