"""``arlm <verb>``: the command line. Flags are generated from the config dataclasses in arlm/config.py.

Only flags the user actually gives are passed on (argparse.SUPPRESS), so a TOML file's values are
overridden only by explicit flags, and ``--resume`` knows exactly what the user asked to change.

Exit statuses (docs/reliability.md): 0 done; 2 bad input (a flag, a file, a value), one line on
stderr and nothing written; 1 the environment failed (disk full, permission denied, out of memory,
output stream closed), one line naming the path; 130 interrupted. Never a traceback for either.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from arlm.allocator import tune_allocator
from arlm.cli.flags import (Parser, add_config_args, add_train_args, emit_json, explicit_values, field_names, flag_name,
                            fmt, json_flag, load_model, load_options, read_train_toml, report_training, typed)
from arlm.config import (CHAT_DEFAULTS, EVAL_TASK_DEFAULTS, EVAL_TASK_OPTIONS, FINETUNE_DEFAULTS, LORA_DEFAULTS,
                         ConvertConfig, EvalConfig, ExportConfig, GenerateConfig, LoadConfig, PrepareConfig, ServeConfig,
                         TrainConfig,
                         from_dict, merge, validated)
from arlm.errors import EnvironmentFailure, UserError
from arlm.io.atomic import atomic_write_text
from arlm.io.files import read_text_file, read_toml
from arlm.io.text import check_strings
from arlm.version import __version__

log = logging.getLogger("arlm")

# ----------------------------------------------------------------------------------------------
# verbs


def cmd_prepare(args: argparse.Namespace) -> int:
    from arlm.data.prepare import prepare

    cfg = from_dict(PrepareConfig, explicit_values(args, field_names(PrepareConfig)), "prepare options")
    meta = prepare(cfg)
    if args.json:
        emit_json(meta)
    else:
        print(f"prepared {meta['documents']} document(s), {meta['characters']:,} characters -> "
              f"{meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens "
              f"({meta['tokenizer']} tokenizer, vocab {meta['vocab_size']:,}, {meta['dtype']}) in {cfg.out} "
              f"[{meta['seconds']}s]")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from arlm.train.loop import train

    config = read_train_toml(args)
    overrides = explicit_values(args, field_names(TrainConfig))
    return report_training(args, train(config, **overrides))


def cmd_finetune(args: argparse.Namespace) -> int:
    from arlm.train.loop import train

    config = read_train_toml(args)
    overrides = explicit_values(args, field_names(TrainConfig))
    if not overrides.get("resume"):
        if not args._model:
            raise UserError("no model given: add --model DIR (the model to fine-tune), or --resume OUT to continue a run")
        overrides["init_from"] = args._model
    lora = overrides.get("lora_rank", config.get("lora_rank", 0))
    defaults = merge(FINETUNE_DEFAULTS, LORA_DEFAULTS) if lora else FINETUNE_DEFAULTS
    return report_training(args, train(merge(defaults, config), **overrides))


def cmd_sweep(args: argparse.Namespace) -> int:
    from arlm.train.sweep import RESULTS, sweep

    from arlm.io.paths import output_dir

    base = read_toml(args.config) if args.config else {}
    for key in ("data", "max_steps", "max_minutes"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    if not base.get("data"):
        raise UserError("no data given: add --data DIR (a folder made by `arlm prepare`) or set data in --config")
    if args.trials < 0:
        raise UserError(f"--trials must be >= 0 (0: the full grid), got {args.trials}")
    output_dir(args.out)
    rows = sweep(base, args.param, args.out, n_random=args.trials, seed=args.seed, overwrite=args.overwrite)
    if args.json:
        emit_json({"results": rows, "csv": str(Path(args.out) / RESULTS)})
        return 0
    keys = [k for k in rows[0] if k not in ("trial", "val_loss", "steps", "tokens_per_s", "train_seconds", "status")]
    print(" | ".join(["trial", *keys, "val_loss", "steps", "tokens/s", "status"]))
    for r in rows:
        print(" | ".join([r["trial"], *(str(r[k]) for k in keys), fmt(r["val_loss"]), str(r["steps"]),
                          f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-", r["status"]]))
    print(f"results: {Path(args.out) / RESULTS}")
    return 0


def _decoding_controls(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding flags given; ``--json-schema`` is the schema's JSON text or a file holding it."""
    controls = explicit_values(args, field_names(GenerateConfig))
    schema = controls.get("json_schema")
    if schema and not schema.lstrip().startswith("{"):
        controls["json_schema"] = read_text_file(schema, what="JSON schema file")
    return controls


