"""Loading any model folder arlm reads: its own checkpoints (arlm/io/checkpoint.py; LoRA adapters
merged) and Hugging Face folders (arlm/interop/hf.py). Every verb that takes ``--model``, the Python
API and fine-tuning's ``init_from`` load through :func:`load_model`, so a folder is checked the same
way everywhere: config first (sizes, choices, divisibility), then every tensor's name, shape and
dtype against the model the config describes (nothing allocated for an absurd config), then the
tokenizer against the embedding.

This lives with the interop formats rather than in ``arlm/model`` because the model layer must not
know Hugging Face's layouts; it depends only on io, tokenizers and model, so inference does not
import the training package.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from arlm.compress.quantize import prepare_quantized
from arlm.config import ModelConfig
from arlm.errors import UserError
from arlm.interop import hf_heads
from arlm.interop.hf import hf_model_config, is_hf_dir, load_hf
from arlm.io.checkpoint import CONFIG, WEIGHTS, Checkpoint, open_checkpoint, save_checkpoint
from arlm.io.files import read_json
from arlm.io.schema import CheckpointInfo, HeadInfo
from arlm.model.heads import TaskModel
from arlm.model.lora import apply_lora, merge_lora
from arlm.model.registry import empty_model
from arlm.model.weights import assign_weights, check_size, check_state, state_to_save
from arlm.tokenizers import Tokenizer, load_tokenizer
from arlm.tokenizers.base import TOKENIZER_FILE


def model_config(path: str | Path) -> ModelConfig:
    """The model shape of a checkpoint, training output or Hugging Face folder, without loading weights."""
    if is_hf_dir(path):
        return hf_model_config(path)
    return open_checkpoint(path).info.model


def model_head(path: str | Path) -> HeadInfo | None:
    """The task head of a model folder (arlm/model/heads.py), from its config alone; None for a language model."""
    if is_hf_dir(path):
        d = Path(path)
        data = read_json(d / CONFIG, "is this a Hugging Face model folder?")
        spec = hf_heads.head_spec(data, str(d / CONFIG)) if isinstance(data, dict) else None
        return None if spec is None else HeadInfo(spec.task, hf_heads.labels_from_hf(data, spec, str(d / CONFIG)))
    return open_checkpoint(path).info.head


def check_vocabulary(tokenizer: Tokenizer | None, model: nn.Module, where: str) -> None:
    """A tokenizer may not produce ids the model has no embedding row for."""
    if tokenizer is not None and tokenizer.vocab_size > model.config.vocab_size:
        raise UserError(f"{where}: the tokenizer ({TOKENIZER_FILE}) has {tokenizer.vocab_size} tokens but the model's "
                        f"vocab_size is {model.config.vocab_size}; the two files do not belong together")


def _with_adapters(ckpt: Checkpoint) -> nn.Module:
    """A LoRA fine-tuned checkpoint as an ordinary model: base weights (from the file, or from the base
    model for adapter-only files) plus adapters, merged."""
    lora = ckpt.info.lora
    if lora.adapter_only:
        if not Path(lora.base).exists():
            raise UserError(f"{ckpt.path} holds only LoRA adapters; their base model {lora.base!r} is not there. Put it "
                            f"back, or fine-tune again without --adapter-only")
        if not is_hf_dir(lora.base) and open_checkpoint(lora.base).info.lora is not None:
            raise UserError(f"{ckpt.config_file}: the base model {lora.base} is itself a LoRA checkpoint; the base of "
                            f"adapters must be a whole model")
        model, _, _ = load_model(lora.base, "cpu")
        if dataclasses.replace(model.config, dropout=ckpt.info.model.dropout) != ckpt.info.model:  # (dropout may differ)
            raise UserError(f"{ckpt.config_file}: the base model {lora.base} has another shape than the one the adapters "
                            f"were trained on")
    sd = ckpt.weights()
    if not lora.adapter_only:
        check_size(ckpt.info.model, sd, str(ckpt.config_file))
        model = empty_model(ckpt.info.model)
    model = with_head(model, ckpt)
    apply_lora(model, lora.rank, lora.alpha, 0.0, lora.targets)
    if lora.adapter_only:
        check_state(model, sd, str(ckpt.path / "model.safetensors"), partial=True)
        model.load_state_dict(sd, strict=False)
    else:
        assign_weights(model, sd, str(ckpt.path / "model.safetensors"))
    return merge_lora(model)


def with_head(model: nn.Module, ckpt: Checkpoint) -> nn.Module:
    """``model`` with the task head the checkpoint records (arlm/model/heads.py), if any and not there yet."""
    head = ckpt.info.head
    if head is None or isinstance(model, TaskModel):
        return model
    return TaskModel(model, head.task, head.labels, head.dropout)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Tokenizer | None, CheckpointInfo]:
    """(model in eval mode on ``device``, tokenizer or None, typed info) from a checkpoint, training
    output or Hugging Face folder."""
    if path is None or not isinstance(path, (str, Path)):
        raise UserError(f"a model folder must be a path, got {type(path).__name__}")
    if is_hf_dir(path):
        model, tokenizer, info = load_hf(path)
    else:
        ckpt = open_checkpoint(path)
        tokenizer = load_tokenizer(ckpt.path)
        if ckpt.info.lora is not None:
            model = _with_adapters(ckpt)
        else:
            sd = ckpt.weights()  # the file's own damage first, then whether it fits the config
            check_size(ckpt.info.model, sd, str(ckpt.config_file))
            model = with_head(empty_model(ckpt.info.model), ckpt)
            if ckpt.info.quantization is not None:
                prepare_quantized(model, ckpt.info.quantization)  # the stored layers, empty: never re-quantized
            assign_weights(model, sd, str(ckpt.path / WEIGHTS))
        info = ckpt.info
        info.path = str(ckpt.path)
    check_vocabulary(tokenizer, model, str(Path(info.path) / CONFIG))
    return model.to(device).eval(), tokenizer, info


def save_model(path: str | Path, model: nn.Module, tokenizer: Tokenizer, info: CheckpointInfo | None = None) -> Path:
    """Write ``model`` and ``tokenizer`` as an arlm checkpoint folder (atomically), with ``info`` (default:
    the model's config alone) as its config.json."""
    return save_checkpoint(path, state_to_save(model), info or CheckpointInfo(model=model.config), tokenizer)
