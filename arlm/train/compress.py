"""The ``arlm compress`` commands as library functions: read a model, compress it, write a checkpoint
that every verb loads, and measure the original against the result (arlm/compress/report.py).

They live with the training loop because two of them are training runs of it (pruning's recovery
fine-tune, distillation), while arlm/compress holds only what they apply (quantizers, pruners, the
distillation objective) and stays below the loaders and the loop."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from arlm.compress.distill import student_from_teacher
from arlm.compress.prune import UNSTRUCTURED, calibration_batches, prune_model, sparsity
from arlm.compress.quantize import describe, quant_spec, quantization_of, quantize_model
from arlm.compress.report import folder_bytes, format_table, measure, saved_bytes, validation_ids
from arlm.config import CompressReportConfig, PruneConfig, QuantizeConfig, model_config, to_dict
from arlm.data.loader import TokenData
from arlm.errors import UserError
from arlm.interop.load import load_model, save_model
from arlm.io.atomic import scratch_dir
from arlm.io.outputs import claim_model_dir
from arlm.io.paths import check_apart
from arlm.io.schema import CheckpointInfo
from arlm.model.gpt import GPT
from arlm.train.loop import train



def open_output(out: str, source: str, overwrite: bool, verb: str) -> Path:
    """--out checked before any work (arlm/io/outputs.py): apart from the source; new, empty, or a model folder
    that --overwrite replaces; never a folder holding other files."""
    if not Path(source).exists():
        raise UserError(f"model folder not found: {source}")
    check_apart(out, source, what="--model")
    return claim_model_dir(out, "--out", verb, overwrite)


def derived_info(info: CheckpointInfo, **changes) -> CheckpointInfo:
    """The config of a model made from ``info``'s: its shape, tokenizer-side settings (decoding defaults,
    end-of-sequence ids, chat template) and where it came from; no training state."""
    source = {"derived_from": info.path, **({"original": info.source} if info.source else {}), **changes.pop("source", {})}
    fields = dict(model=info.model, model_type=info.model_type, generation=dict(info.generation),
                  eos_token_ids=list(info.eos_token_ids), chat_template=info.chat_template, source=source,
                  data=dict(info.data))
    return CheckpointInfo(**{**fields, **changes})


def float_model(path: str) -> tuple[nn.Module, object, CheckpointInfo]:
    """A float GPT to compress, on CPU."""
    model, tokenizer, info = load_model(path, "cpu")
    if tokenizer is None:
        raise UserError(f"{path} has no tokenizer files; a compressed checkpoint needs one")
    if quantization_of(model) is not None:
        raise UserError(f"{path} is already quantized ({describe(quantization_of(model))}); compress its float model")
    if info.head is not None:
        raise UserError(f"{path} has a {info.head.task} head in place of its output layer; compression works on "
                        f"language models (compress the model before fine-tuning the head)")
    return model, tokenizer, info


def dynamic_int8(model: nn.Module) -> nn.Module:
    """PyTorch's dynamic int8 (the tutorials' ``torch.ao.quantization.quantize_dynamic``): int8 weights
    and activations quantized per call, for every linear layer; a baseline row, not saved."""
    from torch.ao.quantization import quantize_dynamic

    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, nn.Linear):
            m.__class__ = nn.Linear  # arlm's Linear only adds a decoding kernel; torch.ao accepts nn.Linear alone
    with warnings.catch_warnings():  # torch.ao announces its own deprecation in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(plain, {nn.Linear}, dtype=torch.qint8)


def report_ids(report: CompressReportConfig, tokenizer) -> np.ndarray | None:
    return validation_ids(report.data, tokenizer, report.eval_tokens) if report.data else None


def quantize_checkpoint(cfg: QuantizeConfig, report: CompressReportConfig) -> dict:
    """``arlm compress quantize``: write ``cfg.out`` and return the table's rows and text."""
    spec = quant_spec(cfg.method, cfg.group_size, cfg.asymmetric)
    out = open_output(cfg.out, cfg.model, cfg.overwrite, "compress quantize")
    model, tokenizer, info = float_model(cfg.model)
    ids = report_ids(report, tokenizer)  # a bad --data fails before the work
    quantized = quantize_model(copy.deepcopy(model), spec)
    save_model(out, quantized, tokenizer, derived_info(info, quantization=spec))
    del quantized
    loaded, _, _ = load_model(out, "cpu")  # the table measures the saved checkpoint, as every verb loads it
    loaded.cache_dtype = torch.bfloat16  # as arlm.load does for quantized models on CPU
    rows = [measure("float32 (original)", model, folder_bytes(info.path), report, ids)]
    if report.baseline:
        dyn = dynamic_int8(model)
        rows.append(measure("PyTorch dynamic int8 (not saved)", dyn, saved_bytes(dyn), report, ids))
        del dyn
    rows.append(measure(describe(spec), loaded, folder_bytes(out), report, ids))
    return {"out": str(out), "method": dataclasses.asdict(spec), "rows": [r.to_json() for r in rows],
            "table": format_table(rows), "layers": sum(1 for m in loaded.modules() if hasattr(m, "dequantized"))}



