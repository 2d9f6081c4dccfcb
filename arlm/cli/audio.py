"""``arlm audio synthesize|prepare|eval|generate``: the audio verbs (training is ``arlm train``)."""

from __future__ import annotations

import argparse

from arlm.cli.flags import add_verb, emit_json, load_model, load_options, options, verb_group
from arlm.config import AudioEvalConfig, AudioGenerateConfig, AudioPrepareConfig, AudioSynthConfig, LoadConfig


def cmd_synthesize(args: argparse.Namespace) -> int:
    from arlm.data.audio import synthesize

    r = synthesize(options(AudioSynthConfig, args, "audio synthesize options"))
    print(f"synthesized {r['files']} utterances ({r['lines']} lines x {len(r['voices'])} voices x {len(r['speeds'])} "
          f"speeds) with espeak-ng -> {r['out']} [{r['seconds']}s]")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from arlm.data.audio import prepare_audio

    cfg = options(AudioPrepareConfig, args, "audio prepare options")
    m = prepare_audio(cfg)
    if args.json:
        emit_json(m)
    else:
        print(f"prepared {m['train_files']} train utterances ({m['train_seconds_audio']} s) + {m['test_files']} held out "
              f"({m['test_seconds_audio']} s) at {cfg.sample_rate} Hz, 8-bit mu-law -> {cfg.out} [{m['seconds']}s]")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from arlm.audio.workflows import evaluate_audio

    cfg = options(AudioEvalConfig, args, "audio eval options")
    lm = load_model(args)
    r = evaluate_audio(lm, cfg)
    if args.json:
        emit_json(r)
        return 0
    print(f"{r['test_utterances']} held-out utterances, {r['test_samples']:,} samples at {r['sample_rate']} Hz "
          f"(bits per sample, 8-bit mu-law)")
    print(f"  model ({r['context_samples']} samples of context)  {r['model_bits_per_sample']:.4f}")
    print(f"  linear prediction, AR({r['lpc_order']})          {r['lpc_bits_per_sample']:.4f}")
    print(f"  unigram (mu-law histogram)          {r['unigram_bits_per_sample']:.4f}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from arlm.audio.workflows import continue_utterance, generate_outputs

    cfg = options(AudioGenerateConfig, args, "audio generate options")
    out = generate_outputs(cfg, load_options(args).model)
    r = continue_utterance(load_model(args), cfg, out)
    print(f"{r['prompt_seconds']} s given + {r['generated_seconds']} s generated -> {r['wav']}, {r['png']}")
    return 0


def add_verbs(sub) -> None:
    """The ``audio`` verb and its own verbs, on the top-level subparsers ``sub``."""
    verbs = verb_group(sub, "audio", "speech as 8-bit mu-law samples: synthesize, prepare, evaluate, generate "
                                     "(train with `arlm train`)",
                       "WaveNet's mu-law samples as tokens on arlm's GPT. `synthesize` speaks text with espeak-ng, "
                       "`prepare` writes a folder `arlm train` trains on, then `eval` and `generate`.")
    add_verb(verbs, "synthesize", cmd_synthesize, "speech from text lines with espeak-ng (several voices and speeds)",
             AudioSynthConfig, json=False)
    sp = add_verb(verbs, "prepare", cmd_prepare, "WAV files -> mu-law tokenizer + token shards (whole utterances held out)",
                  AudioPrepareConfig, skip=("inputs",))
    sp.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders of them")
    add_verb(verbs, "eval", cmd_eval, "bits per sample on held-out utterances beside the unigram and LPC baselines",
             LoadConfig, AudioEvalConfig)
    add_verb(verbs, "generate", cmd_generate, "continue a held-out utterance: WAV + waveform/spectrogram PNG",
             LoadConfig, AudioGenerateConfig, json=False)
