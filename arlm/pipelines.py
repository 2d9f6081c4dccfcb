"""``arlm.pipeline(task, model=DIR)``: transformers' pipelines on arlm's models, with their task names,
defaults and return shapes, so that code written for ``transformers.pipeline`` runs unchanged::

    clf = arlm.pipeline("text-classification", model="runs/genre")
    clf("Enter Hamlet, reading.")          # [{'label': 'tragedy', 'score': 0.71}]

Tasks, and what each needs of the model:

* ``text-generation`` (a decoder-only language model): ``[{"generated_text": prompt + continuation}]``,
  or for chat messages the conversation with the assistant's reply appended;
* ``text-classification`` / ``sentiment-analysis`` (a ``classify`` head): ``[{"label", "score"}]``;
* ``token-classification`` / ``ner`` (an ``ner`` head): one dict per token, ``O`` dropped, or per
  entity with ``aggregation_strategy`` simple, first, average or max (transformers' rules);
* ``question-answering`` (a ``qa`` head): ``{"score", "start", "end", "answer"}``, the shape of
  transformers 4 (version 5 removed this pipeline);
* ``summarization``, ``translation`` (``translation_xx_to_yy``), ``text2text-generation`` (an
  encoder-decoder): ``[{"summary_text" | "translation_text" | "generated_text": ...}]``;
* ``feature-extraction`` (any Transformer): each token's final hidden state, nested lists (1, T, C).

* ``fill-mask`` (a masked-language-model encoder, BERT): for each mask, the ``top_k`` (5) tokens
  ``{"score", "token", "token_str", "sequence"}``, best first (a list per mask when there are several).

Batches of inputs run together: generation on the one engine, the others in batches of ``batch_size``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arlm.api import LanguageModel, load
from arlm.errors import UserError
from arlm.eval.embed import check_features, token_states
from arlm.eval.heads import answer, classify_logits, tag_tokens
from arlm.io.text import check_text
from arlm.model.heads import TASK_NAMES

TASKS = ("text-generation", "text-classification", "token-classification", "question-answering", "fill-mask",
         "summarization", "translation", "text2text-generation", "feature-extraction")
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
HEADS = {"text-classification": "classify", "token-classification": "ner", "question-answering": "qa"}
SEQ2SEQ_KEYS = {"summarization": "summary_text", "translation": "translation_text", "text2text-generation": "generated_text"}
AGGREGATIONS = ("none", "simple", "first", "average", "max")
MAX_INPUTS = 100_000  # inputs in one call (each is held in memory with its results)


def task_name(task: Any) -> str:
    """transformers' name of ``task`` (aliases and ``translation_xx_to_yy`` resolved)."""
    if not isinstance(task, str):
        raise UserError(f"task must be a pipeline name such as 'text-classification', got {type(task).__name__}")
    if task.startswith("translation_") and "_to_" in task:
        return "translation"
    name = ALIASES.get(task, task)
    if name not in TASKS:
        raise UserError(f"unknown pipeline task {task!r}; choose one of: {', '.join(TASKS + tuple(ALIASES))}")
    return name


def pipeline(task: str, model: str | Path | LanguageModel, device: str | None = None, precision: str | None = None,
             batch_size: int = 8, **options) -> "Pipeline":
    """A callable for ``task`` over ``model`` (a folder arlm loads, or a loaded :class:`LanguageModel`);
    ``options`` are the task's call options, given once (each call may override them)."""
    name = task_name(task)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(model, LanguageModel):
        if device is not None or precision is not None:
            raise UserError("device and precision apply when the pipeline loads the model; this one is loaded already")
        lm = model
    elif isinstance(model, (str, Path)):
        lm = load(model, **{k: v for k, v in (("device", device), ("precision", precision)) if v is not None})
    else:
        raise UserError(f"model must be a model folder or an arlm.load(...) result, got {type(model).__name__}")
    cls = {"text-generation": TextGeneration, "text-classification": TextClassification,
           "token-classification": TokenClassification, "question-answering": QuestionAnswering,
           "feature-extraction": FeatureExtraction, "fill-mask": FillMask}.get(name, Text2Text)
    return cls(lm, name, batch_size, options)


