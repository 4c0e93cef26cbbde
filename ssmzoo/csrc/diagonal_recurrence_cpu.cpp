// A diagonal linear recurrence on CPU (OpenMP), forward and exact backward; the math and its oracle are in
// ssmzoo/ops/diagonal_recurrence/reference.py:
//   h_t = lam_t * h_prev + x_t,   prev = t - 1 (or t + 1 when reverse),
// elementwise over `dim` channels, real or complex, lam constant (dim,) or per step (batch, length, dim).
// The recurrence restarts where resets[b, t] is true (a row's or a packed document's first token in
// processing order) from h0[doc[b, t]] (or zeros); each document's last processed state goes to
// final[doc]. Backward, with torch's convention for complex gradients (grad of a*b wrt a = g * conj(b)):
//   g_t = dh_t + (t last in its document ? dfinal[doc] : conj(lam_next) g_next)
//   dx_t = g_t,  dlam_t = g_t conj(h_prev),  dh0[doc] = conj(lam_t) g_t at a reset.
// Complex numbers are read as interleaved (re, im) pairs and computed in real arithmetic, so the loops over
// a block of channels vectorise. One work item is (row, block of channels): rows are independent and a
// document never leaves its row, so no two items write the same final state or gradient.
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;  // channels per work item

template <typename T, bool COMPLEX>
void forward_kernel(const T* x, const T* lam, const T* h0, const bool* resets, const int64_t* doc, T* h, T* fin,
                    int64_t B, int64_t L, int64_t D, bool per_step, bool reverse) {
  constexpr int64_t C = COMPLEX ? 2 : 1;
  const int64_t blocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t d0 = blk * kBlock, n = std::min(kBlock, D - d0);
      alignas(64) T hr[kBlock], hi[kBlock];
      for (int64_t p = 0; p < L; ++p) {
        const int64_t t = reverse ? L - 1 - p : p;
        const int64_t row = b * L + t;
        if (resets[row]) {
          for (int64_t j = 0; j < n; ++j) {
            hr[j] = h0 ? h0[(doc[row] * D + d0 + j) * C] : T(0);
            hi[j] = (COMPLEX && h0) ? h0[(doc[row] * D + d0 + j) * C + 1] : T(0);
          }
        }
        const T* lp = lam + (per_step ? row * D : 0) * C + d0 * C;
        const T* xp = x + (row * D + d0) * C;
        T* hp = h + (row * D + d0) * C;
        if (COMPLEX) {
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            const T lr = lp[2 * j], li = lp[2 * j + 1];
            const T nr = lr * hr[j] - li * hi[j] + xp[2 * j];
            const T ni = lr * hi[j] + li * hr[j] + xp[2 * j + 1];
            hr[j] = nr;
            hi[j] = ni;
            hp[2 * j] = nr;
            hp[2 * j + 1] = ni;
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            hr[j] = lp[j] * hr[j] + xp[j];
            hp[j] = hr[j];
          }
        }
        const bool last = p == L - 1 || resets[b * L + (reverse ? t - 1 : t + 1)];
        if (last) {
          T* fp = fin + (doc[row] * D + d0) * C;
          for (int64_t j = 0; j < n; ++j) {
            fp[j * C] = hr[j];
            if (COMPLEX) fp[j * C + 1] = hi[j];
          }
        }
      }
    }
  }
}

