// Mamba's inner block on CPU in the layer's own channels-last layout (Gu & Dao 2023, Fig. 3):
//   u = SiLU(causal depthwise conv(x)),  Δ = softplus(δ + bias),
//   h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t,  y_t = (C_t · h_t + D u_t) · SiLU(z_t)
// with x and z the two halves of in_proj's output xz (batch, length, 2·D_inner), u and y
// (batch, length, D_inner), and δ = dt_proj(x_dbl[..., :R]), B, C from x_proj's output x_dbl
// (batch, length, R + 2N), read in place (δ is computed row by row in the scan, never stored).
// Nothing is transposed: the scan vectorises over a block of V channels (64 bytes, V = 16 floats or
// 8 doubles: one AVX-512 register, two AVX2 ones) instead of over the state, so every load of u, z, y
// is contiguous.
// x_proj between the conv and the scan is a matmul that the Python side runs (ATen).
//
// The scan's backward works as selective_scan_cpu.cpp's: forward keeps the state at the start of
// each chunk, backward recomputes one chunk at a time and runs the adjoint recurrence
//   dh_{t-1} = exp(Δ_t A) ⊙ (dh_t + dy_t C_t).
// Gradients that channels share (dB, dC over channels; dA, dD, d bias over the batch) are written
// per work unit and summed by the caller.
// Packed documents (`doc`, see Documents): no conv tap reads across a document start and the scan's state
// restarts at each one, both from that document's initial state (or zeros); states are per document.
//
// `step` is one token of the whole layer (in_proj, conv over the cached window, x_proj, dt_proj,
// one recurrence step, gate, out_proj) in one call, for generation; `lm_step` one token of a whole
// Mamba language model (embedding, every block's RMSNorm + step + residual, final norm, LM head).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

// 512-bit vectors for this file's loops (GCC's default for AVX-512 targets is 256): one register holds
// a block of 16 float channels, and the scan's exp polynomial is its cost (about 1.2x at batch 16).
// Targets without AVX-512 ignore it.
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC target("prefer-vector-width=512")
#endif

#include "cpu_gemm.h"
#include "cpu_math.h"

namespace {

using ssmzoo_cpu::exp_poly;
using ssmzoo_cpu::sigmoid;
using ssmzoo_cpu::softplus;

#if defined(SSMZOO_SIMD_F)
using ssmzoo_cpu::exp_simd;
using ssmzoo_cpu::SimdF;
#endif

constexpr int64_t kMaxState = 256;

template <typename T>
constexpr int64_t lanes() {
  return 64 / sizeof(T);
}

template <typename T>
const T* opt_ptr(const at::Tensor& t) {
  return t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

template <typename T>
inline T silu_grad(T pre) {
  const T s = sigmoid(pre);
  return s * (T(1) + pre * (T(1) - s));
}

// ---- packed documents ----------------------------------------------------------------------------
// `doc` (B, L) document ids, or nullptr: one document per row (document b is row b). Initial and final
// states are then one per document: no conv tap and no state crosses a document start.
struct Documents {
  const int64_t* doc;
  int64_t L;
  int64_t of(int64_t b, int64_t t) const { return doc != nullptr ? doc[b * L + t] : b; }
  bool starts(int64_t b, int64_t t) const { return doc != nullptr && t > 0 && doc[b * L + t] != doc[b * L + t - 1]; }
  bool ends(int64_t b, int64_t t) const { return doc != nullptr && t + 1 < L && doc[b * L + t + 1] != doc[b * L + t]; }
  bool same(int64_t b, int64_t t, int64_t u) const { return doc == nullptr || doc[b * L + t] == doc[b * L + u]; }
};

Documents documents(const at::Tensor& doc, int64_t B, int64_t L) {
  TORCH_CHECK(doc.numel() == 0 || (doc.scalar_type() == at::kLong && doc.is_contiguous() && doc.dim() == 2 &&
                                   doc.size(0) == B && doc.size(1) == L),
              "mamba_cpu: doc must be empty or a contiguous (batch, length) int64 tensor");
  return {doc.numel() > 0 ? doc.data_ptr<int64_t>() : nullptr, L};
}

// The number of initial/final states: documents, or rows.
int64_t state_count(const Documents& docs, int64_t B) { return docs.doc != nullptr ? docs.doc[B * docs.L - 1] + 1 : B; }

// ---- causal depthwise conv + SiLU --------------------------------------------------------------
// x: the first D columns of rows of stride `xs`; taps wt (W, D) (tap-major, so a channel block is
// contiguous); x̃ = [state, x] per document, with state (documents, D, W-1) or zeros. Tap k of output t
// reads x_{t+k-(W-1)}: rel = pos + k - (W-1) its position in t's document, from the state when negative.
template <typename T>
inline T conv_input(const T* x, int64_t xs, const T* state, const Documents& docs, int64_t b, int64_t t, int64_t rel,
                    int64_t src, int64_t d, int64_t L, int64_t D, int64_t W) {
  if (rel >= 0) return x[(b * L + src) * xs + d];
  return state != nullptr ? state[(docs.of(b, t) * D + d) * (W - 1) + (W - 1 + rel)] : T(0);
}

// Position of token t in its document, counted up to `cap` (the taps only ask whether it is at least W - 1).
inline int64_t position(const Documents& docs, int64_t b, int64_t t, int64_t cap) {
  if (docs.doc == nullptr) return t;
  int64_t p = 0;
  while (p < t && p < cap && docs.same(b, t, t - p - 1)) ++p;
  return p;
}

// out (D) = bias + Σ_k w_k x̃_{t+k-(W-1)}: the convolution's output at (b, t) before the SiLU, with pos t's position
// in its document (position()).
template <typename T>
SSMZOO_INLINE void conv_pre(const T* x, int64_t xs, const T* wt, const T* bias, const T* state, const Documents& docs,
                            int64_t b, int64_t t, int64_t pos, int64_t L, int64_t D, int64_t W, T* out) {
  for (int64_t d = 0; d < D; ++d) out[d] = bias != nullptr ? bias[d] : T(0);
  for (int64_t k = 0; k < W; ++k) {
    const int64_t src = t + k - (W - 1), rel = pos + k - (W - 1);
    const T* w = wt + k * D;
    if (rel >= 0) {
      const T* xr = x + (b * L + src) * xs;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] += w[d] * xr[d];
    } else {
      for (int64_t d = 0; d < D; ++d) out[d] += w[d] * conv_input(x, xs, state, docs, b, t, rel, src, d, L, D, W);
    }
  }
}

template <typename T>
void conv_forward_kernel(const T* x, int64_t xs, const T* wt, const T* bias, const T* state, const Documents& docs,
                         int64_t B, int64_t L, int64_t D, int64_t W, T* u) {
  at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / L, t = bt % L;
      T* out = u + bt * D;
      conv_pre(x, xs, wt, bias, state, docs, b, t, position(docs, b, t, W - 1), L, D, W, out);
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] = out[d] * sigmoid(out[d]);
    }
  });
}

