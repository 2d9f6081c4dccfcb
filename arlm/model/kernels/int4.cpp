/* Linear layers with 4-bit weights for decoding on CPU, registered as the PyTorch operator
 * arlm::linear_int4: y (R, N) = x (R, K) @ W.T [+ bias (N)].
 *
 * Format (written by arlm/compress/int4.py): W is cut along K into groups of G = 32, 64 or 128
 * weights, each with a float16 scale s and offset m, and every weight is a code q in 0..15 with
 * w = s * q + m (symmetric quantisation is the case m = -8 s). Row n of W is K/2 bytes; its 32-weight
 * block b is bytes [16b, 16b + 16), byte j holding q[32b + j] in its low nibble and q[32b + j + 16]
 * in its high nibble, so one 16-byte load, a shift and a mask give the block's 32 codes in order.
 * Scales and offsets are (N, K/G) float16; symmetric layers store no offsets (m = -8 s), 1/16 less to read.
 *
 * Activations: each 32-value block of a row of x is rounded to int8 with its own scale sx (the
 * Q8_0 activations of llama.cpp's Q4 dot products) and its exact float sum kept, so
 *     sum_k w_k x_k = sum_b s_b sx_b (sum_{k in b} q_k x8_k)  +  sum_b m_b (sum_{k in b} x_k).
 * The integer dot of a block is one instruction (u8 x s8 products, vpdpbusd with AVX-VNNI, else
 * vpmaddubsw + vpmaddwd: 2 x 15 x 127 fits int16). Converting each block's sum to float and scaling
 * it is what made a first version arithmetic-bound, so the sums of 8 blocks are gathered into one
 * vector with horizontal adds and scaled together: about 7 instructions per 32 weights, a weight
 * costs 5/8 of a byte of memory traffic (codes, scale, offset at G = 32) instead of int8's 1.
 * Every output's sum is taken in the same order whatever the number of rows, so a sequence decodes
 * to the same bits alone or beside others in a batch. Without AVX2 a portable loop computes the same
 * formula. bench/decode.py compares it with int8 and with PyTorch's packed int4 operators.
 */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "vec.h"

constexpr int64_t BLOCK = 32;  /* weights per block: one scale of the activations, one integer dot */
#ifndef AHEAD_TILES
#define AHEAD_TILES 4
#endif
constexpr int SUPER = 8;       /* blocks whose sums are scaled together */

static inline float half_to_float(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) bits = sign | 0x7F800000 | (mant << 13);
    else if (exp != 0) bits = sign | ((exp + 112) << 23) | (mant << 13);
    else if (mant == 0) bits = sign;
    else {  /* subnormal: normalise */
        int e = -1;
        uint32_t m = mant;
        do { m <<= 1; e++; } while (!(m & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

/* The activations of one call: x8 (R, K) int8, and per (row, block) the scale and the float sum. */
struct Acts {
    const int8_t *q;
    const float *scale, *sum;
};

static void quantize_blocks(const float *x, int8_t *xq, float *xs, float *xsum, int64_t R, int64_t K) {
    const int64_t nb = K / BLOCK;
    for (int64_t i = 0; i < R * nb; i++) {
        const float *v = x + i * BLOCK;
        float amax = 0.0f, sum = 0.0f;
        for (int k = 0; k < BLOCK; k++) { amax = std::max(amax, std::fabs(v[k])); sum += v[k]; }
        const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        for (int k = 0; k < BLOCK; k++) xq[i * BLOCK + k] = (int8_t)std::nearbyint(v[k] * inv);
        xs[i] = amax / 127.0f;
        xsum[i] = sum;
    }
}

/* Portable: one output for R rows (reference formula, no vector extensions needed). */
static void q4_row_portable(const uint8_t *w, const uint16_t *s, const uint16_t *m, int64_t G, const Acts &a,
                            int64_t R, int64_t K, float *out) {
    const int64_t nb = K / BLOCK;
    for (int64_t r = 0; r < R; r++) {
        float total = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const int8_t *xq = a.q + r * K + b * BLOCK;
            const uint8_t *wb = w + b * (BLOCK / 2);
            int32_t dot = 0;
            for (int j = 0; j < 16; j++) dot += (wb[j] & 0x0F) * xq[j] + (wb[j] >> 4) * xq[j + 16];
            const int64_t g = b * BLOCK / G;
            const float sg = half_to_float(s[g]), mg = m ? half_to_float(m[g]) : -8.0f * sg;
            total += sg * a.scale[r * nb + b] * (float)dot + mg * a.sum[r * nb + b];
        }
        out[r] = total;
    }
}

#if defined(__AVX2__) && defined(__F16C__)
static inline __m256i dot32(__m256i q, const int8_t *x) {  /* 8 partial sums of q . x over 32 bytes */
    const __m256i xv = _mm256_loadu_si256((const __m256i *)x);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, xv);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), q, xv);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), _mm256_set1_epi16(1));
