// Selective scan (Mamba, Gu & Dao 2023) on CPU: fused discretisation, scan, output and gating.
//
// Per (batch b, channel d), with Δ_t = softplus(δ_t + bias) (or δ_t + bias):
//   h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t,   y_t = C_t · h_t + D u_t,   out_t = y_t silu(z_t)
// The state h (N values) lives in a stack array; the inner loops run over N contiguous (B and C
// are passed as (..., L, N)), so the compiler vectorises them (exp is a polynomial it can SIMD).
// Forward saves only the state at the start of every chunk; backward walks the chunks in reverse,
// recomputes the chunk's states from its checkpoint and runs the adjoint recurrence
//   dh_{t-1} = exp(Δ_t A) ⊙ (dh_t + dy_t C_t)
// so nothing of size (batch, D, L, N) is ever stored.
// Packed documents (`doc`, (batch, L) document ids, or none): the state restarts at every document start
// from that document's initial state (h0 then holds one state per document), and each document's final
// state is its state at its last token; the backward resets the adjoint the same way.
// Layouts (made contiguous by the Python binding, ssmzoo/ops/selective_scan/cpu.py):
//   u, delta, z, y: (batch, D, L); A: (D, N); D, delta_bias: (D,); states: (batch, D, N)
//   B, C: groups == 0 -> (D, N) time-invariant; groups = G >= 1 -> (batch, G, L, N)
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_math.h"

namespace {

constexpr int64_t kMaxState = 256;

using ssmzoo_cpu::exp_poly;
using ssmzoo_cpu::sigmoid;
using ssmzoo_cpu::softplus;

// Δ_t = softplus(δ_t + bias) (or δ_t + bias) for a whole row, in one vectorised pass; also the
// derivative dΔ/dδ = sigmoid(δ_t + bias) when `slope` is given.
template <typename T>
void discretisation_steps(const T* delta, int64_t length, T bias, bool use_softplus, T* dt, T* slope) {
  if (!use_softplus) {
#pragma omp simd
    for (int64_t t = 0; t < length; ++t) dt[t] = delta[t] + bias;
    if (slope != nullptr) std::fill(slope, slope + length, T(1));
    return;
  }
#pragma omp simd
  for (int64_t t = 0; t < length; ++t) dt[t] = softplus(delta[t] + bias);
  if (slope != nullptr) {
#pragma omp simd
    for (int64_t t = 0; t < length; ++t) slope[t] = sigmoid(delta[t] + bias);
  }
}

struct Dims {
  int64_t batch, dim, length, state, groups, chunk, nchunks;
  const int64_t* doc;  // (batch, length) document ids, or nullptr: one document per row
  // The document of token t of row b, and whether t starts / ends one.
  int64_t doc_of(int64_t b, int64_t t) const { return doc != nullptr ? doc[b * length + t] : b; }
  bool starts(int64_t b, int64_t t) const { return doc != nullptr && t > 0 && doc[b * length + t] != doc[b * length + t - 1]; }
  bool ends(int64_t b, int64_t t) const {
    return doc != nullptr && t + 1 < length && doc[b * length + t + 1] != doc[b * length + t];
  }
  int64_t channels_per_group() const { return groups > 0 ? dim / groups : 1; }
  // Offset of B_t / C_t (t = 0) for (b, d), and the stride between consecutive t.
  int64_t bc_offset(int64_t b, int64_t d) const {
    return groups == 0 ? d * state : (b * groups + d / channels_per_group()) * length * state;
  }
  int64_t bc_tstride() const { return groups == 0 ? 0 : state; }
};

template <typename T>
void forward_kernel(const T* u, const T* delta, const T* A, const T* B, const T* C, const T* Dskip,
                    const T* z, const T* bias, const T* h0, bool use_softplus, const Dims& s, T* y,
                    T* final_state, T* checkpoints) {
  const int64_t N = s.state, L = s.length;
  const int64_t tstride = s.bc_tstride();
#pragma omp parallel for collapse(2) schedule(static) num_threads(at::get_num_threads())
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t d = 0; d < s.dim; ++d) {
      const int64_t row = (b * s.dim + d) * L;
      const T* Ad = A + d * N;
      const T* Bp = B + s.bc_offset(b, d);
      const T* Cp = C + s.bc_offset(b, d);
      const T dskip = Dskip[d], db = bias[d];
      T h[kMaxState];
      const T* h0d = h0 + (s.doc_of(b, 0) * s.dim + d) * N;
      std::copy(h0d, h0d + N, h);
      T* ckpt = checkpoints + (b * s.dim + d) * s.nchunks * N;
      T* dts = y + row;  // Δ for the row, overwritten by y as the scan goes
      discretisation_steps(delta + row, L, db, use_softplus, dts, static_cast<T*>(nullptr));
      for (int64_t t = 0; t < L; ++t) {
        if (s.starts(b, t)) {  // a document starts: its own initial state enters
          h0d = h0 + (s.doc_of(b, t) * s.dim + d) * N;
          std::copy(h0d, h0d + N, h);
        }
        if (t % s.chunk == 0) std::copy(h, h + N, ckpt + (t / s.chunk) * N);
        const T dt = dts[t];
        const T du = dt * u[row + t];
        const T* Bt = Bp + t * tstride;
        const T* Ct = Cp + t * tstride;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) {
          h[n] = exp_poly(dt * Ad[n]) * h[n] + du * Bt[n];
          acc += Ct[n] * h[n];
        }
        y[row + t] = acc + dskip * u[row + t];
        if (s.ends(b, t)) std::copy(h, h + N, final_state + (s.doc_of(b, t) * s.dim + d) * N);
      }
      if (z != nullptr) {
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) y[row + t] *= z[row + t] * sigmoid(z[row + t]);
      }
      std::copy(h, h + N, final_state + (s.doc_of(b, L - 1) * s.dim + d) * N);
    }
  }
}

