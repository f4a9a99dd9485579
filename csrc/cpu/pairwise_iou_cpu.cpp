// CPU kernel of relground::pairwise_iou: IoU of every box pair of each image, [B, N, 4] x [B, M, 4] -> [B, N, M].
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "relground/box_math.h"
#include "relground/op_host.h"

namespace relground::ops {

namespace {

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
        out_row[m] = static_cast<scalar_t>(
            iou_from_areas(ax1, ay1, ax2, ay2, area_a, bx1[m], by1[m], bx2[m], by2[m], area_b[m]));
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
