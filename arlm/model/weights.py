"""Putting loaded tensors into a model: every name, shape and dtype checked against the model first,
no random initialisation, tied weights re-tied."""

from __future__ import annotations

import torch
from torch import nn

from arlm.errors import UserError


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def check_size(cfg, sd: dict[str, torch.Tensor], where: str) -> None:
    """A config cannot describe more weights than were read: refused from the config alone (nothing is
    built, not even on the meta device, which overflows for sizes near 2**63), allowing down to a quarter
    of a byte per weight (any format of 2 bits or more). Smaller mismatches are named tensor by tensor."""
    from arlm.model.registry import parameter_count

    n = parameter_count(cfg)
    weight_bytes = sum(t.numel() * t.element_size() for t in sd.values())
    if n > 4 * weight_bytes:
        raise UserError(f"{where}: the config describes a model of {n:.3g} parameters, but its weights hold "
                        f"{weight_bytes:,} bytes; the config and the weights do not belong together")


def embedding_name(model: nn.Module) -> str:
    """The token embedding's module path: ``shared`` in an encoder-decoder (its encoder and decoder read
    it), ``transformer.wte`` in the decoder-only models."""
    return "shared" if getattr(model, "is_encoder_decoder", False) else "transformer.wte"


def ties_embedding(model: nn.Module) -> bool:
    """Whether the output layer's weight is the token embedding's tensor (saved once, as the embedding).
    A quantized model's embedding reads the output layer's quantized matrix instead (arlm/compress)."""
    if not isinstance(getattr(model, "lm_head", None), nn.Module):  # a task head in its place (arlm/model/heads.py)
        return False
    return getattr(model.config, "tie_embeddings", False) and isinstance(model.get_submodule(embedding_name(model)),
                                                                        nn.Embedding)


def check_state(model: nn.Module, sd: dict[str, torch.Tensor], where: str, partial: bool = False) -> None:
    """``sd`` fits ``model`` (which may live on the meta device): the same names (a tied output layer
    may be left out; ``partial``: a subset, e.g. adapters only), the same shapes, floating-point values
    that are all finite. A mismatch is a UserError naming the tensor, found and expected."""
    expected = model.state_dict()
    tied = ties_embedding(model)
    missing = [] if partial else [k for k in expected if k not in sd and not (tied and k == "lm_head.weight")]
    if missing:
        raise UserError(f"{where}: tensor {missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                        + "; the weights do not belong to this config")
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        raise UserError(f"{where}: unexpected tensor {unexpected[0]}" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                        + "; the weights do not belong to this config")
    for name, t in sd.items():
        want = expected[name]
        if t.shape != want.shape:
            raise UserError(f"{where}: tensor {name} has shape {_shape(t)}, the config needs {_shape(want)}")
        if want.is_floating_point() and not t.is_floating_point():
            raise UserError(f"{where}: tensor {name} holds {str(t.dtype).replace('torch.', '')} values, not floating-point weights")
        if not want.is_floating_point() and t.dtype != want.dtype:  # quantized codes
            raise UserError(f"{where}: tensor {name} holds {str(t.dtype).replace('torch.', '')} values, the config's "
                            f"quantization stores {str(want.dtype).replace('torch.', '')}")
        if name.endswith((".scales", ".offsets", ".scale")) and t.dtype != want.dtype:
            raise UserError(f"{where}: tensor {name} holds {str(t.dtype).replace('torch.', '')} values, the config's "
                            f"quantization stores {str(want.dtype).replace('torch.', '')}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{where}: tensor {name} holds NaN or infinite values (damaged weights)")


def assign_weights(model: nn.Module, sd: dict[str, torch.Tensor], where: str) -> None:
    """Load ``sd`` into ``model`` after :func:`check_state` (on the meta device tensors are taken, not
    copied), then re-tie the embeddings and rebuild the non-learned buffers."""
    check_state(model, sd, where)
    sd = dict(sd)
    tie = ties_embedding(model)
    emb = embedding_name(model)
    if tie and f"{emb}.weight" in sd:
        sd.setdefault("lm_head.weight", sd[f"{emb}.weight"])
    on_meta = next(model.parameters()).is_meta  # else copy into the existing (possibly GPU) tensors
    model.load_state_dict(sd, strict=True, assign=on_meta)
    if tie:
        model.lm_head.weight = model.get_submodule(emb).weight
    model.init_buffers()


def state_to_save(model: nn.Module, sd: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Weights to save (``model``'s, or ``sd`` gathered from a sharded model): tied tensors once
    (safetensors refuses shared storage), contiguous, on CPU."""
    sd = dict(model.state_dict() if sd is None else sd)
    if ties_embedding(model):
        sd.pop("lm_head.weight", None)  # the same tensor as the embedding's
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}
