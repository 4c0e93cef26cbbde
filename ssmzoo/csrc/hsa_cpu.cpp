// HSA chunk attention on CPU (Hu et al. 2025, ssmzoo/ops/hsa/reference.py), chunk-major.
//
// The (query, head, slot) entries of one block of queries arrive sorted by segment (batch, KV head,
// chunk). One thread takes a whole segment: it copies the chunk's keys and values once into
// zero-padded tiles that stay in cache (K and V as (S, D16), their transposes as (d, S16); D16, S16
// are d, S rounded up to 16), then takes the segment's entries TILE at a time:
//   P = softmax(Q K^T)   (Q pre-scaled),   O = P V
// Every product is one micro-kernel, out (TILE × C16) = X (TILE × J) · Y (J × C16), whose TILE × 16
// accumulators stay in registers while one 16-wide row of Y is loaded per step; the backward's
// dK += dS^T Q and dV += P^T dO_w are one more, a rank-TILE update of a (S × D16) accumulator.
// Outputs go to the entry's own row (no two threads write one row); the Python side sums the K slots
// of a query with their weights. The backward recomputes P and, per entry,
//   dw = dO · o,   go = w dO,   dS = P ∘ (go V^T − w dw),   dq = dS K,   dK += dS^T q,   dV += P^T go
// accumulating dK, dV of the segment in a thread-local tile added once into the chunk's gradient.
// Layouts (contiguous, made by ssmzoo/ops/hsa/cpu.py):
//   q, dout: (rows, d); chunks k, v, dk, dv: (segments, S, d); entries: (N,) entry ids sorted by
//   segment, entry = row * K + slot; bounds: (M + 1,) offsets of the M non-empty segments in entries,
//   seg: (M,) their ids; w, dw: (rows * K,); o, dq: (rows * K, d).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t TILE = 4;   // entries per micro-kernel call
constexpr int64_t VEC = 16;   // columns per register block

inline int64_t round_up(int64_t x) { return (x + VEC - 1) / VEC * VEC; }

// e^x for x <= 0 as 2^k · 2^f, |f| <= 1/2, with 2^f = e^{f ln 2} by its Taylor series to degree 7
// (relative error < 1e-8): straight-line code, so loops calling it vectorise. Float only; double
// uses std::exp to keep its precision.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.4426950408889634f;
  const float k = std::floor(t + 0.5f);
  const float y = (t - k) * 0.6931471805599453f;
  float p = 1.0f / 5040.0f;
  p = p * y + 1.0f / 720.0f;
  p = p * y + 1.0f / 120.0f;
  p = p * y + 1.0f / 24.0f;
  p = p * y + 1.0f / 6.0f;
  p = p * y + 0.5f;
  p = p * y + 1.0f;
  p = p * y + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(two_k));
  return p * two_k;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// out[i][0:C] = Σ_j x[i][j] y[j][0:C] for i < TILE; x rows have stride ldx, y and out have C columns.
template <typename T>
inline void tile_mm(const T* x, int64_t ldx, const T* y, int64_t J, int64_t C, T* out) {
  for (int64_t c0 = 0; c0 < C; c0 += VEC) {
    T acc[TILE][VEC] = {};
    for (int64_t j = 0; j < J; ++j) {
      const T* yj = y + j * C + c0;
#pragma GCC unroll 4
      for (int64_t i = 0; i < TILE; ++i) {
        const T xij = x[i * ldx + j];
#pragma omp simd
        for (int64_t c = 0; c < VEC; ++c) acc[i][c] += xij * yj[c];
      }
    }
    for (int64_t i = 0; i < TILE; ++i) std::memcpy(out + i * C + c0, acc[i], sizeof(acc[i]));
  }
}

// acc[s][0:C] += Σ_i a[i][s] x[i][0:C] for s < J; a rows have stride lda, x and acc have C columns.
template <typename T>
inline void tile_rank_update(const T* a, int64_t lda, const T* x, int64_t J, int64_t C, T* acc) {
  for (int64_t s = 0; s < J; ++s) {
    for (int64_t c0 = 0; c0 < C; c0 += VEC) {
      T sum[VEC];
      std::memcpy(sum, acc + s * C + c0, sizeof(sum));
#pragma GCC unroll 4
      for (int64_t i = 0; i < TILE; ++i) {
        const T ais = a[i * lda + s];
        const T* xi = x + i * C + c0;
#pragma omp simd
        for (int64_t c = 0; c < VEC; ++c) sum[c] += ais * xi[c];
      }
      std::memcpy(acc + s * C + c0, sum, sizeof(sum));
    }
  }
}

