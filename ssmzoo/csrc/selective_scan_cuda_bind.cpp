// Thin torch binding of the CUDA selective scan (selective_scan_cuda.cu, C interface in
// selective_scan_cuda.h). Same calling convention and outputs as the CPU kernel's binding
// (selective_scan_cpu.cpp), so ssmzoo/ops/selective_scan/autograd.py drives both; the gradients that
// the CPU kernel returns as partial sums come back here already reduced, with a leading axis of 1.
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <vector>

#include "selective_scan_cuda.h"

namespace {

void check(int err, const char* what) {
  TORCH_CHECK(err == 0, "selective_scan cuda: ", what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

const void* opt(const at::Tensor& t) { return t.numel() > 0 ? t.data_ptr() : nullptr; }

std::vector<at::Tensor> forward(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C,
                                at::Tensor Dskip, at::Tensor z, at::Tensor bias, at::Tensor h0,
                                bool use_softplus, int64_t groups, int64_t chunk) {
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2), state = A.size(1);
  TORCH_CHECK(state <= ssmzoo_selective_scan_max_state(), "selective_scan cuda: d_state must be at most ",
              ssmzoo_selective_scan_max_state());
  const int64_t nchunks = (length + chunk - 1) / chunk;
  auto y = at::empty_like(u);
  auto final_state = at::empty({batch, dim, state}, u.options());
  auto checkpoints = at::empty({batch, dim, nchunks, state}, u.options());
  SelectiveScanForwardParams p{batch, dim, length, state, groups, chunk, use_softplus ? 1 : 0,
                               u.data_ptr(), delta.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(),
                               Dskip.data_ptr(), opt(z), bias.data_ptr(), h0.data_ptr(),
                               y.data_ptr(), final_state.data_ptr(), checkpoints.data_ptr()};
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  if (u.scalar_type() == at::kFloat) {
    check(ssmzoo_selective_scan_forward_f32(&p, stream), "forward");
  } else {
    TORCH_CHECK(u.scalar_type() == at::kDouble, "selective_scan cuda: float32 or float64 only");
    check(ssmzoo_selective_scan_forward_f64(&p, stream), "forward");
  }
  return {y, final_state, checkpoints};
}

std::vector<at::Tensor> backward(at::Tensor u, at::Tensor delta, at::Tensor A, at::Tensor B, at::Tensor C,
                                 at::Tensor Dskip, at::Tensor z, at::Tensor bias, at::Tensor checkpoints,
                                 at::Tensor dy, at::Tensor dh_final, bool use_softplus, int64_t groups,
                                 int64_t chunk, int64_t /*slices: the CPU kernel's; atomics here*/) {
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2), state = A.size(1);
  auto du = at::empty_like(u);
  auto ddelta = at::empty_like(u);
  auto dz = z.numel() > 0 ? at::empty_like(z) : at::empty({0}, u.options());
  auto dA = at::zeros({1, dim, state}, u.options());
  auto dB = at::zeros_like(B).unsqueeze(0);
  auto dC = at::zeros_like(C).unsqueeze(0);
  auto dD = at::zeros({1, dim}, u.options());
  auto dbias = at::zeros({1, dim}, u.options());
  auto dh0 = at::empty({batch, dim, state}, u.options());
  auto workspace = at::empty({batch, dim, chunk, state}, u.options());
  SelectiveScanBackwardParams p{batch, dim, length, state, groups, chunk, use_softplus ? 1 : 0,
                                u.data_ptr(), delta.data_ptr(), A.data_ptr(), B.data_ptr(), C.data_ptr(),
                                Dskip.data_ptr(), opt(z), bias.data_ptr(), checkpoints.data_ptr(),
                                dy.data_ptr(), dh_final.data_ptr(),
                                du.data_ptr(), ddelta.data_ptr(), z.numel() > 0 ? dz.data_ptr() : nullptr,
                                dA.data_ptr(), dB.data_ptr(), dC.data_ptr(), dD.data_ptr(), dbias.data_ptr(),
                                dh0.data_ptr(), workspace.data_ptr()};
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  if (u.scalar_type() == at::kFloat) {
    check(ssmzoo_selective_scan_backward_f32(&p, stream), "backward");
  } else {
    check(ssmzoo_selective_scan_backward_f64(&p, stream), "backward");
  }
  return {du, ddelta, dz, dA, dB, dC, dD, dbias, dh0};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "selective scan forward (CUDA)");
  m.def("backward", &backward, "selective scan backward (CUDA)");
}
