// CUDA kernels of roi_align_avg (see csrc/cpu/roi_align_avg_cpu.cpp for why the op is separable).
//
// Three steps per call:
//   1. roi_align_avg_weights_kernel: one thread per (RoI, axis) writes the dense 1-D weights
//      Wy[k, 0:H], Wx[k, 0:W] (already divided by P*grid) and the support range of each.
//   2. roi_align_avg_forward_kernel: one block per (RoI, channel tile). NCHW: a warp per channel,
//      lanes along a support row (coalesced), rows weighted by Wy, warp reduction. NHWC: a thread
//      per channel, looping over the support pixels (coalesced across channels).
//   3. roi_align_avg_backward_kernel: the same walk, scattering g[k, c] * Wy[y] * Wx[x] with
//      atomicAdd into an opmath (float/double) buffer: not deterministic in the summation order, so
//      the Python wrapper takes the reference path under torch.use_deterministic_algorithms(True).
// All offsets are int64 (K*C*P*P and N*C*H*W may exceed 2^31); math in at::opmath_type (float for
// half/bfloat16); launches on the current stream under a device guard.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "cuda_helpers.cuh"
#include "relground/checks.h"
#include "relground/op_host.h"
#include "relground/roi_align_weights.h"

namespace relground {

namespace {

using cuda::ceil_div;
using cuda::kThreadsPerBlock;
using cuda::kWarpSize;
using cuda::kWarpsPerBlock;

// Step 1. Thread t handles RoI t / 2 along axis t % 2 (0: y over `height`, 1: x over `width`), a
// serial loop over its P*grid samples so that the weights are summed in a fixed order.
// support[k] = (y_lo, y_hi, x_lo, x_hi), inclusive; an empty axis has lo > hi.
// It also checks the RoI's values on the device (the CPU checks them on the host, check_roi_align_avg_rois):
// finite coordinates that stay finite once scaled, and (the y thread) an integer batch index in [0, batch_size).
// Steps 2 and 3 index `input` by that batch index and run after this kernel on the same stream, so a failed check
// stops them (a device-side assert ends the context's work).
template <typename scalar_t, typename acc_t>
__global__ void roi_align_avg_weights_kernel(const scalar_t* __restrict__ rois, int64_t num_rois,
                                             int64_t pooled_height, int64_t pooled_width, acc_t spatial_scale,
                                             int64_t sampling_ratio, bool aligned, int64_t batch_size,
                                             int64_t height, int64_t width,
                                             acc_t* __restrict__ weights_y /* [K, H], zeros */,
                                             acc_t* __restrict__ weights_x /* [K, W], zeros */,
                                             int64_t* __restrict__ support /* [K, 4] */) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= 2 * num_rois) return;
  const int64_t k = t / 2;
  const bool along_y = (t % 2) == 0;
  const scalar_t* roi = rois + k * 5;  // batch index, x1, y1, x2, y2
  const int64_t pooled = along_y ? pooled_height : pooled_width;
  const int64_t limit = along_y ? height : width;
  const acc_t start = static_cast<acc_t>(roi[along_y ? 2 : 1]), end = static_cast<acc_t>(roi[along_y ? 4 : 3]);
  const acc_t scaled_start = start * spatial_scale, scaled_end = end * spatial_scale;
  // x - x == 0 exactly when x is finite (inf - inf and NaN - NaN are NaN).
  RELGROUND_DEVICE_CHECK(start - start == acc_t(0) && end - end == acc_t(0) && scaled_start - scaled_start == acc_t(0) &&
                             scaled_end - scaled_end == acc_t(0),
                         "relground.ops.roi_align_avg: `rois` contains NaN or infinite values, or coordinates that "
                         "overflow once multiplied by `spatial_scale`",
                         k);
  if (along_y) {
    const acc_t n = static_cast<acc_t>(roi[0]);
    RELGROUND_DEVICE_CHECK(n >= acc_t(0) && n < static_cast<acc_t>(batch_size) && n == static_cast<acc_t>(static_cast<int64_t>(n)),
                           "relground.ops.roi_align_avg: `rois[:, 0]` (batch index) must be integers in [0, N)", k);
  }
  const auto axis =
      roi_axis(roi[along_y ? 2 : 1], roi[along_y ? 4 : 3], spatial_scale, aligned, pooled, sampling_ratio);
  acc_t* weights = (along_y ? weights_y + k * height : weights_x + k * width);
  int64_t lo = limit, hi = -1;
  accumulate_axis_weights(axis, pooled, limit, weights, lo, hi);
  support[k * 4 + (along_y ? 0 : 2)] = lo;
  support[k * 4 + (along_y ? 1 : 3)] = hi;
}

