// CPU kernels of roi_align_avg: torchvision's RoIAlign at P x P followed by the mean over the bins,
// fused so that the K x C x P x P tensor never exists.
//
// Why it is separable: the samples of one RoI are the Cartesian product of P*gh y-coordinates and
// P*gw x-coordinates; torchvision's bilinear weight, its "outside the map -> 0" rule and its clamping
// all factor into a y-part and an x-part. Hence
//   out[k, c] = sum_y sum_x Wy[y] * Wx[x] * F[n, c, y, x]
// with 1-D weights Wy (support rows) and Wx (support columns) built once per RoI, already divided by
// P*gh and P*gw so that their product carries torchvision's 1 / (P*P*count).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "relground/checks.h"
#include "relground/op_host.h"
#include "relground/roi_align_weights.h"

namespace relground {

namespace {

// The nonzero 1-D weights of one RoI along one axis: pixel index -> weight, ascending indices.
template <typename acc_t>
struct AxisWeights {
  std::vector<int64_t> index;
  std::vector<acc_t> weight;
  // Dense copy over [index.front(), index.back()] for the NCHW inner loop (contiguous, vectorisable).
  std::vector<acc_t> dense;
  bool use_dense = false;
};

// Compacts the weights of one RoI axis accumulated in `scratch` (size `limit`, zero on entry and on exit) over the
// support [lo, hi] into `out`.
template <typename acc_t>
void build_axis_weights(const RoiAxis<acc_t>& axis, int64_t pooled, int64_t limit, std::vector<acc_t>& scratch,
                        AxisWeights<acc_t>& out) {
  out.index.clear();
  out.weight.clear();
  out.dense.clear();
  int64_t lo = limit, hi = -1;
  accumulate_axis_weights(axis, pooled, limit, scratch.data(), lo, hi);
  int64_t nonzero = 0;
  for (int64_t j = lo; j <= hi; ++j) nonzero += scratch[j] != acc_t(0);
  out.index.reserve(nonzero);
  out.weight.reserve(nonzero);
  // Dense when at most half the span is zero: contiguous loads beat the index gather.
  out.use_dense = hi >= lo && (hi - lo + 1) <= 2 * nonzero;
  for (int64_t j = lo; j <= hi; ++j) {
    if (out.use_dense) out.dense.push_back(scratch[j]);
    if (scratch[j] != acc_t(0)) {
      out.index.push_back(j);
      out.weight.push_back(scratch[j]);
    }
    scratch[j] = 0;
  }
}

// The weights of one RoI (`roi`: scalar_t[5], batch index then x1, y1, x2, y2) along y and x.
template <typename acc_t, typename scalar_t>
void roi_weights(const scalar_t* roi, int64_t pooled_height, int64_t pooled_width, acc_t spatial_scale,
                 int64_t sampling_ratio, bool aligned, int64_t height, int64_t width, std::vector<acc_t>& scratch_y,
                 std::vector<acc_t>& scratch_x, AxisWeights<acc_t>& wy, AxisWeights<acc_t>& wx) {
  const auto axis_y = roi_axis(roi[2], roi[4], spatial_scale, aligned, pooled_height, sampling_ratio);
  const auto axis_x = roi_axis(roi[1], roi[3], spatial_scale, aligned, pooled_width, sampling_ratio);
  build_axis_weights(axis_y, pooled_height, height, scratch_y, wy);
  build_axis_weights(axis_x, pooled_width, width, scratch_x, wx);
}

// The weights of every RoI, the RoIs grouped by image (stable counting sort) and the split into tasks, shared by
// the forward and backward passes. Tasks run over (image, channel block): one channel plane for NCHW; up to 64
// contiguous channels for NHWC, so that the innermost loops run along channels. Each task owns a disjoint slice
// of the feature map: its plane stays in cache across the RoIs, and the backward needs no atomics and sums in a
// fixed order.
template <typename acc_t>
struct RoiWeightTable {
  std::vector<AxisWeights<acc_t>> y, x;  // per RoI
  std::vector<int64_t> image_start;      // [N + 1]: RoIs of image n are order[image_start[n] : image_start[n + 1]]
  std::vector<int64_t> order;            // [K]
  int64_t channel_block = 1;             // channels per task
  int64_t num_channel_blocks = 0;        // tasks per image: task t is image t / num_channel_blocks
};

// `feature_sizes` = (N, C, H, W) of the feature map (the input, or grad_input for the backward).
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
RoiWeightTable<acc_t> build_weight_table(const at::Tensor& rois /* [K, 5], contiguous */, int64_t pooled_height,
                                         int64_t pooled_width, double spatial_scale, int64_t sampling_ratio,
                                         bool aligned, at::IntArrayRef feature_sizes, bool channels_last,
                                         const char* op) {
  const scalar_t* roi_data = rois.const_data_ptr<scalar_t>();
  const int64_t num_rois = rois.size(0);
  const int64_t batch_size = feature_sizes[0], channels = feature_sizes[1];
  const int64_t height = feature_sizes[2], width = feature_sizes[3];
  RoiWeightTable<acc_t> table;
  table.channel_block = channels_last ? std::min<int64_t>(channels, 64) : 1;
  table.num_channel_blocks = (channels + table.channel_block - 1) / table.channel_block;
  table.y.resize(num_rois);
  table.x.resize(num_rois);
  at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch_y(height, acc_t(0)), scratch_x(width, acc_t(0));
    for (int64_t k = begin; k < end; ++k) {
      roi_weights<acc_t>(roi_data + k * 5, pooled_height, pooled_width, static_cast<acc_t>(spatial_scale),
                         sampling_ratio, aligned, height, width, scratch_y, scratch_x, table.y[k], table.x[k]);
    }
  });
  table.image_start.assign(batch_size + 1, 0);
  table.order.resize(num_rois);
  for (int64_t k = 0; k < num_rois; ++k) {
    const double image = static_cast<double>(roi_data[k * 5]);  // NaN fails the test below, before the cast
    RELGROUND_CHECK_ARG(image >= 0 && image < static_cast<double>(batch_size), op, "`rois[", k,
                        ", 0]` (batch index) must be in [0, ", batch_size, "), got ", image);
    ++table.image_start[static_cast<int64_t>(image) + 1];
  }
  for (int64_t n = 0; n < batch_size; ++n) table.image_start[n + 1] += table.image_start[n];
  std::vector<int64_t> next(table.image_start.begin(), table.image_start.end() - 1);
  for (int64_t k = 0; k < num_rois; ++k) table.order[next[static_cast<int64_t>(roi_data[k * 5])]++] = k;
  return table;
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height, int64_t pooled_width,
                    double spatial_scale, int64_t sampling_ratio, bool aligned, bool channels_last,
                    at::Tensor& output /* [K, C] */) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch_size = input.size(0), channels = input.size(1), height = input.size(2), width = input.size(3);
  const scalar_t* in = input.const_data_ptr<scalar_t>();  // NCHW or NHWC storage, contiguous
  scalar_t* out = output.mutable_data_ptr<scalar_t>();    // [K, C]
  const auto table = build_weight_table<scalar_t>(rois, pooled_height, pooled_width, spatial_scale, sampling_ratio,
                                                  aligned, input.sizes(), channels_last, "roi_align_avg");
  const int64_t block = table.channel_block, num_blocks = table.num_channel_blocks;
  at::parallel_for(0, batch_size * num_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(block), column_sum(width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / num_blocks;
      const int64_t c0 = (task % num_blocks) * block, c1 = std::min(c0 + block, channels);
      for (int64_t r = table.image_start[n]; r < table.image_start[n + 1]; ++r) {
        const int64_t k = table.order[r];
        const AxisWeights<acc_t>& wy = table.y[k];
        const AxisWeights<acc_t>& wx = table.x[k];
        scalar_t* out_k = out + k * channels;
        if (channels_last) {
          // Every support pixel adds its weighted channel vector.
          std::fill(acc.begin(), acc.end(), acc_t(0));
          acc_t* __restrict__ acc_data = acc.data();
          for (size_t j = 0; j < wy.index.size(); ++j) {
            for (size_t i = 0; i < wx.index.size(); ++i) {
              const acc_t w = wy.weight[j] * wx.weight[i];
              const scalar_t* __restrict__ pixel =
                  in + ((n * height + wy.index[j]) * width + wx.index[i]) * channels + c0;
              for (int64_t c = 0; c < c1 - c0; ++c) acc_data[c] += w * static_cast<acc_t>(pixel[c]);
            }
          }
          for (int64_t c = c0; c < c1; ++c) out_k[c] = static_cast<scalar_t>(acc[c - c0]);
          continue;
        }
        // NCHW: column sums over the support rows weighted by Wy, then one dot product with Wx.
        // The inner loop is elementwise (independent lanes) so it vectorises; a row-wise dot
        // product would be one long floating-point dependency chain.
        const scalar_t* plane = in + (n * channels + c0) * height * width;
        const int64_t x0 = wx.index.empty() ? 0 : wx.index.front();
        const size_t num_cols = wx.use_dense ? wx.dense.size() : wx.index.size();
        acc_t* __restrict__ cols = column_sum.data();
        std::fill(cols, cols + num_cols, acc_t(0));
        for (size_t j = 0; j < wy.index.size(); ++j) {
          const scalar_t* __restrict__ row = plane + wy.index[j] * width;
          const acc_t w_row = wy.weight[j];
          if (wx.use_dense) {
            const scalar_t* __restrict__ row_x0 = row + x0;
            for (size_t i = 0; i < num_cols; ++i) cols[i] += w_row * static_cast<acc_t>(row_x0[i]);
          } else {
            for (size_t i = 0; i < num_cols; ++i) cols[i] += w_row * static_cast<acc_t>(row[wx.index[i]]);
          }
        }
        const acc_t* col_weight = wx.use_dense ? wx.dense.data() : wx.weight.data();
        acc_t sum = 0;
        for (size_t i = 0; i < num_cols; ++i) sum += col_weight[i] * cols[i];
        out_k[c0] = static_cast<scalar_t>(sum);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height, int64_t pooled_width,
                     double spatial_scale, int64_t sampling_ratio, bool aligned, bool channels_last,
                     at::Tensor& grad_input /* opmath dtype, zeros */) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t batch_size = grad_input.size(0), channels = grad_input.size(1);
  const int64_t height = grad_input.size(2), width = grad_input.size(3);
  const scalar_t* g = grad.const_data_ptr<scalar_t>();  // [K, C]
  acc_t* gin = grad_input.mutable_data_ptr<acc_t>();
  const auto table = build_weight_table<scalar_t>(rois, pooled_height, pooled_width, spatial_scale, sampling_ratio,
                                                  aligned, grad_input.sizes(), channels_last,
                                                  "_roi_align_avg_backward");
  const int64_t block = table.channel_block, num_blocks = table.num_channel_blocks;
  // Scatter g[k, c] * Wy x Wx, the transpose of the forward walk.
  at::parallel_for(0, batch_size * num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / num_blocks;
      const int64_t c0 = (task % num_blocks) * block, c1 = std::min(c0 + block, channels);
      for (int64_t r = table.image_start[n]; r < table.image_start[n + 1]; ++r) {
        const int64_t k = table.order[r];
        const scalar_t* g_k = g + k * channels;
        const AxisWeights<acc_t>& wy = table.y[k];
        const AxisWeights<acc_t>& wx = table.x[k];
        if (channels_last) {
          for (size_t j = 0; j < wy.index.size(); ++j) {
            for (size_t i = 0; i < wx.index.size(); ++i) {
              const acc_t w = wy.weight[j] * wx.weight[i];
              acc_t* __restrict__ pixel = gin + ((n * height + wy.index[j]) * width + wx.index[i]) * channels;
              for (int64_t c = c0; c < c1; ++c) pixel[c] += w * static_cast<acc_t>(g_k[c]);
            }
          }
          continue;
        }
        const acc_t g_kc = static_cast<acc_t>(g_k[c0]);
        acc_t* plane = gin + (n * channels + c0) * height * width;
        for (size_t j = 0; j < wy.index.size(); ++j) {
          const acc_t g_row = g_kc * wy.weight[j];
          acc_t* __restrict__ row = plane + wy.index[j] * width;
          if (wx.use_dense) {
            acc_t* __restrict__ row_x0 = row + wx.index.front();
            for (size_t i = 0; i < wx.dense.size(); ++i) row_x0[i] += g_row * wx.dense[i];
          } else {
            for (size_t i = 0; i < wx.index.size(); ++i) row[wx.index[i]] += g_row * wx.weight[i];
          }
        }
      }
    }
  });
}

