// Mamba's inner block on CPU in the layer's own channels-last layout (Gu & Dao 2023, Fig. 3):
//   u = SiLU(causal depthwise conv(x)),  Δ = softplus(δ + bias),
//   h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t,  y_t = (C_t · h_t + D u_t) · SiLU(z_t)
// with x and z the two halves of in_proj's output xz (batch, length, 2·D_inner), u, δ and y
// (batch, length, D_inner), and B, C read in place from x_proj's output (batch, length, R + 2N).
// Nothing is transposed: the scan vectorises over a block of V channels (one 64-byte register,
// V = 16 floats or 8 doubles) instead of over the state, so every load of u, δ, z, y is contiguous.
// The projections between the conv and the scan are matmuls that the Python side runs (ATen).
//
// The scan's backward works as selective_scan_cpu.cpp's: forward keeps the state at the start of
// each chunk, backward recomputes one chunk at a time and runs the adjoint recurrence
//   dh_{t-1} = exp(Δ_t A) ⊙ (dh_t + dy_t C_t).
// Gradients that channels share (dB, dC over channels; dA, dD, d bias over the batch) are written
// per work unit and summed by the caller.
//
// `step` is one token of the whole layer (in_proj, conv over the cached window, x_proj, dt_proj,
// one recurrence step, gate, out_proj) in one call, for generation.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_math.h"

namespace {

using ssmzoo_cpu::exp_poly;
using ssmzoo_cpu::sigmoid;
using ssmzoo_cpu::softplus;

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

// ---- causal depthwise conv + SiLU --------------------------------------------------------------
// x: the first D columns of rows of stride `xs`; taps wt (W, D) (tap-major, so a channel block is
// contiguous); x̃ = [state, x] with state (B, D, W-1) or zeros.
template <typename T>
inline T conv_input(const T* x, int64_t xs, const T* state, int64_t b, int64_t t, int64_t d, int64_t L, int64_t D,
                    int64_t W) {
  if (t >= 0) return x[(b * L + t) * xs + d];
  return state != nullptr ? state[(b * D + d) * (W - 1) + (W - 1 + t)] : T(0);
}

template <typename T>
void conv_forward_kernel(const T* x, int64_t xs, const T* wt, const T* bias, const T* state, int64_t B, int64_t L,
                         int64_t D, int64_t W, T* u) {
  at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / L, t = bt % L;
      T* out = u + bt * D;
      for (int64_t d = 0; d < D; ++d) out[d] = bias != nullptr ? bias[d] : T(0);
      for (int64_t k = 0; k < W; ++k) {
        const int64_t src = t + k - (W - 1);
        const T* w = wt + k * D;
        if (src >= 0) {
          const T* xr = x + (b * L + src) * xs;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) out[d] += w[d] * xr[d];
        } else {
          for (int64_t d = 0; d < D; ++d) out[d] += w[d] * conv_input(x, xs, state, b, src, d, L, D, W);
        }
      }
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) out[d] = out[d] * sigmoid(out[d]);
    }
  });
}

