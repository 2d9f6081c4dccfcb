"""Hugging Face folders of decoder-only models with a task head (arlm/model/heads.py):
``{GPT2,Llama,Mistral,Qwen2}For{SequenceClassification,TokenClassification,QuestionAnswering}``.

Their body is the causal model's without the output layer, under ``transformer.`` (GPT-2; Llama's and
Qwen2's question answering, for backward compatibility) or ``model.``; the head is one linear layer:
``score`` (sequence classification, no bias; token classification in the Llama family, with bias),
``classifier`` (GPT-2's token classification) or ``qa_outputs`` (question answering). The labels are
the config's ``id2label``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from arlm.errors import UserError

SUFFIX = {"ForSequenceClassification": "classify", "ForTokenClassification": "ner", "ForQuestionAnswering": "qa"}
FAMILY = {"GPT2": "gpt2", "Llama": "llama", "Mistral": "mistral", "Qwen2": "qwen2"}
MAX_LABELS = 100_000  # a config's num_labels/id2label is bounded before a layer is sized by it


class HeadSpec(NamedTuple):
    task: str  # classify | ner | qa
    layer: str  # the head's module name in the file
    prefix: str  # the body's module name in the file
    architecture: str


def head_spec(data: dict[str, Any], where: str) -> HeadSpec | None:
    """The head a config.json's ``architectures`` names, or None for a causal LM (or none named)."""
    archs = data.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        return None
    arch = archs[0]
    suffix = next((s for s in SUFFIX if arch.endswith(s)), None)
    if suffix is None:
        return None
    family = FAMILY.get(arch.removesuffix(suffix))
    if family is None or data.get("model_type") != family:
        raise UserError(f"{where}: architecture {arch!r} (model_type {data.get('model_type')!r}) is not one arlm "
                        f"loads; task heads load for {', '.join(f'{f}{s}' for f in FAMILY for s in SUFFIX)}")
    task = SUFFIX[suffix]
    layer = "qa_outputs" if task == "qa" else "classifier" if (task, family) == ("ner", "gpt2") else "score"
    return HeadSpec(task, layer, body_prefix(family, task), arch)


def body_prefix(family: str, task: str) -> str:
    """Where the body's weights are in the file."""
    return "transformer" if family == "gpt2" or (task == "qa" and family in ("llama", "qwen2")) else "model"


def labels_from_hf(data: dict[str, Any], spec: HeadSpec, where: str) -> list[str]:
    """The head's output names: ``id2label`` in id order (else LABEL_0.. for ``num_labels``); [] for QA."""
    if spec.task == "qa":
        return []
    id2label, num = data.get("id2label"), data.get("num_labels")
    if id2label is not None:
        if not isinstance(id2label, dict) or not id2label or len(id2label) > MAX_LABELS:
            raise UserError(f"{where}: id2label must be a table of 1 to {MAX_LABELS:,} labels")
        try:
            ids = sorted(int(k) for k in id2label)
        except (TypeError, ValueError):
            raise UserError(f"{where}: id2label's keys must be label ids 0, 1, ...") from None
        if ids != list(range(len(ids))) or not all(isinstance(v, str) and v for v in id2label.values()):
            raise UserError(f"{where}: id2label must map every id 0..{len(ids) - 1} to a label name")
        return [id2label[str(i)] if str(i) in id2label else id2label[i] for i in ids]
    if num is None:
        num = 2  # transformers' default
    if not isinstance(num, int) or isinstance(num, bool) or not 1 <= num <= MAX_LABELS:
        raise UserError(f"{where}: num_labels must be an integer from 1 to {MAX_LABELS:,}, got {num!r}")
    return [f"LABEL_{i}" for i in range(num)]


def split_state(sd: dict[str, torch.Tensor], spec: HeadSpec, model_type: str, where: str
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the body's tensors as the causal model names them, the head's as arlm's ``score``)."""
    head = {}
    for p in ("weight", "bias"):
        t = sd.get(f"{spec.layer}.{p}")
        if t is not None:
            head[f"score.{p}"] = t
    if "score.weight" not in head:
        raise UserError(f"{where}: weight '{spec.layer}.weight' (the {spec.architecture} head) is missing")
    causal = "transformer" if model_type == "gpt2" else "model"
    body = {}
    for k, v in sd.items():
        if k.startswith(f"{spec.layer}."):
            continue
        if k.startswith(f"{spec.prefix}."):
            k = f"{causal}.{k.removeprefix(spec.prefix + '.')}"
        body[k] = v
    return body, head


def hf_head_config(task: str, labels: list[str], layout: str) -> dict[str, Any]:
    """The config.json keys that make a causal model's folder a head model's."""
    family = next(name for name, f in FAMILY.items() if f == layout)
    suffix = next(s for s, t in SUFFIX.items() if t == task)
    out: dict[str, Any] = {"architectures": [f"{family}{suffix}"]}
    if task != "qa":
        out.update(id2label={str(i): name for i, name in enumerate(labels)},
                   label2id={name: i for i, name in enumerate(labels)}, num_labels=len(labels))
    if task == "ner" and layout == "gpt2":
        out["classifier_dropout"] = None
    return out


def hf_head_state(body: dict[str, torch.Tensor], head: dict[str, torch.Tensor], task: str, layout: str
                  ) -> dict[str, torch.Tensor]:
    """The body's tensors (causal naming) and ``score.*`` in the head model's naming."""
    spec = HeadSpec(task, "qa_outputs" if task == "qa" else "classifier" if (task, layout) == ("ner", "gpt2") else "score",
                    body_prefix(layout, task), "")
    causal = "transformer" if layout == "gpt2" else "model"
    out = {}
    for k, v in body.items():
        if k.startswith("lm_head."):
            continue
        out[f"{spec.prefix}.{k.removeprefix(causal + '.')}" if k.startswith(causal + ".") else k] = v
    for k, v in head.items():
        out[f"{spec.layer}.{k.removeprefix('score.')}"] = v
    return out
