"""CPU kernels, compiled on first use: for decoding, the linear layers (``linear.cpp``, the operator
``arlm::linear``) and one-query attention over the KV cache (``attention.cpp``, ``arlm::attend``); for
training and prefill too, forward and backward, the tanh-approximated GELU (``activation.cpp``,
``arlm::gelu_tanh``: PyTorch's is as slow as the matrix product before it) and causal attention over
short sequences (``causal.cpp``, ``arlm::causal_attention``); see those files.

Decoding a token multiplies a few rows of activations by every weight matrix, so its speed is how
fast the weights stream from memory. On CPU, PyTorch's BLAS path (MKL's sgemv) reaches about half of
the read bandwidth for one row and less for a few, and inductor's reductions keep one accumulator
per output (about 80%); ``linear.cpp`` streams float32 weights at the bandwidth, widens bfloat16
weights in registers and multiplies int8 weights with int16-rounded activations (bench/decode.py
measures all of these). A decoding step's attention reads the whole cache once per layer;
``attention.cpp`` does it in one pass over the keys and one over the values (see its header).
Under ``torch.compile`` the layers use PyTorch's own operators, which inductor fuses.

The sources are compiled against the installed torch with the system C++ compiler (``$CXX``, else
``c++``/``g++``/``clang++``) for the machine it runs on, once (about 15 s), into
``$ARLM_KERNEL_CACHE`` (default ``~/.cache/arlm/kernels``), keyed by the source, compiler, torch
build and CPU. Without a compiler, or with ``ARLM_CPU_KERNELS=0``, layers fall back to
``torch.nn.functional.linear`` and PyTorch's attention (same results, slower decoding); the reason is
logged once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import torch

from arlm.runtime import cpu_info

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name)
           for name in ("vec.h", "linear.cpp", "int4.cpp", "attention.cpp", "activation.cpp", "causal.cpp")]
# Up to this many rows (batch x new tokens) the kernel beats torch's matmul (measured on a 2-core CPU):
MAX_ROWS = 8  # float32 weights
MAX_ROWS_LOW_PRECISION = 64  # bfloat16/int8 weights (beyond it, widening the matrix once for BLAS wins)
MAX_DECODE_ROWS = 64  # decode steps take the kernel up to this batch (same bits at any batch size)
FORMATS = (torch.float32, torch.bfloat16, torch.int8)


# -- throughput mode -----------------------------------------------------------------------------------
#
# Decode steps take the kernel at every batch size up to MAX_DECODE_ROWS so that a sequence gets the
# same bits alone or in a batch (the engine's invariance). Beam search has no such promise to keep
# across batches and runs many rows (prompts x beams): there, past MAX_ROWS, each weight shape takes
# the fastest of two GEMM kernels of linear.cpp (a packed-panel micro-kernel, and a register tile on
# the weight as it is) and PyTorch's matmul, measured once per shape and row count. On the 2-core
# EPYC (Zen 3, AVX2) at 32 rows the packed kernel wins on a 58k-word output layer (13-19 ms against
# MKL's 34-39: MKL's tall-skinny product is slow on this CPU) and on the blocks' matrices by 1.3-1.6x;
# numbers differ between CPUs, so they are measured, not assumed.

_throughput = threading.local()
_choice: dict[tuple, object] = {}


@contextlib.contextmanager
def throughput_mode():
    """Within it (this thread), many-row float32 decode steps take the fastest product measured for their
    shape. Packed copies of weights are made at most once within it and dropped when it ends (a later
    call packs again: nothing stale survives a weight's change between calls)."""
    outer = getattr(_throughput, "packed", None)
    _throughput.packed = {} if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _throughput.packed = None


PACK_N = 16  # output channels per panel of arlm::linear_packed (linear.cpp)


def packed_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (N, K) as arlm::linear_packed reads it, (ceil(N/16), K, 16), zero rows past N: made once
    per weight within :func:`throughput_mode` (an extra copy of the weight while it lasts)."""
    cache = getattr(_throughput, "packed", None)
    key = (id(weight), weight.data_ptr())
    if cache is not None and key in cache:
        return cache[key]
    N, K = weight.shape
    blocks = (N + PACK_N - 1) // PACK_N
    # One pass over the weight (no padded copy first): whole blocks, then the zero-filled last one.
    w, full = weight.detach(), N // PACK_N
    packed = w.new_empty(blocks, K, PACK_N)
    packed[:full].copy_(w[:full * PACK_N].view(full, PACK_N, K).transpose(1, 2))
    if full < blocks:
        packed[full].zero_()
        packed[full, :, :N - full * PACK_N].copy_(w[full * PACK_N:].t())
    if cache is not None:
        cache[key] = packed
    return packed


def linear_packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight.T + bias through the packed-panel micro-kernel (float32, many rows)."""
    return torch.ops.arlm.linear_packed(x, packed_weight(weight), bias, weight.size(0))


def many_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """In throughput mode, for a float32 product of more than MAX_ROWS rows: the fastest of the packed
    micro-kernel (:func:`linear_packed`), the GEMM tile (:func:`linear_rows`) and ``F.linear`` for
    this shape and row count, measured once (median of 3 runs each); None outside it (the caller
    keeps its batch-invariant path)."""
    rows = x.numel() // x.size(-1)
    if rows <= MAX_ROWS or weight.dtype != torch.float32 or getattr(_throughput, "packed", None) is None:
        return None
    key = (tuple(weight.shape), rows, bias is not None)
    if key not in _choice:
        def timed(fn) -> float:
            fn(x, weight, bias)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                fn(x, weight, bias)
                times.append(time.perf_counter() - t)
            return sorted(times)[1]
        candidates = (linear_packed, linear_rows, torch.nn.functional.linear)
        times = [timed(fn) for fn in candidates]
        _choice[key] = candidates[times.index(min(times))]
        log.debug("rows %d x weight %s: packed %.2f ms, tile %.2f ms, BLAS %.2f ms", rows, key[0],
                  *(t * 1e3 for t in times))
        if _choice[key] is not linear_packed:
            _throughput.packed.pop((id(weight), weight.data_ptr()), None)  # (the copy made for timing)
    return _choice[key]


_loaded = False
_tried = False


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CXX"), "c++", "g++", "clang++")):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_id() -> str:
    """What the compiled code depends on: ``-march=native`` emits this CPU's instructions."""
    name, flags = cpu_info()
    return " ".join([name, *sorted(flags)])


def _build(cxx: str) -> Path:
    """Compile SOURCES into the cache (atomically: a temp file, then rename) and return the library's path."""
    torch_dir = Path(torch.__file__).parent
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}"
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256("\0".join((*(f.read_text() for f in SOURCES), cxx, version, torch.__version__, str(torch_dir),
                                     platform.machine(), _cpu_id())).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("ARLM_KERNEL_CACHE") or Path.home() / ".cache" / "arlm" / "kernels")
    out = cache / f"kernels-{key}.so"
    if out.exists():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    log.info("building the CPU kernels for this machine (once, about 15 s) into %s", cache)
    compile_ = [cxx, "-O3", "-march=native", "-fPIC", "-w", abi,
                f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}"]
    link = [f"-L{torch_dir / 'lib'}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_dir / 'lib'}"]
    errors = []
    # OpenMP splits the work across torch's threads; without it the kernels run on one.
    for extra in (["-std=c++20", "-fopenmp"], ["-std=c++17", "-fopenmp"], ["-std=c++17"]):
        with tempfile.TemporaryDirectory(dir=cache) as tmpdir:
            objects = [Path(tmpdir) / f"{f.stem}.o" for f in SOURCES if f.suffix == ".cpp"]
            # the sources compile side by side (most of the time goes to torch's headers)
            jobs = [subprocess.Popen(compile_ + extra + ["-c", str(src), "-o", str(obj)], stderr=subprocess.PIPE, text=True)
                    for src, obj in zip((f for f in SOURCES if f.suffix == ".cpp"), objects)]
            failed = [err for job in jobs if (err := job.communicate()[1]) is not None and job.returncode]
            if not failed:
                tmp = Path(tmpdir) / "kernels.so"
                run = subprocess.run([cxx, "-shared", *extra, *map(str, objects), *link, "-o", str(tmp)],
                                     capture_output=True, text=True)
                if run.returncode == 0:
                    os.chmod(tmp, 0o755)
                    os.replace(tmp, out)
                    _prune(cache, keep=out)
                    return out
                failed = [run.stderr]
        errors.append(failed[0].strip()[-300:])
    raise RuntimeError(errors[-1])


