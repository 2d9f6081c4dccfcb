"""The LSTM baseline: token embedding -> n_layer LSTM layers -> linear layer over the vocabulary.

The recurrent language model of the classic tutorials (Graves 2013; Zaremba et al. 2014, dropout
between layers; Press & Wolf 2017, tied input and output embeddings), with PyTorch's ``nn.LSTM``.
``model.type = "lstm"`` selects it; it uses the same config names as the GPT (``n_layer``, ``n_embd`` =
embedding and hidden width, ``dropout``, ``block_size`` = training window, ``tie_embeddings``) and the
same interface, so the training loop, checkpoints, evaluation and ``arlm generate`` take it unchanged:

- ``forward(idx, targets=None, cache=None, input_pos=None, ...)`` returns (logits, loss) like ``GPT.forward``;
- the "cache" of a decoding run is the recurrent state (h, c) of each row (:class:`LSTMState`): a row
  whose first new token is at position 0 starts from zeros, any other continues from the state after
  the tokens fed so far (an LSTM cannot rewind, so speculative decoding and prefix caching, which do,
  are for Transformers only);
- left-padded batches (``key_mask``) run each row's real tokens only, so padding never enters a state.

Shapes: B batch, T positions, C = n_embd, V = vocab_size.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import LSTMConfig


class LSTMState(NamedTuple):
    """The decoding "cache" of an LSTM: hidden and cell state of every layer, each (n_layer, rows, C);
    the same row interface as the GPT's :class:`arlm.model.layers.KVCache`."""

    h: torch.Tensor
    c: torch.Tensor

    @property
    def rows(self) -> int:
        return self.h.size(1)

    def view(self, start: int, stop: int) -> "LSTMState":
        return LSTMState(self.h[:, start:stop], self.c[:, start:stop])

    def copy_row(self, src: int, dst: int, length: int) -> None:
        for t in self:
            t[:, dst] = t[:, src]

    def reorder(self, rows: torch.Tensor, length: int | None = None) -> None:
        for t in self:  # (a recurrent state has no positions: ``length`` does not apply)
            t.copy_(t.index_select(1, rows))


class LSTMLM(nn.Module):
    """Embedding -> LSTM -> logits."""

    # what the rest of arlm may ask of it (arlm/model/registry.py): a recurrent state cannot be cut
    # back to an earlier token, nor is its Python-held state a fixed-shape cache to compile over.
    is_encoder_decoder = False
    can_rewind_cache = False
    can_compile_decode = False
    can_checkpoint_activations = False

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        assert cfg.vocab_size > 0, "vocab_size must be set before building the model"
        self.config = cfg
        C = cfg.n_embd
        self.transformer = nn.ModuleDict(dict(  # (the GPT's attribute names: checkpoints and weight tying are shared)
            wte=nn.Embedding(cfg.vocab_size, C),
            drop=nn.Dropout(cfg.dropout),
            lstm=nn.LSTM(C, C, num_layers=cfg.n_layer, dropout=cfg.dropout if cfg.n_layer > 1 else 0.0, batch_first=True),
        ))
        self.lm_head = nn.Linear(C, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        nn.init.normal_(self.transformer.wte.weight, std=0.02)  # PyTorch's default N(0, 1) makes tied logits huge

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.config.tie_embeddings:
            n -= self.lm_head.weight.numel()
        return n

    def init_buffers(self) -> None:
        """(The GPT rebuilds its RoPE buffer after loading; an LSTM has no buffers.)"""

    # -- recurrent state (the "KV cache" of a decoding run) ------------------------------------
    def new_cache(self, rows: int, max_len: int | None = None) -> LSTMState:
        """The state of ``rows`` sequences (its size does not depend on their length)."""
        p = self.transformer.wte.weight
        shape = (self.config.n_layer, rows, self.config.n_embd)
        return LSTMState(p.new_zeros(shape), p.new_zeros(shape))

    @staticmethod
    def parameter_count(cfg: LSTMConfig) -> int:
        """Parameters from the config alone: embedding, per layer 4 gates x (input + recurrent) weights and
        two biases (nn.LSTM's), the output layer unless tied."""
        C, V = cfg.n_embd, cfg.vocab_size
        return V * C + cfg.n_layer * (8 * C * C + 8 * C) + (0 if cfg.tie_embeddings else V * C)

    def cache_bytes(self, batch_size: int, max_len: int) -> int:
        """The recurrent state (h, c) of every layer: its size does not grow with the sequence."""
        return 2 * self.config.n_layer * batch_size * self.config.n_embd * self.transformer.wte.weight.dtype.itemsize

    def attention_flops_per_token(self) -> float:
        return 0.0  # every FLOP is in a weight matrix

    # -- forward -------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: LSTMState | None = None,
                input_pos: torch.Tensor | None = None, kv_len: int | None = None, last_only: bool = False,
                key_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None):
        """Logits for ``idx`` (B, T); with ``targets`` also the mean cross-entropy (ignoring -1).
        With a ``cache`` (B rows) each row continues from its state, or starts afresh where
        ``input_pos[b, 0]`` is 0, and the new state is written back. ``key_mask`` (B, T) marks real tokens
        of a left-padded batch; ``positions`` and ``kv_len`` are accepted for the GPT's interface and unused."""
        state = None
        if cache is not None:
            fresh = (input_pos[:, 0] == 0)[None, :, None]  # (1, B, 1)
            state = (cache.h.masked_fill(fresh, 0.0).contiguous(), cache.c.masked_fill(fresh, 0.0).contiguous())
        x = self.transformer.drop(self.transformer.wte(idx))  # (B, T, C)
        if key_mask is not None and not bool(key_mask.bool().all()):
            y, state = self._ragged(x, state, key_mask.bool())
        else:
            y, state = self.transformer.lstm(x, state)  # (B, T, C)
        if cache is not None:
            cache.h.copy_(state[0])
            cache.c.copy_(state[1])
        y = self.transformer.drop(y)
        if targets is None:
            return self.lm_head(y[:, -1:, :] if last_only else y), None
        logits = self.lm_head(y)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _ragged(self, x: torch.Tensor, state, mask: torch.Tensor):
        """Rows with padding: each row's real positions run alone (outputs at padding are zeros)."""
        B, T, C = x.shape
        y = x.new_zeros(B, T, C)
        hs, cs = [], []
        for b in range(B):
            keep = mask[b].nonzero().squeeze(1)
            row_state = None if state is None else (state[0][:, b:b + 1].contiguous(), state[1][:, b:b + 1].contiguous())
            if keep.numel():
                out, row_state = self.transformer.lstm(x[b:b + 1, keep], row_state)
                y[b, keep] = out[0]
            elif row_state is None:
                L = self.config.n_layer
                row_state = (x.new_zeros(L, 1, C), x.new_zeros(L, 1, C))
            hs.append(row_state[0])
            cs.append(row_state[1])
        return y, (torch.cat(hs, 1), torch.cat(cs, 1))
