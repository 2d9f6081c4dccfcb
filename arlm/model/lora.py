"""LoRA: low-rank adapters beside frozen weights (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models").

A adapted linear layer computes ``W x + b + (alpha / r) * B A dropout(x)`` with ``W`` frozen,
``A`` (r, in) initialised like a Linear layer's weight (Kaiming-uniform) and ``B`` (out, r) at zero,
so training starts from the base model exactly. Only ``A`` and ``B`` learn: r * (in + out)
parameters per layer instead of in * out. After training, ``B A * alpha / r`` is added into ``W``
(:func:`merge_lora`) and the model is an ordinary one again: same speed, same file format.

In a checkpoint the adapters are ``<layer>.lora_A`` / ``<layer>.lora_B`` beside the layer's own
``weight`` and ``bias``; the config.json records rank, alpha and targets under ``"lora"``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from arlm.errors import UserError
from arlm.model.layers import Linear


class LoRALinear(Linear):
    """A :class:`Linear` (same ``weight``/``bias`` names) plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight, self.bias = base.weight, base.bias  # the frozen base parameters themselves (no copy)
        self.rank, self.scaling = rank, alpha / rank
        dev, dt = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=dev, dtype=dt))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=dev, dtype=dt))  # (out, r)
        if not self.lora_A.is_meta:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own initialisation, as in the paper's code
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_dropout(x) @ self.lora_A.t() @ self.lora_B.t()  # (..., in) -> (..., r) -> (..., out)
        return super().forward(x) + self.scaling * update

    def delta(self) -> torch.Tensor:
        """The update this adapter adds to ``weight``: (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def merged(self) -> Linear:
        """A plain Linear whose weight is ``weight + delta``."""
        out = Linear(self.in_features, self.out_features, bias=self.bias is not None,
                     device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.delta().to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def _targets(model: nn.Module, names: list[str]) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every Linear inside the blocks whose own name is in ``names``."""
    found = []
    for module_name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear) and not isinstance(child, LoRALinear) and child_name in names \
                    and child is not getattr(model, "lm_head", None):
                found.append((module, child_name))
    return found


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> int:
    """Freeze every parameter of ``model`` and put adapters on the target layers; returns the number
    of trainable parameters."""
    layers = _targets(model, list(targets))
    if not layers:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(f"no linear layer matches lora_targets {list(targets)}; this model's are: {', '.join(names) or 'none'}")
    for p in model.parameters():
        p.requires_grad_(False)
    for parent, name in layers:
        setattr(parent, name, LoRALinear(getattr(parent, name), rank, alpha, dropout))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (in place); the model then has no LoRA layers left."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the adapters' tensors of a state dict (what an adapter-only checkpoint holds), and a task
    head's (arlm/model/heads.py), which trains in full beside them."""
    return {k: v for k, v in state.items() if k.endswith((".lora_A", ".lora_B")) or k.startswith("score.")}


def lora_info(rank: int, alpha: float, dropout: float, targets: list[str], base: str | None,
              adapter_only: bool) -> dict[str, Any]:
    """What config.json records about the adapters (``base``: the base model's folder, which an
    adapter-only checkpoint needs to be loaded)."""
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(targets), "base": base,
            "adapter_only": adapter_only}
