"""The synthetic training series: the seed decides them, every generator gives finite series of the
length asked, ARMA paths are stationary, and KernelSynth's periodic kernel gives periodic paths."""

from __future__ import annotations

import warnings

import numpy as np

from arlm.timeseries import synthetic
from arlm.timeseries.synthetic import GENERATORS, synthetic_series


def test_the_seed_decides_the_series():
    a, b, c = synthetic_series(12, 100, seed=3), synthetic_series(12, 100, seed=3), synthetic_series(12, 100, seed=4)
    assert all((x == y).all() for x, y in zip(a, b)) and not all((x == y).all() for x, y in zip(a, c))
    assert all(len(x) == 100 and np.isfinite(x).all() for x in a)
    only = synthetic_series(5, 50, seed=0, mix={"arma": 1.0})
    assert len(only) == 5


def test_each_generator_and_arma_stationarity():
    rng = np.random.default_rng(0)
    for name, gen in GENERATORS.items():
        x = gen(300, rng)
        assert x.shape == (300,) and np.isfinite(x).all() and np.std(x) > 0, name
    from statsmodels.tsa.stattools import adfuller

    with warnings.catch_warnings():  # statsmodels 0.15 announces a change of its return type
        warnings.simplefilter("ignore", FutureWarning)
        rejected = sum(adfuller(synthetic.arma(500, np.random.default_rng(s)))[1] < 0.05 for s in range(10))
    assert rejected >= 8  # a unit root rejected for (nearly) every ARMA path


def test_a_periodic_kernel_repeats():
    class Fixed:  # a generator that always picks the periodic kernel with period 12
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def choice(self, options, size=None, **kw):
            if size is not None:
                return np.array(["periodic"])
            return 12 if 12 in list(options) else list(options)[1]

        def integers(self, *a, **k):
            return 1

        def standard_normal(self, n):
            return self.rng.standard_normal(n)

        def random(self):
            return 0.0

    x = synthetic.kernel_synth(120, Fixed())
    assert np.allclose(x[:-12], x[12:], atol=0.05 * np.std(x))


def test_growth_series_are_positive_levels_far_from_zero_and_others_are_sometimes_moved():
    rng = np.random.default_rng(1)
    for _ in range(20):
        y = synthetic.growth(200, rng)
        assert (y > 0).all() and np.mean(y) > 2 * np.std(np.diff(y))
    moved = [synthetic.with_level(synthetic.arma(200, rng), rng) for _ in range(20)]
    assert np.median([abs(np.mean(y)) / np.std(y) for y in moved]) > 1  # 0.1 to 100 spreads away from zero
