// cpu/rows.cpp: the row kernels of cpu/rows.h for the baseline instruction set, and the choice
// between them and the AVX2 build (cpu/rows_avx2.cpp, where the Makefile builds it).
#define LSM_ROWS_NAMESPACE lsm_rows_base
#include "cpu/rows.h"

#if defined(LSM_ROWS_AVX2)
namespace lsm_rows_avx2 {
extern const lsm_row_kernels kernels;
}
#endif

const lsm_row_kernels &lsm_rows() {
  static const lsm_row_kernels base = {lsm_rows_base::row_max, lsm_rows_base::exp_sum, lsm_rows_base::sum_squares,
                                       lsm_rows_base::accumulate_columns, lsm_rows_base::adaptive_row};
#if defined(LSM_ROWS_AVX2)
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return lsm_rows_avx2::kernels;
#endif
  return base;
}
