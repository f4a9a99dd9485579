// The 1-D sampling weights of roi_align_avg, shared by the CPU kernel (csrc/cpu/roi_align_avg_cpu.cpp, which
// explains why the op separates into a y-part and an x-part) and the CUDA weights kernel
// (kernels/roi_align_avg_cuda.cu). The geometry and the sample formula are torchvision's roi_align verbatim, so
// that float32 results agree with it to rounding.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "relground/box_math.h"

namespace relground {

// One axis of an RoI in feature-map pixels, as torchvision's roi_align sees it.
template <typename T>
struct RoiAxis {
  T start;       // first edge (pixels)
  T size;        // extent (pixels); at least 1 when not `aligned`
  int64_t grid;  // samples per bin: `sampling_ratio`, or ceil(size / pooled) when adaptive (<= 0); may be 0
};

// The axis of an RoI from its box edges on that axis (x1, x2 or y1, y2, input pixels). `aligned` shifts by
// -0.5 pixel; otherwise a malformed RoI is forced to 1 pixel (torchvision's legacy rule).
template <typename T, typename scalar_t>
C10_HOST_DEVICE inline RoiAxis<T> roi_axis(scalar_t box_start, scalar_t box_end, T spatial_scale, bool aligned,
                                           int64_t pooled, int64_t sampling_ratio) {
  const T offset = aligned ? T(0.5) : T(0);
  const T start = static_cast<T>(box_start) * spatial_scale - offset;
  T size = static_cast<T>(box_end) * spatial_scale - offset - start;
  if (!aligned) size = std_max(size, T(1));
  const int64_t grid = sampling_ratio > 0 ? sampling_ratio : static_cast<int64_t>(std::ceil(size / T(pooled)));
  return {start, size, grid};
}

// Adds torchvision's bilinear weights of the pooled * grid samples of one axis into weights[0:limit], each
// already divided by pooled * grid, and widens [lo, hi] (inclusive) to cover every pixel written. `limit` is the
// feature map's extent on this axis (H or W). Samples outside [-1, limit] contribute nothing, as in torchvision;
// grid <= 0 (a degenerate adaptive RoI) has no samples. One serial loop, so the sums have a fixed order.
template <typename T>
C10_HOST_DEVICE inline void accumulate_axis_weights(const RoiAxis<T>& axis, int64_t pooled, int64_t limit,
                                                    T* weights, int64_t& lo, int64_t& hi) {
  if (axis.grid <= 0) return;
  const T bin_size = axis.size / static_cast<T>(pooled);
  const T norm = T(1) / static_cast<T>(pooled * axis.grid);
  for (int64_t p = 0; p < pooled; ++p) {
    for (int64_t i = 0; i < axis.grid; ++i) {
      T v = axis.start + p * bin_size + static_cast<T>(i + .5f) * bin_size / static_cast<T>(axis.grid);
      if (v < T(-1) || v > static_cast<T>(limit)) continue;  // outside the map: weight 0
      if (v <= 0) v = 0;
      int64_t low = static_cast<int64_t>(v);
      int64_t high;
      if (low >= limit - 1) {
        high = low = limit - 1;
        v = static_cast<T>(low);
      } else {
        high = low + 1;
      }
      const T frac = v - static_cast<T>(low);
      weights[low] += (T(1) - frac) * norm;
      weights[high] += frac * norm;
      lo = std_min(lo, low);
      hi = std_max(hi, high);
    }
  }
}

}  // namespace relground