// g: dL/du (B, L, D). Writes dL/dx into the first D columns of dx (row stride dxs); returns per-row
// partial tap and bias gradients (B·L rows would be too many: one partial per block of rows).
template <typename T>
void conv_backward_kernel(const T* x, int64_t xs, const T* wt, const T* bias, const T* state, const T* g,
                          int64_t B, int64_t L, int64_t D, int64_t W, int64_t rows_per_part, T* dx, int64_t dxs,
                          T* dw_part, T* dbias_part, T* dstate) {
  // dpre = g · SiLU'(pre), recomputed per row; dx_t = Σ_k w_k dpre_{t+W-1-k}.
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
        for (int64_t d = 0; d < D; ++d) pre[d] = bias != nullptr ? bias[d] : T(0);
        for (int64_t k = 0; k < W; ++k) {
          const int64_t src = t + k - (W - 1);
          const T* w = wt + k * D;
          if (src >= 0) {
            const T* xr = x + (b * L + src) * xs;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) pre[d] += w[d] * xr[d];
          } else {
            for (int64_t d = 0; d < D; ++d) pre[d] += w[d] * conv_input(x, xs, state, b, src, d, L, D, W);
          }
        }
        T* dp = dpre + bt * D;
        const T* gr = g + bt * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          dp[d] = gr[d] * silu_grad(pre[d]);
          db[d] += dp[d];
        }
        for (int64_t k = 0; k < W; ++k) {
          const int64_t src = t + k - (W - 1);
          T* dwk = dw + k * D;
          if (src >= 0) {
            const T* xr = x + (b * L + src) * xs;
#pragma omp simd
            for (int64_t d = 0; d < D; ++d) dwk[d] += dp[d] * xr[d];
          } else {
            for (int64_t d = 0; d < D; ++d) dwk[d] += dp[d] * conv_input(x, xs, state, b, src, d, L, D, W);
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
        if (dst >= L) continue;
        const T* w = wt + k * D;
        const T* dp = dpre + (b * L + dst) * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) out[d] += w[d] * dp[d];
      }
    }
  });
  if (dstate != nullptr) {  // x̃ index i < W-1 is state[i]; output t read it through tap k = i - t
    for (int64_t b = 0; b < B; ++b)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t i = 0; i < W - 1; ++i) {
          T acc = 0;
          for (int64_t t = 0; t < std::min(L, i + 1); ++t) acc += wt[(i - t) * D + d] * dpre[(b * L + t) * D + d];
          dstate[(b * D + d) * (W - 1) + i] = acc;
        }
  }
}

// ---- the scan, channels last -------------------------------------------------------------------
struct ScanDims {
  int64_t B, L, D, N, chunk, nchunks, blocks, Dpad;
  int64_t bc_stride, b_col, c_col, z_stride;  // x_dbl row stride and the columns of B and C; xz row stride
};

// Loads lanes [d0, d0 + V) of a row, zero past D (padded lanes then contribute nothing).
template <typename T, int64_t V>
inline void load_lanes(const T* row, int64_t d0, int64_t D, T* out) {
  const int64_t nv = std::min(V, D - d0);
  for (int64_t j = 0; j < V; ++j) out[j] = j < nv ? row[d0 + j] : T(0);
}

template <typename T, int64_t V>
inline void store_lanes(T* row, int64_t d0, int64_t D, const T* in) {
  const int64_t nv = std::min(V, D - d0);
  for (int64_t j = 0; j < nv; ++j) row[d0 + j] = in[j];
}

