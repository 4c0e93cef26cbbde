// C interface of the CUDA selective scan (csrc/selective_scan_cuda.cu): raw pointers and sizes only,
// so the kernel file compiles with plain nvcc and no torch. All arrays are contiguous:
//   u, delta, z, y, du, ddelta, dz, dy: (batch, dim, length); A, dA: (dim, state);
//   D, bias, dD, dbias: (dim,); h0, final_state, dh_final, dh0: (batch, dim, state);
//   B, C, dB, dC: groups == 0 -> (dim, state); groups = G >= 1 -> (batch, G, length, state);
//   checkpoints: (batch, dim, nchunks, state), the state before each chunk of `chunk` steps;
//   workspace (backward): batch * dim * chunk * state elements.
// Gradient outputs dA, dB, dC, dD, dbias are accumulated (atomically) and must be zeroed first.
#pragma once
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int64_t batch, dim, length, state, groups, chunk;
  int softplus;
  const void *u, *delta, *A, *B, *C, *D, *z, *bias, *h0;  // z may be NULL (no gate)
  void *y, *final_state, *checkpoints;
} SelectiveScanForwardParams;

typedef struct {
  int64_t batch, dim, length, state, groups, chunk;
  int softplus;
  const void *u, *delta, *A, *B, *C, *D, *z, *bias, *checkpoints, *dy, *dh_final;
  void *du, *ddelta, *dz, *dA, *dB, *dC, *dD, *dbias, *dh0, *workspace;
} SelectiveScanBackwardParams;

// Each returns a cudaError_t as int (0 = success); `stream` is a cudaStream_t (NULL: default stream).
int ssmzoo_selective_scan_forward_f32(const SelectiveScanForwardParams* p, void* stream);
int ssmzoo_selective_scan_forward_f64(const SelectiveScanForwardParams* p, void* stream);
int ssmzoo_selective_scan_backward_f32(const SelectiveScanBackwardParams* p, void* stream);
int ssmzoo_selective_scan_backward_f64(const SelectiveScanBackwardParams* p, void* stream);
// The largest state size the kernels support (64: the state lives in registers).
int ssmzoo_selective_scan_max_state(void);

#ifdef __cplusplus
}
#endif