// g: dL/du (B, L, D). Writes dL/dx into the first D columns of dx (row stride dxs); returns per-row
// partial tap and bias gradients (B·L rows would be too many: one partial per block of rows).
template <typename T>
void conv_backward_kernel(const T* x, int64_t xs, const T* wt, const T* bias, const T* state, const Documents& docs,
                          const T* g, int64_t B, int64_t L, int64_t D, int64_t W, int64_t rows_per_part, T* dx,
                          int64_t dxs, T* dw_part, T* dbias_part, T* dstate) {
  // dpre = g · SiLU'(pre), recomputed per row; dx_t = Σ_k w_k dpre_{t+W-1-k} (outputs of t's document).
  std::vector<T> dpre_all(B * L * D);
  T* dpre = dpre_all.data();
  const int64_t parts = (B * L + rows_per_part - 1) / rows_per_part;
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> pre(D);
    for (int64_t p = begin; p < end; ++p) {
      T* dw = dw_part + p * W * D;
      T* db = dbias_part + p * D;
      std::fill(dw, dw + W * D, T(0));
      std::fill(db, db + D, T(0));
      for (int64_t bt = p * rows_per_part; bt < std::min(B * L, (p + 1) * rows_per_part); ++bt) {
        const int64_t b = bt / L, t = bt % L;
        const int64_t pos = position(docs, b, t, W - 1);
        conv_pre(x, xs, wt, bias, state, docs, b, t, pos, L, D, W, pre.data());
        T* dp = dpre + bt * D;
        const T* gr = g + bt * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          dp[d] = gr[d] * silu_grad(pre[d]);
          db[d] += dp[d];
        }
        for (int64_t k = 0; k < W; ++k) {
          const int64_t src = t + k - (W - 1), rel = pos + k - (W - 1);
          T* dwk = dw + k * D;
          if (rel >= 0) {
            const T* xr = x + (b * L + src) * xs;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) dwk[d] += dp[d] * xr[d];
          } else {
            for (int64_t d = 0; d < D; ++d) dwk[d] += dp[d] * conv_input(x, xs, state, docs, b, t, rel, src, d, L, D, W);
          }
        }
      }
    }
  });
  at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / L, t = bt % L;
      T* out = dx + bt * dxs;
      for (int64_t d = 0; d < D; ++d) out[d] = T(0);
      for (int64_t k = 0; k < W; ++k) {
        const int64_t dst = t + (W - 1) - k;  // the output position that read x_t through tap k
        if (dst >= L || !docs.same(b, t, dst)) continue;
        const T* w = wt + k * D;
        const T* dp = dpre + (b * L + dst) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) out[d] += w[d] * dp[d];
      }
    }
  });
  if (dstate != nullptr) {  // x̃ index i < W-1 is state[i]; the document's output p read it through tap k = i - p
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s0 = 0; s0 < L; ++s0) {
        if (s0 > 0 && !docs.starts(b, s0)) continue;  // each document's first token
        int64_t n = 1;  // the document's length, up to W - 1
        while (n < W - 1 && s0 + n < L && docs.same(b, s0, s0 + n)) ++n;
        const int64_t k = docs.of(b, s0);
        for (int64_t d = 0; d < D; ++d)
          for (int64_t i = 0; i < W - 1; ++i) {
            T acc = 0;
            for (int64_t t = 0; t < std::min(n, i + 1); ++t) acc += wt[(i - t) * D + d] * dpre[(b * L + s0 + t) * D + d];
            dstate[(k * D + d) * (W - 1) + i] = acc;
          }
      }
  }
}

// ---- the scan, channels last -------------------------------------------------------------------
struct ScanDims {
  int64_t B, L, D, N, chunk, nchunks, blocks, Dpad;
  int64_t groups, per_group;  // work units are (batch row, group of per_group channel blocks)
  int64_t bc_stride, b_col, c_col, z_stride;  // x_dbl row stride and the columns of B and C; xz row stride
  Documents docs;  // packed documents: the state restarts at each start, from that document's initial state
};

// Loads lanes [d0, d0 + V) of a row, zero past D (padded lanes then contribute nothing).
// A full block (all but a ragged last one) is one plain copy, which compiles to vector moves.
template <typename T, int64_t V>
inline void load_lanes(const T* row, int64_t d0, int64_t D, T* out) {
  if (d0 + V <= D) {
    std::memcpy(out, row + d0, V * sizeof(T));
    return;
  }
  const int64_t nv = D - d0;
  for (int64_t j = 0; j < V; ++j) out[j] = j < nv ? row[d0 + j] : T(0);
}

// One work unit's channels: batch row b, channel blocks [blk0, blk1), channels [c0, c0 + width); the
// group's index g keys the per-group partial sums.
struct UnitSpan {
  int64_t b, g, blk0, blk1, c0, width;
};

inline UnitSpan unit_span(const ScanDims& s, int64_t unit, int64_t V) {
  UnitSpan u;
  u.b = unit / s.groups;
  u.g = unit % s.groups;
  u.blk0 = u.g * s.per_group;
  u.blk1 = std::min(s.blocks, u.blk0 + s.per_group);
  u.c0 = u.blk0 * V;
  u.width = std::min(s.D, u.blk1 * V) - u.c0;
  return u;
}

// A (B, D, N) state's channels [d0, d0 + V) of batch row b as (N, V) lanes, zero past D (all zero for a
// null src); and the way back, valid lanes only.
template <typename T, int64_t V>
void load_state_lanes(const T* src, int64_t b, int64_t d0, const ScanDims& s, T* lanes_out) {
  const int64_t nv = std::min(V, s.D - d0);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t j = 0; j < V; ++j)
      lanes_out[n * V + j] = (src != nullptr && j < nv) ? src[(b * s.D + d0 + j) * s.N + n] : T(0);
}

template <typename T, int64_t V>
void store_state_lanes(const T* lanes_in, int64_t b, int64_t d0, const ScanDims& s, T* dst) {
  const int64_t nv = std::min(V, s.D - d0);
  for (int64_t j = 0; j < nv; ++j)
    for (int64_t n = 0; n < s.N; ++n) dst[(b * s.D + d0 + j) * s.N + n] = lanes_in[n * V + j];
}

// Rows per tile. The forward runs in three passes per tile of rows and group of channels: the step sizes
// over whole rows, the recurrence block by block, the gate over whole rows again. Every read and write of
// the (batch, length, channels) tensors is then a contiguous run along a row; a unit that walked one
// 16-channel block down the rows touched one cache line per row stride and waited on memory.
constexpr int64_t kTileRows = 16;

// δ + bias for the channels [c0, c0 + width) of one row: dt_proj (R → D) applied here, from the row's
// first R columns of x_dbl and dtwT (R, D), its weight transposed, so δ is never a (batch, length, D)
// tensor written and read back (nor kept for the backward, which recomputes it the same way).
template <typename T>
SSMZOO_INLINE void dt_pre(const T* __restrict x, const T* __restrict dtwT, const T* __restrict bias, int64_t R,
                          int64_t D, int64_t c0, int64_t width, T* __restrict out) {
  std::fill(out, out + width, T(0));
  for (int64_t r = 0; r < R; ++r) {
    const T xr = x[r];
    const T* w = dtwT + r * D + c0;
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) out[c] += xr * w[c];
  }
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) out[c] += bias[c0 + c];
}

// One state's step for a block: h ← exp(Δ a) h + Δu b, acc += c h.
template <typename T, int64_t V>
SSMZOO_INLINE void state_step(T* __restrict h, const T* __restrict an, const T* __restrict dt,
                              const T* __restrict dtu, T bn, T cn, T* __restrict acc) {
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) {
    h[j] = exp_poly(dt[j] * an[j]) * h[j] + dtu[j] * bn;
    acc[j] += cn * h[j];
  }
}

#if defined(SSMZOO_SIMD_F)
template <>
SSMZOO_INLINE void state_step<float, 16>(float* __restrict h, const float* __restrict an, const float* __restrict dt,
                                         const float* __restrict dtu, float bn, float cn, float* __restrict acc) {
  using S = SimdF;
  for (int64_t j = 0; j < 16; j += S::W) {
    const S::V decay = exp_simd(S::mul(S::load(dt + j), S::load(an + j)));
    const S::V hv = S::fmadd(decay, S::load(h + j), S::mul(S::load(dtu + j), S::set1(bn)));
    S::store(h + j, hv);
    S::store(acc + j, S::fmadd(S::set1(cn), hv, S::load(acc + j)));
  }
}
#endif

