// Dtype conversions and the plain reference backend (RefOps).
#include "kernels/cpu/ops.h"

#include <cpuid.h>

#include <cmath>
#include <cstring>
#include <new>

#include <algorithm>
#include <cctype>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/quant.h"

namespace ragserve::kernels {

void Ops::MatMulShared(const float* x, int64_t m, int count, const WeightView* const* ws,
                       const WeightView* const* biases, float* const* ys) const {
  for (int i = 0; i < count; ++i) MatMul(x, m, *ws[i], biases[i], ys[i]);
}

void Ops::CausalAttention(const float* q, int n, int heads, int kv_heads, int d, const float* k,
                          const float* v, int64_t len, int64_t window, float scale, float* o,
                          float* lse, int threads) const {
  for (int64_t t = 0; t < int64_t{n} * kv_heads; ++t) {
    AttentionRow(*this, q, n, heads, kv_heads, d, k, v, len, true, window, scale, o, lse, t);
  }
}

void Ops::BlockAttention(const float* q, int n, int heads, int kv_heads, int d, const float* k,
                         const float* v, int64_t len, float scale, float* o, float* lse,
                         int threads) const {
  for (int64_t t = 0; t < int64_t{n} * kv_heads; ++t) {
    AttentionRow(*this, q, n, heads, kv_heads, d, k, v, len, false, 0, scale, o, lse, t);
  }
}

void AttentionRow(const Ops& ops, const float* q, int n, int heads, int kv_heads, int d,
                  const float* k, const float* v, int64_t len, bool causal, int64_t window,
                  float scale, float* o, float* lse, int64_t t) {
  const int group = heads / kv_heads;
  const int64_t row = int64_t{kv_heads} * d;
  const int64_t i = t / kv_heads;
  const int kvh = static_cast<int>(t % kv_heads);
  const int64_t end = causal ? len - n + i + 1 : len;
  const int64_t start = causal && window > 0 ? std::max<int64_t>(0, end - window) : 0;
  const int64_t head0 = i * heads + int64_t{kvh} * group;
  ops.Attention(q + head0 * d, group, k + start * row + int64_t{kvh} * d, row,
                v + start * row + int64_t{kvh} * d, row, end - start, d, scale, o + head0 * d,
                lse + head0);
}

size_t DTypeSize(DType t) { return t == DType::kF32 ? 4 : IsQuantized(t) ? 0 : 2; }

std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kQ8_0:
      return "Q8_0";
    case DType::kQ4_0:
      return "Q4_0";
    case DType::kQ4_K:
      return "Q4_K";
    case DType::kQ6_K:
      return "Q6_K";
  }
  return "?";
}

bool DTypeFromName(std::string_view name, DType* out) {
  auto same = [](std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::toupper(static_cast<unsigned char>(a[i])) != b[i]) return false;
    }
    return true;
  };
  for (uint8_t i = 0; i <= static_cast<uint8_t>(DType::kQ6_K); ++i) {
    if (same(name, DTypeName(static_cast<DType>(i)))) {
      *out = static_cast<DType>(i);
      return true;
    }
  }
  return false;
}

float Bf16ToF32(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t F32ToBf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);  // NaN
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t F32ToF16(float v) {
  uint32_t x;
  std::memcpy(&x, &v, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // overflow (>= 65520) -> inf
  if (ax < 0x38800000u) {                        // below the smallest normal f16
    if (ax < 0x33000000u) return sign;           // rounds to zero
    const uint32_t e = ax >> 23;
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
    // |v| / 2^-24 = m * 2^(e - 126): the subnormal f16 mantissa before rounding.
    const int shift = 126 - static_cast<int>(e);
    const uint32_t full = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    uint32_t r = full;
    if (rem > half || (rem == half && (full & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  // Normal: rebias exponent and round mantissa to 10 bits (nearest even).
  uint32_t r = ax - ((127u - 15u) << 23);
  r += 0xfffu + ((r >> 13) & 1u);
  return sign | static_cast<uint16_t>(r >> 13);
}

void ConvertToF32(const void* src, DType t, int64_t n, float* dst) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kBF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t bits = static_cast<uint32_t>(s[i]) << 16;
        float f;
        std::memcpy(&f, &bits, 4);
        dst[i] = f;
      }
      return;
    }
    case DType::kF16: {
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(s[i]);
      return;
    }
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_K:
    case DType::kQ6_K: {
      DequantizeRef(src, t, n, dst);
      return;
    }
  }
}

void ConvertFromF32(const float* src, DType t, int64_t n, void* dst) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * 4);
      return;
    case DType::kBF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = F32ToBf16(src[i]);
      return;
    }
    case DType::kF16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = F32ToF16(src[i]);
      return;
    }
    case DType::kQ8_0:
    case DType::kQ4_0:
    case DType::kQ4_K:
    case DType::kQ6_K:
      QuantizeRef(src, t, n, dst);
      return;
  }
}

void* Ops::Allocate(size_t bytes) const {
  return ::operator new (bytes == 0 ? 1 : bytes, std::align_val_t{64}, std::nothrow);
}