def cmd_generate(args: argparse.Namespace) -> int:
    controls = _decoding_controls(args)
    m = load_model(args, controls)
    cfg = m.generate_config(**controls)  # the model's own defaults under the flags given
    if cfg.logprobs or cfg.top_logprobs or cfg.echo:
        return _print_completions(args, m.complete(args.prompt, **controls), "" if m.seq2seq else args.prompt)
    n = cfg.num_return_sequences
    stream = m.stream_sequences(args.prompt, cfg)  # checks the prompt before anything is printed
    if args.json:
        texts = [""] * n
        for b, piece in stream:
            texts[b] += piece
        out = {"prompt": args.prompt, "completions": texts}
        if m.last_speculative is not None:
            out["speculative"] = dataclasses.asdict(m.last_speculative) | {"acceptance_rate": m.last_speculative.acceptance_rate}
        emit_json(out)
        return 0
    # Several sequences are decoded together in one batch; the first is streamed, the others follow it.
    # A decoder-only model's text continues the prompt; an encoder-decoder's output stands alone.
    shown = "" if m.seq2seq else args.prompt
    out = sys.stdout
    texts = [""] * n
    out.write((f"--- sample 1 of {n} ---\n" if n > 1 else "") + shown)
    out.flush()
    for b, piece in stream:
        texts[b] += piece
        if b == 0:
            out.write(piece)
            out.flush()
    out.write("\n")
    for b in range(1, n):
        out.write(f"--- sample {b + 1} of {n} ---\n{shown}{texts[b]}\n")
    return 0


