/* Attention of one new query per sequence over its cached keys and values (a decoding step),
 * registered as the PyTorch operator arlm::attend:
 *     y (B, nh, 1, hs) = softmax(q k^T / sqrt(hs), over the S visible positions) v
 * with q (B, nh, 1, hs), k and v (B, nkv, S, hs) (views of the KV cache; any strides but the last),
 * query head h reading key/value head h / (nh / nkv) (grouped-query attention), and an optional
 * key mask (B, S) (True = may attend: left padding, sliding windows).
 *
 * Decoding reads the whole cache once per token per layer, so, like the linear layers, the step is
 * as fast as the cache streams from memory. PyTorch's attention on CPU took ~120 us a layer for a
 * GPT-2-small cache of 160 positions (1 MB, ~40 us of reading at this machine's bandwidth), and
 * inductor's fused loops ~80 us (they read the values 8 columns at a time, 8 strided passes). Here
 * one pass over the keys computes the scores of all the query heads that share them, one pass over
 * the values accumulates the output, and the exponentials are vectorised. Each (sequence, key/value
 * head) pair is one unit of work for the threads.
 */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

#include "vec.h"

/* Lane i of the result = the sum of a[i]'s lanes (8 dot products finished at once). */
static inline f8 reduce8(const f8 *a) {
#ifdef __AVX__
    const __m256 h0123 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)a[0], (__m256)a[1]), _mm256_hadd_ps((__m256)a[2], (__m256)a[3]));
    const __m256 h4567 = _mm256_hadd_ps(_mm256_hadd_ps((__m256)a[4], (__m256)a[5]), _mm256_hadd_ps((__m256)a[6], (__m256)a[7]));
    /* h0123 = [sums of a0..a3 over lanes 0-3 | the same over lanes 4-7], h4567 likewise for a4..a7 */
    return (f8)_mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
#else
    f8 r;
    for (int i = 0; i < 8; i++) r[i] = hsum(a[i]);
    return r;
#endif
}

/* Scores of one query (hs floats, already scaled) against keys s0..s0+7: the 8 dot products run
   side by side (8 independent chains) and are reduced together. hs % 8 == 0. */
template <typename KT> static inline f8 dot8(const float *q, const KT *K, int64_t stride, int64_t hs) {
    f8 a[8] = {};
    for (int64_t c = 0; c < hs; c += 8) {
        const f8 qv = load(q + c);
        for (int i = 0; i < 8; i++) a[i] += qv * load(K + i * stride + c);
    }
    return reduce8(a);
}

template <typename KT> static inline float dot(const float *q, const KT *k, int64_t hs) {
    f8 a = {0};
    int64_t c = 0;
    for (; c + 8 <= hs; c += 8) a += load(q + c) * load(k + c);
    float s = hsum(a);
    for (; c < hs; c++) s += q[c] * widen(k[c]);
    return s;
}

/* p[0..S) <- exp(p - max(p)); returns the sum. */
static float softmax_numerators(float *p, int64_t S) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < S; s++) mx = std::max(mx, p[s]);
    f8 acc = {0};
    int64_t s = 0;
    for (; s + 8 <= S; s += 8) {
        const f8 e = expv(load(p + s) - mx);
        memcpy(p + s, &e, sizeof e);
        acc += e;
    }
    float total = hsum(acc);
    for (; s < S; s++) total += (p[s] = std::exp(p[s] - mx));
    return total;
}

/* Rows are short (a head is 128-512 bytes) and each (sequence, head) block of the cache is a separate
   stretch of memory, too short for the hardware prefetcher to get ahead of: ask for rows ahead. */
constexpr int64_t PREFETCH = 16;
template <typename KT> static inline void prefetch_row(const KT *row, int64_t n) {
    for (int64_t b = 0; b < n * (int64_t)sizeof(KT); b += 64) __builtin_prefetch((const char *)row + b);
}

/* out[0..NV*8) = sum_s p[s] * V[s][0..NV*8): the NV accumulators stay in registers. */
template <int NV, typename KT>
static inline void weighted_rows(const float *p, const KT *V, int64_t stride, int64_t S, int64_t hs, float *out) {
    f8 acc[NV] = {};
    for (int64_t s = 0; s < S; s++) {
        prefetch_row(V + (s + PREFETCH) * stride, s + PREFETCH < S ? NV * 8 : 0);
        const float w = p[s];
        if (w == 0.0f) continue;  /* masked position */
        for (int i = 0; i < NV; i++) acc[i] += w * load(V + s * stride + 8 * i);
    }
    memcpy(out, acc, sizeof acc);
}