template <typename T>
void scan_forward_kernel(const T* u, const T* dtwT, const T* bias, const T* At, const T* xdbl, const T* z,
                         const T* Dskip, const T* h0, const ScanDims& s, T* y, T* hfinal, T* ckpt) {
  constexpr int64_t V = lanes<T>(), R = kTileRows;
  const int64_t N = s.N, D = s.D, L = s.L;
  at::parallel_for(0, s.B * s.groups, 1, [&](int64_t begin, int64_t end) {
    const int64_t Wp = s.per_group * V;  // a tile row: the group's channels, padded to whole blocks
    std::vector<T> hbuf(s.per_group * N * V), dt(R * Wp), dtu(R * Wp), acc_tile(R * Wp);
    alignas(64) T acc[V], acc2[V];
    for (int64_t unit = begin; unit < end; ++unit) {
      const auto [b, g, blk0, blk1, c0, width] = unit_span(s, unit, V);
      for (int64_t blk = blk0; blk < blk1; ++blk)
        load_state_lanes<T, V>(h0, s.docs.of(b, 0), blk * V, s, hbuf.data() + (blk - blk0) * N * V);
      for (int64_t r0 = 0; r0 < L; r0 += R) {
        const int64_t rows = std::min(R, L - r0);
        // Pass 1: step sizes Δ = softplus(δ + bias) and Δu along whole rows (padding lanes 0).
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = b * L + r0 + i;
          const T* ur = u + row * D + c0;
          T* dti = dt.data() + i * Wp;
          T* dtui = dtu.data() + i * Wp;
          dt_pre(xdbl + row * s.bc_stride, dtwT, bias, s.b_col, D, c0, width, dti);
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) {
            dti[c] = softplus(dti[c]);
            dtui[c] = dti[c] * ur[c];
          }
          std::fill(dti + width, dti + Wp, T(0));
          std::fill(dtui + width, dtui + Wp, T(0));
        }
        // Pass 2: the recurrence, block by block; C·h into the tile.
        for (int64_t blk = blk0; blk < blk1; ++blk) {
          const int64_t d0 = blk * V, off = (blk - blk0) * V;
          T* h = hbuf.data() + (blk - blk0) * N * V;
          for (int64_t i = 0; i < rows; ++i) {
            const int64_t t = r0 + i, row = b * L + t;
            if (s.docs.starts(b, t)) load_state_lanes<T, V>(h0, s.docs.of(b, t), d0, s, h);  // (after any reset)
            if (t % s.chunk == 0) {
              T* c = ckpt + ((b * s.nchunks + t / s.chunk) * N) * s.Dpad + d0;
              for (int64_t n = 0; n < N; ++n) std::copy(h + n * V, h + (n + 1) * V, c + n * s.Dpad);
            }
            const T* Bt = xdbl + row * s.bc_stride + s.b_col;
            const T* Ct = xdbl + row * s.bc_stride + s.c_col;
            const T* dti = dt.data() + i * Wp + off;
            const T* dtui = dtu.data() + i * Wp + off;
            std::fill(acc, acc + V, T(0));
            std::fill(acc2, acc2 + V, T(0));
            // Two accumulators: two independent add chains over the states instead of one.
            int64_t n = 0;
            for (; n + 1 < N; n += 2) {
              state_step<T, V>(h + n * V, At + n * s.Dpad + d0, dti, dtui, Bt[n], Ct[n], acc);
              state_step<T, V>(h + (n + 1) * V, At + (n + 1) * s.Dpad + d0, dti, dtui, Bt[n + 1], Ct[n + 1], acc2);
            }
            if (n < N) state_step<T, V>(h + n * V, At + n * s.Dpad + d0, dti, dtui, Bt[n], Ct[n], acc);
            T* out = acc_tile.data() + i * Wp + off;
#pragma omp simd
            for (int64_t j = 0; j < V; ++j) out[j] = acc[j] + acc2[j];
            if (s.docs.ends(b, t)) store_state_lanes<T, V>(h, s.docs.of(b, t), d0, s, hfinal);
          }
        }
        // Pass 3: y = (C·h + D u) · SiLU(z) along whole rows.
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t row = b * L + r0 + i;
          const T* ai = acc_tile.data() + i * Wp;
          const T* ur = u + row * D + c0;
          const T* zr = z + row * s.z_stride + c0;
          const T* ds = Dskip + c0;
          T* yr = y + row * D + c0;
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) yr[c] = (ai[c] + ds[c] * ur[c]) * (zr[c] * sigmoid(zr[c]));
        }
      }
      for (int64_t blk = blk0; blk < blk1; ++blk)
        store_state_lanes<T, V>(hbuf.data() + (blk - blk0) * N * V, s.docs.of(b, L - 1), blk * V, s, hfinal);
    }
  });
}

// The backward's recompute of one state: a = exp(Δ a_n), h = a h_prev + Δu b (both kept).
template <typename T, int64_t V>
SSMZOO_INLINE void decay_step(const T* __restrict an, const T* __restrict dt, const T* __restrict dtu, T bn,
                              const T* __restrict hp, T* __restrict a, T* __restrict h) {
#pragma omp simd
  for (int64_t j = 0; j < V; ++j) {
    a[j] = exp_poly(dt[j] * an[j]);
    h[j] = a[j] * hp[j] + dtu[j] * bn;
  }
}

#if defined(SSMZOO_SIMD_F)
template <>
SSMZOO_INLINE void decay_step<float, 16>(const float* __restrict an, const float* __restrict dt,
                                         const float* __restrict dtu, float bn, const float* __restrict hp,
                                         float* __restrict a, float* __restrict h) {
  using S = SimdF;
  for (int64_t j = 0; j < 16; j += S::W) {
    const S::V av = exp_simd(S::mul(S::load(dt + j), S::load(an + j)));
    S::store(a + j, av);
    S::store(h + j, S::fmadd(av, S::load(hp + j), S::mul(S::load(dtu + j), S::set1(bn))));
  }
}
#endif

