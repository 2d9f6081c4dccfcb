/* Vector helpers shared by the decoding kernels (linear.cpp, attention.cpp): 8-lane float vectors
 * (GCC/Clang vector extensions, mapped to AVX2 or two SSE/NEON registers) and loads that widen
 * float32, bfloat16 and int8 values to them. */
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#ifdef __AVX2__
#include <immintrin.h>
#endif

typedef float f8 __attribute__((vector_size(32)));
typedef int8_t i8x8 __attribute__((vector_size(8)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

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

static inline float hsum(f8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
