"""Pruning a GPT from outside: weights set to zero (unstructured) or whole heads and neurons removed
(structured, the matrices really shrink).

* ``magnitude``: in every linear layer of the blocks, the fraction ``amount`` of weights with the
  smallest absolute value is zeroed (``torch.nn.utils.prune.l1_unstructured``, made permanent).
* ``wanda``: Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models":
  a weight's score is |W_ij| x ||X_j||_2, the norm of its input feature over a few calibration
  batches, and each output row loses its ``amount`` lowest-scoring weights; no weight is updated.
  As in the paper, blocks are pruned in order, each block's input norms measured with the blocks
  before it already pruned.
* ``heads``: the attention heads whose removal raises the calibration loss least (each head ablated
  in turn: its slice of the output projection's input zeroed) are cut out of the query/key/value and
  output matrices, the same number in every layer, so the model keeps one shape (``n_head`` smaller,
  ``head_dim`` kept).
* ``neurons``: likewise the MLP's hidden units with the smallest mean |activation| x the norm of their
  output column (Molchanov et al.'s first-order importance for a unit, without a gradient).

The embedding and the output layer are never pruned (the tutorials and Wanda leave them dense).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from arlm.errors import UserError
from arlm.model.gpt import GPT

PRUNE_METHODS = ("magnitude", "wanda", "heads", "neurons")
UNSTRUCTURED = ("magnitude", "wanda")


def block_linears(model: nn.Module, layer: int | None = None) -> list[tuple[str, nn.Linear]]:
    """The linear layers of the Transformer blocks (of one block with ``layer``), with their names."""
    blocks = model.transformer.h if layer is None else [model.transformer.h[layer]]
    offset = 0 if layer is None else layer
    return [(f"transformer.h.{i + offset}.{name}", m) for i, block in enumerate(blocks)
            for name, m in block.named_modules() if isinstance(m, nn.Linear)]


def calibration_batches(tokens: np.ndarray, block_size: int, batches: int, batch_size: int = 8,
                        seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` batches of (inputs, targets) windows at random places of ``tokens`` (a training split)."""
    n = len(tokens) - block_size - 1
    if n < 1:
        raise UserError(f"the calibration data holds {len(tokens)} tokens, fewer than one window of {block_size + 1}")
    g = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        starts = g.integers(0, n, size=batch_size)
        x = np.stack([tokens[s:s + block_size] for s in starts]).astype(np.int64)
        y = np.stack([tokens[s + 1:s + 1 + block_size] for s in starts]).astype(np.int64)
        out.append((torch.from_numpy(x), torch.from_numpy(y)))
    return out


def calibration_loss(model: nn.Module, batches) -> float:
    with torch.inference_mode():
        return float(np.mean([model(x, y)[1].item() for x, y in batches]))


# -- unstructured -----------------------------------------------------------------------------------


def magnitude(model: nn.Module, amount: float) -> nn.Module:
    for _, lin in block_linears(model):
        prune.l1_unstructured(lin, "weight", amount=amount)
        prune.remove(lin, "weight")  # the zeros become the weight itself (no mask left on the model)
    return model


def input_sums(model: nn.Module, modules: dict, stat, batches) -> dict:
    """For each of ``modules`` (key -> module), ``stat(input)`` (a (features,) tensor for a (..., features) input)
    summed over every calibration token, in float64; the modules' inputs are not changed."""
    sums: dict = {}

    def hook(key):
        def add(module, args):  # returns None: the input goes on unchanged
            x = args[0].detach().double().reshape(-1, args[0].size(-1))
            sums[key] = sums.get(key, 0) + stat(x)
        return add

    hooks = [m.register_forward_pre_hook(hook(key)) for key, m in modules.items()]
    try:
        with torch.inference_mode():
            for x, _ in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    return sums


def input_norms(model: nn.Module, linears: list[tuple[str, nn.Linear]], batches) -> dict[str, torch.Tensor]:
    """||X_j||_2 over every calibration token, for each input feature j of each of ``linears``."""
    sums = input_sums(model, dict(linears), lambda x: x.pow(2).sum(0), batches)
    return {name: s.sqrt().float() for name, s in sums.items()}


