// One token of a whole Mamba-2 language model in one call (ops/mamba2_lm_step): the decode loop of generation.
//
//   x = embedding[token]
//   per block:  z, xBC, dt = in_proj(RMSNorm(x))                       [z, x, B, C, dt] as mamba-ssm's Mamba2
//               xBC = SiLU(conv over the cached window);  x, B, C = split(xBC)
//               Δ = clamp(softplus(dt + dt_bias), dt_limit);  S ← exp(Δ A_h) S + Δ x Bᵀ;  y = S C + D x
//               y = gated RMSNorm(y, z) (per group; or y · SiLU(z) without the norm);  x += out_proj(y)
//   logits = head(RMSNorm_f(x))
//
// The formulas are ops/mamba2_lm_step/reference.py's; the state is read and written once per token (as
// ssd_step_cpu.cpp) and the matrices multiply from packed panels (cpu_gemm.h: float32, bfloat16, or int8 with
// per-row scales), so a token reads each weight once. float64 runs the same loops with ATen's matmuls (tests).
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "cpu_gemm.h"

namespace {

void check_arg(bool ok, const std::string& msg) {
  if (!ok) throw pybind11::value_error("mamba2_lm_step: " + msg);
}

// One matrix as the step multiplies it: w (N, K) in the activations' dtype (ATen's operand; only its sizes are
// read when panels are given), panels (pack) or empty, scales (N padded to the panels) for int8 panels or empty.
struct Matrix {
  at::Tensor w, panels, scales;
  int64_t rows() const { return w.size(0); }
  int64_t cols() const { return w.size(1); }
};

// out (=|+=) x Wᵀ (+ b); x's rows may be strided (a column range of a wider matrix), out contiguous.
void project(at::Tensor& out, const at::Tensor& x, const Matrix& m, const at::Tensor& b, bool accumulate) {
#if defined(SSMZOO_SIMD_F)
  if (m.panels.numel() > 0) {
    check_arg(x.scalar_type() == at::kFloat && x.stride(1) == 1, "packed weights need float32 activations");
    const float* scales = m.scales.numel() > 0 ? m.scales.data_ptr<float>() : nullptr;
    const float* xp = x.data_ptr<float>();
    float* yp = out.data_ptr<float>();
    const int64_t M = x.size(0), K = m.cols(), N = m.rows();
    switch (m.panels.scalar_type()) {
      case at::kFloat:
        ssmzoo_cpu::packed_gemm<float>(xp, x.stride(0), M, K, m.panels.data_ptr<float>(), scales, N, yp, accumulate);
        break;
      case at::kBFloat16:
        ssmzoo_cpu::packed_gemm<uint16_t>(xp, x.stride(0), M, K,
                                          reinterpret_cast<const uint16_t*>(m.panels.data_ptr<at::BFloat16>()), scales,
                                          N, yp, accumulate);
        break;
      case at::kChar:
        check_arg(scales != nullptr, "int8 panels need their scales");
        ssmzoo_cpu::packed_gemm<int8_t>(xp, x.stride(0), M, K, m.panels.data_ptr<int8_t>(), scales, N, yp, accumulate);
        break;
      default:
        check_arg(false, "panels must be float32, bfloat16 or int8");
    }
    if (b.numel() > 0) out.add_(b);
    return;
  }
#endif
  check_arg(m.w.scalar_type() == x.scalar_type() && m.w.stride(1) == 1 && m.w.stride(0) == m.cols(),
            "a matrix without panels must be a contiguous tensor in the activations' dtype");
  if (accumulate) {
    out.addmm_(x, m.w.t());
    if (b.numel() > 0) out.add_(b);
  } else if (b.numel() > 0) {
    at::addmm_out(out, b, x, m.w.t());
  } else {
    at::mm_out(out, x, m.w.t());
  }
}

template <typename T>
inline T silu(T v) {
  return v / (T(1) + std::exp(-v));
}

template <typename T>
inline T softplus(T v) {  // F.softplus's threshold: the identity above 20
  return v > T(20) ? v : std::log1p(std::exp(v));
}

// out = x / sqrt(mean(x²) + eps) · weight over each group of `group` channels of each row of x (B, C).
template <typename T>
void rms_norm_rows(const T* x, int64_t xs, const T* weight, T eps, int64_t B, int64_t C, int64_t group, T* out) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g0 = 0; g0 < C; g0 += group) {
      const T* xb = x + b * xs + g0;
      T* ob = out + b * C + g0;
      T ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t c = 0; c < group; ++c) ss += xb[c] * xb[c];
      const T r = T(1) / std::sqrt(ss / T(group) + eps);
