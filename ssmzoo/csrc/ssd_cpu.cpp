// SSD's chunk steps on CPU (Dao & Gu 2024; ssmzoo/ops/ssd/chunked.py has the math and the PyTorch
// twin): per chunk and head, with xd = delta * x and cs the chunk-local cumulative log-decay,
//   intra:  y_i = sum_{j<=i} exp(cs_i - cs_j) (C_i . B_j) xd_j    and   U = sum_j exp(cs_T - cs_j) xd_j B_j^T
//   output: y_i += exp(cs_i) E C_i                                  (E: the chunk's entering state)
// and their adjoints. One OpenMP work item is one (chunk, group): the scores C B^T are built once and
// shared by the group's heads; every (T, T) matrix stays in a per-thread buffer (L2-sized for T = 256),
// the element-wise work on it is fused into one pass, and the products go to the Fortran BLAS that
// torch's CPU library carries (MKL's sgemm_/dgemm_; single-threaded inside the parallel region), which
// reads the chunk layout in place through its leading dimensions: no transposed copies.
// Where torch exports no such symbol the extension fails to load and the dispatch falls back.
//
// Layouts (contiguous; K chunks of T tokens): x, y, dy (K, T, H, P); delta, cs (K, T, H);
// B, C (K, T, G, N); U, dU, E, dE (K, H, P, N).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_blas.h"
#include "cpu_math.h"

namespace {

using ssmzoo_cpu::decay_exp;
using ssmzoo_cpu::lower_outer;
using ssmzoo_cpu::lower_times;
using ssmzoo_cpu::lower_transposed_times;
using ssmzoo_cpu::mm;

// The (T, T) matrices are lower triangular: products with them go by blocks of TB rows (cpu_blas.h).
constexpr int64_t TB = 64;

struct Sizes {
  int64_t K, T, H, P, G, N;
  int64_t heads_per_group() const { return H / G; }
  // Offsets of head h / group g of chunk k; rows of x and B then lie H*P and G*N apart.
  int64_t x(int64_t k, int64_t h) const { return k * T * H * P + h * P; }
  int64_t t(int64_t k, int64_t h) const { return k * T * H + h; }
  int64_t b(int64_t k, int64_t g) const { return k * T * G * N + g * N; }
  int64_t state(int64_t k, int64_t h) const { return (k * H + h) * P * N; }
};

Sizes sizes_of(const torch::Tensor& x, const torch::Tensor& B) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), B.size(2), B.size(3)};
}

// M_ij = exp(cs_i - cs_j) (times S_ij with WITH_SCORES) on and below the diagonal, 0 above it in the
// diagonal block (see TB).
template <bool WITH_SCORES, typename scalar_t>
void decay_matrix(const scalar_t* cs, const scalar_t* S, scalar_t* M, int64_t T) {
  for (int64_t i = 0; i < T; ++i) {
    const scalar_t ci = cs[i];
    scalar_t* row = M + i * T;
    const scalar_t* srow = S + i * T;
#pragma omp simd
    for (int64_t j = 0; j <= i; ++j) {
      if constexpr (WITH_SCORES) {
        row[j] = decay_exp(ci - cs[j]) * srow[j];
      } else {
        row[j] = decay_exp(ci - cs[j]);
      }
    }
    std::fill(row + i + 1, row + std::min((i / TB + 1) * TB, T), scalar_t(0));  // the diagonal block only
  }
}

// A head's strided per-token values (delta or cs: stride H) into a contiguous array.
template <typename scalar_t>
void gather(const scalar_t* src, int64_t stride, int64_t T, scalar_t* dst) {
  for (int64_t t = 0; t < T; ++t) dst[t] = src[t * stride];
}

// xd_t = delta_t x_t for one head: (T, P) contiguous from rows H*P apart.
template <typename scalar_t>
void scale_rows(const scalar_t* x, int64_t ldx, const scalar_t* d, int64_t T, int64_t P, scalar_t* xd) {
  for (int64_t t = 0; t < T; ++t) {
#pragma omp simd
    for (int64_t p = 0; p < P; ++p) xd[t * P + p] = x[t * ldx + p] * d[t];
  }
}

