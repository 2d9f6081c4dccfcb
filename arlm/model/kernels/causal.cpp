/* Causal self-attention over a whole (short) sequence, forward and backward, for CPU training and
 * prefill, registered as the PyTorch operators arlm::causal_attention and
 * arlm::causal_attention_backward:
 *     y (B, nh, T, hs) = softmax(q k^T / sqrt(hs), position i seeing keys j <= i) v
 * with q, k, v (B, nh, T, hs) views (any strides but the last: the split of the fused projection),
 * float32 or bfloat16 (computed in float32). The forward also returns the log-sum-exp of each row's
 * scores, (B, nh, T), from which the backward recomputes the probabilities (FlashAttention's
 * backward, Dao et al. 2022: dS = P o (dP - rowsum(dY o Y)), with rowsum(dY o Y) taken as
 * rowsum(P o dP), the same number from the float32 P and dP instead of a y rounded to bfloat16).
 *
 * Why: PyTorch's CPU flash attention is tiled for long sequences; a small GPT's heads (context 64,
 * head size 32) spent about 12% of a training step there. Here one (sequence, head) pair is one unit
 * of work for the threads: its operands (a few T x hs arrays and one T x T matrix) stay in the core's
 * cache, and every product in both passes is one 4-row register-tiled loop (gemm_tile: 4 rows x up to
 * 64 columns of accumulators, a broadcast and up to four vector multiply-adds per loaded vector),
 * skipping the blocks above the diagonal. y, dq, dk and dv are written in (B, T, nh, hs) order, the
 * layout of the projections on either side.
 */
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <limits>

#include "vec.h"

/* Horizontal max and sum of 16 lanes: halves first, then vec.h's 8-lane tree. */
static inline void halves(f16 v, f8 &lo, f8 &hi) {
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, reinterpret_cast<const char *>(&v) + sizeof lo, sizeof hi);
}
static inline float hmax(f16 v) {
    f8 lo, hi;
    halves(v, lo, hi);
    const f8 m = lo > hi ? lo : hi;
    return std::max(std::max(std::max(m[0], m[4]), std::max(m[1], m[5])), std::max(std::max(m[2], m[6]), std::max(m[3], m[7])));
}
static inline float hsum16(f16 v) {
    f8 lo, hi;
    halves(v, lo, hi);
    return hsum(lo + hi);
}

/* C (4 rows x NV*16 columns) = sum over k in [k0, k1) of A(r, k) * B[k][0 .. NV*16), with A(r, k) =
 * A[r * ars + k * ais] (a row-major matrix, or a transposed one) and B row-major (row stride ldb);
 * C rows stored with stride ldc. */
template <int NV>
static inline void gemm_tile(const float *A, int64_t ars, int64_t ais, const float *B, int64_t ldb, int64_t k0,
                             int64_t k1, float *C, int64_t ldc) {
    f16 acc[4][NV] = {};
    for (int64_t k = k0; k < k1; k++) {
        f16 b[NV];
        for (int n = 0; n < NV; n++) b[n] = load16(B + k * ldb + 16 * n);
        for (int r = 0; r < 4; r++) {
            const float a = A[r * ars + k * ais];
            for (int n = 0; n < NV; n++) acc[r][n] += a * b[n];
        }
    }
    for (int r = 0; r < 4; r++)
        for (int n = 0; n < NV; n++) store16(C + r * ldc + 16 * n, acc[r][n]);
}

/* The same over ncols (a multiple of 16) columns, 64 at a time. */
static void gemm_rows4(const float *A, int64_t ars, int64_t ais, const float *B, int64_t ldb, int64_t k0, int64_t k1,
                       float *C, int64_t ldc, int64_t ncols) {
    for (int64_t c = 0; c < ncols; c += 64) {
        switch (std::min<int64_t>(4, (ncols - c) / 16)) {
            case 4: gemm_tile<4>(A, ars, ais, B + c, ldb, k0, k1, C + c, ldc); break;
            case 3: gemm_tile<3>(A, ars, ais, B + c, ldb, k0, k1, C + c, ldc); break;
            case 2: gemm_tile<2>(A, ars, ais, B + c, ldb, k0, k1, C + c, ldc); break;
            default: gemm_tile<1>(A, ars, ais, B + c, ldb, k0, k1, C + c, ldc);
        }
    }
}

