// The per-box step of self_taught_targets (paper Sec. 3.3), shared by the CPU kernel (a loop per (image, phrase))
// and the CUDA kernel (a block per (image, phrase)): given the anchor, whether a box is selected, its R-CNN delta
// towards the anchor and its weight. Only the anchor search differs between the devices.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "relground/box_math.h"

namespace relground {

// The scalar arguments of self_taught_targets in the kernels' math type T (float for half/bfloat16 inputs).
template <typename T>
struct SelfTaughtParams {
  T iou_threshold;   // a box is selected when its IoU with the anchor is >= this
  T score_gap;       // a selected box gets weight 1 when anchor score - its score >= this, else 0
  T wx, wy, ww, wh;  // R-CNN encoding weights of (dx, dy, dw, dh)
};

// Converts the op's double arguments; `weights` is the op's `weights` argument, double[4] = (wx, wy, ww, wh).
template <typename T>
inline SelfTaughtParams<T> make_self_taught_params(double iou_threshold, double score_gap, const double* weights) {
  return {static_cast<T>(iou_threshold), static_cast<T>(score_gap), static_cast<T>(weights[0]),
          static_cast<T>(weights[1]),    static_cast<T>(weights[2]), static_cast<T>(weights[3])};
}

// The anchor of one (image, phrase): its box (xyxy), the same as center and size, and its score.
// A value-initialised anchor (all zeros) stands for "no valid box"; then no box is eligible.
template <typename T>
struct SelfTaughtAnchor {
  T box[4];
  CenterSize<T> center_size;
  T score;
};

// The anchor made from its box (scalar_t[4], xyxy) and score, converted to the math type T.
template <typename T, typename scalar_t>
C10_HOST_DEVICE inline SelfTaughtAnchor<T> make_self_taught_anchor(const scalar_t* box, scalar_t score) {
  SelfTaughtAnchor<T> anchor;
  for (int i = 0; i < 4; ++i) anchor.box[i] = static_cast<T>(box[i]);
  anchor.center_size = center_size(anchor.box);
  anchor.score = static_cast<T>(score);
  return anchor;
}

// Writes the targets of one box (`box`: scalar_t[4], xyxy; `score`: its score for this phrase).
// `eligible`: the box is valid and is not the anchor itself. Selected when eligible, not identical to the anchor
// box (a zero delta teaches nothing) and IoU >= iou_threshold; then delta[0:4] = the R-CNN delta that moves the
// box onto the anchor and weight[0] = 1 if the anchor outscores it by score_gap or more, else 0. Not selected:
// delta and weight are 0. selected[0] says which.
template <typename scalar_t, typename T>
C10_HOST_DEVICE inline void write_self_taught_target(const SelfTaughtAnchor<T>& anchor, const scalar_t* box,
                                                     scalar_t score, bool eligible,
                                                     const SelfTaughtParams<T>& params, bool* selected,
                                                     scalar_t* delta, scalar_t* weight) {
  T b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<T>(box[i]);
  const bool identical = b[0] == anchor.box[0] && b[1] == anchor.box[1] && b[2] == anchor.box[2] &&
                         b[3] == anchor.box[3];
  const bool is_selected = eligible && !identical && box_iou(anchor.box, b) >= params.iou_threshold;
  *selected = is_selected;
  if (!is_selected) {
    delta[0] = delta[1] = delta[2] = delta[3] = scalar_t(0);
    *weight = scalar_t(0);
    return;
  }
  encode_box_delta(anchor.center_size, center_size(b), params.wx, params.wy, params.ww, params.wh, delta);
  *weight = static_cast<scalar_t>(anchor.score - static_cast<T>(score) >= params.score_gap ? 1 : 0);
}

}  // namespace relground