template <typename T>
void scan_forward_kernel(const T* u, const T* delta, const T* bias, const T* At, const T* xdbl, const T* z,
                         const T* Dskip, const T* h0, const ScanDims& s, T* y, T* hfinal, T* ckpt) {
  constexpr int64_t V = lanes<T>();
  const int64_t N = s.N, D = s.D, L = s.L;
  at::parallel_for(0, s.B * s.blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> hbuf(N * V);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / s.blocks, d0 = (unit % s.blocks) * V, nv = std::min(V, D - d0);
      T* h = hbuf.data();
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < V; ++j) h[n * V + j] = (h0 != nullptr && j < nv) ? h0[((b * D) + d0 + j) * N + n] : T(0);
      alignas(64) T bias_v[V], dskip_v[V], dt[V], du[V], uu[V], acc[V], zz[V];
      load_lanes<T, V>(bias, d0, D, bias_v);
      load_lanes<T, V>(Dskip, d0, D, dskip_v);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t row = b * L + t;
        if (t % s.chunk == 0) {
          T* c = ckpt + ((b * s.nchunks + t / s.chunk) * N) * s.Dpad + d0;
          for (int64_t n = 0; n < N; ++n) std::copy(h + n * V, h + (n + 1) * V, c + n * s.Dpad);
        }
        load_lanes<T, V>(delta + row * D, d0, D, dt);
        load_lanes<T, V>(u + row * D, d0, D, uu);
#pragma omp simd
        for (int64_t j = 0; j < V; ++j) {
          dt[j] = softplus(dt[j] + bias_v[j]);
          du[j] = dt[j] * uu[j];
          acc[j] = T(0);
        }
        const T* Bt = xdbl + row * s.bc_stride + s.b_col;
        const T* Ct = xdbl + row * s.bc_stride + s.c_col;
        for (int64_t n = 0; n < N; ++n) {
          const T bn = Bt[n], cn = Ct[n];
          const T* an = At + n * s.Dpad + d0;
          T* hn = h + n * V;
#pragma omp simd
          for (int64_t j = 0; j < V; ++j) {
            hn[j] = exp_poly(dt[j] * an[j]) * hn[j] + du[j] * bn;
            acc[j] += cn * hn[j];
          }
        }
        load_lanes<T, V>(z + row * s.z_stride, d0, D, zz);
#pragma omp simd
        for (int64_t j = 0; j < V; ++j) acc[j] = (acc[j] + dskip_v[j] * uu[j]) * (zz[j] * sigmoid(zz[j]));
        store_lanes<T, V>(y + row * D, d0, D, acc);
      }
      for (int64_t j = 0; j < nv; ++j)
        for (int64_t n = 0; n < N; ++n) hfinal[(b * D + d0 + j) * N + n] = h[n * V + j];
    }
  });
}

