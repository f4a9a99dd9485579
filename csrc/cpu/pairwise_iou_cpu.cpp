// CPU kernel of relground::pairwise_iou: IoU of every box pair of each image, [B, N, 4] x [B, M, 4] -> [B, N, M].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace relground::ops {

void check_pairwise_iou_inputs(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::DeviceType device);

namespace {

// Area with negative extents clamped to 0; written as `w < 0 ? 0 : w` so a NaN stays NaN (and the
// pair then gets IoU 0 below) instead of silently becoming an empty box.
template <typename T>
inline T clamped_area(const T x1, const T y1, const T x2, const T y2) {
  T w = x2 - x1;
  T h = y2 - y1;
  w = w < T(0) ? T(0) : w;
  h = h < T(0) ? T(0) : h;
  return w * h;
}

template <typename scalar_t>
void pairwise_iou_forward_kernel(const scalar_t* boxes1, const scalar_t* boxes2, scalar_t* out, int64_t B, int64_t N,
                                 int64_t M) {
  using acc_t = at::opmath_type<scalar_t>;
  // Tasks of whole rows (M elements each), about at::internal::GRAIN_SIZE elements per task: small batches
  // stay on one thread, where a fork/join would cost more than the work.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(M, 1));
  at::parallel_for(0, B * N, grain, [&](int64_t begin, int64_t end) {
    // The image's boxes2 as planar arrays (struct of arrays) with their areas, so the inner loop over m
    // has unit-stride loads and vectorises; refilled when the task crosses into another image.
    std::vector<acc_t> bx1(M), by1(M), bx2(M), by2(M), area_b(M);
    int64_t cached_image = -1;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / N;
      if (b != cached_image) {
        const scalar_t* others = boxes2 + b * M * 4;
        for (int64_t m = 0; m < M; ++m) {
          bx1[m] = others[m * 4 + 0], by1[m] = others[m * 4 + 1];
          bx2[m] = others[m * 4 + 2], by2[m] = others[m * 4 + 3];
          area_b[m] = clamped_area(bx1[m], by1[m], bx2[m], by2[m]);
        }
        cached_image = b;
      }
      const scalar_t* a = boxes1 + row * 4;
      const acc_t ax1 = a[0], ay1 = a[1], ax2 = a[2], ay2 = a[3];
      const acc_t area_a = clamped_area(ax1, ay1, ax2, ay2);
      scalar_t* out_row = out + row * M;
      for (int64_t m = 0; m < M; ++m) {
        acc_t iw = std::min(ax2, bx2[m]) - std::max(ax1, bx1[m]);
        acc_t ih = std::min(ay2, by2[m]) - std::max(ay1, by1[m]);
        iw = iw < acc_t(0) ? acc_t(0) : iw;
        ih = ih < acc_t(0) ? acc_t(0) : ih;
        const acc_t inter = iw * ih;
        const acc_t uni = area_a + area_b[m] - inter;
        // Empty (or NaN) union -> 0, never NaN: two zero-area boxes do not overlap.
        out_row[m] = static_cast<scalar_t>(uni > acc_t(0) ? inter / uni : acc_t(0));
      }
    }
  });
}

at::Tensor pairwise_iou_forward_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_pairwise_iou_inputs(boxes1, boxes2, c10::DeviceType::CPU);
  const int64_t B = boxes1.size(0), N = boxes1.size(1), M = boxes2.size(1);
  at::Tensor out = at::empty({B, N, M}, boxes1.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "pairwise_iou_forward_cpu", [&] {
    pairwise_iou_forward_kernel<scalar_t>(b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(),
                                          out.mutable_data_ptr<scalar_t>(), B, N, M);
  });
  return out;
}

}  // namespace
}  // namespace relground::ops

TORCH_LIBRARY_IMPL(relground, CPU, m) {
  m.impl("pairwise_iou", &relground::ops::pairwise_iou_forward_cpu);
}
