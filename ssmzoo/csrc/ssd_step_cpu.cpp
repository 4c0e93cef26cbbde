// One token of SSD (Mamba-2's recurrent mode, ops/ssd/update.py) for every (batch, head), in one pass over the
// state: per head h of group g, with delta and decay = exp(delta A_h) given,
//     S' = decay S + (delta x) B_g^T,   y = S' C_g + D x
// The PyTorch form reads and writes the (batch, heads, headdim, d_state) state several times (scale, outer
// product, add, contraction); here each state row is read once, written once and contracted with C while it is
// in registers.
#include <torch/extension.h>

#include <cstdint>

template <typename T>
static void step_kernel(const T* x, const T* delta, const T* decay, const T* B, const T* C, const T* S, const T* D,
                        int64_t d_mode, T* y, T* S_out, int64_t batch, int64_t heads, int64_t groups, int64_t p,
                        int64_t n) {
  const int64_t per_group = heads / groups;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t bh = b * heads + h;
      const int64_t bg = b * groups + h / per_group;
      const T dec = decay[bh];
      const T del = delta[bh];
      const T* Bg = B + bg * n;
      const T* Cg = C + bg * n;
      for (int64_t i = 0; i < p; ++i) {
        const T xi = x[bh * p + i];
        const T dx = xi * del;
        const T* s = S + (bh * p + i) * n;
        T* out = S_out + (bh * p + i) * n;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < n; ++k) {
          const T v = s[k] * dec + dx * Bg[k];
          out[k] = v;
          acc += v * Cg[k];
        }
        const T d = d_mode == 0 ? T(0) : (d_mode == 1 ? D[h] : D[h * p + i]);
        y[bh * p + i] = acc + d * xi;
      }
    }
  }
}

// x (batch, heads, p); delta, decay (batch, heads); B, C (batch, groups, n); S (batch, heads, p, n); D empty,
// (heads,) or (heads, p); all contiguous, one floating dtype. Returns (y (batch, heads, p), S').
std::vector<torch::Tensor> step(torch::Tensor x, torch::Tensor delta, torch::Tensor decay, torch::Tensor B,
                                torch::Tensor C, torch::Tensor S, torch::Tensor D) {
  const int64_t batch = x.size(0), heads = x.size(1), p = x.size(2), groups = B.size(1), n = B.size(2);
  const int64_t d_mode = D.numel() == 0 ? 0 : (D.dim() == 1 ? 1 : 2);
  auto y = torch::empty_like(x);
  auto S_out = torch::empty_like(S);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ssd_step", [&] {
    step_kernel<scalar_t>(x.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), decay.data_ptr<scalar_t>(),
                          B.data_ptr<scalar_t>(), C.data_ptr<scalar_t>(), S.data_ptr<scalar_t>(),
                          d_mode ? D.data_ptr<scalar_t>() : nullptr, d_mode, y.data_ptr<scalar_t>(),
                          S_out.data_ptr<scalar_t>(), batch, heads, groups, p, n);
  });
  return {y, S_out};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, "one SSD token: (y, next state)");
}
