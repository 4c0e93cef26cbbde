// The gated delta rule's chunked form on CPU (Yang, Kautz, Hatamizadeh, arXiv 2412.06464; the math and the
// PyTorch twin are in ssmzoo/ops/gated_delta/chunked.py): forward, and an exact backward that recomputes each
// chunk's factors from the inputs and the saved chunk states instead of storing them.
//
// One OpenMP work item is one (batch row, value head): it runs that head's chunks in order (forward) or in
// reverse (backward), the state in a per-thread buffer. Per chunk of T tokens, entered with state E (K, V):
//   γ = cumsum(g),  Γ_ij = exp(γ_i − γ_j) (j <= i),  e = exp(γ),  f = exp(γ_T − γ)
//   M = strict_lower(diag(β) K Kᵀ ∘ Γ),  [U | W] = (I + M)⁻¹ [diag(β) V | diag(β e) K]   (forward substitution)
//   Δ = U − W E,  O = diag(e) Q E + (Q Kᵀ ∘ Γ) Δ,  S = e_T E + (diag(f) K)ᵀ Δ
// (Q already multiplied by the scale). The backward is this chain's adjoint, term by term (see chunk_backward).
// Products go to BLAS (cpu_blas.h), single-threaded inside the parallel region; exponentials are cpu_math.h's
// branch-free exp, with decays floored at exp(FLOOR) as in ssd (no subnormal slow path).
//
// Layouts (contiguous; Lp = nchunks · T tokens per row, the chunk layout of ops/chunks.py):
//   q, k (B, Lp, Hk, K); v, o, do (B, Lp, Hv, V); g, beta (B, Lp, Hv); starts (B, nchunks) bool;
//   init (B, nchunks, Hv, K, V) or empty; S (B, nchunks, Hv, K, V) every chunk's end state;
//   dq, dk (B, Lp, Hv, K): per value head (the caller sums the heads that share a key head).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_blas.h"
#include "cpu_math.h"