template <typename T>
void scan_backward_kernel(const T* u, const T* dtwT, const T* bias, const T* At, const T* xdbl, const T* z,
                          const T* Dskip, const T* h0, const T* ckpt, const T* dy, const T* dh_final, const ScanDims& s, T* du,
                          T* ddelta, T* dz, T* dA_part, T* dD_part, T* dbias_part, T* dB_part, T* dC_part, T* dh0) {
  constexpr int64_t V = lanes<T>();
  const int64_t N = s.N, D = s.D, L = s.L, K = s.chunk;
  // Work units as the forward's: (batch row, group of channel blocks). Per checkpoint chunk, the rows' inputs
  // for the group are staged along whole rows first and the outputs written back so afterwards (the
  // forward's comment says why); in between, each block's recurrences read and write the staging tiles.
  at::parallel_for(0, s.B * s.groups, 1, [&](int64_t begin, int64_t end) {
    const int64_t Wp = s.per_group * V;
    std::vector<T> hbuf(K * N * V), abuf(K * N * V), hstart(N * V), hinit(N * V), dh(s.per_group * N * V), dA(s.per_group * N * V);
    // [row][Wp] tiles: pre = δ + bias (then d δ), dt = softplus(pre), uu = u (then du), gyb = dy, zb = z (then dz).
    std::vector<T> pre(K * Wp), dtb(K * Wp), ub(K * Wp), gyb(K * Wp), zb(K * Wp), dD_acc(Wp), dbias_acc(Wp);
    // dB_t, dC_t sum over channels: lane-wise over the group's blocks first, across lanes once per (t, n).
    std::vector<T> sBv(K * N * V), sCv(K * N * V);
    for (int64_t unit = begin; unit < end; ++unit) {
      const auto [b, g, blk0, blk1, c0, width] = unit_span(s, unit, V);
      T* dBp = dB_part + (g * s.B + b) * L * N;
      T* dCp = dC_part + (g * s.B + b) * L * N;
      for (int64_t blk = blk0; blk < blk1; ++blk)
        load_state_lanes<T, V>(dh_final, s.docs.of(b, L - 1), blk * V, s, dh.data() + (blk - blk0) * N * V);
      std::fill(dA.begin(), dA.end(), T(0));
      std::fill(dD_acc.begin(), dD_acc.end(), T(0));
      std::fill(dbias_acc.begin(), dbias_acc.end(), T(0));
      for (int64_t c = s.nchunks - 1; c >= 0; --c) {
        const int64_t t0 = c * K, t1 = std::min(L, t0 + K);
        // Stage the chunk's rows (padding lanes 0).
        for (int64_t i = 0; i < t1 - t0; ++i) {
          const int64_t row = b * L + t0 + i;
          T* pi = pre.data() + i * Wp;
          T* di = dtb.data() + i * Wp;
          dt_pre(xdbl + row * s.bc_stride, dtwT, bias, s.b_col, D, c0, width, pi);
#pragma omp simd
          for (int64_t k = 0; k < width; ++k) di[k] = softplus(pi[k]);
          std::copy(u + row * D + c0, u + row * D + c0 + width, ub.data() + i * Wp);
          std::copy(dy + row * D + c0, dy + row * D + c0 + width, gyb.data() + i * Wp);
          std::copy(z + row * s.z_stride + c0, z + row * s.z_stride + c0 + width, zb.data() + i * Wp);
          for (T* tile : {pi, di, ub.data() + i * Wp, gyb.data() + i * Wp, zb.data() + i * Wp})
            std::fill(tile + width, tile + Wp, T(0));
        }
        std::fill(sBv.begin(), sBv.end(), T(0));
        std::fill(sCv.begin(), sCv.end(), T(0));
        for (int64_t blk = blk0; blk < blk1; ++blk) {
          const int64_t d0 = blk * V, off = (blk - blk0) * V;
          T* dhb = dh.data() + (blk - blk0) * N * V;
          T* dAb = dA.data() + (blk - blk0) * N * V;
          T* dD_v = dD_acc.data() + off;
          T* dbias_v = dbias_acc.data() + off;
          alignas(64) T dskip_v[V], uu[V], gy[V], zz[V], ddt[V], du_acc[V];
          load_lanes<T, V>(Dskip, d0, D, dskip_v);
          const T* ck = ckpt + ((b * s.nchunks + c) * N) * s.Dpad + d0;
          for (int64_t n = 0; n < N; ++n) std::copy(ck + n * s.Dpad, ck + n * s.Dpad + V, hstart.data() + n * V);
          // Recompute this chunk's decays and states.
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t row = b * L + t, i = t - t0;
            const T* dt = dtb.data() + i * Wp + off;
            const T* ui = ub.data() + i * Wp + off;
            alignas(64) T dtu[V];
#pragma omp simd
            for (int64_t j = 0; j < V; ++j) dtu[j] = dt[j] * ui[j];
            const T* Bt = xdbl + row * s.bc_stride + s.b_col;
            const T* hp = t > t0 ? hbuf.data() + (i - 1) * N * V : hstart.data();
            if (t > t0 && s.docs.starts(b, t)) {  // a document starts: its initial state enters
              load_state_lanes<T, V>(h0, s.docs.of(b, t), d0, s, hinit.data());
              hp = hinit.data();
            }
            T* hc = hbuf.data() + i * N * V;
            T* ac = abuf.data() + i * N * V;
            for (int64_t n = 0; n < N; ++n)
              decay_step<T, V>(At + n * s.Dpad + d0, dt, dtu, Bt[n], hp + n * V, ac + n * V, hc + n * V);
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {
            const int64_t row = b * L + t, i = t - t0;
            const T* dt = dtb.data() + i * Wp + off;
            const T* hc = hbuf.data() + i * N * V;
            const T* ac = abuf.data() + i * N * V;
            const T* hp = t > t0 ? hbuf.data() + (i - 1) * N * V : hstart.data();
            if (t > t0 && s.docs.starts(b, t)) {
              load_state_lanes<T, V>(h0, s.docs.of(b, t), d0, s, hinit.data());
              hp = hinit.data();
            }
            // The next token starts another document: h_t reaches only this document's final state.
            if (s.docs.ends(b, t)) load_state_lanes<T, V>(dh_final, s.docs.of(b, t), d0, s, dhb);
            const T* Bt = xdbl + row * s.bc_stride + s.b_col;
            const T* Ct = xdbl + row * s.bc_stride + s.c_col;
            T* ui = ub.data() + i * Wp + off;   // u in, du out
            T* zi = zb.data() + i * Wp + off;   // z in, dz out
            T* pi = pre.data() + i * Wp + off;  // δ + bias in, d δ out
            std::copy(ui, ui + V, uu);
            std::copy(gyb.data() + i * Wp + off, gyb.data() + i * Wp + off + V, gy);
            std::copy(zi, zi + V, zz);
            // The gate: out = y · SiLU(z); y_t = C_t · h_t + D u_t is recomputed.
            alignas(64) T yt[V];
#pragma omp simd
            for (int64_t j = 0; j < V; ++j) yt[j] = dskip_v[j] * uu[j];
            for (int64_t n = 0; n < N; ++n) {
              const T cn = Ct[n];
#pragma omp simd
              for (int64_t j = 0; j < V; ++j) yt[j] += cn * hc[n * V + j];
            }
#pragma omp simd
            for (int64_t j = 0; j < V; ++j) {
              const T sz = sigmoid(zz[j]);
              zi[j] = gy[j] * yt[j] * sz * (T(1) + zz[j] * (T(1) - sz));
              gy[j] *= zz[j] * sz;
              dD_v[j] += gy[j] * uu[j];
              du_acc[j] = gy[j] * dskip_v[j];
              ddt[j] = T(0);
            }
            for (int64_t n = 0; n < N; ++n) {
              const T bn = Bt[n], cn = Ct[n];
              const T* an = At + n * s.Dpad + d0;
              T* sB = sBv.data() + (i * N + n) * V;
              T* sC = sCv.data() + (i * N + n) * V;
#pragma omp simd
              for (int64_t j = 0; j < V; ++j) {
                const T h = hc[n * V + j], a = ac[n * V + j], ahp = a * hp[n * V + j];
                const T gj = dhb[n * V + j] + gy[j] * cn;  // the total adjoint of h_t
                sC[j] += gy[j] * h;
                sB[j] += gj * dt[j] * uu[j];
                ddt[j] += gj * (bn * uu[j] + an[j] * ahp);
                du_acc[j] += gj * dt[j] * bn;
                dAb[n * V + j] += gj * dt[j] * ahp;
                dhb[n * V + j] = a * gj;
              }
            }
#pragma omp simd
            for (int64_t j = 0; j < V; ++j) {
              ddt[j] *= sigmoid(pi[j]);  // softplus' = sigmoid
              dbias_v[j] += ddt[j];
              pi[j] = ddt[j];
              ui[j] = du_acc[j];
            }
            if (s.docs.starts(b, t)) store_state_lanes<T, V>(dhb, s.docs.of(b, t), d0, s, dh0);
          }
        }
        for (int64_t i = 0; i < t1 - t0; ++i)
          for (int64_t n = 0; n < N; ++n) {
            const T* sB = sBv.data() + (i * N + n) * V;
            const T* sC = sCv.data() + (i * N + n) * V;
            T tB = 0, tC = 0;
#pragma omp simd reduction(+ : tB, tC)
            for (int64_t j = 0; j < V; ++j) {
              tB += sB[j];
              tC += sC[j];
            }
            dBp[(t0 + i) * N + n] = tB;
            dCp[(t0 + i) * N + n] = tC;
          }
        // Write the chunk's du, d δ and dz back along whole rows.
        for (int64_t i = 0; i < t1 - t0; ++i) {
          const int64_t row = b * L + t0 + i;
          std::copy(ub.data() + i * Wp, ub.data() + i * Wp + width, du + row * D + c0);
          std::copy(pre.data() + i * Wp, pre.data() + i * Wp + width, ddelta + row * D + c0);
          std::copy(zb.data() + i * Wp, zb.data() + i * Wp + width, dz + row * s.z_stride + c0);
        }
      }
      for (int64_t blk = blk0; blk < blk1; ++blk) {
        const int64_t d0 = blk * V, off = (blk - blk0) * V;
        store_state_lanes<T, V>(dh.data() + off * N, s.docs.of(b, 0), d0, s, dh0);
        store_state_lanes<T, V>(dA.data() + off * N, b, d0, s, dA_part);
      }
      std::copy(dD_acc.begin(), dD_acc.begin() + width, dD_part + b * D + c0);
      std::copy(dbias_acc.begin(), dbias_acc.begin() + width, dbias_part + b * D + c0);
    }
  });
}

