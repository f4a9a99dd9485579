// The ranking of scores shared by topk_select (CPU sort, CUDA rank counting) and the anchor argmax of
// self_taught_targets (CPU scan, CUDA tree reduction): one strict total order, so every algorithm and both
// devices pick the same entries.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace relground {

// True when entry `a` (score va) ranks before entry `b` (score vb): NaN above every number (as torch.topk and
// torch.argmax), then the larger score, then the lower index. Ties are impossible, so the result does not depend
// on the order in which an algorithm compares entries.
template <typename T>
C10_HOST_DEVICE inline bool ranks_before(T va, int64_t a, T vb, int64_t b) {
  const bool na = va != va, nb = vb != vb;  // x != x: the NaN test (valid: the build has no -ffast-math)
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return a < b;
}

// ranks_before where index -1 means "no entry" and ranks after every entry: the step of an argmax over the valid
// entries that starts from (value unused, index -1).
template <typename T>
C10_HOST_DEVICE inline bool ranks_before_or_none(T va, int64_t a, T vb, int64_t b) {
  if (b < 0) return a >= 0;
  if (a < 0) return false;
  return ranks_before(va, a, vb, b);
}

}  // namespace relground
