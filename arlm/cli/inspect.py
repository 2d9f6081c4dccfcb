"""``arlm inspect attention|tokens|lens|heads``: a look inside a GPT (arlm/inspect), as PNGs and tables."""

from __future__ import annotations

import argparse

import numpy as np

from arlm.cli.flags import add_verb, emit_json, load_model, load_options, options, verb_group
from arlm.config import MAX_ABLATION_TOKENS, InspectConfig, LoadConfig
from arlm.errors import UserError


def _setup(args: argparse.Namespace, needs: str):
    cfg = options(InspectConfig, args, "inspect options")
    if not getattr(cfg, needs):
        raise UserError({"text": "no text given: add --text TEXT", "data": "no data given: add --data FILE (UTF-8 text)",
                         "out": "no output given: add --out FILE.png"}[needs])
    return cfg


def _output(args: argparse.Namespace, cfg: InspectConfig, verb: str, inputs: list[tuple[str, str]]):
    """--out, checked before the model loads: never inside the model folder or an input, and an existing
    file only if it is this verb's own plot (or a PNG, with --overwrite)."""
    from arlm.io.outputs import PNG, Output, claim_file

    if not cfg.out:
        raise UserError("no output given: add --out FILE.png")
    return claim_file(cfg.out, "--out", Output(PNG, verb), inputs=inputs,
                      input_folders=[("model folder", load_options(args).model)], overwrite=cfg.overwrite)


def _text_model(args: argparse.Namespace):
    """The model, refused by name unless it reads text (an image, audio or series model has no --text)."""
    from arlm.tokenizers.base import require_text

    lm = load_model(args)
    lm.require_language_model()
    require_text(lm.tokenizer)
    return lm


def _pieces(lm, ids: list[int]) -> list[str]:
    return [lm.tokenizer.decode([i]) for i in ids]


def cmd_attention(args: argparse.Namespace) -> int:
    from arlm.inspect import attention
    from arlm.viz.attention import attention_grid

    cfg = _setup(args, "text")
    out = _output(args, cfg, "inspect attention", [])
    lm = _text_model(args)
    ids = lm.tokenizer.encode(cfg.text)
    maps = attention(lm.model, ids)
    L, H = maps.shape[:2]
    for name, value, limit in (("--layer", cfg.layer, L), ("--head", cfg.head, H)):
        if value >= limit:
            raise UserError(f"{name} {value} is out of range: the model has {limit} ({name[2:]}s 0..{limit - 1})")
    layers = list(range(L)) if cfg.layer < 0 else [cfg.layer]
    heads = list(range(H)) if cfg.head < 0 else [cfg.head]
    attention_grid(maps, _pieces(lm, ids), out, layers, heads)
    if args.json:
        emit_json({"out": str(out), "tokens": _pieces(lm, ids), "shape": list(maps.shape)})
    else:
        print(f"attention of {len(layers)} layer(s) x {len(heads)} head(s) over {len(ids)} tokens -> {cfg.out}")
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    from arlm.inspect import token_report

    cfg = _setup(args, "text")
    lm = _text_model(args)
    ids = lm.tokenizer.encode(cfg.text)
    rows = token_report(lm.model, ids, cfg.top)
    word = lambda i: repr(lm.tokenizer.decode([i]))  # noqa: E731
    for r in rows:
        r["token"] = lm.tokenizer.decode([r["id"]])
        r["surprising"] = bool(np.exp(r["logprob"]) < cfg.threshold)
        r["top"] = [{"id": i, "token": lm.tokenizer.decode([i]), "logprob": v} for i, v in r["top"]]
    if args.json:
        emit_json({"tokens": rows, "threshold": cfg.threshold})
        return 0
    print(f"{'pos':>4} {'token':>10} {'prob':>7} {'rank':>5}  top {cfg.top}")
    for r in rows:
        alts = "  ".join(f"{word(a['id'])} {np.exp(a['logprob']):.2f}" for a in r["top"])
        flag = " <- surprising" if r["surprising"] else ""
        print(f"{r['position']:>4} {word(r['id']):>10} {np.exp(r['logprob']):7.3f} {r['rank']:>5}  {alts}{flag}")
    nll = -sum(r["logprob"] for r in rows) / len(rows)
    print(f"mean: {nll:.4f} nats/token; {sum(r['surprising'] for r in rows)} of {len(rows)} tokens below probability "
          f"{cfg.threshold}")
    return 0