namespace {

using ssmzoo_cpu::mm;

template <typename T>
constexpr T kFloor = sizeof(T) == 4 ? T(-60) : T(-600);

template <typename T>
inline T decay(T x) {
  return ssmzoo_cpu::exp_poly(std::max(x, kFloor<T>));
}

struct Dims {
  int64_t B, Lp, n, T, Hk, Hv, K, V;
  int64_t group() const { return Hv / Hk; }
  int64_t qk(int64_t b, int64_t t, int64_t hk) const { return ((b * Lp + t) * Hk + hk) * K; }
  int64_t vo(int64_t b, int64_t t, int64_t h) const { return ((b * Lp + t) * Hv + h) * V; }
  int64_t gb(int64_t b, int64_t t, int64_t h) const { return (b * Lp + t) * Hv + h; }
  int64_t dqk(int64_t b, int64_t t, int64_t h) const { return ((b * Lp + t) * Hv + h) * K; }
  int64_t state(int64_t b, int64_t c, int64_t h) const { return ((b * n + c) * Hv + h) * K * V; }
};

// One thread's buffers: a chunk's inputs (contiguous) and factors.
template <typename T>
struct Chunk {
  int64_t t, k, v, kv;  // T, K, V, K + V
  std::vector<T> Q, Kc, Vc, beta, gam, e, f, KK, Gam, M, G, X, Delta, Qe, Kf;
  Chunk(int64_t T_, int64_t K, int64_t V)
      : t(T_), k(K), v(V), kv(K + V), Q(T_ * K), Kc(T_ * K), Vc(T_ * V), beta(T_), gam(T_), e(T_), f(T_),
        KK(T_ * T_), Gam(T_ * T_), M(T_ * T_), G(T_ * T_), X(T_ * (K + V)), Delta(T_ * V), Qe(T_ * K), Kf(T_ * K) {}
  const T* U() const { return X.data(); }
  const T* W() const { return X.data() + v; }
};

// Load chunk c of (b, h) and compute its factors with entering state E: everything but the output.
template <typename T>
void chunk_factors(const Dims& d, Chunk<T>& w, const T* q, const T* k, const T* v, const T* g, const T* beta, T scale,
                   int64_t b, int64_t c, int64_t h, const T* E) {
  const int64_t Tn = d.T, K = d.K, V = d.V, KV = w.kv, hk = h / d.group();
  T acc = 0;
  for (int64_t i = 0; i < Tn; ++i) {
    const int64_t t = c * Tn + i;
    const T* qr = q + d.qk(b, t, hk);
    const T* kr = k + d.qk(b, t, hk);
    const T* vr = v + d.vo(b, t, h);
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) {
      w.Q[i * K + j] = scale * qr[j];
      w.Kc[i * K + j] = kr[j];
    }
    std::copy(vr, vr + V, w.Vc.data() + i * V);
    w.beta[i] = beta[d.gb(b, t, h)];
    acc += g[d.gb(b, t, h)];
    w.gam[i] = acc;
  }
  const T last = w.gam[Tn - 1];
  for (int64_t i = 0; i < Tn; ++i) {
    w.e[i] = decay(w.gam[i]);
    w.f[i] = decay(last - w.gam[i]);
  }
  mm<T>(false, true, Tn, Tn, K, 1, w.Kc.data(), K, w.Kc.data(), K, 0, w.KK.data(), Tn);
  mm<T>(false, true, Tn, Tn, K, 1, w.Q.data(), K, w.Kc.data(), K, 0, w.G.data(), Tn);
  for (int64_t i = 0; i < Tn; ++i) {
    const T gi = w.gam[i], bi = w.beta[i];
    T* Gam = w.Gam.data() + i * Tn;
    T* M = w.M.data() + i * Tn;
    T* G = w.G.data() + i * Tn;
    const T* KK = w.KK.data() + i * Tn;
#pragma omp simd
    for (int64_t j = 0; j <= i; ++j) Gam[j] = decay(gi - w.gam[j]);
#pragma omp simd
    for (int64_t j = 0; j < i; ++j) M[j] = bi * KK[j] * Gam[j];
#pragma omp simd
    for (int64_t j = 0; j <= i; ++j) G[j] *= Gam[j];
    std::fill(M + i, M + Tn, T(0));
    std::fill(G + i + 1, G + Tn, T(0));
    std::fill(Gam + i + 1, Gam + Tn, T(0));
  }
  // [U | W] = (I + M)⁻¹ [diag(β) V | diag(β e) K], by forward substitution row by row.
  for (int64_t i = 0; i < Tn; ++i) {
    T* Xi = w.X.data() + i * KV;
    const T bv = w.beta[i], bk = w.beta[i] * w.e[i];
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) Xi[j] = bv * w.Vc[i * V + j];
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) Xi[V + j] = bk * w.Kc[i * K + j];
    for (int64_t j = 0; j < i; ++j) {
      const T m = w.M[i * Tn + j];
      const T* Xj = w.X.data() + j * KV;
#pragma omp simd
      for (int64_t p = 0; p < KV; ++p) Xi[p] -= m * Xj[p];
    }
  }
  // Δ = U − W E
  for (int64_t i = 0; i < Tn; ++i) std::copy(w.X.data() + i * KV, w.X.data() + i * KV + V, w.Delta.data() + i * V);
  mm<T>(false, false, Tn, V, K, -1, w.W(), KV, E, V, 1, w.Delta.data(), V);
  for (int64_t i = 0; i < Tn; ++i) {
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) {
      w.Qe[i * K + j] = w.e[i] * w.Q[i * K + j];
      w.Kf[i * K + j] = w.f[i] * w.Kc[i * K + j];
    }
  }
}

