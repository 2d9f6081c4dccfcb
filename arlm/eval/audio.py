"""Audio likelihoods in bits per sample: a model's, and two baselines scored on the same held-out mu-law
samples.

- **unigram**: the training utterances' histogram of the 256 mu-law values (add-one counts), the
  entropy coding of samples one at a time.
- **linear prediction (LPC)**: AR(p) on the waveform, the predictor of speech coding: coefficients by
  the Yule-Walker equations (statsmodels) on the training waveforms, each held-out sample predicted
  from its utterance's previous p samples (silence before the start). The prediction error is
  modelled as Laplace with a backward-adaptive scale, the mean absolute error of the previous
  ``ADAPT`` samples (the adaptive step size of ADPCM coders; one fixed scale for loud and silent
  stretches alike scores worse than the unigram here). A sample's probability is that
  distribution's mass over its mu-law bin, so all three are probabilities of the same discrete symbols.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from arlm.eval.perplexity import strided_nll
from arlm.tokenizers.audio import MuLawTokenizer

LN2 = math.log(2.0)
FLOOR = 1e-12  # smallest probability a baseline gives a sample (a bin far out in the tails)
ADAPT = 32  # samples of past prediction error the LPC scale follows (4 ms at 8 kHz)
MIN_SCALE = 1e-5  # the scale never drops below this (about the finest mu-law step near silence, 2 / 8159 / 16)


def model_bits_per_sample(model: torch.nn.Module, tok: MuLawTokenizer, utts: list[np.ndarray], device: torch.device,
                          batch_size: int = 16) -> float:
    """Bits per sample of the utterances, each scored from its start (after end-of-text) with windows of
    the model's context sliding by half of it."""
    stride = max(1, model.config.block_size // 2)
    total = count = 0
    for u in utts:
        nll, n = strided_nll(model, np.concatenate([[tok.eot_id], u]).astype(np.int64), stride, batch_size, device)
        total, count = total + nll, count + n
    return total / count / LN2


def unigram_bits_per_sample(train: list[np.ndarray], test: list[np.ndarray], levels: int) -> float:
    counts = np.bincount(np.concatenate(train), minlength=levels) + 1.0
    p = counts / counts.sum()
    return float(-np.log2(p[np.concatenate(test)]).mean())


def lpc_fit(waves: list[np.ndarray], order: int) -> np.ndarray:
    """AR(p) coefficients by Yule-Walker (statsmodels) on the concatenated waveforms."""
    import warnings

    from statsmodels.regression.linear_model import yule_walker

    with warnings.catch_warnings():  # statsmodels 0.15 announces a change of its return type
        warnings.simplefilter("ignore", FutureWarning)
        rho, _ = yule_walker(np.concatenate(waves), order=order, method="mle")
    return np.asarray(rho, dtype=np.float64)


def lpc_predict(wave: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """One-step predictions x_hat[t] = sum_k rho[k] x[t-1-k], with silence before the start."""
    p = len(rho)
    padded = np.concatenate([np.zeros(p), wave])
    # column k holds x[t-1-k] for every t
    past = np.stack([padded[p - 1 - k:p - 1 - k + len(wave)] for k in range(p)], axis=1)
    return past @ rho


def adaptive_scale(errors: np.ndarray, window: int = ADAPT) -> np.ndarray:
    """Scale at t: mean |error| over the ``window`` samples before t (fewer at the start), floored."""
    c = np.concatenate([[0.0], np.cumsum(np.abs(errors))])
    t = np.arange(len(errors))
    lo = np.maximum(t - window, 0)
    mean = (c[t] - c[lo]) / np.maximum(t - lo, 1)
    return np.maximum(mean, MIN_SCALE)


def laplace_cdf(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / scale), 1 - 0.5 * np.exp(-np.maximum(x, 0) / scale))


def lpc_bits_per_sample(tok: MuLawTokenizer, train: list[np.ndarray], test: list[np.ndarray], order: int) -> float:
    """Bits per sample of the test utterances' mu-law ids under AR(``order``) linear prediction."""
    rho = lpc_fit([tok.decode(u) for u in train], order)
    edges = tok.bin_edges()
    edges[0], edges[-1] = -np.inf, np.inf  # clipped samples fall in the end bins
    bits = 0.0
    for u in test:
        x = tok.decode(u).astype(np.float64)
        predicted = lpc_predict(x, rho)
        scale = adaptive_scale(x - predicted)  # from past errors only: a decoder could follow it
        p = laplace_cdf(edges[u + 1] - predicted, scale) - laplace_cdf(edges[u] - predicted, scale)
        bits -= np.log2(np.maximum(p, FLOOR)).sum()
    return float(bits / sum(len(u) for u in test))