// Step 2 (NCHW). Block (k, tile): warp w handles channel tile * kWarpsPerBlock + w.
template <typename scalar_t, typename acc_t>
__global__ void roi_align_avg_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                             const acc_t* __restrict__ weights_y, const acc_t* __restrict__ weights_x,
                                             const int64_t* __restrict__ support, int64_t channels, int64_t height,
                                             int64_t width, scalar_t* __restrict__ output /* [K, C] */) {
  const int64_t k = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (c >= channels) return;
  const int64_t n = static_cast<int64_t>(rois[k * 5]);
  const int64_t y_lo = support[k * 4], y_hi = support[k * 4 + 1], x_lo = support[k * 4 + 2], x_hi = support[k * 4 + 3];
  const acc_t* wy = weights_y + k * height;
  const acc_t* wx = weights_x + k * width;
  const scalar_t* plane = input + (n * channels + c) * height * width;
  acc_t sum = 0;
  for (int64_t y = y_lo; y <= y_hi; ++y) {
    const acc_t w_row = wy[y];
    if (w_row == acc_t(0)) continue;  // warp-uniform: rows between sparse samples
    const scalar_t* row = plane + y * width;
    acc_t row_sum = 0;
    for (int64_t x = x_lo + lane; x <= x_hi; x += kWarpSize) row_sum += wx[x] * static_cast<acc_t>(row[x]);
    sum += w_row * row_sum;
  }
  sum = cuda::warp_reduce_sum(sum);
  if (lane == 0) output[k * channels + c] = static_cast<scalar_t>(sum);
}

// Step 2 (NHWC). Block (k, tile): thread i handles channel tile * blockDim.x + i.
template <typename scalar_t, typename acc_t>
__global__ void roi_align_avg_forward_nhwc_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                                  const acc_t* __restrict__ weights_y,
                                                  const acc_t* __restrict__ weights_x,
                                                  const int64_t* __restrict__ support, int64_t channels, int64_t height,
                                                  int64_t width, scalar_t* __restrict__ output /* [K, C] */) {
  const int64_t k = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const int64_t n = static_cast<int64_t>(rois[k * 5]);
  const int64_t y_lo = support[k * 4], y_hi = support[k * 4 + 1], x_lo = support[k * 4 + 2], x_hi = support[k * 4 + 3];
  const acc_t* wy = weights_y + k * height;
  const acc_t* wx = weights_x + k * width;
  acc_t sum = 0;
  for (int64_t y = y_lo; y <= y_hi; ++y) {
    const acc_t w_row = wy[y];
    if (w_row == acc_t(0)) continue;
    const scalar_t* row = input + (n * height + y) * width * channels + c;
    for (int64_t x = x_lo; x <= x_hi; ++x) {
      const acc_t w = w_row * wx[x];
      if (w != acc_t(0)) sum += w * static_cast<acc_t>(row[x * channels]);
    }
  }
  output[k * channels + c] = static_cast<scalar_t>(sum);
}

