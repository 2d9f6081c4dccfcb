"""The command line's flags, generated from the config dataclasses of arlm/config.py, its argument
parser (one-line errors), and what every verb group does alike (arlm/cli/__init__.py, image.py, audio.py,
ts.py): read a config from the flags, load the --model, add a group of verbs."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
import typing
from typing import Any

from arlm.config import MODEL_CONFIGS, GPTConfig, LoadConfig, TrainConfig, apply_preset, field_types, from_dict, validated
from arlm.io.files import read_toml


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_args(parser: argparse.ArgumentParser, cls, prefix: str = "", skip: tuple[str, ...] = (),
                    defaults: dict[str, Any] | None = None, only: tuple[str, ...] | None = None) -> None:
    """Add one flag per field of config dataclass ``cls`` (nested dataclasses become their own group;
    the model table takes every model type's fields: :func:`model_fields`); ``defaults`` replaces the
    dataclass's in the help text (a verb that applies its own, e.g. finetune); ``only`` limits the fields."""
    types = field_types(cls)
    instance = cls()
    fields = model_fields() if cls is GPTConfig else dataclasses.fields(cls)
    for f in fields:
        if f.name in skip or (only is not None and f.name not in only):
            continue
        if f.name not in types:  # another model type's field (the encoder-decoder's)
            types[f.name] = field_types(owner(f.name))[f.name]
        tp = types[f.name]
        if dataclasses.is_dataclass(tp) or f.name == "model" and cls is TrainConfig:
            group = parser.add_argument_group(f"{f.name} options ([{f.name}] table in a TOML config)")
            add_config_args(group, GPTConfig if f.name == "model" else tp, prefix=f"{prefix}{f.name}.")
            continue
        default = (defaults or {}).get(f.name, getattr(instance if hasattr(instance, f.name)
                                                       else _model_defaults()[owner(f.name)], f.name))
        help_text = f.metadata.get("help", "")
        if default not in ("", None, []) and not isinstance(default, bool):
            help_text += f" (default: {default})"
        if cls is GPTConfig and not defaults:
            help_text += other_defaults(f.name, default)
        kw: dict[str, Any] = dict(dest=prefix + f.name, default=argparse.SUPPRESS, help=help_text)
        if "choices" in f.metadata:
            kw["choices"] = [c for c in f.metadata["choices"] if c != ""]
        origin = typing.get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
            kw["help"] = help_text + f" (default: {'on' if default else 'off'})"
        elif origin is list:
            kw.update(action="append", metavar="TEXT", type=typing.get_args(tp)[0])
        else:
            if origin is not None:  # Optional[X]
                tp = [a for a in typing.get_args(tp) if a is not type(None)][0]
            metavar = f.metadata.get("metavar") or {int: "N", float: "X", str: "TEXT"}.get(tp, "VALUE")
            kw.update(type=typed(tp, f.name), metavar=None if "choices" in kw else metavar)
        parser.add_argument(flag_name(f.name), **kw)


@functools.cache
def _model_defaults() -> dict[type, Any]:
    """One default instance of each model config (the parser asks for their defaults field by field)."""
    return {c: c() for c in MODEL_CONFIGS.values()}


def owner(name: str):
    """The first model config (GPT, LSTM, encoder-decoder) with field ``name``."""
    return next(c for c, d in _model_defaults().items() if hasattr(d, name))


def other_defaults(name: str, default: Any) -> str:
    """Where another model type defaults field ``name`` differently: " (seq2seq: relative)"."""
    first = owner(name)
    others = [f"{d.type}: {getattr(d, name)}" for c, d in _model_defaults().items()
              if name != "type" and c is not first and hasattr(d, name) and getattr(d, name) != default]
    return f" ({'; '.join(others)})" if others else ""


def model_fields() -> list[dataclasses.Field]:
    """Every model type's fields once (a GPT's first, then those only another type has), each shared
    field's ``choices`` the union of every type's, so that ``--pos-embedding relative`` parses and the
    model type's own config then checks the value (``--type seq2seq`` takes T5's relative positions)."""
    out: dict[str, dataclasses.Field] = {}
    for cls in MODEL_CONFIGS.values():
        for f in dataclasses.fields(cls):
            if f.name not in out:
                out[f.name] = f
            elif "choices" in f.metadata and "choices" in out[f.name].metadata:
                merged = list(dict.fromkeys([*out[f.name].metadata["choices"], *f.metadata["choices"]]))
                out[f.name] = dataclasses.field(metadata={**out[f.name].metadata, "choices": merged})
                out[f.name].name = f.name
    return list(out.values())


def typed(tp, name: str):
    def convert(text: str):
        try:
            value = tp(text)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(tp, tp.__name__)
            raise argparse.ArgumentTypeError(f"{flag_name(name)} must be {kind}, got {text!r}") from None
        if tp is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag_name(name)} must be a finite number, got {text!r}")
        return value

    convert.__name__ = tp.__name__
    return convert


