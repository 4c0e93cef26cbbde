// Branch-free, vectorisable math shared by the CPU kernels in this folder:
// loops over contiguous data that call these compile to SIMD code (std::exp does not vectorise).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace ssmzoo_cpu {

// Forced inline: a call left in a loop body (GCC's inliner gives up in large kernels) is control flow
// that keeps the loop from vectorising.
#if defined(__GNUC__)
#define SSMZOO_INLINE inline __attribute__((always_inline))
#else
#define SSMZOO_INLINE inline
#endif

// exp by range reduction x = k ln2 + r, |r| <= ln2/2, and a polynomial in r: branch-free, so loops
// over N that call it vectorise. The rounding uses the 1.5·2^p shifter trick (also branch-free).
SSMZOO_INLINE float exp_poly(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  float t = x * 1.44269504088896341f + shifter;
  float k = t - shifter;
  float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  uint32_t tb;
  std::memcpy(&tb, &t, 4);
  uint32_t sb = (tb - 0x4B400000u + 127u) << 23;
  float scale;
  std::memcpy(&scale, &sb, 4);
  return p * scale;
}

// Float SIMD vectors for the kernels' intrinsics: 16 lanes with AVX-512, 8 with AVX2 + FMA. GCC vectorises the
// portable loops too, but it compiled exp_poly's clamp into compares and blends and leaves sums across lanes
// to one horizontal add per vector; the kernels that need more write their loops once over SimdF.
#if defined(__AVX512F__)
#define SSMZOO_SIMD_F 1
struct SimdF {
  using V = __m512;
  static constexpr int64_t W = 16;
  SSMZOO_INLINE static V load(const float* p) { return _mm512_loadu_ps(p); }
  SSMZOO_INLINE static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  SSMZOO_INLINE static V set1(float x) { return _mm512_set1_ps(x); }
  SSMZOO_INLINE static V zero() { return _mm512_setzero_ps(); }
  SSMZOO_INLINE static V add(V a, V b) { return _mm512_add_ps(a, b); }
  SSMZOO_INLINE static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  SSMZOO_INLINE static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  SSMZOO_INLINE static V fnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  SSMZOO_INLINE static V clamp(V x, float lo, float hi) {
    return _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(lo)), _mm512_set1_ps(hi));
  }
  SSMZOO_INLINE static V round(V x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  SSMZOO_INLINE static V scale2k(V p, V k) { return _mm512_scalef_ps(p, k); }  // p · 2^k by vscalefps
  // Lane j of the result is the sum of p[j]'s 16 lanes: a transpose-and-add tree (about 45 instructions for
  // 16 vectors, where a horizontal sum per vector costs about 8 and a serial dependency chain).
  SSMZOO_INLINE static V sum_lanes(const V* p) {
    __m512 t[8], q[4];
    for (int i = 0; i < 8; ++i)  // 256-bit halves: p[2i]'s partial sums, then p[2i+1]'s
      t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0x44),
                           _mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; ++i)  // 128-bit chunk c: partial sums of p[4i + c]
      q[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                           _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
    const __m512 v01 = _mm512_add_ps(_mm512_unpacklo_ps(q[0], q[1]), _mm512_unpackhi_ps(q[0], q[1]));
    const __m512 v23 = _mm512_add_ps(_mm512_unpacklo_ps(q[2], q[3]), _mm512_unpackhi_ps(q[2], q[3]));
    const __m512 w = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(v01), _mm512_castps_pd(v23))),
                                   _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(v01), _mm512_castps_pd(v23))));
    // lane 4c + m of w is the sum of p[4m + c]
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), w);
  }
};
#elif defined(__AVX2__) && defined(__FMA__)
#define SSMZOO_SIMD_F 1
struct SimdF {
  using V = __m256;
  static constexpr int64_t W = 8;
  SSMZOO_INLINE static V load(const float* p) { return _mm256_loadu_ps(p); }
  SSMZOO_INLINE static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  SSMZOO_INLINE static V set1(float x) { return _mm256_set1_ps(x); }
  SSMZOO_INLINE static V zero() { return _mm256_setzero_ps(); }
  SSMZOO_INLINE static V add(V a, V b) { return _mm256_add_ps(a, b); }
  SSMZOO_INLINE static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  SSMZOO_INLINE static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  SSMZOO_INLINE static V fnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  SSMZOO_INLINE static V clamp(V x, float lo, float hi) {
    return _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
  }
  SSMZOO_INLINE static V round(V x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p · 2^k from k's bits, (k + 127) << 23: exp_simd's clamp keeps k in [-126, 127], a normal float.
  SSMZOO_INLINE static V scale2k(V p, V k) {
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(
                                _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23)));
  }
  // Lane j of the result is the sum of p[j]'s 8 lanes: pairwise adds within 128-bit halves, then the halves.
  SSMZOO_INLINE static V sum_lanes(const V* p) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(p[0], p[1]), _mm256_hadd_ps(p[2], p[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(p[4], p[5]), _mm256_hadd_ps(p[6], p[7]));
    // u0's lane i (i < 4) holds half of p[i]'s sum, lane 4 + i the other half; u1 the same for p[4 + i]
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
  }
};
#endif

