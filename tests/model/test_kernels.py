"""The CPU decoding kernels (arlm/model/kernels): same products as a float64 reference for every
weight format, row count and size (including sizes that are not multiples of the vector width),
the layers' fallback when the kernels are off, and how they are chosen."""

from __future__ import annotations

import logging

import pytest
import torch

from arlm.compress.quantize import quantize
from arlm.config import GPTConfig
from arlm.model import kernels
from arlm.model.gpt import GPT
from arlm.model.layers import Linear, QuantizedLinear

pytestmark = pytest.mark.skipif(not kernels.library(), reason="no C++ compiler to build the kernels")


def reference(x, w, scale, bias):
    y = x.double() @ w.double().T
    if scale is not None:
        y = y * scale.double()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("rows", [1, 2, 3, 5, 8, 9, 17])
@pytest.mark.parametrize("K", [768, 100, 36])
def test_kernel_matches_float64_reference(dtype, rows, K):
    g = torch.Generator().manual_seed(rows * 1000 + K)
    N = 70
    x = torch.randn(rows, K, generator=g)
    if dtype == torch.int8:
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    else:
        w = torch.randn(N, K, generator=g).to(dtype)
    scale, bias = torch.rand(N, generator=g) + 0.5, torch.randn(N, generator=g)
    for s, b in [(None, None), (scale, None), (None, bias), (scale, bias)]:
        want = reference(x, w, s, b)
        got = kernels.linear(x, w, s, b)
        assert got.dtype == torch.float32 and got.shape == (rows, N)
        # float32 sums in a different order; int8 rounds activations to int16 (2^-16 of the row's max)
        tol = 1e-4 if dtype == torch.int8 else 2e-6
        assert (got.double() - want).abs().max() <= tol * want.abs().max()


def test_kernel_keeps_leading_dimensions_and_ignores_strides():
    x = torch.randn(3, 2, 64).transpose(0, 1)  # not contiguous
    w = torch.randn(10, 64)
    got = kernels.linear(x, w)
    assert got.shape == (2, 3, 10)
    assert torch.allclose(got, x @ w.T, atol=1e-5)


def test_zero_activations_and_int8_extremes():
    w = torch.full((4, 64), -127, dtype=torch.int8)
    assert torch.equal(kernels.linear(torch.zeros(1, 64), w, torch.ones(4)), torch.zeros(1, 4))
    x = torch.full((1, 4096), 1e4)  # largest products over a long row: no int32 overflow
    got = kernels.linear(x, torch.full((2, 4096), 127, dtype=torch.int8), torch.ones(2))
    assert torch.allclose(got, torch.full((1, 2), 127 * 1e4 * 4096), rtol=1e-5)


def test_kernel_only_without_gradients_and_on_cpu():
    w = torch.randn(8, 16, requires_grad=True)
    x = torch.randn(1, 16)
    assert not kernels.usable(x, w)  # training: autograd needs torch's own op
    with torch.no_grad():
        assert kernels.usable(x, w)
    assert not kernels.usable(x, torch.randn(8, 16, dtype=torch.float16))
    layer = Linear(16, 8)
    y = layer(torch.randn(1, 16, requires_grad=True))
    y.sum().backward()
    assert layer.weight.grad is not None


@pytest.fixture
def kernels_off(monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_tried", True)


def decode_logits(m, x):
    """Logits of a prefill and of 3 single-token steps through the KV cache (the kernel-sized calls)."""
    with torch.inference_mode():
        m.setup_cache(x.size(0), 16)
        out = [m(x, pos=0)[0]]
        for i in range(3):
            out.append(m(x[:, i:i + 1], pos=x.size(1) + i)[0])
        m.clear_cache()
    return out


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
def test_layers_agree_with_and_without_kernels(precision, kernels_off, monkeypatch):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
    m = quantize(GPT(cfg).eval(), precision)
    x = torch.randint(0, 50, (2, 5))
    without = decode_logits(m, x)
    monkeypatch.setattr(kernels, "_loaded", True)
    with_kernels = decode_logits(m, x)
    for a, b in zip(with_kernels, without):
        assert torch.allclose(a, b, atol=2e-3 if precision == "int8" else 1e-4)
    if precision != "float32":
        assert all(isinstance(mod, QuantizedLinear) for mod in [m.transformer.h[0].attn.c_attn, m.lm_head])


def test_disabled_or_unbuildable_kernels_fall_back_with_a_reason(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setenv("ARLM_CPU_KERNELS", "0")
    with caplog.at_level(logging.INFO, logger="arlm.model.kernels"):
        assert kernels.library() is False
    assert "ARLM_CPU_KERNELS=0" in caplog.text
    monkeypatch.delenv("ARLM_CPU_KERNELS")
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger="arlm.model.kernels"):
        assert kernels.library() is False
    assert "no C++ compiler" in caplog.text
    assert not kernels.usable(torch.randn(1, 8), torch.randn(4, 8))


def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
    """A second build with the same source, compiler and CPU reuses the library; a failing compile
    leaves no file behind."""
    cxx = kernels._compiler()
    built = kernels._build(cxx)  # the library loaded for this session: found, not rebuilt
    stamp = built.stat().st_mtime_ns
    assert kernels._build(cxx) == built and built.stat().st_mtime_ns == stamp
    monkeypatch.setenv("ARLM_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "SOURCE", tmp_path / "bad.cpp")
    (tmp_path / "bad.cpp").write_text("this is not C++\n")
    with pytest.raises(RuntimeError):
        kernels._build(cxx)
    assert list(tmp_path.glob("*.so")) == []
