/* Linear layers for decoding on CPU: y (R, N) = x (R, K) @ W.T (W is (N, K)) [* scale (N)] [+ bias (N)],
 * registered as the PyTorch operator arlm::linear.
 *
 * Decoding reads every weight once per token, so a decode step is as fast as the weights stream from
 * memory. The kernels here are written to stream them at the machine's read bandwidth:
 *   - threads take contiguous runs of output channels (rows of W), so each reads long contiguous
 *     stretches of memory and the hardware prefetcher keeps ahead of it; for one row of x
 *     (decoding at batch 1) each thread reads STREAMS such runs at once (see gemv_streams);
 *   - one row of W is reused from L1 cache for all rows of x (a small batch costs one pass over W);
 *   - at least four independent accumulators hide the latency of the fused multiply-adds (one
 *     accumulator leaves a single dependency chain and runs ~20% below bandwidth here);
 *   - bfloat16 weights are widened to float in registers, so they cost 2 bytes read instead of 4;
 *   - int8 weights (1 byte) are multiplied as integers with activations rounded to int16 (AVX2, see
 *     i8q_linear), or widened to float like bfloat16 elsewhere;
 *   - for int8 (a row is few cache lines of work) lines ahead are prefetched explicitly; for
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
/* float32/bfloat16: rows a pass with two banks of accumulators (2 x 4 x 8 lanes in registers; two
   banks for 8 rows would spill AVX2's 16 registers) */
constexpr int FLOAT_ROWS = 4;

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

/* R (1..FLOAT_ROWS) rows of x against one row of W: each weight vector is loaded and widened once for
   all rows. Two banks of accumulators (16 weights a step), the order of dot_streams below: every
   row is summed in the same order whatever the number of rows, so a sequence decodes to the same
   bits alone or beside others in a batch (the engine's batch invariance, tests/model/test_kernels.py). */
template <int R, typename WT> static inline void dotn(const WT *w, const float *x, int64_t K, float *out) {
    constexpr int banks = 2;
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

/* Weight rows a multi-row pass takes together: each x vector loaded then feeds W_ROWS weight rows, so
   a pass does 2 x FLOAT_ROWS x W_ROWS accumulators' work per load of x instead of one row's (x, 4 KB
   a row for GPT-2, streams from L2 once a batch outgrows L1). AVX-512 has the 32 vector registers
   that 2 x 4 x 3 accumulators need; AVX2's 16 keep one row. Measured on GPT-2-124M's 48 block
   matrices at 16 rows, weights streaming from memory (AMD EPYC, 2 cores, medians of 3 runs):
   W_ROWS 1: 47.5 ms; 3: 41.6 ms; 3 with x held in a register (below): 32-34 ms. One core on a
   768 x 768 matrix at 16 rows: 47 -> 65 GFLOPS, where MKL's sgemm (not batch-invariant) gives 75. */
#if defined(__AVX512VL__)
constexpr int W_ROWS = 3;
#else
constexpr int W_ROWS = 1;
#endif

/* R rows of x against NT rows of W: out[r * NT + j]. Every (row, weight row) pair is summed exactly
   as dotn sums it (two banks of 8 lanes, 16 weights a step, the 8-weight tail in bank 0, then
   hsum(bank 0 + bank 1), then the scalar tail), so results do not depend on the grouping. */
template <int R, int NT, typename WT>
static inline void dot_tile(const WT *const *w, const float *x, int64_t K, float *out) {
    f8 acc[2][R][NT] = {};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
        for (int b = 0; b < 2; b++) {
            f8 wv[NT];
            for (int j = 0; j < NT; j++) wv[j] = load(w[j] + k + 8 * b);
            for (int r = 0; r < R; r++) {
                f8 xv = load(x + r * K + k + 8 * b);
                /* GCC folds the load into each of the NT multiply-adds (NT loads of the same x); the
                   empty asm makes it load once into a register */
                __asm__("" : "+x"(xv));
                for (int j = 0; j < NT; j++) acc[b][r][j] += wv[j] * xv;
            }
        }
    for (; k + 8 <= K; k += 8)
        for (int r = 0; r < R; r++) {
            const f8 xv = load(x + r * K + k);
            for (int j = 0; j < NT; j++) acc[0][r][j] += load(w[j] + k) * xv;
        }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NT; j++) {
            float s = hsum(acc[0][r][j] + acc[1][r][j]);
            for (int64_t i = k; i < K; i++) s += widen(w[j][i]) * x[r * K + i];
            out[r * NT + j] = s;
        }
}

