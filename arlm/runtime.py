"""Device and precision selection, seeding, memory and threads: what every verb does before touching a model."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import random
from pathlib import Path

import torch

from arlm.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU features that multiply bfloat16 natively: x86's AVX512-BF16 (vdpbf16ps) and AMX tiles, Arm's
# BF16 extension (Armv8.6). Without them oneDNN emulates bfloat16 products in float32 arithmetic plus
# conversions, slower than float32 itself.
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cache_root() -> Path:
    """Where arlm keeps what it measures or builds once per machine: ``$ARLM_CACHE``, else ~/.cache/arlm."""
    return Path(os.environ.get("ARLM_CACHE") or Path.home() / ".cache" / "arlm")


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, feature flags) of this machine's CPU, read from /proc/cpuinfo (Linux: ``flags`` on
    x86, ``Features`` on Arm); elsewhere the platform's processor name and no flags."""
    name, flags = "", frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), flags


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (see BF16_FLAGS)."""
    return any(flag in cpu_info()[1] for flag in BF16_FLAGS)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device must be available."""
    if not isinstance(name, str):
        raise UserError(f"device must be a string such as cpu, cuda or auto, got {type(name).__name__}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device '{name}'; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' requested but Apple MPS is not available here; use --device cpu or auto")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 autocast on GPUs that support it (Ampere and later), else float32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}'; use auto, float32, bfloat16 or float16")
    if name == "float16" and device.type != "cuda":
        raise UserError("float16 training needs a CUDA GPU (loss scaling); use --dtype bfloat16 or float32 on CPU")
    if name == "bfloat16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning("this CPU (%s) has no bfloat16 instructions (AVX512-BF16, AMX or Arm BF16): bfloat16 would be "
                    "emulated, slower than float32, so training runs in float32", cpu_info()[0])
        return torch.float32
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context: matmuls in ``dtype``, weights and optimizer state stay float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def torch_seed(seed: int) -> int:
    """Any integer as a seed torch accepts: reduced modulo 2**64, so seeds beyond 64 bits (and negative
    ones, as torch itself reads them) are deterministic; seeds in [0, 2**63) are unchanged."""
    return int(seed) % (1 << 64)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A random-number generator of its own, seeded with any integer."""
    return torch.Generator(device=device).manual_seed(torch_seed(seed))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(torch_seed(seed))  # also seeds every CUDA device


def max_threads() -> int:
    return max(256, 4 * (os.cpu_count() or 1))


def set_threads(n: int) -> None:
    if n > max_threads():
        raise UserError(f"threads must be at most {max_threads()} (this machine has {os.cpu_count()} CPUs), got {n}")
    if n > 0:
        torch.set_num_threads(n)


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup (container) memory limit, if it has one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:
                return None
            return int(limit) - int(Path(usage_file).read_text())
        except (OSError, ValueError):
            continue
    return None


def _address_space_room() -> int | None:
    """Bytes left under this process's address-space limit (``ulimit -v``), if it has one."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    with contextlib.suppress(OSError, ValueError, StopIteration):
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmSize:"))
        return soft - int(line.split()[1]) * 1024
    return soft


def available_memory(device: torch.device | None = None) -> int:
    """Bytes that can still be allocated on ``device`` (default: host memory): free GPU memory, or the
    host's MemAvailable, less under a container's limit or the process's address-space limit."""
    if device is not None and device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    avail = None
    with contextlib.suppress(OSError, ValueError, StopIteration):
        line = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemAvailable:"))
        avail = int(line.split()[1]) * 1024
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 1 << 62  # unknown: do not refuse on a guess
    for room in (_cgroup_room(), _address_space_room()):
        if room is not None:
            avail = min(avail, room)
    return avail


def check_memory(need: int, what: str, fix: str, device: torch.device | None = None) -> None:
    """Refuse, before allocating, a request whose memory estimate exceeds what is available."""
    have = available_memory(device)
    if need > 0.9 * have:  # a margin for what the estimate leaves out (the forward pass, the allocator)
        where = "GPU memory" if device is not None and device.type == "cuda" else "memory"
        raise UserError(f"{what} needs about {size(need)}, more than the {size(have)} of {where} available; {fix}")


def size(n: float) -> str:
    """Bytes in the largest unit that keeps a few digits: 12.3 GB, 4.1 PB."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:,.1f} PB"
