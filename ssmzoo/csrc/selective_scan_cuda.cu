// Selective scan (Mamba, Gu & Dao 2023) in CUDA, torch-free behind the C launchers of
// selective_scan_cuda.h. The same algorithm as the CPU kernel (selective_scan_cpu.cpp):
//   h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t u_t B_t,  y_t = C_t · h_t + D u_t,  out_t = y_t silu(z_t)
// One thread per (batch, channel) walks L with its N states in registers (the state loop is unrolled
// up to a compile-time bound MAX_N, so h stays in registers). Forward saves the state before every
// chunk; backward recomputes each chunk's states from that checkpoint into a per-thread workspace and
// runs the adjoint recurrence dh_{t-1} = exp(Δ_t A) ⊙ (dh_t + dy_t C_t) backwards, accumulating
// the gradients shared across threads (dA, dB, dC, dD, dbias) with atomicAdd.
#include <cuda_runtime.h>
#include <stdint.h>

#include "selective_scan_cuda.h"

namespace {

constexpr int kThreads = 128;

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }

template <typename T>
__device__ __forceinline__ T softplus(T x) {
  return x > T(20) ? x : log1p_(exp_(x));
}

template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

struct Layout {
  int64_t batch, dim, length, state, groups, chunk, nchunks;
  __device__ int64_t bc_offset(int64_t b, int64_t d) const {
    return groups == 0 ? d * state : (b * groups + d / (dim / groups)) * length * state;
  }
  __device__ int64_t bc_tstride() const { return groups == 0 ? 0 : state; }
};

template <typename P>
Layout layout_of(const P& p) {
  Layout s{p.batch, p.dim, p.length, p.state, p.groups, p.chunk, (p.length + p.chunk - 1) / p.chunk};
  return s;
}

template <typename T, int MAX_N>
__global__ void forward_kernel(SelectiveScanForwardParams p, Layout s) {
  const int64_t bd = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (bd >= s.batch * s.dim) return;
  const int64_t b = bd / s.dim, d = bd % s.dim, N = s.state, L = s.length;
  const T* u = static_cast<const T*>(p.u) + bd * L;
  const T* delta = static_cast<const T*>(p.delta) + bd * L;
  const T* z = p.z ? static_cast<const T*>(p.z) + bd * L : nullptr;
  const T* A = static_cast<const T*>(p.A) + d * N;
  const T* B = static_cast<const T*>(p.B) + s.bc_offset(b, d);
  const T* C = static_cast<const T*>(p.C) + s.bc_offset(b, d);
  const T dskip = static_cast<const T*>(p.D)[d], bias = static_cast<const T*>(p.bias)[d];
  T* y = static_cast<T*>(p.y) + bd * L;
  T* ckpt = static_cast<T*>(p.checkpoints) + bd * s.nchunks * N;
  const int64_t ts = s.bc_tstride();

  T h[MAX_N], a_row[MAX_N];
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    h[n] = n < N ? static_cast<const T*>(p.h0)[bd * N + n] : T(0);
    a_row[n] = n < N ? A[n] : T(0);
  }
  for (int64_t t = 0; t < L; ++t) {
    if (t % s.chunk == 0) {
#pragma unroll
      for (int n = 0; n < MAX_N; ++n)
        if (n < N) ckpt[(t / s.chunk) * N + n] = h[n];
    }
    T dt = delta[t] + bias;
    if (p.softplus) dt = softplus(dt);
    const T du = dt * u[t];
    T acc = 0;
#pragma unroll
    for (int n = 0; n < MAX_N; ++n) {
      if (n < N) {
        h[n] = exp_(dt * a_row[n]) * h[n] + du * B[t * ts + n];
        acc += C[t * ts + n] * h[n];
      }
    }
    T out = acc + dskip * u[t];
    if (z) out *= z[t] * sigmoid(z[t]);
    y[t] = out;
  }
#pragma unroll
  for (int n = 0; n < MAX_N; ++n)
    if (n < N) static_cast<T*>(p.final_state)[bd * N + n] = h[n];
}

