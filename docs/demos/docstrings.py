"""Code summarisation pairs from the installed Python standard library (docs/seq2seq.md, demo 2):
each function or method that has a docstring becomes {source: its code without the docstring,
target: the docstring's first line}.

    python docs/demos/docstrings.py --out runs/demos/docstrings.jsonl --task-out runs/demos/docstrings-task.jsonl \
        --text-out runs/demos/docstrings-train.txt
    arlm prepare runs/demos/docstrings-train.txt --tokenizer bpe --vocab-size 2048 --out runs/data/docstrings-bpe
    python docs/demos/docstrings.py --out runs/demos/docstrings.jsonl --task-out runs/demos/docstrings-task.jsonl \
        --tokenizer runs/data/docstrings-bpe --max-source-tokens 256

The split is by module (a top-level module or package of the library: ``email`` holds ``email/*.py``),
so that no module is on both sides: a module is held out when the first byte of the MD5 of its name
is below --held-out-share x 256 (stable across machines and Python versions). Test suites
(``test/``, ``tests/``, ``idle_test/``), ``lib2to3`` fixers' data and ``site-packages`` are skipped.
Sources are cut to --max-chars characters at a line end, and held-out ones, with --tokenizer (the BPE
built from the first run's --text-out, the training pairs' text only), to --max-source-tokens tokens at
a line end, so that every prompt fits the encoder (the training loader cuts a longer training source
itself); targets of fewer than 3 words or more than --max-target characters,
and functions whose body is only their docstring, are left out.

The task file has {prompt, reference, name}; the lead baseline printed at the end is the function's
name split into words (``get_filename`` -> "get filename", ``readLine`` -> "read line"), scored with
ROUGE-L as `arlm eval --task ... --metric rouge` scores a model.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sysconfig
import warnings
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "data"}


def module_of(path: Path, root: Path) -> str:
    """The top-level module a file belongs to: ``email/mime/text.py`` -> ``email``; ``os.py`` -> ``os``."""
    first = path.relative_to(root).parts[0]
    return first.removesuffix(".py")


def held_out(module: str, share: float) -> bool:
    return hashlib.md5(module.encode()).digest()[0] < share * 256


def first_line(doc: str) -> str:
    for line in doc.strip().splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""


def without_docstring(text: str, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The function's source with its docstring statement removed (None when nothing else is left)."""
    lines = text.splitlines()
    doc = fn.body[0]
    if len(fn.body) == 1:
        return None
    start = (fn.decorator_list[0].lineno if fn.decorator_list else fn.lineno) - 1
    kept = lines[start:doc.lineno - 1] + lines[doc.end_lineno:fn.end_lineno]
    indent = min(len(ln) - len(ln.lstrip()) for ln in kept if ln.strip())
    return "\n".join(ln[indent:] for ln in kept if ln.strip())


def cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:text.rfind("\n", 0, limit) if "\n" in text[:limit] else limit]


def fit(text: str, tokenizer, limit: int) -> str:
    """``text`` cut at the last line end where it is at most ``limit`` tokens (at least its first line)."""
    lines = text.split("\n")
    while len(lines) > 1 and len(tokenizer.encode("\n".join(lines))) > limit:
        lines.pop()
    return "\n".join(lines)


def name_words(name: str) -> str:
    """``_get_fileName2`` -> "get file name 2": the lead baseline's summary."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name.strip("_"))
    return " ".join(w.lower() for w in re.split(r"[_\s]+", name) if w)


def pairs(root: Path, max_chars: int, max_target: int) -> list[dict]:
    out = []
    for path in sorted(root.rglob("*.py")):
        if SKIP_DIRS & set(path.relative_to(root).parts[:-1]) or "lib2to3" in path.parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old modules
                tree = ast.parse(text)
        except (UnicodeDecodeError, SyntaxError):
            continue
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(fn)
            target = first_line(doc) if doc else ""
            if len(target.split()) < 3 or len(target) > max_target:
                continue
            source = without_docstring(text, fn)
            if source:
                out.append({"source": cut(source, max_chars), "target": target, "name": fn.name,
                            "module": module_of(path, root)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSONL {source, target} of the training modules")
    p.add_argument("--task-out", required=True, help="JSONL {prompt, reference, name} of the held-out modules")
    p.add_argument("--text-out", help="the training pairs' text, for `arlm prepare --tokenizer bpe`")
    p.add_argument("--held-out-share", type=float, default=0.1)
    p.add_argument("--max-chars", type=int, default=600, help="longest source kept (cut at a line end)")
    p.add_argument("--max-target", type=int, default=120, help="longest first line kept")
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"])
    p.add_argument("--tokenizer", help="a tokenizer folder: cut sources to --max-source-tokens of it")
    p.add_argument("--max-source-tokens", type=int, default=256)
    args = p.parse_args()
    rows = pairs(Path(args.stdlib), args.max_chars, args.max_target)
    if args.tokenizer:
        from arlm.tokenizers import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
        for r in rows:  # the held-out ones (training sources too long are cut by `arlm train`, which says so)
            if held_out(r["module"], args.held_out_share):
                r["source"] = fit(r["source"], tok, args.max_source_tokens)
    train = [r for r in rows if not held_out(r["module"], args.held_out_share)]
    task = [r for r in rows if held_out(r["module"], args.held_out_share)]
    with open(args.out, "w", encoding="utf-8") as f:
        for r in train:
            f.write(json.dumps({"source": r["source"], "target": r["target"]}, ensure_ascii=False) + "\n")
    with open(args.task_out, "w", encoding="utf-8") as f:
        for r in task:
            f.write(json.dumps({"prompt": r["source"], "reference": r["target"], "name": r["name"]},
                               ensure_ascii=False) + "\n")
    if args.text_out:
        Path(args.text_out).write_text("\n\n".join(f"{r['source']}\n{r['target']}" for r in train), encoding="utf-8")
    modules = sorted({r["module"] for r in task})
    print(f"{len(train)} pairs from {len({r['module'] for r in train})} modules -> {args.out}")
    print(f"{len(task)} held-out pairs from {len(modules)} modules ({', '.join(modules[:12])}"
          f"{', ...' if len(modules) > 12 else ''}) -> {args.task_out}")
    from arlm.eval.tasks import score

    lead = score("rouge", [name_words(r["name"]) for r in task], [r["target"] for r in task])
    print("lead baseline (the name's words): " + ", ".join(f"{k} {lead[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL")))


if __name__ == "__main__":
    main()
