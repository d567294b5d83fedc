// Runs fibsparse forward and backward once (after one warm-up) on random
// data and prints what it computed: the program Nsight tools attach to.
//
//   fibsparse_driver [seqlen=16384] [heads=16] [head_dim=64] [window=128] [fractional=0]
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../fibsparse_api.h"

#ifdef FIBSPARSE_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace {

// Fibonacci distances from `window` up to `max_distance` (alpha 1).
std::vector<double> fibonacci_offsets(int64_t window, int64_t max_distance) {
  std::vector<double> offsets;
  for (int64_t a = 1, b = 2; a <= max_distance; b += a, a = b - a) {
    if (a >= window) offsets.push_back(double(a));
  }
  return offsets;
}

void synchronize(const at::Device& device) {
#ifdef FIBSPARSE_WITH_CUDA
  if (device.is_cuda()) at::cuda::getCurrentCUDAStream().synchronize();
#endif
}

}  // namespace

int main(int argc, char** argv) {
  const auto arg = [&](int i, int64_t fallback) { return argc > i ? std::atoll(argv[i]) : fallback; };
  const int64_t seqlen = arg(1, 16384), heads = arg(2, 16), head_dim = arg(3, 64), window = arg(4, 128);
  const bool fractional = arg(5, 0) != 0;

#ifdef FIBSPARSE_WITH_CUDA
  const bool cuda = at::hasCUDA();
#else
  const bool cuda = false;
#endif
  const at::Device device = cuda ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  const auto options = at::TensorOptions().device(device).dtype(cuda ? at::kBFloat16 : at::kFloat);

  at::manual_seed(0);
  const at::Tensor q = at::randn({1, seqlen, heads, head_dim}, options);
  const at::Tensor k = at::randn({1, seqlen, heads, head_dim}, options);
  const at::Tensor v = at::randn({1, seqlen, heads, head_dim}, options);
  const at::Tensor dout = at::randn({1, seqlen, heads, head_dim}, options);
  const auto distances = fibonacci_offsets(window, seqlen);
  at::Tensor offsets = at::tensor(distances, at::TensorOptions().dtype(at::kDouble)).to(device);
  offsets = fractional ? (offsets * 0.97).to(at::kFloat) : offsets.to(at::kInt);
  const double scale = 1.0 / std::sqrt(double(head_dim));

  std::printf("fibsparse_driver: %s, seqlen %lld, heads %lld, head_dim %lld, window %lld, %zu %s offsets\n",
              cuda ? "CUDA bf16" : "CPU float32", (long long)seqlen, (long long)heads, (long long)head_dim,
              (long long)window, distances.size(), fractional ? "fractional" : "integer");
  const std::vector<int64_t> band = {window};  // the ops' band argument: [window]
  for (int run = 0; run < 2; ++run) {  // run 0 warms up
    const auto start = std::chrono::steady_clock::now();
    const auto [out, lse] = fibsparse::fwd(q, k, v, offsets, band, scale);
    synchronize(device);
    const auto middle = std::chrono::steady_clock::now();
    const auto [dq, dk, dv, doffsets] = fibsparse::bwd(dout, q, k, v, out, lse, std::nullopt, offsets, band, scale);
    synchronize(device);
    const auto end = std::chrono::steady_clock::now();
    if (run == 1) {
      const auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
      std::printf("forward %.3f ms, backward %.3f ms (one run, wall clock; use bench/ for timings)\n",
                  ms(start, middle), ms(middle, end));
      std::printf("checksums: out %.6g  lse %.6g  dq %.6g  dk %.6g  dv %.6g\n",
                  out.to(at::kDouble).abs().sum().item<double>(), lse.to(at::kDouble).sum().item<double>(),
                  dq.to(at::kDouble).abs().sum().item<double>(), dk.to(at::kDouble).abs().sum().item<double>(),
                  dv.to(at::kDouble).abs().sum().item<double>());
    }
  }
  return 0;
}