/* Decoding at batch 1 (one row of x) reads each weight once and does little arithmetic per byte,
 * so its speed is how many cache lines are being fetched at a time. One sequential run of rows per
 * thread left a third of the bandwidth unused on the 2-core machine (float32 ~22-25 GB/s, int8
 * ~15-20 GB/s, where 2 threads summing a tensor read 25-36): the out-of-order window holds only a
 * few rows' loads, and the hardware prefetcher follows one stream per thread. So the matrix is cut
 * into STREAMS parts and each thread walks the same rows of every part at once: STREAMS sequential
 * streams per thread, still long contiguous runs (interleaving the threads' rows in small chunks
 * measured slower). Measured on GPT-2-124M's matrices, interleaved runs: float32 22-25 -> 29-33
 * GB/s, int8 15-21 -> 23-32 GB/s (2 streams gained less, 8 no more; bench/README.md). */
constexpr int STREAMS = 4;

/* One row of x against S rows of W (one per stream). */
template <int S, typename WT> static inline void dot_streams(const WT *const *w, const float *x, int64_t K, float *out) {
    f8 a[2][S] = {};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        const f8 x0 = load(x + k), x1 = load(x + k + 8);
        for (int j = 0; j < S; j++) a[0][j] += load(w[j] + k) * x0;
        for (int j = 0; j < S; j++) a[1][j] += load(w[j] + k + 8) * x1;
    }
    for (; k + 8 <= K; k += 8) {
        const f8 x0 = load(x + k);
        for (int j = 0; j < S; j++) a[0][j] += load(w[j] + k) * x0;
    }
    for (int j = 0; j < S; j++) {
        float s = hsum(a[0][j] + a[1][j]);
        for (int64_t i = k; i < K; i++) s += widen(w[j][i]) * x[i];
        out[j] = s;
    }
}

/* y (N) = W x for one row x: rows p, p + H, p + 2H, ... (H = N / STREAMS) together; the last
   N % STREAMS rows after. ``dot(rows, S, out)`` computes S rows. */
template <typename WT, typename Dot> static void gemv_streams(const WT *w, const float *scale, const float *bias, float *y,
                                                             int64_t N, int64_t K, int threads, Dot &&dot) {
    const int64_t H = N / STREAMS;
    auto finish = [&](int64_t n, float v) { y[n] = v * (scale ? scale[n] : 1.0f) + (bias ? bias[n] : 0.0f); };
#pragma omp parallel for num_threads(threads) schedule(guided, 16) if (N * K >= 65536)
    for (int64_t p = 0; p < H; p++) {
        const WT *rows[STREAMS];
        float out[STREAMS];
        for (int j = 0; j < STREAMS; j++) rows[j] = w + (p + j * H) * K;
        dot(rows, std::integral_constant<int, STREAMS>{}, out);
        for (int j = 0; j < STREAMS; j++) finish(p + j * H, out[j]);
    }
    for (int64_t n = STREAMS * H; n < N; n++) {
        const WT *row = w + n * K;
        float out;
        dot(&row, std::integral_constant<int, 1>{}, &out);
        finish(n, out);
    }
}

/* The whole layer for float32, bfloat16 or (without AVX2) int8 weights. Threads take shrinking
   contiguous runs of output channels ("guided": a thread that finishes early takes more, 3-6%
   faster than equal halves here); tiny layers stay on one thread. */