template <typename T>
void scan_backward_kernel(const T* u, const T* delta, const T* bias, const T* At, const T* xdbl, const T* z,
                          const T* Dskip, const T* ckpt, const T* dy, const T* dh_final, const ScanDims& s, T* du,
                          T* ddelta, T* dz, T* dA_part, T* dD_part, T* dbias_part, T* dB_part, T* dC_part, T* dh0) {
  constexpr int64_t V = lanes<T>();
  const int64_t N = s.N, D = s.D, L = s.L, K = s.chunk;
  at::parallel_for(0, s.B * s.blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> hbuf(K * N * V), abuf(K * N * V), dtbuf(K * V), dh(N * V), dA(N * V), hstart(N * V);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t b = unit / s.blocks, blk = unit % s.blocks, d0 = blk * V, nv = std::min(V, D - d0);
      alignas(64) T bias_v[V], dskip_v[V], uu[V], gy[V], zz[V], g[V], ddt[V], du_acc[V], dD_acc[V], dbias_acc[V];
      load_lanes<T, V>(bias, d0, D, bias_v);
      load_lanes<T, V>(Dskip, d0, D, dskip_v);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < V; ++j) {
          dh[n * V + j] = j < nv ? dh_final[(b * D + d0 + j) * N + n] : T(0);
          dA[n * V + j] = T(0);
        }
      std::fill(dD_acc, dD_acc + V, T(0));
      std::fill(dbias_acc, dbias_acc + V, T(0));
      T* dBp = dB_part + (blk * s.B + b) * L * N;
      T* dCp = dC_part + (blk * s.B + b) * L * N;
      for (int64_t c = s.nchunks - 1; c >= 0; --c) {
        const int64_t t0 = c * K, t1 = std::min(L, t0 + K);
        const T* ck = ckpt + ((b * s.nchunks + c) * N) * s.Dpad + d0;
        for (int64_t n = 0; n < N; ++n) std::copy(ck + n * s.Dpad, ck + n * s.Dpad + V, hstart.data() + n * V);
        // Recompute this chunk's steps, decays and states.
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t row = b * L + t;
          T* dt = dtbuf.data() + (t - t0) * V;
          load_lanes<T, V>(delta + row * D, d0, D, dt);
          load_lanes<T, V>(u + row * D, d0, D, uu);
          alignas(64) T dtu[V];
#pragma omp simd
          for (int64_t j = 0; j < V; ++j) {
            dt[j] = softplus(dt[j] + bias_v[j]);
            dtu[j] = dt[j] * uu[j];
          }
          const T* Bt = xdbl + row * s.bc_stride + s.b_col;
          const T* hp = t > t0 ? hbuf.data() + (t - 1 - t0) * N * V : hstart.data();
          T* hc = hbuf.data() + (t - t0) * N * V;
          T* ac = abuf.data() + (t - t0) * N * V;
          for (int64_t n = 0; n < N; ++n) {
            const T bn = Bt[n];
            const T* an = At + n * s.Dpad + d0;
#pragma omp simd
            for (int64_t j = 0; j < V; ++j) {
              ac[n * V + j] = exp_poly(dt[j] * an[j]);
              hc[n * V + j] = ac[n * V + j] * hp[n * V + j] + dtu[j] * bn;
            }
          }
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t row = b * L + t;
          const T* dt = dtbuf.data() + (t - t0) * V;
          const T* hc = hbuf.data() + (t - t0) * N * V;
          const T* ac = abuf.data() + (t - t0) * N * V;
          const T* hp = t > t0 ? hbuf.data() + (t - 1 - t0) * N * V : hstart.data();
          const T* Bt = xdbl + row * s.bc_stride + s.b_col;
          const T* Ct = xdbl + row * s.bc_stride + s.c_col;
          load_lanes<T, V>(u + row * D, d0, D, uu);
          load_lanes<T, V>(dy + row * D, d0, D, gy);
          load_lanes<T, V>(z + row * s.z_stride, d0, D, zz);
          // The gate: out = y · SiLU(z); y_t = C_t · h_t + D u_t is recomputed.
          alignas(64) T yt[V], dzv[V];
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
            dzv[j] = gy[j] * yt[j] * sz * (T(1) + zz[j] * (T(1) - sz));
            gy[j] *= zz[j] * sz;
            dD_acc[j] += gy[j] * uu[j];
            du_acc[j] = gy[j] * dskip_v[j];
            ddt[j] = T(0);
          }
          store_lanes<T, V>(dz + row * s.z_stride, d0, D, dzv);
          T* dBt = dBp + t * N;
          T* dCt = dCp + t * N;
          for (int64_t n = 0; n < N; ++n) {
            const T bn = Bt[n], cn = Ct[n];
            const T* an = At + n * s.Dpad + d0;
            T sB = 0, sC = 0;
#pragma omp simd reduction(+ : sB, sC)
            for (int64_t j = 0; j < V; ++j) {
              const T h = hc[n * V + j], a = ac[n * V + j], ahp = a * hp[n * V + j];
              const T gj = dh[n * V + j] + gy[j] * cn;  // the total adjoint of h_t
              sC += gy[j] * h;
              sB += gj * dt[j] * uu[j];
              ddt[j] += gj * (bn * uu[j] + an[j] * ahp);
              du_acc[j] += gj * dt[j] * bn;
              dA[n * V + j] += gj * dt[j] * ahp;
              dh[n * V + j] = a * gj;
            }
            dBt[n] = sB;
            dCt[n] = sC;
          }
          alignas(64) T slope[V];
          load_lanes<T, V>(delta + row * D, d0, D, slope);
#pragma omp simd
          for (int64_t j = 0; j < V; ++j) {
            ddt[j] *= sigmoid(slope[j] + bias_v[j]);  // softplus' = sigmoid
            dbias_acc[j] += ddt[j];
          }
          store_lanes<T, V>(du + row * D, d0, D, du_acc);
          store_lanes<T, V>(ddelta + row * D, d0, D, ddt);
        }
      }
      for (int64_t j = 0; j < nv; ++j) {
        const int64_t bd = b * D + d0 + j;
        for (int64_t n = 0; n < N; ++n) {
          dh0[bd * N + n] = dh[n * V + j];
          dA_part[bd * N + n] = dA[n * V + j];
        }
        dD_part[bd] = dD_acc[j];
        dbias_part[bd] = dbias_acc[j];
      }
    }
  });
}