KEEP_BUILDS = 8  # libraries kept in the cache (other torch builds or CPUs sharing a home folder keep theirs)


def _prune(cache: Path, keep: Path) -> None:
    """Delete all but the KEEP_BUILDS newest libraries (each source change builds a new one, ~0.25 MB).
    A library that another process has loaded stays usable after it is unlinked."""
    builds = sorted(cache.glob("kernels-*.so"), key=lambda f: f.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS:]:
        if old != keep:
            old.unlink(missing_ok=True)


def library() -> bool:
    """Load the kernels, building them on the first call; False if they cannot be used here."""
    global _loaded, _tried
    if _tried:
        return _loaded
    _tried = True
    if os.environ.get("ARLM_CPU_KERNELS", "1") == "0":
        log.info("CPU kernels disabled (ARLM_CPU_KERNELS=0)")
        return False
    cxx = _compiler()
    if cxx is None:
        log.warning("no C++ compiler found (set CXX): decoding, GELU and attention use PyTorch's operators (slower on CPU)")
        return False
    t = time.monotonic()
    try:
        torch.ops.load_library(str(_build(cxx)))
    except (OSError, RuntimeError) as e:
        log.warning("could not build the CPU kernels (%s): decoding, GELU and attention use PyTorch's operators (slower)", e)
        return False
    torch.library.register_fake("arlm::linear")(_fake_linear)
    torch.library.register_fake("arlm::linear_rows")(lambda x, weight, bias: _fake_linear(x, weight, None, bias))
    torch.library.register_fake("arlm::attend")(_fake_attend)
    torch.library.register_fake("arlm::linear_int4")(_fake_linear_int4)
    torch.library.register_fake("arlm::gelu_tanh")(_fake_like_x)
    torch.library.register_fake("arlm::gelu_tanh_backward")(lambda grad, x: _fake_like_x(x))
    torch.library.register_fake("arlm::causal_attention")(_fake_causal)
    torch.library.register_fake("arlm::causal_attention_backward")(lambda dy, q, k, v, lse: (_bthd(q), _bthd(q), _bthd(q)))
    log.debug("CPU kernels ready in %.2fs", time.monotonic() - t)
    _loaded = True
    return True


