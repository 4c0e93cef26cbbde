// Mamba-3's chunk steps on CPU (arXiv 2603.15569; ssmzoo/ops/mamba3/chunked.py has the math and the PyTorch
// twins intra_torch, output_torch and keys_torch). Per chunk and head, rows i = (token t_i, rank r_i) token-major,
// M = T * R rows, cs the chunk-local cumulative log-decay:
//   intra:  y_i = sum_j Lam_ij (q_i . k_j) v_j,   Lam_ij = exp(cs_{t_i} - cs_{t_j}) w_{t_j}   if t_j < t_i
//                                                        = g_{t_i}                              if t_j = t_i
//                                                        = 0                                    if t_j > t_i
//           U = sum_j exp(cs_T - cs_{t_j}) w_{t_j} v_j k_j^T          (the chunk's own end state)
//   output: y_i += exp(cs_{t_i}) E q_i                                 (E: the state entering the chunk)
//   rows:   the rotated, biased keys / queries of every head in this layout, from the groups' B / C
// and their adjoints. One OpenMP work item is one (chunk, head); the (M, M) matrices stay in per-thread buffers,
// the element-wise work on them is one fused pass, and the products go to the Fortran BLAS that torch's CPU
// library carries (sgemm_/dgemm_, single-threaded inside the parallel region). Lam is lower block-triangular
// (blocks of R rows): products with it go by row blocks of whole tokens and skip the blocks above the diagonal;
// only the diagonal blocks' upper parts are ever read, so only those hold zeros.
//
// Layouts (contiguous): q, k (K, H, M, N); v, y, dy (K, H, M, P); cs, g, w (K, H, T); U, E (K, H, P, N).

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

struct Sizes {
  int64_t K, H, T, R, N, P;
  int64_t M() const { return T * R; }
  // Row blocks of whole tokens, about 64 rows.
  int64_t block() const { return R * std::max<int64_t>(1, 64 / R); }
  int64_t qk(int64_t item) const { return item * M() * N; }
  int64_t vy(int64_t item) const { return item * M() * P; }
  int64_t tok(int64_t item) const { return item * T; }
  int64_t state(int64_t item) const { return item * P * N; }
};

// Per-row copies of per-token values (row j holds token j / R's): the inner loops then run over rows.
template <typename scalar_t>
void expand_rows(const scalar_t* per_token, int64_t T, int64_t R, scalar_t* out) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < R; ++r) out[t * R + r] = per_token[t];
}

// S becomes Lam o S in place (rows of each block past their token's last rank zeroed: see cpu_blas.h).
template <typename scalar_t>
void mask_scores(const Sizes& s, const scalar_t* cs, const scalar_t* g, const scalar_t* csj, const scalar_t* wj,
                 scalar_t* S) {
  const int64_t M = s.M(), R = s.R, TB = s.block();
  for (int64_t i = 0; i < M; ++i) {
    const int64_t t = i / R, strict = t * R, diag_end = strict + R;
    const scalar_t ci = cs[t], gi = g[t];
    scalar_t* row = S + i * M;
#pragma omp simd
    for (int64_t j = 0; j < strict; ++j) row[j] *= decay_exp(ci - csj[j]) * wj[j];
    for (int64_t j = strict; j < diag_end; ++j) row[j] *= gi;
    std::fill(row + diag_end, row + std::min((i / TB + 1) * TB, M), scalar_t(0));
  }
}

// omega_j = exp(cs_T - cs_{t_j}) w_{t_j}: the weight of row j in the chunk's end state U.
template <typename scalar_t>
void end_weights(const scalar_t* csj, const scalar_t* wj, int64_t M, scalar_t* omega) {
  const scalar_t last = csj[M - 1];
  for (int64_t j = 0; j < M; ++j) omega[j] = decay_exp(last - csj[j]) * wj[j];
}