template <typename T>
void forward_kernel(const Dims& d, const T* q, const T* k, const T* v, const T* g, const T* beta, const T* init,
                    const bool* starts, T scale, T* o, T* S) {
  const int64_t Tn = d.T, K = d.K, V = d.V, ldo = d.Hv * V;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    Chunk<T> w(Tn, K, V);
    std::vector<T> E(K * V);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < d.B * d.Hv; ++item) {
      const int64_t b = item / d.Hv, h = item % d.Hv;
      for (int64_t c = 0; c < d.n; ++c) {
        if (starts[b * d.n + c]) {
          if (init != nullptr) std::copy(init + d.state(b, c, h), init + d.state(b, c, h) + K * V, E.begin());
          else std::fill(E.begin(), E.end(), T(0));
        }
        chunk_factors(d, w, q, k, v, g, beta, scale, b, c, h, E.data());
        T* out = o + d.vo(b, c * Tn, h);
        mm<T>(false, false, Tn, V, K, 1, w.Qe.data(), K, E.data(), V, 0, out, ldo);
        mm<T>(false, false, Tn, V, Tn, 1, w.G.data(), Tn, w.Delta.data(), V, 1, out, ldo);
        T* Sc = S + d.state(b, c, h);
        const T eT = w.e[Tn - 1];
        for (int64_t p = 0; p < K * V; ++p) Sc[p] = eT * E[p];
        mm<T>(true, false, K, V, Tn, 1, w.Kf.data(), K, w.Delta.data(), V, 1, Sc, V);
        std::copy(Sc, Sc + K * V, E.begin());
      }
    }
  }
}

template <typename T>
struct Adjoint {
  std::vector<T> dO, dDelta, dG, R, DOE, DDS, Y, dM, dQ, dK, dgam, dE, dS, carry, E;
  Adjoint(int64_t Tn, int64_t K, int64_t V)
      : dO(Tn * V), dDelta(Tn * V), dG(Tn * Tn), R(Tn * Tn), DOE(Tn * K), DDS(Tn * K), Y(Tn * (K + V)),
        dM(Tn * Tn), dQ(Tn * K), dK(Tn * K), dgam(Tn), dE(K * V), dS(K * V), carry(K * V), E(K * V) {}
};

template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t p = 0; p < n; ++p) acc += a[p] * b[p];
  return acc;
}

