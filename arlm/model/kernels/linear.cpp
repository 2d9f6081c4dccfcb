/* Linear layers for decoding on CPU: y (R, N) = x (R, K) @ W.T (W is (N, K)) [* scale (N)] [+ bias (N)],
 * registered as the PyTorch operator arlm::linear.
 *
 * Decoding reads every weight once per token, so a decode step is as fast as the weights stream from
 * memory. The kernels here are written to stream them at the machine's read bandwidth:
 *   - threads take contiguous runs of output channels (rows of W), so each reads long contiguous
 *     stretches of memory and the hardware prefetcher keeps ahead of it;
 *   - one row of W is reused from L1 cache for all rows of x (a small batch costs one pass over W);
 *   - for one row of x, four independent accumulators hide the latency of the fused multiply-adds
 *     (one accumulator leaves a single dependency chain and runs ~20% below bandwidth here);
 *   - bfloat16 weights are widened to float in registers, so they cost 2 bytes read instead of 4;
 *   - int8 weights (1 byte) are multiplied as integers with activations rounded to int16 (AVX2, see
 *     i8q_linear), or widened to float like bfloat16 elsewhere;
 *   - for int8 (a row is few cache lines of work) the row 8 ahead is prefetched explicitly; for
 *     float32 that measured slower than the hardware prefetcher alone.
 * Written with GCC/Clang vector extensions and templates (one per weight format and row count): the compiler maps the 8-lane float vectors to AVX2 (or
 * two SSE/NEON registers) for the machine it is compiled on; AVX2 intrinsics only where GCC's own
 * widening of 8/16-bit vectors is slow. Compiled on first use by arlm/model/kernels/__init__.py.
 * A C++ operator rather than a C function called through ctypes: PyTorch's dispatcher calls it in
 * a few microseconds, eagerly and from torch.compile's generated code (a Python operator costs
 * ~35 us a call, as much as a small layer's arithmetic).
 */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "vec.h"

constexpr int MAX_ROWS = 8;  /* rows of x handled in one pass over a row of W */

/* Calls f(std::integral_constant<int, rows>) for rows in 1..MAX_ROWS, so each row count gets its own
   fully unrolled code (the accumulators then live in registers). */
template <typename F> static inline void with_rows(int rows, F &&f) {
    switch (rows) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, MAX_ROWS>{}); break;
    }
}

/* One row of x against one row of W: four independent accumulators. */
template <typename WT> static inline float dot1(const WT *w, const float *x, int64_t K) {
    f8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 += load(w + k) * load(x + k);
        a1 += load(w + k + 8) * load(x + k + 8);
        a2 += load(w + k + 16) * load(x + k + 16);
        a3 += load(w + k + 24) * load(x + k + 24);
    }
    for (; k + 8 <= K; k += 8) a0 += load(w + k) * load(x + k);
    float s = hsum((a0 + a1) + (a2 + a3));
    for (; k < K; k++) s += widen(w[k]) * x[k];
    return s;
}

/* R (2..MAX_ROWS) rows of x against one row of W: each weight vector is loaded and widened once for
   all rows. Up to 4 rows, two banks of accumulators (16 weights a step) so that at least 4
   independent sums are in flight. */
template <int R, typename WT> static inline void dotn(const WT *w, const float *x, int64_t K, float *out) {
    constexpr int banks = R <= 4 ? 2 : 1;
    f8 acc[2][R] = {};
    int64_t k = 0;
    for (; k + 8 * banks <= K; k += 8 * banks)
        for (int b = 0; b < banks; b++) {
            const f8 wv = load(w + k + 8 * b);
            for (int r = 0; r < R; r++) acc[b][r] += wv * load(x + r * K + k + 8 * b);
        }
    for (; k + 8 <= K; k += 8) {
        const f8 wv = load(w + k);
        for (int r = 0; r < R; r++) acc[0][r] += wv * load(x + r * K + k);
    }
    for (int r = 0; r < R; r++) {
        float s = hsum(acc[0][r] + acc[1][r]);
        for (int64_t j = k; j < K; j++) s += widen(w[j]) * x[r * K + j];
        out[r] = s;
    }
}