#endif
}

/* lo . x0 + hi . x1 as 8 partial sums (u8 codes times s8 activations). */
static inline __m256i dot2(__m256i lo, __m256i hi, __m256i x0, __m256i x1) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, x0), hi, x1);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lo, x0), hi, x1);
#else  /* each int16 lane: 4 products of at most 15 x 127 */
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, x0), _mm256_maddubs_epi16(hi, x1)),
                             _mm256_set1_epi16(1));
#endif
}

/* The float16 values of the groups of 8 consecutive blocks (first block b0), one lane per block. */
template <int BPG> static inline __m256 per_block(const uint16_t *h, int64_t b0) {
    const uint16_t *p = h + b0 / BPG;
    if constexpr (BPG == 1) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    if constexpr (BPG == 2)
        return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_loadl_epi64((const __m128i *)p)),
                                        _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3));
    int32_t two;
    memcpy(&two, p, sizeof two);
    return _mm256_permutevar8x32_ps(_mm256_cvtph_ps(_mm_cvtsi32_si128(two)), _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
}

/* The activations of whole groups of 8 blocks, reordered once per call so that the codes need no
   shuffle: a 32-byte load of the codes of blocks 2p and 2p + 1 gives, masked, their first 16 codes
   each, and shifted, their last 16; so each pair's 64 activations are stored as
   [x_2p[0..15], x_2p+1[0..15], x_2p[16..31], x_2p+1[16..31]]. */
static void pair_blocks(int8_t *xq, int64_t R, int64_t K) {
    const int64_t full = K / BLOCK / SUPER * SUPER;
    int8_t tmp[2 * BLOCK];
    for (int64_t r = 0; r < R; r++)
        for (int64_t b = 0; b < full; b += 2) {
            int8_t *p = xq + r * K + b * BLOCK;
            memcpy(tmp, p, 16); memcpy(tmp + 16, p + 32, 16); memcpy(tmp + 32, p + 16, 16); memcpy(tmp + 48, p + 48, 16);
            memcpy(p, tmp, sizeof tmp);
        }
}

/* NW weight rows against R rows of activations (R x NW <= 4 outputs a pass); BPG = blocks per
   group (G / 32). For each pair of blocks, lanes 0-3 of the integer sums belong to the first block
   and 4-7 to the second; two rounds of horizontal adds over a group of 8 blocks' 4 pairs give
   [b0 b2 b4 b6 | b1 b3 b5 b7], put in order by one permute. Several weight rows a pass (at batch 1)
   share the activation loads and give the core independent work: a row of GPT-2's matrices is only
   3 or 12 groups of 8 blocks, so the per-row work around the loop mattered as much as the loop. */
template <int R, int NW, int BPG> static inline void q4_tile(const uint8_t *const *w, const uint16_t *const *s,
                                                             const uint16_t *const *m, const Acts &a, int64_t K,
                                                             float *out /* [R][NW] */) {
    const int64_t nb = K / BLOCK, full = nb / SUPER * SUPER;
    const __m256i mask = _mm256_set1_epi8(0x0F), order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256 acc[R][NW];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NW; j++) acc[r][j] = _mm256_setzero_ps();
    for (int64_t b0 = 0; b0 < full; b0 += SUPER) {
        __m256i d[R][NW][SUPER / 2];
        for (int p = 0; p < SUPER / 2; p++) {
            __m256i x0[R], x1[R];
            for (int r = 0; r < R; r++) {
                x0[r] = _mm256_loadu_si256((const __m256i *)(a.q + r * K + b0 * BLOCK + 64 * p));
                x1[r] = _mm256_loadu_si256((const __m256i *)(a.q + r * K + b0 * BLOCK + 64 * p + 32));
            }
            for (int j = 0; j < NW; j++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(w[j] + (b0 + 2 * p) * (BLOCK / 2)));
                const __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                for (int r = 0; r < R; r++) d[r][j][p] = dot2(lo, hi, x0[r], x1[r]);
            }
        }
        for (int j = 0; j < NW; j++) {
            const __m256 sw = per_block<BPG>(s[j], b0);
            const __m256 mw = m[j] ? per_block<BPG>(m[j], b0) : _mm256_mul_ps(sw, _mm256_set1_ps(-8.0f));
            for (int r = 0; r < R; r++) {
                const __m256i sums = _mm256_permutevar8x32_epi32(
                    _mm256_hadd_epi32(_mm256_hadd_epi32(d[r][j][0], d[r][j][1]), _mm256_hadd_epi32(d[r][j][2], d[r][j][3])),
                    order);
                const __m256 scaled = _mm256_mul_ps(sw, _mm256_loadu_ps(a.scale + r * nb + b0));
                acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), scaled, acc[r][j]);
                acc[r][j] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(a.sum + r * nb + b0), acc[r][j]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NW; j++) out[r * NW + j] = hsum((f8)acc[r][j]);
    for (int64_t b = full; b < nb; b++)  /* blocks after the last whole 8 (activations in order) */
        for (int j = 0; j < NW; j++) {
            const __m128i v = _mm_loadu_si128((const __m128i *)(w[j] + b * (BLOCK / 2)));
            const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), mask);
            const float sb = half_to_float(s[j][b / BPG]), mb = m[j] ? half_to_float(m[j][b / BPG]) : -8.0f * sb;
            for (int r = 0; r < R; r++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(a.q + r * K + b * BLOCK));
                const __m256i d = dot2(q, _mm256_setzero_si256(), xv, _mm256_setzero_si256());
                __m128i h = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
                h = _mm_hadd_epi32(h, h);
                h = _mm_hadd_epi32(h, h);
                out[r * NW + j] += sb * a.scale[r * nb + b] * (float)_mm_cvtsi128_si32(h) + mb * a.sum[r * nb + b];
            }
        }
}