// The adjoint of one chunk: given dO (in a.dO) and dS (the gradient of its end state, in a.dS), the
// gradients of its inputs (written to the outputs) and of its entering state (a.dE).
template <typename T>
void chunk_backward(const Dims& d, Chunk<T>& w, Adjoint<T>& a, T scale, int64_t b, int64_t c, int64_t h, T* dq,
                    T* dk, T* dv, T* dg, T* dbeta) {
  const int64_t Tn = d.T, K = d.K, V = d.V, KV = w.kv;
  const T* E = a.E.data();
  const T eT = w.e[Tn - 1];
  // O = Qe E + G Δ and S = e_T E + Kfᵀ Δ:  dΔ = Gᵀ dO + Kf dS,  dE = Qeᵀ dO + e_T dS − Wᵀ dΔ.
  mm<T>(true, false, Tn, V, Tn, 1, w.G.data(), Tn, a.dO.data(), V, 0, a.dDelta.data(), V);
  mm<T>(false, false, Tn, V, K, 1, w.Kf.data(), K, a.dS.data(), V, 1, a.dDelta.data(), V);
  mm<T>(true, false, K, V, Tn, 1, w.Qe.data(), K, a.dO.data(), V, 0, a.dE.data(), V);
  for (int64_t p = 0; p < K * V; ++p) a.dE[p] += eT * a.dS[p];
  mm<T>(true, false, K, V, Tn, -1, w.W(), KV, a.dDelta.data(), V, 1, a.dE.data(), V);
  // G = (Q Kᵀ) ∘ Γ: dG = dO Δᵀ; R collects dG ∘ G (the log-decay adjoint), dG becomes dG ∘ Γ.
  mm<T>(false, true, Tn, Tn, V, 1, a.dO.data(), V, w.Delta.data(), V, 0, a.dG.data(), Tn);
  for (int64_t i = 0; i < Tn; ++i) {
    T* dGi = a.dG.data() + i * Tn;
    T* Ri = a.R.data() + i * Tn;
    const T* Gi = w.G.data() + i * Tn;
    const T* Gami = w.Gam.data() + i * Tn;
#pragma omp simd
    for (int64_t j = 0; j <= i; ++j) {
      Ri[j] = dGi[j] * Gi[j];
      dGi[j] *= Gami[j];
    }
    std::fill(dGi + i + 1, dGi + Tn, T(0));
  }
  // Qe = e ∘ Q, Kf = f ∘ K:  DOE = dO Eᵀ, DDS = Δ dSᵀ.
  mm<T>(false, true, Tn, K, V, 1, a.dO.data(), V, E, V, 0, a.DOE.data(), K);
  mm<T>(false, true, Tn, K, V, 1, w.Delta.data(), V, a.dS.data(), V, 0, a.DDS.data(), K);
  mm<T>(false, false, Tn, K, Tn, 1, a.dG.data(), Tn, w.Kc.data(), K, 0, a.dQ.data(), K);
  mm<T>(true, false, Tn, K, Tn, 1, a.dG.data(), Tn, w.Q.data(), K, 0, a.dK.data(), K);
  T to_last = eT * dot(E, a.dS.data(), K * V);
  for (int64_t i = 0; i < Tn; ++i) {
    const T ai = w.e[i] * dot(w.Q.data() + i * K, a.DOE.data() + i * K, K);
    const T bi = w.f[i] * dot(w.Kc.data() + i * K, a.DDS.data() + i * K, K);
    a.dgam[i] = ai - bi;
    to_last += bi;
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) {
      a.dQ[i * K + j] += w.e[i] * a.DOE[i * K + j];
      a.dK[i * K + j] += w.f[i] * a.DDS[i * K + j];
    }
  }
  a.dgam[Tn - 1] += to_last;
  // Δ = U − W E with [U | W] = (I + M)⁻¹ [Bv | Bk]: Y = [dΔ | −dΔ Eᵀ], then [dBv | dBk] = (I + M)⁻ᵀ Y by back
  // substitution, and dM = −strict_lower([dBv | dBk] [U | W]ᵀ).
  for (int64_t i = 0; i < Tn; ++i) std::copy(a.dDelta.data() + i * V, a.dDelta.data() + i * V + V, a.Y.data() + i * KV);
  mm<T>(false, true, Tn, K, V, -1, a.dDelta.data(), V, E, V, 0, a.Y.data() + V, KV);
  for (int64_t i = Tn - 1; i > 0; --i) {
    const T* Yi = a.Y.data() + i * KV;
    for (int64_t j = 0; j < i; ++j) {
      const T m = w.M[i * Tn + j];
      T* Yj = a.Y.data() + j * KV;
#pragma omp simd
      for (int64_t p = 0; p < KV; ++p) Yj[p] -= m * Yi[p];
    }
  }
  mm<T>(false, true, Tn, Tn, KV, -1, a.Y.data(), KV, w.X.data(), KV, 0, a.dM.data(), Tn);
  // M_ij = β_i (k_i·k_j) Γ_ij (j < i): dβ_i += Σ_j dM_ij (k_i·k_j) Γ_ij, d(k_i·k_j) = dM_ij β_i Γ_ij (into dM,
  // for dK += D K + Dᵀ K), and R += dM ∘ M.
  for (int64_t i = 0; i < Tn; ++i) {
    T* dMi = a.dM.data() + i * Tn;
    T* Ri = a.R.data() + i * Tn;
    const T* Mi = w.M.data() + i * Tn;
    const T* KKi = w.KK.data() + i * Tn;
    const T* Gami = w.Gam.data() + i * Tn;
    const T bi = w.beta[i];
    T dbeta_i = 0;
#pragma omp simd reduction(+ : dbeta_i)
    for (int64_t j = 0; j < i; ++j) {
      dbeta_i += dMi[j] * KKi[j] * Gami[j];
      Ri[j] += dMi[j] * Mi[j];
      dMi[j] *= bi * Gami[j];
    }
    std::fill(dMi + i, dMi + Tn, T(0));
    // Bv = diag(β) V, Bk = diag(β e) K
    const T* dBv = a.Y.data() + i * KV;
    const T* dBk = dBv + V;
    const T kdBk = dot(w.Kc.data() + i * K, dBk, K);
    dbeta_i += dot(w.Vc.data() + i * V, dBv, V) + w.e[i] * kdBk;
    a.dgam[i] += bi * w.e[i] * kdBk;
    const T bk = bi * w.e[i];
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) a.dK[i * K + j] += bk * dBk[j];
    const int64_t t = c * Tn + i;
    T* dvr = dv + d.vo(b, t, h);
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) dvr[j] = bi * dBv[j];
    dbeta[d.gb(b, t, h)] = dbeta_i;
  }
  mm<T>(false, false, Tn, K, Tn, 1, a.dM.data(), Tn, w.Kc.data(), K, 1, a.dK.data(), K);
  mm<T>(true, false, Tn, K, Tn, 1, a.dM.data(), Tn, w.Kc.data(), K, 1, a.dK.data(), K);
  // Γ_ij = exp(γ_i − γ_j): dγ_i += Σ_j R_ij, dγ_j −= Σ_i R_ij; then g's gradient is the reverse cumsum of dγ.
  for (int64_t i = 0; i < Tn; ++i) {
    const T* Ri = a.R.data() + i * Tn;
    T row = 0;
    for (int64_t j = 0; j <= i; ++j) {
      row += Ri[j];
      a.dgam[j] -= Ri[j];
    }
    a.dgam[i] += row;
  }
  T acc = 0;
  for (int64_t i = Tn - 1; i >= 0; --i) {
    acc += a.dgam[i];
    const int64_t t = c * Tn + i;
    dg[d.gb(b, t, h)] = acc;
    T* dqr = dq + d.dqk(b, t, h);
    T* dkr = dk + d.dqk(b, t, h);
#pragma omp simd
    for (int64_t j = 0; j < K; ++j) {
      dqr[j] = scale * a.dQ[i * K + j];
      dkr[j] = a.dK[i * K + j];
    }
  }
}