void Ops::Free(void* p) const {
  if (p != nullptr) ::operator delete (p, std::align_val_t{64});
}

void Ops::CopyToBackend(void* dst, const void* src, size_t bytes) const {
  if (bytes > 0) std::memmove(dst, src, bytes);
}

void Ops::CopyToHost(void* dst, const void* src, size_t bytes) const {
  if (bytes > 0) std::memmove(dst, src, bytes);
}

void Ops::CopyWithin(void* dst, const void* src, size_t bytes) const {
  if (bytes > 0) std::memmove(dst, src, bytes);
}

namespace {

// Element i of a weight view as float.
inline float At(const WeightView& w, int64_t i) {
  switch (w.dtype) {
    case DType::kF32:
      return static_cast<const float*>(w.data)[i];
    case DType::kBF16:
      return Bf16ToF32(static_cast<const uint16_t*>(w.data)[i]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(w.data)[i]);
    default:  // block formats: whole rows go through DequantizeRef (RowF32)
      return 0.0f;
  }
  return 0.0f;
}

// Row r of w as f32 (the block formats dequantized bit-exactly) into buf.
const float* RowF32(const WeightView& w, int64_t r, std::vector<float>* buf) {
  buf->resize(static_cast<size_t>(w.cols));
  ConvertToF32(w.Row(r), w.dtype, w.cols, buf->data());
  return buf->data();
}

class RefOpsImpl final : public Ops {
 public:
  std::string_view name() const override { return "ref"; }

  void MatMul(const float* x, int64_t m, const WeightView& w, const WeightView* bias,
              float* y) const override {
    std::vector<float> row;
    for (int64_t r = 0; r < w.rows; ++r) {
      const float* wr = RowF32(w, r, &row);
      for (int64_t i = 0; i < m; ++i) {
        double acc = 0.0;
        for (int64_t c = 0; c < w.cols; ++c) {
          acc += static_cast<double>(x[i * w.cols + c]) * wr[c];
        }
        if (bias != nullptr) acc += At(*bias, r);
        y[i * w.rows + r] = static_cast<float>(acc);
      }
    }
  }

  void RmsNorm(const float* x, int64_t m, int64_t n, const WeightView& g, float eps,
               float* y) const override {
    for (int64_t i = 0; i < m; ++i) {
      double ss = 0.0;
      for (int64_t c = 0; c < n; ++c) ss += static_cast<double>(x[i * n + c]) * x[i * n + c];
      const double inv = 1.0 / std::sqrt(ss / static_cast<double>(n) + eps);
      for (int64_t c = 0; c < n; ++c) {
        y[i * n + c] = static_cast<float>(x[i * n + c] * inv * At(g, c));
      }
    }
  }

  void Rope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
            const float* inv_freq) const override {
    const int half = head_dim / 2;
    for (int64_t i = 0; i < m; ++i) {
      for (int h = 0; h < heads; ++h) {
        float* v = x + (i * heads + h) * head_dim;
        for (int j = 0; j < half; ++j) {
          const double ang = static_cast<double>(positions[i]) * inv_freq[j];
          const double c = std::cos(ang), s = std::sin(ang);
          const double a = v[j], b = v[j + half];
          v[j] = static_cast<float>(a * c - b * s);
          v[j + half] = static_cast<float>(b * c + a * s);
        }
      }
    }
  }

  void SiluMul(const float* gate, const float* up, int64_t n, float* out) const override {
    for (int64_t i = 0; i < n; ++i) {
      const double g = gate[i];
      out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
    }
  }

  void Add(float* y, const float* x, int64_t n) const override {
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void Embed(const WeightView& table, const int32_t* ids, int64_t m, float* out) const override {
    std::vector<float> row;
    for (int64_t i = 0; i < m; ++i) {
      const float* src = RowF32(table, ids[i], &row);
      std::copy(src, src + table.cols, out + i * table.cols);
    }
  }

  void Attention(const float* q, int h, const float* k, int64_t ldk, const float* v, int64_t ldv,
                 int64_t n, int d, float scale, float* o, float* lse) const override {
    AttentionPartialRef(q, h, k, ldk, v, ldv, n, d, scale, o, lse);
  }
};

// F16C from CPUID leaf 1 (clang's __builtin_cpu_supports does not know "f16c").
bool HasF16c() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
}

SimdLevel DetectSimd() {
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && HasF16c();
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return SimdLevel::kAvx512;
  }
  return avx2 ? SimdLevel::kAvx2 : SimdLevel::kScalar;
}

}  // namespace

const Ops& RefOps() {
  static const RefOpsImpl ops;
  return ops;
}

// Here rather than beside the fast kernels: the reference library (and every fuzz target that
// links quant.cc, whose repacking asks for it) needs it without them.
SimdLevel CpuSimdLevel() {
  static const SimdLevel v = DetectSimd();
  return v;
}

std::string_view SimdLevelName(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar:
      return "scalar";
    case SimdLevel::kAvx2:
      return "avx2";
    case SimdLevel::kAvx512:
      return "avx512";
  }
  return "?";
}

}  // namespace ragserve::kernels