struct View { /* a (B, nh, T, hs) operand: data and the strides of its first three dimensions */
    const void *data;
    int64_t sb, sh, st;
};

/* One (sequence, head)'s working set, float32: row-major operands (Tp x hsp), transposed ones
 * (hs x Tp) and T x T matrices (Tp x Tp), T and hs padded to multiples of 16 with zeros, so that
 * every tile reads whole vectors and whole groups of 4 rows. */
struct Work {
    int64_t T, hs, Tp, hsp;
    std::vector<float> buf;
    float *next;
    Work(int64_t T, int64_t hs, int rows, int cols, int squares)
        : T(T), hs(hs), Tp((T + 15) / 16 * 16), hsp((hs + 15) / 16 * 16),
          buf(rows * Tp * hsp + cols * hsp * Tp + squares * Tp * Tp), next(buf.data()) {}
    float *take(int64_t n) {
        float *p = next;
        next += n;
        return p;
    }
    float *rows() { return take(Tp * hsp); }
    float *cols() { return take(hsp * Tp); }
    float *square() { return take(Tp * Tp); }

    template <typename E> void load(const View &x, int64_t b, int64_t h, float *rows, float *cols) const {
        const E *base = static_cast<const E *>(x.data) + b * x.sb + h * x.sh;
        for (int64_t t = 0; t < T; t++) {
            const E *src = base + t * x.st;
            int64_t d = 0;
            if (rows) {
                for (; d + 16 <= hs; d += 16) store16(rows + t * hsp + d, load16(src + d));
                for (; d < hs; d++) rows[t * hsp + d] = widen(src[d]);
            }
            if (cols)
                for (d = 0; d < hs; d++) cols[d * Tp + t] = widen(src[d]);
        }
    }
};

template <typename E> static void write_rows(const float *a, int64_t lda, const float *mul, int64_t T, int64_t hs,
                                             E *out, int64_t ldo) {
    for (int64_t t = 0; t < T; t++) {
        const float m = mul ? mul[t] : 1.0f;
        int64_t d = 0;
        for (; d + 16 <= hs; d += 16) store16(out + t * ldo + d, load16(a + t * lda + d) * m);
        for (; d < hs; d++) narrow(a[t * lda + d] * m, out + t * ldo + d);
    }
}

/* S = scale * A B^T for the causal part (rows of A (Tp x hsp), B^T given as columns (hs x Tp)):
 * each group of 4 rows up to the 16-key block holding its last row's diagonal. */
static void causal_scores(const Work &w, const float *A, const float *BT, float *S) {
    for (int64_t r0 = 0; r0 < w.T; r0 += 4)
        gemm_rows4(A + r0 * w.hsp, w.hsp, 1, BT, w.Tp, 0, w.hs, S + r0 * w.Tp, w.Tp, (r0 + 3) / 16 * 16 + 16);
}

/* Row i of S becomes its causal probabilities exp(scale s - lse_i), zero past i; for the forward
 * (lse = nullptr) the unnormalised exp(s - max) with the row's sum in l[i] and lse in lse_out[i]. */
static void probabilities(const Work &w, float *S, float scale, const float *lse, float *l, float *lse_out) {
    static const f16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const f16 neg_inf = f16{} - std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < w.T; i++) {
        float *p = S + i * w.Tp;
        const int64_t end = i / 16 * 16 + 16;
        f16 mv = neg_inf;
        for (int64_t j = 0; j < end; j += 16) {
            f16 s = load16(p + j) * scale;
            s = (lane + (float)j) > (float)i ? neg_inf : s;
            store16(p + j, s);
            mv = s > mv ? s : mv;
        }
        const float m = lse ? lse[i] : hmax(mv);
        f16 sum = {};
        for (int64_t j = 0; j < end; j += 16) {
            const f16 e = expv(load16(p + j) - m);  /* exp(-inf) = 0 past the diagonal */
            store16(p + j, e);
            sum += e;
        }
        std::fill(p + end, p + w.Tp, 0.0f);
        if (!lse) {
            const float total = hsum16(sum);
            l[i] = 1.0f / total;
            lse_out[i] = m + std::log(total);
        }
    }
}