// Step 3 (NCHW), the transpose of the forward walk.
template <typename scalar_t, typename acc_t>
__global__ void roi_align_avg_backward_kernel(const scalar_t* __restrict__ grad /* [K, C] */,
                                              const scalar_t* __restrict__ rois, const acc_t* __restrict__ weights_y,
                                              const acc_t* __restrict__ weights_x, const int64_t* __restrict__ support,
                                              int64_t channels, int64_t height, int64_t width,
                                              acc_t* __restrict__ grad_input) {
  const int64_t k = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (c >= channels) return;
  const acc_t g = static_cast<acc_t>(grad[k * channels + c]);
  if (g == acc_t(0)) return;
  const int64_t n = static_cast<int64_t>(rois[k * 5]);
  const int64_t y_lo = support[k * 4], y_hi = support[k * 4 + 1], x_lo = support[k * 4 + 2], x_hi = support[k * 4 + 3];
  const acc_t* wy = weights_y + k * height;
  const acc_t* wx = weights_x + k * width;
  acc_t* plane = grad_input + (n * channels + c) * height * width;
  for (int64_t y = y_lo; y <= y_hi; ++y) {
    const acc_t g_row = g * wy[y];
    if (g_row == acc_t(0)) continue;
    for (int64_t x = x_lo + lane; x <= x_hi; x += kWarpSize) {
      if (wx[x] != acc_t(0)) atomicAdd(plane + y * width + x, g_row * wx[x]);
    }
  }
}

// Step 3 (NHWC).
template <typename scalar_t, typename acc_t>
__global__ void roi_align_avg_backward_nhwc_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                   const acc_t* __restrict__ weights_y,
                                                   const acc_t* __restrict__ weights_x,
                                                   const int64_t* __restrict__ support, int64_t channels,
                                                   int64_t height, int64_t width, acc_t* __restrict__ grad_input) {
  const int64_t k = blockIdx.x;
  const int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  const acc_t g = static_cast<acc_t>(grad[k * channels + c]);
  const int64_t n = static_cast<int64_t>(rois[k * 5]);
  const int64_t y_lo = support[k * 4], y_hi = support[k * 4 + 1], x_lo = support[k * 4 + 2], x_hi = support[k * 4 + 3];
  const acc_t* wy = weights_y + k * height;
  const acc_t* wx = weights_x + k * width;
  for (int64_t y = y_lo; y <= y_hi; ++y) {
    const acc_t w_row = wy[y];
    if (w_row == acc_t(0)) continue;
    acc_t* row = grad_input + (n * height + y) * width * channels + c;
    for (int64_t x = x_lo; x <= x_hi; ++x) {
      const acc_t w = w_row * wx[x];
      if (w != acc_t(0)) atomicAdd(row + x * channels, g * w);
    }
  }
}

// Runs step 1 and returns (weights_y [K, H], weights_x [K, W], support [K, 4]).
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> launch_weights(const at::Tensor& rois, int64_t pooled_height,
                                                              int64_t pooled_width, double spatial_scale,
                                                              int64_t sampling_ratio, bool aligned,
                                                              int64_t batch_size, int64_t height, int64_t width) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_rois = rois.size(0);
  const auto acc_options = rois.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor weights_y = at::zeros({num_rois, height}, acc_options);
  at::Tensor weights_x = at::zeros({num_rois, width}, acc_options);
  at::Tensor support = at::empty({num_rois, 4}, rois.options().dtype(at::kLong));
  const int64_t blocks = ceil_div<int64_t>(2 * num_rois, kThreadsPerBlock);
  cuda::launch_kernel("roi_align_avg_weights_kernel", roi_align_avg_weights_kernel<scalar_t, acc_t>,
                      cuda::grid_1d("roi_align_avg", blocks), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream(),
                      rois.const_data_ptr<scalar_t>(), num_rois, pooled_height, pooled_width,
                      static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, batch_size, height, width,
                      weights_y.mutable_data_ptr<acc_t>(), weights_x.mutable_data_ptr<acc_t>(),
                      support.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {weights_y, weights_x, support};
}

// Grid of (RoIs, channel tiles) for the NCHW (warp per channel) or NHWC (thread per channel) kernels.
dim3 roi_channel_grid(int64_t num_rois, int64_t channels, bool channels_last) {
  const int64_t per_block = channels_last ? kThreadsPerBlock : kWarpsPerBlock;
  const int64_t tiles = ceil_div<int64_t>(channels, per_block);
  RELGROUND_CHECK_ARG(num_rois <= std::numeric_limits<int32_t>::max() && tiles <= 65535, "roi_align_avg",
                      "too many boxes (", num_rois, ") or channels (", channels, ") for one launch");
  return dim3(static_cast<unsigned>(num_rois), static_cast<unsigned>(tiles));
}