template <typename scalar_t>
void intra_forward(const Sizes& s, const scalar_t* x, const scalar_t* delta, const scalar_t* cs,
                   const scalar_t* B, const scalar_t* C, scalar_t* y, scalar_t* U) {
  const int64_t T = s.T, P = s.P, N = s.N, r = s.heads_per_group(), ldx = s.H * P, ldb = s.G * N;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<scalar_t> S(T * T), M(T * T), xd(T * P), d(T), c(T);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < s.K * s.G; ++item) {
      const int64_t k = item / s.G, g = item % s.G;
      const scalar_t* Bg = B + s.b(k, g);
      lower_outer<scalar_t>(T, TB, N, C + s.b(k, g), ldb, Bg, ldb, S.data());  // scores C B^T
      for (int64_t h = g * r; h < (g + 1) * r; ++h) {
        gather(delta + s.t(k, h), s.H, T, d.data());
        gather(cs + s.t(k, h), s.H, T, c.data());
        decay_matrix<true>(c.data(), S.data(), M.data(), T);
        scale_rows(x + s.x(k, h), ldx, d.data(), T, P, xd.data());
        lower_times<scalar_t>(T, TB, P, M.data(), xd.data(), P, 0, y + s.x(k, h), ldx);
        // U = (w xd)^T B with w_t = exp(cs_T - cs_t)
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t w = decay_exp(c[T - 1] - c[t]);
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) xd[t * P + p] *= w;
        }
        mm<scalar_t>(true, false, P, N, T, 1, xd.data(), P, Bg, ldb, 0, U + s.state(k, h), N);
      }
    }
  }
}

template <typename scalar_t>
void intra_backward(const Sizes& s, const scalar_t* x, const scalar_t* delta, const scalar_t* cs,
                    const scalar_t* B, const scalar_t* C, const scalar_t* y, const scalar_t* dy, const scalar_t* dU,
                    scalar_t* dx, scalar_t* ddelta, scalar_t* dcs, scalar_t* dB, scalar_t* dC) {
  const int64_t T = s.T, P = s.P, N = s.N, r = s.heads_per_group(), ldx = s.H * P, ldb = s.G * N;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<scalar_t> S(T * T), M(T * T), dM(T * T), dS(T * T), xd(T * P), dxd(T * P), BdU(T * P), d(T), c(T);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < s.K * s.G; ++item) {
      const int64_t k = item / s.G, g = item % s.G;
      const scalar_t* Bg = B + s.b(k, g);
      const scalar_t* Cg = C + s.b(k, g);
      scalar_t* dBg = dB + s.b(k, g);
      lower_outer<scalar_t>(T, TB, N, Cg, ldb, Bg, ldb, S.data());
      std::fill(dS.begin(), dS.end(), scalar_t(0));
      for (int64_t t = 0; t < T; ++t) std::fill(dBg + t * ldb, dBg + t * ldb + N, scalar_t(0));
      for (int64_t h = g * r; h < (g + 1) * r; ++h) {
        const scalar_t* xh = x + s.x(k, h);
        const scalar_t* dyh = dy + s.x(k, h);
        const scalar_t* yh = y + s.x(k, h);
        gather(delta + s.t(k, h), s.H, T, d.data());
        gather(cs + s.t(k, h), s.H, T, c.data());
        scale_rows(xh, ldx, d.data(), T, P, xd.data());
        decay_matrix<false>(c.data(), S.data(), M.data(), T);
        // dM = dy xd^T is the adjoint of M = decay o S; dS gathers dM o decay over the group's heads,
        // then M becomes decay o S in the same pass.
        lower_outer<scalar_t>(T, TB, P, dyh, ldx, xd.data(), P, dM.data());
        for (int64_t i = 0; i < T; ++i) {
#pragma omp simd
          for (int64_t j = 0; j <= i; ++j) {
            dS[i * T + j] += dM[i * T + j] * M[i * T + j];
            M[i * T + j] *= S[i * T + j];
          }
        }
        lower_transposed_times<scalar_t>(T, TB, P, M.data(), dyh, ldx, 0, dxd.data(), P);  // M^T dy
        // cs_i enters M_ij as exp(cs_i - cs_j): d cs_i = <dy_i, y_i>, d cs_j -= <xd_j, (M^T dy)_j>.
        scalar_t* dch = dcs + s.t(k, h);
        for (int64_t t = 0; t < T; ++t) {
          scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t p = 0; p < P; ++p) acc += dyh[t * ldx + p] * yh[t * ldx + p] - xd[t * P + p] * dxd[t * P + p];
          dch[t * s.H] = acc;
        }
        // U = sum_t w_t xd_t B_t^T, w_t = exp(cs_T - cs_t): BdU = B dU^T.
        const scalar_t* dUh = dU + s.state(k, h);
        mm<scalar_t>(false, true, T, P, N, 1, Bg, ldb, dUh, N, 0, BdU.data(), P);
        scalar_t dlast = 0;
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t w = decay_exp(c[T - 1] - c[t]);
          scalar_t dw = 0;
#pragma omp simd reduction(+ : dw)
          for (int64_t p = 0; p < P; ++p) {
            dw += xd[t * P + p] * BdU[t * P + p];
            dxd[t * P + p] += w * BdU[t * P + p];
            xd[t * P + p] *= w;  // xd becomes w xd for dB below
          }
          dch[t * s.H] -= w * dw;
          dlast += w * dw;
        }
        dch[(T - 1) * s.H] += dlast;
        mm<scalar_t>(false, false, T, N, P, 1, xd.data(), P, dUh, N, 1, dBg, ldb);  // dB += (w xd) dU
        scalar_t* dxh = dx + s.x(k, h);
        scalar_t* ddh = ddelta + s.t(k, h);
        for (int64_t t = 0; t < T; ++t) {
          scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t p = 0; p < P; ++p) {
            dxh[t * ldx + p] = dxd[t * P + p] * d[t];
            acc += dxd[t * P + p] * xh[t * ldx + p];
          }
          ddh[t * s.H] = acc;
        }
      }
      lower_times<scalar_t>(T, TB, N, dS.data(), Bg, ldb, 0, dC + s.b(k, g), ldb);  // dC = dS B
      lower_transposed_times<scalar_t>(T, TB, N, dS.data(), Cg, ldb, 1, dBg, ldb);  // dB += dS^T C
    }
  }
}