template <typename E>
static void forward_impl(const View &q, const View &k, const View &v, E *y, float *lse, int64_t B, int64_t nh,
                         int64_t T, int64_t hs) {
    const float scale = 1.0f / std::sqrt((float)hs);
    at::parallel_for(0, B * nh, 1, [&](int64_t u0, int64_t u1) {
        Work w(T, hs, 2, 1, 1);
        float *Q = w.rows(), *V = w.rows(), *KT = w.cols(), *P = w.square();
        std::vector<float> inv(w.Tp);
        for (int64_t u = u0; u < u1; u++) {
            const int64_t b = u / nh, h = u % nh;
            w.load<E>(q, b, h, Q, nullptr);
            w.load<E>(v, b, h, V, nullptr);
            w.load<E>(k, b, h, nullptr, KT);
            causal_scores(w, Q, KT, P);
            probabilities(w, P, scale, nullptr, inv.data(), lse + u * T);
            float *Y = Q;  /* Q is no longer needed: the output rows go there */
            for (int64_t r0 = 0; r0 < T; r0 += 4)
                gemm_rows4(P + r0 * w.Tp, w.Tp, 1, V, w.hsp, 0, std::min(T, r0 + 4), Y + r0 * w.hsp, w.hsp, w.hsp);
            write_rows(Y, w.hsp, inv.data(), T, hs, y + (b * T * nh + h) * hs, nh * hs);
        }
    });
}

static View view_of(const at::Tensor &x) { return {x.const_data_ptr(), x.stride(0), x.stride(1), x.stride(2)}; }

static void check(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v) {
    TORCH_CHECK(q.dim() == 4 && k.sizes() == q.sizes() && v.sizes() == q.sizes(),
                "arlm::causal_attention: q, k and v (B, nh, T, hs) of one shape");
    TORCH_CHECK((q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16) &&
                    k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                "arlm::causal_attention: q, k and v all float32 or all bfloat16");
    TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
                "arlm::causal_attention: q, k and v contiguous in the last dimension");
}

/* An output (B, nh, T, hs) laid out as (B, T, nh, hs). */
static at::Tensor empty_bthd(const at::Tensor &like) {
    const int64_t B = like.size(0), nh = like.size(1), T = like.size(2), hs = like.size(3);
    return at::empty({B, T, nh, hs}, like.options()).transpose(1, 2);
}

static std::tuple<at::Tensor, at::Tensor> causal_attention(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v) {
    check(q, k, v);
    const int64_t B = q.size(0), nh = q.size(1), T = q.size(2), hs = q.size(3);
    at::Tensor y = empty_bthd(q);
    at::Tensor lse = at::empty({B, nh, T}, q.options().dtype(at::kFloat));
    if (q.scalar_type() == at::kFloat)
        forward_impl(view_of(q), view_of(k), view_of(v), y.mutable_data_ptr<float>(), lse.mutable_data_ptr<float>(), B,
                     nh, T, hs);
    else
        forward_impl(view_of(q), view_of(k), view_of(v), static_cast<uint16_t *>(y.mutable_data_ptr()),
                     lse.mutable_data_ptr<float>(), B, nh, T, hs);
    return {y, lse};
}

/* Backward of one (sequence, head): P = exp(scale Q K^T - lse), dP = dY V^T,
 * dS = scale P o (dP - rowsum(P o dP)), dQ = dS K, dK = dS^T Q, dV = P^T dY. */
