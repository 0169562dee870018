// cpu/gather.cpp: rows of a [c, d] tensor by an index list (the sampled classes of a head):
// gathered into a [k, d] tensor, or scattered back from one. The index list is checked first
// (strictly ascending in [0, c)), so no row is read or written out of range and no two writes
// meet; then the rows are copied across the cores.
#include <string.h>

#include "cpu/common.h"

using namespace lsm_cpu;

int32_t lsm_cpu_rows(lsm_context *ctx, int32_t dtype, int64_t c, int64_t d, int64_t k, const int32_t *index,
                     const void *src, void *dst, bool scatter) {
  for (int64_t i = 0; i < k; ++i) {
    const int32_t v = index[i];
    if (v >= 0 && v < c && (i == 0 || v > index[i - 1])) continue;
    const std::string low = i == 0 ? "0" : std::to_string(int64_t(index[i - 1]) + 1);
    return lsm_fail(ctx, LSM_ERR_INVALID_ARGUMENT,
                    "index[" + std::to_string(i) + "]: expected an integer in [" + low + ", " + std::to_string(c) +
                        ") (strictly ascending row indices), got " + std::to_string(v));
  }
  const size_t row = (size_t)d * (dtype == LSM_FLOAT32 ? sizeof(float) : sizeof(double));
  const char *s = static_cast<const char *>(src);
  char *o = static_cast<char *>(dst);
  parallel_for(k, d, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const size_t at = (size_t)index[i] * row, here = (size_t)i * row;
      if (scatter) memcpy(o + at, s + here, row);
      else memcpy(o + here, s + at, row);
    }
  });
  return LSM_OK;
}