/* The whole layer for float32, bfloat16 or (without AVX2) int8 weights. Threads take shrinking
   contiguous runs of output channels ("guided": a thread that finishes early takes more, 3-6%
   faster than equal halves here); tiny layers stay on one thread. */
template <typename WT> static void float_linear(const float *x, const WT *w, const float *scale, const float *bias,
                                                float *y, int64_t R, int64_t N, int64_t K, int threads) {
#pragma omp parallel for num_threads(threads) schedule(guided, 16) if (N * K * R >= 65536)
    for (int64_t n = 0; n < N; n++) {
        const WT *row = w + n * K;
        const float s = scale ? scale[n] : 1.0f, b = bias ? bias[n] : 0.0f;
        if (sizeof(WT) < 4 && n + 8 < N)  /* short rows: the row 8 ahead, see i8q_linear */
            for (int64_t k = 0; k < K * (int64_t)sizeof(WT); k += 64)
                __builtin_prefetch((const char *)(w + (n + 8) * K) + k);
        for (int64_t r0 = 0; r0 < R; r0 += MAX_ROWS) {
            const int rows = R - r0 < MAX_ROWS ? (int)(R - r0) : MAX_ROWS;
            float out[MAX_ROWS];
            with_rows(rows, [&](auto rc) {
                constexpr int RC = decltype(rc)::value;
                if constexpr (RC == 1) out[0] = dot1(row, x + r0 * K, K);
                else dotn<RC>(row, x + r0 * K, K, out);
            });
            for (int r = 0; r < rows; r++) y[(r0 + r) * N + n] = out[r] * s + b;
        }
    }
}

#ifdef __AVX2__
/* int8 weights with int16 activations (AVX2). Widening each weight to float costs a convert per 8
 * weights and makes the float kernel above arithmetic-bound (~13 G weights/s a core here). Instead
 * each row of x is rounded to int16 with its own scale (relative error <= 2^-16 of the row's largest
 * value, far below the int8 weights' own error), and vpmaddwd multiplies 16 weight/activation pairs
 * and adds neighbours in one instruction. A 32-bit lane gains at most 2 * 127 * 32767 < 2^23.1 per
 * step, so sums are moved to float every I16_CHUNK weights (64 steps per accumulator) before they
 * could overflow. The same idea as llama.cpp's quantized dot products, with finer activations. */
constexpr int64_t I16_CHUNK = 2048;

static inline __m256i w16(const int8_t *p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)); }
static inline __m256i x16(const int16_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* R (1..MAX_ROWS) rows of int16 activations against one int8 weight row; K % 32 == 0. */
template <int R> static inline void i8q_dotn(const int8_t *w, const int16_t *x, int64_t K, float *out) {
    __m256 total[R];
    for (int r = 0; r < R; r++) total[r] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += I16_CHUNK) {
        const int64_t end = k0 + I16_CHUNK < K ? k0 + I16_CHUNK : K;
        __m256i a[2][R];
        for (int r = 0; r < R; r++) a[0][r] = a[1][r] = _mm256_setzero_si256();
        for (int64_t k = k0; k < end; k += 32) {
            const __m256i w0 = w16(w + k), w1 = w16(w + k + 16);
            for (int r = 0; r < R; r++) {
                a[0][r] = _mm256_add_epi32(a[0][r], _mm256_madd_epi16(w0, x16(x + r * K + k)));
                a[1][r] = _mm256_add_epi32(a[1][r], _mm256_madd_epi16(w1, x16(x + r * K + k + 16)));
            }
        }
        for (int r = 0; r < R; r++)
            total[r] = _mm256_add_ps(total[r], _mm256_cvtepi32_ps(_mm256_add_epi32(a[0][r], a[1][r])));
    }
    for (int r = 0; r < R; r++) out[r] = hsum((f8)total[r]);
}