// Softmax over the first S of the S16 columns of each of the TILE rows of p, in place; the padding
// columns become 0.
template <typename T>
inline void softmax_rows(T* p, int64_t S, int64_t S16) {
  for (int64_t i = 0; i < TILE; ++i) {
    T* row = p + i * S16;
    T top = -std::numeric_limits<T>::infinity();
    for (int64_t s = 0; s < S; ++s) top = std::max(top, row[s]);
    T total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t s = 0; s < S; ++s) {
      row[s] = exp_nonpositive(row[s] - top);
      total += row[s];
    }
    const T inv = T(1) / total;
#pragma omp simd
    for (int64_t s = 0; s < S; ++s) row[s] *= inv;
    std::fill(row + S, row + S16, T(0));
  }
}

// The chunk's tiles: kp, vp (S, D16) and kt, vt (d, S16), zero-padded.
template <typename T>
struct ChunkTiles {
  int64_t S, d, S16, D16;
  std::vector<T> kp, vp, kt, vt;
  ChunkTiles(int64_t S_, int64_t d_)
      : S(S_), d(d_), S16(round_up(S_)), D16(round_up(d_)),
        kp(S_ * D16), vp(S_ * D16), kt(d_ * S16), vt(d_ * S16) {}
  void load(const T* k, const T* v) {
    for (int64_t s = 0; s < S; ++s)
      for (int64_t j = 0; j < d; ++j) {
        kp[s * D16 + j] = k[s * d + j];
        vp[s * D16 + j] = v[s * d + j];
        kt[j * S16 + s] = k[s * d + j];
        vt[j * S16 + s] = v[s * d + j];
      }
  }
};

// The tile's rows of a (rows, d) tensor into a zero-padded (TILE, D16) buffer; missing rows are 0.
template <typename T>
inline void gather_rows(const T* src, const int64_t* entries, int64_t count, int64_t K, int64_t d, int64_t D16,
                        T* dst) {
  std::fill(dst, dst + TILE * D16, T(0));
  for (int64_t i = 0; i < count; ++i) std::memcpy(dst + i * D16, src + (entries[i] / K) * d, d * sizeof(T));
}

template <typename T>
void forward_impl(const T* q, const T* k, const T* v, const int64_t* entries, const int64_t* bounds,
                  const int64_t* seg, int64_t segments, int64_t S, int64_t d, int64_t K, T* o) {
#pragma omp parallel num_threads(at::get_num_threads())
  {
    ChunkTiles<T> c(S, d);
    std::vector<T> qt(TILE * c.D16), p(TILE * c.S16), ot(TILE * c.D16);
#pragma omp for schedule(dynamic, 1)
    for (int64_t m = 0; m < segments; ++m) {
      c.load(k + seg[m] * S * d, v + seg[m] * S * d);
      for (int64_t i0 = bounds[m]; i0 < bounds[m + 1]; i0 += TILE) {
        const int64_t count = std::min(TILE, bounds[m + 1] - i0);
        gather_rows(q, entries + i0, count, K, d, c.D16, qt.data());
        tile_mm(qt.data(), c.D16, c.kt.data(), d, c.S16, p.data());
        softmax_rows(p.data(), S, c.S16);
        tile_mm(p.data(), c.S16, c.vp.data(), S, c.D16, ot.data());
        for (int64_t i = 0; i < count; ++i) std::memcpy(o + entries[i0 + i] * d, ot.data() + i * c.D16, d * sizeof(T));
      }
    }
  }
}