template <typename T>
void backward_kernel(const Dims& d, const T* q, const T* k, const T* v, const T* g, const T* beta, const T* init,
                     const bool* starts, const T* S, const T* dO, const T* dS, T scale, T* dq, T* dk, T* dv, T* dg,
                     T* dbeta, T* dinit) {
  const int64_t Tn = d.T, K = d.K, V = d.V, KV = K * V;
#pragma omp parallel num_threads(at::get_num_threads())
  {
    Chunk<T> w(Tn, K, V);
    Adjoint<T> a(Tn, K, V);
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < d.B * d.Hv; ++item) {
      const int64_t b = item / d.Hv, h = item % d.Hv;
      std::fill(a.carry.begin(), a.carry.end(), T(0));
      for (int64_t c = d.n - 1; c >= 0; --c) {
        const bool fresh = starts[b * d.n + c];
        if (!fresh) std::copy(S + d.state(b, c - 1, h), S + d.state(b, c - 1, h) + KV, a.E.begin());
        else if (init != nullptr) std::copy(init + d.state(b, c, h), init + d.state(b, c, h) + KV, a.E.begin());
        else std::fill(a.E.begin(), a.E.end(), T(0));
        const T* dSc = dS + d.state(b, c, h);
        for (int64_t p = 0; p < KV; ++p) a.dS[p] = dSc[p] + a.carry[p];
        for (int64_t i = 0; i < Tn; ++i) {
          const T* src = dO + d.vo(b, c * Tn + i, h);
          std::copy(src, src + V, a.dO.data() + i * V);
        }
        chunk_factors(d, w, q, k, v, g, beta, scale, b, c, h, a.E.data());
        chunk_backward(d, w, a, scale, b, c, h, dq, dk, dv, dg, dbeta);
        if (fresh) {
          if (dinit != nullptr) std::copy(a.dE.begin(), a.dE.end(), dinit + d.state(b, c, h));
          std::fill(a.carry.begin(), a.carry.end(), T(0));
        } else {
          std::copy(a.dE.begin(), a.dE.end(), a.carry.begin());
        }
      }
    }
  }
}

