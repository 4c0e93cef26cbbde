// Branch-free, vectorisable math shared by the CPU kernels (selective_scan_cpu.cpp, mamba_cpu.cpp):
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

#if defined(__AVX512F__)
// exp_poly(float) on 16 lanes with AVX-512 intrinsics: the same reduction and polynomial, with 2^k applied by
// vscalefps (no integer exponent tricks) and the clamp as two min/max instructions. GCC compiles the portable
// version's clamp into compares, mask logic and blends, which cost about as much as the polynomial.
SSMZOO_INLINE __m512 exp_poly16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, k);
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
// exp_poly(float) on 8 lanes with AVX2 + FMA: the same reduction and polynomial; 2^k from k's bits
// ((k + 127) << 23: k lies in [-126, 127] after the clamp, so the scale is a normal float).
SSMZOO_INLINE __m256 exp_poly8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fmadd_ps(k, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
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