template <typename E> struct Backward {
    const View q, k, v, dy;
    const float *lse;
    E *dq, *dk, *dv;
    int64_t B, nh, T, hs;

    void run() const {
        at::parallel_for(0, B * nh, 1, [&](int64_t u0, int64_t u1) {
            Work w(T, hs, 4, 2, 2);
            for (int64_t u = u0; u < u1; u++) {
                w.next = w.buf.data();
                head(w, u);
            }
        });
    }

    void head(Work &w, int64_t u) const {
        const int64_t b = u / nh, h = u % nh, hsp = w.hsp, Tp = w.Tp, ld = nh * hs;
        const float scale = 1.0f / std::sqrt((float)hs);
        float *Q = w.rows(), *K = w.rows(), *DY = w.rows(), *OUT = w.rows();
        float *KT = w.cols(), *VT = w.cols(), *P = w.square(), *DS = w.square();
        w.load<E>(q, b, h, Q, nullptr);
        w.load<E>(k, b, h, K, KT);
        w.load<E>(v, b, h, nullptr, VT);
        w.load<E>(dy, b, h, DY, nullptr);
        causal_scores(w, Q, KT, P);
        probabilities(w, P, scale, lse + u * T, nullptr, nullptr);
        causal_scores(w, DY, VT, DS);  /* dP */
        for (int64_t i = 0; i < T; i++) {
            f16 Dv = {};  /* P is 0 past the diagonal: whole rows can be summed, and dS is 0 there too */
            for (int64_t j = 0; j < Tp; j += 16) Dv += load16(P + i * Tp + j) * load16(DS + i * Tp + j);
            const float D = hsum16(Dv);
            for (int64_t j = 0; j < Tp; j += 16)
                store16(DS + i * Tp + j, load16(P + i * Tp + j) * (load16(DS + i * Tp + j) - D) * scale);
        }
        for (int64_t r0 = 0; r0 < T; r0 += 4)  /* dQ = dS K */
            gemm_rows4(DS + r0 * Tp, Tp, 1, K, hsp, 0, std::min(T, r0 + 4), OUT + r0 * hsp, hsp, hsp);
        write_rows(OUT, hsp, nullptr, T, hs, dq + (b * T * nh + h) * hs, ld);
        for (int64_t j0 = 0; j0 < T; j0 += 4)  /* dK = dS^T Q: rows j0..j0+3 sum over i >= j0 */
            gemm_rows4(DS + j0, 1, Tp, Q, hsp, j0, T, OUT + j0 * hsp, hsp, hsp);
        write_rows(OUT, hsp, nullptr, T, hs, dk + (b * T * nh + h) * hs, ld);
        for (int64_t j0 = 0; j0 < T; j0 += 4)  /* dV = P^T dY */
            gemm_rows4(P + j0, 1, Tp, DY, hsp, j0, T, OUT + j0 * hsp, hsp, hsp);
        write_rows(OUT, hsp, nullptr, T, hs, dv + (b * T * nh + h) * hs, ld);
    }
};

static std::tuple<at::Tensor, at::Tensor, at::Tensor> causal_attention_backward(
    const at::Tensor &dy_, const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const at::Tensor &lse_) {
    check(q, k, v);
    const at::Tensor dy = dy_.stride(3) == 1 && dy_.scalar_type() == q.scalar_type() ? dy_ : dy_.to(q.scalar_type()).contiguous();
    const at::Tensor lse = lse_.contiguous();
    TORCH_CHECK(dy.sizes() == q.sizes() && lse.scalar_type() == at::kFloat && lse.numel() == q.numel() / q.size(3),
                "arlm::causal_attention_backward: dy like q, lse (B, nh, T) float32");
    const int64_t B = q.size(0), nh = q.size(1), T = q.size(2), hs = q.size(3);
    at::Tensor dq = empty_bthd(q), dk = empty_bthd(q), dv = empty_bthd(q);
    if (q.scalar_type() == at::kFloat)
        Backward<float>{view_of(q), view_of(k), view_of(v), view_of(dy), lse.const_data_ptr<float>(),
                        dq.mutable_data_ptr<float>(), dk.mutable_data_ptr<float>(), dv.mutable_data_ptr<float>(),
                        B, nh, T, hs}.run();
    else
        Backward<uint16_t>{view_of(q), view_of(k), view_of(v), view_of(dy), lse.const_data_ptr<float>(),
                           static_cast<uint16_t *>(dq.mutable_data_ptr()), static_cast<uint16_t *>(dk.mutable_data_ptr()),
                           static_cast<uint16_t *>(dv.mutable_data_ptr()), B, nh, T, hs}.run();
    return {dq, dk, dv};
}

TORCH_LIBRARY_FRAGMENT(arlm, m) {
    m.def("causal_attention(Tensor q, Tensor k, Tensor v) -> (Tensor, Tensor)");
    m.def("causal_attention_backward(Tensor dy, Tensor q, Tensor k, Tensor v, Tensor lse) -> (Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(arlm, CPU, m) {
    m.impl("causal_attention", causal_attention);
    m.impl("causal_attention_backward", causal_attention_backward);
}