template <typename WT> static void float_linear(const float *x, const WT *w, const float *scale, const float *bias,
                                                float *y, int64_t R, int64_t N, int64_t K, int threads) {
    if (R == 1)
        return gemv_streams(w, scale, bias, y, N, K, threads, [&](const WT *const *rows, auto s, float *out) {
            dot_streams<decltype(s)::value>(rows, x, K, out);
        });
    /* Panels of PANEL weight rows (a few hundred KB: they stay in L2) are the unit of work: for each
       group of FLOAT_ROWS rows of x (in L1), the panel's blocks of W_ROWS weight rows are swept, so
       weights come from memory once per step and x from L1 (the blocking of a GEMM; each output is
       still one dot_tile/dotn call, summed in the same order). */
    constexpr int64_t PANEL = 16 * W_ROWS;
    const int64_t panels = (N + PANEL - 1) / PANEL;
#pragma omp parallel for num_threads(threads) schedule(guided, 1) if (N * K * R >= 65536)
    for (int64_t p = 0; p < panels; p++) {
        const int64_t p0 = p * PANEL, p1 = p0 + PANEL < N ? p0 + PANEL : N;
        if (sizeof(WT) < 4 && p1 + PANEL <= N)  /* short rows: the next panel, see i8q_linear */
            for (int64_t k = 0; k < PANEL * K * (int64_t)sizeof(WT); k += 64)
                __builtin_prefetch((const char *)(w + p1 * K) + k);
        for (int64_t r0 = 0; r0 < R; r0 += FLOAT_ROWS) {
            const int xr = R - r0 < FLOAT_ROWS ? (int)(R - r0) : FLOAT_ROWS;
            for (int64_t n0 = p0; n0 < p1; n0 += W_ROWS) {
                const int nt = p1 - n0 < W_ROWS ? (int)(p1 - n0) : W_ROWS;
                const WT *rows[W_ROWS];
                for (int j = 0; j < nt; j++) rows[j] = w + (n0 + j) * K;
                float out[FLOAT_ROWS * W_ROWS];
                with_rows(xr, [&](auto rc) {
                    constexpr int RC = decltype(rc)::value;
                    if constexpr (RC <= FLOAT_ROWS) {
                        if (nt == W_ROWS) {
                            dot_tile<RC, W_ROWS>(rows, x + r0 * K, K, out);
                        } else {  /* the last, partial block: one weight row at a time */
                            for (int j = 0; j < nt; j++) {
                                float one[FLOAT_ROWS];
                                dotn<RC>(rows[j], x + r0 * K, K, one);
                                for (int r = 0; r < RC; r++) out[r * W_ROWS + j] = one[r];
                            }
                        }
                    }
                });
                for (int r = 0; r < xr; r++)
                    for (int j = 0; j < nt; j++) {
                        const int64_t n = n0 + j;
                        y[(r0 + r) * N + n] = out[r * W_ROWS + j] * (scale ? scale[n] : 1.0f) + (bias ? bias[n] : 0.0f);
                    }
            }
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

/* R (1..I8_ROWS) rows of int16 activations against one int8 weight row; K % 32 == 0. Four rows a
   pass, not MAX_ROWS: 2 x 8 accumulators, two widened weight vectors and the activations would need
   more than AVX2's 16 registers (measured on the 48 matrices of GPT-2-124M's blocks: 32 rows 67 ->
   59 ms, 8 rows 18.5 -> 12.9 ms; 6 rows a pass in between). */
constexpr int I8_ROWS = 4;
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

/* One row of int16 activations against S int8 weight rows (the rows S streams read next). Every
   64 weights, each stream asks for the line I8_PREFETCH bytes ahead of where it reads (x86 prefetches
   never fault, so the last rows may name addresses past the matrix). */
constexpr int64_t I8_PREFETCH = 2048;

template <int S> static inline void i8q_rows(const int8_t *const *w, const int16_t *x, int64_t K, float *out) {
    __m256 total[S];
    for (int j = 0; j < S; j++) total[j] = _mm256_setzero_ps();
    for (int64_t k0 = 0; k0 < K; k0 += I16_CHUNK) {
        const int64_t end = k0 + I16_CHUNK < K ? k0 + I16_CHUNK : K;
        __m256i a[2][S];
        for (int j = 0; j < S; j++) a[0][j] = a[1][j] = _mm256_setzero_si256();
        for (int64_t k = k0; k < end; k += 32) {
            if (k & 32)
                for (int j = 0; j < S; j++) __builtin_prefetch(w[j] + k + I8_PREFETCH);
            const __m256i x0 = x16(x + k), x1 = x16(x + k + 16);
            for (int j = 0; j < S; j++) a[0][j] = _mm256_add_epi32(a[0][j], _mm256_madd_epi16(w16(w[j] + k), x0));
            for (int j = 0; j < S; j++) a[1][j] = _mm256_add_epi32(a[1][j], _mm256_madd_epi16(w16(w[j] + k + 16), x1));
        }
        for (int j = 0; j < S; j++)
            total[j] = _mm256_add_ps(total[j], _mm256_cvtepi32_ps(_mm256_add_epi32(a[0][j], a[1][j])));
    }
    for (int j = 0; j < S; j++) out[j] = hsum((f8)total[j]);
}

/* Each row of x as int16 with its own symmetric scale: the largest |x| maps to 32767 (rounded to
   nearest even, as nearbyint). */
static void quantize_rows(const float *x, int16_t *xq, float *xscale, int64_t R, int64_t K) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * K;
        __m256 m = _mm256_setzero_ps();
        for (int64_t k = 0; k < K; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(xr + k)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
        const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 32767.0f / amax : 0.0f);
        for (int64_t k = 0; k < K; k += 16) {  /* K % 32 == 0 */
            const __m256i lo = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k), inv));
            const __m256i hi = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k + 8), inv));
            /* packs interleaves the 128-bit halves of lo and hi; the permute puts them back in order */
            _mm256_storeu_si256((__m256i *)(xq + r * K + k), _mm256_permute4x64_epi64(_mm256_packs_epi32(lo, hi), 0xD8));
        }
        xscale[r] = amax / 32767.0f;
    }
}