def wanda(model: nn.Module, amount: float, batches) -> nn.Module:
    for layer in range(model.config.n_layer):
        linears = block_linears(model, layer)
        norms = input_norms(model, linears, batches)  # the blocks before this one are pruned already
        for name, lin in linears:
            w = lin.weight.data
            k = int(amount * w.size(1))
            if k == 0:
                continue
            score = w.abs() * norms[name][None, :]  # (out, in)
            drop = score.topk(k, dim=1, largest=False).indices  # per output row, as the paper compares
            w.scatter_(1, drop, 0.0)
    return model


# -- structured ------------------------------------------------------------------------------------


@contextmanager
def ablated_head(model: nn.Module, layer: int, head: int) -> Iterator[None]:
    """Head ``head`` of block ``layer`` contributes nothing: its slice of the output projection's input is zero."""
    attn = model.transformer.h[layer].attn
    hs = attn.hs

    def hook(module, args):
        x = args[0].clone()
        x[..., head * hs:(head + 1) * hs] = 0
        return (x,)

    handle = attn.c_proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def head_importance(model: nn.Module, batches) -> torch.Tensor:
    """(n_layer, n_head): how much the calibration loss rises with each head ablated alone."""
    base = calibration_loss(model, batches)
    cfg = model.config
    out = torch.zeros(cfg.n_layer, cfg.n_head)
    for layer in range(cfg.n_layer):
        for head in range(cfg.n_head):
            with ablated_head(model, layer, head):
                out[layer, head] = calibration_loss(model, batches) - base
    return out


def neuron_importance(model: nn.Module, batches) -> torch.Tensor:
    """(n_layer, hidden): mean |activation| of each MLP unit over the calibration tokens x the norm of its
    column of the output projection (what the unit can add to the residual stream)."""
    blocks = model.transformer.h
    sums = input_sums(model, {i: block.mlp.c_proj for i, block in enumerate(blocks)}, lambda x: x.abs().sum(0), batches)
    sums = torch.stack([sums[i] for i in range(len(blocks))])  # (L, H)
    cols = torch.stack([block.mlp.c_proj.weight.detach().norm(dim=0) for block in model.transformer.h])  # (L, H)
    return sums.float() * cols


def _kept(importance: torch.Tensor, amount: float, what: str) -> tuple[torch.Tensor, int]:
    """Indices (per layer, ascending) of the units to keep: the most important ``1 - amount`` of each layer."""
    total = importance.size(1)
    keep = total - int(round(amount * total))
    if keep < 1:
        raise UserError(f"--amount {amount} would remove every {what} of a layer ({total}); use a smaller amount")
    if keep == total:
        raise UserError(f"--amount {amount} removes no {what} ({total} a layer: {amount} x {total} rounds to 0); "
                        f"use at least {0.5 / total:.3g}")
    return importance.topk(keep, dim=1).indices.sort(dim=1).values, keep