template <typename scalar_t>
void intra_forward(const Sizes& s, const scalar_t* q, const scalar_t* k, const scalar_t* v, const scalar_t* cs,
                   const scalar_t* g, const scalar_t* w, scalar_t* y, scalar_t* U) {
  const int64_t M = s.M(), P = s.P, TB = s.block();
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<scalar_t> S(M * M), csj(M), wj(M), omega(M), vw(M * P);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < s.K * s.H; ++item) {
      const scalar_t* c = cs + s.tok(item);
      const scalar_t* vi = v + s.vy(item);
      expand_rows(c, s.T, s.R, csj.data());
      expand_rows(w + s.tok(item), s.T, s.R, wj.data());
      lower_outer<scalar_t>(M, TB, s.N, q + s.qk(item), s.N, k + s.qk(item), s.N, S.data());  // q k^T
      mask_scores(s, c, g + s.tok(item), csj.data(), wj.data(), S.data());
      lower_times<scalar_t>(M, TB, P, S.data(), vi, P, 0, y + s.vy(item), P);
      // U = sum_j omega_j v_j k_j^T
      end_weights(csj.data(), wj.data(), M, omega.data());
      for (int64_t j = 0; j < M; ++j) {
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) vw[j * P + p] = omega[j] * vi[j * P + p];
      }
      mm<scalar_t>(true, false, P, s.N, M, 1, vw.data(), P, k + s.qk(item), s.N, 0, U + s.state(item), s.N);
    }
  }
}

template <typename scalar_t>
void intra_backward(const Sizes& s, const scalar_t* q, const scalar_t* k, const scalar_t* v, const scalar_t* cs,
                    const scalar_t* g, const scalar_t* w, const scalar_t* dy, const scalar_t* dU, scalar_t* dq,
                    scalar_t* dk, scalar_t* dv, scalar_t* dcs, scalar_t* dg, scalar_t* dw) {
  const int64_t M = s.M(), R = s.R, T = s.T, P = s.P, N = s.N, TB = s.block();
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<scalar_t> S(M * M), dP(M * M), csj(M), wj(M), col_cs(M), col_w(M), row_cs(M), row_g(M), omega(M),
        kdu(M * P), vw(M * P);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < s.K * s.H; ++item) {
      const scalar_t* c = cs + s.tok(item);
      const scalar_t* gt = g + s.tok(item);
      expand_rows(c, T, R, csj.data());
      expand_rows(w + s.tok(item), T, R, wj.data());
      const scalar_t* qi = q + s.qk(item);
      const scalar_t* ki = k + s.qk(item);
      const scalar_t* vi = v + s.vy(item);
      const scalar_t* dyi = dy + s.vy(item);
      lower_outer<scalar_t>(M, TB, N, qi, N, ki, N, S.data());    // S = q k^T
      lower_outer<scalar_t>(M, TB, P, dyi, P, vi, P, dP.data());  // dP = dy v^T, the adjoint of Lam o S
      std::fill(col_cs.begin(), col_cs.end(), scalar_t(0));
      std::fill(col_w.begin(), col_w.end(), scalar_t(0));
      // One pass: with e = exp(cs_i - cs_j) and Lam = e w_j below the diagonal blocks, g_i on them,
      //   d cs_{t_i} += dP S Lam,  d cs_{t_j} -= dP S Lam,  d w_{t_j} += dP S e,  d g_{t_i} += dP S (diagonal blocks);
      // then dP becomes dS = dP o Lam (for dq, dk) and S becomes Lam o S (for dv).
      for (int64_t i = 0; i < M; ++i) {
        const int64_t t = i / R, strict = t * R, diag_end = strict + R;
        const scalar_t ci = c[t], gi = gt[t];
        scalar_t* srow = S.data() + i * M;
        scalar_t* prow = dP.data() + i * M;
        scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < strict; ++j) {
          const scalar_t e = decay_exp(ci - csj[j]);
          const scalar_t lam = e * wj[j];
          const scalar_t dps = prow[j] * srow[j];
          acc += dps * lam;
          col_cs[j] -= dps * lam;
          col_w[j] += dps * e;
          prow[j] *= lam;
          srow[j] *= lam;
        }
        scalar_t diag = 0;
        for (int64_t j = strict; j < diag_end; ++j) {
          diag += prow[j] * srow[j];
          prow[j] *= gi;
          srow[j] *= gi;
        }
        row_cs[i] = acc;
        row_g[i] = diag;
        const int64_t block_end = std::min((i / TB + 1) * TB, M);
        std::fill(srow + diag_end, srow + block_end, scalar_t(0));
        std::fill(prow + diag_end, prow + block_end, scalar_t(0));
      }
      lower_transposed_times<scalar_t>(M, TB, P, S.data(), dyi, P, 0, dv + s.vy(item), P);  // dv = (Lam o S)^T dy
      lower_times<scalar_t>(M, TB, N, dP.data(), ki, N, 0, dq + s.qk(item), N);             // dq = dS k
      lower_transposed_times<scalar_t>(M, TB, N, dP.data(), qi, N, 0, dk + s.qk(item), N);  // dk = dS^T q
      // U = sum_j omega_j v_j k_j^T: dv_j += omega_j (k_j dU^T), dk_j += omega_j v_j dU, and d omega_j = v_j . (k_j dU^T)
      // enters w_{t_j} (times exp(cs_T - cs_{t_j})), cs_{t_j} (minus omega_j) and cs_T (plus omega_j).
      end_weights(csj.data(), wj.data(), M, omega.data());
      const scalar_t* dUi = dU + s.state(item);
      mm<scalar_t>(false, true, M, P, N, 1, ki, N, dUi, N, 0, kdu.data(), P);
      scalar_t* dvi = dv + s.vy(item);
      scalar_t to_last = 0;
      for (int64_t j = 0; j < M; ++j) {
        scalar_t domega = 0;
#pragma omp simd reduction(+ : domega)
        for (int64_t p = 0; p < P; ++p) {
          domega += vi[j * P + p] * kdu[j * P + p];
          dvi[j * P + p] += omega[j] * kdu[j * P + p];
          vw[j * P + p] = omega[j] * vi[j * P + p];
        }
        const scalar_t weighted = domega * omega[j];
        col_cs[j] -= weighted;
        to_last += weighted;
        col_w[j] += domega * decay_exp(csj[M - 1] - csj[j]);
      }
      col_cs[M - 1] += to_last;
      mm<scalar_t>(false, false, M, N, P, 1, vw.data(), P, dUi, N, 1, dk + s.qk(item), N);
      scalar_t* dc = dcs + s.tok(item);
      scalar_t* dgt = dg + s.tok(item);
      scalar_t* dwt = dw + s.tok(item);
      for (int64_t tt = 0; tt < T; ++tt) {
        scalar_t a = 0, b = 0, d = 0;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t j = tt * R + r;
          a += row_cs[j] + col_cs[j];
          b += row_g[j];
          d += col_w[j];
        }
        dc[tt] = a;
        dgt[tt] = b;
        dwt[tt] = d;
      }
    }
  }
}