ScanDims make_dims(const at::Tensor& u, const at::Tensor& A, const at::Tensor& xdbl, int64_t b_col,
                   const at::Tensor& xz, int64_t chunk, int64_t V, const at::Tensor& doc) {
  ScanDims s;
  s.docs = documents(doc, u.size(0), u.size(1));
  s.B = u.size(0);
  s.L = u.size(1);
  s.D = u.size(2);
  s.N = A.size(1);
  s.chunk = chunk;
  s.nchunks = (s.L + chunk - 1) / chunk;
  s.blocks = (s.D + V - 1) / V;
  s.Dpad = s.blocks * V;
  // Enough groups that every thread has work at small batch; none of them empty.
  const int64_t want = std::min(s.blocks, std::max<int64_t>(1, (4 * at::get_num_threads() + s.B - 1) / s.B));
  s.per_group = (s.blocks + want - 1) / want;
  s.groups = (s.blocks + s.per_group - 1) / s.per_group;
  s.bc_stride = xdbl.size(2);
  s.b_col = b_col;
  s.c_col = b_col + s.N;
  s.z_stride = xz.size(2);
  TORCH_CHECK(s.N <= kMaxState, "mamba_cpu: d_state must be at most ", kMaxState);
  TORCH_CHECK(chunk >= 1, "mamba_cpu: chunk must be positive");
  TORCH_CHECK(xz.size(2) == 2 * s.D && s.c_col + s.N <= s.bc_stride, "mamba_cpu: bad xz or x_dbl width");
  return s;
}

// dt_proj's weight (D, R = b_col) as (R, D): a row of weights per input of dt_proj, as dt_pre reads them.
at::Tensor dt_rows(const at::Tensor& dt_w, const ScanDims& s) {
  TORCH_CHECK(dt_w.size(0) == s.D && dt_w.size(1) == s.b_col, "mamba_cpu: dt_proj weight must be (D, R = b_col)");
  return dt_w.t().contiguous();
}

// A (D, N) as (N, Dpad), zero-padded: a channel block's decays for one n are contiguous.
at::Tensor padded_transpose(const at::Tensor& A, int64_t Dpad) {
  auto At = at::zeros({A.size(1), Dpad}, A.options());
  At.narrow(1, 0, A.size(0)).copy_(A.t());
  return At;
}

// ---- bindings ------------------------------------------------------------------------------------
// state: (documents or B, D, W-1), or empty for zeros; doc: (B, L) document ids, or empty (one per row).
at::Tensor conv_forward(at::Tensor xz, at::Tensor w, at::Tensor bias, at::Tensor state, at::Tensor doc) {
  const int64_t B = xz.size(0), L = xz.size(1), D = w.size(0), W = w.size(1);
  const Documents docs = documents(doc, B, L);
  TORCH_CHECK(state.numel() == 0 || state.size(0) == state_count(docs, B), "mamba_cpu: one conv state per document");
  auto u = at::empty({B, L, D}, xz.options());
  auto wt = w.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "mamba_conv_forward", [&] {
    conv_forward_kernel<scalar_t>(xz.data_ptr<scalar_t>(), xz.size(2), wt.data_ptr<scalar_t>(), opt_ptr<scalar_t>(bias),
                                  opt_ptr<scalar_t>(state), docs, B, L, D, W, u.data_ptr<scalar_t>());
  });
  return u;
}

// Writes dL/dx into dxz[..., :D]; returns dw (D, W), d bias (D,), d state (state's shape; empty without a state).
std::vector<at::Tensor> conv_backward(at::Tensor xz, at::Tensor w, at::Tensor bias, at::Tensor state, at::Tensor g,
                                      at::Tensor dxz, at::Tensor doc) {
  const int64_t B = xz.size(0), L = xz.size(1), D = w.size(0), W = w.size(1);
  const Documents docs = documents(doc, B, L);
  const int64_t rows_per_part = std::max<int64_t>(64, (B * L + 4 * at::get_num_threads() - 1) / (4 * at::get_num_threads()));
  const int64_t parts = (B * L + rows_per_part - 1) / rows_per_part;
  auto wt = w.t().contiguous();
  auto dw_part = at::empty({parts, W, D}, xz.options());
  auto dbias_part = at::empty({parts, D}, xz.options());
  auto dstate = state.numel() > 0 ? at::empty_like(state) : at::empty({0}, xz.options());
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "mamba_conv_backward", [&] {
    conv_backward_kernel<scalar_t>(xz.data_ptr<scalar_t>(), xz.size(2), wt.data_ptr<scalar_t>(), opt_ptr<scalar_t>(bias),
                                   opt_ptr<scalar_t>(state), docs, g.data_ptr<scalar_t>(), B, L, D, W, rows_per_part,
                                   dxz.data_ptr<scalar_t>(), dxz.size(2), dw_part.data_ptr<scalar_t>(),
                                   dbias_part.data_ptr<scalar_t>(), state.numel() > 0 ? dstate.data_ptr<scalar_t>() : nullptr);
  });
  return {dw_part.sum(0).t().contiguous(), dbias_part.sum(0), dstate};
}

// Returns y (B, L, D), final states (documents or B, D, N), checkpoints (B, nchunks, N, Dpad). h0: one state per
// document, or empty for zeros; doc: (B, L) document ids, or empty (one document per row).
std::vector<at::Tensor> scan_forward(at::Tensor u, at::Tensor dt_w, at::Tensor bias, at::Tensor A, at::Tensor xdbl,
                                     int64_t b_col, at::Tensor xz, at::Tensor Dskip, at::Tensor h0, int64_t chunk,
                                     at::Tensor doc) {
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mamba_scan_forward", [&] {
    const ScanDims s = make_dims(u, A, xdbl, b_col, xz, chunk, lanes<scalar_t>(), doc);
    const int64_t states = state_count(s.docs, s.B);
    TORCH_CHECK(h0.numel() == 0 || h0.size(0) == states, "mamba_cpu: one initial state per document");
    auto At = padded_transpose(A, s.Dpad);
    auto dtwT = dt_rows(dt_w, s);
    auto y = at::empty_like(u);
    auto hfinal = at::empty({states, s.D, s.N}, u.options());
    auto ckpt = at::empty({s.B, s.nchunks, s.N, s.Dpad}, u.options());
    scan_forward_kernel<scalar_t>(u.data_ptr<scalar_t>(), dtwT.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                                  At.data_ptr<scalar_t>(), xdbl.data_ptr<scalar_t>(), xz.data_ptr<scalar_t>() + s.D,
                                  Dskip.data_ptr<scalar_t>(), opt_ptr<scalar_t>(h0), s, y.data_ptr<scalar_t>(),
                                  hfinal.data_ptr<scalar_t>(), ckpt.data_ptr<scalar_t>());
    out = {y, hfinal, ckpt};
  });
  return out;
}

// Writes dL/dz into dxz[..., D:]; returns du, d delta (before bias and softplus), dA (D, N), dD (D,),
// d bias (D,), dB (B, L, N), dC (B, L, N), d h0 (dh_final's shape: one per document). h0 (read at the
// documents' starts) and doc as scan_forward's.
std::vector<at::Tensor> scan_backward(at::Tensor u, at::Tensor dt_w, at::Tensor bias, at::Tensor A, at::Tensor xdbl,
                                      int64_t b_col, at::Tensor xz, at::Tensor Dskip, at::Tensor h0, at::Tensor ckpt,
                                      at::Tensor dy, at::Tensor dh_final, int64_t chunk, at::Tensor dxz, at::Tensor doc) {
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mamba_scan_backward", [&] {
    const ScanDims s = make_dims(u, A, xdbl, b_col, xz, chunk, lanes<scalar_t>(), doc);
    TORCH_CHECK(dh_final.size(0) == state_count(s.docs, s.B) && (h0.numel() == 0 || h0.sizes() == dh_final.sizes()),
                "mamba_cpu: one final state (and initial state) per document");
    auto At = padded_transpose(A, s.Dpad);
    auto dtwT = dt_rows(dt_w, s);
    auto du = at::empty_like(u);
    auto ddelta = at::empty_like(u);
    auto dA_part = at::empty({s.B, s.D, s.N}, u.options());
    auto dD_part = at::empty({s.B, s.D}, u.options());
    auto dbias_part = at::empty({s.B, s.D}, u.options());
    auto dB_part = at::empty({s.groups, s.B, s.L, s.N}, u.options());
    auto dC_part = at::empty({s.groups, s.B, s.L, s.N}, u.options());
    auto dh0 = at::empty_like(dh_final);
    scan_backward_kernel<scalar_t>(
        u.data_ptr<scalar_t>(), dtwT.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), At.data_ptr<scalar_t>(),
        xdbl.data_ptr<scalar_t>(), xz.data_ptr<scalar_t>() + s.D, Dskip.data_ptr<scalar_t>(), opt_ptr<scalar_t>(h0),
        ckpt.data_ptr<scalar_t>(),
        dy.data_ptr<scalar_t>(), dh_final.data_ptr<scalar_t>(), s, du.data_ptr<scalar_t>(), ddelta.data_ptr<scalar_t>(),
        dxz.data_ptr<scalar_t>() + s.D, dA_part.data_ptr<scalar_t>(), dD_part.data_ptr<scalar_t>(),
        dbias_part.data_ptr<scalar_t>(), dB_part.data_ptr<scalar_t>(), dC_part.data_ptr<scalar_t>(),
        dh0.data_ptr<scalar_t>());
    out = {du, ddelta, dA_part.sum(0), dD_part.sum(0), dbias_part.sum(0), dB_part.sum(0), dC_part.sum(0), dh0};
  });
  return out;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return b.numel() > 0 ? at::addmm(b, x, w.t()) : at::mm(x, w.t());
}

