// CUDA kernel of relground::self_taught_targets: one block per (image, phrase), one launch per call. The block first
// reduces the anchor (first valid argmax), then each thread fills the targets of its boxes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

namespace relground::ops {

void check_self_taught_targets_inputs(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                      double score_gap, at::ArrayRef<double> weights,
                                      const std::optional<at::Tensor>& valid, c10::DeviceType device);

namespace {

constexpr int kThreads = 128;  // power of two, for the tree reduction

// Same arithmetic as csrc/cpu/self_taught_targets_cpu.cpp (and pairwise_iou), so both devices select the same boxes.
template <typename T>
__device__ __forceinline__ T box_iou(const T* a, const T* b) {
  T aw = a[2] - a[0], ah = a[3] - a[1], bw = b[2] - b[0], bh = b[3] - b[1];
  aw = aw < T(0) ? T(0) : aw;  // keeps NaN
  ah = ah < T(0) ? T(0) : ah;
  bw = bw < T(0) ? T(0) : bw;
  bh = bh < T(0) ? T(0) : bh;
  T iw = (a[2] < b[2] ? a[2] : b[2]) - (a[0] > b[0] ? a[0] : b[0]);
  T ih = (a[3] < b[3] ? a[3] : b[3]) - (a[1] > b[1] ? a[1] : b[1]);
  iw = iw < T(0) ? T(0) : iw;
  ih = ih < T(0) ? T(0) : ih;
  const T inter = iw * ih;
  const T uni = aw * ah + bw * bh - inter;
  return uni > T(0) ? inter / uni : T(0);
}

// Argmax order: NaN above every number (as torch.argmax), then larger value, then lower index; index -1 = none.
template <typename T>
__device__ __forceinline__ bool better(T va, int64_t a, T vb, int64_t b) {
  if (b < 0) return a >= 0;
  if (a < 0) return false;
  const bool na = va != va, nb = vb != vb;
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return a < b;
}

template <typename scalar_t>
__global__ void self_taught_targets_forward_kernel(const scalar_t* __restrict__ boxes,
                                                   const scalar_t* __restrict__ scores, const bool* __restrict__ valid,
                                                   scalar_t* __restrict__ deltas, bool* __restrict__ selected,
                                                   scalar_t* __restrict__ weight, int64_t* __restrict__ anchor,
                                                   int64_t P, int64_t M, at::opmath_type<scalar_t> thr,
                                                   at::opmath_type<scalar_t> gap, at::opmath_type<scalar_t> wx,
                                                   at::opmath_type<scalar_t> wy, at::opmath_type<scalar_t> ww,
                                                   at::opmath_type<scalar_t> wh) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t best_value[kThreads];
  __shared__ int64_t best_index[kThreads];
  const int64_t bp = blockIdx.x;  // b * P + p
  const int64_t b = bp / P;
  const scalar_t* s = scores + bp * M;
  const bool* v = valid == nullptr ? nullptr : valid + b * M;
  const scalar_t* image_boxes = boxes + b * M * 4;