at::Tensor roi_align_avg_forward_cuda(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                                      int64_t pooled_width, double spatial_scale, int64_t sampling_ratio,
                                      bool aligned) {
  check_roi_align_avg_args(input, rois, pooled_height, pooled_width, spatial_scale, cuda::kKernelDevice);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const bool channels_last = roi_align_avg_reads_channels_last(input);
  const at::Tensor in = channels_last ? input : input.contiguous();
  const at::Tensor boxes = rois.contiguous();
  const int64_t num_rois = rois.size(0), channels = input.size(1), height = input.size(2), width = input.size(3);
  at::Tensor output = at::zeros({num_rois, channels}, input.options());  // [K, C]
  if (output.numel() == 0 || input.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_avg_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto [weights_y, weights_x, support] =
        launch_weights<scalar_t>(boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned,
                                 input.size(0), height, width);
    const dim3 grid = roi_channel_grid(num_rois, channels, channels_last);
    auto stream = at::cuda::getCurrentCUDAStream();
    auto kernel = channels_last ? roi_align_avg_forward_nhwc_kernel<scalar_t, acc_t>
                                : roi_align_avg_forward_kernel<scalar_t, acc_t>;
    cuda::launch_kernel(channels_last ? "roi_align_avg_forward_nhwc_kernel" : "roi_align_avg_forward_kernel", kernel,
                        grid, kThreadsPerBlock, 0, stream, in.const_data_ptr<scalar_t>(),
                        boxes.const_data_ptr<scalar_t>(), weights_y.const_data_ptr<acc_t>(),
                        weights_x.const_data_ptr<acc_t>(), support.const_data_ptr<int64_t>(), channels, height, width,
                        output.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

at::Tensor roi_align_avg_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height,
                                       int64_t pooled_width, double spatial_scale, int64_t sampling_ratio,
                                       bool aligned, int64_t batch_size, int64_t channels, int64_t height,
                                       int64_t width, bool channels_last) {
  // The kernels index grad_input by rois[:, 0]: the weights kernel checks it is in [0, batch_size) on the device.
  check_roi_align_avg_backward_args(grad, rois, channels, cuda::kKernelDevice);
  const c10::cuda::CUDAGuard device_guard(grad.device());
  at::Tensor grad_input = zeros_roi_align_avg_grad_input(grad, batch_size, channels, height, width, channels_last);
  const int64_t num_rois = rois.size(0);
  if (grad.numel() > 0 && grad_input.numel() > 0) {
    const at::Tensor g = grad.contiguous();
    const at::Tensor boxes = rois.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_avg_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto [weights_y, weights_x, support] = launch_weights<scalar_t>(
          boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned, batch_size, height, width);
      const dim3 grid = roi_channel_grid(num_rois, channels, channels_last);
      auto stream = at::cuda::getCurrentCUDAStream();
      auto kernel = channels_last ? roi_align_avg_backward_nhwc_kernel<scalar_t, acc_t>
                                  : roi_align_avg_backward_kernel<scalar_t, acc_t>;
      cuda::launch_kernel(channels_last ? "roi_align_avg_backward_nhwc_kernel" : "roi_align_avg_backward_kernel",
                          kernel, grid, kThreadsPerBlock, 0, stream, g.const_data_ptr<scalar_t>(),
                          boxes.const_data_ptr<scalar_t>(), weights_y.const_data_ptr<acc_t>(),
                          weights_x.const_data_ptr<acc_t>(), support.const_data_ptr<int64_t>(), channels, height,
                          width, grad_input.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return roi_align_avg_grad_input_as_grad_dtype(grad_input, grad, channels_last);
}

}  // namespace
}  // namespace relground

TORCH_LIBRARY_IMPL(relground, RELGROUND_KERNEL_DISPATCH_KEY, m) {
  m.impl("roi_align_avg", TORCH_FN(relground::roi_align_avg_forward_cuda));
  m.impl("_roi_align_avg_backward", TORCH_FN(relground::roi_align_avg_backward_cuda));
}
