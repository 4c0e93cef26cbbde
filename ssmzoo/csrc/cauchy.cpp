// Conjugate-symmetric Cauchy kernel on CPU (OpenMP), forward and backward (S4, PAPERS.md):
//   out[m, l] = sum_n v[m,n] / (z[l] - w[m,n]) + conj(v[m,n]) / (z[l] - conj(w[m,n]))
// i.e. the Cauchy sum over all N state entries when only one of each conjugate pair is stored.
// Inputs are contiguous: v, w (M, N) complex, z (L,) complex, same dtype. Nothing is materialised
// beyond the (M, L) output and the (M, N) gradients.
#include <torch/extension.h>

#include <algorithm>
#include <complex>
#include <vector>

namespace {

// Positions per block of the forward: the sum over n runs outside, vectorised over a block of positions.
constexpr int64_t kBlockL = 64;

template <typename T>
void forward_kernel(const std::complex<T>* v, const std::complex<T>* w, const std::complex<T>* z,
                    std::complex<T>* out, int64_t M, int64_t N, int64_t L) {
  // v/(z-w) + conj(v)/(z-conj(w)) = 2 (z Re v - Re(v conj w)) / (z^2 - 2 Re(w) z + |w|^2):
  // one complex division per term instead of two, in real arithmetic (std::complex's operators call
  // libgcc's checked routines and keep loops scalar), vectorised over positions l.
  const T* zp = reinterpret_cast<const T*>(z);
  const int64_t blocks = (L + kBlockL - 1) / kBlockL;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t l0 = blk * kBlockL, nl = std::min(kBlockL, L - l0);
      alignas(64) T zr[kBlockL], zi[kBlockL], z2r[kBlockL], z2i[kBlockL], acc_re[kBlockL], acc_im[kBlockL];
      for (int64_t j = 0; j < nl; ++j) {
        zr[j] = zp[2 * (l0 + j)];
        zi[j] = zp[2 * (l0 + j) + 1];
        z2r[j] = zr[j] * zr[j] - zi[j] * zi[j];
        z2i[j] = T(2) * zr[j] * zi[j];
        acc_re[j] = acc_im[j] = T(0);
      }
      for (int64_t n = 0; n < N; ++n) {
        const T vr = v[m * N + n].real(), vi = v[m * N + n].imag();
        const T wr = w[m * N + n].real(), wi = w[m * N + n].imag();
        const T a = vr, b = vr * wr + vi * wi, tw = T(2) * wr, nw = wr * wr + wi * wi;
#pragma omp simd
        for (int64_t j = 0; j < nl; ++j) {
          const T num_r = zr[j] * a - b, num_i = zi[j] * a;
          const T den_r = z2r[j] - tw * zr[j] + nw, den_i = z2i[j] - tw * zi[j];
          const T inv = T(1) / (den_r * den_r + den_i * den_i);
          // num / den = num conj(den) / |den|^2
          acc_re[j] += (num_r * den_r + num_i * den_i) * inv;
          acc_im[j] += (num_i * den_r - num_r * den_i) * inv;
        }
      }
      for (int64_t j = 0; j < nl; ++j) out[m * L + l0 + j] = std::complex<T>(T(2) * acc_re[j], T(2) * acc_im[j]);
    }
  }
}

// With h = conj(grad_out) (torch's convention for complex gradients):
//   S1[m,n] = sum_l h_l / (z_l - w) + conj(h_l) / (conj(z_l) - w)
//   S2[m,n] = sum_l h_l / (z_l - w)^2 + conj(h_l) / (conj(z_l) - w)^2
//   grad_v = conj(S1), grad_w = conj(v S2).
// Written in real arithmetic, reciprocals as conj(d) / |d|^2 (as the forward): std::complex's division and
// product call libgcc's __divsc3 / __mulsc3 (scaling and NaN checks) per term and keep the loop scalar.
template <typename T>
void backward_kernel(const std::complex<T>* v, const std::complex<T>* w, const std::complex<T>* z,
                     const std::complex<T>* grad, std::complex<T>* grad_v, std::complex<T>* grad_w,
                     int64_t M, int64_t N, int64_t L) {
  const T* zp = reinterpret_cast<const T*>(z);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      const T wr = w[m * N + n].real(), wi = w[m * N + n].imag();
      const T* gp = reinterpret_cast<const T*>(grad + m * L);
      T s1r = 0, s1i = 0, s2r = 0, s2i = 0;
#pragma omp simd reduction(+ : s1r, s1i, s2r, s2i)
      for (int64_t l = 0; l < L; ++l) {
        const T zr = zp[2 * l], zi = zp[2 * l + 1], gr = gp[2 * l], gi = gp[2 * l + 1];
        // r1 = 1 / (z - w), r2 = 1 / (conj(z) - w)
        const T d1r = zr - wr, d1i = zi - wi, d2i = -zi - wi;
        const T n1 = T(1) / (d1r * d1r + d1i * d1i), n2 = T(1) / (d1r * d1r + d2i * d2i);
        const T r1r = d1r * n1, r1i = -d1i * n1, r2r = d1r * n2, r2i = -d2i * n2;
        // t1 = h r1 with h = conj(g); t2 = conj(h) r2 = g r2
        const T t1r = gr * r1r + gi * r1i, t1i = gr * r1i - gi * r1r;
        const T t2r = gr * r2r - gi * r2i, t2i = gr * r2i + gi * r2r;
        s1r += t1r + t2r;
        s1i += t1i + t2i;
        s2r += (t1r * r1r - t1i * r1i) + (t2r * r2r - t2i * r2i);
        s2i += (t1r * r1i + t1i * r1r) + (t2r * r2i + t2i * r2r);
      }
      const T vr = v[m * N + n].real(), vi = v[m * N + n].imag();
      grad_v[m * N + n] = std::complex<T>(s1r, -s1i);
      grad_w[m * N + n] = std::complex<T>(vr * s2r - vi * s2i, -(vr * s2i + vi * s2r));
    }
  }
}