// ---- step 4: y_i += exp(cs_{t_i}) E q_i, E (P, N) the state entering the chunk ------------------------------
template <typename scalar_t>
void output_forward(const Sizes& s, const scalar_t* cs, const scalar_t* q, const scalar_t* E, scalar_t* y) {
  const int64_t M = s.M(), N = s.N;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<scalar_t> qe(M * N);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < s.K * s.H; ++item) {
      const scalar_t* c = cs + s.tok(item);
      const scalar_t* qi = q + s.qk(item);
      for (int64_t j = 0; j < M; ++j) {
        const scalar_t e = decay_exp(c[j / s.R]);
#pragma omp simd
        for (int64_t n = 0; n < N; ++n) qe[j * N + n] = e * qi[j * N + n];
      }
      mm<scalar_t>(false, true, M, s.P, N, 1, qe.data(), N, E + s.state(item), N, 1, y + s.vy(item), s.P);
    }
  }
}

// Adjoint of step 4: with dye = exp(cs) dy, dE = dye^T q, dq = dye E and d cs_t = sum over t's rows of dye . (E q).
template <typename scalar_t>
void output_backward(const Sizes& s, const scalar_t* cs, const scalar_t* q, const scalar_t* E, const scalar_t* dy,
                     scalar_t* dcs, scalar_t* dq, scalar_t* dE) {
  const int64_t M = s.M(), N = s.N, P = s.P;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<scalar_t> dye(M * P), qE(M * P);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < s.K * s.H; ++item) {
      const scalar_t* c = cs + s.tok(item);
      const scalar_t* qi = q + s.qk(item);
      const scalar_t* Ei = E + s.state(item);
      const scalar_t* dyi = dy + s.vy(item);
      for (int64_t j = 0; j < M; ++j) {
        const scalar_t e = decay_exp(c[j / s.R]);
#pragma omp simd
        for (int64_t p = 0; p < P; ++p) dye[j * P + p] = e * dyi[j * P + p];
      }
      mm<scalar_t>(true, false, P, N, M, 1, dye.data(), P, qi, N, 0, dE + s.state(item), N);
      mm<scalar_t>(false, false, M, N, P, 1, dye.data(), P, Ei, N, 0, dq + s.qk(item), N);
      mm<scalar_t>(false, true, M, P, N, 1, qi, N, Ei, N, 0, qE.data(), P);
      scalar_t* dc = dcs + s.tok(item);
      std::fill(dc, dc + s.T, scalar_t(0));
      for (int64_t j = 0; j < M; ++j) {
        scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t p = 0; p < P; ++p) acc += dye[j * P + p] * qE[j * P + p];
        dc[j / s.R] += acc;
      }
    }
  }
}