// Gradient buffers that several (b, d) pairs would share (dA, dD, d bias over the batch; dB, dC over
// the channels of a group) are written per (b, d) or per (slice of channels, b) and summed in Python.
template <typename T>
void backward_kernel(const T* u, const T* delta, const T* A, const T* B, const T* C, const T* Dskip,
                     const T* z, const T* bias, const T* h0, const T* checkpoints, const T* dy,
                     const T* dh_final, bool use_softplus, const Dims& s, int64_t slices, T* du, T* ddelta,
                     T* dz, T* dA_part, T* dB_part, T* dC_part, T* dD_part, T* dbias_part, T* dh0) {
  const int64_t N = s.state, L = s.length, K = s.chunk;
  const int64_t tstride = s.bc_tstride();
  const int64_t per_slice = (s.dim + slices - 1) / slices;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    std::vector<T> hbuf(K * N), abuf(K * N), dts(s.length), slopes(s.length), gates(z != nullptr ? s.length : 0);
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t sl = 0; sl < slices; ++sl) {
      for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t d = sl * per_slice; d < std::min(s.dim, (sl + 1) * per_slice); ++d) {
          const int64_t bd = b * s.dim + d;
          const int64_t row = bd * L;
          const T* Ad = A + d * N;
          const T* Bp = B + s.bc_offset(b, d);
          const T* Cp = C + s.bc_offset(b, d);
          // Time-varying dB, dC go to this slice's own copy; time-invariant ones to (b, d)'s row.
          const int64_t grad_offset = s.groups == 0 ? bd * N : sl * s.batch * s.groups * L * N + s.bc_offset(b, d);
          T* dBp = dB_part + grad_offset;
          T* dCp = dC_part + grad_offset;
          T* dA = dA_part + bd * N;
          const T dskip = Dskip[d], db = bias[d];
          T dh[kMaxState];
          const T* dh_end = dh_final + (s.doc_of(b, L - 1) * s.dim + d) * N;
          std::copy(dh_end, dh_end + N, dh);
          T dskip_acc = 0, dbias_acc = 0;
          const T* ckpt = checkpoints + bd * s.nchunks * N;
          discretisation_steps(delta + row, L, db, use_softplus, dts.data(), slopes.data());
          if (z != nullptr) {
#pragma omp simd
            for (int64_t t = 0; t < L; ++t) gates[t] = sigmoid(z[row + t]);
          }
          for (int64_t c = s.nchunks - 1; c >= 0; --c) {
            const int64_t t0 = c * K, t1 = std::min(L, t0 + K);
            // Recompute this chunk's decays and states from its checkpoint.
            const T* hprev = ckpt + c * N;  // the state entering t0 (after any reset there)
            for (int64_t t = t0; t < t1; ++t) {
              if (t > t0 && s.starts(b, t)) hprev = h0 + (s.doc_of(b, t) * s.dim + d) * N;
              const T dt = dts[t];
              const T dtu = dt * u[row + t];
              const T* Bt = Bp + t * tstride;
              T* a = abuf.data() + (t - t0) * N;
              T* h = hbuf.data() + (t - t0) * N;
#pragma omp simd
              for (int64_t n = 0; n < N; ++n) {
                a[n] = exp_poly(dt * Ad[n]);
                h[n] = a[n] * hprev[n] + dtu * Bt[n];
              }
              hprev = h;
            }
            for (int64_t t = t1 - 1; t >= t0; --t) {
              const T dt = dts[t], ut = u[row + t];
              const T* Bt = Bp + t * tstride;
              const T* Ct = Cp + t * tstride;
              T* dBt = dBp + t * tstride;
              T* dCt = dCp + t * tstride;
              const T* a = abuf.data() + (t - t0) * N;
              const T* h = hbuf.data() + (t - t0) * N;
              const T* hp = t == t0 ? ckpt + c * N : s.starts(b, t) ? h0 + (s.doc_of(b, t) * s.dim + d) * N : h - N;
              if (s.ends(b, t)) {  // the next token starts another document: h_t reaches only this final state
                const T* dh_end = dh_final + (s.doc_of(b, t) * s.dim + d) * N;
                std::copy(dh_end, dh_end + N, dh);
              }
              T gy = dy[row + t];
              if (z != nullptr) {
                T yt = 0;
#pragma omp simd reduction(+ : yt)
                for (int64_t n = 0; n < N; ++n) yt += Ct[n] * h[n];
                yt += dskip * ut;
                const T zt = z[row + t], sz = gates[t];
                dz[row + t] = gy * yt * sz * (T(1) + zt * (T(1) - sz));
                gy *= zt * sz;
              }
              dskip_acc += gy * ut;
              T du_acc = gy * dskip, ddt = 0;
              const T dtu = dt * ut;
#pragma omp simd reduction(+ : du_acc, ddt)
              for (int64_t n = 0; n < N; ++n) {
                dCt[n] += gy * h[n];
                const T g = dh[n] + gy * Ct[n];  // total adjoint of h_t
                dBt[n] += g * dtu;
                const T ah = a[n] * hp[n];
                ddt += g * (Bt[n] * ut + Ad[n] * ah);
                du_acc += g * dt * Bt[n];
                dA[n] += g * dt * ah;
                dh[n] = a[n] * g;
              }
              du[row + t] = du_acc;
              ddt *= slopes[t];  // dΔ/dδ: softplus' = sigmoid, or 1
              ddelta[row + t] = ddt;
              dbias_acc += ddt;
              if (s.starts(b, t)) std::copy(dh, dh + N, dh0 + (s.doc_of(b, t) * s.dim + d) * N);
            }
          }
          std::copy(dh, dh + N, dh0 + (s.doc_of(b, 0) * s.dim + d) * N);
          dD_part[bd] = dskip_acc;
          dbias_part[bd] = dbias_acc;
        }
      }
    }
  }
}

