#include "services/engine/gguf_quants.h"

#include <cstring>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"
#include "services/engine/gguf.h"

namespace ragserve::engine {

bool CanDequantizeGgml(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ5_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ6_K:
      return true;
    default:
      return false;
  }
}

Status DequantizeGgml(uint32_t type, const void* src, int64_t n, float* dst) {
  const GgmlTypeInfo* info = FindGgmlType(type);
  RS_CHECK_ARG(info != nullptr && CanDequantizeGgml(type), "tensor type ", GgmlTypeName(type),
               " is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q6_K)");
  RS_CHECK_ARG(n >= 0 && n % info->block == 0, n, " values of ", info->name,
               " are not a whole number of ", info->block, "-value blocks");
  const auto* b = static_cast<const uint8_t*>(src);
  const int64_t blocks = n / info->block;
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      break;
    case GgmlType::kF16:
      kernels::ConvertToF32(src, kernels::DType::kF16, n, dst);
      break;
    case GgmlType::kBF16:
      kernels::ConvertToF32(src, kernels::DType::kBF16, n, dst);
      break;
    case GgmlType::kQ8_0:
      kernels::DequantizeRef(b, kernels::DType::kQ8_0, blocks * 32, dst);
      break;
    case GgmlType::kQ4_0:
      kernels::DequantizeRef(b, kernels::DType::kQ4_0, blocks * 32, dst);
      break;
    case GgmlType::kQ5_0: {  // through its exact Q8_0 form, one block at a time
      uint8_t q8[34];
      for (int64_t i = 0; i < blocks; ++i) {
        RepackQ5_0ToQ8_0(b + i * 22, 1, q8);
        kernels::DequantizeRef(q8, kernels::DType::kQ8_0, 32, dst + i * 32);
      }
      break;
    }
    case GgmlType::kQ4_K:
      kernels::DequantizeRef(b, kernels::DType::kQ4_K, blocks * 256, dst);
      break;
    case GgmlType::kQ6_K:
      kernels::DequantizeRef(b, kernels::DType::kQ6_K, blocks * 256, dst);
      break;
    default:
      break;
  }
  return OkStatus();
}

void RepackQ5_0ToQ8_0(const void* src, int64_t blocks, void* dst) {
  const auto* s = static_cast<const uint8_t*>(src);
  auto* d = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < blocks; ++i, s += 22, d += 34) {
    uint32_t qh;
    std::memcpy(&qh, s + 2, 4);
    const uint8_t* qs = s + 6;
    std::memcpy(d, s, 2);  // d (f16), unchanged
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 15) | static_cast<int>(((qh >> j) & 1) << 4);
      const int hi = (qs[j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1) << 4);
      d[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(lo - 16));
      d[2 + j + 16] = static_cast<uint8_t>(static_cast<int8_t>(hi - 16));
    }
  }
}

}  // namespace ragserve::engine