class Pipeline:
    """One task over one model: ``pipe(inputs, **options)``."""

    def __init__(self, lm: LanguageModel, task: str, batch_size: int, options: dict[str, Any]):
        self.lm, self.task, self.batch_size = lm, task, batch_size
        self.model = lm.model
        self.check_model()
        self.options = dict(options)
        self.settings(self.options)  # bad options are refused now, not at the first call

    def check_model(self) -> None:
        head = self.lm.info.head
        want = HEADS.get(self.task)
        if want is not None and (head is None or head.task != want):
            has = f"a {TASK_NAMES[head.task]} head" if head else "no task head"
            raise UserError(f"{self.task} needs a model with a {TASK_NAMES[want]} head; "
                            f"{self.lm.info.path or 'this model'} has {has}"
                            + ("" if head else f": fine-tune one with `arlm finetune --task {want}`"))
        if self.lm.tokenizer is None:
            raise UserError(f"{self.lm.info.path or 'this model'} has no tokenizer files (tokenizer.json, or "
                            f"vocab.json + merges.txt): copy its base model's tokenizer files into the folder")

    def settings(self, options: dict[str, Any]) -> dict[str, Any]:
        """The call's options, checked; unknown names are refused."""
        if options:
            raise UserError(f"unknown {self.task} option(s): {', '.join(sorted(options))}")
        return {}

    def __call__(self, inputs: Any = None, **options) -> Any:
        opts = self.settings({**self.options, **options})
        return self.run(inputs, opts, options)

    def run(self, inputs: Any, opts: dict[str, Any], given: dict[str, Any]) -> Any:
        single, texts = texts_of(inputs)
        results = self.texts(texts, opts)
        return results[0] if single else results

    def texts(self, texts: list[str], opts: dict[str, Any]) -> list[Any]:
        raise NotImplementedError


def texts_of(inputs: Any, what: str = "inputs") -> tuple[bool, list[str]]:
    """(one text was given, the texts), checked."""
    if isinstance(inputs, str):
        return True, [check_text(inputs, what)]
    if not isinstance(inputs, (list, tuple)) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise UserError(f"{what} must be a string or a non-empty list of strings")
    if len(inputs) > MAX_INPUTS:
        raise UserError(f"{len(inputs)} inputs in one call; the limit is {MAX_INPUTS}: split them into several calls")
    return False, [check_text(t, f"{what}[{i}]") for i, t in enumerate(inputs)]


def _int(options: dict[str, Any], name: str, default: int | None, low: int, none_ok: bool = False) -> int | None:
    value = options.pop(name, default)
    if value is None and none_ok:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UserError(f"{name} must be an integer >= {low}" + (" or None" if none_ok else "") + f", got {value!r}")
    return value


def _bool(options: dict[str, Any], name: str, default: bool | None) -> bool | None:
    value = options.pop(name, default)
    if value is not default and not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, got {value!r}")
    return value