ScanDims make_dims(const at::Tensor& u, const at::Tensor& A, const at::Tensor& xdbl, int64_t b_col,
                   const at::Tensor& xz, int64_t chunk, int64_t V) {
  ScanDims s;
  s.B = u.size(0);
  s.L = u.size(1);
  s.D = u.size(2);
  s.N = A.size(1);
  s.chunk = chunk;
  s.nchunks = (s.L + chunk - 1) / chunk;
  s.blocks = (s.D + V - 1) / V;
  s.Dpad = s.blocks * V;
  s.bc_stride = xdbl.size(2);
  s.b_col = b_col;
  s.c_col = b_col + s.N;
  s.z_stride = xz.size(2);
  TORCH_CHECK(s.N <= kMaxState, "mamba cpp: d_state must be at most ", kMaxState);
  TORCH_CHECK(chunk >= 1, "mamba cpp: chunk must be positive");
  TORCH_CHECK(xz.size(2) == 2 * s.D && s.c_col + s.N <= s.bc_stride, "mamba cpp: bad xz or x_dbl width");
  return s;
}

// A (D, N) as (N, Dpad), zero-padded: a channel block's decays for one n are contiguous.
at::Tensor padded_transpose(const at::Tensor& A, int64_t Dpad) {
  auto At = at::zeros({A.size(1), Dpad}, A.options());
  At.narrow(1, 0, A.size(0)).copy_(A.t());
  return At;
}

// ---- bindings ------------------------------------------------------------------------------------
at::Tensor conv_forward(at::Tensor xz, at::Tensor w, at::Tensor bias, at::Tensor state) {
  const int64_t B = xz.size(0), L = xz.size(1), D = w.size(0), W = w.size(1);
  auto u = at::empty({B, L, D}, xz.options());
  auto wt = w.t().contiguous();
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "mamba_conv_forward", [&] {
    conv_forward_kernel<scalar_t>(xz.data_ptr<scalar_t>(), xz.size(2), wt.data_ptr<scalar_t>(), opt_ptr<scalar_t>(bias),
                                  opt_ptr<scalar_t>(state), B, L, D, W, u.data_ptr<scalar_t>());
  });
  return u;
}

// Writes dL/dx into dxz[..., :D]; returns dw (D, W), d bias (D,), d state (B, D, W-1) (empty without a state).
std::vector<at::Tensor> conv_backward(at::Tensor xz, at::Tensor w, at::Tensor bias, at::Tensor state, at::Tensor g,
                                      at::Tensor dxz) {
  const int64_t B = xz.size(0), L = xz.size(1), D = w.size(0), W = w.size(1);
  const int64_t rows_per_part = std::max<int64_t>(64, (B * L + 4 * at::get_num_threads() - 1) / (4 * at::get_num_threads()));
  const int64_t parts = (B * L + rows_per_part - 1) / rows_per_part;
  auto wt = w.t().contiguous();
  auto dw_part = at::empty({parts, W, D}, xz.options());
  auto dbias_part = at::empty({parts, D}, xz.options());
  auto dstate = state.numel() > 0 ? at::empty_like(state) : at::empty({0}, xz.options());
  AT_DISPATCH_FLOATING_TYPES(xz.scalar_type(), "mamba_conv_backward", [&] {
    conv_backward_kernel<scalar_t>(xz.data_ptr<scalar_t>(), xz.size(2), wt.data_ptr<scalar_t>(), opt_ptr<scalar_t>(bias),
                                   opt_ptr<scalar_t>(state), g.data_ptr<scalar_t>(), B, L, D, W, rows_per_part,
                                   dxz.data_ptr<scalar_t>(), dxz.size(2), dw_part.data_ptr<scalar_t>(),
                                   dbias_part.data_ptr<scalar_t>(), state.numel() > 0 ? dstate.data_ptr<scalar_t>() : nullptr);
  });
  return {dw_part.sum(0).t().contiguous(), dbias_part.sum(0), dstate};
}