// Step 4 in place: y_i += exp(cs_i) E C_i, as one product per head with the rows of C scaled.
template <typename scalar_t>
void output_forward(const Sizes& s, const scalar_t* cs, const scalar_t* C, const scalar_t* E, scalar_t* y) {
  const int64_t T = s.T, P = s.P, N = s.N, r = s.heads_per_group(), ldx = s.H * P, ldb = s.G * N;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<scalar_t> Ce(T * N);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < s.K * s.G; ++item) {
      const int64_t k = item / s.G, g = item % s.G;
      const scalar_t* Cg = C + s.b(k, g);
      for (int64_t h = g * r; h < (g + 1) * r; ++h) {
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t e = decay_exp(cs[s.t(k, h) + t * s.H]);
#pragma omp simd
          for (int64_t n = 0; n < N; ++n) Ce[t * N + n] = e * Cg[t * ldb + n];
        }
        mm<scalar_t>(false, true, T, P, N, 1, Ce.data(), N, E + s.state(k, h), N, 1, y + s.x(k, h), ldx);
      }
    }
  }
}

// Adjoint of step 4: with dye = exp(cs) dy, dE = dye^T C, dC += dye E (over the group's heads) and
// d cs_i = <dye_i, E C_i>.
template <typename scalar_t>
void output_backward(const Sizes& s, const scalar_t* cs, const scalar_t* C, const scalar_t* E, const scalar_t* dy,
                     scalar_t* dcs, scalar_t* dC, scalar_t* dE) {
  const int64_t T = s.T, P = s.P, N = s.N, r = s.heads_per_group(), ldx = s.H * P, ldb = s.G * N;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<scalar_t> dye(T * P), CE(T * P);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < s.K * s.G; ++item) {
      const int64_t k = item / s.G, g = item % s.G;
      const scalar_t* Cg = C + s.b(k, g);
      for (int64_t h = g * r; h < (g + 1) * r; ++h) {
        const scalar_t* dyh = dy + s.x(k, h);
        const scalar_t* Eh = E + s.state(k, h);
        for (int64_t t = 0; t < T; ++t) {
          const scalar_t e = decay_exp(cs[s.t(k, h) + t * s.H]);
#pragma omp simd
          for (int64_t p = 0; p < P; ++p) dye[t * P + p] = e * dyh[t * ldx + p];
        }
        mm<scalar_t>(true, false, P, N, T, 1, dye.data(), P, Cg, ldb, 0, dE + s.state(k, h), N);
        mm<scalar_t>(false, false, T, N, P, 1, dye.data(), P, Eh, N, h == g * r ? 0 : 1, dC + s.b(k, g), ldb);
        mm<scalar_t>(false, true, T, P, N, 1, Cg, ldb, Eh, N, 0, CE.data(), P);
        for (int64_t t = 0; t < T; ++t) {
          scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
          for (int64_t p = 0; p < P; ++p) acc += dye[t * P + p] * CE[t * P + p];
          dcs[s.t(k, h) + t * s.H] = acc;
        }
      }
    }
  }
}