def _choice(options: dict[str, Any], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = options.pop(name, default)
    value = value.lower() if isinstance(value, str) else value
    if value not in choices:
        raise UserError(f"{name} must be one of: {', '.join(choices)}; got {value!r}")
    return value


class TextClassification(Pipeline):
    """Scores of a ``classify`` head: softmax over the labels unless ``function_to_apply`` says sigmoid
    or none; ``top_k`` (default 1; None: every label, best first)."""

    def settings(self, options):
        options = dict(options)
        out = {"top_k": _int(options, "top_k", 1, 1, none_ok=True),
               "function_to_apply": _choice(options, "function_to_apply", "softmax", ("softmax", "sigmoid", "none"))}
        super().settings(options)
        return out

    def run(self, inputs, opts, given):
        opts["legacy"] = "top_k" not in {**self.options, **given}
        single, texts = texts_of(inputs)
        results = self.texts(texts, opts)
        if single and opts["legacy"]:
            return [results[0]]  # transformers' shape for one text without top_k
        return results[0] if single else results

    def texts(self, texts, opts):
        logits = classify_logits(self.model, self.lm.tokenizer, texts, self.batch_size)
        f = opts["function_to_apply"]
        scores = torch.softmax(logits, -1) if f == "softmax" else torch.sigmoid(logits) if f == "sigmoid" else logits
        labels = self.model.labels
        out = []
        for row in scores.tolist():
            ranked = sorted(({"label": labels[i], "score": s} for i, s in enumerate(row)), key=lambda d: -d["score"])
            out.append(ranked[0] if opts["legacy"] else ranked[:opts["top_k"] or len(ranked)])
        return out


class TokenClassification(Pipeline):
    """Labels of an ``ner`` head per token, or per entity with ``aggregation_strategy``; labels in
    ``ignore_labels`` (default ``["O"]``) are left out."""

    def settings(self, options):
        options = dict(options)
        ignore = options.pop("ignore_labels", ["O"])
        if not isinstance(ignore, (list, tuple)) or not all(isinstance(x, str) for x in ignore):
            raise UserError(f"ignore_labels must be a list of label names, got {ignore!r}")
        out = {"aggregation_strategy": _choice(options, "aggregation_strategy", "none", AGGREGATIONS),
               "ignore_labels": set(ignore)}
        super().settings(options)
        return out

    def texts(self, texts, opts):
        out = []
        for text, (ids, offsets, probs) in zip(texts, tag_tokens(self.model, self.lm.tokenizer, texts, self.batch_size)):
            tokens = self.pre_entities(text, ids, offsets, probs)
            strategy = opts["aggregation_strategy"]
            entities = self.per_token(tokens) if strategy in ("none", "simple") else self.per_word(tokens, strategy)
            if strategy != "none":
                entities = self.groups(entities)
            ignore = opts["ignore_labels"]
            out.append([{k: v for k, v in e.items() if k != "ids"} for e in entities
                        if e.get("entity", e.get("entity_group")) not in ignore])
        return out

    def pre_entities(self, text: str, ids: list[int], offsets, probs: torch.Tensor) -> list[dict[str, Any]]:
        """Each token with its piece of the vocabulary, span and probabilities; ``subword`` when it
        continues a word. A tokenizer that marks word-continuing pieces (WordPiece's ``##``) says so;
        otherwise a token continues a word when no space borders its start (transformers' heuristic)."""
        inner = getattr(self.lm.tokenizer, "tok", None)
        prefix = getattr(getattr(inner, "model", None), "continuing_subword_prefix", None)
        tokens = []
        for i, (tid, (a, z)) in enumerate(zip(ids, offsets)):
            piece = inner.id_to_token(tid) if inner is not None else text[a:z]
            subword = len(piece) != z - a if prefix else a > 0 and " " not in text[a - 1:a + 1]
            tokens.append({"id": tid, "word": piece, "probs": probs[i], "start": a, "end": z, "index": i,
                           "subword": subword})
        return tokens

    def per_token(self, tokens):
        labels = self.model.labels
        out = []
        for t in tokens:
            p, k = t["probs"].max(-1)
            out.append({"entity": labels[int(k)], "score": float(p), "index": t["index"], "word": t["word"],
                        "start": t["start"], "end": t["end"], "ids": [t["id"]]})
        return out

    def per_word(self, tokens, strategy: str):
        """One entity per word: the first token's label, the label of the token with the highest
        probability, or the label with the highest mean probability over the word's tokens."""
        words: list[list[dict[str, Any]]] = []
        for t in tokens:
            if words and t["subword"]:
                words[-1].append(t)
            else:
                words.append([t])
        labels, out = self.model.labels, []
        for word in words:
            if strategy == "average":
                probs = torch.stack([t["probs"] for t in word]).mean(0)
            elif strategy == "max":
                probs = max(word, key=lambda t: float(t["probs"].max()))["probs"]
            else:
                probs = word[0]["probs"]
            p, k = probs.max(-1)
            ids = [t["id"] for t in word]
            out.append({"entity": labels[int(k)], "score": float(p), "word": self.lm.tokenizer.decode(ids),
                        "start": word[0]["start"], "end": word[-1]["end"], "ids": ids})
        return out

    def groups(self, entities):
        """Adjacent entities of the same type joined into one, a ``B-`` label starting a new one (a
        label without B-/I- counts as I-); the score is their mean."""
        def split(label: str) -> tuple[str, str]:
            return (label[:1], label[2:]) if label[:2] in ("B-", "I-") else ("I", label)

        groups: list[list[dict[str, Any]]] = []
        for e in entities:
            bi, kind = split(e["entity"])
            if groups and bi != "B" and split(groups[-1][-1]["entity"])[1] == kind:
                groups[-1].append(e)
            else:
                groups.append([e])
        out = []
        for g in groups:
            ids = [i for e in g for i in e["ids"]]
            out.append({"entity_group": split(g[0]["entity"])[1], "score": float(np.mean([e["score"] for e in g])),
                        "word": self.lm.tokenizer.decode(ids), "start": g[0]["start"], "end": g[-1]["end"]})
        return out


class QuestionAnswering(Pipeline):
    """Spans of the context answering a question (transformers 4's shape): ``pipe(question=...,
    context=...)``, ``pipe({"question", "context"})`` or a list of such dicts; ``top_k`` answers
    (a list when > 1), each at most ``max_answer_len`` tokens; long contexts in windows overlapping
    by ``doc_stride`` tokens."""

    def settings(self, options):
        options = dict(options)
        out = {"top_k": _int(options, "top_k", 1, 1), "max_answer_len": _int(options, "max_answer_len", 15, 1),
               "doc_stride": _int(options, "doc_stride", 128, 0)}
        super().settings(options)
        return out

    def __call__(self, inputs: Any = None, question: Any = None, context: Any = None, **options) -> Any:
        opts = self.settings({**self.options, **options})
        if inputs is None:
            if question is None or context is None:
                raise UserError("question-answering needs question= and context= (or a dict, or a list of dicts)")
            if isinstance(question, list) or isinstance(context, list):
                qs, cs = (question if isinstance(question, list) else [question],
                          context if isinstance(context, list) else [context])
                if len(qs) != len(cs) and len(qs) != 1 and len(cs) != 1:
                    raise UserError(f"{len(qs)} questions and {len(cs)} contexts: give one context, one question, "
                                    f"or as many of each")
                n = max(len(qs), len(cs))
                inputs = [{"question": qs[i % len(qs)], "context": cs[i % len(cs)]} for i in range(n)]
            else:
                inputs = {"question": question, "context": context}
        elif question is not None or context is not None:
            raise UserError("give the questions either as the first argument or as question=/context=, not both")
        single = isinstance(inputs, dict)
        items = [inputs] if single else inputs
        if not isinstance(items, (list, tuple)) or not items or len(items) > MAX_INPUTS:
            raise UserError("question-answering takes {'question': ..., 'context': ...} or a non-empty list of them")
        pairs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or set(item) != {"question", "context"}:
                raise UserError(f"input {i}: expected {{'question': TEXT, 'context': TEXT}}, got {str(item)[:80]}")
            q, c = (check_text(item[k], f"input {i} {k}") for k in ("question", "context"))
            if not q.strip() or not c.strip():
                raise UserError(f"input {i}: the question and the context must be non-empty text")
            pairs.append((q, c))
        found = answer(self.model, self.lm.tokenizer, [q for q, _ in pairs], [c for _, c in pairs],
                       opts["max_answer_len"], self.batch_size, opts["top_k"], opts["doc_stride"])
        results = [best[0] if opts["top_k"] == 1 else best for best in found]
        return results[0] if single else results


def generation_controls(lm: LanguageModel, options: dict[str, Any]) -> dict[str, Any]:
    """arlm's decoding controls from transformers' call options: ``do_sample=False`` is greedy, and
    greedy is the default unless the model's generation config samples (transformers' default)."""
    options = dict(options)
    sample = _bool(options, "do_sample", None)
    if "max_length" in options:
        raise UserError("max_length counts the prompt too; arlm bounds the new text: use max_new_tokens")
    if sample is False:
        options["temperature"] = 0.0
    elif sample is None and "temperature" not in options and "temperature" not in lm.generation_defaults:
        options["temperature"] = 0.0
    lm.generate_config(**options)  # every option checked now
    return options


class TextGeneration(Pipeline):
    """Continuations of prompts (``return_full_text``: with the prompt, as transformers does by default),
    or replies to chat messages ([{"role", "content"}, ...]): the conversation with the reply appended."""

    def check_model(self):
        self.lm.require_language_model()
        if self.lm.seq2seq:
            raise UserError("text-generation continues a prompt with a decoder-only model; this is an encoder-decoder: "
                            "use text2text-generation, summarization or translation")
        super().check_model()

    def settings(self, options):
        options = dict(options)
        full = _bool(options, "return_full_text", True)
        return {"return_full_text": full, "controls": generation_controls(self.lm, options)}

    def run(self, inputs, opts, given):
        if is_chat(inputs) or (isinstance(inputs, (list, tuple)) and inputs and all(is_chat(c) for c in inputs)):
            single = is_chat(inputs)
            return self.chats([inputs] if single else list(inputs), opts, single)
        return super().run(inputs, opts, given)

    def texts(self, texts, opts):
        controls = opts["controls"]
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i:i + self.batch_size]
            made = self.lm.generate(chunk, **controls)
            for prompt, seqs in zip(chunk, made):
                seqs = seqs if isinstance(seqs, list) else [seqs]
                out.append([{"generated_text": (prompt + s) if opts["return_full_text"] else s} for s in seqs])
        return out

    def chats(self, conversations: list[list[dict[str, str]]], opts, single: bool):
        template = self.lm.chat_template()
        cfg = self.lm.generate_config(**opts["controls"])
        if cfg.num_beams > 1:
            raise UserError("chat replies are sampled or greedy here: use num_beams=1")
        cfg = dataclasses.replace(cfg, stop=cfg.stop + template.stop)
        n = cfg.num_return_sequences
        out = []
        for i in range(0, len(conversations), self.batch_size):
            chunk = [check_messages(c, f"conversation {i + j}") for j, c in enumerate(conversations[i:i + self.batch_size])]
            ids = []
            for j, messages in enumerate(chunk):
                prompt = template.prompt_ids(messages)
                if len(prompt) + cfg.max_new_tokens > self.lm.block_size:
                    raise UserError(f"conversation {i + j} is {len(prompt)} tokens; with max_new_tokens "
                                    f"({cfg.max_new_tokens}) it does not fit the {self.lm.block_size}-token window")
                ids.append(prompt)
            replies = [""] * (len(chunk) * n)
            for b, piece in self.lm._stream_ids(ids, cfg):
                replies[b] += piece
            for j, messages in enumerate(chunk):
                rows = [r.strip() for r in replies[j * n:(j + 1) * n]]
                out.append([{"generated_text": messages + [{"role": "assistant", "content": r}]
                             if opts["return_full_text"] else r} for r in rows])
        return out[0] if single else out


