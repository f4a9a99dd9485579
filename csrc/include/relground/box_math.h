// Box arithmetic shared by the CPU and CUDA kernels (pairwise_iou, self_taught_targets): written once so that
// both devices compute the same IoU and the same R-CNN deltas, operation for operation.
//
// Boxes are xyxy (x1, y1, x2, y2) in pixels with width = x2 - x1 (no "+1"), as in torchvision.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace relground {

// std::min / std::max spelled out, usable on both devices. They keep std's rule (the first argument on ties,
// and when the second is NaN), which the CUDA builtins min / max (fminf / fmaxf: the non-NaN argument) do not.
template <typename T>
C10_HOST_DEVICE inline T std_min(T a, T b) {
  return b < a ? b : a;
}

template <typename T>
C10_HOST_DEVICE inline T std_max(T a, T b) {
  return a < b ? b : a;
}

// Area of a box with negative extents clamped to 0. Written as `w < 0 ? 0 : w` so that a NaN stays NaN (and the
// pair then gets IoU 0 below) instead of silently becoming an empty box.
template <typename T>
C10_HOST_DEVICE inline T clamped_area(T x1, T y1, T x2, T y2) {
  T w = x2 - x1, h = y2 - y1;
  w = w < T(0) ? T(0) : w;
  h = h < T(0) ? T(0) : h;
  return w * h;
}

// True for +inf and -inf only (NaN is not infinite). Spelled out so that it means the same on host and device.
template <typename T>
C10_HOST_DEVICE inline bool is_infinite(T x) {
  return x == x && (x - x) != (x - x);
}

// Non-negative part of `v` (NaN stays NaN).
template <typename T>
C10_HOST_DEVICE inline T clamp_min_zero(T v) {
  return v < T(0) ? T(0) : v;
}

// IoU of boxes a and b with finite coordinates whose areas overflow T (e.g. float32 boxes with coordinates ~1e19):
// IoU is scale-invariant, so the extents are halved (x2/2 - x1/2 cannot overflow) and divided by the largest one
// before any product. Same rule as the fast path: 0 for an empty union; a NaN/inf result (an infinite
// coordinate) gives 0.
template <typename T>
C10_HOST_DEVICE inline T iou_rescaled(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2) {
  const T half = T(0.5);
  T aw = clamp_min_zero(ax2 * half - ax1 * half), ah = clamp_min_zero(ay2 * half - ay1 * half);
  T bw = clamp_min_zero(bx2 * half - bx1 * half), bh = clamp_min_zero(by2 * half - by1 * half);
  T iw = clamp_min_zero(std_min(ax2, bx2) * half - std_max(ax1, bx1) * half);
  T ih = clamp_min_zero(std_min(ay2, by2) * half - std_max(ay1, by1) * half);
  const T scale = std_max(std_max(aw, ah), std_max(bw, bh));
  if (!(scale > T(0))) return T(0);
  aw /= scale, ah /= scale, bw /= scale, bh /= scale, iw /= scale, ih /= scale;
  const T inter = iw * ih;
  const T uni = aw * ah + bw * bh - inter;
  const T iou = uni > T(0) ? inter / uni : T(0);
  return iou >= T(0) && iou <= T(1) ? iou : T(0);
}

// IoU of boxes a and b given their clamped areas (so a caller pairing one box with many computes its area once).
// An empty or NaN union gives 0, never NaN: two zero-area boxes do not overlap. Finite boxes whose areas overflow
// T take the rescaled path (finite IoU, 1 for identical boxes); every other pair is computed exactly as before.
template <typename T>
C10_HOST_DEVICE inline T iou_from_areas(T ax1, T ay1, T ax2, T ay2, T area_a, T bx1, T by1, T bx2, T by2, T area_b) {
  T iw = std_min(ax2, bx2) - std_max(ax1, bx1);
  T ih = std_min(ay2, by2) - std_max(ay1, by1);
  iw = iw < T(0) ? T(0) : iw;
  ih = ih < T(0) ? T(0) : ih;
  const T inter = iw * ih;
  const T uni = area_a + area_b - inter;
  if (is_infinite(area_a) || is_infinite(area_b) || is_infinite(inter) || is_infinite(uni)) {
    return iou_rescaled(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2);
  }
  return uni > T(0) ? inter / uni : T(0);
}

// IoU of two boxes `a`, `b` (T[4] each, xyxy).
template <typename T>
C10_HOST_DEVICE inline T box_iou(const T* a, const T* b) {
  return iou_from_areas(a[0], a[1], a[2], a[3], clamped_area(a[0], a[1], a[2], a[3]), b[0], b[1], b[2], b[3],
                        clamped_area(b[0], b[1], b[2], b[3]));
}

// A box as center and size, the form the R-CNN encoding works in.
template <typename T>
struct CenterSize {
  T x, y;  // center, pixels
  T w, h;  // size, pixels
};

// Center and size of an xyxy box `box` (T[4]), computed as torchvision's encode_boxes does.
template <typename T>
C10_HOST_DEVICE inline CenterSize<T> center_size(const T* box) {
  const T w = box[2] - box[0], h = box[3] - box[1];
  return {box[0] + T(0.5) * w, box[1] + T(0.5) * h, w, h};
}

// R-CNN regression target (dx, dy, dw, dh) that moves `box` onto `reference`: torchvision's encode_boxes with
// reference = ground truth and box = proposal, scaled by the weights (wx, wy, ww, wh). Writes delta[0:4].
template <typename T, typename out_t>
C10_HOST_DEVICE inline void encode_box_delta(const CenterSize<T>& reference, const CenterSize<T>& box, T wx, T wy,
                                             T ww, T wh, out_t* delta) {
  delta[0] = static_cast<out_t>(wx * (reference.x - box.x) / box.w);
  delta[1] = static_cast<out_t>(wy * (reference.y - box.y) / box.h);
  delta[2] = static_cast<out_t>(ww * std::log(reference.w / box.w));
  delta[3] = static_cast<out_t>(wh * std::log(reference.h / box.h));
}

}  // namespace relground