void linear_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  if (b.numel() > 0) {
    at::addmm_out(out, b, x, w.t());
  } else {
    at::mm_out(out, x, w.t());
  }
}

// ---- packed weights for the decode step (cpu_gemm.h) -----------------------------------------------
// W (N, K) float32 (or its stored bfloat16 / int8 form) -> its column panels (panel count, K, panel width); an empty tensor where this build
// has no SIMD kernel (the step then multiplies with ATen).
at::Tensor pack_panels(at::Tensor w) {
  const auto t = w.scalar_type();
  if (w.dim() != 2 || (t != at::kFloat && t != at::kBFloat16 && t != at::kChar))
    throw pybind11::value_error("pack_panels: w must be a 2-D float32, bfloat16 or int8 tensor");
#if defined(SSMZOO_SIMD_F)
  w = w.contiguous();
  auto out = at::empty({ssmzoo_cpu::panel_count(w.size(0)), w.size(1), ssmzoo_cpu::kPanelWidth}, w.options());
  if (t == at::kFloat)
    ssmzoo_cpu::pack_panels(w.data_ptr<float>(), w.size(0), w.size(1), out.data_ptr<float>());
  else if (t == at::kChar)
    ssmzoo_cpu::pack_panels(w.data_ptr<int8_t>(), w.size(0), w.size(1), out.data_ptr<int8_t>());
  else
    ssmzoo_cpu::pack_panels(reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), w.size(0), w.size(1),
                            reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()));
  return out;
#else
  return w.new_empty({0});
#endif
}

// Whether `panels` is W's packing for this build (a wrong one is an error, not a wrong result). Panels may
// hold W's value stored in fewer bytes (bfloat16, or int8 times `scales`, LanguageModel.quantize): W is then
// that stored form's value, in float32.
bool has_panels(const at::Tensor& panels, const at::Tensor& w, const at::Tensor& scales) {
  if (!panels.defined() || panels.numel() == 0) return false;
#if defined(SSMZOO_SIMD_F)
  const auto t = panels.scalar_type();
  if ((t == at::kFloat || t == at::kBFloat16 || t == at::kChar) && w.scalar_type() == at::kFloat &&
      panels.is_contiguous() && panels.dim() == 3 && panels.size(0) == ssmzoo_cpu::panel_count(w.size(0)) &&
      panels.size(1) == w.size(1) && panels.size(2) == ssmzoo_cpu::kPanelWidth &&
      (t != at::kChar || (scales.scalar_type() == at::kFloat && scales.numel() == panels.size(0) * panels.size(2))))
    return true;
#endif
  throw pybind11::value_error("packed weights do not match their matrix (shape " + std::to_string(w.size(0)) + " x " +
                             std::to_string(w.size(1)) + "); pack them again with pack_panels");
}

// out (=|+=) x Wᵀ (+ b): from W's panels where given, else ATen. x's rows may be strided (a column
// range of a wider matrix); out is contiguous.
void project(at::Tensor& out, const at::Tensor& x, const at::Tensor& w, const at::Tensor& panels, const at::Tensor& b,
             bool accumulate, const at::Tensor& scales = at::Tensor()) {
#if defined(SSMZOO_SIMD_F)
  if (has_panels(panels, w, scales) && x.stride(1) == 1) {
    const float* xp = x.data_ptr<float>();
    float* yp = out.data_ptr<float>();
    const int64_t xs = x.stride(0), M = x.size(0), K = x.size(1), N = w.size(0);
    if (panels.scalar_type() == at::kFloat)
      ssmzoo_cpu::packed_gemm<float>(xp, xs, M, K, panels.data_ptr<float>(), nullptr, N, yp, accumulate);
    else if (panels.scalar_type() == at::kBFloat16)
      ssmzoo_cpu::packed_gemm<uint16_t>(xp, xs, M, K, reinterpret_cast<const uint16_t*>(panels.data_ptr<at::BFloat16>()),
                                        nullptr, N, yp, accumulate);
    else
      ssmzoo_cpu::packed_gemm<int8_t>(xp, xs, M, K, panels.data_ptr<int8_t>(), scales.data_ptr<float>(), N, yp,
                                      accumulate);
    if (b.numel() > 0) out.add_(b);
    return;
  }
#endif
  if (accumulate) {
    out.addmm_(x, w.t());
    if (b.numel() > 0) out.add_(b);
  } else {
    linear_out(out, x, w, b);
  }
}

// x (M, K) float32 times Wᵀ from W's panels: the kernel alone, for its tests.
at::Tensor packed_linear(at::Tensor x, at::Tensor panels, at::Tensor w) {
  if (x.dim() != 2 || x.scalar_type() != at::kFloat || x.size(1) != w.size(1))
    throw pybind11::value_error("packed_linear: x must be a float32 (rows, K) tensor with w's K columns");
  auto out = at::empty({x.size(0), w.size(0)}, x.options());
  x = x.stride(1) == 1 ? x : x.contiguous();
  project(out, x, w, panels, w.new_empty({0}), false);
  return out;
}

// ---- one token (generation) ----------------------------------------------------------------------
// The formulas are the layer's PyTorch step (ops/mamba_step/reference.py) with the vectorisable exp,
// softplus and sigmoid of cpu_math.h that the forward kernels use, so step and forward agree to
// rounding. Loops over the state run over contiguous N entries of one channel: one SIMD register
// for N = 16 floats, where std::exp would cost one scalar call per entry (B·D·N per layer).

// A layer's weights; optional biases are empty tensors.
struct LayerWeights {
  at::Tensor in_w, in_b, conv_w, conv_b, xproj_w, dt_w, dt_b, A_log, Dskip, out_w, out_b;
  at::Tensor in_p, xproj_p, dt_p, out_p;  // the matrices' panels (pack_panels), or empty: ATen multiplies
  at::Tensor in_s, xproj_s, dt_s, out_s;  // int8 panels' row scales (padded), else empty
};

// Scratch of one step, reused by every layer of a model step.
struct StepScratch {
  at::Tensor xz, u, xdbl, dtr, y, A;
  StepScratch(int64_t B, int64_t D, int64_t N, int64_t R, const at::TensorOptions& o)
      : xz(at::empty({B, 2 * D}, o)), u(at::empty({B, D}, o)), xdbl(at::empty({B, R + 2 * N}, o)),
        dtr(at::empty({B, D}, o)), y(at::empty({B, D}, o)), A(at::empty({D, N}, o)) {}
};

// Work units: (batch row, block of kStepBlock channels). A grain of about 2^14 state entries keeps a
// small batch on one thread, where waking a second would cost more than the work.
constexpr int64_t kStepBlock = 64;

inline int64_t step_grain(int64_t per_channel) {
  return std::max<int64_t>(1, (int64_t(1) << 14) / (kStepBlock * std::max<int64_t>(per_channel, 1)));
}

