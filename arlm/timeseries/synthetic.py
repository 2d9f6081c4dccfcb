"""Synthetic series for training a forecaster that has to meet series it never saw.

- **KernelSynth** (the Chronos paper, Ansari et al. 2024, Algorithm 2): draw up to ``max_kernels``
  Gaussian-process kernels from a bank (linear, RBF, periodic, rational quadratic, constant, white
  noise), combine them with random + or x, and sample a path of the GP prior.
- **ARMA** processes with random stationary, invertible coefficients (statsmodels' ArmaProcess).
- **Trend + seasonality + noise**: a random linear or damped trend, one or two seasonal sine waves
  with random periods and phases, and Gaussian or Student-t noise.
- **Growth**: a positive level that grows or shrinks geometrically with correlated noise and an
  optional multiplicative season (prices, output, population). Of the other kinds, 30% are moved to
  a level far from zero: mean scaling then leaves small relative movements, as on most real series.

Every generator takes a NumPy ``Generator``, so a seed gives the same series.
"""

from __future__ import annotations

import numpy as np

# The kernel bank's periods and length scales, relative to a series of ``length`` points (the paper's
# bank is given for daily/hourly/... periods; here periods cover the seasonal periods arlm reads).
PERIODS = (4, 7, 12, 24, 52)


def _kernel(kind: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A kernel matrix K(t_i, t_j) of ``kind`` over time points t in [0, 1]."""
    d = t[:, None] - t[None, :]
    n = len(t)
    if kind == "linear":
        c = rng.uniform(0, 1)
        return (t[:, None] - c) * (t[None, :] - c) * rng.uniform(0.5, 2)
    if kind == "rbf":
        ell = rng.choice([0.05, 0.1, 0.3, 1.0])
        return np.exp(-0.5 * (d / ell) ** 2)
    if kind == "periodic":
        p = rng.choice(PERIODS) / (n - 1)  # one period of that many points (t steps by 1 / (n - 1))
        return np.exp(-2 * np.sin(np.pi * np.abs(d) / p) ** 2 / rng.choice([0.5, 1.0]) ** 2)
    if kind == "rq":
        alpha, ell = rng.choice([0.1, 1.0, 10.0]), rng.choice([0.1, 0.3, 1.0])
        return (1 + d ** 2 / (2 * alpha * ell ** 2)) ** -alpha
    if kind == "constant":
        return np.full((n, n), rng.uniform(0.1, 1))
    return np.eye(n) * rng.uniform(0.01, 0.1)  # white noise


KERNELS = ("linear", "rbf", "periodic", "rq", "constant", "white")


def kernel_synth(length: int, rng: np.random.Generator, max_kernels: int = 5) -> np.ndarray:
    """One KernelSynth series of ``length`` points."""
    t = np.linspace(0, 1, length)
    kinds = rng.choice(KERNELS, size=rng.integers(1, max_kernels + 1))
    K = _kernel(kinds[0], t, rng)
    for kind in kinds[1:]:
        other = _kernel(kind, t, rng)
        K = K + other if rng.random() < 0.5 else K * other
    K = (K + K.T) / 2 + 1e-6 * np.eye(length)  # symmetric, and a jitter so that the Cholesky factor exists
    try:
        L = np.linalg.cholesky(K)
    except np.linalg.LinAlgError:  # products of kernels can be numerically indefinite: clip the spectrum
        w, V = np.linalg.eigh(K)
        L = V * np.sqrt(np.clip(w, 1e-9, None))
    return L @ rng.standard_normal(length)


def arma(length: int, rng: np.random.Generator, max_order: int = 3) -> np.ndarray:
    """A stationary, invertible ARMA(p, q) path with random coefficients (roots outside the unit circle)."""
    from statsmodels.tsa.arima_process import ArmaProcess

    def poly(order: int) -> np.ndarray:  # 1 - sum c_k z^k from roots of modulus > 1
        roots = [r * np.exp(1j * a) for r, a in zip(rng.uniform(1.2, 3.0, order), rng.uniform(0, np.pi, order))]
        coeffs = np.poly(np.concatenate([roots, np.conj(roots)]))[::-1].real if order else np.array([1.0])
        return coeffs / coeffs[0]

    p, q = rng.integers(1, max_order + 1), rng.integers(0, max_order + 1)
    process = ArmaProcess(poly(p), poly(q))
    return process.generate_sample(length, distrvs=rng.standard_normal, burnin=100) + rng.normal(0, 2)


def trend_season(length: int, rng: np.random.Generator) -> np.ndarray:
    """A trend (linear or damped), one or two seasonal waves and noise."""
    t = np.arange(length, dtype=np.float64)
    level, slope = rng.normal(0, 5), rng.normal(0, 0.05)
    trend = level + (slope * t if rng.random() < 0.5 else slope * 50 * (1 - np.exp(-t / rng.uniform(20, 200))))
    season = sum(rng.uniform(0.5, 3) * np.sin(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi))
                 for p in rng.choice(PERIODS, size=rng.integers(1, 3), replace=False))
    noise = rng.standard_t(rng.choice([3, 30]), length) * rng.uniform(0.05, 0.8)
    return trend + season + noise


def growth(length: int, rng: np.random.Generator) -> np.ndarray:
    """A positive series far from zero that grows or shrinks geometrically, as economic and physical
    levels do (GDP, prices, population, CO2): log-increments with a drift, AR(1)-correlated noise and
    an optional multiplicative season, on a level of 1 to 10,000."""
    drift = rng.normal(0, 0.01)
    sigma = np.exp(rng.uniform(np.log(1e-3), np.log(5e-2)))
    phi = rng.uniform(-0.3, 0.9)
    e = rng.standard_normal(length) * sigma
    for t in range(1, length):  # AR(1) increments: momentum in growth rates
        e[t] += phi * e[t - 1]
    y = np.exp(np.cumsum(drift + e))
    if rng.random() < 0.4:
        p = rng.choice(PERIODS)
        y *= 1 + rng.uniform(0.005, 0.1) * np.sin(2 * np.pi * np.arange(length) / p + rng.uniform(0, 2 * np.pi))
    return 10 ** rng.uniform(0, 4) * y


def with_level(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The series moved to a level of 0.1 to 100 times its spread (real series rarely hover around zero)."""
    return y + np.sign(rng.standard_normal()) * np.std(y) * 10 ** rng.uniform(-1, 2)


GENERATORS = {"kernel-synth": kernel_synth, "arma": arma, "trend-season": trend_season, "growth": growth}
LEVEL_SHIFT = 0.3  # the share of the other generators' series moved away from zero


def synthetic_series(count: int, length: int, seed: int = 0, mix: dict[str, float] | None = None) -> list[np.ndarray]:
    """``count`` series of ``length`` points, each from a generator drawn with the weights of ``mix``
    (default: equal)."""
    rng = np.random.default_rng(seed)
    names = list(mix or GENERATORS)
    weights = np.array([(mix or {}).get(n, 1.0) for n in names], dtype=np.float64)
    picks = rng.choice(names, size=count, p=weights / weights.sum())
    out = []
    for name in picks:
        y = GENERATORS[name](length, rng)
        out.append(with_level(y, rng) if name != "growth" and rng.random() < LEVEL_SHIFT else y)
    return out
