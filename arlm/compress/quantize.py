"""Quantization applied to a model from outside: every linear layer is swapped for the layer class of
a method (one file per method, as gpt-fast's handlers: arlm/compress/int8.py, arlm/compress/int4.py;
a new method is a file and a line in :data:`METHODS`), and the token embedding reads its rows from a
matrix in the same format. Norms, biases and position embeddings stay float32 (they are small).

Two uses:

* :func:`quantize_model` / :func:`prepare_quantized`: ``arlm compress quantize`` writes a checkpoint
  whose config.json records the method (:class:`arlm.io.schema.QuantInfo`), and loading builds the same
  layers empty and fills them from the file, never re-quantizing;
* :func:`quantize`: the decode precision a float checkpoint is loaded with (``--precision``): float32,
  bfloat16, or int8 made at load time.

Decoding one token reads every weight once, so fewer bytes per weight means more tokens per second
(bench/decode.py and ``arlm compress quantize`` measure it). On CPU the quantized layers run the
kernels of arlm/model/kernels, with or without ``--compile``, and the KV cache is kept in bfloat16:
the one-query attention kernel reads it at half the bytes (int8 decoding of GPT-2-124M, 256 tokens:
~5% faster, the same tokens). On CUDA, bfloat16 is the plain ``model.to(torch.bfloat16)``, and
quantized weights are widened inside the matrix multiply.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from arlm.compress.int4 import Int4Linear, check_shape
from arlm.compress.int8 import QuantizedLinear
from arlm.config import PRECISIONS
from arlm.errors import UserError
from arlm.io.schema import QuantInfo

log = logging.getLogger(__name__)

METHODS: dict[str, type[nn.Module]] = {"int8": QuantizedLinear, "int4": Int4Linear}


class QuantizedEmbedding(nn.Module):
    """A token embedding whose rows are read from a quantized matrix (vocab, n_embd). With tied
    embeddings the matrix is the output layer's, held without registering it here, so it is stored once."""

    def __init__(self, table: nn.Module, shared: bool):
        super().__init__()
        if shared:
            self._shared = [table]  # a list: not a submodule, so not in this module's state dict
        else:
            self.table = table

    def lookup_table(self) -> nn.Module:
        return self._shared[0] if hasattr(self, "_shared") else self.table

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lookup_table().rows(idx)  # (..., C)


def quantization_of(model: nn.Module) -> QuantInfo | None:
    """The method a model was quantized with (by this module), or None for a float model."""
    return getattr(model, "quantization", None)


def _check_model(model: nn.Module, spec: QuantInfo) -> None:
    if getattr(model.config, "type", "gpt") != "gpt" or not hasattr(model, "transformer"):
        raise UserError("quantization works on GPT models (and Hugging Face GPT-2/Llama models loaded as them); "
                        f"this model is {model.config.kind}")
    if quantization_of(model) is not None:
        raise UserError(f"the model is already quantized ({describe(quantization_of(model))}); quantize its float "
                        f"checkpoint instead")
    if spec.method == "int4":
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                check_shape(module.in_features, spec.group_size, f"layer {name}")


def _swap(model: nn.Module, spec: QuantInfo, make) -> nn.Module:
    """Replace every nn.Linear with ``make(linear)`` and the token embedding with a QuantizedEmbedding."""
    _check_model(model, spec)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, make(child))
    wte = model.transformer.wte
    if model.config.tie_embeddings:
        model.transformer.wte = QuantizedEmbedding(model.lm_head, shared=True)
    else:
        model.transformer.wte = QuantizedEmbedding(make(_as_linear(wte)), shared=False)
    model.quantization = spec
    return model


def _as_linear(embedding: nn.Embedding) -> nn.Linear:
    """The (vocab, n_embd) embedding matrix seen as a linear layer's weight (out = vocab, in = n_embd)."""
    layer = nn.Linear(embedding.embedding_dim, embedding.num_embeddings, bias=False, device="meta")
    layer.weight = embedding.weight
    return layer


def quantize_model(model: nn.Module, spec: QuantInfo) -> nn.Module:
    """Quantize a float GPT in place with ``spec`` (weights read from its float layers) and return it."""
    cls = METHODS[spec.method]
    with torch.no_grad():
        return _swap(model, spec, lambda lin: cls.from_float(lin.weight, lin.bias, spec))


def prepare_quantized(model: nn.Module, spec: QuantInfo) -> nn.Module:
    """Swap a float GPT's layers (typically on the meta device) for empty quantized ones of ``spec``, to
    load a quantized checkpoint's tensors into."""
    cls = METHODS[spec.method]
    return _swap(model, spec, lambda lin: cls.empty(lin.in_features, lin.out_features, lin.bias is not None, spec,
                                                    device=lin.weight.device))


def describe(spec: QuantInfo) -> str:
    if spec.method == "int8":
        return "int8, one scale per output channel"
    return f"int4, groups of {spec.group_size}, {'symmetric' if spec.symmetric else 'asymmetric'}"


def quant_spec(method: str, group_size: int, asymmetric: bool) -> QuantInfo:
    """The QuantInfo of a method's options (int8 ignores the int4 ones)."""
    if method == "int8":
        return QuantInfo("int8")
    spec = QuantInfo("int4", group_size, not asymmetric)
    spec.validate()
    return spec


def quantize(model: nn.Module, precision: str) -> nn.Module:
    """Convert a loaded model in place to the decode ``precision`` (see the module docstring) and return it."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    device = next(model.parameters()).device
    spec = quantization_of(model)
    if spec is not None:
        if precision not in ("auto", "float32"):
            raise UserError(f"this model is already quantized ({describe(spec)}); load it without --precision "
                            f"{precision} (its weights are decoded as stored)")
        if device.type == "cpu":
            model.cache_dtype = torch.bfloat16
        return model
    if precision == "auto":
        precision = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    if precision == "float32":
        return model.float()
    if precision == "bfloat16" and device.type != "cpu":
        return model.to(torch.bfloat16)
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, QuantizedLinear.from_float(child.weight, child.bias, fmt=precision).to(device))
                swapped += 1
    if device.type == "cpu":
        model.cache_dtype = torch.bfloat16
    log.debug("%s: %d linear layers quantized", precision, swapped)
    return model
