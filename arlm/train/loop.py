"""THE training loop. Everything else (fine-tuning, distributed, distillation) is a parameter or hook of it.

Maximum-likelihood training: minimise the mean cross-entropy of each next token given the ones
before it, with AdamW, a warmup + decay learning-rate schedule, gradient clipping and accumulation.

Determinism: the data order comes from its own ``torch.Generator``, dropout from the global torch
RNG, periodic evaluation uses a fixed set of windows and no RNG at all. All of that is saved in
``latest/``, so a resumed run's losses equal an uninterrupted run's exactly (CPU, float32).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from arlm.config import TrainConfig, apply_preset, from_dict, read_toml, to_dict
from arlm.data.loader import TokenData, WindowSampler, collate, random_batch, sequential_batches, windows
from arlm.data.sft import SFTData
from arlm.errors import UserError
from arlm.eval.perplexity import loss_over_batches
from arlm.fsutil import atomic_write_text
from arlm.model import build_model
from arlm.model.lora import adapter_state, apply_lora, lora_info
from arlm.model.weights import assign_weights, empty_model
from arlm.runtime import autocast, resolve_device, resolve_dtype, seed_everything, set_threads
from arlm.tokenizers import load_tokenizer
from arlm.tokenizers.base import same_vocabulary
from arlm.train import checkpoint as ckpt_io
from arlm.train import distributed
from arlm.train.optim import lr_at, make_optimizer, plateau_update
from arlm.train.throughput import flops_per_token, matmul_peak
from arlm.viz.curves import plot_loss_curve

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
PLOT = "loss.png"

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


def _rng_state(data_gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], data_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    data_gen.set_state(state["data"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_metrics(path: Path, after_step: int) -> None:
    """On resume, drop records logged after the checkpoint (they will be produced again)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and json.loads(ln).get("step", 0) <= after_step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def _claim_output(out: Path, overwrite: bool) -> None:
    """A new run must not silently replace another run's checkpoints or mix into its metrics."""
    previous = [out / n for n in (ckpt_io.LATEST, ckpt_io.BEST, METRICS, PLOT) if (out / n).exists()]
    if not previous:
        return
    if not overwrite:
        raise UserError(f"{out} already holds a training run; continue it with --resume {out}, "
                        f"choose another --out, or pass --overwrite to replace it")
    for p in previous:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


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


