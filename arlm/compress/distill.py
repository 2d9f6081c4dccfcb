"""Knowledge distillation (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"): a
student learns the teacher's next-token distribution as well as the data's next token.

The training objective, applied by THE training loop (``arlm train --teacher DIR``, which
``arlm compress distill`` calls) in place of plain cross-entropy:

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, data)

over the positions that have a target. Dividing the logits by a temperature T > 1 lets the student
see the teacher's ranking of unlikely tokens; the T^2 keeps the gradient's scale independent of T, as
in the paper and in DistilBERT/DistilGPT2 (Sanh et al. 2019), whose students also start from every
other layer of the teacher (:func:`student_from_teacher`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from arlm.errors import UserError
from arlm.model.gpt import GPT


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      ce: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """The objective above; logits (B, T, V), targets (B, T) with -1 where there is none, ``ce`` the student's
    cross-entropy on the targets. The KL is summed over the vocabulary and averaged over positions."""
    valid = targets != -1
    if not bool(valid.any()):
        return ce  # (NaN like the cross-entropy: a micro-batch without targets counts for nothing)
    s = F.log_softmax(student_logits[valid].float() / temperature, dim=-1)  # (N, V)
    t = F.log_softmax(teacher_logits[valid].float() / temperature, dim=-1)
    kl = F.kl_div(s, t, log_target=True, reduction="batchmean")
    return alpha * temperature ** 2 * kl + (1.0 - alpha) * ce


class Distiller:
    """The training objective with a teacher: ``objective(wrapped, x, y) -> loss`` (arlm/train/loop.py)."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float):
        self.teacher, self.temperature, self.alpha = teacher.eval(), temperature, alpha
        for p in teacher.parameters():
            p.requires_grad_(False)

    def __call__(self, wrapped: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, ce = wrapped(x, y)
        with torch.no_grad():
            teacher_logits = self.teacher(x)[0]
        return distillation_loss(logits, teacher_logits, y, ce, self.temperature, self.alpha)


def check_teacher(teacher: nn.Module, student_cfg, where: str) -> None:
    """The teacher must score the student's windows over the same vocabulary."""
    t = teacher.config
    if t.vocab_size != student_cfg.vocab_size:
        raise UserError(f"the teacher {where} has a vocabulary of {t.vocab_size} and the student {student_cfg.vocab_size}; "
                        f"distillation compares their distributions token by token: give the student the teacher's "
                        f"vocab_size (its tokenizer's data)")
    if t.block_size < student_cfg.block_size:
        raise UserError(f"the teacher {where} reads {t.block_size} positions, fewer than the student's block_size "
                        f"{student_cfg.block_size}; use --block-size {t.block_size} or less")


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher block each student block starts from: evenly spaced from the first (every other one
    for half the layers: 0, 2, 4, ...)."""
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def student_from_teacher(teacher: GPT, n_layer: int) -> GPT:
    """A GPT of ``n_layer`` blocks with the teacher's width, initialised as DistilGPT2 was: embeddings,
    final norm and output layer copied, and block i from teacher block ``layer_map(...)[i]``."""
    t = teacher.config
    if not 1 <= n_layer <= t.n_layer:
        raise UserError(f"a student initialised from the teacher's layers needs 1 to {t.n_layer} layers, got {n_layer}")
    student = GPT(dataclasses.replace(t, n_layer=n_layer)).to(next(teacher.parameters()).device)
    own = student.state_dict()
    for name, value in teacher.state_dict().items():
        if not name.startswith("transformer.h."):
            own[name].copy_(value)
    for i, j in enumerate(layer_map(t.n_layer, n_layer)):
        prefix_s, prefix_t = f"transformer.h.{i}.", f"transformer.h.{j}."
        for name, value in teacher.state_dict().items():
            if name.startswith(prefix_t):
                own[prefix_s + name[len(prefix_t):]].copy_(value)
    student.init_buffers()
    return student.eval()