template <typename T>
void backward_impl(const T* q, const T* k, const T* v, const T* w, const T* dout, const int64_t* entries,
                   const int64_t* bounds, const int64_t* seg, int64_t segments, int64_t S, int64_t d, int64_t K,
                   T* dq, T* dw, T* dk, T* dv) {
#pragma omp parallel num_threads(at::get_num_threads())
  {
    ChunkTiles<T> c(S, d);
    const int64_t S16 = c.S16, D16 = c.D16;
    std::vector<T> qt(TILE * D16), dot(TILE * D16), go(TILE * D16), ot(TILE * D16), dqt(TILE * D16);
    std::vector<T> p(TILE * S16), ds(TILE * S16), dk_acc(S * D16), dv_acc(S * D16);
#pragma omp for schedule(dynamic, 1)
    for (int64_t m = 0; m < segments; ++m) {
      c.load(k + seg[m] * S * d, v + seg[m] * S * d);
      std::fill(dk_acc.begin(), dk_acc.end(), T(0));
      std::fill(dv_acc.begin(), dv_acc.end(), T(0));
      for (int64_t i0 = bounds[m]; i0 < bounds[m + 1]; i0 += TILE) {
        const int64_t count = std::min(TILE, bounds[m + 1] - i0);
        const int64_t* e = entries + i0;
        gather_rows(q, e, count, K, d, D16, qt.data());
        gather_rows(dout, e, count, K, d, D16, dot.data());  // missing rows: dO = 0, so they add nothing
        tile_mm(qt.data(), D16, c.kt.data(), d, S16, p.data());
        softmax_rows(p.data(), S, S16);
        tile_mm(p.data(), S16, c.vp.data(), S, D16, ot.data());
        T row_term[TILE] = {};
        for (int64_t i = 0; i < TILE; ++i) {
          const T we = i < count ? w[e[i]] : T(0);
          T dwe = 0;
#pragma omp simd reduction(+ : dwe)
          for (int64_t j = 0; j < D16; ++j) dwe += dot[i * D16 + j] * ot[i * D16 + j];
          if (i < count) dw[e[i]] = dwe;  // ∂L/∂w = dO · o_chunk
#pragma omp simd
          for (int64_t j = 0; j < D16; ++j) go[i * D16 + j] = we * dot[i * D16 + j];  // ∂L/∂o_chunk
          row_term[i] = we * dwe;  // rowsum(go ∘ o)
        }
        tile_mm(go.data(), D16, c.vt.data(), d, S16, ds.data());  // go V^T
        for (int64_t i = 0; i < TILE; ++i) {
#pragma omp simd
          for (int64_t s = 0; s < S16; ++s) ds[i * S16 + s] = p[i * S16 + s] * (ds[i * S16 + s] - row_term[i]);
        }
        tile_mm(ds.data(), S16, c.kp.data(), S, D16, dqt.data());  // dq = dS K (the caller applies the scale)
        for (int64_t i = 0; i < count; ++i) std::memcpy(dq + e[i] * d, dqt.data() + i * D16, d * sizeof(T));
        tile_rank_update(ds.data(), S16, qt.data(), S, D16, dk_acc.data());
        tile_rank_update(p.data(), S16, go.data(), S, D16, dv_acc.data());
      }
      T* dkc = dk + seg[m] * S * d;
      T* dvc = dv + seg[m] * S * d;
      for (int64_t s = 0; s < S; ++s)
        for (int64_t j = 0; j < d; ++j) {
          dkc[s * d + j] += dk_acc[s * D16 + j];
          dvc[s * d + j] += dv_acc[s * D16 + j];
        }
    }
  }
}

void check(const torch::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), name, " must be a contiguous CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " has the wrong dtype");
}

// o (rows * K, d), zero where no entry wrote.
torch::Tensor forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor entries, torch::Tensor bounds,
                      torch::Tensor seg, int64_t K) {
  const auto dtype = q.scalar_type();
  for (auto* t : {&q, &k, &v}) check(*t, "q, k, v", dtype);
  for (auto* t : {&entries, &bounds, &seg}) check(*t, "entries, bounds, seg", at::kLong);
  const int64_t S = k.size(1), d = k.size(2);
  auto o = torch::zeros({q.size(0) * K, d}, q.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "hsa_cpu_forward", [&] {
    forward_impl<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                           entries.data_ptr<int64_t>(), bounds.data_ptr<int64_t>(), seg.data_ptr<int64_t>(),
                           seg.size(0), S, d, K, o.data_ptr<scalar_t>());
  });
  return o;
}

// (dq per entry (rows * K, d), dw (rows * K,)); adds the chunks' gradients into dk, dv.
std::vector<torch::Tensor> backward(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor w,
                                    torch::Tensor dout, torch::Tensor entries, torch::Tensor bounds,
                                    torch::Tensor seg, int64_t K, torch::Tensor dk, torch::Tensor dv) {
  const auto dtype = q.scalar_type();
  for (auto* t : {&q, &k, &v, &w, &dout, &dk, &dv}) check(*t, "q, k, v, w, dout, dk, dv", dtype);
  for (auto* t : {&entries, &bounds, &seg}) check(*t, "entries, bounds, seg", at::kLong);
  const int64_t S = k.size(1), d = k.size(2);
  auto dq = torch::zeros({q.size(0) * K, d}, q.options());
  auto dw = torch::zeros({q.size(0) * K}, q.options());
  AT_DISPATCH_FLOATING_TYPES(dtype, "hsa_cpu_backward", [&] {
    backward_impl<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                            w.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(), entries.data_ptr<int64_t>(),
                            bounds.data_ptr<int64_t>(), seg.data_ptr<int64_t>(), seg.size(0), S, d, K,
                            dq.data_ptr<scalar_t>(), dw.data_ptr<scalar_t>(), dk.data_ptr<scalar_t>(),
                            dv.data_ptr<scalar_t>());
  });
  return {dq, dw};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "HSA chunk attention forward (CPU)");
  m.def("backward", &backward, "HSA chunk attention backward (CPU)");
}