// The conv over the cached window, then SiLU: u (B, D) and the shifted window nc (B, D, W-1) from the
// first half of xz (B, 2D) and the old window cs.
template <typename T>
void step_conv_kernel(const T* xz, const T* cs, const T* cw, const T* cb, int64_t B, int64_t D, int64_t W, T* u,
                      T* nc) {
  const int64_t blocks = (D + kStepBlock - 1) / kStepBlock;
  at::parallel_for(0, B * blocks, step_grain(W), [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / blocks, d0 = (unit % blocks) * kStepBlock, d1 = std::min(D, d0 + kStepBlock);
      T* ub = u + b * D;
      for (int64_t d = d0; d < d1; ++d) {
        const int64_t bd = b * D + d;
        const T* win = cs + bd * (W - 1);
        const T xt = xz[b * 2 * D + d];
        T acc = cb != nullptr ? cb[d] : T(0);
        for (int64_t k = 0; k < W - 1; ++k) acc += win[k] * cw[d * W + k];
        ub[d] = acc + xt * cw[d * W + W - 1];
        for (int64_t k = 0; k + 1 < W - 1; ++k) nc[bd * (W - 1) + k] = win[k + 1];
        if (W > 1) nc[bd * (W - 1) + W - 2] = xt;
      }
#pragma omp simd
      for (int64_t d = d0; d < d1; ++d) ub[d] = ub[d] * sigmoid(ub[d]);
    }
  });
}

#if defined(SSMZOO_SIMD_F)
// step_scan_kernel's unit for float states in whole registers (N a multiple of the vector width): W channels
// at a time, their C · h' sums formed together by SimdF::sum_lanes.
inline void step_scan_block(int64_t b, int64_t d0, int64_t nd, int64_t D, int64_t N, const float* delta,
                            const float* gate, const float* u, const float* A, const float* h, const float* Bt,
                            const float* Ct, const float* Dskip, float* nh, float* y) {
  using S = SimdF;
  for (int64_t s0 = 0; s0 < nd; s0 += S::W) {
    const int64_t ns = std::min<int64_t>(S::W, nd - s0);
    S::V p[S::W];
    for (int64_t j = 0; j < S::W; ++j) {
      p[j] = S::zero();
      if (j >= ns) continue;
      const int64_t d = d0 + s0 + j, bd = b * D + d;
      const float dl = delta[s0 + j], du = dl * u[bd];
      for (int64_t n0 = 0; n0 < N; n0 += S::W) {
        const S::V decay = exp_simd(S::mul(S::set1(dl), S::load(A + d * N + n0)));
        const S::V hn = S::fmadd(decay, S::load(h + bd * N + n0), S::mul(S::set1(du), S::load(Bt + n0)));
        S::store(nh + bd * N + n0, hn);
        p[j] = S::fmadd(hn, S::load(Ct + n0), p[j]);
      }
    }
    alignas(64) float sums[S::W];
    S::store(sums, S::sum_lanes(p));
    for (int64_t j = 0; j < ns; ++j) {
      const int64_t d = d0 + s0 + j, bd = b * D + d;
      y[bd] = (sums[j] + Dskip[d] * u[bd]) * gate[s0 + j];
    }
  }
}
#endif

// One recurrence step and the gate: h' = exp(Δ A) ⊙ h + Δ u B, y = (C · h' + D u) · SiLU(z), with
// Δ = softplus(dtr + dt_b), B and C the columns R.. of xdbl (B, xs), z the second half of xz.
template <typename T>
void step_scan_kernel(const T* xz, const T* u, const T* xdbl, int64_t xs, int64_t R, const T* dtr, const T* dt_b,
                      const T* A, const T* h, const T* Dskip, int64_t B, int64_t D, int64_t N, T* nh, T* y) {
  const int64_t blocks = (D + kStepBlock - 1) / kStepBlock;
  at::parallel_for(0, B * blocks, step_grain(N), [&](int64_t begin, int64_t end) {
    alignas(64) T delta[kStepBlock], gate[kStepBlock];
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / blocks, d0 = (unit % blocks) * kStepBlock, nd = std::min(kStepBlock, D - d0);
      const T* zb = xz + b * 2 * D + D + d0;
#pragma omp simd
      for (int64_t j = 0; j < nd; ++j) {
        delta[j] = softplus(dtr[b * D + d0 + j] + dt_b[d0 + j]);
        gate[j] = zb[j] * sigmoid(zb[j]);
      }
      const T* Bt = xdbl + b * xs + R;
      const T* Ct = Bt + N;
#if defined(SSMZOO_SIMD_F)
      if constexpr (std::is_same_v<T, float>) {
        if (N % SimdF::W == 0) {
          step_scan_block(b, d0, nd, D, N, delta, gate, u, A, h, Bt, Ct, Dskip, nh, y);
          continue;
        }
      }
#endif
      for (int64_t j = 0; j < nd; ++j) {
        const int64_t d = d0 + j, bd = b * D + d;
        const T dl = delta[j], du = dl * u[bd];
        const T* Ad = A + d * N;
        const T* hd = h + bd * N;
        T* nhd = nh + bd * N;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          const T hn = exp_poly(dl * Ad[n]) * hd[n] + du * Bt[n];
          nhd[n] = hn;
          acc += hn * Ct[n];
        }
        y[bd] = (acc + Dskip[d] * u[bd]) * gate[j];
      }
    }
  });
}

// A = -exp(A_log), the layer's decay rates.
template <typename T>
void neg_exp(const T* a_log, int64_t n, T* a) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) a[i] = -exp_poly(a_log[i]);
}

// One layer from xz = in_proj(x) (already in s.xz): the gated y (B, D) into s.y, the new states into
// new_conv (B, D, W-1) and new_h (B, D, N). The states passed in are not modified.
void layer_step(const at::Tensor& conv_state, const at::Tensor& h, const LayerWeights& w, StepScratch& s,
                at::Tensor& new_conv, at::Tensor& new_h) {
  const int64_t B = s.xz.size(0), D = w.conv_w.size(0), W = w.conv_w.size(1), N = w.A_log.size(1);
  const int64_t R = w.dt_w.size(1);
  AT_DISPATCH_FLOATING_TYPES(s.xz.scalar_type(), "mamba_step_conv", [&] {
    using T = scalar_t;
    step_conv_kernel<T>(s.xz.data_ptr<T>(), conv_state.data_ptr<T>(), w.conv_w.data_ptr<T>(), opt_ptr<T>(w.conv_b), B,
                        D, W, s.u.data_ptr<T>(), new_conv.data_ptr<T>());
    neg_exp<T>(w.A_log.data_ptr<T>(), D * N, s.A.data_ptr<T>());
  });
  const auto none = s.u.new_empty({0});
  project(s.xdbl, s.u, w.xproj_w, w.xproj_p, none, false, w.xproj_s);              // (B, R + 2N)
  project(s.dtr, s.xdbl.narrow(1, 0, R), w.dt_w, w.dt_p, none, false, w.dt_s);      // (B, D), before its bias
  AT_DISPATCH_FLOATING_TYPES(s.xz.scalar_type(), "mamba_step_scan", [&] {
    using T = scalar_t;
    step_scan_kernel<T>(s.xz.data_ptr<T>(), s.u.data_ptr<T>(), s.xdbl.data_ptr<T>(), s.xdbl.size(1), R,
                        s.dtr.data_ptr<T>(), w.dt_b.data_ptr<T>(), s.A.data_ptr<T>(), h.data_ptr<T>(),
                        w.Dskip.data_ptr<T>(), B, D, N, new_h.data_ptr<T>(), s.y.data_ptr<T>());
  });
}

// One token of the layer. x (B, d_model); conv_state (B, D, W-1); h (B, D, N). Returns
// (out (B, d_model), new conv_state, new h); the states passed in are not modified.
std::vector<at::Tensor> step(at::Tensor x, at::Tensor conv_state, at::Tensor h, at::Tensor in_w, at::Tensor in_b,
                             at::Tensor conv_w, at::Tensor conv_b, at::Tensor xproj_w, at::Tensor dt_w, at::Tensor dt_b,
                             at::Tensor A_log, at::Tensor Dskip, at::Tensor out_w, at::Tensor out_b) {
  const LayerWeights w{in_w, in_b, conv_w, conv_b, xproj_w, dt_w, dt_b, A_log, Dskip, out_w, out_b};
  const int64_t B = x.size(0), D = conv_w.size(0), W = conv_w.size(1), N = A_log.size(1), R = dt_w.size(1);
  StepScratch s(B, D, N, R, x.options());
  linear_out(s.xz, x, in_w, in_b);
  auto new_conv = at::empty({B, D, W - 1}, x.options());
  auto new_h = at::empty_like(h);
  layer_step(conv_state, h, w, s, new_conv, new_h);
  return {linear(s.y, out_w, out_b), new_conv, new_h};
}