def _print_completions(args: argparse.Namespace, completions, shown: str) -> int:
    """Completions with per-token log-probabilities: JSON, or a table per sequence."""
    if args.json:
        emit_json({"prompt": args.prompt, "completions": [dataclasses.asdict(c) for c in completions]})
        return 0
    for i, c in enumerate(completions):
        if len(completions) > 1:
            print(f"--- sample {i + 1} of {len(completions)} ---")
        print(shown + c.text)
        print(f"[finish: {c.finish_reason}]")
        rows = [("prompt", t) for t in c.prompt_tokens] + [("new", t) for t in c.tokens]
        if rows:
            print(f"{'':7}{'token':>14} {'logprob':>9}  top alternatives")
        for kind, t in rows:
            lp = "" if t.logprob is None else f"{t.logprob:9.4f}"
            alts = "  ".join(f"{a!r} {v:.3f}" for a, v in t.top)
            print(f"{kind:7}{t.token!r:>14} {lp:>9}  {alts}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from arlm.api import ChatSession

    if sys.stdin is None or sys.stdin.closed:
        raise UserError("chat reads your messages from standard input, which is closed; run it in a terminal or pipe "
                        "messages into it")
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 reach the text check, whatever the locale
        sys.stdin.reconfigure(errors="surrogateescape")
    controls = _decoding_controls(args)
    m = load_model(args, controls)
    session = ChatSession(m, system=args.system, template=args.chat_template, **controls)
    print(f"chatting with {m.info.path} ({m.block_size} tokens of context). "
          f"Commands: /reset, /save FILE, /system TEXT, /exit", file=sys.stderr)
    while True:
        try:
            line = input("you> " if sys.stdin.isatty() else "")
        except EOFError:
            break
        except OSError as e:  # e.g. standard input closed (not merely at its end)
            raise EnvironmentFailure(f"cannot read standard input: {e.strerror or e}") from None
        command, _, rest = line.strip().partition(" ")
        if not line.strip():
            continue
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
        elif command == "/save":
            if not rest.strip():
                print("usage: /save FILE.jsonl", file=sys.stderr)
                continue
            try:
                print(f"(saved {len(session.conversation())} messages to {session.save(rest.strip())})", file=sys.stderr)
            except (UserError, EnvironmentFailure) as e:
                print(f"(could not save: {e})", file=sys.stderr)
        elif command == "/system":
            session.system = rest.strip()
            print(f"(system prompt {'set' if session.system else 'removed'})", file=sys.stderr)
        elif command.startswith("/"):  # /help, or a mistyped command: not a message to send
            print("/reset: forget the conversation; /save FILE: write it as JSONL; /system TEXT: set the system "
                  "prompt; /exit: leave", file=sys.stderr)
        else:
            try:
                stream = session.send(line.strip())
                sys.stdout.write("bot> ")
                for piece in stream:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                sys.stdout.write("\n")
            except UserError as e:  # e.g. a message longer than the context: say so and go on
                print(f"\n(error: {e})", file=sys.stderr)
                continue
            if session.dropped:
                print(f"(context window full: the oldest {session.dropped} message(s) were left out of this reply's "
                      f"context)", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import socket

    import uvicorn

    from arlm.interop.hf import is_hf_dir
    from arlm.interop.load import model_config
    from arlm.io.checkpoint import open_checkpoint
    from arlm.serve.app import create_app
    from arlm.serve.gate import http_protocol
    from arlm.tokenizers import load_tokenizer
    from arlm.tokenizers.base import require_text

    opts = load_options(args)
    values = explicit_values(args, field_names(ServeConfig))
    values.setdefault("api_key", os.environ.get("ARLM_API_KEY", ""))
    cfg = validated(ServeConfig, values, "serve options", name_source=False)
    cfg.validate()
    model_config(opts.model)  # a missing or broken model folder fails now; the weights load in the background
    if not is_hf_dir(opts.model):  # and a model of images, not text
        require_text(load_tokenizer(open_checkpoint(opts.model).path))
    try:
        sock = socket.create_server((cfg.host, cfg.port), family=socket.AF_INET6 if ":" in cfg.host else socket.AF_INET)
    except OSError as e:
        raise UserError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror}); choose another --port "
                        f"(0: any free one)") from None
    host, port = sock.getsockname()[:2]
    app = create_app(cfg, model_path=opts.model, load_options=dict(device=opts.device, precision=opts.precision))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3, http=http_protocol()))
    app.state.server.on_failure = lambda: setattr(server, "should_exit", True)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"arlm serve: {url}/ (web page), {url}/v1 (OpenAI API), model '{app.state.server.model_name}'"
          + (", API key required" if cfg.api_key else ""), flush=True)
    server.run(sockets=[sock])
    if app.state.server.load_error:
        raise UserError(app.state.server.load_error)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from arlm.io.files import read_text_file

    from arlm.api import generate_config

    cfg = validated(EvalConfig, explicit_values(args, field_names(EvalConfig)), "eval options", name_source=False)
    load_options(args)
    generate_config(**{**EVAL_TASK_DEFAULTS, **explicit_values(args, list(EVAL_TASK_OPTIONS))})
    if cfg.task:
        return _eval_task(args, cfg)
    text = read_text_file(cfg.data, cfg.errors)
    m = load_model(args)
    result = m.evaluate(text, batch_size=cfg.batch_size, stride=cfg.stride)
    result.update(model=m.info.path, data=cfg.data)
    if args.json:
        emit_json(result)
    else:
        print(f"{cfg.data}: {result['tokens']:,} tokens, {result['characters']:,} characters")
        print(f"loss {result['loss']:.4f} nats/token | perplexity {result['perplexity']:.2f} | "
              f"{result['bits_per_char']:.4f} bits/char | {result['bits_per_byte']:.4f} bits/byte")
    return 0