#pragma omp simd
      for (int64_t c = 0; c < group; ++c) ob[c] = xb[c] * r * weight[g0 + c];
    }
}

// One block's weights (optional biases empty) and settings.
struct Layer {
  at::Tensor norm_w;
  Matrix in;
  at::Tensor in_b, conv_w, conv_b, dt_bias, A_log, Dskip, gnorm_w;
  Matrix out;
  at::Tensor out_b;
  int64_t ngroups, norm_group;  // norm_group 0: no gated norm, y · SiLU(z)
  bool norm_before_gate;
  double norm_eps, dt_lo, dt_hi;
};

// The block's mixer from zxbcdt = in_proj(RMSNorm(x)) (B, d_in_proj): the gated, normed y (B, D_inner) into
// `y`, the next states into new_conv (B, conv_dim, W-1) and new_S (B, H, P, N). The states passed in are kept.
template <typename T>
void mixer_step(const Layer& l, const T* zxbcdt, int64_t B, const T* conv, const T* S, T* xbc, T* y, T* gated,
                T* new_conv, T* new_S) {
  const int64_t conv_dim = l.conv_w.size(0), W = l.conv_w.size(1), H = l.A_log.size(0);
  const int64_t Din = l.out.cols(), P = Din / H, G = l.ngroups, N = (conv_dim - Din) / (2 * G);
  const int64_t d_proj = l.in.rows();
  const T* cw = l.conv_w.data_ptr<T>();
  const T* cb = l.conv_b.numel() ? l.conv_b.data_ptr<T>() : nullptr;
  // the convolution over [cached window, this token's xBC], then SiLU; the window shifts by one
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < conv_dim; ++c) {
      const T* win = conv + (b * conv_dim + c) * (W - 1);
      T* nwin = new_conv + (b * conv_dim + c) * (W - 1);
      const T cur = zxbcdt[b * d_proj + Din + c];
      T acc = cb ? cb[c] : T(0);
      for (int64_t k = 0; k < W - 1; ++k) acc += cw[c * W + k] * win[k];
      acc += cw[c * W + W - 1] * cur;
      for (int64_t k = 0; k + 1 < W - 1; ++k) nwin[k] = win[k + 1];
      if (W > 1) nwin[W - 2] = cur;
      xbc[b * conv_dim + c] = silu(acc);
    }
  const T* dt_bias = l.dt_bias.numel() ? l.dt_bias.data_ptr<T>() : nullptr;
  const T* A_log = l.A_log.data_ptr<T>();
  const T* D = l.Dskip.numel() ? l.Dskip.data_ptr<T>() : nullptr;
  const bool d_per_channel = l.Dskip.numel() == Din;
  const T lo = T(l.dt_lo), hi = T(l.dt_hi);
  at::parallel_for(0, B * H, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(P * N, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H, g = h / (H / G);
      T dt = zxbcdt[b * d_proj + Din + conv_dim + h] + (dt_bias ? dt_bias[h] : T(0));
      const T delta = std::min(std::max(softplus(dt), lo), hi);
      const T decay = std::exp(delta * -std::exp(A_log[h]));
      const T* xr = xbc + b * conv_dim;
      const T* Bg = xr + Din + g * N;
      const T* Cg = xr + Din + G * N + g * N;
      for (int64_t i = 0; i < P; ++i) {
        const T xi = xr[h * P + i], dx = delta * xi;
        const T* s = S + (bh * P + i) * N;
        T* so = new_S + (bh * P + i) * N;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < N; ++k) {
          const T v = s[k] * decay + dx * Bg[k];
          so[k] = v;
          acc += v * Cg[k];
        }
        const T d = D ? (d_per_channel ? D[h * P + i] : D[h]) : T(0);
        y[b * Din + h * P + i] = acc + d * xi;
      }
    }
  });
  // the gate and the norm: RMSNorm(y · SiLU(z)), RMSNorm(y) · SiLU(z), or y · SiLU(z)
  for (int64_t b = 0; b < B; ++b) {
    const T* z = zxbcdt + b * d_proj;
    T* yb = y + b * Din;
    if (l.norm_group == 0 || !l.norm_before_gate)
      for (int64_t c = 0; c < Din; ++c) yb[c] *= silu(z[c]);
  }
  if (l.norm_group == 0) {
    std::copy(y, y + B * Din, gated);
    return;
  }
  rms_norm_rows<T>(y, Din, l.gnorm_w.data_ptr<T>(), T(l.norm_eps), B, Din, l.norm_group, gated);
  if (l.norm_before_gate)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < Din; ++c) gated[b * Din + c] *= silu(zxbcdt[b * d_proj + c]);
}