def cmd_lens(args: argparse.Namespace) -> int:
    from arlm.inspect import logit_lens

    cfg = _setup(args, "text")
    lm = _text_model(args)
    ids = lm.tokenizer.encode(cfg.text)
    logp = logit_lens(lm.model, ids)  # (L + 1, T, V)
    top = np.argsort(-logp, axis=-1)[..., :cfg.top]
    names = ["embedding"] + [f"block {i}" for i in range(logp.shape[0] - 2)] + ["output"]
    if args.json:
        emit_json({"tokens": _pieces(lm, ids), "layers": names,
                   "top": [[[{"token": lm.tokenizer.decode([int(i)]), "logprob": float(logp[layer, t, i])}
                             for i in top[layer, t]] for t in range(len(ids))] for layer in range(len(names))]})
        return 0
    shown = list(range(max(0, len(ids) - 12), len(ids)))  # the last positions fit a terminal
    print(f"{'':>10}" + "".join(f"{repr(lm.tokenizer.decode([ids[t]]))[:8]:>9}" for t in shown) + "   <- input token")
    for layer, name in enumerate(names):
        cells = "".join(f"{repr(lm.tokenizer.decode([int(top[layer, t, 0])]))[:8]:>9}" for t in shown)
        print(f"{name:>10}{cells}")
    print("each cell: the next token the residual stream after that layer predicts (final norm and output layer applied)")
    return 0


def cmd_heads(args: argparse.Namespace) -> int:
    from arlm.inspect import head_ablation
    from arlm.io.files import read_text_file
    from arlm.viz.attention import head_heatmap

    cfg = _setup(args, "data")
    out = _output(args, cfg, "inspect heads", [("--data", cfg.data)]) if cfg.out else None
    lm = _text_model(args)
    ids = np.asarray(lm.tokenizer.encode(read_text_file(cfg.data)), dtype=np.int64)
    if not cfg.max_tokens and len(ids) > MAX_ABLATION_TOKENS:
        raise UserError(f"{cfg.data} has {len(ids):,} tokens; head ablation reads at most {MAX_ABLATION_TOKENS:,} "
                        f"(one pass over them per head, and one more): give --max-tokens")
    ids = ids[:cfg.max_tokens] if cfg.max_tokens else ids
    base, rise = head_ablation(lm.model, ids)
    if out is not None:
        head_heatmap(rise, base, out)
    if args.json:
        emit_json({"base_loss": base, "rise": rise.tolist(), "tokens": int(len(ids)), "out": str(out) if out else None})
        return 0
    L, H = rise.shape
    print(f"loss {base:.4f} nats/token on {len(ids):,} tokens; rise with each head ablated:")
    print(f"{'':>8}" + "".join(f"{'head ' + str(h):>9}" for h in range(H)))
    for layer in range(L):
        print(f"{'layer ' + str(layer):>8}" + "".join(f"{rise[layer, h]:+9.4f}" for h in range(H)))
    if out is not None:
        print(f"heatmap -> {cfg.out}")
    return 0


def add_verbs(sub) -> None:
    verbs = verb_group(sub, "inspect", "look inside a GPT: attention maps, token probabilities, logit lens, heads",
                       "Read a GPT through hooks: attention maps per layer and head, each token's probability and "
                       "rank with the alternatives, the logit lens (what each layer's residual stream predicts), and "
                       "the loss with each attention head ablated. The Python API (arlm.inspect) returns the arrays.")
    for name, func, help in (
        ("attention", cmd_attention, "per layer/head attention heatmaps of --text, token-labelled, to --out PNG"),
        ("tokens", cmd_tokens, "each token's probability, rank and top alternatives; surprising ones flagged"),
        ("lens", cmd_lens, "the logit lens: what the residual stream after each layer predicts, per position"),
        ("heads", cmd_heads, "the loss on --data with each attention head ablated: a table and (--out) a heatmap"),
    ):
        add_verb(verbs, name, func, help, LoadConfig, InspectConfig)