template <typename T, bool COMPLEX>
void backward_kernel(const T* lam, const T* h, const T* h0, const bool* resets, const int64_t* doc, const T* dh,
                     const T* dfin, T* dx, T* dlam, T* dh0, int64_t B, int64_t L, int64_t D, bool per_step,
                     bool reverse) {
  constexpr int64_t C = COMPLEX ? 2 : 1;
  const int64_t blocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t d0 = blk * kBlock, n = std::min(kBlock, D - d0);
      // carry: conj(lam_next) g_next, the adjoint reaching h_t from the next processed step.
      alignas(64) T cr[kBlock], ci[kBlock], ar[kBlock], ai[kBlock], pr[kBlock], pi[kBlock];
      for (int64_t j = 0; j < n; ++j) ar[j] = ai[j] = cr[j] = ci[j] = T(0);  // ar, ai: constant-decay sums
      for (int64_t q = L - 1; q >= 0; --q) {
        const int64_t t = reverse ? L - 1 - q : q;
        const int64_t row = b * L + t;
        const bool last = q == L - 1 || resets[b * L + (reverse ? t - 1 : t + 1)];
        if (last) {
          for (int64_t j = 0; j < n; ++j) {
            cr[j] = dfin ? dfin[(doc[row] * D + d0 + j) * C] : T(0);
            ci[j] = (COMPLEX && dfin) ? dfin[(doc[row] * D + d0 + j) * C + 1] : T(0);
          }
        }
        // the state this step started from
        if (resets[row]) {
          for (int64_t j = 0; j < n; ++j) {
            pr[j] = h0 ? h0[(doc[row] * D + d0 + j) * C] : T(0);
            pi[j] = (COMPLEX && h0) ? h0[(doc[row] * D + d0 + j) * C + 1] : T(0);
          }
        } else {
          const T* hp = h + ((b * L + (reverse ? t + 1 : t - 1)) * D + d0) * C;
          for (int64_t j = 0; j < n; ++j) {
            pr[j] = hp[j * C];
            pi[j] = COMPLEX ? hp[j * C + 1] : T(0);
          }
        }
        const T* lp = lam + (per_step ? row * D : 0) * C + d0 * C;
        const T* gp = dh + (row * D + d0) * C;
        T* dxp = dx + (row * D + d0) * C;
        T* dlp = per_step ? dlam + (row * D + d0) * C : nullptr;
        if (COMPLEX) {
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            const T gr = gp[2 * j] + cr[j], gi = gp[2 * j + 1] + ci[j];
            dxp[2 * j] = gr;
            dxp[2 * j + 1] = gi;
            // g conj(h_prev)
            const T lr_ = gr * pr[j] + gi * pi[j], li_ = gi * pr[j] - gr * pi[j];
            if (per_step) {
              dlp[2 * j] = lr_;
              dlp[2 * j + 1] = li_;
            } else {
              ar[j] += lr_;
              ai[j] += li_;
            }
            // conj(lam) g
            const T lr = lp[2 * j], li = lp[2 * j + 1];
            cr[j] = lr * gr + li * gi;
            ci[j] = lr * gi - li * gr;
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            const T g = gp[j] + cr[j];
            dxp[j] = g;
            if (per_step) {
              dlp[j] = g * pr[j];
            } else {
              ar[j] += g * pr[j];
            }
            cr[j] = lp[j] * g;
          }
        }
        if (resets[row] && dh0) {
          T* op = dh0 + (doc[row] * D + d0) * C;
          for (int64_t j = 0; j < n; ++j) {
            op[j * C] = cr[j];
            if (COMPLEX) op[j * C + 1] = ci[j];
          }
        }
      }
      if (!per_step) {
        T* op = dlam + (b * D + d0) * C;  // (batch, dim) partial sums, reduced by the caller
        for (int64_t j = 0; j < n; ++j) {
          op[j * C] = ar[j];
          if (COMPLEX) op[j * C + 1] = ai[j];
        }
      }
    }
  }
}

template <typename T>
const T* ptr_or_null(const torch::Tensor& t) {
  return t.numel() ? reinterpret_cast<const T*>(t.data_ptr()) : nullptr;
}

