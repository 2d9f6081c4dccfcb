"""The model calls of decoding, over a cache the caller owns: a prompt chunk (``prefill``), one token
per row (``decode_step``), and the compiled decode step.

The compiled step runs over fixed shapes: every row attends over the whole preallocated cache, with
a mask built from the positions, which are a tensor (gpt-fast's design). Nothing in the graph depends
on how long a sequence is, so on CPU it is compiled ahead of time once per model structure, for
every batch size and cache length (one graph for one row, one for more: Dynamo specialises a size
of 1), and called without Dynamo's per-call guard evaluation (~280 tensors for GPT-2-124M, 0.5 ms
of a step, measured in session 9). Its guards are checked once for each new batch size.
"""

from __future__ import annotations

import logging
import time

import torch

from arlm.generate.sampling import token_logprobs
from arlm.model import kernels

log = logging.getLogger(__name__)


def decode_step(model: torch.nn.Module, cache, tokens: torch.Tensor, input_pos: torch.Tensor,
                kv_len: int | None = None) -> torch.Tensor:
    """Feed one token per row, ``tokens`` (B, 1) at positions ``input_pos`` (B, 1), through the cache's
    first B rows; next-token logits (B, V)."""
    logits, _ = model(tokens, cache=cache, input_pos=input_pos, kv_len=kv_len, last_only=True)
    return logits[:, -1, :]


def prefill(model: torch.nn.Module, cache, ids: list[int], start: int = 0, last_only: bool = True) -> torch.Tensor:
    """Run ``ids`` at positions start, start+1, ... through a one-row cache; logits of the last (1, V),
    or of every position (T, V)."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    pos = torch.arange(start, start + len(ids), device=device)[None]  # (1, T)
    logits, _ = model(x, cache=cache, input_pos=pos, kv_len=start + len(ids), last_only=last_only)
    return logits[:, -1, :] if last_only else logits[0]


PRECOMPILED_LIMIT = 16  # compiled steps kept per process (least recently used dropped)
_PRECOMPILED: list[tuple[tuple, object]] = []  # (model structure and batch kind, compiled step)
_FAILED: set[tuple] = set()


class CompiledStep:
    """:func:`decode_step` compiled with torch.compile, for one engine's model and cache.

    On CPU the step is precompiled (``torch.compile(...).aot_compile``, inductor's C++ wrapper) and
    called directly; elsewhere, or if precompiling fails, torch.compile's usual dispatch. The CPU
    kernels (arlm/model/kernels) are built before tracing starts."""

    def __init__(self, model: torch.nn.Module):
        self.cpu = next(model.parameters()).device.type == "cpu"
        self.structure = tuple(type(m) for m in model.modules())
        self.checked: dict[int, object] = {}  # batch size -> step whose guards passed for it
        self.dispatch = None

    def __call__(self, model, cache, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        args = (model, cache, tokens, input_pos)
        B = tokens.size(0)
        fn = self.checked.get(B)
        if fn is None:
            fn = (_precompiled(self.structure + (B == 1,), args) if self.cpu else None) or self._dispatch()
            self.checked[B] = fn
        return fn(*args)

    def _dispatch(self):
        if self.dispatch is None:
            kernels.library()
            self.dispatch = torch.compile(decode_step, dynamic=True, options={"size_asserts": False})
        return self.dispatch


def _precompiled(key: tuple, args: tuple):
    """A precompiled step whose guards pass for ``args`` (compiling one if none does), or None."""
    if key in _FAILED:
        return None
    for i in range(len(_PRECOMPILED) - 1, -1, -1):
        k, fn = _PRECOMPILED[i]
        if k == key and fn.guard_check(*args):
            _PRECOMPILED.append(_PRECOMPILED.pop(i))
            return fn
    kernels.library()
    t = time.monotonic()
    try:
        # specialize_float: Python floats as constants (precompiling cannot restart tracing to turn
        # one into a tensor).
        with torch._dynamo.config.patch(specialize_float=True):
            fn = torch.compile(decode_step, fullgraph=True, dynamic=True,
                               options={"size_asserts": False, "cpp_wrapper": True}).aot_compile((args, {}))
    except Exception as e:  # noqa: BLE001 - any failure to precompile leaves Dynamo's dispatch, which is correct
        log.warning("could not precompile the decode step (%s: %s); using torch.compile's usual dispatch",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        _FAILED.add(key)
        return None
    log.debug("decode step precompiled in %.1fs", time.monotonic() - t)
    if not fn.guard_check(*args):
        _FAILED.add(key)
        return None
    fn.disable_guard_check()  # checked above and once per batch size by CompiledStep
    _PRECOMPILED.append((key, fn))
    del _PRECOMPILED[:-PRECOMPILED_LIMIT]
    return fn


@torch.inference_mode()
def prompt_logprobs(model: torch.nn.Module, ids: list[int], top: int = 0) -> list[tuple[float | None, list[tuple[int, float]]]]:
    """For each prompt token: its log-probability given the tokens before it (None for the first,
    which has no context), with the ``top`` most likely tokens at that position. The prompt must fit
    the context window."""
    assert 0 < len(ids) <= model.config.block_size
    device = next(model.parameters()).device
    idx = torch.tensor([ids], device=device)
    logits, _ = model(idx)  # (1, T, V)
    out: list[tuple[float | None, list[tuple[int, float]]]] = [(None, [])]
    if len(ids) > 1:
        chosen, top_ids, top_values = token_logprobs(logits[0, :-1], idx[0, 1:], top)
        for t in range(len(ids) - 1):
            alts = list(zip(top_ids[t].tolist(), top_values[t].tolist())) if top else []
            out.append((float(chosen[t]), alts))
    return out
