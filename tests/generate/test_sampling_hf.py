"""Our logits processors give the same next-token distribution as transformers' for the same logits."""

from __future__ import annotations

import pytest
import torch

from arlm.config import GenerateConfig
from arlm.generate.sampling import process_logits

tf = pytest.importorskip("transformers")

V = 64


def logits_and_context(seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, V, generator=g) * 3  # peaked enough that filters cut real mass
    logits[0, :5] = 4.0  # ties at the top
    context = torch.randint(0, V, (4, 30), generator=g)
    context[1, 10:16] = torch.tensor([1, 2, 3, 4, 5, 6])
    context[1, 28:30] = torch.tensor([3, 4])  # ends with a prefix seen before: 5 would repeat "4 5" and "3 4 5"
    return logits, context


CASES = [
    (dict(temperature=0.7), lambda: tf.TemperatureLogitsWarper(0.7)),
    (dict(top_k=5), lambda: tf.TopKLogitsWarper(5)),
    (dict(top_k=1), lambda: tf.TopKLogitsWarper(1)),
    (dict(top_p=0.9), lambda: tf.TopPLogitsWarper(0.9)),
    (dict(top_p=0.3), lambda: tf.TopPLogitsWarper(0.3)),
    (dict(min_p=0.1), lambda: tf.MinPLogitsWarper(0.1)),
    (dict(min_p=0.5), lambda: tf.MinPLogitsWarper(0.5)),
    (dict(typical_p=0.9), lambda: tf.TypicalLogitsWarper(0.9)),
    (dict(typical_p=0.2), lambda: tf.TypicalLogitsWarper(0.2)),
    (dict(repetition_penalty=1.3), lambda: tf.RepetitionPenaltyLogitsProcessor(1.3)),
    (dict(repetition_penalty=0.8), lambda: tf.RepetitionPenaltyLogitsProcessor(0.8)),
    (dict(no_repeat_ngram_size=2), lambda: tf.NoRepeatNGramLogitsProcessor(2)),
    (dict(no_repeat_ngram_size=3), lambda: tf.NoRepeatNGramLogitsProcessor(3)),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("controls,make", CASES, ids=[str(c) for c, _ in CASES])
def test_processed_distribution_equals_transformers(controls, make, seed):
    logits, context = logits_and_context(seed)
    ours = process_logits(logits.clone(), context, GenerateConfig(**controls)).softmax(-1)
    theirs = make()(context, logits.clone()).softmax(-1)
    assert (ours - theirs).abs().max().item() <= 1e-6
    if set(controls) & {"top_k", "top_p", "min_p", "typical_p", "no_repeat_ngram_size"} and seed == 0:
        assert (theirs == 0).any()  # the filter really removed tokens, so the comparison is not vacuous


def test_all_controls_together_in_transformers_order():
    logits, context = logits_and_context(7)
    controls = dict(repetition_penalty=1.2, no_repeat_ngram_size=2, temperature=0.8, top_k=20, top_p=0.95,
                    min_p=0.02, typical_p=0.95)
    chain = tf.LogitsProcessorList([
        tf.RepetitionPenaltyLogitsProcessor(1.2), tf.NoRepeatNGramLogitsProcessor(2), tf.TemperatureLogitsWarper(0.8),
        tf.TopKLogitsWarper(20), tf.TopPLogitsWarper(0.95), tf.MinPLogitsWarper(0.02), tf.TypicalLogitsWarper(0.95),
    ])
    ours = process_logits(logits.clone(), context, GenerateConfig(**controls)).softmax(-1)
    assert (ours - chain(context, logits.clone()).softmax(-1)).abs().max().item() <= 1e-6
