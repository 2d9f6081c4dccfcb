"""Data-parallel training on PyTorch's own engines, started by ``torchrun``.

``torchrun --nproc_per_node N -m arlm train ...`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR in
each process; :func:`setup` then joins the process group (NCCL on GPUs, gloo on CPU) and the
training loop wraps the model in DistributedDataParallel, or with ``--fsdp`` shards it with FSDP2
(``fully_shard`` on every Transformer block, then on the whole model). No collectives are written
here: gradients are averaged by DDP/FSDP, and the few scalars the loop needs everywhere (the logged
loss, whether to stop) by ``all_reduce``.

Checkpoints hold full (unsharded) state dicts keyed by parameter name, gathered with
``torch.distributed.checkpoint.state_dict``, so a checkpoint written by N processes loads in one
and the other way round.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from arlm.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank among world_size processes (1 and 0 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Only the main process writes logs, metrics and checkpoints."""
        return self.rank == 0


def setup(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group torchrun described in the environment (if any); the device to use
    (with CUDA, this process's GPU: cuda:LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(), device
    ctx = Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started {world} processes on this machine but it has "
                            f"{torch.cuda.device_count()} GPU(s); use --nproc_per_node {torch.cuda.device_count()}")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"distributed training runs on CUDA (NCCL) or CPU (gloo), not {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    if not ctx.main:  # one voice: the other processes report only warnings and errors
        logging.getLogger("arlm").setLevel(max(logging.WARNING, logging.getLogger("arlm").getEffectiveLevel()))
    log.info("training on %d processes (%s): each step takes batch_size sequences from each", world, dist.get_backend())
    return ctx, device


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ctx: Context, fsdp: bool) -> nn.Module:
    """The module the training step calls: the model itself, DDP around it, or the model sharded in
    place by FSDP2 (each block one unit: its parameters are gathered just before use)."""
    if fsdp and not ctx.distributed:
        log.warning("--fsdp has no effect in a single process (start with `torchrun --nproc_per_node N -m arlm "
                    "train ...` to shard): training unsharded")
    elif fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in getattr(model.transformer, "h", []):  # (an LSTM is sharded as one unit)
            fully_shard(block)
        fully_shard(model)
        return model
    if not ctx.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=None if next(model.parameters()).device.type == "cpu" else [ctx.local_rank])


def gradient_sync(wrapped: nn.Module, enabled: bool):
    """Context for one micro-batch's backward: with ``enabled`` False (every micro-batch of an
    accumulation but the last) gradients stay local instead of being averaged across processes."""
    if enabled:
        return contextlib.nullcontext()
    if hasattr(wrapped, "no_sync"):  # DDP
        return wrapped.no_sync()
    if hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2

        @contextlib.contextmanager
        def paused():
            wrapped.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                wrapped.set_requires_gradient_sync(True)

        return paused()
    return contextlib.nullcontext()


def mean(value: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The mean of a scalar over all processes (itself when not distributed)."""
    if not ctx.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def share_of_all(count: int, device: torch.device) -> torch.Tensor | float:
    """``count`` / (the sum of every process's count) x the number of processes: what this process's
    mean loss is weighted by so that DDP's average of the processes' gradients is the mean over every
    target of the step (processes whose batches hold different numbers of targets: padded pairs, masked
    prompts). 1 when not distributed or nothing is counted anywhere. A tensor under DDP, left on the
    device: the step does not wait for the all-reduce to read it back."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 1.0
    t = torch.tensor([float(count)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return torch.where(t > 0, count * dist.get_world_size() / t.clamp(min=1.0), 1.0)[0]


def any_true(flag: bool, ctx: Context, device: torch.device) -> bool:
    """True on every process if it is True on any (a stop request seen by one must stop all)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every weight, whole and on CPU, keyed as in a single-process model (a collective under FSDP:
    every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state keyed by parameter name, unsharded (a collective under FSDP)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state from :func:`full_optimizer_state` (written by any number of processes)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