def _fake_linear(x, weight, scale, bias):
    """Output shape and dtype for torch.compile's tracing."""
    return x.new_empty(*x.shape[:-1], weight.size(0), dtype=torch.float32)


def _fake_linear_int4(x, codes, scales, offsets, group_size, bias):
    return x.new_empty(*x.shape[:-1], codes.size(0), dtype=torch.float32)


def _fake_like_x(x):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _bthd(q):
    """An empty (B, nh, T, hs) tensor like ``q`` laid out as (B, T, nh, hs), as the kernels write."""
    B, nh, T, hs = q.shape
    return q.new_empty(B, T, nh, hs).transpose(1, 2)


def _fake_causal(q, k, v):
    return _bthd(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def _fake_attend(q, k, v, mask):
    return q.new_empty(q.shape, dtype=torch.float32)


def ready() -> bool:
    """Whether the kernels are loaded (never builds them: safe to call while torch.compile traces)."""
    return _loaded


def _inference_on_cpu(*tensors: torch.Tensor | None) -> bool:
    """CPU tensors, no gradient wanted (the kernels have no backward), and the library built (building
    it on first use, except while torch.compile traces)."""
    present = [t for t in tensors if t is not None]
    if any(t.device.type != "cpu" for t in present):
        return False
    if torch.jit.is_tracing():  # an ONNX export records torch's own operators, not arlm's
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return False
    return _loaded or (not torch.compiler.is_compiling() and library())


def usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """Whether ``linear(x, weight, ...)`` may take the kernel (see :func:`_inference_on_cpu`)."""
    return weight.dtype in FORMATS and _inference_on_cpu(x, weight, bias)


def linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight.T (weight (N, K): float32, bfloat16 or int8, contiguous), times ``scale`` (N,)
    per output channel, plus ``bias`` (N,) (both float32); float32 (..., N). Call only where
    :func:`usable` said yes."""
    return torch.ops.arlm.linear(x, weight, scale, bias)


def linear_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight.T + bias for many rows of float32 (a GEMM tile; not batch-invariant: see
    :func:`throughput_mode`). Call only where :func:`usable` said yes for a float32 weight."""
    return torch.ops.arlm.linear_rows(x, weight, bias)


def int4_usable(x: torch.Tensor, codes: torch.Tensor) -> bool:
    """Whether :func:`linear_int4` may run (see :func:`_inference_on_cpu`)."""
    return _inference_on_cpu(x, codes)


def linear_int4(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, group_size: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ W.T (+ ``bias``) for 4-bit weights in the layout of ``int4.cpp``: ``codes`` (N, K/2)
    uint8, ``scales`` and ``offsets`` (N, K/group_size) float16 (no offsets: symmetric, -8 x scale); float32
    (..., N). Call only where
    :func:`int4_usable` said yes."""
    return torch.ops.arlm.linear_int4(x, codes, scales, offsets, group_size, bias)


def attend_usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether :func:`attend` may run: one query per row, a float32 or bfloat16 cache contiguous in its
    last dimension (and see :func:`_inference_on_cpu`)."""
    if q.size(2) != 1 or k.dtype not in (torch.float32, torch.bfloat16) or v.dtype != k.dtype:
        return False
    return k.stride(-1) == 1 and v.stride(-1) == 1 and _inference_on_cpu(q, k, v)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) v for one query per row: q (B, nh, 1, hs), k and v (B, nkv, S, hs)
    (nh a multiple of nkv), ``mask`` broadcastable to (B, 1, 1, S), True where a key may be attended;
    float32 (B, nh, 1, hs). Call only where :func:`attend_usable` said yes."""
    if mask is not None:
        mask = mask.expand(q.size(0), 1, 1, k.size(2)).reshape(q.size(0), k.size(2)).contiguous()
    return torch.ops.arlm.attend(q, k, v, mask)


_CAPABILITY = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ... (read once)


def wide_vectors() -> bool:
    """Whether this CPU has AVX-512 (PyTorch's own detection). The training kernels' register tiles hold
    16-float vectors, one AVX-512 register each; with AVX2's 16 registers of 8 floats they spill, and
    PyTorch's kernels are faster (measured on a 2-core AMD EPYC with AVX2, float32, forward + backward:
    causal attention at (16, 4, 256, 32) 230 vs 33 ms, at (12, 4, 64, 32) 16 vs 4 ms; the tanh GELU over
    (16, 256, 512) 22 vs 15 ms), where with AVX-512 they were 1.0-1.3x faster (bench/kernels.py)."""
    return _CAPABILITY.startswith("AVX512")


def _training_kernels_here() -> bool:
    """The training kernels run on CPUs with AVX-512 (:func:`wide_vectors`), outside torch.compile
    (inductor fuses PyTorch's operators into its own loops) and ONNX tracing (which records PyTorch's),
    once the library is built (on first use)."""
    # (the tracing checks first: Dynamo compiles this function away and cannot trace the CPU query)
    return (not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and wide_vectors()
            and (_loaded or library()))


def gelu_usable(x: torch.Tensor) -> bool:
    """Whether :func:`gelu_tanh` may run on ``x``: float32 or bfloat16 on CPU, with or without gradients
    (and see :func:`_training_kernels_here`)."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and _training_kernels_here()


class _GeluTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.ops.arlm.gelu_tanh(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.arlm.gelu_tanh_backward(grad, x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``F.gelu(x, approximate="tanh")``, differentiable, in ``x``'s dtype (computed in float32; within
    a few float32 ulps of PyTorch's). Call only where :func:`gelu_usable` said yes."""
    return _GeluTanh.apply(x)


# Up to this many positions the causal-attention kernel beats PyTorch's flash attention on CPU (its
# per-head working set, a few T x hs arrays and a T x T matrix, stays in the core's cache; bench/kernels.py).
MAX_CAUSAL_T = 256


def causal_usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether :func:`causal_attention` may run: q, k, v (B, nh, T, hs) of one shape (no grouped-query
    heads), float32 or bfloat16 on CPU, contiguous in the last dimension, 1 < T <= MAX_CAUSAL_T (and see
    :func:`_training_kernels_here`)."""
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.bfloat16) or q.dim() != 4:
        return False
    if k.shape != q.shape or v.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    return 1 < q.size(2) <= MAX_CAUSAL_T and all(t.stride(-1) == 1 for t in (q, k, v)) and _training_kernels_here()


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        y, lse = torch.ops.arlm.causal_attention(q, k, v)
        ctx.save_for_backward(q, k, v, lse)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        return torch.ops.arlm.causal_attention_backward(dy, *ctx.saved_tensors)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, is_causal=True)``, differentiable, in q's dtype (computed
    in float32), returned as a (B, nh, T, hs) view of a (B, T, nh, hs) tensor. Call only where
    :func:`causal_usable` said yes."""
    return _CausalAttention.apply(q, k, v)