void check(const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.device().is_cpu(), "gated_delta_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), "gated_delta_cpu: ", name, " must be contiguous");
  TORCH_CHECK(t.dim() == dim, "gated_delta_cpu: ", name, " must have ", dim, " dims");
}

Dims dims_of(const torch::Tensor& q, const torch::Tensor& v, const torch::Tensor& starts, int64_t chunk) {
  return {q.size(0), q.size(1), starts.size(1), chunk, q.size(2), v.size(2), q.size(3), v.size(3)};
}

std::vector<torch::Tensor> forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor g,
                                   torch::Tensor beta, torch::Tensor init, torch::Tensor starts, double scale,
                                   int64_t chunk) {
  check(q, "q", 4); check(k, "k", 4); check(v, "v", 4); check(g, "g", 3); check(beta, "beta", 3);
  check(starts, "starts", 2);
  TORCH_CHECK(starts.scalar_type() == torch::kBool, "gated_delta_cpu: starts must be bool");
  const Dims d = dims_of(q, v, starts, chunk);
  TORCH_CHECK(d.Lp == d.n * d.T, "gated_delta_cpu: the length must be nchunks * chunk");
  const bool has_init = init.numel() > 0;
  if (has_init) check(init, "init", 5);
  auto o = torch::empty_like(v);
  auto S = v.new_empty({d.B, d.n, d.Hv, d.K, d.V});
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gated_delta_cpu_forward", [&] {
    forward_kernel<scalar_t>(d, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                             g.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                             has_init ? init.data_ptr<scalar_t>() : nullptr, starts.data_ptr<bool>(),
                             static_cast<scalar_t>(scale), o.data_ptr<scalar_t>(), S.data_ptr<scalar_t>());
  });
  return {o, S};
}

std::vector<torch::Tensor> backward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor g,
                                    torch::Tensor beta, torch::Tensor init, torch::Tensor starts, torch::Tensor S,
                                    torch::Tensor dO, torch::Tensor dS, double scale, int64_t chunk) {
  check(q, "q", 4); check(k, "k", 4); check(v, "v", 4); check(g, "g", 3); check(beta, "beta", 3);
  check(starts, "starts", 2); check(S, "S", 5); check(dO, "dO", 4); check(dS, "dS", 5);
  const Dims d = dims_of(q, v, starts, chunk);
  const bool has_init = init.numel() > 0;
  if (has_init) check(init, "init", 5);
  auto dq = q.new_empty({d.B, d.Lp, d.Hv, d.K}), dk = q.new_empty({d.B, d.Lp, d.Hv, d.K});
  auto dv = torch::empty_like(v), dg = torch::empty_like(g), dbeta = torch::empty_like(beta);
  auto dinit = has_init ? torch::zeros_like(init) : torch::empty({0}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gated_delta_cpu_backward", [&] {
    backward_kernel<scalar_t>(d, q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                              g.data_ptr<scalar_t>(), beta.data_ptr<scalar_t>(),
                              has_init ? init.data_ptr<scalar_t>() : nullptr, starts.data_ptr<bool>(),
                              S.data_ptr<scalar_t>(), dO.data_ptr<scalar_t>(), dS.data_ptr<scalar_t>(),
                              static_cast<scalar_t>(scale), dq.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                              dv.data_ptr<scalar_t>(), dg.data_ptr<scalar_t>(), dbeta.data_ptr<scalar_t>(),
                              has_init ? dinit.data_ptr<scalar_t>() : nullptr);
  });
  return {dq, dk, dv, dg, dbeta, dinit};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "gated delta rule, chunked: (o, chunk end states)");
  m.def("backward", &backward, "its adjoint: (dq, dk per value head, dv, dg, dbeta, dinit)");
}