Matrix matrix(const at::Tensor& w, const at::Tensor& panels, const at::Tensor& scales, const std::string& what) {
  check_arg(w.dim() == 2, what + " must be a 2-D matrix");
  if (panels.numel() > 0) {
#if defined(SSMZOO_SIMD_F)
    check_arg(panels.is_contiguous() && panels.dim() == 3 && panels.size(0) == ssmzoo_cpu::panel_count(w.size(0)) &&
                  panels.size(1) == w.size(1) && panels.size(2) == ssmzoo_cpu::kPanelWidth,
              what + "'s packed panels do not match it; pack them again");
    check_arg(panels.scalar_type() != at::kChar ||
                  (scales.scalar_type() == at::kFloat && scales.numel() == panels.size(0) * ssmzoo_cpu::kPanelWidth),
              what + "'s int8 panels need float32 scales, one per row padded to the panels");
#else
    check_arg(false, "this build has no packed kernels; pass no panels");
#endif
  }
  return Matrix{w, panels, scales};
}

// token (B,) ids; states per layer [conv_state (B, conv_dim, W-1), S (B, H, P, N)]; layers per layer
// [norm_w, in_w, in_panels, in_scales, in_b, conv_w (conv_dim, W), conv_b, dt_bias, A_log, D, gnorm_w, out_w,
// out_panels, out_scales, out_b] with settings [ngroups, norm_group (0: none), norm_before_gate, norm_eps, dt_lo,
// dt_hi]; head [w, panels, scales]. Returns [logits (B, vocab), conv_state_0, S_0, conv_state_1, ...].
std::vector<at::Tensor> lm_step(at::Tensor token, std::vector<std::vector<at::Tensor>> states, at::Tensor embedding,
                                std::vector<std::vector<at::Tensor>> layers, std::vector<std::vector<double>> settings,
                                at::Tensor norm_f_w, std::vector<at::Tensor> head, double eps) {
  check_arg(token.dim() == 1 && token.size(0) > 0, "token must be a non-empty (batch,) tensor");
  check_arg(states.size() == layers.size() && settings.size() == layers.size(),
            "state and settings must have one entry per layer");
  check_arg(embedding.dim() == 2 && embedding.is_contiguous(), "embedding must be a contiguous (vocab, d_model) tensor");
  const auto dtype = embedding.scalar_type();
  check_arg(dtype == at::kFloat || dtype == at::kDouble, "the activations must be float32 or float64");
  const int64_t B = token.size(0), V = embedding.size(0), C = embedding.size(1);
  auto same = [&](const at::Tensor& t) { return t.scalar_type() == dtype && t.is_contiguous(); };
  check_arg(same(norm_f_w) && norm_f_w.numel() == C, "norm_f weight must be a contiguous (d_model,) tensor");
  check_arg(head.size() == 3, "head must be [weight, panels, scales]");
  const Matrix head_m = matrix(head[0], head[1], head[2], "the head");
  check_arg(head_m.cols() == C, "the head must be (vocab, d_model)");
  auto ids = token.to(at::kLong).contiguous();
  const int64_t* idp = ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) check_arg(idp[b] >= 0 && idp[b] < V, "token ids must lie in [0, vocab)");

  std::vector<Layer> ls;
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& t = layers[i];
    const auto& s = settings[i];
    const std::string at_layer = " (layer " + std::to_string(i) + ")";
    check_arg(t.size() == 15 && s.size() == 6, "each layer needs 15 tensors and 6 settings" + at_layer);
    for (int j : {0, 4, 5, 6, 7, 8, 9, 10, 14})
      check_arg(t[j].numel() == 0 || same(t[j]), "weights must be contiguous and in the activations' dtype" + at_layer);
    Layer l{t[0], matrix(t[1], t[2], t[3], "in_proj" + at_layer), t[4], t[5], t[6], t[7], t[8], t[9], t[10],
            matrix(t[11], t[12], t[13], "out_proj" + at_layer), t[14], int64_t(s[0]), int64_t(s[1]), s[2] != 0.0,
            s[3], s[4], s[5]};
    const int64_t conv_dim = l.conv_w.size(0), W = l.conv_w.size(1), H = l.A_log.size(0), Din = l.out.cols();
    check_arg(l.norm_w.numel() == C && l.in.cols() == C && l.out.rows() == C, "in/out_proj must map d_model" + at_layer);
    check_arg(l.conv_w.dim() == 2 && W >= 1 && H >= 1 && Din % H == 0 && l.ngroups >= 1 && H % l.ngroups == 0 &&
                  conv_dim > Din && (conv_dim - Din) % (2 * l.ngroups) == 0 && l.in.rows() == Din + conv_dim + H,
              "inconsistent shapes (conv_dim, heads, groups, in_proj)" + at_layer);
    check_arg(l.Dskip.numel() == 0 || l.Dskip.numel() == H || l.Dskip.numel() == Din, "D must be (H,) or (D_inner,)" + at_layer);
    check_arg(l.dt_bias.numel() == 0 || l.dt_bias.numel() == H, "dt_bias must be (H,)" + at_layer);
    check_arg(l.norm_group == 0 || (Din % l.norm_group == 0 && l.gnorm_w.numel() == Din),
              "the gated norm must be (D_inner,) in groups dividing it" + at_layer);
    const int64_t P = Din / H, N = (conv_dim - Din) / (2 * l.ngroups);
    const auto& st = states[i];
    const auto sdt = dtype;  // the SSD's state is float32 for float32, float64 for float64
    check_arg(st.size() == 2 && same(st[0]) && st[1].scalar_type() == sdt && st[1].is_contiguous() &&
                  st[0].dim() == 3 && st[0].size(0) == B && st[0].size(1) == conv_dim && st[0].size(2) == W - 1 &&
                  st[1].dim() == 4 && st[1].size(0) == B && st[1].size(1) == H && st[1].size(2) == P && st[1].size(3) == N,
              "state must be (conv_state (batch, conv_dim, W-1), ssm_state (batch, H, P, N)), contiguous" + at_layer);
    ls.push_back(l);
  }

  const auto opts = embedding.options();
  auto x = embedding.index_select(0, ids);  // (B, d_model): the residual stream, updated in place
  auto normed = at::empty({B, C}, opts);
  std::vector<at::Tensor> out(1 + 2 * ls.size());
  at::Tensor zxbcdt, xbc, y, gated;
  for (size_t i = 0; i < ls.size(); ++i) {
    const auto& l = ls[i];
    const int64_t conv_dim = l.conv_w.size(0), Din = l.out.cols();
    if (!zxbcdt.defined() || zxbcdt.size(1) != l.in.rows() || y.size(1) != Din) {
      zxbcdt = at::empty({B, l.in.rows()}, opts);
      xbc = at::empty({B, conv_dim}, opts);
      y = at::empty({B, Din}, opts);
      gated = at::empty({B, Din}, opts);
    }
    out[1 + 2 * i] = at::empty_like(states[i][0]);
    out[2 + 2 * i] = at::empty_like(states[i][1]);
    AT_DISPATCH_FLOATING_TYPES(dtype, "mamba2_lm_step", [&] {
      using T = scalar_t;
      rms_norm_rows<T>(x.data_ptr<T>(), C, l.norm_w.data_ptr<T>(), T(eps), B, C, C, normed.data_ptr<T>());
    });
    project(zxbcdt, normed, l.in, l.in_b, false);
    AT_DISPATCH_FLOATING_TYPES(dtype, "mamba2_lm_step", [&] {
      using T = scalar_t;
      mixer_step<T>(l, zxbcdt.data_ptr<T>(), B, states[i][0].data_ptr<T>(), states[i][1].data_ptr<T>(),
                    xbc.data_ptr<T>(), y.data_ptr<T>(), gated.data_ptr<T>(), out[1 + 2 * i].data_ptr<T>(),
                    out[2 + 2 * i].data_ptr<T>());
    });
    project(x, gated, l.out, l.out_b, true);  // x += out_proj(y) (+ bias)
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "mamba2_lm_step", [&] {
    using T = scalar_t;
    rms_norm_rows<T>(x.data_ptr<T>(), C, norm_f_w.data_ptr<T>(), T(eps), B, C, C, normed.data_ptr<T>());
  });
  out[0] = at::empty({B, head_m.rows()}, opts);
  project(out[0], normed, head_m, embedding.new_empty({0}), false);
  return out;
}