// ---- rows: the rotated, biased keys and queries of every head, in the chunk layout ---------------------------
// out[k, h, t R + r, :] = rotate(src[k, t, r, g(h), :] + bias[h, r, :], phase[k, t, h, :]): the group's B (or C)
// copied to each of its heads, its bias added, each pair (i, j) turned to (u c - w s, u s + w c). Pairs: (2m, 2m+1)
// (interleaved) or (m, m + N/2) (halves), m < A. src (K, T, R, G, N); bias (H, R, N) or none; cos, sin (K, T, H, A).
struct RowSizes {
  int64_t K, T, R, G, N, H, A;
  bool halves;
  int64_t pair_i(int64_t m) const { return halves ? m : 2 * m; }
  int64_t pair_j(int64_t m) const { return halves ? m + N / 2 : 2 * m + 1; }
  int64_t src(int64_t k, int64_t t, int64_t r, int64_t g) const { return (((k * T + t) * R + r) * G + g) * N; }
  int64_t out(int64_t k, int64_t h, int64_t t, int64_t r) const { return ((k * H + h) * T * R + t * R + r) * N; }
  int64_t phase(int64_t k, int64_t t, int64_t h) const { return ((k * T + t) * H + h) * A; }
};

template <typename scalar_t>
void rows_forward_impl(const RowSizes& s, const scalar_t* src, const scalar_t* bias, const scalar_t* cos,
                       const scalar_t* sin, scalar_t* out) {
  const int64_t per_group = s.H / s.G;
  at::parallel_for(0, s.K * s.H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / s.H, h = item % s.H, g = h / per_group;
      for (int64_t t = 0; t < s.T; ++t) {
        const scalar_t* c = cos + s.phase(k, t, h);
        const scalar_t* sn = sin + s.phase(k, t, h);
        for (int64_t r = 0; r < s.R; ++r) {
          const scalar_t* in = src + s.src(k, t, r, g);
          scalar_t* o = out + s.out(k, h, t, r);
          if (bias != nullptr) {
            const scalar_t* b = bias + (h * s.R + r) * s.N;
#pragma omp simd
            for (int64_t n = 0; n < s.N; ++n) o[n] = in[n] + b[n];
          } else {
            std::copy(in, in + s.N, o);
          }
          for (int64_t m = 0; m < s.A; ++m) {
            const int64_t i = s.pair_i(m), j = s.pair_j(m);
            const scalar_t u = o[i], w = o[j];
            o[i] = u * c[m] - w * sn[m];
            o[j] = u * sn[m] + w * c[m];
          }
        }
      }
    }
  });
}