def optimizer_step(wrapped: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, micro_batches, lr: float, cfg: TrainConfig, device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
    """One optimizer step over ``cfg.grad_accum_steps`` (x, y) micro-batches; the mean loss (a tensor,
    not synchronised). ``wrapped`` is what runs the forward pass (the model, compiled, or in DDP/FSDP),
    ``model`` the plain module; ``micro_batches`` yields (x, y) or (x, y, number of targets).
    bench/train.py times exactly this."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    batches = list(micro_batches)
    # A micro-batch may come as (x, y, n) with n its number of targets that are not -1 (fine-tuning data
    # masks prompts and padding): its loss, a mean over its own targets, then counts in proportion to
    # n, so the step's loss is the mean over every target of the step, as one big batch would give.
    counts = [b[2] if len(b) > 2 else 1 for b in batches]
    total = max(sum(counts), 1)
    loss_sum = torch.zeros((), device=device)
    for micro, (x, y, *_) in enumerate(batches):
        weight = counts[micro] / total
        with distributed.gradient_sync(wrapped, micro == len(batches) - 1):
            with autocast(device, dtype):
                _, loss = wrapped(x, y)
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
    they may not change the model or the data.
    """
    if isinstance(config, (str, Path)):
        config = read_toml(config)
    d = to_dict(config) if isinstance(config, TrainConfig) else dict(config or {})
    for k, v in overrides.items():
        d[k] = {**d.get("model", {}), **v} if k == "model" else v
    if d.get("resume"):
        resume_ckpt, cfg = ckpt_io.resume_config(d["resume"], {k: v for k, v in d.items() if k != "resume"})
        cfg.validate()
    else:
        if d.get("init_from"):
            d = _shape_from_base(d)
        resume_ckpt, cfg = None, build_config(d)
    return _run(cfg, resume_ckpt, callbacks or [])


def _shape_from_base(d: dict[str, Any]) -> dict[str, Any]:
    """Fine-tuning keeps the base model's shape; of the model keys only dropout may be changed."""
    if d.get("preset"):
        raise UserError("--preset sets a model shape, but fine-tuning keeps the shape of the model it starts from; drop it")
    base = to_dict(ckpt_io.model_config(d["init_from"]))
    for key, value in (d.get("model") or {}).items():
        if key != "dropout" and base.get(key) != value:
            raise UserError(f"model.{key} comes from the model being fine-tuned ({base.get(key)!r}); only model.dropout "
                            f"can be changed (drop model.{key} = {value!r})")
    return {**d, "model": {**base, **(d.get("model") or {})}}


def _open_data(path: str, tokenizer, cfg: TrainConfig):
    """The training data: a prepared token folder, or a JSONL file of fine-tuning examples tokenized
    with the base model's ``tokenizer``."""
    p = Path(path)
    if p.suffix.lower() == ".jsonl" or p.is_file():
        if tokenizer is None:
            raise UserError(f"{p} is fine-tuning data (JSONL examples): start from a model with --init-from DIR, or run "
                            f"`arlm finetune --model DIR --data {p}`. To pretrain on JSONL text, run `arlm prepare {p}` first")
        return SFTData(p, tokenizer, cfg.model.block_size, cfg.val_fraction, cfg.chat_template, cfg.packing)
    data = TokenData.open(p)
    if tokenizer is not None and not same_vocabulary(load_tokenizer(data.path), tokenizer):
        raise UserError(f"{p} was prepared with another tokenizer than the model's; prepare it again with the model's "
                        f"tokenizer, or give the examples as JSONL")
    return data


def _run(cfg: TrainConfig, resume_ckpt: Path | None, callbacks: list[Callback]) -> dict[str, Any]:
    set_threads(cfg.threads)
    ctx, device = distributed.setup(resolve_device(cfg.device))
    try:
        return _train(cfg, resume_ckpt, callbacks, ctx, device)
    finally:
        distributed.teardown(ctx)


def _train(cfg: TrainConfig, resume_ckpt: Path | None, callbacks: list[Callback], ctx: distributed.Context,
           device: torch.device) -> dict[str, Any]:
    dtype = resolve_dtype(cfg.dtype, device)
    out = Path(cfg.out)

    base_model, tokenizer, base_info = None, None, {}
    if cfg.init_from:
        base_model, tokenizer, base_info = ckpt_io.load_model(cfg.init_from)
        if tokenizer is None:
            raise UserError(f"{cfg.init_from} has no tokenizer files; copy its tokenizer into the folder to fine-tune it")
    if cfg.lora_rank and cfg.fsdp and ctx.distributed:
        raise UserError("LoRA is not supported with --fsdp; train the adapters with DDP (drop --fsdp)")
    data = _open_data(cfg.data, tokenizer, cfg)
    tokenizer = tokenizer or load_tokenizer(data.path)
    replay = _open_data(cfg.replay_data, tokenizer, cfg) if cfg.replay_data else None
    if replay is not None and not isinstance(replay, TokenData):
        raise UserError("--replay-data must be a prepared data folder (`arlm prepare`), not JSONL")
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = int(data.meta["vocab_size"])
    elif cfg.model.vocab_size < data.meta["vocab_size"]:
        raise UserError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the data's vocabulary "
                        f"({data.meta['vocab_size']}); leave vocab_size at 0 to take it from the data")
    data.check_block_size(cfg.model.block_size)
    if replay is not None:
        replay.check_block_size(cfg.model.block_size)
    if resume_ckpt is None and ctx.main:
        _claim_output(out, cfg.overwrite)
    distributed.barrier(ctx)  # no process writes before the main one has cleared the folder
    out.mkdir(parents=True, exist_ok=True)

    # Every process builds the same initial weights (DDP also broadcasts them; FSDP shards them as they are).
    seed_everything(cfg.seed)
    if base_model is not None:  # fine-tuning: the base weights, in a model with this run's dropout
        model = empty_model(cfg.model)
        assign_weights(model, base_model.state_dict(), f"{cfg.init_from} does not match its own config")
        del base_model
    else:
        model = build_model(cfg.model)
    if cfg.lora_rank:
        trainable = apply_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
        log.info("LoRA rank %d on %s: %s trainable parameters (%.2f%% of the model)", cfg.lora_rank,
                 ", ".join(cfg.lora_targets), f"{trainable:,}", 100 * trainable / sum(p.numel() for p in model.parameters()))
    model = model.to(device)
    if resume_ckpt is not None:
        ckpt_io.load_weights(model, resume_ckpt, adapter_only=cfg.adapter_only)
    if cfg.activation_checkpointing:
        if not hasattr(model, "checkpointing"):
            raise UserError("--activation-checkpointing applies to GPT models (an LSTM's layers are one PyTorch module)")
        model.checkpointing = True
    wrapped = distributed.wrap(model, ctx, cfg.fsdp)
    sharded = cfg.fsdp and ctx.distributed
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    data_gen = torch.Generator().manual_seed(cfg.seed)
    if isinstance(data, SFTData) and not data.packing:  # one example per row: draw example indices
        sampler = WindowSampler(len(data.train) + 1, 1, cfg.sampling, cfg.seed, data_gen)
    else:  # windows of a token stream (a prepared corpus, or packed examples)
        sampler = WindowSampler(data.size if isinstance(data, SFTData) else len(data.train), cfg.model.block_size,
                                cfg.sampling, cfg.seed, data_gen)
    rows_drawn = 0  # sequences drawn so far (replay takes floor(rows_drawn * replay_fraction) of them)
    step, best_val, bad_evals, tokens_seen, elapsed_before = 0, math.inf, 0, 0, 0.0
    plateau = {"scale": 1.0, "bad": 0}  # the plateau schedule's learning-rate factor and its patience count

    if resume_ckpt is not None:
        state = ckpt_io.load_trainer_state(resume_ckpt)
        if all(isinstance(k, int) for k in state["optimizer"]["state"]):  # keyed by position (arlm <= 0.4)
            optimizer.load_state_dict(state["optimizer"])
        else:
            distributed.load_optimizer_state(model, optimizer, state["optimizer"])
        if "sampler" in state:
            sampler.load_state_dict(state["sampler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], data_gen)
        step, best_val, bad_evals = int(state["step"]), float(state["best_val"]), int(state["bad_evals"])
        rows_drawn = int(state.get("rows_drawn", 0))
        plateau.update(state.get("plateau", {}))
        tokens_seen, elapsed_before = int(state["tokens_seen"]), float(state["elapsed_s"])
        if step >= cfg.max_steps:
            raise UserError(f"the run in {cfg.resume} already reached step {step}; pass a larger --max-steps to continue")
        if ctx.main:
            _truncate_metrics(out / METRICS, step)
        log.info("resumed from %s at step %d", resume_ckpt, step)
    if ctx.distributed:  # dropout masks differ between processes (the weights were made identical above)
        torch.manual_seed(cfg.seed + 7919 * ctx.rank)

    compiled = torch.compile(wrapped, mode=None if cfg.compile_mode == "default" else cfg.compile_mode) if cfg.compile else wrapped
    # CUDA graphs (torch.compile's cudagraph trees) reuse their output memory on every replay: each step
    # is marked as a new iteration, so nothing of the last step's graph outputs is expected to survive
    cuda_graphs = cfg.compile and device.type == "cuda" and cfg.compile_mode in ("reduce-overhead", "max-autotune")
    n_params = model.num_params()
    # MFU: each process's share of the tokens, its model FLOPs, against its own device's measured peak
    flops_per_device_token = flops_per_token(model, cfg.model) / ctx.world_size
    peak = matmul_peak(device, dtype)
    log.info("model: %.2fM parameters, device %s, dtype %s", n_params / 1e6, device, str(dtype).replace("torch.", ""))
    B = cfg.batch_size

    # Periodic evaluation uses the same validation windows every time, drawn once from a fixed seed,
    # so successive estimates differ only because the model changed.
    eval_gen = torch.Generator().manual_seed(cfg.seed + 1)
    # Windows of the global batch size (so the set does not depend on the number of processes); each
    # process scores its own slice of every batch, and the mean of the equal-sized slices is the mean.
    if isinstance(data, TokenData):
        eval_set = [tuple(t[ctx.rank * B:(ctx.rank + 1) * B] for t in random_batch(data.val, B * ctx.world_size, cfg.model.block_size, eval_gen))
                    for _ in range(cfg.eval_batches)]
    else:  # the first held-out examples, the same in every process
        eval_set = data.val_batches(B, B * cfg.eval_batches)
    # continual training: also watch the loss on the replayed corpus (what fine-tuning may make the model forget)
    replay_eval = [random_batch(replay.val, B, cfg.model.block_size, eval_gen) for _ in range(cfg.eval_batches)] if replay else []

    def evaluate() -> float:
        return distributed.mean(torch.tensor(loss_over_batches(compiled, eval_set, device, dtype), device=device), ctx).item()

    def record(rec: dict[str, Any]) -> bool:
        if not ctx.main:
            return False
        with open(out / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        return any(bool(cb(rec)) for cb in callbacks)

    def save(name: str, val_loss: float | None, with_state: bool) -> None:
        """Write a checkpoint from the main process (under FSDP every process helps gather the weights)."""
        weights = distributed.full_model_state(wrapped) if sharded else None
        if cfg.adapter_only:
            weights = adapter_state(weights or model.state_dict())
        optim = distributed.full_optimizer_state(model, optimizer) if with_state else None
        if ctx.main:
            state = None
            if with_state:
                state = {
                    "optimizer": optim, "scaler": scaler.state_dict(), "rng": _rng_state(data_gen),
                    "sampler": sampler.state_dict(), "rows_drawn": rows_drawn, "step": step, "best_val": best_val, "bad_evals": bad_evals, "plateau": dict(plateau),
                    "tokens_seen": tokens_seen, "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
                }
            ckpt_io.save_checkpoint(out / name, model, tokenizer, info(val_loss), state, weights)
        distributed.barrier(ctx)

    # What a fine-tuned checkpoint carries over from its base (end-of-sequence ids, decoding defaults,
    # origin, chat template), and what it adds (its chat template, its adapters).
    carried = {k: base_info[k] for k in ("eos_token_ids", "generation", "source", "chat_template") if k in base_info}
    if isinstance(data, SFTData) and data.template is not None:
        carried["chat_template"] = data.template.source
    if cfg.lora_rank:
        carried["lora"] = lora_info(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets,
                                    str(Path(cfg.init_from).resolve()) if cfg.init_from else None, cfg.adapter_only)

    def info(val_loss: float | None) -> dict[str, Any]:
        train_dict = to_dict(cfg)
        train_dict.pop("model")
        return {"train": train_dict, "step": step, "val_loss": val_loss, "data": data.meta, **carried}

    stop_flag: dict[str, Any] = {}
    status = "completed"
    t_start = time.perf_counter()
    t_log, tokens_at_log, tokens_at_start, last_val = time.perf_counter(), tokens_seen, tokens_seen, None
    interval_loss, interval_steps = torch.zeros((), device=device), 0  # mean train loss since the last log
    bar = _progress(cfg.max_steps, step, cfg.progress and ctx.main)

    step_tokens = 0  # tokens fed in the current step, all processes: padded fine-tuning rows are shorter than T

    def micro_batches():
        nonlocal rows_drawn, step_tokens
        T, G = cfg.model.block_size, B * ctx.world_size
        step_tokens = 0
        for _ in range(cfg.grad_accum_steps):
            # Every process draws the same global batch and reads its own slice of it.
            if replay is None and isinstance(data, TokenData):
                x, y = windows(data.train, sampler.next(G)[ctx.rank * B:(ctx.rank + 1) * B], T)
                step_tokens += x.numel() * ctx.world_size
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                continue
            k = math.floor((rows_drawn + G) * cfg.replay_fraction) - math.floor(rows_drawn * cfg.replay_fraction)
            rows_drawn += G
            rows = data.rows(sampler.next(G - k), T)
            if k:  # replayed windows as long as this batch's other rows
                Tr = max((len(x) for x, _ in rows), default=T)
                rows += replay.rows(torch.randint(len(replay.train) - Tr, (k,), generator=data_gen).tolist(), Tr)
            x, y = collate(rows[ctx.rank * B:(ctx.rank + 1) * B], tokenizer.eot_id or 0)
            step_tokens += x.numel() * ctx.world_size  # (each process's rows padded alike: an estimate under DDP)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), int((y != -1).sum())

    model.train()
    with _graceful_interrupt(stop_flag), _logging_through(bar):
        while step < cfg.max_steps:
            lr = lr_at(step, cfg, plateau["scale"])
            if cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            loss = optimizer_step(compiled, model, optimizer, scaler, micro_batches(), lr, cfg, device, dtype)
            step += 1
            tokens_seen += step_tokens
            interval_loss += loss
            interval_steps += 1
            bar.update(1)

            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                train_loss = distributed.mean(interval_loss / interval_steps, ctx).item()
                interval_loss.zero_()
                interval_steps = 0
                if not math.isfinite(train_loss):
                    raise UserError(f"training diverged at step {step} (loss {train_loss}); lower --lr or use --grad-clip")
                tok_s = (tokens_seen - tokens_at_log) / max(now - t_log, 1e-9)
                t_log, tokens_at_log = now, tokens_seen
                mfu = tok_s * flops_per_device_token / peak
                bar.set_postfix_str(f"loss {train_loss:.4f} | {tok_s:,.0f} tok/s | MFU {mfu:.0%}"
                                    + (f" | val {last_val:.4f}" if last_val else ""))
                if record({"step": step, "loss": train_loss, "lr": lr, "tokens": tokens_seen, "tokens_per_s": round(tok_s, 1),
                           "mfu": float(f"{mfu:.4g}"),  # significant digits: a tiny model on a GPU is ~1e-5
                           "elapsed_s": round(elapsed_before + now - t_start, 3)}):
                    stop_flag["stop"] = "callback"

            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                last_val = evaluate()
                replay_val = loss_over_batches(compiled, replay_eval, device, dtype) if replay_eval else None
                improved = last_val < best_val - cfg.min_delta
                if improved:
                    best_val, bad_evals = last_val, 0
                    save(ckpt_io.BEST, last_val, with_state=False)
                else:
                    bad_evals += 1
                if cfg.lr_schedule == "plateau" and plateau_update(plateau, improved, cfg):
                    log.info("validation loss has not improved for %d evaluations: learning rate now %.3g",
                             cfg.plateau_patience, lr_at(step, cfg, plateau["scale"]))
                save(ckpt_io.LATEST, last_val, with_state=True)
                log.info("step %d: val loss %.4f (ppl %.2f)%s", step, last_val, math.exp(last_val), " *best*" if improved else "")
                if record({"step": step, "val_loss": last_val, "val_ppl": math.exp(last_val)}
                          | ({"replay_val_loss": replay_val} if replay_val is not None else {})):
                    stop_flag["stop"] = "callback"
                if cfg.patience and bad_evals >= cfg.patience:
                    status = "early_stopped"
                    log.info("early stopping: no improvement in %d evaluations", bad_evals)
                    break
            if cfg.max_minutes and (time.perf_counter() - t_start) / 60 >= cfg.max_minutes:
                stop_flag["stop"] = "time_limit"
            # a stop seen by one process (its clock, Ctrl-C, a callback on the main one) stops them all together
            if distributed.any_true(bool(stop_flag.get("stop")), ctx, device):
                status = stop_flag.get("stop") or "stopped"
                if step % cfg.eval_interval:  # not just saved: save the exact state now
                    save(ckpt_io.LATEST, last_val, with_state=True)
                break
    bar.close()
    train_seconds = time.perf_counter() - t_start

    tokens_per_s = (tokens_seen - tokens_at_start) / max(train_seconds, 1e-9)
    summary: dict[str, Any] = {
        "status": status, "step": step, "max_steps": cfg.max_steps, "params": n_params,
        "tokens": tokens_seen, "train_seconds": round(train_seconds, 2),
        "tokens_per_s": round(tokens_per_s, 1), "mfu": float(f"{tokens_per_s * flops_per_device_token / peak:.4g}"),
        "peak_flops": peak,
        "best_val_loss": best_val if math.isfinite(best_val) else None,
        "out": str(out), "best": str(out / ckpt_io.BEST), "latest": str(out / ckpt_io.LATEST),
        "device": str(device), "dtype": str(dtype).replace("torch.", ""),
    }
    if ctx.distributed:
        summary.update(rank=ctx.rank, world_size=ctx.world_size)
    if ctx.main and cfg.final_eval and status in ("completed", "early_stopped", "time_limit") \
            and (out / ckpt_io.BEST).exists():
        best = build_model(cfg.model).to(device) if sharded else model  # a sharded model cannot take whole weights
        ckpt_io.load_weights(best, out / ckpt_io.BEST, adapter_only=cfg.adapter_only)
        if isinstance(data, TokenData):
            batches, n_val = sequential_batches(data.val, cfg.model.block_size, cfg.batch_size), int(len(data.val))
        else:  # every held-out example; the tokens scored are its completion tokens
            batches = data.val_batches(B)
            n_val = sum(int((y != -1).sum()) for _, y in batches)
        val = loss_over_batches(best, batches, device, dtype)
        summary["val_loss"] = val
        summary["val_ppl"] = math.exp(val)
        summary["val_tokens"] = n_val
        record({"step": step, "final_val_loss": val, "final_val_ppl": math.exp(val)})
    if not ctx.main:
        return summary
    try:
        plot_loss_curve(out / METRICS, out / PLOT)
        summary["plot"] = str(out / PLOT)
    except Exception as e:  # a plotting failure must not lose the trained model
        log.warning("could not draw the loss curve: %s", e)
    return summary