static void i8q_linear(const float *x, const int8_t *w, const float *scale, const float *bias, float *y,
                       int64_t R, int64_t N, int64_t K, int threads) {
    /* The calling thread's buffers, kept between calls (no allocation per layer). Only the pointers
       enter the parallel regions: there each thread's thread_local names its own copy. */
    thread_local std::vector<int16_t> xq_buf;
    thread_local std::vector<float> xscale_buf;
    if ((int64_t)xq_buf.size() < R * K) xq_buf.resize(R * K);
    if ((int64_t)xscale_buf.size() < R) xscale_buf.resize(R);
    const int16_t *xq = xq_buf.data();
    const float *xscale = xscale_buf.data();
    quantize_rows(x, xq_buf.data(), xscale_buf.data(), R, K);
    if (R == 1)
        return gemv_streams(w, scale, bias, y, N, K, threads, [&](const int8_t *const *rows, auto s, float *out) {
            i8q_rows<decltype(s)::value>(rows, xq, K, out);
            for (int j = 0; j < decltype(s)::value; j++) out[j] *= xscale[0];
        });
#pragma omp parallel for num_threads(threads) schedule(guided, 16) if (N * K * R >= 65536)
    for (int64_t n = 0; n < N; n++) {
        const float s = scale ? scale[n] : 1.0f, b = bias ? bias[n] : 0.0f;
        /* ask for the row 8 ahead now: with 1 byte a weight, a row is only ~K/64 cache lines of work,
           and the hardware prefetcher alone left ~10% of the bandwidth unused here */
        if (n + 8 < N)
            for (int64_t k = 0; k < K; k += 64) __builtin_prefetch(w + (n + 8) * K + k);
        for (int64_t r0 = 0; r0 < R; r0 += I8_ROWS) {
            const int rows = R - r0 < I8_ROWS ? (int)(R - r0) : I8_ROWS;
            float out[MAX_ROWS];
            with_rows(rows, [&](auto rc) { i8q_dotn<decltype(rc)::value>(w + n * K, xq + r0 * K, K, out); });
            for (int r = 0; r < rows; r++) y[(r0 + r) * N + n] = out[r] * xscale[r0 + r] * s + b;
        }
    }
}
#endif

