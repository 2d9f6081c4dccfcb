"""The neural forecaster: arlm's GPT on series tokenised as Chronos does (Ansari et al. 2024).

Training data (``arlm ts prepare``) is a prepared folder like any other, so ``arlm train`` (the one
loop) trains on it unchanged. Each record is a window of one series cut at a random point::

    [end-of-text x (1 + C - c), context (c values), target (H values)]      c <= C = context_length

with every value divided by the mean absolute value of the record's context (or, with the tokenizer's
``scaling="standard"``, standardised by the context's mean and standard deviation), then binned
(:class:`ScaledBinsTokenizer`). Records have one length, ``C + 1 + H`` tokens, and training windows
start at their boundaries; a context shorter than C is padded on the left with end-of-text, so
series shorter than C + H train too, and a short history is forecast the same way.

Forecasting (:class:`NeuralForecaster`) writes the last C values of the history as such a record's
first C + 1 tokens and samples ``samples`` continuations of h tokens through the decoding engine
(end-of-text banned); decoded with the context's scale they are paths of the future, and the
forecast's quantiles and median (the point forecast, as in Chronos) are read across the paths.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from arlm.config import SamplingParams, SeriesPrepareConfig
from arlm.data.prepare import check_output, write_prepared
from arlm.data.series import Series, load_series, read_csv_series
from arlm.errors import UserError
from arlm.generate.engine import generate_ids
from arlm.runtime import check_memory
from arlm.tokenizers.base import expect_tokenizer
from arlm.tokenizers.series import ScaledBinsTokenizer
from arlm.timeseries.classical import QUANTILES, Forecast
from arlm.timeseries.synthetic import synthetic_series

log = logging.getLogger(__name__)

MIN_CONTEXT = 8  # values a record's context holds at least


def record(tok: ScaledBinsTokenizer, context: np.ndarray, target: np.ndarray, context_length: int) -> np.ndarray:
    """One training record (or, with an empty ``target``, a forecast's prompt): left padding with
    end-of-text, the context and the target, all normalised by the context (the tokenizer's scaling)."""
    context = np.asarray(context, dtype=np.float64)[-context_length:]
    affine = tok.affine(context)
    pad = np.full(1 + context_length - len(context), tok.eot_id, dtype=np.int64)
    return np.concatenate([pad, tok.encode_scaled(context, affine), tok.encode_scaled(target, affine)])


def series_records(tok: ScaledBinsTokenizer, values: np.ndarray, count: int, context_length: int,
                   prediction_length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` records cut from one series at random points (a full context where the series allows)."""
    n, H, C = len(values), prediction_length, context_length
    if n < H + MIN_CONTEXT:
        return []
    low = C if n >= C + H else MIN_CONTEXT  # the first cut point with a full context, when there is one
    cuts = rng.integers(low, n - H + 1, size=count)
    return [record(tok, values[max(0, t - C):t], values[t:t + H], C) for t in cuts]


def _real_series(cfg: SeriesPrepareConfig) -> list[Series]:
    series = load_series(cfg.dataset) if cfg.dataset else []
    if cfg.csv:
        series.append(read_csv_series(cfg.csv, cfg.column))
    if cfg.exclude_tail:
        series = [Series(s.name, s.values[:-cfg.exclude_tail], s.freq, s.period, s.start)
                  for s in series if len(s.values) > cfg.exclude_tail]
    return series


def prepare_series(cfg: SeriesPrepareConfig) -> dict:
    """Synthetic and real series -> records -> a prepared folder (meta.json ``modality: series``).
    Whole series are held out for validation (each with probability about ``val_fraction``)."""
    cfg.validate()
    out = check_output(cfg.out)
    tok = ScaledBinsTokenizer(cfg.bins, cfg.limit, cfg.scaling)
    real = _real_series(cfg)
    usable = [s for s in real if len(s.values) >= cfg.prediction_length + MIN_CONTEXT]
    if len(usable) < len(real):
        log.warning("%d real series are shorter than --prediction-length + %d values and were left out",
                    len(real) - len(usable), MIN_CONTEXT)
    R = cfg.context_length + 1 + cfg.prediction_length
    records = cfg.synthetic * cfg.windows_per_series + len(usable) * cfg.real_windows
    # the synthetic values (float64, twice while drawn), each record as an int64 array (~120 bytes of its own) and
    # its copies while the splits are shuffled and joined
    check_memory(cfg.synthetic * cfg.synthetic_length * 16 + records * (R * 24 + 120),
                 f"{records:,} records of {R} tokens", "lower --synthetic, --windows-per-series or --real-windows")
    synth = synthetic_series(cfg.synthetic, cfg.synthetic_length, cfg.seed) if cfg.synthetic else []
    rng = np.random.default_rng(cfg.seed + 1)
    splits: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    every = max(2, round(1 / cfg.val_fraction))  # a series is held out with probability 1 / every
    held_out = []
    for name, values, count in ([("", v, cfg.windows_per_series) for v in synth] +
                                [(s.name, s.values, cfg.real_windows) for s in usable]):
        split = "val" if rng.integers(every) == 0 else "train"
        splits[split] += series_records(tok, values, count, cfg.context_length, cfg.prediction_length, rng)
        if split == "val" and name:
            held_out.append(name)
    if not splits["train"] or not splits["val"]:
        raise UserError(f"too few series to split into training and validation records ({len(synth) + len(usable)} "
                        f"usable); add series (--synthetic N, --dataset) or raise --val-fraction")
    order = rng.permutation(len(splits["train"]))
    train_ids = np.concatenate([splits["train"][i] for i in order])
    val_ids = np.concatenate(splits["val"])
    sources = [f"synthetic x {len(synth)}"] + list(cfg.dataset) + ([f"{cfg.csv}:{cfg.column}"] if cfg.csv else [])
    return write_prepared(out, tok, train_ids, val_ids, modality="series", record_tokens=R,
                          context_length=cfg.context_length, prediction_length=cfg.prediction_length,
                          documents=len(synth) + len(usable), val_series=held_out, val_fraction=cfg.val_fraction,
                          sources=sources)


class NeuralForecaster:
    """A trained series model as a forecaster for the backtest harness (``fc(y, h, period)``)."""

    def __init__(self, model: torch.nn.Module, tok, context_length: int, samples: int = 100,
                 temperature: float = 1.0, seed: int = 0):
        self.tok = expect_tokenizer(tok, ScaledBinsTokenizer, "forecasts", "ts")
        self.model, self.samples, self.temperature, self.seed = model, samples, temperature, seed
        self.block_size = model.config.block_size
        self.context_length = min(context_length, self.block_size - 2)

    @classmethod
    def of(cls, lm, samples: int = 100, temperature: float = 1.0, seed: int = 0) -> "NeuralForecaster":
        """The forecaster of a loaded model (``arlm.load(DIR)``), with the context length it was trained with."""
        return cls(lm.model, lm.tokenizer, forecaster_context(lm.info.data), samples, temperature, seed)

    def max_horizon(self) -> int:
        return self.block_size - 1 - MIN_CONTEXT

    def paths(self, y: np.ndarray, h: int) -> np.ndarray:
        """(samples, h) sampled futures of the series ``y``."""
        if not 1 <= h <= self.max_horizon():
            raise UserError(f"this forecaster looks at most {self.max_horizon()} steps ahead (its context window holds "
                            f"{self.block_size} tokens); lower --horizon")
        if len(y) < MIN_CONTEXT:
            raise UserError(f"the series has {len(y)} values; the neural forecaster needs at least {MIN_CONTEXT} of "
                            f"history (it pads shorter contexts than {self.context_length}, not fewer than {MIN_CONTEXT})")
        C = min(self.context_length, self.block_size - 1 - h)  # a long horizon leaves less room for the context
        context = np.asarray(y, dtype=np.float64)[-C:]
        prompt = record(self.tok, context, np.zeros(0), C).tolist()
        params = SamplingParams(max_new_tokens=h, temperature=self.temperature, num_return_sequences=self.samples,
                                seed=self.seed, logit_bias=[f"{self.tok.eot_id}=-100"])
        ids = np.array(generate_ids(self.model, prompt, params, eos_ids=()))  # (samples, h)
        assert ids.shape == (self.samples, h) and (ids < self.tok.bins).all(), "end-of-text is banned: h values a path"
        return self.tok.decode_values(ids.ravel(), self.tok.affine(context)).reshape(ids.shape)

    def __call__(self, y: np.ndarray, h: int, period: int = 1) -> Forecast:
        p = self.paths(y, h)
        return Forecast("neural", np.median(p, axis=0), np.quantile(p, QUANTILES, axis=0),
                        info={"samples": self.samples, "context": min(len(y), self.context_length)}, point="median")


def forecaster_context(data_record: dict) -> int:
    """The context length a model was trained with (its data's meta), for a checkpoint's ``data``."""
    C = int((data_record or {}).get("context_length") or 0)
    if (data_record or {}).get("modality") != "series" or C <= 0:
        raise UserError("this model was not trained on series records from `arlm ts prepare`; train a forecaster with "
                        "`arlm ts prepare` then `arlm ts train`")
    return C