at::Tensor roi_align_avg_forward_cpu(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                                     int64_t pooled_width, double spatial_scale, int64_t sampling_ratio,
                                     bool aligned) {
  check_roi_align_avg_args(input, rois, pooled_height, pooled_width, spatial_scale, c10::DeviceType::CPU);
  check_roi_align_avg_rois(rois, input.size(0), spatial_scale, "roi_align_avg");
  // A channels_last input is read in place (no NCHW copy); anything else is made NCHW-contiguous.
  const bool channels_last = roi_align_avg_reads_channels_last(input);
  const at::Tensor in = channels_last ? input : input.contiguous();
  const at::Tensor boxes = rois.contiguous();
  at::Tensor output = at::zeros({rois.size(0), input.size(1)}, input.options());  // [K, C]
  if (output.numel() == 0 || input.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_avg_forward_cpu", [&] {
    forward_kernel<scalar_t>(in, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned,
                             channels_last, output);
  });
  return output;
}

at::Tensor roi_align_avg_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, int64_t pooled_height,
                                      int64_t pooled_width, double spatial_scale, int64_t sampling_ratio, bool aligned,
                                      int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                      bool channels_last) {
  check_roi_align_avg_backward_args(grad, rois, channels, c10::DeviceType::CPU);
  check_roi_align_avg_rois(rois, batch_size, spatial_scale, "_roi_align_avg_backward");
  at::Tensor grad_input = zeros_roi_align_avg_grad_input(grad, batch_size, channels, height, width, channels_last);
  if (grad.numel() > 0 && grad_input.numel() > 0) {
    const at::Tensor g = grad.contiguous();
    const at::Tensor boxes = rois.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_avg_backward_cpu", [&] {
      backward_kernel<scalar_t>(g, boxes, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned,
                                channels_last, grad_input);
    });
  }
  return roi_align_avg_grad_input_as_grad_dtype(grad_input, grad, channels_last);
}

}  // namespace
}  // namespace relground

TORCH_LIBRARY_IMPL(relground, CPU, m) {
  m.impl("roi_align_avg", TORCH_FN(relground::roi_align_avg_forward_cpu));
  m.impl("_roi_align_avg_backward", TORCH_FN(relground::roi_align_avg_backward_cpu));
}
