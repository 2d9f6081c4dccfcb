"""THE training loop. Everything else (fine-tuning, distributed, distillation) is a parameter or hook of it.

Maximum-likelihood training: minimise the mean cross-entropy of each next token given the ones
before it, with AdamW, a warmup + decay learning-rate schedule, gradient clipping and accumulation.

A run is a :class:`Trainer`: built from a validated config, it reads its inputs, checks and locks its
output folder, and only then writes; its counters and every stateful object live in one
:class:`arlm.train.state.TrainState`, which saves and restores itself (resume == uninterrupted).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from arlm.compress.distill import Distiller, check_teacher
from arlm.config import TrainConfig, apply_preset, from_dict, to_dict
from arlm.data.loader import TokenData, WindowSampler, collate, random_batch, sequential_batches, windows
from arlm.data.mlm import MLMData
from arlm.data.pairs import PairData
from arlm.data.sft import SFTData
from arlm.data.tasks import TaskData
from arlm.errors import UserError
from arlm.eval.perplexity import loss_over_batches
from arlm.interop.load import load_model, model_config
from arlm.io.checkpoint import BEST, LATEST, checkpoint_weights, save_checkpoint, trainer_state
from arlm.io.files import read_toml
from arlm.io.lock import RunLock
from arlm.io.schema import CheckpointInfo, HeadInfo, LoraInfo
from arlm.model.heads import TaskModel
from arlm.model.lora import adapter_state, apply_lora
from arlm.model.registry import build_model, empty_model, parameter_count
from arlm.model.weights import assign_weights, state_to_save
from arlm.runtime import (autocast, check_memory, generator, resolve_device, resolve_dtype, seed_everything, set_threads,
                          size, torch_seed)
from arlm.tokenizers import load_tokenizer
from arlm.tokenizers.base import same_vocabulary
from arlm.train import distributed
from arlm.train.optim import lr_at, make_optimizer, plateau_update
from arlm.train.output import METRICS, PLOT, Metrics, check_output, claim, finish_interrupted
from arlm.train.state import TrainState, resume_config
from arlm.train.throughput import flops_per_token, forget_peak, matmul_peak
from arlm.viz.curves import plot_loss_curve

log = logging.getLogger(__name__)

FINAL_EVAL_TOKENS = 4096  # the final whole-split evaluation's batches hold at least this many tokens

# A callback receives each metrics record (training or evaluation) and may return True to stop
# the run after the current step, with a checkpoint written as for Ctrl-C.
Callback = Callable[[dict[str, Any]], Any]


def build_config(data: dict[str, Any] | TrainConfig | None = None, **overrides) -> TrainConfig:
    """A validated TrainConfig from a dict (TOML layout) or config, presets expanded, plus overrides."""
    if isinstance(data, TrainConfig):
        data = to_dict(data)
    d = dict(data or {})
    for k, v in overrides.items():
        if k == "model":
            d["model"] = {**d.get("model", {}), **v}
        else:
            d[k] = v
    cfg = from_dict(TrainConfig, apply_preset(d), "train config")
    cfg.validate()
    return cfg


@contextmanager
def _graceful_interrupt(flag: dict) -> Iterator[None]:
    """First Ctrl-C: finish the current step, save, stop. A second Ctrl-C interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("stop"):
            raise KeyboardInterrupt
        flag["stop"] = "interrupted"
        log.warning("interrupt received: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    # Redraw often on a terminal; rarely when stderr goes to a file or CI log.
    interval = 0.2 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True, leave=True,
                mininterval=interval)


@contextmanager
def _logging_through(bar) -> Iterator[None]:
    """Route log lines above the progress bar instead of through it."""
    if bar.disable:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger("arlm")]):
        yield