/* Outputs [n0, n0 + NW) for all R rows, in passes of up to 4 / NW rows. */
template <int NW, int BPG> static inline void q4_outputs(const uint8_t *w, const uint16_t *s, const uint16_t *m,
                                                         const Acts &a, int64_t n0, int64_t stride, int64_t R, int64_t N,
                                                         int64_t K, int64_t G, const float *bias, float *y) {
    const uint8_t *wr[NW];
    const uint16_t *sr[NW], *mr[NW];
    for (int j = 0; j < NW; j++) {
        const int64_t n = n0 + j * stride;
        wr[j] = w + n * (K / 2);
        sr[j] = s + n * (K / G);
        mr[j] = m ? m + n * (K / G) : nullptr;
    }
    const int64_t nb = K / BLOCK;
    constexpr int RP = 4 / NW;
    for (int64_t r0 = 0; r0 < R; r0 += RP) {
        const Acts part{a.q + r0 * K, a.scale + r0 * nb, a.sum + r0 * nb};
        const int rows = R - r0 < RP ? (int)(R - r0) : RP;
        float out[4];
        if constexpr (RP == 1) {
            q4_tile<1, NW, BPG>(wr, sr, mr, part, K, out);
        } else {
            switch (rows) {
            case 1: q4_tile<1, NW, BPG>(wr, sr, mr, part, K, out); break;
            case 2: q4_tile<2, NW, BPG>(wr, sr, mr, part, K, out); break;
            case 3: q4_tile<3, NW, BPG>(wr, sr, mr, part, K, out); break;
            default: q4_tile<RP, NW, BPG>(wr, sr, mr, part, K, out); break;
            }
        }
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < NW; j++) {
                const int64_t n = n0 + j * stride;
                y[(r0 + r) * N + n] = out[r * NW + j] + (bias ? bias[n] : 0.0f);
            }
    }
}

template <int BPG> static void q4_all(const uint8_t *w, const uint16_t *s, const uint16_t *m, const Acts &a,
                                      const float *bias, float *y, int64_t R, int64_t N, int64_t K, int64_t G,
                                      int threads) {
    constexpr int NW = 4;  /* weight rows a pass at batch 1 */
    constexpr int64_t AHEAD = AHEAD_TILES;
    const int64_t tiles = R == 1 ? N / NW : 0, row_bytes = K / 2, H = tiles;
#pragma omp parallel for num_threads(threads) schedule(guided, 4) if (N * K * R >= 65536)
    for (int64_t t = 0; t < tiles; t++) {
        /* a tile is few cache lines of codes: ask for the next tile's now (as the int8 kernel does) */
        if (t + AHEAD < H)
            for (int j = 0; j < NW; j++) {
                const int64_t n = t + AHEAD + j * H;
                for (int64_t k = 0; k < row_bytes; k += 64) __builtin_prefetch(w + n * row_bytes + k);
                __builtin_prefetch(s + n * (K / G));
                if (m) __builtin_prefetch(m + n * (K / G));
            }
        q4_outputs<NW, BPG>(w, s, m, a, t, H, R, N, K, G, bias, y);
    }
#pragma omp parallel for num_threads(threads) schedule(guided, 16) if (N * K * R >= 65536)
    for (int64_t n = tiles * NW; n < N; n++) {
        if (n + 8 < N)
            for (int64_t k = 0; k < row_bytes; k += 64) __builtin_prefetch(w + (n + 8) * row_bytes + k);
        q4_outputs<1, BPG>(w, s, m, a, n, 0, R, N, K, G, bias, y);
    }
}
#endif