def explicit_values(ns: argparse.Namespace, names: list[str] | None = None) -> dict[str, Any]:
    """The flags the user gave, as a nested dict ("model.n_layer" -> {"model": {"n_layer": ...}})."""
    out: dict[str, Any] = {}
    for key, value in vars(ns).items():
        if key.startswith("_") or (names is not None and key.split(".")[0] not in names):
            continue
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# ----------------------------------------------------------------------------------------------
# output helpers


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as null: JSON has no such numbers, and strict parsers refuse Python's NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def emit_json(obj: dict[str, Any]) -> None:
    """The figures as one JSON object on one line (a figure that is not a finite number is null)."""
    print(json.dumps(_finite(obj), ensure_ascii=False, default=str, allow_nan=False))


def fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as every other refusal (argparse prints the whole usage), and
    which reads ``-1e-3`` as a number, not an unknown option (its own test misses exponents)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")




def options(cls, args: argparse.Namespace, what: str):
    """Config ``cls`` from the flags the user gave, type-checked and validated (one line on a bad value)."""
    return validated(cls, explicit_values(args, field_names(cls)), what, name_source=False)


def load_options(args: argparse.Namespace) -> LoadConfig:
    return options(LoadConfig, args, "model options")


def load_model(args: argparse.Namespace, controls: dict[str, Any] | None = None):
    """The model of ``--model``, once its options and the decoding ``controls`` have been checked."""
    from arlm.api import generate_config, load

    opts = load_options(args)
    if controls is not None:
        generate_config(**controls)  # bad options fail before the model is loaded
    return load(opts.model, device=opts.device, precision=opts.precision)


def json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line of stdout")


def add_verb(verbs, name: str, func, help: str, *configs, json: bool = True, description: str | None = None,
             skip: tuple[str, ...] = ()):
    """One verb: its flags from each config class of ``configs`` in turn, ``--json`` unless told not, and
    the function it runs. Returns its parser (for arguments of its own)."""
    sp = verbs.add_parser(name, help=help, description=description)
    for cls in configs:
        add_config_args(sp, cls, skip=skip)
    if json:
        json_flag(sp)
    sp.set_defaults(func=func)
    return sp


def add_train_args(sp: argparse.ArgumentParser) -> None:
    """The flags of ``arlm train`` (and of the verbs that are ``arlm train`` on a modality's data)."""
    sp.add_argument("--config", default=None, metavar="FILE.toml", help="TOML file with training keys and a [model] table")
    add_config_args(sp, TrainConfig)
    json_flag(sp)


def verb_group(sub, name: str, help: str, description: str):
    """``arlm NAME VERB ...``: a verb with verbs of its own; returns their subparsers."""
    p = sub.add_parser(name, help=help, description=description)
    return p.add_subparsers(dest=f"{name}_verb", metavar="VERB", required=True, parser_class=type(p))


def read_train_toml(args: argparse.Namespace) -> dict[str, Any]:
    """The --config file's keys, checked on their own first so that an error names the file."""
    config = read_toml(args.config) if args.config else {}
    if config:
        from_dict(TrainConfig, apply_preset(config), args.config)
    return config


def report_training(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    if summary.get("rank", 0):  # under torchrun only the main process reports
        return 0
    if args.json:
        emit_json(summary)
        return 0
    print(f"{summary['status']}: {summary['step']} steps, {summary['tokens']:,} tokens, "
          f"{summary['train_seconds']:.1f}s, {summary['tokens_per_s']:,.0f} tokens/s, MFU {summary['mfu']:.0%} of "
          f"{summary['peak_flops'] / 1e9:,.0f} GFLOP/s ({summary['device']}, {summary['dtype']})")
    if "val_loss" in summary and summary.get("val_unit") == "label":  # a task head: no perplexity to speak of
        print(f"validation (whole split, {summary['val_tokens']:,} labels): loss {fmt(summary['val_loss'])} nats/label")
    elif "val_loss" in summary:
        print(f"validation (whole split, {summary['val_tokens']:,} tokens): loss {fmt(summary['val_loss'])} nats/token, "
              f"perplexity {fmt(summary['val_ppl'], 2)}")
    print(f"checkpoints: {summary['best']} (best), {summary['latest']} (latest)" +
          (f"; curve: {summary['plot']}" if "plot" in summary else ""))
    return 0
