"""Checkpoints: safetensors weights + JSON config + tokenizer (+ optimizer/RNG state), written atomically.

A training output folder looks like::

    OUT/
      latest/   model.safetensors  config.json  tokenizer.json  trainer_state.pt
      best/     model.safetensors  config.json  tokenizer.json
      metrics.jsonl  loss.png

Each checkpoint folder is built under a temporary name and swapped in whole (``arlm.fsutil.atomic_dir``),
so a crash mid-save leaves the previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import arlm
from arlm.config import GPTConfig, TrainConfig, from_dict, to_dict
from arlm.errors import UserError
from arlm.fsutil import atomic_dir, read_json, recover_dir
from arlm.model.gpt import GPT
from arlm.model.lora import apply_lora, merge_lora
from arlm.model.weights import assign_weights, empty_model
from arlm.tokenizers import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
STATE = "trainer_state.pt"
LATEST, BEST = "latest", "best"


def model_state(model: torch.nn.Module, sd: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Weights to save (``model``'s, or ``sd`` gathered from a sharded model): tied tensors once
    (safetensors refuses shared storage), contiguous, on CPU."""
    sd = dict(model.state_dict() if sd is None else sd)
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)  # the same tensor as transformer.wte.weight
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(path: str | Path, model: GPT, tokenizer: Tokenizer, info: dict[str, Any],
                    trainer_state: dict[str, Any] | None = None, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write one checkpoint folder atomically. ``info`` goes into config.json beside the model config;
    ``state`` replaces ``model.state_dict()`` (the full weights of a sharded model)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_file(model_state(model, state), str(tmp / WEIGHTS), metadata={"format": "pt"})
        config = {"arlm_version": arlm.__version__, "model_type": model.config.type, "model": to_dict(model.config), **info}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
        tokenizer.save(tmp)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / STATE)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint folder or a training output folder (then prefer best/, else latest/)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"model folder not found: {p}")
    for candidate in (p, p / BEST, p / LATEST):
        recover_dir(candidate)
        if (candidate / CONFIG).is_file() or (candidate / WEIGHTS).is_file():
            return candidate
    raise UserError(f"{p} holds no checkpoint (no {CONFIG} / {WEIGHTS}); point --model at a folder written by `arlm train`")


def read_config(ckpt: Path) -> dict[str, Any]:
    return read_json(ckpt / CONFIG, "this checkpoint is incomplete; use another (best/ or latest/) or train again")


def load_weights(model: GPT, ckpt: Path, adapter_only: bool = False) -> None:
    """Load a checkpoint's weights into ``model``; ``adapter_only``: the file holds only LoRA adapters
    and ``model`` already has its base weights."""
    f = ckpt / WEIGHTS
    if not f.is_file():
        raise UserError(f"checkpoint {ckpt} is incomplete: {WEIGHTS} is missing")
    try:
        sd = load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"checkpoint {ckpt} is damaged or truncated ({WEIGHTS}: {e}); use another checkpoint "
                        f"(best/ or latest/) or train again") from None
    if not adapter_only:
        assign_weights(model, sd, f"checkpoint {ckpt} does not match its config.json")
        return
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(".lora_" in k for k in missing):
        raise UserError(f"the adapters in {ckpt} do not fit their base model ({(unexpected or missing)[0]})")


def model_config(path: str | Path) -> GPTConfig:
    """The model shape of a checkpoint, training output or Hugging Face folder, without loading weights."""
    from arlm.interop.hf import hf_model_config, is_hf_dir

    if is_hf_dir(path):
        return hf_model_config(path)
    ckpt = resolve_checkpoint(path)
    return from_dict(GPTConfig, read_config(ckpt).get("model", {}), f"{ckpt / CONFIG} [model]")


def _with_adapters(ckpt: Path, config: dict[str, Any], mcfg: GPTConfig) -> GPT:
    """A LoRA fine-tuned checkpoint as an ordinary model: base weights (from the file, or from the base
    model for adapter-only files) plus adapters, merged."""
    lora = config["lora"]
    if lora.get("adapter_only"):
        base = lora.get("base")
        if not base or not Path(base).exists():
            raise UserError(f"{ckpt} holds only LoRA adapters; their base model {base!r} is not there. Put it back, "
                            f"or fine-tune again without --adapter-only")
        model, _, _ = load_model(base, "cpu")
    else:
        model = empty_model(mcfg)
    apply_lora(model, lora["rank"], lora["alpha"], 0.0, lora["targets"])
    load_weights(model, ckpt, adapter_only=bool(lora.get("adapter_only")))
    return merge_lora(model)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Load (model in eval mode, tokenizer, config.json dict) from a checkpoint or output folder,
    or from a Hugging Face model folder (GPT-2 / Llama family, see arlm.interop.hf)."""
    from arlm.interop.hf import is_hf_dir, load_hf

    if is_hf_dir(path):
        model, tokenizer, config = load_hf(path)
        return model.to(device).eval(), tokenizer, config
    ckpt = resolve_checkpoint(path)
    config = read_config(ckpt)
    if config.get("model_type", "gpt") not in ("gpt", "lstm") or "model" not in config:
        raise UserError(f"checkpoint {ckpt} has a model type this version of arlm cannot load")
    mcfg = from_dict(GPTConfig, config["model"], f"{ckpt / CONFIG} [model]")
    tokenizer = load_tokenizer(ckpt)
    if config.get("lora"):
        model = _with_adapters(ckpt, config, mcfg)
    else:
        model = empty_model(mcfg)
        load_weights(model, ckpt)
    model.to(device).eval()
    config["path"] = str(ckpt)
    return model, tokenizer, config


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    f = ckpt / STATE
    if not f.is_file():
        raise UserError(f"cannot resume from {ckpt}: {STATE} is missing (only latest/ checkpoints can be resumed)")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for damaged pickles/zips
        raise UserError(f"cannot resume from {ckpt}: {STATE} is damaged or truncated ({type(e).__name__})") from None


def resume_config(path: str | Path, overrides: dict[str, Any]) -> tuple[Path, TrainConfig]:
    """The training config to resume with: the saved one, plus ``overrides`` that keep it compatible.

    Training-length keys (``max_steps``, ``max_minutes``, ``eval_interval``...) may change; the model
    shape and the data may not, since the saved weights and optimizer state depend on them.
    """
    p = Path(path)
    ckpt = p / LATEST if (p / LATEST).exists() or (p / (LATEST + ".old")).exists() else p
    recover_dir(ckpt)
    if not ckpt.is_dir():
        raise UserError(f"nothing to resume in {p}: no {LATEST}/ checkpoint")
    saved = read_config(ckpt)
    if "train" not in saved:
        raise UserError(f"cannot resume from {ckpt}: it was not written by `arlm train`")
    base = dict(saved["train"], model=saved["model"])
    for key, value in overrides.get("model", {}).items():
        if key in base["model"] and base["model"][key] != value:
            raise UserError(
                f"cannot resume with a different model: {key} is {base['model'][key]} in {ckpt} but {value} "
                f"was given; drop that option, or start a new run with --out"
            )
    for key in ("data", "preset"):
        if key in overrides and overrides[key] and overrides[key] != base.get(key):
            raise UserError(f"cannot resume with a different {key} ({overrides[key]!r} vs {base.get(key)!r} in {ckpt}); "
                            f"start a new run instead")
    merged = dict(base)
    merged.update({k: v for k, v in overrides.items() if k != "model"})
    merged["resume"] = str(p)
    merged.pop("preset", None)  # the model table already holds the preset's values
    return ckpt, from_dict(TrainConfig, merged, f"{ckpt / CONFIG}")
