"""``arlm image prepare|sample|eval``: the image verbs (training is ``arlm train`` on the prepared folder)."""

from __future__ import annotations

import argparse

from arlm.cli.flags import add_verb, emit_json, load_model, load_options, options, verb_group
from arlm.config import ImageEvalConfig, ImagePrepareConfig, ImageSampleConfig, LoadConfig


def cmd_prepare(args: argparse.Namespace) -> int:
    from arlm.data.images import prepare_images

    cfg = options(ImagePrepareConfig, args, "image prepare options")
    meta = prepare_images(cfg)
    if args.json:
        emit_json(meta)
    else:
        kind = f"{meta['colors']} grey levels" if cfg.color == "gray" else f"a {meta['colors']}-colour palette"
        labels = f", {len(meta['classes'])} classes" if meta["classes"] else ", no labels"
        copies = f" (each with {meta['shifted_copies']} shifted copies)" if meta["shifted_copies"] else ""
        print(f"prepared {meta['train_images']:,} train{copies} + {meta['test_images']:,} test images of {meta['width']}x"
              f"{meta['height']} ({kind}{labels}; {meta['record_tokens']} tokens each, vocab {meta['vocab_size']}) in "
              f"{cfg.out} [{meta['seconds']}s]; train with: arlm train --data {cfg.out} --block-size "
              f"{meta['record_tokens']} --out RUN")
    return 0


def _load(args: argparse.Namespace):
    from arlm.image.sampling import pixel_tokenizer

    lm = load_model(args)
    return lm, pixel_tokenizer(lm.tokenizer), load_options(args).model


def cmd_sample(args: argparse.Namespace) -> int:
    from arlm.image.grid import draw, sample_output

    cfg = options(ImageSampleConfig, args, "image sample options")
    out = sample_output(cfg, load_options(args).model)
    lm, tok, _ = _load(args)
    caption = draw(lm, tok, cfg, out)
    print(f"{caption} -> {cfg.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from arlm.image.report import evaluate_images

    cfg = options(ImageEvalConfig, args, "image eval options")
    lm, _, _ = _load(args)
    r = evaluate_images(lm, cfg.data, cfg.samples, cfg.temperature, cfg.seed)
    if args.json:
        emit_json(r)
        return 0
    print(f"{r['test_images']} test images, {r['width']}x{r['height']}, {r['colors']} colours")
    print(f"bits/dim              {r['bits_per_dim']:.4f}   (p(image), classes summed out)")
    if "bits_per_dim_given_label" in r:
        print(f"bits/dim given label  {r['bits_per_dim_given_label']:.4f}")
        print(f"label from p(image, class) argmax: {r['label_accuracy']:.1%} correct")
    print(f"independent pixels    {r['independent_bits_per_dim']:.4f}   (ratio {r['ratio_to_independent']:.3f})")
    if "classifier_agreement" in r:
        print(f"SVC agrees with the conditioning class on {r['classifier_agreement']:.1%} of {r['samples']} samples "
              f"(SVC on the real test images: {r['classifier_test_accuracy']:.1%})")
    return 0


def add_verbs(sub) -> None:
    """The ``image`` verb and its own verbs, on the top-level subparsers ``sub``."""
    verbs = verb_group(sub, "image", "images as pixel sequences: prepare, sample, evaluate (train with `arlm train`)",
                       "Image GPT's recipe on arlm's GPT: one token per pixel in raster order. `arlm image prepare` "
                       "writes a folder `arlm train` trains on (--block-size: the record length it prints); then "
                       "`sample` and `eval`.")

    add_verb(verbs, "prepare", cmd_prepare, "images (the bundled digits or a folder) -> pixel tokenizer + token shards",
             ImagePrepareConfig)
    add_verb(verbs, "sample", cmd_sample, "a PNG grid of sampled images (a row per class), or completions of test images",
             LoadConfig, ImageSampleConfig, json=False)
    add_verb(verbs, "eval", cmd_eval, "bits per pixel on the test images against the independent-pixel baseline",
             LoadConfig, ImageEvalConfig)