def prepared_data(report: CompressReportConfig, tokenizer, why: str) -> TokenData:
    """The prepared folder of --data (its train split calibrates and recovers, its val split is scored)."""
    if not report.data:
        raise UserError(f"{why}: add --data DIR (a folder made by `arlm prepare` with the model's tokenizer)")
    if not Path(report.data).is_dir():
        raise UserError(f"{why} needs a prepared data folder, and --data {report.data} is not a folder; make one with "
                        f"`arlm prepare`")
    return TokenData.open_matching(report.data, tokenizer, "give the folder the model was trained on")


def recover(model: nn.Module, tokenizer, info: CheckpointInfo, cfg: PruneConfig, data: TokenData, work: Path) -> nn.Module:
    """``cfg.recover_steps`` of fine-tuning through THE training loop, the pruned zeros kept (unstructured)."""
    start = save_model(work / "pruned", model, tokenizer, derived_info(info, model=model.config))
    train({"init_from": str(start), "data": str(data.path), "out": str(work / "run"), "max_steps": cfg.recover_steps,
           "lr": cfg.recover_lr, "min_lr": cfg.recover_lr / 10, "warmup_steps": min(20, cfg.recover_steps // 10),
           "weight_decay": 0.0, "batch_size": cfg.recover_batch_size, "eval_interval": cfg.recover_steps,
           "eval_batches": 10, "progress": False, "final_eval": False, "keep_zeros": cfg.method in UNSTRUCTURED,
           "model": {"dropout": 0.0}})
    recovered, _, _ = load_model(work / "run" / "latest", "cpu")
    return recovered


def prune_checkpoint(cfg: PruneConfig, report: CompressReportConfig) -> dict:
    """``arlm compress prune``: write ``cfg.out`` and return the table's rows and text."""
    out = open_output(cfg.out, cfg.model, cfg.overwrite, "compress prune")
    model, tokenizer, info = float_model(cfg.model)
    needs_data = cfg.method != "magnitude" or cfg.recover_steps
    data = prepared_data(report, tokenizer, f"--method {cfg.method}" + (" with --recover-steps" if cfg.recover_steps else "")
                         ) if needs_data else None
    ids = report_ids(report, tokenizer)
    batches = None
    if cfg.method != "magnitude":
        data.check_block_size(model.config.block_size)
        batches = calibration_batches(np.asarray(data.train), model.config.block_size, cfg.calibration_batches)
    pruned = prune_model(copy.deepcopy(model), cfg.method, cfg.amount, batches)
    what = _pruned_name(cfg, model, pruned)
    sparse = cfg.method in UNSTRUCTURED
    rows = [measure("float32 (original)", model, folder_bytes(info.path), report, ids, sparse)]
    if cfg.recover_steps:
        rows.append(measure(what + ", before recovery", pruned, None, report, ids, sparse))
        with scratch_dir(out) as work:
            pruned = recover(pruned, tokenizer, info, cfg, data, work)
        what += f", + {cfg.recover_steps} recovery steps"
    record = {"method": cfg.method, "amount": cfg.amount, "recover_steps": cfg.recover_steps,
              "sparsity": round(sparsity(pruned), 4)}
    save_model(out, pruned, tokenizer, derived_info(info, model=pruned.config, source={"pruned": record}))
    rows.append(measure(what, pruned, folder_bytes(out), report, ids, sparse))
    return {"out": str(out), "pruning": record, "rows": [r.to_json() for r in rows], "table": format_table(rows)}


def _pruned_name(cfg: PruneConfig, original: nn.Module, pruned: nn.Module) -> str:
    if cfg.method in UNSTRUCTURED:
        return f"{cfg.method} {cfg.amount:.0%} of the block weights"
    a, b = original.config, pruned.config
    if cfg.method == "heads":
        return f"heads pruned: {b.n_head} of {a.n_head} a layer left"
    return f"MLP units pruned: {b.hidden_size} of {a.hidden_size} a layer left"


def student_config(teacher: nn.Module, config: dict, overrides: dict) -> dict:
    """The student's [model] table: the teacher's shape with half its layers, then the --student-config's
    table, then model flags."""
    base = to_dict(dataclasses.replace(teacher.config, n_layer=max(1, teacher.config.n_layer // 2), dropout=0.0))
    return {**base, **config.get("model", {}), **overrides.get("model", {})}


def _initialise(init: str, teacher: nn.Module, model: dict) -> bool:
    """Whether the student starts from the teacher's layers (``init``, and whether the shapes allow it)."""
    if not isinstance(teacher, GPT):  # DistilGPT2's recipe copies Transformer blocks; an LSTM has none
        if init == "teacher-layers":
            raise UserError(f"--init teacher-layers copies a GPT's blocks; this teacher is an {teacher.config.type} "
                            f"model: use --init random (or auto)")
        return False
    student = model_config(model, "the student's [model] table")
    same_width = dataclasses.replace(student, n_layer=teacher.config.n_layer, dropout=teacher.config.dropout) == teacher.config
    fits = same_width and student.n_layer <= teacher.config.n_layer
    if init == "teacher-layers" and not fits:
        raise UserError("--init teacher-layers copies the teacher's blocks: the student needs the teacher's shape except "
                        "for fewer layers (n_layer at most the teacher's, dropout free); use --init random for another shape")
    return init == "teacher-layers" or (init == "auto" and fits)


def distill_checkpoint(dcfg, config: dict, overrides: dict, report: CompressReportConfig) -> dict:
    """``arlm compress distill``: train the student in ``out`` (a training run, as `arlm train` writes) through
    THE training loop with the teacher's objective, and return the table (teacher, student, and with
    ``report.baseline`` the same student trained from scratch without the teacher)."""
    teacher, tokenizer, tinfo = float_model(dcfg.teacher)
    # training keys only: --teacher is the distill option of the same name, not a key to carry into the baseline
    settings = {**config, **{k: v for k, v in overrides.items() if k not in ("model", "teacher")}}
    if not settings.get("data") or not settings.get("out"):
        raise UserError("add --data DIR (prepared with the teacher's tokenizer) and --out DIR (the student's run)")
    data = prepared_data(CompressReportConfig(data=settings["data"]), tokenizer, "distillation")
    model = student_config(teacher, config, overrides)
    from_teacher = _initialise(dcfg.init, teacher, model)
    check_apart(settings["out"], dcfg.teacher, what="--teacher")
    run = {**settings, "teacher": dcfg.teacher, "model": model}
    with scratch_dir(settings["out"]) as work:
        if from_teacher:
            start = student_from_teacher(teacher, model["n_layer"])
            save_model(work / "student", start, tokenizer, derived_info(tinfo, model=start.config))
            run = {**run, "init_from": str(work / "student"), "model": {"dropout": model.get("dropout", 0.0)}}
        summary = train(run)
        baseline = None
        if report.baseline:
            scratch = {**settings, "model": model, "out": str(work / "scratch"), "overwrite": True}
            baseline = train(scratch)
            scratch_model, _, _ = load_model(baseline["best"], "cpu")
        student, _, _ = load_model(summary["best"], "cpu")
        ids = validation_ids(str(data.path), tokenizer, report.eval_tokens)
        how = "from the teacher's layers" if from_teacher else "random start"
        rows = [measure("teacher", teacher, folder_bytes(tinfo.path), report, ids),
                measure(f"student, distilled ({student.config.n_layer} layers, {how})", student,
                        folder_bytes(summary["best"]), report, ids)]
        if baseline is not None:
            rows.append(measure(f"same student from scratch, no teacher ({summary['step']} steps)", scratch_model, None,
                                report, ids))
    return {"out": settings["out"], "best": summary["best"], "init": "teacher-layers" if from_teacher else "random",
            "steps": summary["step"], "rows": [r.to_json() for r in rows], "table": format_table(rows)}