// W (N, K) -> its panels for this build's packed kernels (float32, bfloat16 or int8 W; the panels keep W's
// dtype), or an empty tensor where the build has none.
at::Tensor pack(at::Tensor w) {
  check_arg(w.dim() == 2 && (w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16 ||
                             w.scalar_type() == at::kChar),
            "pack: w must be a 2-D float32, bfloat16 or int8 tensor");
#if defined(SSMZOO_SIMD_F)
  w = w.contiguous();
  auto out = at::empty({ssmzoo_cpu::panel_count(w.size(0)), w.size(1), ssmzoo_cpu::kPanelWidth}, w.options());
  const int64_t N = w.size(0), K = w.size(1);
  if (w.scalar_type() == at::kFloat)
    ssmzoo_cpu::pack_panels<float>(w.data_ptr<float>(), N, K, out.data_ptr<float>());
  else if (w.scalar_type() == at::kChar)
    ssmzoo_cpu::pack_panels<int8_t>(w.data_ptr<int8_t>(), N, K, out.data_ptr<int8_t>());
  else
    ssmzoo_cpu::pack_panels<uint16_t>(reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), N, K,
                                      reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>()));
  return out;
#else
  return w.new_empty({0});
#endif
}

// A matrix's row scales (N,) zero-padded to its panels (int8 panels).
at::Tensor pack_scales(at::Tensor scales) {
  check_arg(scales.dim() == 1 && scales.scalar_type() == at::kFloat, "pack_scales: scales must be a float32 (N,) tensor");
#if defined(SSMZOO_SIMD_F)
  auto out = at::zeros({ssmzoo_cpu::panel_count(scales.size(0)) * ssmzoo_cpu::kPanelWidth}, scales.options());
  out.narrow(0, 0, scales.size(0)).copy_(scales);
  return out;
#else
  return scales.new_empty({0});
#endif
}

// x (M, K) float32 times Wᵀ from W's panels (and scales): the kernel alone, for its tests.
at::Tensor packed_linear(at::Tensor x, at::Tensor w, at::Tensor panels, at::Tensor scales) {
  check_arg(x.dim() == 2 && x.scalar_type() == at::kFloat && w.dim() == 2 && x.size(1) == w.size(1),
            "packed_linear: x must be a float32 (rows, K) tensor with w's K columns");
  auto out = at::empty({x.size(0), w.size(0)}, x.options());
  x = x.stride(1) == 1 ? x : x.contiguous();
  project(out, x, matrix(w, panels, scales, "w"), x.new_empty({0}), false);
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lm_step", &lm_step, "one token of a Mamba-2 language model: embedding, blocks, norm, head (CPU)");
  m.def("pack", &pack, "a float32, bfloat16 or int8 matrix (N, K) packed for the decode step's matmuls (CPU)");
  m.def("pack_scales", &pack_scales, "int8 row scales padded to the panels (CPU)");
  m.def("packed_linear", &packed_linear, "x Wᵀ from W's packed panels (the decode step's kernel; CPU)");
}