def is_chat(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, dict) for m in value)


def check_messages(messages: list[dict[str, Any]], where: str) -> list[dict[str, str]]:
    out = []
    for k, m in enumerate(messages):
        if set(m) != {"role", "content"} or m["role"] not in ("system", "user", "assistant"):
            raise UserError(f"{where} message {k}: expected {{'role': system|user|assistant, 'content': TEXT}}, "
                            f"got {str(m)[:80]}")
        out.append({"role": m["role"], "content": check_text(m["content"], f"{where} message {k} content")})
    return out


class Text2Text(Pipeline):
    """An encoder-decoder's output for each source text, under the task's key."""

    def check_model(self):
        self.lm.require_language_model()
        if not self.lm.seq2seq:
            raise UserError(f"{self.task} transforms a source text with an encoder-decoder (T5, BART, Marian); "
                            f"{self.lm.info.path or 'this model'} is decoder-only: use text-generation")
        super().check_model()

    def settings(self, options):
        options = dict(options)
        for flag in ("return_text", "clean_up_tokenization_spaces"):
            if options.pop(flag, True) is not True:
                raise UserError(f"{flag}=False is not supported")
        return {"controls": generation_controls(self.lm, options)}

    def run(self, inputs, opts, given):
        single, texts = texts_of(inputs)
        key = SEQ2SEQ_KEYS[self.task]
        results = []
        for i in range(0, len(texts), self.batch_size):
            made = self.lm.generate(texts[i:i + self.batch_size], **opts["controls"])
            results += [[{key: s} for s in (seqs if isinstance(seqs, list) else [seqs])] for seqs in made]
        if single:
            return results[0]
        return [r[0] for r in results] if all(len(r) == 1 for r in results) else results


