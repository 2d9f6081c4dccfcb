"""Task heads on a decoder-only language model, applied from outside like LoRA: the model's output
layer over the vocabulary is set aside and a small linear layer reads its final hidden states.

Three tasks, each as transformers' heads for GPT-2 and Llama compute it, so that their files load
with the same logits (arlm/interop/hf_heads.py):

* ``classify``: one label per text. ``score`` (C -> labels, no bias) at every position, read at each
  text's last token: a causal model has seen the whole text only there
  (``GPT2ForSequenceClassification``, ``LlamaForSequenceClassification``).
* ``ner``: one label per token (BIO tags: ``B-PER``, ``I-PER``, ``O``). Dropout, then ``score``
  (C -> labels, with bias) at every position (``GPT2ForTokenClassification``: ``classifier``).
* ``qa``: extractive question answering. ``score`` (C -> 2, with bias) gives each position a start
  and an end logit; the answer is the best span of the context (``...ForQuestionAnswering``:
  ``qa_outputs``).

The model file (arlm/model/gpt.py) does not change. A batch is a :class:`TaskBatch` (right-padded
token ids and each row's length: a causal model's positions never see the padding after them, so no
mask is needed), and ``forward(batch, labels)`` returns (logits, loss) as the language model does,
so the training loop, its evaluation and LoRA run unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from arlm.errors import UserError
from arlm.model.layers import Linear

TASKS = ("classify", "ner", "qa")
TASK_NAMES = {"classify": "text classification", "ner": "token classification", "qa": "extractive question answering"}
IGNORE = -1  # label of a position the loss skips (padding, a word's later tokens)


class TaskBatch(NamedTuple):
    """Token ids (B, T), right-padded, and each row's number of real tokens (B,)."""

    idx: torch.Tensor
    lengths: torch.Tensor

    def to(self, device, non_blocking: bool = False) -> "TaskBatch":
        return TaskBatch(*(t.to(device, non_blocking=non_blocking) for t in self))

    def numel(self) -> int:
        """Positions fed (what a step's tokens/s counts)."""
        return self.idx.numel()


class TaskModel(nn.Module):
    """``body`` (a GPT) with its output layer replaced by a task head; labels are the head's outputs'
    names (``qa``: none)."""

    is_encoder_decoder = False
    can_rewind_cache = False
    can_compile_decode = False
    can_checkpoint_activations = True

    def __init__(self, body: nn.Module, task: str, labels: list[str], dropout: float = 0.1):
        super().__init__()
        check_body(body)
        if task not in TASKS:
            raise UserError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
        self.task, self.labels = task, list(labels)
        outputs = 2 if task == "qa" else len(self.labels)
        if outputs < 2 and task != "qa":
            raise UserError(f"{TASK_NAMES[task]} needs at least 2 labels, got {len(self.labels)}")
        p = body.float_param()
        body.lm_head = nn.Identity()  # the model's head() now returns its final hidden states
        self.body = body
        self.config = body.config
        self.dropout = nn.Dropout(dropout if task == "ner" else 0.0)
        with torch.device(p.device):
            self.score = Linear(body.config.n_embd, outputs, bias=task != "classify", dtype=p.dtype)
        if not p.is_meta:
            nn.init.normal_(self.score.weight, std=0.02)  # as the body's own layers (GPT-2's initialisation)
            if self.score.bias is not None:
                nn.init.zeros_(self.score.bias)

    # what the training loop asks of a model
    @property
    def checkpointing(self) -> bool:
        return self.body.checkpointing

    @checkpointing.setter
    def checkpointing(self, value: bool) -> None:
        self.body.checkpointing = value

    def float_param(self) -> torch.Tensor:
        return self.body.float_param()

    def init_buffers(self) -> None:
        self.body.init_buffers()

    def num_params(self, non_embedding: bool = True) -> int:
        return self.body.num_params(non_embedding) + sum(p.numel() for p in self.score.parameters())

    def attention_flops_per_token(self) -> float:
        return self.body.attention_flops_per_token()

    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The body's final hidden states (B, T, C)."""
        return self.body(idx)[0]

    def forward(self, batch: TaskBatch, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's logits, and with ``labels`` the mean cross-entropy:

        * classify: logits (B, labels) at each row's last token; labels (B,);
        * ner: logits (B, T, labels); labels (B, T), IGNORE where not scored;
        * qa: logits (B, T, 2), start and end; labels (B, 2) the answer's first and last token.
        """
        idx, lengths = batch
        logits = self.score(self.dropout(self.hidden(idx)))  # (B, T, outputs)
        if self.task == "classify":
            logits = logits[torch.arange(idx.size(0), device=idx.device), lengths - 1]  # (B, labels)
        if labels is None:
            return logits, None
        if self.task == "classify":
            loss = F.cross_entropy(logits.float(), labels)
        elif self.task == "ner":
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)
        else:
            # the mean of the start and end position's cross-entropy over the row's positions
            # (transformers' QuestionAnsweringModelOutput loss), padding excluded
            real = torch.arange(idx.size(1), device=idx.device)[None] < lengths[:, None]  # (B, T)
            scores = logits.float().masked_fill(~real[..., None], float("-inf"))
            loss = (F.cross_entropy(scores[..., 0], labels[:, 0]) + F.cross_entropy(scores[..., 1], labels[:, 1])) / 2
        return logits, loss


def check_body(model: nn.Module) -> None:
    """A task head needs a decoder-only Transformer whose output layer it can replace."""
    if getattr(model, "is_encoder_decoder", False) or not hasattr(model, "transformer"):
        kind = "an encoder-decoder" if getattr(model, "is_encoder_decoder", False) else f"a {model.config.type} model"
        raise UserError(f"task heads go on a decoder-only Transformer (GPT, Llama family); this is {kind}")
    if getattr(model.config, "logit_softcap", 0.0):
        raise UserError("task heads on a model with soft-capped logits (Gemma 2) are not supported")
    if isinstance(model, TaskModel) or not isinstance(model.lm_head, nn.Module) or isinstance(model.lm_head, nn.Identity):
        raise UserError("this model already has a task head")
    if any(not t.is_floating_point() for t in model.state_dict().values()):  # int8/int4 codes
        raise UserError("task heads go on a float model, not a quantized one: start from the model before `arlm quantize`")