void check(const torch::Tensor& v, const torch::Tensor& z, const torch::Tensor& w) {
  TORCH_CHECK(v.device().is_cpu() && z.device().is_cpu() && w.device().is_cpu(), "cauchy_cpu: CPU tensors only");
  TORCH_CHECK(v.dim() == 2 && w.sizes() == v.sizes() && z.dim() == 1, "cauchy_cpu: v, w (M, N) and z (L,)");
  TORCH_CHECK(v.is_contiguous() && w.is_contiguous() && z.is_contiguous(), "cauchy_cpu: contiguous inputs");
  TORCH_CHECK(v.scalar_type() == w.scalar_type() && v.scalar_type() == z.scalar_type(), "cauchy_cpu: one dtype");
  TORCH_CHECK(v.scalar_type() == torch::kComplexFloat || v.scalar_type() == torch::kComplexDouble,
              "cauchy_cpu: complex64 or complex128");
}

torch::Tensor cauchy_forward(torch::Tensor v, torch::Tensor z, torch::Tensor w) {
  check(v, z, w);
  const int64_t M = v.size(0), N = v.size(1), L = z.size(0);
  auto out = torch::empty({M, L}, v.options());
  if (v.scalar_type() == torch::kComplexDouble) {
    using C = std::complex<double>;
    forward_kernel<double>(reinterpret_cast<const C*>(v.data_ptr()), reinterpret_cast<const C*>(w.data_ptr()),
                           reinterpret_cast<const C*>(z.data_ptr()), reinterpret_cast<C*>(out.data_ptr()), M, N, L);
  } else {
    using C = std::complex<float>;
    forward_kernel<float>(reinterpret_cast<const C*>(v.data_ptr()), reinterpret_cast<const C*>(w.data_ptr()),
                          reinterpret_cast<const C*>(z.data_ptr()), reinterpret_cast<C*>(out.data_ptr()), M, N, L);
  }
  return out;
}

std::vector<torch::Tensor> cauchy_backward(torch::Tensor v, torch::Tensor z, torch::Tensor w, torch::Tensor grad) {
  check(v, z, w);
  const int64_t M = v.size(0), N = v.size(1), L = z.size(0);
  TORCH_CHECK(grad.sizes() == torch::IntArrayRef({M, L}) && grad.is_contiguous() &&
                  grad.scalar_type() == v.scalar_type(), "cauchy_cpu: grad must be contiguous (M, L) of v's dtype");
  auto grad_v = torch::empty_like(v);
  auto grad_w = torch::empty_like(w);
  if (v.scalar_type() == torch::kComplexDouble) {
    using C = std::complex<double>;
    backward_kernel<double>(reinterpret_cast<const C*>(v.data_ptr()), reinterpret_cast<const C*>(w.data_ptr()),
                            reinterpret_cast<const C*>(z.data_ptr()), reinterpret_cast<const C*>(grad.data_ptr()),
                            reinterpret_cast<C*>(grad_v.data_ptr()), reinterpret_cast<C*>(grad_w.data_ptr()), M, N, L);
  } else {
    using C = std::complex<float>;
    backward_kernel<float>(reinterpret_cast<const C*>(v.data_ptr()), reinterpret_cast<const C*>(w.data_ptr()),
                           reinterpret_cast<const C*>(z.data_ptr()), reinterpret_cast<const C*>(grad.data_ptr()),
                           reinterpret_cast<C*>(grad_v.data_ptr()), reinterpret_cast<C*>(grad_w.data_ptr()), M, N, L);
  }
  return {grad_v, grad_w};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &cauchy_forward, "conjugate-symmetric Cauchy kernel (CPU)");
  m.def("backward", &cauchy_backward, "gradients of the conjugate-symmetric Cauchy kernel (CPU)");
}
