/* GELU with the tanh approximation (Hendrycks & Gimpel 2016; GPT-2's "gelu_new", arlm's default
 * activation), forward and backward, for CPU training and prefill, registered as the PyTorch
 * operators arlm::gelu_tanh and arlm::gelu_tanh_backward:
 *     y = 0.5 x (1 + tanh(u)),   u = sqrt(2/pi) (x + 0.044715 x^3)
 * evaluated as y = x sigmoid(2u) = x / (1 + exp(-2u)), the same function (0.5 (1 + tanh(u)) =
 * sigmoid(2u)), so one vectorised exp (expv, vec.h) does the work of tanh, 16 values at a time. The derivative follows
 * from the same form: dy/dx = s + x s (1 - s) d(2u)/dx with s = sigmoid(2u).
 *
 * Why: PyTorch evaluates the tanh with Sleef's 1-ulp tanhf, which made this elementwise function
 * cost as much as the matrix product before it: at (2048, 512) on 2 cores, forward 1.0 ms and
 * backward 1.1 ms in float32 and in bfloat16, against 0.79 ms for the bfloat16 product (2048x128 @
 * 128x512) and 0.28 ms for the exact (erf) GELU (bench/kernels.py times the tanh one against PyTorch's). Values are read
 * and written as float32 or bfloat16 and computed in float32.
 */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "vec.h"

static constexpr float TWO_C = 1.5957691216057308f;  /* 2 sqrt(2/pi): 2u = TWO_C (x + K x^3) */
static constexpr float K = 0.044715f;

/* -2u, where exp(-2u) = (1 - s) / s for s = sigmoid(2u). */
static inline f16 minus_2u(f16 x) { return -(TWO_C * x) * (1.0f + K * x * x); }

/* Past |2u| = 69 (|x| above about 9) s is within 1e-30 of 0 or 1: there y = 0 or x and dy/dx = 0 or 1
 * exactly, as in PyTorch (tanh rounds to -1 or 1), instead of products of huge and tiny factors
 * (denormals, or inf * 0 once x^3 overflows). */
static inline f16 saturate(f16 m, f16 v, f16 below, f16 above) { return m > 69.0f ? below : (m < -69.0f ? above : v); }

static inline f16 gelu_tanh16(f16 x) {
    const f16 m = minus_2u(x);
    return saturate(m, x / (1.0f + expv(m)), x * 0.0f, x);
}

/* s (1 - s) written as s^2 e (1 - s = e s): no cancellation where s is near 1. */
static inline f16 gelu_tanh_grad16(f16 x, f16 g) {
    const f16 m = minus_2u(x);
    const f16 e = expv(m);
    const f16 s = 1.0f / (1.0f + e);
    const f16 d2u = TWO_C * (1.0f + (3.0f * K) * x * x);  /* d(2u)/dx */
    return saturate(m, g * (s + x * (s * s * e) * d2u), g * 0.0f, g);
}

/* The last n < 16 values of a tensor, through a zero-padded buffer. */
template <typename T> static inline f16 load_part(const T *p, int64_t n) {
    T buf[16] = {};
    std::copy(p, p + n, buf);
    return load16(buf);
}

template <typename T> static inline void store_part(T *p, f16 v, int64_t n) {
    T buf[16];
    store16(buf, v);
    std::copy(buf, buf + n, p);
}

/* out[i] = f(x[i]) or f(x[i], g[i]) over n values, 16 at a time, the threads taking blocks of 16k. */
template <typename T, typename F> static void elementwise(const T *x, const T *g, T *out, int64_t n, F f) {
    at::parallel_for(0, (n + 15) / 16, 1024, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; b++) {
            const int64_t i = b * 16, m = std::min<int64_t>(16, n - i);
            if (m == 16)
                store16(out + i, f(load16(x + i), g ? load16(g + i) : f16{}));
            else
                store_part(out + i, f(load_part(x + i, m), g ? load_part(g + i, m) : f16{}), m);
        }
    });
}

template <typename F> static at::Tensor apply(const at::Tensor &x_, const at::Tensor *g_, F f) {
    TORCH_CHECK(x_.scalar_type() == at::kFloat || x_.scalar_type() == at::kBFloat16,
                "arlm::gelu_tanh: float32 or bfloat16 values");
    const at::Tensor x = x_.contiguous();
    const at::Tensor g = g_ ? g_->to(x.scalar_type()).contiguous() : at::Tensor();
    TORCH_CHECK(!g_ || g.sizes() == x.sizes(), "arlm::gelu_tanh_backward: grad and x of one shape");
    at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
    if (x.scalar_type() == at::kFloat)
        elementwise(x.const_data_ptr<float>(), g_ ? g.const_data_ptr<float>() : nullptr, out.mutable_data_ptr<float>(),
                    x.numel(), f);
    else
        elementwise(static_cast<const uint16_t *>(x.const_data_ptr()),
                    g_ ? static_cast<const uint16_t *>(g.const_data_ptr()) : nullptr,
                    static_cast<uint16_t *>(out.mutable_data_ptr()), x.numel(), f);
    return out;
}

static at::Tensor gelu_tanh(const at::Tensor &x) {
    return apply(x, nullptr, [](f16 v, f16) { return gelu_tanh16(v); });
}

static at::Tensor gelu_tanh_backward(const at::Tensor &grad, const at::Tensor &x) {
    return apply(x, &grad, [](f16 v, f16 g) { return gelu_tanh_grad16(v, g); });
}

TORCH_LIBRARY_FRAGMENT(arlm, m) {
    m.def("gelu_tanh(Tensor x) -> Tensor");
    m.def("gelu_tanh_backward(Tensor grad, Tensor x) -> Tensor");
}
TORCH_LIBRARY_IMPL(arlm, CPU, m) {
    m.impl("gelu_tanh", gelu_tanh);
    m.impl("gelu_tanh_backward", gelu_tanh_backward);
}