  acc_t my_value = 0;
  int64_t my_index = -1;
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) {
    if (v != nullptr && !v[m]) continue;
    const acc_t x = s[m];
    if (better(x, m, my_value, my_index)) {
      my_value = x;
      my_index = m;
    }
  }
  best_value[threadIdx.x] = my_value;
  best_index[threadIdx.x] = my_index;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride &&
        better(best_value[threadIdx.x + stride], best_index[threadIdx.x + stride], best_value[threadIdx.x],
               best_index[threadIdx.x])) {
      best_value[threadIdx.x] = best_value[threadIdx.x + stride];
      best_index[threadIdx.x] = best_index[threadIdx.x + stride];
    }
    __syncthreads();
  }
  const int64_t a = best_index[0];
  if (threadIdx.x == 0) anchor[bp] = a;

  acc_t ab[4] = {0, 0, 0, 0};
  if (a >= 0) {
    for (int i = 0; i < 4; ++i) ab[i] = image_boxes[a * 4 + i];
  }
  // R-CNN encoding as torchvision's encode_boxes: the anchor is the reference ("gt") box.
  const acc_t gt_w = ab[2] - ab[0], gt_h = ab[3] - ab[1];
  const acc_t gt_x = ab[0] + acc_t(0.5) * gt_w, gt_y = ab[1] + acc_t(0.5) * gt_h;
  const acc_t anchor_score = a >= 0 ? static_cast<acc_t>(s[a]) : acc_t(0);
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) {
    const int64_t out = bp * M + m;
    acc_t bm[4];
    for (int i = 0; i < 4; ++i) bm[i] = image_boxes[m * 4 + i];
    const bool identical = bm[0] == ab[0] && bm[1] == ab[1] && bm[2] == ab[2] && bm[3] == ab[3];
    const bool is_selected = a >= 0 && m != a && (v == nullptr || v[m]) && !identical && box_iou(ab, bm) >= thr;
    selected[out] = is_selected;
    if (!is_selected) {
      deltas[out * 4 + 0] = deltas[out * 4 + 1] = deltas[out * 4 + 2] = deltas[out * 4 + 3] = scalar_t(0);
      weight[out] = scalar_t(0);
      continue;
    }
    const acc_t ex_w = bm[2] - bm[0], ex_h = bm[3] - bm[1];
    const acc_t ex_x = bm[0] + acc_t(0.5) * ex_w, ex_y = bm[1] + acc_t(0.5) * ex_h;
    deltas[out * 4 + 0] = static_cast<scalar_t>(wx * (gt_x - ex_x) / ex_w);
    deltas[out * 4 + 1] = static_cast<scalar_t>(wy * (gt_y - ex_y) / ex_h);
    deltas[out * 4 + 2] = static_cast<scalar_t>(ww * ::log(gt_w / ex_w));
    deltas[out * 4 + 3] = static_cast<scalar_t>(wh * ::log(gt_h / ex_h));
    weight[out] = static_cast<scalar_t>(anchor_score - static_cast<acc_t>(s[m]) >= gap ? 1 : 0);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_taught_targets_forward_cuda(
    const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double score_gap,
    at::ArrayRef<double> weights, const std::optional<at::Tensor>& valid) {
  check_self_taught_targets_inputs(boxes, scores, iou_threshold, score_gap, weights, valid, c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t B = scores.size(0), P = scores.size(1), M = scores.size(2);
  at::Tensor deltas = at::empty({B, P, M, 4}, boxes.options());
  at::Tensor selected = at::empty({B, P, M}, boxes.options().dtype(at::kBool));
  at::Tensor weight = at::empty({B, P, M}, scores.options());
  at::Tensor anchor = at::empty({B, P}, scores.options().dtype(at::kLong));
  if (anchor.numel() == 0) {
    return {deltas, selected, weight, anchor};
  }
  const at::Tensor bx = boxes.contiguous(), sc = scores.contiguous();
  const at::Tensor v = valid.has_value() ? valid->contiguous() : at::Tensor();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bx.scalar_type(), "self_taught_targets_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    self_taught_targets_forward_kernel<scalar_t><<<B * P, kThreads, 0, stream>>>(
        bx.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(),
        v.defined() ? v.const_data_ptr<bool>() : nullptr, deltas.mutable_data_ptr<scalar_t>(),
        selected.mutable_data_ptr<bool>(), weight.mutable_data_ptr<scalar_t>(), anchor.mutable_data_ptr<int64_t>(), P,
        M, static_cast<acc_t>(iou_threshold), static_cast<acc_t>(score_gap), static_cast<acc_t>(weights[0]),
        static_cast<acc_t>(weights[1]), static_cast<acc_t>(weights[2]), static_cast<acc_t>(weights[3]));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {deltas, selected, weight, anchor};
}

}  // namespace
}  // namespace relground::ops

TORCH_LIBRARY_IMPL(relground, CUDA, m) {
  m.impl("self_taught_targets", &relground::ops::self_taught_targets_forward_cuda);
}