def cross_entropy(wrapped: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default objective: the model's mean next-token cross-entropy."""
    return wrapped(x, y)[1]


Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def optimizer_step(wrapped: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, micro_batches, lr: float, cfg: TrainConfig, device: torch.device,
                   dtype: torch.dtype, objective: Objective = cross_entropy) -> torch.Tensor:
    """One optimizer step over ``cfg.grad_accum_steps`` (x, y) micro-batches; the mean loss (a tensor,
    not synchronised). ``wrapped`` is what runs the forward pass (the model, compiled, or in DDP/FSDP),
    ``model`` the plain module; ``micro_batches`` yields (x, y) or (x, y, number of targets);
    ``objective(wrapped, x, y)`` is the loss (distillation: arlm/compress/distill.py).
    bench/train.py times exactly this."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # (Muon's matrices follow the schedule at their own scale)
    batches = list(micro_batches)
    # A micro-batch may come as (x, y, n) with n its number of targets that are not -1 (fine-tuning data
    # masks prompts and padding): its loss, a mean over its own targets, then counts in proportion to
    # n, so the step's loss is the mean over every target of the step, as one big batch would give.
    # Under DDP each process's share of the step's targets scales its part too (distributed.share_of_all).
    counts = [b[2] if len(b) > 2 else 1 for b in batches]
    total = max(sum(counts), 1)
    share = distributed.share_of_all(sum(counts), device) if any(len(b) > 2 for b in batches) else 1.0
    loss_sum = torch.zeros((), device=device)
    for micro, (x, y, *_) in enumerate(batches):
        weight = counts[micro] / total * share
        with distributed.gradient_sync(wrapped, micro == len(batches) - 1):
            with autocast(device, dtype):
                loss = objective(wrapped, x, y)
            # (DDP/FSDP then average over processes.) A micro-batch without targets has a NaN loss
            # but zero gradients; it still runs so that the last one synchronises the processes.
            scaler.scale(loss * weight).backward()
        if counts[micro]:
            loss_sum += loss.detach() * weight
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def train(config: dict[str, Any] | TrainConfig | str | Path | None = None, callbacks: list[Callback] | None = None,
          **overrides) -> dict[str, Any]:
    """Train; returns a summary with losses, speed and paths.

    ``config`` is a TOML path, a dict in the TOML layout or a TrainConfig; ``overrides`` are keys given explicitly
    (CLI flags). With ``resume`` set, only explicitly given keys change the saved run's config, and
    they may not change the model or the data. Every bad argument is a UserError, raised before anything is written.
    """
    if isinstance(config, (str, Path)):
        config = read_toml(config)
    elif isinstance(config, TrainConfig):
        config = to_dict(config)
    elif config is None:
        config = {}
    elif not isinstance(config, dict):
        raise UserError(f"config must be a TrainConfig, a dict or a TOML file's path, got {type(config).__name__}")
    if callbacks is not None and (not isinstance(callbacks, (list, tuple)) or not all(callable(c) for c in callbacks)):
        raise UserError("callbacks must be a list of functions, each taking a metrics record")
    d = dict(config)
    for k, v in overrides.items():
        d[k] = {**d["model"], **v} if k == "model" and isinstance(v, dict) and isinstance(d.get("model"), dict) else v
    from_dict(TrainConfig, apply_preset(d), "train config")  # every value's type, whichever path follows
    if d.get("resume"):
        resume_ckpt, cfg = resume_config(d["resume"], {k: v for k, v in d.items() if k != "resume"})
        cfg.validate()
    else:
        if d.get("init_from"):
            d = _shape_from_base(d)
        resume_ckpt, cfg = None, build_config(d)
    return _run(cfg, resume_ckpt, list(callbacks or []))


def _shape_from_base(d: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuning keeps the base model's shape; of the model keys only dropout may be changed."""
    if d.get("preset"):
        raise UserError("--preset sets a model shape, but fine-tuning keeps the shape of the model it starts from; drop it")
    base = to_dict(model_config(d["init_from"]))
    for key, value in (d.get("model") or {}).items():
        if key != "dropout" and base.get(key) != value:
            raise UserError(f"model.{key} comes from the model being fine-tuned ({base.get(key)!r}); only model.dropout "
                            f"can be changed (drop model.{key} = {value!r})")
    return {**d, "model": {**base, **(d.get("model") or {})}}


def _open_data(path: str, tokenizer, cfg: TrainConfig):
    """The training data: a prepared token folder, or a JSONL file of fine-tuning examples tokenized
    with the base model's ``tokenizer``."""
    p = Path(path)
    if cfg.model.type == "encoder":  # a masked-language-model encoder learns to fill masked tokens of a text
        if tokenizer is None or p.is_dir():
            raise UserError("a masked-language-model encoder trains on text with its tokenizer's [MASK]: fine-tune a BERT "
                            "folder (--init-from / arlm finetune --model) on a text or JSONL {\"text\"} file")
        return MLMData(p, tokenizer, cfg.model.block_size, cfg.val_fraction, cfg.seed)
    if cfg.model.type == "seq2seq":  # an encoder-decoder learns from source -> target pairs
        if p.is_dir():
            raise UserError(f"an encoder-decoder trains on source/target pairs: give a JSONL file of "
                            f'{{"source": ..., "target": ...}} as --data, not the folder {p}')
        return PairData(p, tokenizer, cfg.model, cfg.val_fraction)
    if p.suffix.lower() == ".jsonl" or p.is_file():
        if tokenizer is None:
            raise UserError(f"{p} is fine-tuning data (JSONL examples): start from a model with --init-from DIR, or run "
                            f"`arlm finetune --model DIR --data {p}`. To pretrain on JSONL text, run `arlm prepare {p}` first")
        return SFTData(p, tokenizer, cfg.model.block_size, cfg.val_fraction, cfg.chat_template, cfg.packing)
    data = TokenData.open(p)
    if tokenizer is not None and not same_vocabulary(data.tokenizer, tokenizer):
        raise UserError(f"{p} was prepared with another tokenizer than the model's; prepare it again with the model's "
                        f"tokenizer, or give the examples as JSONL")
    return data


def training_bytes(cfg: TrainConfig, n_params: int) -> tuple[int, int]:
    """Rough memory of a run (bytes): (parameters with their gradients and AdamW's two moments, float32;
    one micro-batch's activations, the batches held for a step and the evaluation set). Activations
    follow Korthikanti et al. 2022 (34 x C values per token and layer, attention scores 5 x nh x T^2
    per sequence and layer), doubled for float32, plus the logits and their gradient."""
    m, B, T = cfg.model, cfg.batch_size, cfg.model.block_size
    heads = getattr(m, "n_head", 1)
    per_sequence = m.n_layer * (68 * T * m.n_embd + 10 * heads * T * T) + 12 * T * m.vocab_size
    token_rows = 16 * T * B * (cfg.grad_accum_steps + cfg.eval_batches)  # int64 inputs and targets
    return 16 * n_params, B * per_sequence + token_rows


def _run(cfg: TrainConfig, resume_ckpt: Path | None, callbacks: list[Callback]) -> dict[str, Any]:
    set_threads(cfg.threads)
    ctx, device = distributed.setup(resolve_device(cfg.device))
    try:
        return Trainer(cfg, resume_ckpt, callbacks, ctx, device).run()
    finally:
        distributed.teardown(ctx)


class Trainer:
    """One run: inputs read and checked, then the output folder checked and locked, then the loop.

    ``run()`` does it all and returns the summary; the steps are methods, and everything that a
    resumed run must find again is in ``self.state`` (:class:`TrainState`).
    """

    def __init__(self, cfg: TrainConfig, resume_ckpt: Path | None, callbacks: list[Callback],
                 ctx: distributed.Context, device: torch.device):
        self.cfg, self.resume_ckpt, self.callbacks, self.ctx, self.device = cfg, resume_ckpt, callbacks, ctx, device
        self.dtype = resolve_dtype(cfg.dtype, device)
        self.out = Path(cfg.out)
        self.metrics = Metrics(self.out / METRICS)
        self.stop_flag: dict[str, Any] = {}
        self.last_val: float | None = None

    # -- setup: read, check, then write ---------------------------------------------------------------

    def _open_inputs(self) -> None:
        cfg = self.cfg
        self.base_model, self.tokenizer, self.base_info = None, None, None
        if cfg.init_from and cfg.tokenizer:
            raise UserError("--tokenizer is for training from scratch; a fine-tuned model keeps its own: drop one")
        if cfg.init_from:
            self.base_model, self.tokenizer, self.base_info = load_model(cfg.init_from)
            if self.tokenizer is None:
                raise UserError(f"{cfg.init_from} has no tokenizer files; copy its tokenizer into the folder to fine-tune it")
        elif cfg.tokenizer:  # JSONL from scratch: the text is encoded with this folder's tokenizer
            self.tokenizer = load_tokenizer(cfg.tokenizer)
        if cfg.lora_rank and cfg.fsdp and self.ctx.distributed:
            raise UserError("LoRA is not supported with --fsdp; train the adapters with DDP (drop --fsdp)")
        if not cfg.task and self.base_info is not None and self.base_info.head is not None:
            raise UserError(f"{cfg.init_from} has a {self.base_info.head.task} head in place of its output layer: "
                            f"fine-tune it with --task {self.base_info.head.task} on labelled examples")
        self.data = self._open_task_data() if cfg.task else _open_data(cfg.data, self.tokenizer, cfg)
        self.tokenizer = self.tokenizer or self.data.tokenizer
        self.replay = _open_data(cfg.replay_data, self.tokenizer, cfg) if cfg.replay_data else None
        self.teacher = self._open_teacher() if cfg.teacher else None
        if self.replay is not None and not isinstance(self.replay, TokenData):
            raise UserError("--replay-data must be a prepared data folder (`arlm prepare`), not JSONL")
        vocab = self.data.vocab_size
        if cfg.model.vocab_size == 0:
            cfg.model.vocab_size = vocab
        elif cfg.model.vocab_size < vocab:
            raise UserError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the data's vocabulary "
                            f"({vocab}); leave vocab_size at 0 to take it from the data")
        for d in (self.data, self.replay):
            if d is not None:
                d.check_block_size(cfg.model.block_size)
                d.check_ids(cfg.model.vocab_size)
        if self.teacher is not None:
            check_teacher(self.teacher, cfg.model, cfg.teacher)

    def _open_task_data(self) -> TaskData:
        """Labelled JSONL for a task head; a head the base model already has keeps its labels."""
        cfg, head = self.cfg, self.base_info.head if self.base_info is not None else None
        if head is not None and head.task != cfg.task:
            raise UserError(f"{cfg.init_from} has a {head.task} head; fine-tune it with --task {head.task}, or start "
                            f"from a model without a head")
        if Path(cfg.data).is_dir():
            raise UserError(f"--task {cfg.task} reads labelled examples from a JSONL file, not the folder {cfg.data}")
        return TaskData(cfg.data, self.tokenizer, cfg.task, cfg.model.block_size, cfg.val_fraction,
                        head.labels if head is not None else None)

    def _open_teacher(self) -> torch.nn.Module:
        """Distillation's teacher, on the training device, frozen; it must know the data's tokens."""
        teacher, tokenizer, _ = load_model(self.cfg.teacher, self.device)
        if tokenizer is None or not same_vocabulary(tokenizer, self.tokenizer):
            raise UserError(f"the teacher {self.cfg.teacher} does not use the data's tokenizer; distill with data "
                            f"prepared with the teacher's tokenizer")
        return teacher

    def _check_memory(self) -> None:
        """Refuse a model or batch that cannot fit, before building it (a meta-device model allocates nothing)."""
        n_params = parameter_count(self.cfg.model)
        weights, activations = training_bytes(self.cfg, n_params)
        check_memory(weights + activations, f"training this model ({n_params:.3g} parameters: {size(weights)} with their "
                     f"gradients and optimizer state; activations and batches at batch_size {self.cfg.batch_size}, "
                     f"block_size {self.cfg.model.block_size}: {size(activations)})",
                     "lower n_embd / n_layer / block_size / batch_size / grad_accum_steps / eval_batches", self.device)

    def _claim_output(self) -> None:
        """Check --out, take its lock, finish what a killed run left, and (new runs) clear or refuse an old run."""
        inputs = [("--data", self.cfg.data), ("--init-from", self.cfg.init_from), ("--replay-data", self.cfg.replay_data),
                  ("--teacher", self.cfg.teacher)]
        self.out = check_output(self.cfg.out, inputs)
        self.metrics = Metrics(self.out / METRICS)
        self.lock = RunLock(self.out, "another `arlm train` writing this run") if self.ctx.main else None
        if self.lock is not None:
            self.lock.acquire()
            finish_interrupted(self.out)
            if self.resume_ckpt is None:
                claim(self.out, self.cfg.overwrite)
        distributed.barrier(self.ctx)  # no process writes before the main one has cleared the folder

    def _build_model(self) -> None:
        cfg, device = self.cfg, self.device
        seed_everything(cfg.seed)  # every process builds the same initial weights (DDP also broadcasts them)
        if self.base_model is not None:  # fine-tuning: the base weights, in a model with this run's dropout
            model = empty_model(cfg.model)
            if isinstance(self.base_model, TaskModel):  # a head fine-tuned further
                model = TaskModel(model, self.base_model.task, self.base_model.labels)
            assign_weights(model, self.base_model.state_dict(), f"{cfg.init_from} does not match its own config")
            self.base_model = None
        else:
            model = build_model(cfg.model)
        if cfg.task and not isinstance(model, TaskModel):  # a new head, initialised from the run's seed
            model = TaskModel(model, cfg.task, self.data.labels)
        if cfg.lora_rank:
            trainable = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
            if isinstance(model, TaskModel):  # the new head learns in full beside the adapters
                model.score.requires_grad_(True)
                trainable += sum(p.numel() for p in model.score.parameters())
            log.info("LoRA rank %d on %s: %s trainable parameters (%.2f%% of the model)", cfg.lora_rank,
                     ", ".join(cfg.lora_targets), f"{trainable:,}", 100 * trainable / sum(p.numel() for p in model.parameters()))
        self.model = model.to(device)
        if self.resume_ckpt is not None:  # before wrapping: a sharded model cannot take whole weights
            sd = checkpoint_weights(self.resume_ckpt)
            if cfg.adapter_only:
                model.load_state_dict(sd, strict=False)
            else:
                assign_weights(model, sd, str(self.resume_ckpt / "model.safetensors"))
        if cfg.activation_checkpointing:
            if not model.can_checkpoint_activations:
                raise UserError(f"--activation-checkpointing applies to GPT models, not {cfg.model.type} ones")
            model.checkpointing = True
        if cfg.keep_zeros:
            # 2-D weights' zeros (a pruned model's): re-applied after every optimizer step, as
            # torch.nn.utils.prune's masks would be, so the sparsity the run starts with is the one it ends with
            with torch.no_grad():
                self.zero_masks = [(p, p == 0) for p in model.parameters() if p.dim() == 2 and bool((p == 0).any())]
        self.objective: Objective = cross_entropy
        if self.teacher is not None:
            self.objective = Distiller(self.teacher, cfg.distill_temperature, cfg.distill_alpha)
        self.wrapped = distributed.wrap(model, self.ctx, cfg.fsdp)
        self.sharded = cfg.fsdp and self.ctx.distributed
        self.optimizer = make_optimizer(model, cfg, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=(self.dtype == torch.float16))
        self.data_gen = generator(cfg.seed)
        self.sampler = WindowSampler(*self.data.sampling(cfg.model.block_size), cfg.sampling, cfg.seed, self.data_gen)
        self.state = TrainState(model, self.optimizer, self.scaler, self.sampler, self.data_gen)

    def _restore(self) -> None:
        """Resume: every piece of state saved in latest/ (the weights were loaded with the model)."""
        cfg, ckpt = self.cfg, self.resume_ckpt
        self.state.load_state_dict(trainer_state(ckpt), str(ckpt / "trainer_state.pt"))
        step = self.state.progress.step
        if step >= cfg.max_steps:
            raise UserError(f"the run in {cfg.resume} already reached step {step}; pass a larger --max-steps to continue")
        if self.ctx.main:
            self.metrics.truncate(step)
        log.info("resumed from %s at step %d", ckpt, step)

    def _eval_sets(self) -> None:
        """The validation windows of every periodic evaluation: drawn once from a fixed seed, so
        successive estimates differ only because the model changed. Windows of the global batch size
        (the set does not depend on the number of processes); each process scores its own slice."""
        cfg, ctx, B = self.cfg, self.ctx, self.cfg.batch_size
        eval_gen = generator(torch_seed(cfg.seed) + 1)
        if isinstance(self.data, TokenData):
            self.eval_set = [tuple(t[ctx.rank * B:(ctx.rank + 1) * B]
                                   for t in random_batch(self.data.val, B * ctx.world_size, cfg.model.block_size, eval_gen,
                                                         self.data.stride))
                             for _ in range(cfg.eval_batches)]
        else:  # the first held-out examples, the same in every process
            self.eval_set = self.data.val_batches(B, B * cfg.eval_batches)
        # continual training: also watch the loss on the replayed corpus (what fine-tuning may make the model forget)
        self.replay_eval = [random_batch(self.replay.val, B, cfg.model.block_size, eval_gen)
                            for _ in range(cfg.eval_batches)] if self.replay else []

    def setup(self) -> None:
        self._open_inputs()
        self._check_memory()
        self._claim_output()
        self._build_model()
        if self.resume_ckpt is not None:
            self._restore()
        if self.ctx.distributed:  # dropout masks differ between processes (the weights were made identical above)
            torch.manual_seed(torch_seed(self.cfg.seed + 7919 * self.ctx.rank))
        self._eval_sets()
        self._carried = self._carried_info()

    # -- what a checkpoint records ------------------------------------------------------------------

    def _carried_info(self) -> dict[str, Any]:
        """What a fine-tuned checkpoint carries over from its base (end-of-sequence ids, decoding defaults,
        origin, chat template), and what it adds (its chat template, its adapters)."""
        cfg, base = self.cfg, self.base_info
        carried: dict[str, Any] = {}
        if base is not None:
            carried = dict(eos_token_ids=base.eos_token_ids, generation=base.generation, source=base.source,
                           chat_template=base.chat_template)
        if isinstance(self.data, SFTData) and self.data.template is not None:
            carried["chat_template"] = self.data.template.source
        if cfg.task:
            carried["head"] = HeadInfo(cfg.task, list(self.data.labels))
        if cfg.lora_rank:
            carried["lora"] = LoraInfo(rank=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                                       targets=list(cfg.lora_targets), adapter_only=cfg.adapter_only,
                                       base=str(Path(cfg.init_from).resolve()) if cfg.init_from else None)
        return carried

    def info(self, val_loss: float | None) -> CheckpointInfo:
        return CheckpointInfo(model=self.cfg.model, train=self.cfg, step=self.state.progress.step, val_loss=val_loss,
                              data=self.data.record, **self._carried)

    def save(self, name: str, val_loss: float | None, with_state: bool) -> None:
        """Write a checkpoint from the main process (under FSDP every process helps gather the weights)."""
        weights = distributed.full_model_state(self.wrapped) if self.sharded else None
        if self.cfg.adapter_only:
            weights = adapter_state(weights or self.model.state_dict())
        optim = distributed.full_optimizer_state(self.model, self.optimizer) if with_state else None
        if self.ctx.main:
            state = self.state.state_dict(optim, self.state.progress.elapsed_s + time.perf_counter() - self.t_start) \
                if with_state else None
            save_checkpoint(self.out / name, state_to_save(self.model, weights), self.info(val_loss), self.tokenizer, state)
        distributed.barrier(self.ctx)

    def record(self, rec: dict[str, Any]) -> None:
        """Log a metrics record; a callback that returns True asks the run to stop."""
        if not self.ctx.main:
            return
        self.metrics.append(rec)
        if any(bool(cb(rec)) for cb in self.callbacks):
            self.stop_flag["stop"] = "callback"

    # -- the loop ---------------------------------------------------------------------------------------

    def micro_batches(self) -> Iterator[tuple]:
        """The step's ``grad_accum_steps`` micro-batches; every process draws the same global batch and
        reads its own slice of it. Counts the tokens fed (all processes) in ``self.step_tokens``."""
        cfg, ctx, data, replay, device = self.cfg, self.ctx, self.data, self.replay, self.device
        B, T = cfg.batch_size, cfg.model.block_size
        G = B * ctx.world_size
        progress = self.state.progress
        self.step_tokens = 0
        for _ in range(cfg.grad_accum_steps):
            if replay is None and isinstance(data, TokenData):
                x, y = windows(data.train, self.sampler.next(G)[ctx.rank * B:(ctx.rank + 1) * B], T)
                self.step_tokens += x.numel() * ctx.world_size
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                continue
            k = math.floor((progress.rows_drawn + G) * cfg.replay_fraction) - math.floor(progress.rows_drawn * cfg.replay_fraction)
            progress.rows_drawn += G
            rows = data.rows(self.sampler.next(G - k), T)
            if k:  # replayed windows as long as this batch's other rows
                Tr = max((len(x) for x, _ in rows), default=T)
                rows += replay.rows(torch.randint(len(replay.train) - Tr, (k,), generator=self.data_gen).tolist(), Tr)
            mine = rows[ctx.rank * B:(ctx.rank + 1) * B]
            x, y = data.collate(mine) if isinstance(data, (PairData, TaskData, MLMData)) else collate(mine, self.tokenizer.eot_id or 0)
            self.step_tokens += x.numel() * ctx.world_size  # (each process's rows padded alike: an estimate under DDP)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), int((y != -1).sum())

    def evaluate(self) -> float:
        loss = loss_over_batches(self.compiled, self.eval_set, self.device, self.dtype)
        return distributed.mean(torch.tensor(loss, device=self.device), self.ctx).item()

    def _log(self, lr: float) -> None:
        """The training loss since the last log, tokens/s and MFU, as a metrics record and on the bar."""
        now, p = time.perf_counter(), self.state.progress
        train_loss = distributed.mean(self.interval_loss / self.interval_steps, self.ctx).item()
        self.interval_loss.zero_()
        self.interval_steps = 0
        if not math.isfinite(train_loss):
            raise UserError(f"training diverged at step {p.step} (loss {train_loss}); lower --lr or use --grad-clip")
        tok_s = (p.tokens_seen - self.tokens_at_log) / max(now - self.t_log, 1e-9)
        self.t_log, self.tokens_at_log = now, p.tokens_seen
        mfu = tok_s * self.flops_per_device_token / self.peak
        self.bar.set_postfix_str(f"loss {train_loss:.4f} | {tok_s:,.0f} tok/s | MFU {mfu:.0%}"
                                 + (f" | val {self.last_val:.4f}" if self.last_val else ""))
        self.record({"step": p.step, "loss": train_loss, "lr": lr, "tokens": p.tokens_seen, "tokens_per_s": round(tok_s, 1),
                     "mfu": float(f"{mfu:.4g}"),  # significant digits: a tiny model on a GPU is ~1e-5
                     "elapsed_s": round(p.elapsed_s + now - self.t_start, 3)})

    def _evaluate_and_save(self) -> str | None:
        """Periodic evaluation: best/ when it improved, latest/ always; returns why to stop, if it should."""
        cfg, p = self.cfg, self.state.progress
        self.last_val = self.evaluate()
        replay_val = loss_over_batches(self.compiled, self.replay_eval, self.device, self.dtype) if self.replay_eval else None
        improved = self.last_val < p.best_val - cfg.min_delta
        if improved:
            p.best_val, p.bad_evals = self.last_val, 0
            self.save(BEST, self.last_val, with_state=False)
        else:
            p.bad_evals += 1
        if cfg.lr_schedule == "plateau" and plateau_update(p.plateau, improved, cfg):
            log.info("validation loss has not improved for %d evaluations: learning rate now %.3g",
                     cfg.plateau_patience, lr_at(p.step, cfg, p.plateau["scale"]))
        self.save(LATEST, self.last_val, with_state=True)
        log.info("step %d: val loss %.4f (ppl %.2f)%s", p.step, self.last_val, math.exp(self.last_val),
                 " *best*" if improved else "")
        self.record({"step": p.step, "val_loss": self.last_val, "val_ppl": math.exp(self.last_val)}
                    | ({"replay_val_loss": replay_val} if replay_val is not None else {}))
        if cfg.target_loss and self.last_val <= cfg.target_loss:
            log.info("target reached: validation loss %.4f <= %g at step %d", self.last_val, cfg.target_loss, p.step)
            return "target_reached"
        if cfg.patience and p.bad_evals >= cfg.patience:
            log.info("early stopping: no improvement in %d evaluations", p.bad_evals)
            return "early_stopped"
        return None

    def _prepare_loop(self) -> None:
        cfg, model, ctx = self.cfg, self.model, self.ctx
        self.compiled = torch.compile(self.wrapped, mode=None if cfg.compile_mode == "default" else cfg.compile_mode) \
            if cfg.compile else self.wrapped
        # CUDA graphs (torch.compile's cudagraph trees) reuse their output memory on every replay: each step
        # is marked as a new iteration, so nothing of the last step's graph outputs is expected to survive
        self.cuda_graphs = cfg.compile and self.device.type == "cuda" and cfg.compile_mode in ("reduce-overhead", "max-autotune")
        self.n_params = model.num_params()
        # MFU: each process's share of the tokens, its model FLOPs, against its own device's measured peak
        self.flops_per_device_token = flops_per_token(model) / ctx.world_size
        self.peak = matmul_peak(self.device, self.dtype)
        log.info("model: %.2fM parameters, device %s, dtype %s", self.n_params / 1e6, self.device,
                 str(self.dtype).replace("torch.", ""))
        self.t_start = self.t_log = time.perf_counter()
        self.tokens_at_log = self.tokens_at_start = self.state.progress.tokens_seen
        self.interval_loss, self.interval_steps = torch.zeros((), device=self.device), 0  # mean train loss since the last log
        self.step_tokens = 0
        self.bar = _progress(cfg.max_steps, self.state.progress.step, cfg.progress and ctx.main)

    def loop(self) -> str:
        """Train until max_steps, early stopping, the time limit, Ctrl-C or a callback; returns the status."""
        cfg, p = self.cfg, self.state.progress
        self._prepare_loop()
        self.model.train()
        status = "completed"
        with _graceful_interrupt(self.stop_flag), _logging_through(self.bar):
            while p.step < cfg.max_steps:
                lr = lr_at(p.step, cfg, p.plateau["scale"])
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                loss = optimizer_step(self.compiled, self.model, self.optimizer, self.scaler, self.micro_batches(), lr,
                                      cfg, self.device, self.dtype, self.objective)
                if cfg.keep_zeros:
                    with torch.no_grad():
                        for param, zero in self.zero_masks:
                            param.masked_fill_(zero, 0.0)
                p.step += 1
                p.tokens_seen += self.step_tokens
                self.interval_loss += loss
                self.interval_steps += 1
                self.bar.update(1)
                if p.step % cfg.log_interval == 0 or p.step == cfg.max_steps:
                    self._log(lr)
                if (p.step % cfg.eval_interval == 0 or p.step == cfg.max_steps) and (stop := self._evaluate_and_save()):
                    status = stop
                    break
                if cfg.max_minutes and (time.perf_counter() - self.t_start) / 60 >= cfg.max_minutes:
                    self.stop_flag["stop"] = "time_limit"
                # a stop seen by one process (its clock, Ctrl-C, a callback on the main one) stops them all together
                if distributed.any_true(bool(self.stop_flag.get("stop")), self.ctx, self.device):
                    status = self.stop_flag.get("stop") or "stopped"
                    if p.step % cfg.eval_interval:  # not just saved: save the exact state now
                        self.save(LATEST, self.last_val, with_state=True)
                    break
        self.bar.close()
        return status

    # -- the end ------------------------------------------------------------------------------------------

    def final_evaluation(self, summary: dict[str, Any]) -> None:
        """The best checkpoint on the whole validation split."""
        cfg, device = self.cfg, self.device
        best = build_model(cfg.model).to(device) if self.sharded else self.model  # a sharded model cannot take whole weights
        sd = checkpoint_weights(self.out / BEST)
        if cfg.adapter_only:
            best.load_state_dict(sd, strict=False)
        else:
            assign_weights(best, sd, str(self.out / BEST))
        if isinstance(self.data, TokenData):
            # rows of at least FINAL_EVAL_TOKENS tokens: small models' products are faster in bigger batches
            rows = max(cfg.batch_size, FINAL_EVAL_TOKENS // cfg.model.block_size)
            batches, n_val = sequential_batches(self.data.val, cfg.model.block_size, rows), int(len(self.data.val))
        else:  # every held-out example; the tokens scored are its completion tokens
            batches = self.data.val_batches(cfg.batch_size)
            n_val = sum(int((y != -1).sum()) for _, y in batches)
        val = loss_over_batches(best, batches, device, self.dtype)
        summary.update(val_loss=val, val_ppl=math.exp(val), val_tokens=n_val)
        if cfg.task:  # a head's targets are labels (classes, words' tags, answer starts and ends), not next tokens
            summary["val_unit"] = "label"
        self.record({"step": self.state.progress.step, "final_val_loss": val, "final_val_ppl": math.exp(val)})

    def summary(self, status: str) -> dict[str, Any]:
        p, train_seconds = self.state.progress, time.perf_counter() - self.t_start
        tokens_per_s = (p.tokens_seen - self.tokens_at_start) / max(train_seconds, 1e-9)
        out: dict[str, Any] = {
            "status": status, "step": p.step, "max_steps": self.cfg.max_steps, "params": self.n_params,
            "tokens": p.tokens_seen, "train_seconds": round(train_seconds, 2),
            "tokens_per_s": round(tokens_per_s, 1), "mfu": float(f"{tokens_per_s * self.flops_per_device_token / self.peak:.4g}"),
            "peak_flops": self.peak, "best_val_loss": p.best_val if math.isfinite(p.best_val) else None,
            "out": str(self.out), "best": str(self.out / BEST), "latest": str(self.out / LATEST),
            "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
        }
        if self.ctx.distributed:
            out.update(rank=self.ctx.rank, world_size=self.ctx.world_size)
        if out["mfu"] > 1.0:  # faster than the machine's measured peak: that peak was timed on a busy machine
            log.warning("MFU %.0f%% is above 100%%: the cached matmul peak (%.1f GFLOP/s) was measured while the machine "
                        "was busy; it is measured again next run", 100 * out["mfu"], self.peak / 1e9)
            forget_peak(self.device, self.dtype)
        return out

    def run(self) -> dict[str, Any]:
        self.lock = None
        try:
            self.setup()
            status = self.loop()
            summary = self.summary(status)
            if self.ctx.main and self.cfg.final_eval and status in ("completed", "early_stopped", "target_reached", "time_limit") \
                    and (self.out / BEST).exists():
                self.final_evaluation(summary)
            if self.ctx.main:
                try:
                    plot_loss_curve(self.out / METRICS, self.out / PLOT)
                    summary["plot"] = str(self.out / PLOT)
                except Exception as e:  # noqa: BLE001 - a plotting failure must not lose the trained model
                    log.warning("could not draw the loss curve: %s", e)
            return summary
        finally:
            if self.lock is not None:
                self.lock.release()