def _eval_task(args: argparse.Namespace, cfg: EvalConfig) -> int:
    from arlm.eval.fewshot import is_choice_task
    from arlm.eval.tasks import check_examples, read_records
    from arlm.interop.load import model_head
    from arlm.io.outputs import JSONL, Output, claim_file

    head = model_head(load_options(args).model)
    if head is not None:
        return _eval_head(args, cfg, head)
    records = read_records(cfg.task, cfg.errors)
    if is_choice_task(records):
        return _eval_choices(args, cfg, records)
    examples = check_examples(records, cfg.task)
    if cfg.predictions_out:  # checked before anything is generated; an earlier predictions file may be replaced
        ours = Output(JSONL, "eval", keys=frozenset({"prompt", "prediction", "reference"}))
        claim_file(cfg.predictions_out, "--predictions-out", ours, inputs=[("task file", cfg.task)],
                   input_folders=[("model folder", load_options(args).model)], overwrite=cfg.overwrite)
    controls = {**EVAL_TASK_DEFAULTS, **explicit_values(args, list(EVAL_TASK_OPTIONS))}
    m = load_model(args, controls)
    scores, predictions = m.evaluate_task(examples, cfg.metric, cfg.batch_size, cfg.chat, cfg.few_shot,
                                          cfg.few_shot_seed, **controls)
    if cfg.predictions_out:
        atomic_write_text(cfg.predictions_out, "".join(
            json.dumps({"prompt": ex["prompt"], "prediction": p, "reference": ex["reference"]}, ensure_ascii=False) + "\n"
            for ex, p in zip(examples, predictions)))
    result = {"model": m.info.path, "task": cfg.task, "metric": cfg.metric, "examples": len(examples),
              "few_shot": cfg.few_shot, **scores}
    if args.json:
        emit_json(result)
        return 0
    if cfg.metric == "rouge":
        figure = " | ".join(f"{k.upper().replace('ROUGE', 'ROUGE-')} {scores[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL"))
    elif cfg.metric == "exact":
        figure = f"exact match {scores['exact']:.2f}% ({scores['matches']} of {len(examples)})"
    else:
        figure = f"{cfg.metric.upper() if cfg.metric == 'bleu' else 'chrF'} {scores[cfg.metric]:.2f} ({scores['signature']})"
    print(f"{cfg.task}: {len(examples)} examples{f', {cfg.few_shot}-shot' if cfg.few_shot else ''} | {figure}")
    if cfg.predictions_out:
        print(f"predictions: {cfg.predictions_out}")
    return 0


def _eval_choices(args: argparse.Namespace, cfg: EvalConfig, records: list) -> int:
    """eval --task for a multiple-choice file: each choice scored by its log-likelihood (acc, acc_norm)."""
    from arlm.eval.fewshot import check_shots, read_choice
    from arlm.io.outputs import JSONL, Output, claim_file

    given = [f"--{k.replace('_', '-')}" for k in explicit_values(args, ["metric", "chat", "stride", *EVAL_TASK_OPTIONS])]
    if given:
        raise UserError(f"{given[0]} does not apply to a multiple-choice task, scored by each choice's log-likelihood; "
                        f"drop it")
    examples = [read_choice(rec, f"{cfg.task} line {i + 1}") for i, rec in enumerate(records)]
    check_shots(cfg.few_shot, len(examples))
    if cfg.predictions_out:
        ours = Output(JSONL, "eval", keys=frozenset({"prompt", "prediction", "reference"}))
        claim_file(cfg.predictions_out, "--predictions-out", ours, inputs=[("task file", cfg.task)],
                   input_folders=[("model folder", load_options(args).model)], overwrite=cfg.overwrite)
    m = load_model(args)
    scores, predictions = m.evaluate_choices(records, cfg.few_shot, cfg.few_shot_seed, cfg.batch_size)
    if cfg.predictions_out:
        atomic_write_text(cfg.predictions_out, "".join(
            json.dumps({"prompt": ex["prompt"], "prediction": ex["choices"][p], "reference": ex["choices"][ex["answer"]]},
                       ensure_ascii=False) + "\n" for ex, p in zip(examples, predictions)))
    if args.json:
        emit_json({"model": m.info.path, "task": cfg.task, **scores})
        return 0
    print(f"{cfg.task}: {len(examples)} examples, {cfg.few_shot}-shot | acc {scores['acc']:.2f} | "
          f"acc_norm {scores['acc_norm']:.2f}")
    return 0