Dims make_dims(const at::Tensor& u, const at::Tensor& A, const at::Tensor& B, int64_t groups, int64_t chunk,
               const at::Tensor& doc) {
  Dims s;
  s.doc = doc.numel() > 0 ? doc.data_ptr<int64_t>() : nullptr;
  s.batch = u.size(0);
  s.dim = u.size(1);
  s.length = u.size(2);
  s.state = A.size(1);
  s.groups = groups;
  s.chunk = chunk;
  s.nchunks = (s.length + chunk - 1) / chunk;
  TORCH_CHECK(s.state <= kMaxState, "selective_scan_cpu: d_state must be at most ", kMaxState);
  TORCH_CHECK(chunk >= 1, "selective_scan_cpu: chunk must be positive");
  TORCH_CHECK(doc.numel() == 0 || (doc.scalar_type() == at::kLong && doc.is_contiguous() && doc.dim() == 2 &&
                                   doc.size(0) == s.batch && doc.size(1) == s.length),
              "selective_scan_cpu: doc must be empty or a contiguous (batch, length) int64 tensor");
  return s;
}

template <typename T>
T* opt_ptr(const at::Tensor& t) {
  return t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

// Returns y, final_state (one per document: h0's leading size), checkpoints (batch, D, nchunks, N). An empty z
// means no gating; an empty doc, one document per row.
std::vector<at::Tensor> forward_documents(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C,
                                          at::Tensor Dskip, at::Tensor z, at::Tensor bias, at::Tensor h0,
                                          bool use_softplus, int64_t groups, int64_t chunk, at::Tensor doc) {
  const Dims s = make_dims(u, A, B, groups, chunk, doc);
  TORCH_CHECK(h0.size(0) == (s.doc != nullptr ? s.doc[s.batch * s.length - 1] + 1 : s.batch),
              "selective_scan_cpu: h0 must hold one state per document");
  auto y = at::empty_like(u);
  auto final_state = at::empty({h0.size(0), s.dim, s.state}, u.options());
  auto checkpoints = at::empty({s.batch, s.dim, s.nchunks, s.state}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_forward", [&] {
    forward_kernel<scalar_t>(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
                             B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), Dskip.data_ptr<scalar_t>(),
                             opt_ptr<scalar_t>(z), bias.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(),
                             use_softplus, s, y.data_ptr<scalar_t>(), final_state.data_ptr<scalar_t>(),
                             checkpoints.data_ptr<scalar_t>());
  });
  return {y, final_state, checkpoints};
}

