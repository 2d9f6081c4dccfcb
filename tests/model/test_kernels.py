"""The CPU kernels (arlm/model/kernels): same products as a float64 reference for every weight format,
row count and size (including sizes that are not multiples of the vector width), the same one-query
attention and tanh GELU (forward and backward) as float64, the layers' fallback when the kernels are off,
and how they are chosen."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from arlm.compress.int8 import QuantizedLinear
from arlm.compress.quantize import quantize
from arlm.config import GPTConfig
from arlm.model import kernels
from arlm.model.gpt import GPT
from arlm.model.layers import Linear

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
@pytest.mark.parametrize("N", [1, 3, 4, 6, 257])
@pytest.mark.parametrize("K", [768, 40])
def test_one_row_streams_cover_every_output(dtype, N, K):
    """One row of x reads the matrix as 4 streams plus N % 4 leftover rows: each output, whatever N."""
    g = torch.Generator().manual_seed(N * 100 + K)
    x = torch.randn(1, K, generator=g)
    if dtype == torch.int8:
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    else:
        w = torch.randn(N, K, generator=g).to(dtype)
    scale, bias = torch.rand(N, generator=g) + 0.5, torch.randn(N, generator=g)
    want = reference(x, w, scale, bias)
    got = kernels.linear(x, w, scale, bias)
    # rounding errors relative to the sum of |products| (an output may be a small difference of large terms)
    magnitude = (x.double().abs() @ w.double().abs().T * scale.double()).max()
    tol = 1e-4 if dtype == torch.int8 else 2e-6
    assert got.shape == (1, N)
    assert (got.double() - want).abs().max() <= tol * magnitude


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


def attention_reference(q, k, v, mask):
    return torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask,
                                                            enable_gqa=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,nh,nkv,S,hs", [(1, 12, 12, 160, 64), (3, 8, 2, 37, 36), (2, 4, 1, 1, 16),
                                           (2, 6, 3, 300, 128), (1, 4, 4, 9, 72), (1, 2, 2, 5, 5)])
def test_attend_matches_float64_attention(dtype, B, nh, nkv, S, hs):
    """One query per row over a cache view (strided, as the KV cache hands it out), grouped-query
    heads, head widths that are and are not multiples of 8 or 64, with and without a key mask."""
    g = torch.Generator().manual_seed(S * 100 + hs)
    k = torch.randn(B, nkv, S + 20, hs, generator=g).to(dtype)[:, :, :S]
    v = torch.randn(B, nkv, S + 20, hs, generator=g).to(dtype)[:, :, :S]
    q = (4 * torch.randn(B, nh, 1, hs, generator=g)).to(dtype)  # peaked softmax: exponentials over a wide range
    mask = torch.rand(B, 1, 1, S, generator=g) > 0.3
    mask[..., -1] = True  # a query always sees itself
    for m in (None, mask, mask[:1, :, :, :]):  # also a mask shared by the batch (a sliding window)
        got = kernels.attend(q, k, v, m)
        assert got.dtype == torch.float32 and got.shape == (B, nh, 1, hs)
        assert (got.double() - attention_reference(q, k, v, m)).abs().max() < 1e-5


def test_attend_softmax_edge_cases():
    """Scores far apart (exponentials that underflow to 0, never NaN), one visible key, and a mask
    that leaves one key per row give exactly that key's value."""
    k = torch.randn(2, 1, 40, 16)
    v = torch.randn(2, 1, 40, 16)
    q = 1e3 * torch.randn(2, 1, 1, 16)
    got = kernels.attend(q, k, v)
    assert torch.isfinite(got).all()
    assert (got.double() - attention_reference(q, k, v, None)).abs().max() < 1e-5
    only = torch.zeros(2, 1, 1, 40, dtype=torch.bool)
    only[0, ..., 7] = only[1, ..., 39] = True
    got = kernels.attend(torch.randn(2, 1, 1, 16), k, v, only)
    assert torch.allclose(got[0, 0, 0], v[0, 0, 7]) and torch.allclose(got[1, 0, 0], v[1, 0, 39])


def test_attend_only_for_cpu_decoding_without_gradients():
    q, k = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 4, 8)
    assert kernels.attend_usable(q, k, k)
    assert not kernels.attend_usable(torch.randn(1, 2, 3, 8), k, k)  # several queries: torch's attention
    assert not kernels.attend_usable(q, k.half(), k.half())
    assert not kernels.attend_usable(q, k.transpose(2, 3), k.transpose(2, 3))
    assert not kernels.attend_usable(q.requires_grad_(), k, k)


@pytest.fixture
def kernels_off(monkeypatch):
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_tried", True)