class FeatureExtraction(Pipeline):
    """Each token's final hidden state: nested lists (1, T, C) per text, or tensors with
    ``return_tensors=True``."""

    def check_model(self):
        check_features(self.model)
        super().check_model()

    def settings(self, options):
        options = dict(options)
        tensors = _bool(options, "return_tensors", False)
        super().settings(options)
        return {"return_tensors": tensors}

    def texts(self, texts, opts):
        states = [s[None] for s in token_states(self.model, self.lm.feature_rows(texts), self.batch_size)]  # (1, T, C) each
        return states if opts["return_tensors"] else [s.tolist() for s in states]


class FillMask(Pipeline):
    """The most likely tokens at each mask of a text, as transformers' fill-mask pipeline: ``top_k``
    (5) per mask, or the probabilities of the given ``targets`` words."""

    def check_model(self):
        if not getattr(self.model, "is_masked_lm", False):
            raise UserError(f"fill-mask predicts a masked token from both sides: it needs a masked-language-model "
                            f"encoder (BERT); {self.lm.info.path or 'this model'} is {self.model.config.kind}. "
                            f"A decoder-only model fills the middle of a text with text-generation instead")
        super().check_model()
        inner = getattr(self.lm.tokenizer, "tok", None)
        self.mask_id = next((inner.token_to_id(t) for t in ("[MASK]", "<mask>") if inner is not None
                             and inner.token_to_id(t) is not None), None)
        if self.mask_id is None:
            raise UserError(f"{self.lm.info.path or 'this model'}'s tokenizer has no mask token ([MASK] or <mask>)")
        self.mask_text = inner.id_to_token(self.mask_id)

    def settings(self, options):
        options = dict(options)
        out = {"top_k": _int(options, "top_k", 5, 1)}
        targets = options.pop("targets", None)
        if targets is not None:
            targets = [targets] if isinstance(targets, str) else targets
            if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
                raise UserError("targets must be a word or a non-empty list of words")
            ids = []
            for t in targets:
                found = self.lm.tokenizer.encode(t)
                if not found:
                    raise UserError(f"target {t!r} has no token in this vocabulary")
                ids.append(found[0])  # transformers takes a target's first token
            out["targets"] = list(dict.fromkeys(ids))
        super().settings(options)
        return out

    @torch.inference_mode()
    def texts(self, texts, opts):
        tok = self.lm.tokenizer
        encode = getattr(tok, "encode_prompt", tok.encode)  # with [CLS] ... [SEP]
        rows = [encode(t) for t in texts]
        T = self.model.config.block_size
        for i, (t, r) in enumerate(zip(texts, rows)):
            if self.mask_id not in r:
                raise UserError(f"input {i}: no mask token ({self.mask_text}) in {t[:60]!r}")
            if len(r) > T:
                raise UserError(f"input {i} is {len(r)} tokens; this encoder reads at most {T}")
        out = []
        device = self.model.float_param().device
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s:s + self.batch_size]
            width = max(len(r) for r in chunk)
            idx = torch.zeros(len(chunk), width, dtype=torch.long)
            for b, r in enumerate(chunk):
                idx[b, :len(r)] = torch.tensor(r)
            real = torch.arange(width)[None] < torch.tensor([len(r) for r in chunk])[:, None]
            logits = self.model(idx.to(device), key_mask=real.to(device))[0].float().cpu()  # (B, T, V)
            for b, r in enumerate(chunk):
                out.append(self.fill(r, logits[b], opts))
        return out

    def fill(self, ids: list[int], logits: torch.Tensor, opts) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        masks = [i for i, t in enumerate(ids) if t == self.mask_id]
        probs = torch.softmax(logits[masks], -1)  # (masks, V)
        targets = opts.get("targets")
        if targets is not None:
            probs = probs[:, targets]
        values, picks = probs.topk(min(opts["top_k"], probs.size(-1)))
        single = len(masks) == 1
        result = []
        for m, vs, ps in zip(masks, values.tolist(), picks.tolist()):
            row = []
            for v, p in zip(vs, ps):
                p = targets[p] if targets is not None else p
                filled = list(ids)
                filled[m] = p
                row.append({"score": v, "token": p, "token_str": self.lm.tokenizer.decode([p]),
                            "sequence": self.decode(filled, skip_special=single)})
            result.append(row)
        return result[0] if single else result

    def decode(self, ids: list[int], skip_special: bool) -> str:
        """The text of ``ids``; without the special tokens ([CLS], [SEP]) when one mask was filled, with
        them otherwise (the other masks would vanish), as transformers does."""
        inner = self.lm.tokenizer.tok
        return inner.decode(ids, skip_special_tokens=skip_special)