def _rows(t: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.detach().index_select(0, index).clone()


def remove_heads(model: GPT, importance: torch.Tensor, amount: float) -> GPT:
    """A new, smaller GPT without the least important heads of every layer."""
    cfg = model.config
    if cfg.kv_heads != cfg.n_head:
        raise UserError("head pruning needs one key/value head per query head (this model shares them: grouped-query "
                        "attention); use --method neurons, magnitude or wanda")
    keep, n = _kept(importance, amount, "attention head")
    new_cfg = dataclasses.replace(cfg, n_head=n, n_kv_head=0, head_dim=cfg.hs)
    small = _shell(model, new_cfg)
    hs, C = cfg.hs, cfg.n_embd
    for i, (old, new) in enumerate(zip(model.transformer.h, small.transformer.h)):
        heads = torch.cat([torch.arange(h * hs, (h + 1) * hs) for h in keep[i].tolist()])  # kept q (k, v) rows
        rows = torch.cat([heads, heads + cfg.n_head * hs, heads + 2 * cfg.n_head * hs])  # [q; k; v]
        new.attn.c_attn.weight.data.copy_(_rows(old.attn.c_attn.weight, rows))
        if old.attn.c_attn.bias is not None:
            new.attn.c_attn.bias.data.copy_(_rows(old.attn.c_attn.bias, rows))
        new.attn.c_proj.weight.data.copy_(old.attn.c_proj.weight.detach()[:, heads])
        _copy_rest(old, new, skip=("attn.c_attn", "attn.c_proj.weight"))
        assert new.attn.c_proj.weight.shape == (C, n * hs)
    return _finish(model, small)


def remove_neurons(model: GPT, importance: torch.Tensor, amount: float) -> GPT:
    """A new, smaller GPT without the least important MLP units of every layer."""
    cfg = model.config
    keep, n = _kept(importance, amount, "MLP unit")
    small = _shell(model, dataclasses.replace(cfg, intermediate_size=n))
    H = cfg.hidden_size
    for i, (old, new) in enumerate(zip(model.transformer.h, small.transformer.h)):
        units = keep[i]
        rows = torch.cat([units, units + H]) if cfg.mlp == "gated" else units  # gated: [gate; up]
        new.mlp.c_fc.weight.data.copy_(_rows(old.mlp.c_fc.weight, rows))
        if old.mlp.c_fc.bias is not None:
            new.mlp.c_fc.bias.data.copy_(_rows(old.mlp.c_fc.bias, rows))
        new.mlp.c_proj.weight.data.copy_(old.mlp.c_proj.weight.detach()[:, units])
        _copy_rest(old, new, skip=("mlp.c_fc", "mlp.c_proj.weight"))
    return _finish(model, small)


def _shell(model: GPT, cfg) -> GPT:
    return GPT(cfg).to(next(model.parameters()).device).eval()


def _copy_rest(old: nn.Module, new: nn.Module, skip: tuple[str, ...]) -> None:
    """Every tensor of a block that keeps its shape (norms, the other sub-layer, output biases)."""
    new_state = new.state_dict()
    for name, t in old.state_dict().items():
        if not name.startswith(skip):
            new_state[name].copy_(t)


def _finish(model: GPT, small: GPT) -> GPT:
    """Embeddings, final norm and output layer as they were."""
    own = small.state_dict()
    for name, t in model.state_dict().items():
        if not name.startswith("transformer.h."):
            own[name].copy_(t)
    small.init_buffers()
    return small


def sparsity(model: nn.Module) -> float:
    """Fraction of the blocks' linear weights that are exactly zero."""
    linears = block_linears(model)
    zeros = sum(int((lin.weight == 0).sum()) for _, lin in linears)
    return zeros / max(1, sum(lin.weight.numel() for _, lin in linears))


def prune_model(model: GPT, method: str, amount: float, batches=None) -> GPT:
    """The model pruned by ``method`` (in place for the unstructured ones, a new model for the structured)."""
    if getattr(model.config, "type", "gpt") != "gpt" or not hasattr(model, "transformer"):
        raise UserError("pruning works on GPT models (and Hugging Face GPT-2/Llama models loaded as them); this model "
                        f"is {model.config.kind}")
    if method not in PRUNE_METHODS:
        raise UserError(f"unknown pruning method {method!r}; use one of {', '.join(PRUNE_METHODS)}")
    if not 0 < amount < 1:
        raise UserError(f"--amount must be between 0 and 1 (a fraction), got {amount}")
    if method != "magnitude" and not batches:
        raise UserError(f"--method {method} measures activations on calibration text: add --data DIR (a prepared folder)")
    model.eval()
    with torch.no_grad():
        if method == "magnitude":
            return magnitude(model, amount)
        if method == "wanda":
            return wanda(model, amount, batches)
    if method == "heads":
        return remove_heads(model, head_importance(model, batches), amount)
    return remove_neurons(model, neuron_importance(model, batches), amount)