/* Many rows of float32 (beam search: prompts x beams), where no batch invariance is asked for (the
 * caller chose this operator, arlm::linear_rows): a register tile of GEMM_R rows of x by GEMM_N rows
 * of W with one accumulator per pair (12 of AVX2's 16 vector registers), so each 8 weights' step
 * loads GEMM_R + GEMM_N vectors for GEMM_R x GEMM_N multiply-adds, where dot_tile (two banks, one
 * weight row on AVX2) loads 5 for 4 and is load-bound. The blocking around it is float_linear's:
 * panels of weight rows that stay in L2, swept by each tile of x. Measured on the Marian opus-mt
 * output layer (512 x 58,101) at 32 rows, 2-core EPYC: bench/seq2seq_beam.py, docs/seq2seq.md. */
constexpr int GEMM_R = 4, GEMM_N = 3;

/* a * b + c in one instruction where the CPU has FMA (ISO C++ mode does not contract a * b + c) */
static inline f8 fma8(f8 a, f8 b, f8 c) {
#ifdef __FMA__
    return (f8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
    return a * b + c;
#endif
}

template <int R> static inline void gemm_tile(const float *const *w, const float *x, int64_t K, float *out) {
    f8 acc[R][GEMM_N] = {};
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        f8 wv[GEMM_N];
        for (int j = 0; j < GEMM_N; j++) wv[j] = load(w[j] + k);
        for (int r = 0; r < R; r++) {
            f8 xv = load(x + r * K + k);
            __asm__("" : "+x"(xv));  /* one load into a register for the GEMM_N multiply-adds (see dot_tile) */
            for (int j = 0; j < GEMM_N; j++) acc[r][j] = fma8(wv[j], xv, acc[r][j]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < GEMM_N; j++) {
            float s = hsum(acc[r][j]);
            for (int64_t i = k; i < K; i++) s += w[j][i] * x[r * K + i];
            out[r * GEMM_N + j] = s;
        }
}

static void gemm(const float *x, const float *w, const float *bias, float *y, int64_t R, int64_t N, int64_t K, int threads) {
    constexpr int64_t PANEL = 16 * GEMM_N;
    const int64_t panels = (N + PANEL - 1) / PANEL;
#pragma omp parallel for num_threads(threads) schedule(guided, 1) if (N * K * R >= 65536)
    for (int64_t p = 0; p < panels; p++) {
        const int64_t p0 = p * PANEL, p1 = p0 + PANEL < N ? p0 + PANEL : N;
        for (int64_t r0 = 0; r0 < R; r0 += GEMM_R) {
            const int xr = R - r0 < GEMM_R ? (int)(R - r0) : GEMM_R;
            for (int64_t n0 = p0; n0 < p1; n0 += GEMM_N) {
                const int nt = p1 - n0 < GEMM_N ? (int)(p1 - n0) : GEMM_N;
                const float *rows[GEMM_N];
                for (int j = 0; j < GEMM_N; j++) rows[j] = w + (n0 + (j < nt ? j : 0)) * K;  /* a short block repeats a row */
                float out[GEMM_R * GEMM_N];
                switch (xr) {
                case 1: gemm_tile<1>(rows, x + r0 * K, K, out); break;
                case 2: gemm_tile<2>(rows, x + r0 * K, K, out); break;
                case 3: gemm_tile<3>(rows, x + r0 * K, K, out); break;
                default: gemm_tile<GEMM_R>(rows, x + r0 * K, K, out); break;
                }
                for (int r = 0; r < xr; r++)
                    for (int j = 0; j < nt; j++)
                        y[(r0 + r) * N + n0 + j] = out[r * GEMM_N + j] + (bias ? bias[n0 + j] : 0.0f);
            }
        }
    }
}

/* The same product with the weight packed once into column panels (packed[b][k][i] = W[16 b + i][k],
 * zero rows past N): the BLIS-style micro-kernel (Van Zee and van de Geijn, "BLIS: A Framework for
 * Rapidly Instantiating BLAS Functionality", 2015), PACK_R rows of x by 16 outputs in 12 of AVX2's 16
 * vector registers, each step loading 2 weight vectors and broadcasting PACK_R values of x for
 * 2 x PACK_R multiply-adds, with no horizontal sums (the outputs lie along the vector lanes).
 *
 * x is packed too, per tile of PACK_R rows as [k][row], so that the PACK_R values a step broadcasts
 * are adjacent and each broadcast is one load (vbroadcastss from memory). Read from x's rows as they
 * are (PACK_R strided streams, and a register shuffle per broadcast), the same loop ran 1.5x slower on
 * the 2-core AMD EPYC 7003 (AVX2): 512 x 58,101 at 32 rows, 23.7 against 15.2 ms (2 threads). K is
 * taken in blocks of PACK_K so a panel's block (16 KB) and the tile's (6 KB) stay in L1 while every
 * tile of x passes over the block (0.54 against 0.62 ms at K = 2048). Each output is still the sum over
 * k in order with one fused multiply-add per term, as before: the same bits. */
constexpr int PACK_R = 6, PACK_N = 16, PACK_K = 256;

static inline void store(float *p, f8 v) { memcpy(p, &v, sizeof v); }

static inline f8 broadcast(const float *p) {
#ifdef __AVX__
    return (f8)_mm256_broadcast_ss(p);
#else
    return f8{} + *p;
#endif
}

/* acc_out (R x 16) = (or, with accumulate, +=) the tile's rows xp ([k][R]) times the panel block p ([k][16]). */
template <int R>
static inline void packed_tile(const float *p, const float *xp, int64_t K, float *acc_out, bool accumulate) {
    f8 acc[R][2];
    for (int r = 0; r < R; r++) {
        acc[r][0] = accumulate ? load(acc_out + r * PACK_N) : f8{};
        acc[r][1] = accumulate ? load(acc_out + r * PACK_N + 8) : f8{};
    }
    for (int64_t k = 0; k < K; k++) {
        const f8 w0 = load(p + k * PACK_N), w1 = load(p + k * PACK_N + 8);
        for (int r = 0; r < R; r++) {
            const f8 xb = broadcast(xp + k * R + r);
            acc[r][0] = fma8(w0, xb, acc[r][0]);
            acc[r][1] = fma8(w1, xb, acc[r][1]);
        }
    }
    /* stored by value: taking the accumulators' addresses (memcpy from &acc) made GCC keep them in
       memory and store them at every step (2x slower) */
    for (int r = 0; r < R; r++) {
        store(acc_out + r * PACK_N, acc[r][0]);
        store(acc_out + r * PACK_N + 8, acc[r][1]);
    }
}

/* x (R, K) as the tiles read it: the tile of rows r0.. (xr = min(PACK_R, R - r0) of them) at xp + r0 K,
 * as [k][xr]. */
static std::vector<float> pack_rows(const float *x, int64_t R, int64_t K) {
    std::vector<float> xp(R * K);
    for (int64_t r0 = 0; r0 < R; r0 += PACK_R) {
        const int xr = R - r0 < PACK_R ? (int)(R - r0) : PACK_R;
        float *d = xp.data() + r0 * K;
        for (int r = 0; r < xr; r++)
            for (int64_t k = 0; k < K; k++) d[k * xr + r] = x[(r0 + r) * K + k];
    }
    return xp;
}

static void packed_gemm(const float *x, const float *packed, const float *bias, float *y, int64_t R, int64_t N,
                        int64_t K, int threads) {
    const int64_t blocks = (N + PACK_N - 1) / PACK_N;
    const std::vector<float> xp = pack_rows(x, R, K);
#pragma omp parallel num_threads(threads) if (N * K * R >= 65536)
    {
        std::vector<float> out(R * PACK_N);  // this panel's outputs for every row
#pragma omp for schedule(guided, 4)
        for (int64_t b = 0; b < blocks; b++) {
            const float *p = packed + b * K * PACK_N;
            const int64_t n0 = b * PACK_N;
            const int nt = N - n0 < PACK_N ? (int)(N - n0) : PACK_N;
            for (int64_t k0 = 0; k0 < K; k0 += PACK_K) {
                const int64_t kc = K - k0 < PACK_K ? K - k0 : PACK_K;
                for (int64_t r0 = 0; r0 < R; r0 += PACK_R) {
                    const int xr = R - r0 < PACK_R ? (int)(R - r0) : PACK_R;
                    const float *pk = p + k0 * PACK_N, *xk = xp.data() + r0 * K + k0 * xr;
                    float *o = out.data() + r0 * PACK_N;
                    switch (xr) {
                    case 1: packed_tile<1>(pk, xk, kc, o, k0 > 0); break;
                    case 2: packed_tile<2>(pk, xk, kc, o, k0 > 0); break;
                    case 3: packed_tile<3>(pk, xk, kc, o, k0 > 0); break;
                    case 4: packed_tile<4>(pk, xk, kc, o, k0 > 0); break;
                    case 5: packed_tile<5>(pk, xk, kc, o, k0 > 0); break;
                    default: packed_tile<PACK_R>(pk, xk, kc, o, k0 > 0); break;
                    }
                }
            }
            for (int64_t r = 0; r < R; r++)
                for (int i = 0; i < nt; i++) y[r * N + n0 + i] = out[r * PACK_N + i] + (bias ? bias[n0 + i] : 0.0f);
        }
    }
}

static at::Tensor linear_packed(const at::Tensor &x, const at::Tensor &packed, const std::optional<at::Tensor> &bias,
                                int64_t N) {
    const int64_t K = x.size(-1);
    TORCH_CHECK(packed.dim() == 3 && packed.is_contiguous() && packed.scalar_type() == at::kFloat && packed.size(1) == K
                && packed.size(2) == PACK_N && packed.size(0) == (N + PACK_N - 1) / PACK_N,
                "arlm::linear_packed: packed weight (ceil(N/16), K, 16) float32");
    TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N),
                "arlm::linear_packed: bias is float32 (N,)");
    at::Tensor rows = x.reshape({-1, K}).to(at::kFloat).contiguous();
    at::Tensor y = at::empty({rows.size(0), N}, rows.options());
    packed_gemm(rows.const_data_ptr<float>(), packed.const_data_ptr<float>(), bias ? bias->const_data_ptr<float>() : nullptr,
                y.mutable_data_ptr<float>(), rows.size(0), N, K, at::get_num_threads());
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = N;
    return y.view(shape);
}

