/* Vector helpers shared by the kernels (linear.cpp, int4.cpp, attention.cpp, activation.cpp, causal.cpp):
 * 8- and 16-lane float vectors (GCC/Clang vector extensions, mapped to AVX2/AVX-512 or SSE/NEON
 * registers), loads that widen float32, bfloat16 and int8 values to them, stores that narrow them back,
 * and a vectorised exp. */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__AVX2__) || defined(__AVX512BF16__)
#include <immintrin.h>
#endif

typedef float f8 __attribute__((vector_size(32)));
typedef int8_t i8x8 __attribute__((vector_size(8)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef float f16 __attribute__((vector_size(64)));  /* 16 floats: one AVX-512 register, two AVX2 ones */
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));

/* 8 values of each format, widened to float. */
static inline f8 load(const float *p) { f8 v; memcpy(&v, p, sizeof v); return v; }

static inline f8 load(const int8_t *p) {
#ifdef __AVX2__  /* GCC 12 widens int8 vectors lane by lane; vpmovsxbd does all 8 at once */
    return (f8)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#else
    i8x8 v; memcpy(&v, p, sizeof v);
    return __builtin_convertvector(__builtin_convertvector(v, i32x8), f8);
#endif
}

static inline f8 load(const uint16_t *p) {  /* bfloat16: the top half of a float32 */
#ifdef __AVX2__
    return (f8)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16);
#else
    u16x8 v; memcpy(&v, p, sizeof v);
    u32x8 bits = __builtin_convertvector(v, u32x8) << 16;
    f8 f; memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

/* One value of each format (the tail of a row that is not a multiple of 8). */
static inline float widen(float w) { return w; }
static inline float widen(int8_t w) { return (float)w; }
static inline float widen(uint16_t w) { uint32_t b = (uint32_t)w << 16; float f; memcpy(&f, &b, sizeof f); return f; }

/* ... and stored back one at a time: bfloat16 rounded to nearest even, as torch converts. */
static inline void narrow(float v, float *p) { *p = v; }
static inline void narrow(float v, uint16_t *p) {
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    *p = v != v ? 0x7FC0 : (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

static inline float hsum(f8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

/* exp for a vector of floats (8 or 16): x = n ln2 + r with |r| <= ln2/2 (Cody-Waite: ln2 in two parts so n ln2 is exact),
 * exp(r) by the degree-6 polynomial of Cephes' expf (S. L. Moshier; relative error ~1e-7 over the
 * range), times 2^n built in the exponent bits. Inputs below -87.3 (where 2^n would leave the
 * normal range; -inf from masked keys) give exactly 0. */
template <typename V> static inline V expv(V x) {
    typedef int32_t I __attribute__((vector_size(sizeof(V))));
    const V input = x;
    x = x < -87.3f ? V{} - 87.3f : x;
    x = x > 88.3f ? V{} + 88.3f : x;
    const V fx = x * 1.44269504088896341f + 0.5f;
    I n = __builtin_convertvector(fx, I);  /* truncates toward zero ... */
    n += (__builtin_convertvector(n, V) > fx);    /* ... so step down where that rounded up: floor */
    const V nf = __builtin_convertvector(n, V);
    const V r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    V p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    const I bits = (n + 127) << 23;
    V scale;
    memcpy(&scale, &bits, sizeof scale);
    return input < -87.3f ? V{} : p * scale;
}

/* 16 values widened to float (float32, bfloat16), and stored back: float32 as they are, bfloat16
 * rounded to nearest even as torch converts (NaN stays a quiet NaN). */
static inline f16 load16(const float *p) { f16 v; memcpy(&v, p, sizeof v); return v; }

static inline f16 load16(const uint16_t *p) {
    u16x16 h;
    memcpy(&h, p, sizeof h);
    const u32x16 bits = __builtin_convertvector(h, u32x16) << 16;
    f16 v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

static inline void store16(float *p, f16 v) { memcpy(p, &v, sizeof v); }

static inline void store16(uint16_t *p, f16 v) {
#ifdef __AVX512BF16__
    /* one instruction (vcvtneps2bf16), the same rounding for every normal float; unlike torch it flushes
     * float32 denormals (below 1.2e-38) to zero and keeps NaN payloads (checked on 2^20 random bit
     * patterns against the branch below, which is torch's conversion) */
    const __m256bh h = _mm512_cvtneps_pbh((__m512)v);
    memcpy(p, &h, sizeof h);
#else
    u32x16 bits;
    memcpy(&bits, &v, sizeof bits);
    u32x16 r = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    r = (v != v) ? u32x16{} + 0x7FC0u : r;
    const u16x16 h = __builtin_convertvector(r, u16x16);
    memcpy(p, &h, sizeof h);
#endif
}