template <typename T, int MAX_N>
__global__ void backward_kernel(SelectiveScanBackwardParams p, Layout s) {
  const int64_t bd = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (bd >= s.batch * s.dim) return;
  const int64_t b = bd / s.dim, d = bd % s.dim, N = s.state, L = s.length, K = s.chunk;
  const T* u = static_cast<const T*>(p.u) + bd * L;
  const T* delta = static_cast<const T*>(p.delta) + bd * L;
  const T* z = p.z ? static_cast<const T*>(p.z) + bd * L : nullptr;
  const T* dy = static_cast<const T*>(p.dy) + bd * L;
  const T* A = static_cast<const T*>(p.A) + d * N;
  const T* B = static_cast<const T*>(p.B) + s.bc_offset(b, d);
  const T* C = static_cast<const T*>(p.C) + s.bc_offset(b, d);
  T* dB = static_cast<T*>(p.dB) + s.bc_offset(b, d);
  T* dC = static_cast<T*>(p.dC) + s.bc_offset(b, d);
  const T dskip = static_cast<const T*>(p.D)[d], bias = static_cast<const T*>(p.bias)[d];
  const T* ckpt = static_cast<const T*>(p.checkpoints) + bd * s.nchunks * N;
  T* ws = static_cast<T*>(p.workspace) + bd * K * N;  // this thread's recomputed states of one chunk
  T* du = static_cast<T*>(p.du) + bd * L;
  T* ddelta = static_cast<T*>(p.ddelta) + bd * L;
  T* dz = p.dz ? static_cast<T*>(p.dz) + bd * L : nullptr;
  const int64_t ts = s.bc_tstride();

  T dh[MAX_N], dA[MAX_N], a_row[MAX_N];
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    dh[n] = n < N ? static_cast<const T*>(p.dh_final)[bd * N + n] : T(0);
    dA[n] = T(0);
    a_row[n] = n < N ? A[n] : T(0);
  }
  T dskip_acc = 0, dbias_acc = 0;
  for (int64_t c = s.nchunks - 1; c >= 0; --c) {
    const int64_t t0 = c * K, t1 = min(L, t0 + K);
    {
      T h[MAX_N];
#pragma unroll
      for (int n = 0; n < MAX_N; ++n) h[n] = n < N ? ckpt[c * N + n] : T(0);
      for (int64_t t = t0; t < t1; ++t) {
        T dt = delta[t] + bias;
        if (p.softplus) dt = softplus(dt);
        const T dtu = dt * u[t];
#pragma unroll
        for (int n = 0; n < MAX_N; ++n) {
          if (n < N) {
            h[n] = exp_(dt * a_row[n]) * h[n] + dtu * B[t * ts + n];
            ws[(t - t0) * N + n] = h[n];
          }
        }
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const T raw = delta[t] + bias;
      const T dt = p.softplus ? softplus(raw) : raw;
      const T ut = u[t];
      const T* h = ws + (t - t0) * N;
      const T* hp = t > t0 ? h - N : ckpt + c * N;
      T gy = dy[t];
      if (z) {
        T yt = dskip * ut;
        for (int64_t n = 0; n < N; ++n) yt += C[t * ts + n] * h[n];
        const T sz = sigmoid(z[t]);
        dz[t] = gy * yt * sz * (T(1) + z[t] * (T(1) - sz));
        gy *= z[t] * sz;
      }
      dskip_acc += gy * ut;
      T du_acc = gy * dskip, ddt = 0;
#pragma unroll
      for (int n = 0; n < MAX_N; ++n) {
        if (n < N) {
          const T Bn = B[t * ts + n];
          atomicAdd(dC + t * ts + n, gy * h[n]);
          const T g = dh[n] + gy * C[t * ts + n];  // total adjoint of h_t
          atomicAdd(dB + t * ts + n, g * dt * ut);
          const T a = exp_(dt * a_row[n]);
          const T ah = a * hp[n];
          ddt += g * (Bn * ut + a_row[n] * ah);
          du_acc += g * dt * Bn;
          dA[n] += g * dt * ah;
          dh[n] = a * g;
        }
      }
      du[t] = du_acc;
      if (p.softplus) ddt *= sigmoid(raw);  // softplus' = sigmoid
      ddelta[t] = ddt;
      dbias_acc += ddt;
    }
  }
#pragma unroll
  for (int n = 0; n < MAX_N; ++n) {
    if (n < N) {
      static_cast<T*>(p.dh0)[bd * N + n] = dh[n];
      atomicAdd(static_cast<T*>(p.dA) + d * N + n, dA[n]);
    }
  }
  atomicAdd(static_cast<T*>(p.dD) + d, dskip_acc);
  atomicAdd(static_cast<T*>(p.dbias) + d, dbias_acc);
}

constexpr int kMaxState = 64;

template <typename T, int MAX_N>
int launch_forward(const SelectiveScanForwardParams* p, cudaStream_t stream) {
  const Layout s = layout_of(*p);
  const int64_t blocks = (s.batch * s.dim + kThreads - 1) / kThreads;
  forward_kernel<T, MAX_N><<<(unsigned)blocks, kThreads, 0, stream>>>(*p, s);
  return (int)cudaGetLastError();
}

template <typename T, int MAX_N>
int launch_backward(const SelectiveScanBackwardParams* p, cudaStream_t stream) {
  const Layout s = layout_of(*p);
  const int64_t blocks = (s.batch * s.dim + kThreads - 1) / kThreads;
  backward_kernel<T, MAX_N><<<(unsigned)blocks, kThreads, 0, stream>>>(*p, s);
  return (int)cudaGetLastError();
}

// The smallest compiled state bound that fits N, so registers are not wasted on padding.
template <typename T, typename Params, int (*F16)(const Params*, cudaStream_t),
          int (*F64)(const Params*, cudaStream_t)>
int by_state(const Params* p, void* stream) {
  if (p->state < 1 || p->state > kMaxState || p->chunk < 1 || p->length < 1) return (int)cudaErrorInvalidValue;
  if (p->groups < 0 || (p->groups > 0 && p->dim % p->groups != 0)) return (int)cudaErrorInvalidValue;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return p->state <= 16 ? F16(p, s) : F64(p, s);
}

}  // namespace

extern "C" {

int ssmzoo_selective_scan_max_state(void) { return kMaxState; }

int ssmzoo_selective_scan_forward_f32(const SelectiveScanForwardParams* p, void* stream) {
  return by_state<float, SelectiveScanForwardParams, launch_forward<float, 16>, launch_forward<float, 64>>(p, stream);
}

int ssmzoo_selective_scan_forward_f64(const SelectiveScanForwardParams* p, void* stream) {
  return by_state<double, SelectiveScanForwardParams, launch_forward<double, 16>, launch_forward<double, 64>>(p, stream);
}

int ssmzoo_selective_scan_backward_f32(const SelectiveScanBackwardParams* p, void* stream) {
  return by_state<float, SelectiveScanBackwardParams, launch_backward<float, 16>, launch_backward<float, 64>>(p, stream);
}

int ssmzoo_selective_scan_backward_f64(const SelectiveScanBackwardParams* p, void* stream) {
  return by_state<double, SelectiveScanBackwardParams, launch_backward<double, 16>, launch_backward<double, 64>>(p, stream);
}

}  // extern "C"