// Returns y (B, L, D), final state (B, D, N), checkpoints (B, nchunks, N, Dpad).
std::vector<at::Tensor> scan_forward(at::Tensor u, at::Tensor delta, at::Tensor bias, at::Tensor A, at::Tensor xdbl,
                                     int64_t b_col, at::Tensor xz, at::Tensor Dskip, at::Tensor h0, int64_t chunk) {
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mamba_scan_forward", [&] {
    const ScanDims s = make_dims(u, A, xdbl, b_col, xz, chunk, lanes<scalar_t>());
    auto At = padded_transpose(A, s.Dpad);
    auto y = at::empty_like(u);
    auto hfinal = at::empty({s.B, s.D, s.N}, u.options());
    auto ckpt = at::empty({s.B, s.nchunks, s.N, s.Dpad}, u.options());
    scan_forward_kernel<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(),
                                  At.data_ptr<scalar_t>(), xdbl.data_ptr<scalar_t>(), xz.data_ptr<scalar_t>() + s.D,
                                  Dskip.data_ptr<scalar_t>(), opt_ptr<scalar_t>(h0), s, y.data_ptr<scalar_t>(),
                                  hfinal.data_ptr<scalar_t>(), ckpt.data_ptr<scalar_t>());
    out = {y, hfinal, ckpt};
  });
  return out;
}

