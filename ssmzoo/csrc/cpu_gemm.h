// y = x Wᵀ for a few rows of x, with W (N, K) packed once into column panels: the decode step's
// projections (mamba_cpu.cpp's lm_step), where x has `batch` rows. MKL's sgemm repacks W on every call
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

// W (N, K) row-major -> panels (panel_count(N), K, NR).
inline void pack_panels(const float* w, int64_t N, int64_t K, float* out) {
  at::parallel_for(0, panel_count(N), 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      float* dst = out + p * K * kPanelWidth;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t j = 0; j < kPanelWidth; ++j) {
          const int64_t n = p * kPanelWidth + j;
          dst[k * kPanelWidth + j] = n < N ? w[n * K + k] : 0.0f;
        }
    }
  });
}

// y rows [0, MR) and panel columns [0, nv): y (=|+=) x panelᵀ. x rows are xs apart, y rows ys apart.
template <int MR>
SSMZOO_INLINE void panel_block(const float* __restrict x, int64_t xs, int64_t K, const float* __restrict panel,
                               float* __restrict y, int64_t ys, int64_t nv, bool accumulate) {
  using S = SimdF;
  S::V c[MR][2];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) c[r][0] = c[r][1] = S::zero();
  for (int64_t k = 0; k < K; ++k) {
    const S::V w0 = S::load(panel + k * kPanelWidth), w1 = S::load(panel + k * kPanelWidth + S::W);
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

// y (M, N) (=|+=) x (M, K) Wᵀ from W's panels; x's rows are xs apart, y is contiguous. Threads split
// the panels.
inline void packed_gemm(const float* x, int64_t xs, int64_t M, int64_t K, const float* panels, int64_t N, float* y,
                        bool accumulate) {
  static_assert(kPanelRows == 6, "the remainder switch below covers 1..5 rows");
  // about 2^15 multiply-adds per task: a 16-row, 256-wide step splits its 1,024 columns across threads
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / (std::max<int64_t>(M, 1) * K * kPanelWidth));
  at::parallel_for(0, panel_count(N), grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * kPanelWidth, nv = std::min(kPanelWidth, N - n0);
      const float* panel = panels + p * K * kPanelWidth;
      int64_t m = 0;
      for (; m + kPanelRows <= M; m += kPanelRows)
        panel_block<kPanelRows>(x + m * xs, xs, K, panel, y + m * N + n0, N, nv, accumulate);
      const float* xm = x + m * xs;
      float* ym = y + m * N + n0;
      switch (M - m) {
        case 5: panel_block<5>(xm, xs, K, panel, ym, N, nv, accumulate); break;
        case 4: panel_block<4>(xm, xs, K, panel, ym, N, nv, accumulate); break;
        case 3: panel_block<3>(xm, xs, K, panel, ym, N, nv, accumulate); break;
        case 2: panel_block<2>(xm, xs, K, panel, ym, N, nv, accumulate); break;
        case 1: panel_block<1>(xm, xs, K, panel, ym, N, nv, accumulate); break;
        default: break;
      }
    }
  });
}

}  // namespace ssmzoo_cpu
#endif