def decode_logits(m, x):
    """Logits of a prefill and of 3 single-token steps through the KV cache (the kernel-sized calls)."""
    with torch.inference_mode():
        cache = m.new_cache(x.size(0), 16)
        B, T = x.shape
        out = [m(x, cache=cache, input_pos=torch.arange(T)[None].expand(B, -1))[0]]
        for i in range(3):
            out.append(m(x[:, i:i + 1], cache=cache, input_pos=torch.full((B, 1), T + i))[0])
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


def test_a_new_build_prunes_all_but_the_newest_libraries(tmp_path):
    for i in range(kernels.KEEP_BUILDS + 3):
        lib = tmp_path / f"kernels-{i:016x}.so"
        lib.write_bytes(b"")
        os.utime(lib, (1000 + i, 1000 + i))
    (tmp_path / "notes.txt").write_text("not ours\n")
    newest = tmp_path / "kernels-new.so"
    newest.write_bytes(b"")
    kernels._prune(tmp_path, keep=newest)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "notes.txt" in left and "kernels-new.so" in left
    assert len([n for n in left if n.startswith("kernels-")]) == kernels.KEEP_BUILDS
    assert f"kernels-{0:016x}.so" not in left and f"kernels-{kernels.KEEP_BUILDS + 2:016x}.so" in left