// Writes dL/dz into dxz[..., D:]; returns du, d delta (before bias and softplus), dA (D, N), dD (D,),
// d bias (D,), dB (B, L, N), dC (B, L, N), d h0 (B, D, N).
std::vector<at::Tensor> scan_backward(at::Tensor u, at::Tensor delta, at::Tensor bias, at::Tensor A, at::Tensor xdbl,
                                      int64_t b_col, at::Tensor xz, at::Tensor Dskip, at::Tensor ckpt, at::Tensor dy,
                                      at::Tensor dh_final, int64_t chunk, at::Tensor dxz) {
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "mamba_scan_backward", [&] {
    const ScanDims s = make_dims(u, A, xdbl, b_col, xz, chunk, lanes<scalar_t>());
    auto At = padded_transpose(A, s.Dpad);
    auto du = at::empty_like(u);
    auto ddelta = at::empty_like(u);
    auto dA_part = at::empty({s.B, s.D, s.N}, u.options());
    auto dD_part = at::empty({s.B, s.D}, u.options());
    auto dbias_part = at::empty({s.B, s.D}, u.options());
    auto dB_part = at::empty({s.blocks, s.B, s.L, s.N}, u.options());
    auto dC_part = at::empty({s.blocks, s.B, s.L, s.N}, u.options());
    auto dh0 = at::empty({s.B, s.D, s.N}, u.options());
    scan_backward_kernel<scalar_t>(
        u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), At.data_ptr<scalar_t>(),
        xdbl.data_ptr<scalar_t>(), xz.data_ptr<scalar_t>() + s.D, Dskip.data_ptr<scalar_t>(), ckpt.data_ptr<scalar_t>(),
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

// One token of the layer. x (B, d_model); conv_state (B, D, W-1); h (B, D, N). Returns
// (out (B, d_model), new conv_state, new h); the states passed in are not modified. The formulas
// are those of the layer's PyTorch step, with the standard library's exp/log1p (softplus with
// torch's threshold of 20), so the two agree to rounding.
std::vector<at::Tensor> step(at::Tensor x, at::Tensor conv_state, at::Tensor h, at::Tensor in_w, at::Tensor in_b,
                             at::Tensor conv_w, at::Tensor conv_b, at::Tensor xproj_w, at::Tensor dt_w, at::Tensor dt_b,
                             at::Tensor A_log, at::Tensor Dskip, at::Tensor out_w, at::Tensor out_b) {
  const int64_t B = x.size(0), D = conv_w.size(0), W = conv_w.size(1), N = A_log.size(1), R = dt_w.size(1);
  auto xz = linear(x, in_w, in_b);  // (B, 2D)
  auto u = at::empty({B, D}, x.options());
  auto new_conv = at::empty({B, D, W - 1}, x.options());
  auto new_h = at::empty_like(h);
  auto y = at::empty({B, D}, x.options());
  auto A = at::exp(A_log).neg_();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mamba_step", [&] {
    using T = scalar_t;
    const T *xzp = xz.data_ptr<T>(), *cs = conv_state.data_ptr<T>(), *cw = conv_w.data_ptr<T>();
    const T* cb = opt_ptr<T>(conv_b);
    T *up = u.data_ptr<T>(), *nc = new_conv.data_ptr<T>();
    at::parallel_for(0, B * D, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t bd = begin; bd < end; ++bd) {
        const int64_t b = bd / D, d = bd % D;
        const T* win = cs + bd * (W - 1);
        const T xt = xzp[b * 2 * D + d];
        T acc = 0;
        for (int64_t k = 0; k < W - 1; ++k) acc += win[k] * cw[d * W + k];
        acc += xt * cw[d * W + W - 1];
        if (cb != nullptr) acc += cb[d];
        up[bd] = acc / (T(1) + std::exp(-acc));
        for (int64_t k = 0; k + 1 < W - 1; ++k) nc[bd * (W - 1) + k] = win[k + 1];
        if (W > 1) nc[bd * (W - 1) + W - 2] = xt;
      }
    });
  });
  auto xdbl = at::mm(u, xproj_w.t());  // (B, R + 2N)
  auto dtr = at::mm(xdbl.narrow(1, 0, R), dt_w.t());  // (B, D), before its bias
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mamba_step_scan", [&] {
    using T = scalar_t;
    const T *xzp = xz.data_ptr<T>(), *xd = xdbl.data_ptr<T>(), *dp = dtr.data_ptr<T>(), *db = dt_b.data_ptr<T>();
    const T *Ap = A.data_ptr<T>(), *hp = h.data_ptr<T>(), *Dp = Dskip.data_ptr<T>(), *up = u.data_ptr<T>();
    T *nh = new_h.data_ptr<T>(), *yp = y.data_ptr<T>();
    const int64_t xs = xdbl.size(1);
    at::parallel_for(0, B * D, 256, [&](int64_t begin, int64_t end) {
      for (int64_t bd = begin; bd < end; ++bd) {
        const int64_t b = bd / D, d = bd % D;
        const T raw = dp[bd] + db[d];
        const T delta = raw > T(20) ? raw : std::log1p(std::exp(raw));
        const T du = delta * up[bd];
        const T* Bt = xd + b * xs + R;
        const T* Ct = Bt + N;
        T acc = 0;
        for (int64_t n = 0; n < N; ++n) {
          const T hn = std::exp(delta * Ap[d * N + n]) * hp[bd * N + n] + du * Bt[n];
          nh[bd * N + n] = hn;
          acc += hn * Ct[n];
        }
        const T zt = xzp[b * 2 * D + D + d];
        yp[bd] = (acc + Dp[d] * up[bd]) * (zt / (T(1) + std::exp(-zt)));
      }
    });
  });
  return {linear(y, out_w, out_b), new_conv, new_h};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv_forward", &conv_forward, "causal depthwise conv + SiLU, channels last (CPU)");
  m.def("conv_backward", &conv_backward, "its backward (CPU)");
  m.def("scan_forward", &scan_forward, "selective scan + gate, channels last (CPU)");
  m.def("scan_backward", &scan_backward, "its backward (CPU)");
  m.def("step", &step, "one token of the Mamba layer (CPU)");
}
