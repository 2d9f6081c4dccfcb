"""int4 groups (arlm/compress/int4.py) and their CPU kernel (arlm/model/kernels/int4.cpp): the codes
round-trip, dequantized weights lie within half a step of the originals, the kernel computes exactly
the documented formula (int8 activations per 32, exact offsets) for every shape, row count and group
size, sequences give the same bits alone or in a batch, and the layer's fallback agrees."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arlm.compress.int4 import Int4Linear, dequantize, pack, quantize_groups, unpack
from arlm.io.schema import QuantInfo
from arlm.model import kernels

needs_kernels = pytest.mark.skipif(not kernels.library(), reason="no C++ compiler to build the kernels")


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(rows, blocks, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (rows, 32 * blocks), generator=g, dtype=torch.uint8)
    codes = pack(q)
    assert codes.shape == (rows, 16 * blocks) and codes.dtype == torch.uint8
    assert torch.equal(unpack(codes), q)


def test_block_layout_is_q4_0s():
    """Byte j of a 32-code block holds code j (low nibble) and code j + 16 (high nibble), as GGUF's Q4_0."""
    q = torch.arange(32, dtype=torch.uint8).remainder(16).reshape(1, 32)
    codes = pack(q)
    assert codes[0, 0] == (0 | 0 << 4) and codes[0, 1] == (1 | 1 << 4)
    q2 = torch.cat([torch.zeros(16), torch.full((16,), 15)]).to(torch.uint8).reshape(1, 32)
    assert (pack(q2) == 0xF0).all()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([32, 64, 128]), st.booleans(), st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_dequantized_within_half_a_step(group, symmetric, seed, scale):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 256, generator=g) * scale
    codes, s, m = quantize_groups(w, group, symmetric)
    assert (m is None) == symmetric
    deq = dequantize(codes, s, m, group)
    step = s.float().abs().repeat_interleave(group, 1)
    err = (deq - w).abs()
    if symmetric:
        # Q4_0's rule: the largest magnitude maps exactly to -8 s; its opposite may clip to 7 s (one step), plus
        # 8 times the float16 rounding of s (relative 2^-11): up to 2^-8 of a step (seed 584 reaches 1e-4)
        assert (err <= step * (1 + 2 ** -8) + 1e-6 * scale).all()
        big = w.reshape(6, -1, group).abs().amax(-1)
        assert torch.allclose(deq.reshape(6, -1, group).abs().amax(-1), big, rtol=2e-3)
    else:
        # min and max within float16 rounding; everything within half a step (+ the offset's rounding)
        assert (err <= step * 0.5 + 2e-3 * w.abs().amax()).all()


def test_constant_and_zero_groups():
    w = torch.zeros(2, 64)
    w[1, :32] = 0.25
    for symmetric in (True, False):
        codes, s, m = quantize_groups(w, 32, symmetric)
        deq = dequantize(codes, s, m, 32)
        assert torch.allclose(deq, w, atol=1e-6), symmetric


def reference(x: torch.Tensor, layer: Int4Linear) -> torch.Tensor:
    """The kernel's documented formula in float64: activations rounded to int8 per block of 32 with their
    own scale; the offset term with the exact activations."""
    R, K = x.shape
    xb = x.double().reshape(R, K // 32, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    x8 = torch.where(amax > 0, torch.round(xb * (127 / amax.clamp(min=1e-300))), 0.0)
    xq = (x8 * amax / 127).reshape(R, K)
    G = layer.group_size
    s = layer.scales.double().repeat_interleave(G, 1)
    m = -8 * s if layer.offsets is None else layer.offsets.double().repeat_interleave(G, 1)
    q = unpack(layer.codes).double()
    y = xq @ (q * s).T + x.double() @ m.T
    return y if layer.bias is None else y + layer.bias.double()


def layer_of(N, K, group, symmetric, bias, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    return Int4Linear.from_float(w, b, QuantInfo("int4", group, symmetric)), w


@needs_kernels
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("N, K", [(70, 768), (9, 256), (33, 384), (5, 1152), (64, 128)])
def test_kernel_matches_its_formula(group, symmetric, N, K):
    if K % group:
        pytest.skip("group does not divide K")
    layer, _ = layer_of(N, K, group, symmetric, bias=N % 2 == 1, seed=N * K + group)
    g = torch.Generator().manual_seed(K)
    for rows in (1, 2, 3, 4, 5, 8, 9, 17):
        x = torch.randn(rows, K, generator=g)
        got = kernels.linear_int4(x, layer.codes, layer.scales, layer.offsets, group, layer.bias)
        want = reference(x, layer)
        assert got.shape == (rows, N) and got.dtype == torch.float32
        assert (got.double() - want).abs().max() <= 2e-6 * want.abs().max() + 1e-6


@needs_kernels
def test_kernel_rows_are_independent_bits():
    """A row's result is the same bits alone or among others (R = 1 takes 4 weight rows a pass, more rows
    one): the engine's batch invariance."""
    layer, _ = layer_of(4 * 37 + 3, 768, 32, False, bias=True, seed=1)
    x = torch.randn(11, 768, generator=torch.Generator().manual_seed(2))
    together = kernels.linear_int4(x, layer.codes, layer.scales, layer.offsets, 32, layer.bias)
    alone = torch.cat([kernels.linear_int4(x[i:i + 1], layer.codes, layer.scales, layer.offsets, 32, layer.bias)
                       for i in range(11)])
    assert torch.equal(together, alone)


@needs_kernels
def test_zero_and_tiny_activations():
    layer, _ = layer_of(12, 256, 32, True, bias=True, seed=3)
    x = torch.zeros(2, 256)
    x[1, 40] = 1e-30
    got = kernels.linear_int4(x, layer.codes, layer.scales, None, 32, layer.bias)
    assert torch.isfinite(got).all() and torch.allclose(got, layer.bias.expand(2, -1), atol=1e-6)


@needs_kernels
def test_layer_fallback_agrees_with_the_kernel(monkeypatch):
    """Without the kernel (CUDA, training, no compiler) the layer multiplies by the dequantized matrix: the
    same numbers up to the kernel's int8 activations."""
    layer, w = layer_of(96, 512, 64, False, bias=True, seed=4)
    x = torch.randn(3, 5, 512, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        fast = layer(x)
        monkeypatch.setattr(kernels, "int4_usable", lambda *a: False)
        slow = layer(x)
    assert slow.shape == fast.shape == (3, 5, 96)
    assert (fast - slow).abs().max() <= 0.02 * slow.abs().max()
    exact = x @ layer.dequantized().T + layer.bias
    assert torch.allclose(slow, exact, atol=1e-4)
    # and the quantization itself is close to the float layer (random weights: ~10% of a typical output)
    assert (exact - (x @ w.T + layer.bias)).abs().mean() <= 0.15 * (x @ w.T).abs().mean()


def test_embedding_rows_equal_the_dequantized_matrix():
    layer, _ = layer_of(50, 64, 32, False, bias=False, seed=6)
    idx = torch.tensor([[0, 49, 7], [7, 7, 3]])
    assert torch.equal(layer.rows(idx), layer.dequantized()[idx])