template <typename KT>
static void attend_impl(const float *q, const int64_t *qs, const KT *k, const KT *v, const int64_t *ks, const int64_t *vs,
                        const bool *mask, float *y, int64_t B, int64_t nh, int64_t nkv, int64_t S, int64_t hs, int threads) {
    const int64_t g = nh / nkv;  /* query heads per key/value head */
    const float scale = 1.0f / std::sqrt((float)hs);
#pragma omp parallel for num_threads(threads) schedule(static) if (B * nkv * S * hs >= 16384)
    for (int64_t u = 0; u < B * nkv; u++) {
        const int64_t b = u / nkv, h = u % nkv;
        const KT *K = k + b * ks[0] + h * ks[1], *V = v + b * vs[0] + h * vs[1];
        const bool *M = mask ? mask + b * S : nullptr;
        /* keys past the last visible one (a fixed-size cache longer than this row's sequence) are
           never read: a decode step costs the row's length, not the cache's */
        int64_t Sb = S;
        if (M)
            while (Sb > 1 && !M[Sb - 1]) Sb--;
        std::vector<float> qh(g * hs), p(g * S);
        for (int64_t j = 0; j < g; j++)
            for (int64_t c = 0; c < hs; c++) qh[j * hs + c] = q[b * qs[0] + (h * g + j) * qs[1] + c] * scale;
        /* scores: one pass over the keys for the g query heads */
        int64_t s = 0;
        if (hs % 8 == 0)
            for (; s + 8 <= Sb; s += 8) {
                for (int i = 0; i < 8; i++) prefetch_row(K + (s + i + PREFETCH) * ks[2], s + i + PREFETCH < Sb ? hs : 0);
                for (int64_t j = 0; j < g; j++) {
                    const f8 sc = dot8(&qh[j * hs], K + s * ks[2], ks[2], hs);
                    memcpy(&p[j * S + s], &sc, sizeof sc);
                }
            }
        for (; s < Sb; s++)
            for (int64_t j = 0; j < g; j++) p[j * S + s] = dot(&qh[j * hs], K + s * ks[2], hs);
        if (M)
            for (int64_t t = 0; t < Sb; t++)
                if (!M[t])
                    for (int64_t j = 0; j < g; j++) p[j * S + t] = -std::numeric_limits<float>::infinity();
        /* output: per query head, the values in column blocks of 64 (8 vectors in registers) */
        for (int64_t j = 0; j < g; j++) {
            const float total = softmax_numerators(&p[j * S], Sb);
            float *out = y + (b * nh + h * g + j) * hs;
            int64_t c = 0;
            for (; c + 64 <= hs; c += 64) weighted_rows<8>(&p[j * S], V + c, vs[2], Sb, hs, out + c);
            for (; c + 8 <= hs; c += 8) weighted_rows<1>(&p[j * S], V + c, vs[2], Sb, hs, out + c);
            for (; c < hs; c++) {
                float a = 0.0f;
                for (int64_t t = 0; t < Sb; t++) a += p[j * S + t] * widen(V[t * vs[2] + c]);
                out[c] = a;
            }
            for (int64_t i = 0; i < hs; i++) out[i] /= total;
        }
    }
}

static at::Tensor attend(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const std::optional<at::Tensor> &mask) {
    TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && k.dim() == 4 && v.sizes() == k.sizes() && q.size(0) == k.size(0) &&
                    q.size(3) == k.size(3) && q.size(1) % k.size(1) == 0,
                "arlm::attend: q (B, nh, 1, hs), k and v (B, nkv, S, hs) with nh a multiple of nkv");
    TORCH_CHECK(k.scalar_type() == v.scalar_type() && (k.scalar_type() == at::kFloat || k.scalar_type() == at::kBFloat16),
                "arlm::attend: k and v are both float32 or both bfloat16");
    TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "arlm::attend: k and v contiguous in the last dimension");
    const int64_t B = q.size(0), nh = q.size(1), hs = q.size(3), nkv = k.size(1), S = k.size(2);
    TORCH_CHECK(!mask || (mask->scalar_type() == at::kBool && mask->is_contiguous() && mask->numel() == B * S),
                "arlm::attend: mask is a contiguous bool (B, S)");
    at::Tensor qf = q.to(at::kFloat);
    if (qf.stride(3) != 1) qf = qf.contiguous();
    at::Tensor y = at::empty({B, nh, 1, hs}, qf.options());
    const int64_t qs[2] = {qf.stride(0), qf.stride(1)};
    const int64_t ks[3] = {k.stride(0), k.stride(1), k.stride(2)}, vs[3] = {v.stride(0), v.stride(1), v.stride(2)};
    const bool *mp = mask ? mask->const_data_ptr<bool>() : nullptr;
    const int threads = at::get_num_threads();
    if (k.scalar_type() == at::kFloat)
        attend_impl(qf.const_data_ptr<float>(), qs, k.const_data_ptr<float>(), v.const_data_ptr<float>(), ks, vs, mp,
                    y.mutable_data_ptr<float>(), B, nh, nkv, S, hs, threads);
    else
        attend_impl(qf.const_data_ptr<float>(), qs, static_cast<const uint16_t *>(k.const_data_ptr()),
                    static_cast<const uint16_t *>(v.const_data_ptr()), ks, vs, mp, y.mutable_data_ptr<float>(), B, nh,
                    nkv, S, hs, threads);
    return y;
}

TORCH_LIBRARY_FRAGMENT(arlm, m) { m.def("attend(Tensor q, Tensor k, Tensor v, Tensor? mask) -> Tensor"); }
TORCH_LIBRARY_IMPL(arlm, CPU, m) { m.impl("attend", attend); }