static void q4_linear(const float *x, const uint8_t *w, const uint16_t *s, const uint16_t *m, const float *bias,
                      float *y, int64_t R, int64_t N, int64_t K, int64_t G, int threads) {
    /* the calling thread's buffers, kept between calls; only pointers enter the parallel region */
    thread_local std::vector<int8_t> xq_buf;
    thread_local std::vector<float> xs_buf, xsum_buf;
    const int64_t nb = K / BLOCK;
    if ((int64_t)xq_buf.size() < R * K) xq_buf.resize(R * K);
    if ((int64_t)xs_buf.size() < R * nb + SUPER) { xs_buf.resize(R * nb + SUPER); xsum_buf.resize(R * nb + SUPER); }
    quantize_blocks(x, xq_buf.data(), xs_buf.data(), xsum_buf.data(), R, K);
#if defined(__AVX2__) && defined(__F16C__)
    pair_blocks(xq_buf.data(), R, K);
#endif
    const Acts a{xq_buf.data(), xs_buf.data(), xsum_buf.data()};
#if defined(__AVX2__) && defined(__F16C__)
    switch (G / BLOCK) {
    case 1: q4_all<1>(w, s, m, a, bias, y, R, N, K, G, threads); break;
    case 2: q4_all<2>(w, s, m, a, bias, y, R, N, K, G, threads); break;
    default: q4_all<4>(w, s, m, a, bias, y, R, N, K, G, threads); break;
    }
#else
    const int64_t row_bytes = K / 2, groups = K / G;
#pragma omp parallel for num_threads(threads) schedule(guided, 16) if (N * K * R >= 65536)
    for (int64_t n = 0; n < N; n++) {
        std::vector<float> out(R);
        q4_row_portable(w + n * row_bytes, s + n * groups, m ? m + n * groups : nullptr, G, a, R, K, out.data());
        for (int64_t r = 0; r < R; r++) y[r * N + n] = out[r] + (bias ? bias[n] : 0.0f);
    }
#endif
}

static at::Tensor linear_int4(const at::Tensor &x, const at::Tensor &w, const at::Tensor &scales,
                              const std::optional<at::Tensor> &offsets, int64_t group_size,
                              const std::optional<at::Tensor> &bias) {
    TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous(), "arlm::linear_int4: codes (N, K/2) uint8");
    const int64_t N = w.size(0), K = 2 * w.size(1);
    TORCH_CHECK(x.size(-1) == K, "arlm::linear_int4: x (..., K) with K = 2 x the codes' columns");
    TORCH_CHECK(group_size == 32 || group_size == 64 || group_size == 128, "arlm::linear_int4: group size 32, 64 or 128");
    TORCH_CHECK(K % group_size == 0, "arlm::linear_int4: K must be a multiple of the group size");
    for (const at::Tensor *t : {&scales, offsets ? &*offsets : &scales})
        TORCH_CHECK(t->scalar_type() == at::kHalf && t->is_contiguous() && t->dim() == 2 && t->size(0) == N &&
                        t->size(1) == K / group_size, "arlm::linear_int4: scales and offsets (N, K/G) float16");
    TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N),
                "arlm::linear_int4: bias float32 (N,)");
    at::Tensor rows = x.reshape({-1, K}).to(at::kFloat).contiguous();
    const int64_t R = rows.size(0);
    at::Tensor y = at::empty({R, N}, rows.options());
    q4_linear(rows.const_data_ptr<float>(), w.const_data_ptr<uint8_t>(),
              static_cast<const uint16_t *>(scales.const_data_ptr()), offsets ? static_cast<const uint16_t *>(offsets->const_data_ptr()) : nullptr,
              bias ? bias->const_data_ptr<float>() : nullptr, y.mutable_data_ptr<float>(), R, N, K, group_size,
              at::get_num_threads());
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = N;
    return y.view(shape);
}

TORCH_LIBRARY_FRAGMENT(arlm, m) {
    m.def("linear_int4(Tensor x, Tensor codes, Tensor scales, Tensor? offsets, int group_size, Tensor? bias) -> Tensor");
}
TORCH_LIBRARY_IMPL(arlm, CPU, m) { m.impl("linear_int4", linear_int4); }
