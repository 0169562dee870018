// layout.cpp: the layout of the ABI structs as this library was built (lsm_layout), asserted
// against the header's documented offsets so that a change of either is a build error.
#include <stddef.h>
#include <string.h>

#include <string>

#include "api/backend.h"

// Every field of every ABI struct: X(struct, field, offset, bytes), in declaration order.
#define LSM_ABI_FIELDS(X)                       \
  X(lsm_margin, kind, 0, 4)                     \
  X(lsm_margin, m, 4, 4)                        \
  X(lsm_margin, lambda, 8, 8)                   \
  X(lsm_margin, scale, 16, 8)                   \
  X(lsm_margin, m1, 24, 8)                      \
  X(lsm_margin, m2, 32, 8)                      \
  X(lsm_margin, m3, 40, 8)                      \
  X(lsm_margin, flags, 48, 4)                   \
  X(lsm_margin, reserved_flags, 52, 4)          \
  X(lsm_margin, h, 56, 8)                       \
  X(lsm_margin, t_alpha, 64, 8)                 \
  X(lsm_margin, batch_mean, 72, 8)              \
  X(lsm_margin, batch_std, 80, 8)               \
  X(lsm_margin, t, 88, 8)                       \
  X(lsm_margin, lower_norm, 96, 8)              \
  X(lsm_margin, upper_norm, 104, 8)             \
  X(lsm_margin, lambda_g, 112, 8)               \
  X(lsm_margin, upper_margin, 120, 8)           \
  X(lsm_margin, reserved, 128, 16)              \
  X(lsm_loss_args, class_offset, 0, 8)          \
  X(lsm_loss_args, total_classes, 8, 8)         \
  X(lsm_loss_args, grad_scale, 16, 8)           \
  X(lsm_loss_args, label_smoothing, 24, 8)      \
  X(lsm_loss_args, weight_sum, 32, 8)           \
  X(lsm_loss_args, class_weights, 40, 8)        \
  X(lsm_loss_args, ignore_index, 48, 4)         \
  X(lsm_loss_args, flags, 52, 4)                \
  X(lsm_loss_args, update, 56, 8)               \
  X(lsm_loss_args, state_out, 64, 8)            \
  X(lsm_loss_args, row_targets, 72, 8)          \
  X(lsm_loss_args, reserved, 80, 8)             \
  X(lsm_sgd, lr, 0, 8)                          \
  X(lsm_sgd, momentum, 8, 8)                    \
  X(lsm_sgd, weight_decay, 16, 8)               \
  X(lsm_sgd, nesterov, 24, 4)                   \
  X(lsm_sgd, first, 28, 4)                      \
  X(lsm_sgd, nonfinite, 32, 4)                  \
  X(lsm_sgd, reserved, 36, 4)                   \
  X(lsm_adam, lr, 0, 8)                         \
  X(lsm_adam, beta1, 8, 8)                      \
  X(lsm_adam, beta2, 16, 8)                     \
  X(lsm_adam, eps, 24, 8)                       \
  X(lsm_adam, weight_decay, 32, 8)              \
  X(lsm_adam, grad_scale, 40, 8)                \
  X(lsm_adam, step, 48, 8)                      \
  X(lsm_adam, decoupled, 56, 4)                 \
  X(lsm_adam, amsgrad, 60, 4)                   \
  X(lsm_adam, nonfinite, 64, 4)                 \
  X(lsm_adam, reserved, 68, 4)                  \
  X(lsm_loss_update, sgd, 0, 8)                 \
  X(lsm_loss_update, adam, 8, 8)                \
  X(lsm_loss_update, velocity, 16, 8)           \
  X(lsm_loss_update, exp_avg, 24, 8)            \
  X(lsm_loss_update, exp_avg_sq, 32, 8)         \
  X(lsm_loss_update, max_exp_avg_sq, 40, 8)     \
  X(lsm_loss_update, nonfinite, 48, 8)          \
  X(lsm_loss_update, reserved, 56, 8)

// The structs themselves: X(struct, bytes).
#define LSM_ABI_STRUCTS(X) \
  X(lsm_margin, 144)        \
  X(lsm_loss_args, 88)     \
  X(lsm_sgd, 40)           \
  X(lsm_adam, 72)          \
  X(lsm_loss_update, 64)

#define LSM_ASSERT_FIELD(type, field, offset, bytes)                                    \
  static_assert(offsetof(type, field) == (offset), #type "." #field " is at " #offset); \
  static_assert(sizeof(((type *)nullptr)->field) == (bytes), #type "." #field " is " #bytes " bytes");
#define LSM_ASSERT_STRUCT(type, bytes) static_assert(sizeof(type) == (bytes), #type " is " #bytes " bytes");
LSM_ABI_FIELDS(LSM_ASSERT_FIELD)
LSM_ABI_STRUCTS(LSM_ASSERT_STRUCT)

namespace {

struct field_layout {
  const char *type, *field;
  int64_t offset, bytes;
};

// One row per struct (field "") and per field, read from the compiler rather than the list above.
#define LSM_STRUCT_ROW(type, bytes) {#type, "", 0, (int64_t)sizeof(type)},
#define LSM_FIELD_ROW(type, field, offset, bytes) \
  {#type, #field, (int64_t)offsetof(type, field), (int64_t)sizeof(((type *)nullptr)->field)},
const field_layout k_layout[] = {LSM_ABI_STRUCTS(LSM_STRUCT_ROW) LSM_ABI_FIELDS(LSM_FIELD_ROW)};

}  // namespace

extern "C" int32_t lsm_layout(const char *type, const char *field, int64_t *offset, int64_t *bytes) {
  if (type == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "type: expected a string, got NULL");
  if (field == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "field: expected a string, got NULL");
  if (offset == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "offset: expected a pointer, got NULL");
  if (bytes == nullptr) return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT, "bytes: expected a pointer, got NULL");
  bool known_type = false;
  for (const field_layout &row : k_layout) {
    if (strcmp(row.type, type) != 0) continue;
    known_type = true;
    if (strcmp(row.field, field) != 0) continue;
    *offset = row.offset;
    *bytes = row.bytes;
    return LSM_OK;
  }
  try {
    if (!known_type)
      return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                      std::string("type: expected \"lsm_margin\", \"lsm_loss_args\", \"lsm_sgd\", \"lsm_adam\" or \"lsm_loss_update\", got \"") + type +
                          "\"");
    return lsm_fail(nullptr, LSM_ERR_INVALID_ARGUMENT,
                    std::string("field: expected \"\" or a field of ") + type + ", got \"" + field + "\"");
  } catch (...) {
    return LSM_ERR_INVALID_ARGUMENT;  // out of memory for the message: the status alone tells
  }
}
