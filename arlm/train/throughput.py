"""Model FLOPs utilisation (MFU): the arithmetic a training step needs, as a fraction of what the
hardware can do, measured rather than taken from a data sheet.

MFU = tokens/s x training FLOPs per token / peak FLOP/s (Chowdhery et al. 2022, PaLM, appendix B).
FLOPs per token count matrix multiplications only, forward and backward (3x the forward's 2 per
multiply-add): 6 per weight of every linear layer (and LSTM), plus attention's scores and weighted sum,
12 x n_layer x T x C with T the context (as nanoGPT's ``estimate_mfu``; causal masking is not
subtracted). The peak is the speed of a large matrix product in the training dtype on the training
device, timed once per machine: the figure is kept in ``$ARLM_CACHE/matmul_peaks.json`` (default
~/.cache/arlm), keyed by the device's model, the thread count and the torch version, so a run does not
spend its first half second timing it again. A figure timed while the machine was busy is too low;
a run faster than it (MFU above 100%) drops it (:func:`forget_peak`), to be measured again.
"""

from __future__ import annotations

import json
import logging
import time

import torch

from arlm.io.atomic import atomic_write_text
from arlm.runtime import cache_root, cpu_info

log = logging.getLogger(__name__)

PEAKS_FILE = "matmul_peaks.json"
_PEAKS: dict[str, float] = {}


def flops_per_token(model: torch.nn.Module) -> float:
    """Training FLOPs per token of ``model``: 6 x its matrix weights (embedding lookups are free, the
    tied output layer is not), plus what the model adds outside them (a GPT's attention)."""
    cfg = model.config
    weights = sum(p.numel() for name, p in model.named_parameters()
                  if p.dim() == 2 and "wte" not in name and "wpe" not in name)  # lookups, not products
    if cfg.tie_embeddings:
        weights += cfg.vocab_size * cfg.n_embd  # the output layer reuses the embedding matrix
    return 6.0 * weights + model.attention_flops_per_token()


def peak_key(device: torch.device, dtype: torch.dtype) -> str:
    """What a measured peak depends on: the device's model, the threads torch uses, torch's version
    (it brings its own oneDNN/MKL/cuBLAS) and the dtype."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = f"{cpu_info()[0]}, {torch.get_num_threads()} threads"
    else:
        name = device.type
    return f"{device.type}: {name}; torch {torch.__version__}; {str(dtype).replace('torch.', '')}"


def _read_peaks(path) -> dict[str, float]:
    """The cached peaks; a missing, unreadable or damaged cache is an empty one (it is measured again)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and v > 0}


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """FLOP/s of a square matrix product in ``dtype`` on ``device`` (the best of those in ``seconds``, after
    warm-up), measured once per machine (see the module's docstring): a second of products, so that a
    busy moment of a shared machine is less likely to be what every later run divides by."""
    key = peak_key(device, dtype)
    if key in _PEAKS:
        return _PEAKS[key]
    path = cache_root() / PEAKS_FILE
    cached = _read_peaks(path)
    if key in cached:
        _PEAKS[key] = cached[key]
        return cached[key]
    _PEAKS[key] = _measure_peak(device, dtype, seconds)
    log.info("measured %s matmul peak on %s: %.1f GFLOP/s", str(dtype).replace("torch.", ""), device, _PEAKS[key] / 1e9)
    try:  # the cache is an optimisation: a read-only home only means measuring again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**_read_peaks(path), key: _PEAKS[key]}, indent=1, sort_keys=True) + "\n")
    except OSError as e:
        log.debug("could not cache the matmul peak in %s: %s", path, e)
    return _PEAKS[key]


def forget_peak(device: torch.device, dtype: torch.dtype) -> None:
    """Drop the cached peak of ``device`` and ``dtype`` (it is measured again next time): a run that
    computed faster than it, MFU above 100%, shows it was timed while something else used the machine."""
    key = peak_key(device, dtype)
    _PEAKS.pop(key, None)
    path = cache_root() / PEAKS_FILE
    cached = _read_peaks(path)
    if key in cached:
        try:
            atomic_write_text(path, json.dumps({k: v for k, v in cached.items() if k != key}, indent=1, sort_keys=True) + "\n")
        except OSError as e:
            log.debug("could not update %s: %s", path, e)


def _measure_peak(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
    if device.type == "cpu":
        # CPUs without bfloat16 matrix instructions run those at a few GFLOP/s: keep it short
        n = 2048 if dtype == torch.float32 else 512
    else:
        n = 8192  # a GPU needs large products to reach its peak (8192^3 in bfloat16: ~1.4 ms on an H100)
    # random data from a private generator: the global RNG (a run's dropout) stays untouched, and
    # GPUs multiply constant or zero matrices faster than real data (they draw less power)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), device=device, dtype=dtype, generator=g)
    b = torch.randn((n, n), device=device, dtype=dtype, generator=g)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b
    sync()
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        sync()
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best