// Adjoint: d src = rotate^T(d out) summed over the group's heads, d bias per chunk (summed over chunks by the
// caller), d cos_m = g_i u + g_j w and d sin_m = -g_i w + g_j u summed over ranks, (u, w) the biased pair.
// One work item is one (chunk, group), so the heads that share src add into it without races.
template <typename scalar_t>
void rows_backward_impl(const RowSizes& s, const scalar_t* dout, const scalar_t* src, const scalar_t* bias,
                        const scalar_t* cos, const scalar_t* sin, scalar_t* dsrc, scalar_t* dbias,
                        scalar_t* dcos, scalar_t* dsin) {
  const int64_t per_group = s.H / s.G;
  at::parallel_for(0, s.K * s.G, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> d(s.N);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / s.G, g = item % s.G;
      for (int64_t t = 0; t < s.T; ++t)
        for (int64_t r = 0; r < s.R; ++r) std::fill(dsrc + s.src(k, t, r, g), dsrc + s.src(k, t, r, g) + s.N, 0);
      for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
        scalar_t* db = dbias + (k * s.H + h) * s.R * s.N;
        std::fill(db, db + s.R * s.N, scalar_t(0));
        for (int64_t t = 0; t < s.T; ++t) {
          const scalar_t* c = cos + s.phase(k, t, h);
          const scalar_t* sn = sin + s.phase(k, t, h);
          scalar_t* dc = dcos + s.phase(k, t, h);
          scalar_t* ds = dsin + s.phase(k, t, h);
          std::fill(dc, dc + s.A, scalar_t(0));
          std::fill(ds, ds + s.A, scalar_t(0));
          for (int64_t r = 0; r < s.R; ++r) {
            const scalar_t* go = dout + s.out(k, h, t, r);
            const scalar_t* in = src + s.src(k, t, r, g);
            const scalar_t* b = bias != nullptr ? bias + (h * s.R + r) * s.N : nullptr;
            std::copy(go, go + s.N, d.data());
            for (int64_t m = 0; m < s.A; ++m) {
              const int64_t i = s.pair_i(m), j = s.pair_j(m);
              const scalar_t u = in[i] + (b ? b[i] : scalar_t(0)), w = in[j] + (b ? b[j] : scalar_t(0));
              const scalar_t gi = go[i], gj = go[j];
              dc[m] += gi * u + gj * w;
              ds[m] += gj * u - gi * w;
              d[i] = gi * c[m] + gj * sn[m];
              d[j] = gj * c[m] - gi * sn[m];
            }
            scalar_t* dsr = dsrc + s.src(k, t, r, g);
            scalar_t* dbr = db + r * s.N;
#pragma omp simd
            for (int64_t n = 0; n < s.N; ++n) {
              dsr[n] += d[n];
              dbr[n] += d[n];
            }
          }
        }
      }
    }
  });
}

void check(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim() == dim, "mamba3_cpu: ", name,
              " must be a contiguous CPU tensor of rank ", dim);
}

Sizes sizes_of(const torch::Tensor& q, const torch::Tensor& v, const torch::Tensor& cs, int64_t rank) {
  check(q, "q", 4); check(v, "v", 4); check(cs, "cs", 3);
  TORCH_CHECK(rank >= 1 && q.size(2) == cs.size(2) * rank && v.size(2) == q.size(2), "mamba3_cpu: rows must be T * rank");
  return {q.size(0), q.size(1), cs.size(2), rank, q.size(3), v.size(3)};
}

std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor cs,
                                   torch::Tensor g, torch::Tensor w, int64_t rank) {
  const Sizes s = sizes_of(q, v, cs, rank);
  check(k, "k", 4); check(g, "g", 3); check(w, "w", 3);
  auto y = torch::empty_like(v);
  auto U = v.new_empty({s.K, s.H, s.P, s.N});
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mamba3_intra_forward", [&] {
    intra_forward<scalar_t>(s, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                            cs.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                            y.data_ptr<scalar_t>(), U.data_ptr<scalar_t>());
  });
  return {y, U};
}

std::vector<torch::Tensor> backward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor cs,
                                    torch::Tensor g, torch::Tensor w, int64_t rank, torch::Tensor dy,
                                    torch::Tensor dU) {
  const Sizes s = sizes_of(q, v, cs, rank);
  check(k, "k", 4); check(g, "g", 3); check(w, "w", 3); check(dy, "dy", 4); check(dU, "dU", 4);
  auto dq = torch::empty_like(q), dk = torch::empty_like(k), dv = torch::empty_like(v);
  auto dcs = torch::empty_like(cs), dg = torch::empty_like(g), dw = torch::empty_like(w);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mamba3_intra_backward", [&] {
    intra_backward<scalar_t>(s, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                             cs.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                             dy.data_ptr<scalar_t>(), dU.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(),
                             dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), dcs.data_ptr<scalar_t>(),
                             dg.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>());
  });
  return {dq, dk, dv, dcs, dg, dw};
}