static void i8q_linear(const float *x, const int8_t *w, const float *scale, const float *bias, float *y,
                       int64_t R, int64_t N, int64_t K, int threads) {
    std::vector<int16_t> xq(R * K);
    std::vector<float> xscale(R);
    for (int64_t r = 0; r < R; r++) {  /* symmetric per-row scale: the largest |x| maps to 32767 */
        float amax = 0.0f;
        for (int64_t k = 0; k < K; k++) amax = std::max(amax, std::fabs(x[r * K + k]));
        const float inv = amax > 0.0f ? 32767.0f / amax : 0.0f;
        for (int64_t k = 0; k < K; k++) xq[r * K + k] = (int16_t)std::nearbyint(x[r * K + k] * inv);
        xscale[r] = amax / 32767.0f;
    }
#pragma omp parallel for num_threads(threads) schedule(guided, 16) if (N * K * R >= 65536)
    for (int64_t n = 0; n < N; n++) {
        const float s = scale ? scale[n] : 1.0f, b = bias ? bias[n] : 0.0f;
        /* ask for the row 8 ahead now: with 1 byte a weight, a row is only ~K/64 cache lines of work,
           and the hardware prefetcher alone left ~10% of the bandwidth unused here */
        if (n + 8 < N)
            for (int64_t k = 0; k < K; k += 64) __builtin_prefetch(w + (n + 8) * K + k);
        for (int64_t r0 = 0; r0 < R; r0 += MAX_ROWS) {
            const int rows = R - r0 < MAX_ROWS ? (int)(R - r0) : MAX_ROWS;
            float out[MAX_ROWS];
            with_rows(rows, [&](auto rc) { i8q_dotn<decltype(rc)::value>(w + n * K, xq.data() + r0 * K, K, out); });
            for (int r = 0; r < rows; r++) y[(r0 + r) * N + n] = out[r] * xscale[r0 + r] * s + b;
        }
    }
}
#endif

static at::Tensor linear(const at::Tensor &x, const at::Tensor &w, const std::optional<at::Tensor> &scale,
                         const std::optional<at::Tensor> &bias) {
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && x.size(-1) == w.size(1), "arlm::linear: weight (N, K) contiguous, x (..., K)");
    const int64_t N = w.size(0), K = w.size(1);
    for (const auto *v : {&scale, &bias})
        TORCH_CHECK(!v->has_value() || ((*v)->scalar_type() == at::kFloat && (*v)->is_contiguous() && (*v)->numel() == N),
                    "arlm::linear: scale and bias are float32 (N,)");
    at::Tensor rows = x.reshape({-1, K}).to(at::kFloat).contiguous();
    const int64_t R = rows.size(0);
    at::Tensor y = at::empty({R, N}, rows.options());
    const float *xp = rows.const_data_ptr<float>(), *sp = scale ? scale->const_data_ptr<float>() : nullptr,
                *bp = bias ? bias->const_data_ptr<float>() : nullptr;
    float *yp = y.mutable_data_ptr<float>();
    const int threads = at::get_num_threads();
    switch (w.scalar_type()) {
    case at::kFloat: float_linear(xp, w.const_data_ptr<float>(), sp, bp, yp, R, N, K, threads); break;
    case at::kBFloat16: float_linear(xp, static_cast<const uint16_t *>(w.const_data_ptr()), sp, bp, yp, R, N, K, threads); break;
    case at::kChar:
#ifdef __AVX2__
        if (K % 32 == 0) { i8q_linear(xp, w.const_data_ptr<int8_t>(), sp, bp, yp, R, N, K, threads); break; }
#endif
        float_linear(xp, w.const_data_ptr<int8_t>(), sp, bp, yp, R, N, K, threads); break;
    default: TORCH_CHECK(false, "arlm::linear: weight must be float32, bfloat16 or int8, got ", w.scalar_type());
    }
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = N;
    return y.view(shape);
}

TORCH_LIBRARY(arlm, m) { m.def("linear(Tensor x, Tensor weight, Tensor? scale, Tensor? bias) -> Tensor"); }
TORCH_LIBRARY_IMPL(arlm, CPU, m) { m.impl("linear", linear); }