def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
    """A second build with the same source, compiler and CPU reuses the library; a failing compile
    leaves no file behind."""
    cxx = kernels._compiler()
    built = kernels._build(cxx)  # the library loaded for this session: found, not rebuilt
    stamp = built.stat().st_mtime_ns
    assert kernels._build(cxx) == built and built.stat().st_mtime_ns == stamp
    monkeypatch.setenv("ARLM_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "SOURCES", [tmp_path / "bad.cpp"])  # fails fast (no torch headers to parse)
    (tmp_path / "bad.cpp").write_text("this is not C++\n")
    with pytest.raises(RuntimeError, match="bad.cpp"):
        kernels._build(cxx)
    assert [p for p in tmp_path.rglob("*") if p.name != "bad.cpp"] == []  # no library, no objects left


def gelu_tanh_reference(x, grad):
    """PyTorch's tanh GELU and its gradient in float64."""
    x64 = x.double().requires_grad_()
    y = torch.nn.functional.gelu(x64, approximate="tanh")
    (g,) = torch.autograd.grad(y, x64, grad.double())
    return y.detach(), g


def max_error(got, want):
    return (got.double() - want).abs().max().item() if got.numel() else 0.0


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 16385, 100_003])
def test_gelu_tanh_matches_float64_forward_and_backward(n):
    """Sizes below, at and past the vector width and the threads' block, values over the whole useful
    range and past it (the tails where 1 + tanh cancels: as close as float32 allows, absolutely)."""
    g = torch.Generator().manual_seed(n)
    x = torch.cat([torch.linspace(-12, 12, n // 2), 3 * torch.randn(n - n // 2, generator=g)])
    grad = torch.randn(n, generator=g)
    ref, ref_grad = gelu_tanh_reference(x, grad)
    xg = x.clone().requires_grad_()
    y = kernels.gelu_tanh(xg)
    y.backward(grad)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch_err = max_error(torch.nn.functional.gelu(x, approximate="tanh"), ref)
    assert max_error(y, ref) <= max(2 * torch_err, 1e-6)
    assert ((xg.grad.double() - ref_grad).abs() <= 1e-6 * (1 + grad.double().abs())).all()


def test_gelu_tanh_bfloat16_rounds_like_torch():
    """bfloat16 in, bfloat16 out, computed in float32: within one bfloat16 rounding of PyTorch's."""
    x = (4 * torch.randn(4, 1000)).bfloat16()
    grad = torch.randn(4, 1000).bfloat16()
    got = kernels.gelu_tanh(x)
    want = torch.nn.functional.gelu(x, approximate="tanh")
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float(), want.float(), rtol=2 ** -7, atol=1e-3)
    got_grad = torch.ops.arlm.gelu_tanh_backward(grad, x)
    want_grad = torch.ops.aten.gelu_backward(grad, x, approximate="tanh")
    assert got_grad.dtype == torch.bfloat16
    assert torch.allclose(got_grad.float(), want_grad.float(), rtol=2 ** -7, atol=1e-3)


def test_gelu_tanh_special_values_and_strides():
    x = torch.tensor([0.0, -0.0, float("nan"), 1e30, -1e30, 88.0, -88.0, 1e-40])
    y = kernels.gelu_tanh(x)
    assert y[0] == 0 and torch.isnan(y[2]) and y[3] == 1e30 and y[5] == 88.0
    assert y[4] == 0 and y[6] == 0 and torch.isfinite(y[[0, 1, 3, 4, 5, 6, 7]]).all()
    grad = torch.ops.arlm.gelu_tanh_backward(torch.ones_like(x), x)
    assert grad[0] == 0.5 and grad[3] == 1 and grad[4] == 0 and grad[6] == 0 and torch.isnan(grad[2])
    wide = torch.randn(6, 10)
    view = wide.t()[:, 1:5]  # not contiguous: the kernel reads a contiguous copy and returns that shape
    assert torch.allclose(kernels.gelu_tanh(view), torch.nn.functional.gelu(view, approximate="tanh"), atol=1e-6)


def test_gelu_kernel_only_on_cpu_outside_compile_and_tracing(monkeypatch):
    x = torch.randn(3, 8)
    monkeypatch.setattr(kernels, "wide_vectors", lambda: False)  # AVX2 only: PyTorch's GELU is the faster one
    assert not kernels.gelu_usable(x)
    monkeypatch.setattr(kernels, "wide_vectors", lambda: True)
    assert kernels.gelu_usable(x) and kernels.gelu_usable(x.bfloat16()) and kernels.gelu_usable(x.requires_grad_())
    assert not kernels.gelu_usable(x.double()) and not kernels.gelu_usable(x.half())
    assert not kernels.gelu_usable(torch.empty(3, 8, device="meta"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not kernels.gelu_usable(torch.randn(3, 8))


def causal_inputs(B, nh, T, hs, dtype=torch.float32, seed=0):
    """q, k, v as the model makes them: (B, nh, T, hs) views of one fused projection (B, T, 3 nh hs)."""
    g = torch.Generator().manual_seed(seed)
    qkv = (2 * torch.randn(B, T, 3 * nh * hs, generator=g)).to(dtype).requires_grad_()
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(nh * hs, dim=2))
    return qkv, q, k, v, torch.randn(B, nh, T, hs, generator=g).to(dtype)


@pytest.mark.parametrize("B,nh,T,hs", [(2, 3, 64, 32), (1, 2, 2, 8), (2, 2, 5, 7), (1, 1, 17, 16), (3, 2, 100, 48),
                                       (1, 2, 256, 64), (2, 1, 3, 130), (1, 4, 33, 64)])
def test_causal_attention_matches_float64_forward_and_backward(B, nh, T, hs):
    """Sequence lengths and head sizes below, at and past multiples of the 16-lane vectors and of the
    4-row tiles, up to MAX_CAUSAL_T; gradients through the views into the fused projection."""
    qkv, q, k, v, grad = causal_inputs(B, nh, T, hs, seed=T * 1000 + hs)
    y = kernels.causal_attention(q, k, v)
    assert y.shape == (B, nh, T, hs) and y.dtype == torch.float32 and y.transpose(1, 2).is_contiguous()
    (got,) = torch.autograd.grad(y, qkv, grad)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    (want,) = torch.autograd.grad(ref, qkv, grad.double())
    assert (y.double() - ref).abs().max() < 3e-6 * (1 + ref.abs().max())  # float32 rounding
    assert (got.double() - want).abs().max() < 1e-5 * (1 + want.abs().max())


def attention_errors(q, k, v, grad, attend):
    """Largest errors of attend(q, k, v) and of its gradients against float64 attention on the same inputs."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    y = attend(*leaves)
    got = torch.autograd.grad(y, leaves, grad)
    f64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = torch.nn.functional.scaled_dot_product_attention(*f64, is_causal=True)
    want = torch.autograd.grad(ref, f64, grad.double())
    return [(y.double() - ref).abs().max().item()] + [(a.double() - b).abs().max().item() for a, b in zip(got, want)]


def pytorch_attention(q, k, v):
    """What arlm ran before its kernel: PyTorch's CPU flash attention in float32, cast back."""
    return torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).to(q.dtype)


def test_causal_attention_bfloat16_as_accurate_as_pytorchs():
    """bfloat16 in and out, float32 inside: the output and each gradient within 2x PyTorch's error (same
    inputs, float64 reference)."""
    _, q, k, v, grad = causal_inputs(3, 4, 64, 32, torch.bfloat16)
    ours = attention_errors(q, k, v, grad, kernels.causal_attention)
    theirs = attention_errors(q, k, v, grad, pytorch_attention)
    assert kernels.causal_attention(q, k, v).dtype == torch.bfloat16
    assert all(a <= 2 * b + 1e-3 for a, b in zip(ours, theirs)), (ours, theirs)


def test_causal_attention_peaked_scores_stay_finite():
    """Scores far apart (exponentials that underflow to 0; float32 scores of ~1e3 carry ~1e-4 of rounding)
    and the first position, which sees only itself: finite, and within 2x PyTorch's float32 error."""
    _, q, k, v, grad = causal_inputs(1, 2, 40, 16)
    q = 300 * q
    y = kernels.causal_attention(q, k, v)
    assert torch.isfinite(y).all() and torch.equal(y[:, :, 0], v[:, :, 0])
    ours = attention_errors(q, k, v, grad, kernels.causal_attention)
    theirs = attention_errors(q, k, v, grad, pytorch_attention)
    assert all(a <= 2 * b + 1e-6 for a, b in zip(ours, theirs)), (ours, theirs)


def test_causal_kernel_only_where_it_applies(monkeypatch):
    _, q, k, v, _ = causal_inputs(2, 2, 8, 16)
    monkeypatch.setattr(kernels, "wide_vectors", lambda: False)  # AVX2 only: PyTorch's attention is the faster one
    assert not kernels.causal_usable(q, k, v)
    monkeypatch.setattr(kernels, "wide_vectors", lambda: True)
    assert kernels.causal_usable(q, k, v) and kernels.causal_usable(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert not kernels.causal_usable(q[:, :, :1], k[:, :, :1], v[:, :, :1])  # one position: decoding's kernel
    assert not kernels.causal_usable(q, k[:, :1], v[:, :1])  # grouped-query heads
    assert not kernels.causal_usable(q.double(), k.double(), v.double())
    assert not kernels.causal_usable(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
    long = torch.randn(1, 1, kernels.MAX_CAUSAL_T + 1, 8)
    assert not kernels.causal_usable(long, long, long)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not kernels.causal_usable(q, k, v)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpt_step_agrees_with_and_without_the_kernels(dtype, monkeypatch):
    """A GPT's loss and gradients with arlm's attention and GELU kernels and with PyTorch's operators,
    the kernels being what ran (float32: same to rounding; bfloat16 autocast: within its rounding)."""
    monkeypatch.setattr(kernels, "wide_vectors", lambda: True)  # as on an AVX-512 CPU, where the model takes them
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0)
    m = GPT(cfg)
    x = torch.randint(0, 50, (3, 32))

    def loss_and_grads():
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
            _, loss = m(x, targets=x)
        loss.backward()
        return loss.detach().float(), [p.grad.clone() for p in m.parameters()]

    calls = []
    for name in ("causal_attention", "gelu_tanh"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *t, name=name, real=real: calls.append(name) or real(*t))
    loss, grads = loss_and_grads()
    assert sorted(calls) == sorted(["causal_attention", "gelu_tanh"] * cfg.n_layer)
    monkeypatch.setattr(kernels, "_loaded", False)
    monkeypatch.setattr(kernels, "_tried", True)
    loss_torch, grads_torch = loss_and_grads()
    assert len(calls) == 2 * cfg.n_layer  # the fallback ran PyTorch's operators
    tol = 1e-5 if dtype == "float32" else 2e-2
    assert abs(loss - loss_torch) < tol
    for a, b in zip(grads, grads_torch):
        assert (a - b).abs().max() <= tol * (1 + b.abs().max()) * (1 if dtype == "float32" else 5)


@pytest.mark.parametrize("rows", [9, 13, 32])
@pytest.mark.parametrize("N, K", [(70, 100), (35, 36), (48, 768), (20, 600), (3, 9)])
def test_many_row_kernels_match_float64_reference(rows, N, K):
    """Beam search's GEMM kernels, at sizes that are not multiples of their tiles (6 x 16, 4 x 3) or of 8."""
    g = torch.Generator().manual_seed(rows * 100 + N)
    x, w, b = torch.randn(rows, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    want = reference(x, w, None, b)
    for fn in (kernels.linear_rows, kernels.linear_packed):
        for bias in (b, None):
            got = fn(x[:, None], w, bias)[:, 0]
            assert got.shape == (rows, N)
            assert (got.double() - (want if bias is not None else want - b.double())).abs().max() < 1e-3 * K ** 0.5


def test_throughput_mode_picks_a_product_and_leaves_the_batch_invariant_path_alone():
    layer = Linear(64, 40).eval()
    x = torch.randn(16, 1, 64)
    with torch.inference_mode():
        invariant = layer(x)  # decode rows take arlm::linear outside throughput mode
        assert torch.equal(invariant, kernels.linear(x, layer.weight, None, layer.bias))
        with kernels.throughput_mode():
            fast = layer(x)
            assert kernels.many_rows_linear(x, layer.weight, layer.bias) in (
                kernels.linear_packed, kernels.linear_rows, torch.nn.functional.linear)
        assert (fast - invariant).abs().max() < 1e-4
        assert kernels.many_rows_linear(x, layer.weight, layer.bias) is None  # off again