void check(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim() == dim, "ssd_cpu: ", name,
              " must be a contiguous CPU tensor of rank ", dim);
}

std::vector<torch::Tensor> intra_chunk_forward(torch::Tensor x, torch::Tensor delta, torch::Tensor cs,
                                               torch::Tensor B, torch::Tensor C) {
  check(x, "x", 4); check(delta, "delta", 3); check(cs, "cs", 3); check(B, "B", 4); check(C, "C", 4);
  const Sizes s = sizes_of(x, B);
  auto y = torch::empty_like(x);
  auto U = x.new_empty({s.K, s.H, s.P, s.N});
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_intra_chunk_forward", [&] {
    intra_forward<scalar_t>(s, x.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                            B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                            U.data_ptr<scalar_t>());
  });
  return {y, U};
}

std::vector<torch::Tensor> intra_chunk_backward(torch::Tensor x, torch::Tensor delta, torch::Tensor cs,
                                                torch::Tensor B, torch::Tensor C, torch::Tensor y, torch::Tensor dy,
                                                torch::Tensor dU) {
  check(x, "x", 4); check(delta, "delta", 3); check(cs, "cs", 3); check(B, "B", 4); check(C, "C", 4);
  check(y, "y", 4); check(dy, "dy", 4); check(dU, "dU", 4);
  const Sizes s = sizes_of(x, B);
  auto dx = torch::empty_like(x), ddelta = torch::empty_like(delta), dcs = torch::empty_like(cs);
  auto dB = torch::empty_like(B), dC = torch::empty_like(C);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_intra_chunk_backward", [&] {
    intra_backward<scalar_t>(s, x.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), cs.data_ptr<scalar_t>(),
                             B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                             dy.data_ptr<scalar_t>(), dU.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                             ddelta.data_ptr<scalar_t>(), dcs.data_ptr<scalar_t>(), dB.data_ptr<scalar_t>(),
                             dC.data_ptr<scalar_t>());
  });
  return {dx, ddelta, dcs, dB, dC};
}

torch::Tensor state_to_output_forward(torch::Tensor y, torch::Tensor cs, torch::Tensor C, torch::Tensor E) {
  check(y, "y", 4); check(cs, "cs", 3); check(C, "C", 4); check(E, "E", 4);
  const Sizes s = sizes_of(y, C);
  auto out = y.clone();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "ssd_state_to_output_forward", [&] {
    output_forward<scalar_t>(s, cs.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), E.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<torch::Tensor> state_to_output_backward(torch::Tensor cs, torch::Tensor C, torch::Tensor E,
                                                    torch::Tensor dy) {
  check(cs, "cs", 3); check(C, "C", 4); check(E, "E", 4); check(dy, "dy", 4);
  const Sizes s = sizes_of(dy, C);
  auto dcs = torch::empty_like(cs), dC = torch::empty_like(C), dE = torch::empty_like(E);
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "ssd_state_to_output_backward", [&] {
    output_backward<scalar_t>(s, cs.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), E.data_ptr<scalar_t>(),
                              dy.data_ptr<scalar_t>(), dcs.data_ptr<scalar_t>(), dC.data_ptr<scalar_t>(),
                              dE.data_ptr<scalar_t>());
  });
  return {dcs, dC, dE};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("intra_chunk_forward", &intra_chunk_forward, "steps 1-2: (y, U)");
  m.def("intra_chunk_backward", &intra_chunk_backward, "adjoint of steps 1-2: (dx, ddelta, dcs, dB, dC)");
  m.def("state_to_output_forward", &state_to_output_forward, "step 4: y + exp(cs) E C");
  m.def("state_to_output_backward", &state_to_output_backward, "adjoint of step 4: (dcs, dC, dE)");
}
