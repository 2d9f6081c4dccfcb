"""``arlm image prepare|sample|eval``: the image verbs (training is ``arlm train`` on the prepared folder)."""

from __future__ import annotations

import argparse

from arlm.cli.flags import add_config_args, emit_json, explicit_values, field_names
from arlm.errors import UserError
from arlm.config import ImageEvalConfig, ImagePrepareConfig, ImageSampleConfig, LoadConfig, from_dict


def cmd_prepare(args: argparse.Namespace) -> int:
    from arlm.data.images import prepare_images

    cfg = from_dict(ImagePrepareConfig, explicit_values(args, field_names(ImagePrepareConfig)), "image prepare options")
    meta = prepare_images(cfg)
    if args.json:
        emit_json(meta)
    else:
        kind = f"{meta['colors']} grey levels" if cfg.color == "gray" else f"a {meta['colors']}-colour palette"
        labels = f", {len(meta['classes'])} classes" if meta["classes"] else ", no labels"
        print(f"prepared {meta['train_images']:,} train + {meta['test_images']:,} test images of {meta['width']}x"
              f"{meta['height']} ({kind}{labels}; {meta['record_tokens']} tokens each, vocab {meta['vocab_size']}) in "
              f"{cfg.out} [{meta['seconds']}s]; train with: arlm train --data {cfg.out} --block-size "
              f"{meta['record_tokens']} --out RUN")
    return 0


def _load(args: argparse.Namespace):
    from arlm.api import load
    from arlm.image.sampling import pixel_tokenizer

    opts = from_dict(LoadConfig, explicit_values(args, field_names(LoadConfig)), "load options")
    if not opts.model:
        raise UserError("no model given: add --model DIR (trained with `arlm train` on images)")
    lm = load(opts.model, opts.device, opts.precision)
    return lm, pixel_tokenizer(lm.tokenizer), opts.model


def cmd_sample(args: argparse.Namespace) -> int:
    from arlm.image.grid import draw

    cfg = from_dict(ImageSampleConfig, explicit_values(args, field_names(ImageSampleConfig)), "image sample options")
    cfg.validate()
    lm, tok, model_dir = _load(args)
    _, caption = draw(lm, tok, cfg, model_dir)
    print(f"{caption} -> {cfg.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from arlm.image.report import evaluate_images

    cfg = from_dict(ImageEvalConfig, explicit_values(args, field_names(ImageEvalConfig)), "image eval options")
    cfg.validate()
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
    p = sub.add_parser("image", help="images as pixel sequences: prepare, sample, evaluate (train with `arlm train`)",
                       description="Image GPT's recipe on arlm's GPT: one token per pixel in raster order. "
                                   "`arlm image prepare` writes a folder `arlm train` trains on (--block-size: the "
                                   "record length it prints); then `sample` and `eval`.")
    verbs = p.add_subparsers(dest="image_verb", metavar="VERB", required=True, parser_class=type(p))

    sp = verbs.add_parser("prepare", help="images (the bundled digits or a folder) -> pixel tokenizer + token shards")
    add_config_args(sp, ImagePrepareConfig)
    sp.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    sp.set_defaults(func=cmd_prepare)

    sp = verbs.add_parser("sample", help="a PNG grid of sampled images (a row per class), or completions of test images")
    add_config_args(sp, LoadConfig)
    add_config_args(sp, ImageSampleConfig)
    sp.set_defaults(func=cmd_sample)

    sp = verbs.add_parser("eval", help="bits per pixel on the test images against the independent-pixel baseline")
    add_config_args(sp, LoadConfig)
    add_config_args(sp, ImageEvalConfig)
    sp.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    sp.set_defaults(func=cmd_eval)
