// cpu/rows_avx2.cpp: the row kernels of cpu/rows.h built for AVX2 + FMA (x86-64 only).
#define LSM_ROWS_NAMESPACE lsm_rows_avx2
#define LSM_HD static inline  // this file's copies of the shared math are AVX2 code: its own
#include "cpu/rows.h"

namespace lsm_rows_avx2 {
extern const lsm_row_kernels kernels = {row_max, exp_sum, sum_squares, accumulate_columns, adaptive_row};
}
