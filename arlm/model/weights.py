"""Putting loaded tensors into a model: no random initialisation first, tied weights re-tied."""

from __future__ import annotations

import torch

from arlm.config import GPTConfig
from arlm.errors import UserError
from arlm.model.gpt import GPT


def assign_weights(model: GPT, sd: dict[str, torch.Tensor], what: str) -> None:
    """Load ``sd`` into ``model`` (which may live on the meta device: tensors are taken, not copied),
    then re-tie the embeddings and rebuild the non-learned buffers. Mismatches raise UserError(what)."""
    if model.config.tie_embeddings and "transformer.wte.weight" in sd:
        sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])
    on_meta = model.transformer.wte.weight.is_meta  # else copy into the existing (possibly GPU) tensors
    try:
        model.load_state_dict(sd, strict=True, assign=on_meta)
    except (RuntimeError, TypeError) as e:
        raise UserError(f"{what} ({str(e).splitlines()[0]})") from None
    if model.config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    model.init_buffers()


def empty_model(cfg: GPTConfig) -> GPT:
    """A model with no memory behind its weights yet (meta device): loading skips random initialisation."""
    from arlm.model import build_model

    with torch.device("meta"):
        return build_model(cfg)