torch::Tensor state_to_output_forward(torch::Tensor y, torch::Tensor cs, torch::Tensor q, torch::Tensor E,
                                      int64_t rank) {
  const Sizes s = sizes_of(q, y, cs, rank);
  check(E, "E", 4);
  auto out = y.clone();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mamba3_state_to_output_forward", [&] {
    output_forward<scalar_t>(s, cs.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), E.data_ptr<scalar_t>(),
                             out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<torch::Tensor> state_to_output_backward(torch::Tensor cs, torch::Tensor q, torch::Tensor E,
                                                    torch::Tensor dy, int64_t rank) {
  const Sizes s = sizes_of(q, dy, cs, rank);
  check(E, "E", 4);
  auto dcs = torch::empty_like(cs), dq = torch::empty_like(q), dE = torch::empty_like(E);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "mamba3_state_to_output_backward", [&] {
    output_backward<scalar_t>(s, cs.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), E.data_ptr<scalar_t>(),
                              dy.data_ptr<scalar_t>(), dcs.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(),
                              dE.data_ptr<scalar_t>());
  });
  return {dcs, dq, dE};
}

RowSizes row_sizes(const torch::Tensor& src, const torch::Tensor& cos, bool halves) {
  check(src, "src", 5); check(cos, "cos", 4);
  return {src.size(0), src.size(1), src.size(2), src.size(3), src.size(4), cos.size(2), cos.size(3), halves};
}

torch::Tensor rows_forward(torch::Tensor src, c10::optional<torch::Tensor> bias, torch::Tensor cos, torch::Tensor sin,
                           bool halves) {
  const RowSizes s = row_sizes(src, cos, halves);
  check(sin, "sin", 4);
  TORCH_CHECK(s.H % s.G == 0 && 2 * s.A <= s.N, "mamba3_cpu: rows: heads must be a multiple of groups, A <= N / 2");
  auto out = src.new_empty({s.K, s.H, s.T * s.R, s.N});
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "mamba3_rows_forward", [&] {
    const scalar_t* b = nullptr;
    if (bias.has_value()) { check(*bias, "bias", 3); b = bias->data_ptr<scalar_t>(); }
    rows_forward_impl<scalar_t>(s, src.data_ptr<scalar_t>(), b, cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(),
                                out.data_ptr<scalar_t>());
  });
  return out;
}

std::vector<torch::Tensor> rows_backward(torch::Tensor dout, torch::Tensor src, c10::optional<torch::Tensor> bias,
                                         torch::Tensor cos, torch::Tensor sin, bool halves) {
  const RowSizes s = row_sizes(src, cos, halves);
  check(dout, "dout", 4); check(sin, "sin", 4);
  auto dsrc = torch::empty_like(src), dcos = torch::empty_like(cos), dsin = torch::empty_like(sin);
  auto dbias = src.new_empty({s.K, s.H, s.R, s.N});
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "mamba3_rows_backward", [&] {
    const scalar_t* b = nullptr;
    if (bias.has_value()) { check(*bias, "bias", 3); b = bias->data_ptr<scalar_t>(); }
    rows_backward_impl<scalar_t>(s, dout.data_ptr<scalar_t>(), src.data_ptr<scalar_t>(), b, cos.data_ptr<scalar_t>(),
                                 sin.data_ptr<scalar_t>(), dsrc.data_ptr<scalar_t>(), dbias.data_ptr<scalar_t>(),
                                 dcos.data_ptr<scalar_t>(), dsin.data_ptr<scalar_t>());
  });
  return {dsrc, dbias, dcos, dsin};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("intra_forward", &forward, "steps 1-2 per chunk and head: (y = (Lam o q k^T) v, U)");
  m.def("intra_backward", &backward, "adjoint of intra_forward: (dq, dk, dv, dcs, dg, dw)");
  m.def("state_to_output_forward", &state_to_output_forward, "step 4: y + exp(cs) E q");
  m.def("state_to_output_backward", &state_to_output_backward, "adjoint of step 4: (dcs, dq, dE)");
  m.def("rows_forward", &rows_forward, "the rotated, biased keys or queries of every head, in the chunk layout");
  m.def("rows_backward", &rows_backward, "adjoint of rows_forward: (dsrc, dbias per chunk, dcos, dsin)");
}