void check(const torch::Tensor& x, const torch::Tensor& lam, const torch::Tensor& resets, const torch::Tensor& doc) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "diagonal_recurrence_cpu: x must be contiguous (B, L, D)");
  TORCH_CHECK(lam.is_contiguous() && lam.scalar_type() == x.scalar_type(), "diagonal_recurrence_cpu: bad decay");
  TORCH_CHECK(resets.scalar_type() == torch::kBool && resets.is_contiguous(), "diagonal_recurrence_cpu: bad resets");
  TORCH_CHECK(doc.scalar_type() == torch::kLong && doc.is_contiguous(), "diagonal_recurrence_cpu: bad doc");
}

// x (B, L, D), lam (D,) or (B, L, D), h0 (S, D) or empty, resets (B, L) bool, doc (B, L) int64 -> (h, final (S, D))
std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor lam, torch::Tensor h0, torch::Tensor resets,
                                   torch::Tensor doc, int64_t num_states, bool reverse) {
  check(x, lam, resets, doc);
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2);
  auto h = torch::empty_like(x);
  auto fin = torch::zeros({num_states, D}, x.options());
  const bool per_step = lam.dim() == 3, cplx = x.is_complex();
  AT_DISPATCH_FLOATING_TYPES(c10::toRealValueType(x.scalar_type()), "diagonal_recurrence_forward", [&] {
    auto args = std::make_tuple(reinterpret_cast<const scalar_t*>(x.data_ptr()),
                                reinterpret_cast<const scalar_t*>(lam.data_ptr()), ptr_or_null<scalar_t>(h0),
                                resets.data_ptr<bool>(), doc.data_ptr<int64_t>(),
                                reinterpret_cast<scalar_t*>(h.data_ptr()), reinterpret_cast<scalar_t*>(fin.data_ptr()),
                                B, L, D, per_step, reverse);
    if (cplx) std::apply(forward_kernel<scalar_t, true>, args);
    else std::apply(forward_kernel<scalar_t, false>, args);
  });
  return {h, fin};
}

// -> (dx (B, L, D), dlam ((B, L, D) per step, else (B, D) partial sums), dh0 (S, D) or empty)
std::vector<torch::Tensor> backward(torch::Tensor lam, torch::Tensor h, torch::Tensor h0, torch::Tensor resets,
                                    torch::Tensor doc, torch::Tensor dh, torch::Tensor dfin, bool reverse,
                                    bool want_dh0) {
  check(h, lam, resets, doc);
  TORCH_CHECK(dh.sizes() == h.sizes() && dh.is_contiguous(), "diagonal_recurrence_cpu: bad dh");
  const int64_t B = h.size(0), L = h.size(1), D = h.size(2);
  const bool per_step = lam.dim() == 3, cplx = h.is_complex();
  auto dx = torch::empty_like(h);
  auto dlam = per_step ? torch::empty_like(h) : torch::empty({B, D}, h.options());
  auto dh0 = want_dh0 ? torch::zeros({dfin.size(0), D}, h.options()) : torch::empty({0}, h.options());
  AT_DISPATCH_FLOATING_TYPES(c10::toRealValueType(h.scalar_type()), "diagonal_recurrence_backward", [&] {
    auto args = std::make_tuple(reinterpret_cast<const scalar_t*>(lam.data_ptr()),
                                reinterpret_cast<const scalar_t*>(h.data_ptr()), ptr_or_null<scalar_t>(h0),
                                resets.data_ptr<bool>(), doc.data_ptr<int64_t>(),
                                reinterpret_cast<const scalar_t*>(dh.data_ptr()), ptr_or_null<scalar_t>(dfin),
                                reinterpret_cast<scalar_t*>(dx.data_ptr()), reinterpret_cast<scalar_t*>(dlam.data_ptr()),
                                want_dh0 ? reinterpret_cast<scalar_t*>(dh0.data_ptr()) : nullptr, B, L, D, per_step,
                                reverse);
    if (cplx) std::apply(backward_kernel<scalar_t, true>, args);
    else std::apply(backward_kernel<scalar_t, false>, args);
  });
  return {dx, dlam, dh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "diagonal linear recurrence (CPU)");
  m.def("backward", &backward, "its exact backward (CPU)");
}
