// y = x Wᵀ for a few rows of x, with W (N, K) packed once into column panels: the decode step's
// projections (mamba_cpu.cpp's and mamba2_lm_step_cpu.cpp's lm_step), where x has `batch` rows. W may be
// float32, bfloat16 or int8 with per-row scales (quantized decoding: the bytes read per token are what bound it). MKL's sgemm repacks W on every call
// (at 16 rows that packing was a third of a decoded token's time) and reaches half of this kernel's rate;
// here W is packed once per generate call and each call only streams the panels.
//
// Panel p holds W's columns [p·NR, p·NR + NR) as a (K, NR) row-major block, zero past N, so one k step
// reads NR contiguous floats. The micro-kernel keeps an MR × NR block of y in 2·MR registers:
// per k, two loads of the panel, MR broadcasts of x and 2·MR FMAs.
#pragma once

#include "cpu_math.h"

#if defined(SSMZOO_SIMD_F)
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace ssmzoo_cpu {

constexpr int64_t kPanelWidth = 2 * SimdF::W;  // NR: 16 floats with AVX2, 32 with AVX-512
constexpr int kPanelRows = 6;                  // MR: 12 accumulators, 2 panel vectors, 1 broadcast

inline int64_t panel_count(int64_t n) { return (n + kPanelWidth - 1) / kPanelWidth; }

// W (N, K) row-major -> panels (panel_count(N), K, NR); T is float, or the 16-bit pattern of bfloat16 weights
// (uint16_t), or int8_t weights with per-row scales (quantized decoding, pack_scales).
template <typename T>
inline void pack_panels(const T* w, int64_t N, int64_t K, T* out) {
  at::parallel_for(0, panel_count(N), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* dst = out + p * K * kPanelWidth;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < kPanelWidth; ++j) {
          const int64_t n = p * kPanelWidth + j;
          dst[k * kPanelWidth + j] = n < N ? w[n * K + k] : T(0);
        }
    }
  });
}

// NR weights of one panel row as floats: a plain load, or bf16's bits shifted into a float's high half
// (exact), or int8 widened and converted (exact; the row's scale multiplies the finished sums).
SSMZOO_INLINE SimdF::V load_weights(const float* p) { return SimdF::load(p); }
#if defined(__AVX512F__)
SSMZOO_INLINE SimdF::V load_weights(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
SSMZOO_INLINE SimdF::V load_weights(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
#else
SSMZOO_INLINE SimdF::V load_weights(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}
SSMZOO_INLINE SimdF::V load_weights(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}
#endif

// y rows [0, MR) and panel columns [0, nv): y (=|+=) (x panelᵀ) · scale. x rows are xs apart, y rows ys apart;
// scale (NR,) the panel's row scales (int8 weights) or null.
template <int MR, typename T>
SSMZOO_INLINE void panel_block(const float* __restrict x, int64_t xs, int64_t K, const T* __restrict panel,
                               const float* __restrict scale, float* __restrict y, int64_t ys, int64_t nv,
                               bool accumulate) {
  using S = SimdF;
  S::V c[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = S::zero();
  int64_t k = 0;
  if constexpr (MR == 1) {
    // One row (batch-1 decoding): two FMA chains would wait on their own latency, not on memory; four chains
    // (even and odd k) keep the loads of int8 / bf16 panels, which carry more weights per byte, in flight.
    S::V e0 = S::zero(), e1 = S::zero();
    for (; k + 2 <= K; k += 2) {
      const S::V xa = S::set1(x[k]), xb = S::set1(x[k + 1]);
      c[0][0] = S::fmadd(xa, load_weights(panel + k * kPanelWidth), c[0][0]);
      c[0][1] = S::fmadd(xa, load_weights(panel + k * kPanelWidth + S::W), c[0][1]);
      e0 = S::fmadd(xb, load_weights(panel + (k + 1) * kPanelWidth), e0);
      e1 = S::fmadd(xb, load_weights(panel + (k + 1) * kPanelWidth + S::W), e1);
    }
    c[0][0] = S::add(c[0][0], e0);
    c[0][1] = S::add(c[0][1], e1);
  }
  for (; k < K; ++k) {
    const S::V w0 = load_weights(panel + k * kPanelWidth), w1 = load_weights(panel + k * kPanelWidth + S::W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const S::V xb = S::set1(x[r * xs + k]);
      c[r][0] = S::fmadd(xb, w0, c[r][0]);
      c[r][1] = S::fmadd(xb, w1, c[r][1]);
    }
  }
  // Copies of the accumulators, not c itself, go to memory: taking c's address made GCC keep the whole
  // block on the stack inside the k loop (a store per FMA; 30 instead of 77 GFLOPS).
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    float* yr = y + r * ys;
    S::V a0 = c[r][0], a1 = c[r][1];
    if (scale != nullptr) {
      a0 = S::mul(a0, S::load(scale));
      a1 = S::mul(a1, S::load(scale + S::W));
    }
    if (nv == kPanelWidth) {
      if (accumulate) {
        a0 = S::add(a0, S::load(yr));
        a1 = S::add(a1, S::load(yr + S::W));
      }
      S::store(yr, a0);
      S::store(yr + S::W, a1);
    } else {
      alignas(64) float t[kPanelWidth];
      S::store(t, a0);
      S::store(t + S::W, a1);
      for (int64_t j = 0; j < nv; ++j) yr[j] = accumulate ? yr[j] + t[j] : t[j];
    }
  }
}

// y (M, N) (=|+=) x (M, K) Wᵀ from W's panels (T as pack_panels'; scales (panel_count(N)·NR,) W's row scales,
// zero-padded, for int8 panels, else null); x's rows are xs apart, y is contiguous. Threads split the panels.
template <typename T>
inline void packed_gemm(const float* x, int64_t xs, int64_t M, int64_t K, const T* panels, const float* scales,
                        int64_t N, float* y, bool accumulate) {
  static_assert(kPanelRows == 6, "the remainder switch below covers 1..5 rows");
  // about 2^15 multiply-adds per task: a 16-row, 256-wide step splits its 1,024 columns across threads
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / (std::max<int64_t>(M, 1) * K * kPanelWidth));
  at::parallel_for(0, panel_count(N), grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * kPanelWidth, nv = std::min(kPanelWidth, N - n0);
      const T* panel = panels + p * K * kPanelWidth;
      const float* scale = scales == nullptr ? nullptr : scales + n0;
      int64_t m = 0;
      for (; m + kPanelRows <= M; m += kPanelRows)
        panel_block<kPanelRows>(x + m * xs, xs, K, panel, scale, y + m * N + n0, N, nv, accumulate);
      const float* xm = x + m * xs;
      float* ym = y + m * N + n0;
      switch (M - m) {
        case 5: panel_block<5>(xm, xs, K, panel, scale, ym, N, nv, accumulate); break;
        case 4: panel_block<4>(xm, xs, K, panel, scale, ym, N, nv, accumulate); break;
        case 3: panel_block<3>(xm, xs, K, panel, scale, ym, N, nv, accumulate); break;
        case 2: panel_block<2>(xm, xs, K, panel, scale, ym, N, nv, accumulate); break;
        case 1: panel_block<1>(xm, xs, K, panel, scale, ym, N, nv, accumulate); break;
        default: break;
      }
    }
  });
}

inline void packed_gemm(const float* x, int64_t xs, int64_t M, int64_t K, const float* panels, int64_t N, float* y,
                        bool accumulate) {
  packed_gemm<float>(x, xs, M, K, panels, nullptr, N, y, accumulate);
}

}  // namespace ssmzoo_cpu
#endif