// Returns du, ddelta, dz, dA_part (batch, D, N), dB_part, dC_part, dD_part (batch, D),
// dbias_part (batch, D), dh0 (dh_final's shape: one per document). dB/dC parts are (batch, D, N) for
// groups == 0, else (slices, batch, G, L, N). h0 is read at document starts only (empty without doc).
std::vector<at::Tensor> backward_documents(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C,
                                           at::Tensor Dskip, at::Tensor z, at::Tensor bias, at::Tensor h0,
                                           at::Tensor checkpoints, at::Tensor dy, at::Tensor dh_final,
                                           bool use_softplus, int64_t groups, int64_t chunk, int64_t slices,
                                           at::Tensor doc) {
  const Dims s = make_dims(u, A, B, groups, chunk, doc);
  TORCH_CHECK(s.doc == nullptr || h0.sizes() == dh_final.sizes(), "selective_scan_cpu: h0 must be dh_final's shape");
  auto du = at::empty_like(u);
  auto ddelta = at::empty_like(u);
  auto dz = z.numel() > 0 ? at::empty_like(z) : at::empty({0}, u.options());
  auto dA_part = at::zeros({s.batch, s.dim, s.state}, u.options());
  at::Tensor dB_part, dC_part;
  if (groups == 0) {
    slices = 1;
    dB_part = at::zeros({s.batch, s.dim, s.state}, u.options());
  } else {
    slices = std::max<int64_t>(1, std::min(slices, s.dim));
    dB_part = at::zeros({slices, s.batch, s.groups, s.length, s.state}, u.options());
  }
  dC_part = at::zeros_like(dB_part);
  auto dD_part = at::empty({s.batch, s.dim}, u.options());
  auto dbias_part = at::empty({s.batch, s.dim}, u.options());
  auto dh0 = at::empty_like(dh_final);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_cpu_backward", [&] {
    backward_kernel<scalar_t>(
        u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(),
        C.data_ptr<scalar_t>(), Dskip.data_ptr<scalar_t>(), opt_ptr<scalar_t>(z), bias.data_ptr<scalar_t>(),
        opt_ptr<scalar_t>(h0), checkpoints.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>(),
        dh_final.data_ptr<scalar_t>(), use_softplus, s, slices, du.data_ptr<scalar_t>(), ddelta.data_ptr<scalar_t>(),
        opt_ptr<scalar_t>(dz), dA_part.data_ptr<scalar_t>(), dB_part.data_ptr<scalar_t>(),
        dC_part.data_ptr<scalar_t>(), dD_part.data_ptr<scalar_t>(), dbias_part.data_ptr<scalar_t>(),
        dh0.data_ptr<scalar_t>());
  });
  return {du, ddelta, dz, dA_part, dB_part, dC_part, dD_part, dbias_part, dh0};
}

// The calling convention shared with the CUDA and Triton kernels (one document per row).
std::vector<at::Tensor> forward(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C,
                                at::Tensor Dskip, at::Tensor z, at::Tensor bias, at::Tensor h0,
                                bool use_softplus, int64_t groups, int64_t chunk) {
  return forward_documents(u, delta, A, B, C, Dskip, z, bias, h0, use_softplus, groups, chunk, u.new_empty({0}).to(at::kLong));
}

std::vector<at::Tensor> backward(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C,
                                 at::Tensor Dskip, at::Tensor z, at::Tensor bias, at::Tensor checkpoints,
                                 at::Tensor dy, at::Tensor dh_final, bool use_softplus, int64_t groups,
                                 int64_t chunk, int64_t slices) {
  const auto none = u.new_empty({0});
  return backward_documents(u, delta, A, B, C, Dskip, z, bias, none, checkpoints, dy, dh_final, use_softplus, groups,
                            chunk, slices, none.to(at::kLong));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "selective scan forward (CPU)");
  m.def("backward", &backward, "selective scan backward (CPU)");
  m.def("forward_documents", &forward_documents, "selective scan forward over packed documents (CPU)");
  m.def("backward_documents", &backward_documents, "selective scan backward over packed documents (CPU)");
}