def _eval_head(args: argparse.Namespace, cfg: EvalConfig, head) -> int:
    """eval --task for a model with a task head: its labelled JSONL scored with the task's metrics."""
    from arlm.data.tasks import labels_of, read_task_examples
    from arlm.io.outputs import JSONL, Output, claim_file
    from arlm.model.heads import TASK_NAMES

    given = [f"--{k.replace('_', '-')}" for k in explicit_values(args, ["metric", "chat", "stride", *EVAL_TASK_OPTIONS])]
    if given:
        raise UserError(f"{given[0]} does not apply to a {TASK_NAMES[head.task]} head, which is scored by its task's "
                        f"metrics; drop it")
    examples = read_task_examples(cfg.task, head.task)
    labels_of(head.task, examples, head.labels, cfg.task)
    if cfg.predictions_out:
        ours = Output(JSONL, "eval", keys=frozenset({"prediction", "reference"}))
        claim_file(cfg.predictions_out, "--predictions-out", ours, inputs=[("task file", cfg.task)],
                   input_folders=[("model folder", load_options(args).model)], overwrite=cfg.overwrite)
    m = load_model(args)
    scores, records = m.evaluate_head(examples, cfg.batch_size)
    if cfg.predictions_out:
        atomic_write_text(cfg.predictions_out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    result = {"model": m.info.path, "task": cfg.task, "head": head.task, "examples": len(examples), **scores}
    if args.json:
        emit_json(result)
        return 0
    print(f"{cfg.task}: {len(examples)} examples | " + " | ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in scores.items()))
    if cfg.predictions_out:
        print(f"predictions: {cfg.predictions_out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from arlm.compress.quantize import describe, quantization_of
    from arlm.interop.hf import export_hf, is_hf_dir, load_hf
    from arlm.interop.load import load_model, save_model
    from arlm.io.outputs import claim_model_dir
    from arlm.io.paths import check_apart

    cfg = validated(ConvertConfig, explicit_values(args, field_names(ConvertConfig)), "convert options", name_source=False)
    source = cfg.from_hf or cfg.to_hf
    if not Path(source).is_dir():
        raise UserError(f"{source} is not a folder" if Path(source).exists() else f"model folder not found: {source}")
    check_apart(cfg.out, source)
    out = claim_model_dir(cfg.out, "--out", args.verb, cfg.overwrite)
    if cfg.from_hf:
        if not is_hf_dir(cfg.from_hf) and (Path(cfg.from_hf) / "config.json").is_file():
            raise UserError(f"{cfg.from_hf} is not a Hugging Face folder (its config.json has no model_type, or arlm "
                            f"wrote it); to export an arlm checkpoint use --to-hf")
        model, tokenizer, info = load_hf(cfg.from_hf)
        if tokenizer is None:
            raise UserError(f"{cfg.from_hf} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt); an arlm "
                            f"checkpoint needs one: copy its base model's tokenizer files into the folder")
        save_model(out, model, tokenizer, info)
        what = f"{info.source['model_type']} -> arlm checkpoint"
    else:
        model, tokenizer, info = load_model(cfg.to_hf)
        if tokenizer is None:
            raise UserError(f"{cfg.to_hf} has no tokenizer files; a Hugging Face folder needs one")
        if quantization_of(model) is not None:  # transformers has no layout for arlm's packed weights
            raise UserError(f"{cfg.to_hf} is quantized ({describe(quantization_of(model))}); a Hugging Face folder holds "
                            f"a float model: convert the model it was quantized from")
        export_hf(model, tokenizer, out, info)
        if model.config.type == "encoder":
            what = "arlm -> Hugging Face BERT (BertForMaskedLM) layout"
        elif model.config.type == "seq2seq":
            from arlm.interop.hf_seq2seq import hf_family

            what = f"arlm -> Hugging Face {hf_family(model.config)} layout"
        else:
            what = "arlm -> Hugging Face " + ("GPT-2" if model.config.pos_embedding == "learned" else "Llama") + " layout"
    mc = model.config
    summary = {"out": cfg.out, "conversion": what, "params": model.num_params(non_embedding=False),
               "n_layer": mc.n_layer, "n_embd": mc.n_embd, "vocab_size": mc.vocab_size}
    if args.json:
        emit_json(summary)
    else:
        print(f"{what}: {mc.n_layer} layers, {mc.n_embd} wide, {summary['params'] / 1e6:.2f}M parameters -> {cfg.out}")
    return 0


def encoder_path(out: str) -> Path:
    """Where an encoder-decoder's ONNX encoder goes: beside ``--out`` (m.onnx -> m.encoder.onnx)."""
    p = Path(out)
    return p.with_name(f"{p.stem if p.suffix == '.onnx' else p.name}.encoder.onnx")


def cmd_export(args: argparse.Namespace) -> int:
    from arlm.compress.quantize import describe, quantization_of
    from arlm.interop.load import load_model
    from arlm.io.outputs import GGUF, ONNX, Output, claim_file

    cfg = validated(ExportConfig, explicit_values(args, field_names(ExportConfig)), "export options", name_source=False)
    if not Path(cfg.model).exists():
        raise UserError(f"model folder not found: {cfg.model}")
    if cfg.format == "hf":
        return cmd_convert(argparse.Namespace(**{**vars(args), "to_hf": cfg.model, "from_hf": ""}))
    from arlm.interop.gguf import export_gguf, gguf_layout
    from arlm.interop.load import model_config, model_head
    from arlm.interop.onnx import export_onnx

    kind = GGUF if cfg.format == "gguf" else ONNX
    shape = model_config(cfg.model)
    head = model_head(cfg.model)
    if head is not None:
        raise UserError(f"{cfg.model} has a {head.task} head: it exports as a Hugging Face folder (--format hf), "
                        f"not {cfg.format.upper()}")
    encoder = None  # an encoder-decoder's ONNX encoder, written beside --out
    if cfg.format == "onnx" and shape.type == "seq2seq":
        encoder = encoder_path(cfg.out)
    target = claim_file(cfg.out, "--out", Output(kind, "export"), input_folders=[("model", cfg.model)],
                        overwrite=cfg.overwrite, replace_own=False,
                        companions=[(encoder, Output(kind, "export"))] if encoder else ())
    if cfg.format == "gguf":
        gguf_layout(shape)  # a shape GGUF cannot hold fails before the weights are read
    model, tokenizer, info = load_model(cfg.model, "cpu")
    if quantization_of(model) is not None:
        raise UserError(f"{cfg.model} is quantized ({describe(quantization_of(model))}); export its float model" +
                        (" and choose the GGUF type with --gguf-type q8_0 or q4_0" if cfg.format == "gguf" else ""))
    if cfg.format == "onnx":
        summary = export_onnx(model, target, encoder)
        line = f"ONNX opset {summary['opset']}, KV cache as inputs/outputs: {summary['bytes'] / 1e6:.2f} MB -> {cfg.out}"
        if encoder:
            line += f" (decoder step) + {encoder} (encoder)"
    else:
        if tokenizer is None:
            raise UserError(f"{cfg.model} has no tokenizer files; a GGUF file carries its tokenizer")
        summary = export_gguf(model, tokenizer, target, cfg.gguf_type, info.eos_token_ids)
        line = (f"{summary['layout']} layout, {summary['tensors']} tensors, {cfg.gguf_type}: {summary['bytes'] / 1e6:.2f} MB "
                f"-> {cfg.out}")
    if args.json:
        emit_json(summary)
    else:
        print(line)
    return 0


# ----------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="arlm",
        description="Autoregressive language models: prepare a corpus, train, fine-tune, evaluate, generate, chat.",
        epilog="Run `arlm VERB --help` for the options of each verb. Errors in your input exit with status 2.",
    )
    p.add_argument("--version", action="version", version=f"arlm {__version__}")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only print errors and results")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="print debugging information")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)

    sp = sub.add_parser("prepare", help="turn text files, folders or JSONL into a tokenizer and token shards",
                        description="Read a corpus, build a tokenizer (character-level or byte-level BPE), "
                                    "and write train.bin, val.bin, tokenizer.json and meta.json.")
    sp.add_argument("inputs", nargs="+", metavar="INPUT", help="text files, folders, glob patterns or .jsonl files")
    add_config_args(sp, PrepareConfig, skip=("inputs",))
    json_flag(sp)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("train", help="train a GPT (or the LSTM baseline) on prepared data, or resume a run",
                        description="Train a decoder-only Transformer (or, with --type lstm, the LSTM baseline). "
                                    "Options come from --config FILE.toml, then from these flags. "
                                    "`arlm train --resume OUT` continues a stopped run; under `torchrun` it trains "
                                    "data-parallel (DDP, or FSDP2 with --fsdp).")
    add_train_args(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("finetune", help="fine-tune a model (full or LoRA) on JSONL examples or a prepared corpus",
                        description="Continue training a model (an arlm checkpoint or a Hugging Face folder) on "
                                    "{prompt, completion} or chat {messages} examples (loss on completions and assistant "
                                    "turns only), or on a prepared corpus (continual training, with --replay-data to "
                                    "limit forgetting). --lora-rank R trains low-rank adapters instead of all weights. "
                                    "The same loop and options as `arlm train`, with fine-tuning defaults.")
    sp.add_argument("--model", dest="_model", default=None, metavar="DIR", help="the model to fine-tune (arlm checkpoint, training output "
                                                                  "or Hugging Face folder)")
    sp.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file with training keys")
    sp.add_argument("--dropout", dest="model.dropout", type=typed(float, "dropout"), default=argparse.SUPPRESS,
                    metavar="X", help="dropout while fine-tuning (default: the model's own)")
    add_config_args(sp, TrainConfig, skip=("model", "init_from", "preset"), defaults=FINETUNE_DEFAULTS)
    json_flag(sp)
    sp.set_defaults(func=cmd_finetune)

    sp = sub.add_parser("sweep", help="grid or random search over training/model keys, one training run per trial",
                        description="Train one run per combination of --param values (a grid) or per random draw "
                                    "(--trials N), over a base config; write OUT/results.csv sorted by validation loss.")
    sp.add_argument("--config", default=None, metavar="FILE.toml", help="base training config (TOML)")
    sp.add_argument("--data", default=None, metavar="DIR", help="prepared data folder (overrides the config's)")
    sp.add_argument("--out", required=True, metavar="DIR", help="folder for the trials (trial-NNN/) and results.csv")
    sp.add_argument("--param", action="append", default=[], metavar="KEY=VALUES",
                    help="a key to vary: KEY=V1,V2,... (grid), or a range KEY=A:B / KEY=log:A:B (with --trials); "
                         "model keys as model.KEY; repeat for several keys")
    sp.add_argument("--trials", type=int, default=0, metavar="N", help="random search: N trials drawn from the params (0: the full grid)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the random search's draws")
    sp.add_argument("--max-steps", type=int, default=None, metavar="N", help="steps per trial (overrides the config)")
    sp.add_argument("--max-minutes", type=float, default=None, metavar="X", help="time limit per trial (overrides the config)")
    sp.add_argument("--overwrite", action="store_true", help="replace an earlier sweep in --out")
    json_flag(sp)
    sp.set_defaults(func=cmd_sweep)

    sp = sub.add_parser("generate", help="generate text from a prompt, streamed",
                        description="Continue a prompt with a trained model, printing tokens as they come.")
    add_config_args(sp, LoadConfig)
    sp.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    add_config_args(sp, GenerateConfig)
    sp.add_argument("--json", action="store_true", help="print {prompt, completions} as one JSON object instead of streaming")
    sp.set_defaults(func=cmd_generate)

    sp = sub.add_parser("chat", help="chat with a model in the terminal (multi-turn, streamed)",
                        description="A multi-turn conversation with a (fine-tuned) model, through its chat template. "
                                    "The oldest turns leave the context when it is full (the system prompt stays). "
                                    "Commands: /reset, /save FILE, /system TEXT, /exit.")
    add_config_args(sp, LoadConfig)
    sp.add_argument("--system", default="", metavar="TEXT", help="system prompt, kept at the start of every context")
    sp.add_argument("--chat-template", default="", metavar="TEXT|FILE",
                    help="Jinja chat template (default: the model's own, else arlm's 'User: / Assistant:' one)")
    add_config_args(sp, GenerateConfig, skip=("num_return_sequences", "num_beams", "length_penalty", "early_stopping",
                                              "logprobs", "top_logprobs", "echo", "control"),
                    defaults=CHAT_DEFAULTS)
    sp.set_defaults(func=cmd_chat)

    sp = sub.add_parser("serve", help="an OpenAI-compatible HTTP server with a web page, for many users at once",
                        description="Serve a model over HTTP: /v1/completions, /v1/chat/completions, /v1/models "
                                    "(the OpenAI API, streamed or not), /health, /metrics (Prometheus), /tokenize, "
                                    "/detokenize, and a chat page at /. Requests decode together (continuous "
                                    "batching); binds 127.0.0.1 unless told otherwise.")
    add_config_args(sp, LoadConfig)
    add_config_args(sp, ServeConfig)
    sp.set_defaults(func=cmd_serve)

    sp = sub.add_parser("convert", help="Hugging Face checkpoint <-> arlm checkpoint",
                        description="--from-hf DIR: read a Hugging Face GPT-2 / Llama / Mistral / Qwen2 folder into an "
                                    "arlm checkpoint. --to-hf DIR: write an arlm model as a folder transformers loads "
                                    "(GPT-2 layout for learned positions, Llama layout for rotary ones). Any command "
                                    "that takes --model also reads Hugging Face folders directly.")
    add_config_args(sp, ConvertConfig)
    json_flag(sp)
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser("export", help="a model as a GGUF file (llama.cpp), an ONNX graph or a Hugging Face folder",
                        description="Write a float arlm model for another engine: --format gguf writes one file "
                                    "llama.cpp loads (GPT-2 or Llama layout, tokenizer included; weights f32, f16, "
                                    "q8_0 or q4_0); --format onnx a graph whose KV cache is an input and an output, "
                                    "for step-by-step decoding in ONNX Runtime (an encoder-decoder: the decoder step, "
                                    "and its encoder beside it as NAME.encoder.onnx); --format hf a folder transformers "
                                    "(and vLLM) loads.")
    add_config_args(sp, ExportConfig)
    json_flag(sp)
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("eval", help="perplexity on a text file, or BLEU/chrF/ROUGE/exact match on a task",
                        description="--data FILE: score every token of a UTF-8 text file (loss, perplexity, bits per "
                                    "character). --task FILE.jsonl: generate for each {prompt, reference} and score the "
                                    "predictions with sacrebleu (BLEU, chrF), rouge-score (ROUGE-1/2/L) or exact match.")
    add_config_args(sp, LoadConfig)
    add_config_args(sp, EvalConfig)
    group = sp.add_argument_group("task decoding options (--task)")
    add_config_args(group, GenerateConfig, only=EVAL_TASK_OPTIONS, defaults=EVAL_TASK_DEFAULTS)
    json_flag(sp)
    sp.set_defaults(func=cmd_eval)

    from arlm.cli import audio, compress, embed, image, inspect, probe, ts

    embed.add_verbs(sub)
    probe.add_verbs(sub)
    compress.add_verbs(sub)
    inspect.add_verbs(sub)
    ts.add_verbs(sub)
    image.add_verbs(sub)
    audio.add_verbs(sub)
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (it may be replaced after setup, e.g. by tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("arlm")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _check_flags(args: argparse.Namespace) -> None:
    """Every text flag is valid Unicode (undecodable bytes in argv become lone surrogates, PEP 383):
    one policy with files and the API (arlm/io/text.py)."""
    for key, value in vars(args).items():
        if isinstance(value, (str, list)) and not key.startswith("_"):
            check_strings(value, flag_name(key.split(".")[-1]))
        elif key == "_model" and value is not None:
            check_strings(value, "--model")


def _quiet_stdout() -> None:
    """Point stdout at /dev/null after it failed (a closed pipe, a full disk), so the interpreter's own
    flush at exit does not fail again with a second message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _printable_streams() -> None:
    """Text a stream's encoding cannot hold (a path or a prompt in a Latin-1 or ASCII locale) is printed
    escaped, \\u00e9, instead of failing after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (getattr(stream, "encoding", "") or "").lower().replace("-", "") != "utf8":
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _printable_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    name = " ".join(filter(None, (args.verb, getattr(args, f"{args.verb}_verb", None))))  # `ts fit`, as argparse says
    _setup_logging(args.quiet, args.verbose)
    if args.quiet and args.verb == "train" and not hasattr(args, "progress"):
        args.progress = False
    try:
        _check_flags(args)
        tune_allocator()  # arlm/allocator.py: freed tensors stay in the heap (no page faults every step)
        code = args.func(args)
        sys.stdout.flush()  # a full disk under stdout shows here, not at exit
        return code
    except UserError as e:
        print(f"arlm {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"arlm {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `arlm generate ... | head`: the reader has all it wanted
        _quiet_stdout()
        return 0
    except (EnvironmentFailure, OSError, MemoryError) as e:
        print(f"arlm {name}: error: {_environment_message(e)}", file=sys.stderr)
        if isinstance(e, OSError) and e.filename is None:
            _quiet_stdout()
        return 1
    except RuntimeError as e:  # the accelerator's out-of-memory error is a RuntimeError subclass
        if type(e).__name__ != "OutOfMemoryError":
            raise
        print(f"arlm {name}: error: out of GPU memory ({str(e).splitlines()[0][:120]}); lower the batch size or "
              f"the model size", file=sys.stderr)
        return 1


def _environment_message(e: BaseException) -> str:
    if isinstance(e, MemoryError):
        return "out of memory; lower the batch size, the model size or the number of sequences"
    if isinstance(e, OSError) and not isinstance(e, EnvironmentFailure):
        if e.filename is None:  # a stream: what arlm prints its results to
            return f"cannot write the output: {e.strerror or e}"
        return f"{e.filename}: {e.strerror or e}"
    return str(e)


if __name__ == "__main__":
    raise SystemExit(main())