static at::Tensor linear_rows(const at::Tensor &x, const at::Tensor &w, const std::optional<at::Tensor> &bias) {
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.scalar_type() == at::kFloat && x.size(-1) == w.size(1),
                "arlm::linear_rows: float32 weight (N, K) contiguous, x (..., K)");
    const int64_t N = w.size(0), K = w.size(1);
    TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N),
                "arlm::linear_rows: bias is float32 (N,)");
    at::Tensor rows = x.reshape({-1, K}).to(at::kFloat).contiguous();
    at::Tensor y = at::empty({rows.size(0), N}, rows.options());
    gemm(rows.const_data_ptr<float>(), w.const_data_ptr<float>(), bias ? bias->const_data_ptr<float>() : nullptr,
         y.mutable_data_ptr<float>(), rows.size(0), N, K, at::get_num_threads());
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = N;
    return y.view(shape);
}

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

TORCH_LIBRARY(arlm, m) {
    m.def("linear(Tensor x, Tensor weight, Tensor? scale, Tensor? bias) -> Tensor");
    m.def("linear_rows(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
    m.def("linear_packed(Tensor x, Tensor packed, Tensor? bias, int n) -> Tensor");
}
TORCH_LIBRARY_IMPL(arlm, CPU, m) {
    m.impl("linear", linear);
    m.impl("linear_rows", linear_rows);
    m.impl("linear_packed", linear_packed);
}