#if defined(SSMZOO_SIMD_F)
// exp_poly(float) on a whole vector: the same reduction and polynomial, the clamp as two min/max instructions
// and 2^k by the instruction set's own means.
SSMZOO_INLINE SimdF::V exp_simd(SimdF::V x) {
  using S = SimdF;
  x = S::clamp(x, -87.0f, 88.0f);
  const S::V k = S::round(S::mul(x, S::set1(1.44269504088896341f)));
  S::V r = S::fnmadd(k, S::set1(0.693359375f), x);
  r = S::fmadd(k, S::set1(2.12194440e-4f), r);
  S::V p = S::set1(1.9875691500e-4f);
  p = S::fmadd(p, r, S::set1(1.3981999507e-3f));
  p = S::fmadd(p, r, S::set1(8.3334519073e-3f));
  p = S::fmadd(p, r, S::set1(4.1665795894e-2f));
  p = S::fmadd(p, r, S::set1(1.6666665459e-1f));
  p = S::fmadd(p, r, S::set1(5.0000001201e-1f));
  p = S::fmadd(S::mul(p, r), r, S::add(r, S::set1(1.0f)));
  return S::scale2k(p, k);
}
#endif

SSMZOO_INLINE double exp_poly(double x) {
  x = std::min(std::max(x, -708.0), 709.0);
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  double t = x * 1.4426950408889634074 + shifter;
  double k = t - shifter;
  double r = x - k * 6.93145751953125e-1 - k * 1.42860682030941723212e-6;
  // Taylor series to r^13: truncation error below 1e-17 relative for |r| <= ln2/2.
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  uint64_t tb;
  std::memcpy(&tb, &t, 8);
  uint64_t sb = (tb - 0x4338000000000000ull + 1023ull) << 52;
  double scale;
  std::memcpy(&scale, &sb, 8);
  return p * scale;
}

// exp(max(x, floor)) for the chunked scans' decays, floored as their chunked.py floor them (ops/chunks.py FLOOR):
// decays below exp(floor) are rounded up to it, which keeps every value off the subnormal slow path. Float uses
// exp_poly (vectorises), double std::exp.
inline float decay_exp(float x) { return exp_poly(std::max(x, -60.0f)); }
inline double decay_exp(double x) { return std::exp(std::max(x, -600.0)); }

// log1p(e) for e in [0, 1], as 2 atanh(s) with s = e / (2 + e) in [0, 1/3] (no cancellation),
// by its odd series in s; the term count makes the truncation error negligible for T.
template <typename T>
SSMZOO_INLINE T log1p_unit(T e) {
  constexpr int terms = sizeof(T) == 4 ? 9 : 18;
  const T s = e / (T(2) + e), s2 = s * s;
  T p = T(1) / T(2 * terms + 1);
  for (int k = terms - 1; k >= 0; --k) p = p * s2 + T(1) / T(2 * k + 1);
  return T(2) * s * p;
}

// softplus(x) = max(x, 0) + log1p(exp(-|x|)): branch-free and vectorisable.
template <typename T>
SSMZOO_INLINE T softplus(T x) {
  return std::max(x, T(0)) + log1p_unit(exp_poly(-std::abs(x)));
}

template <typename T>
SSMZOO_INLINE T sigmoid(T x) {
  return T(1) / (T(1) + exp_poly(-x));
}

}  // namespace ssmzoo_cpu