// ---- one token of a whole Mamba language model -----------------------------------------------------
// x = embedding[token]; per layer x += out_proj(mamba(RMSNorm(x))); logits = lm_head(RMSNorm_f(x)):
// the per-token work of generation in one call, with the scratch shared by the layers and out_proj's
// residual add fused into its matmul.

void check_arg(bool ok, const std::string& msg) {
  if (!ok) throw pybind11::value_error("mamba_lm_step: " + msg);
}

// out = x / sqrt(mean(x²) + eps) · weight, per row of x (B, C); the order of RMSNorm's formula.
template <typename T>
void rms_norm_rows(const T* x, const T* weight, T eps, int64_t B, int64_t C, T* out) {
  for (int64_t b = 0; b < B; ++b) {
    const T* xb = x + b * C;
    T* ob = out + b * C;
    T ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t c = 0; c < C; ++c) ss += xb[c] * xb[c];
    const T r = T(1) / std::sqrt(ss / T(C) + eps);
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) ob[c] = xb[c] * r * weight[c];
  }
}

void rms_norm_out(at::Tensor& out, const at::Tensor& x, const at::Tensor& weight, double eps) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mamba_lm_rms_norm", [&] {
    rms_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), scalar_t(eps), x.size(0), x.size(1),
                            out.data_ptr<scalar_t>());
  });
}

// token (B,) integer ids; states: per layer [conv_state (B, D, W-1), h (B, D, N)]; layers: per layer
// [norm_w, in_w, in_b, conv_w (D, W), conv_b, x_proj_w, dt_w, dt_b, A_log, D, out_w, out_b] (empty
// tensors for absent biases). Returns [logits (B, vocab), conv_state_0, h_0, conv_state_1, ...].
std::vector<at::Tensor> lm_step(at::Tensor token, std::vector<std::vector<at::Tensor>> states, at::Tensor embedding,
                                std::vector<std::vector<at::Tensor>> layers, at::Tensor norm_f_w, at::Tensor head_w,
                                double eps, std::vector<at::Tensor> panels, std::vector<at::Tensor> scales) {
  check_arg(token.dim() == 1 && token.size(0) > 0, "token must be a non-empty (batch,) tensor");
  check_arg(states.size() == layers.size(), "state must have one entry per layer");
  check_arg(embedding.dim() == 2 && embedding.is_contiguous(), "embedding must be a contiguous (vocab, d_model) tensor");
  const auto dtype = embedding.scalar_type();
  check_arg(dtype == at::kFloat || dtype == at::kDouble, "the weights must be float32 or float64");
  const int64_t B = token.size(0), V = embedding.size(0), C = embedding.size(1);
  auto same = [&](const at::Tensor& t) { return t.scalar_type() == dtype && t.is_contiguous(); };
  check_arg(same(norm_f_w) && norm_f_w.numel() == C, "norm_f weight must be a contiguous (d_model,) tensor");
  check_arg(same(head_w) && head_w.dim() == 2 && head_w.size(1) == C, "lm_head weight must be (vocab, d_model)");
  check_arg(panels.empty() || panels.size() == 4 * layers.size() + 1,
            "panels must be empty or hold 4 per layer (in_proj, x_proj, dt_proj, out_proj) and the head's");
  check_arg(scales.empty() || scales.size() == panels.size(), "scales must be empty or one per panels entry");
  const auto no_panels = embedding.new_empty({0});
  auto panel = [&](size_t i) { return panels.empty() ? no_panels : panels[i]; };
  auto scale = [&](size_t i) { return scales.empty() ? no_panels : scales[i]; };
  auto ids = token.to(at::kLong).contiguous();
  const int64_t* idp = ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) check_arg(idp[b] >= 0 && idp[b] < V, "token ids must lie in [0, vocab)");

  std::vector<LayerWeights> lw;
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    const std::string at_layer = " (layer " + std::to_string(i) + ")";
    check_arg(l.size() == 12, "each layer needs 12 weights" + at_layer);
    for (const auto& t : l) check_arg(t.numel() == 0 || same(t), "weights must be contiguous and of one dtype" + at_layer);
    check_arg(l[0].numel() == C, "norm weight must be (d_model,)" + at_layer);
    const LayerWeights w{l[1], l[2], l[3], l[4], l[5], l[6], l[7], l[8], l[9], l[10], l[11],
                         panel(4 * i), panel(4 * i + 1), panel(4 * i + 2), panel(4 * i + 3),
                         scale(4 * i), scale(4 * i + 1), scale(4 * i + 2), scale(4 * i + 3)};
    const int64_t D = w.conv_w.size(0), W = w.conv_w.size(1), N = w.A_log.size(1), R = w.dt_w.size(1);
    check_arg(w.in_w.dim() == 2 && w.in_w.size(0) == 2 * D && w.in_w.size(1) == C, "in_proj must be (2 D, d_model)" + at_layer);
    check_arg(w.xproj_w.dim() == 2 && w.xproj_w.size(0) == R + 2 * N && w.xproj_w.size(1) == D,
              "x_proj must be (dt_rank + 2 N, D)" + at_layer);
    check_arg(w.out_w.dim() == 2 && w.out_w.size(0) == C && w.out_w.size(1) == D, "out_proj must be (d_model, D)" + at_layer);
    check_arg(N <= kMaxState, "d_state must be at most " + std::to_string(kMaxState) + at_layer);
    const auto& st = states[i];
    check_arg(st.size() == 2 && same(st[0]) && same(st[1]) && st[0].dim() == 3 && st[1].dim() == 3 &&
                  st[0].size(0) == B && st[0].size(1) == D && st[0].size(2) == W - 1 && st[1].size(0) == B &&
                  st[1].size(1) == D && st[1].size(2) == N,
              "state must be (conv_state (batch, D, W-1), ssm_state (batch, D, N)), contiguous, in the weights' dtype" +
                  at_layer);
    lw.push_back(w);
  }

  const auto opts = embedding.options();
  auto x = embedding.index_select(0, ids);  // (B, d_model), a copy: the residual stream, updated in place
  auto normed = at::empty({B, C}, opts);
  std::vector<at::Tensor> out(1 + 2 * lw.size());
  std::unique_ptr<StepScratch> s;
  for (size_t i = 0; i < lw.size(); ++i) {
    const auto& w = lw[i];
    const int64_t D = w.conv_w.size(0), W = w.conv_w.size(1), N = w.A_log.size(1), R = w.dt_w.size(1);
    if (!s || s->u.size(1) != D || s->A.size(1) != N || s->xdbl.size(1) != R + 2 * N) s.reset(new StepScratch(B, D, N, R, opts));
    rms_norm_out(normed, x, layers[i][0], eps);
    project(s->xz, normed, w.in_w, w.in_p, w.in_b, false, w.in_s);
    out[1 + 2 * i] = at::empty({B, D, W - 1}, opts);
    out[2 + 2 * i] = at::empty({B, D, N}, opts);
    layer_step(states[i][0], states[i][1], w, *s, out[1 + 2 * i], out[2 + 2 * i]);
    project(x, s->y, w.out_w, w.out_p, w.out_b, true, w.out_s);  // x += y out_projᵀ (+ bias)
  }
  rms_norm_out(normed, x, norm_f_w, eps);
  out[0] = at::empty({B, head_w.size(0)}, opts);
  project(out[0], normed, head_w, panel(4 * layers.size()), no_panels, false, scale(4 * layers.size()));
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv_forward", &conv_forward, "causal depthwise conv + SiLU, channels last (CPU)");
  m.def("conv_backward", &conv_backward, "its backward (CPU)");
  m.def("scan_forward", &scan_forward, "selective scan + gate, channels last (CPU)");
  m.def("scan_backward", &scan_backward, "its backward (CPU)");
  m.def("step", &step, "one token of the Mamba layer (CPU)");
  m.def("lm_step", &lm_step, "one token of a Mamba language model: embedding, layers, norm, head (CPU)");
  m.def("pack_panels", &pack_panels, "a float32 matrix (N, K) packed for the decode step's matmuls (CPU)");
  m.def("packed_linear", &packed_linear, "x Wᵀ from W's packed panels (the decode step's kernel; CPU)");
}
