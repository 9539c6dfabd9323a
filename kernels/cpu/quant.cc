// The scalar side of kernels/cpu/quant.h: block (de)quantizers, activation quantization and the
// reference integer dot products. Built with -ffp-contract=off: every product and sum is rounded
// on its own (the dequantizer is bit-exact to the format's definition, and the reference GEMV is
// a fixed sequence of f32 operations that the tests can reproduce).
#include "kernels/cpu/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace ragserve::kernels {
namespace {

constexpr int kQK = 32;    // Q8_0 / Q4_0 block
constexpr int kQKK = 256;  // k-quant super-block

float Half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

void PutHalf(uint8_t* p, float v) {
  const uint16_t h = F32ToF16(v);
  std::memcpy(p, &h, 2);
}

// Round half away from zero (roundf), as an int.
int Nearest(float v) { return static_cast<int>(std::lround(v)); }

// ---------------------------------------------------------------- dequantization

void DequantQ8_0(const uint8_t* b, int64_t blocks, float* y) {
  for (int64_t i = 0; i < blocks; ++i, b += 34, y += kQK) {
    const float d = Half(b);
    const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
    for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(q[j]) * d;
  }
}

void DequantQ4_0(const uint8_t* b, int64_t blocks, float* y) {
  for (int64_t i = 0; i < blocks; ++i, b += 18, y += kQK) {
    const float d = Half(b);
    const uint8_t* qs = b + 2;
    for (int j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
      y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

// Scale and min of Q4_K sub-block j (0..7) from the 12 packed bytes.
void ScaleMinK4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void DequantQ4_K(const uint8_t* b, int64_t blocks, float* y) {
  for (int64_t i = 0; i < blocks; ++i, b += 144) {
    const float d = Half(b);
    const float dmin = Half(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* q = b + 16;
    for (int j = 0, is = 0; j < kQKK; j += 64, q += 32, is += 2) {
      uint8_t sc, m;
      ScaleMinK4(is, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc), m1 = dmin * static_cast<float>(m);
      ScaleMinK4(is + 1, scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc), m2 = dmin * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

// The 256 unsigned 6-bit values of a Q6_K block, in value order.
void Q6Values(const uint8_t* b, uint8_t* out) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  for (int n = 0; n < kQKK; n += 128, out += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      out[l] = static_cast<uint8_t>((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4));
      out[l + 32] = static_cast<uint8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
      out[l + 64] = static_cast<uint8_t>((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
      out[l + 96] = static_cast<uint8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
    }
  }
}

void DequantQ6_K(const uint8_t* b, int64_t blocks, float* y) {
  uint8_t q[kQKK];
  for (int64_t i = 0; i < blocks; ++i, b += 210, y += kQKK) {
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = Half(b + 208);
    Q6Values(b, q);
    for (int j = 0; j < kQKK; ++j) {
      y[j] = d * static_cast<float>(sc[j / 16]) * static_cast<float>(q[j] - 32);
    }
  }
}

// ---------------------------------------------------------------- quantization

// Q8_0: d = max|x| / 127, q = round(x / d).
void QuantQ8_0(const float* x, int64_t blocks, uint8_t* b) {
  for (int64_t i = 0; i < blocks; ++i, x += kQK, b += 34) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    PutHalf(b, d);
    for (int j = 0; j < kQK; ++j)
      b[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(Nearest(x[j] * id)));
  }
}

// Q4_0: the value of largest magnitude maps to -8: d = max / -8, q = min(15, trunc(x / d + 8.5)).
void QuantQ4_0(const float* x, int64_t blocks, uint8_t* b) {
  for (int64_t i = 0; i < blocks; ++i, x += kQK, b += 18) {
    float amax = 0.0f, mx = 0.0f;
    for (int j = 0; j < kQK; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        mx = x[j];
      }
    }
    const float d = mx / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    PutHalf(b, d);
    for (int j = 0; j < kQK / 2; ++j) {
      const int lo = std::min(15, static_cast<int>(x[j] * id + 8.5f));
      const int hi = std::min(15, static_cast<int>(x[j + kQK / 2] * id + 8.5f));
      b[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
    }
  }
}

// Q4_K: per sub-block of 32 an affine grid [-(dmin m), -(dmin m) + 15 d sc] through min(x, 0)
// and max(x); 6-bit scales and mins relative to the block's largest.
void QuantQ4_K(const float* x, int64_t blocks, uint8_t* b) {
  for (int64_t i = 0; i < blocks; ++i, x += kQKK, b += 144) {
    float scale[8], mins[8], max_scale = 0.0f, max_min = 0.0f;
    for (int s = 0; s < 8; ++s) {
      float lo = 0.0f, hi = -INFINITY;
      for (int l = 0; l < 32; ++l) {
        lo = std::min(lo, x[32 * s + l]);
        hi = std::max(hi, x[32 * s + l]);
      }
      scale[s] = (hi - lo) / 15.0f;
      mins[s] = -lo;
      max_scale = std::max(max_scale, scale[s]);
      max_min = std::max(max_min, mins[s]);
    }
    const float d = max_scale / 63.0f, dmin = max_min / 63.0f;
    PutHalf(b, d);
    PutHalf(b + 2, dmin);
    const float dq = Half(b), dminq = Half(b + 2);
    uint8_t sc[8], mn[8];
    for (int s = 0; s < 8; ++s) {
      sc[s] = static_cast<uint8_t>(dq > 0.0f ? std::clamp(Nearest(scale[s] / dq), 0, 63) : 0);
      mn[s] = static_cast<uint8_t>(dminq > 0.0f ? std::clamp(Nearest(mins[s] / dminq), 0, 63) : 0);
    }
    uint8_t* scales = b + 4;
    for (int j = 0; j < 4; ++j) {
      scales[j] = static_cast<uint8_t>((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
      scales[j + 4] = static_cast<uint8_t>((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
      scales[j + 8] = static_cast<uint8_t>((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
    }
    uint8_t q[kQKK];
    for (int s = 0; s < 8; ++s) {
      const float step = dq * static_cast<float>(sc[s]);
      const float off = dminq * static_cast<float>(mn[s]);
      for (int l = 0; l < 32; ++l) {
        q[32 * s + l] = static_cast<uint8_t>(
            step > 0.0f ? std::clamp(Nearest((x[32 * s + l] + off) / step), 0, 15) : 0);
      }
    }
    uint8_t* qs = b + 16;
    for (int c = 0; c < 4; ++c) {
      for (int l = 0; l < 32; ++l) {
        qs[32 * c + l] = static_cast<uint8_t>(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
      }
    }
  }
}

// Q6_K: per group of 16 a symmetric grid of step d * sc (sc an int8, |q - 32| <= 32).
void QuantQ6_K(const float* x, int64_t blocks, uint8_t* b) {
  for (int64_t i = 0; i < blocks; ++i, x += kQKK, b += 210) {
    float sub[16], max_sub = 0.0f;
    for (int g = 0; g < 16; ++g) {
      float amax = 0.0f;
      for (int l = 0; l < 16; ++l) amax = std::max(amax, std::fabs(x[16 * g + l]));
      sub[g] = amax / 31.0f;
      max_sub = std::max(max_sub, sub[g]);
    }
    PutHalf(b + 208, max_sub / 127.0f);
    const float d = Half(b + 208);
    int8_t* sc = reinterpret_cast<int8_t*>(b + 192);
    uint8_t L[kQKK];
    for (int g = 0; g < 16; ++g) {
      sc[g] = static_cast<int8_t>(d > 0.0f ? std::clamp(Nearest(sub[g] / d), 1, 127) : 0);
      const float step = d * static_cast<float>(sc[g]);
      for (int l = 0; l < 16; ++l) {
        const int v = step > 0.0f ? std::clamp(Nearest(x[16 * g + l] / step), -32, 31) : 0;
        L[16 * g + l] = static_cast<uint8_t>(v + 32);
      }
    }
    uint8_t* ql = b;
    uint8_t* qh = b + 128;
    for (int n = 0; n < 2; ++n) {
      const uint8_t* h = L + 128 * n;
      for (int l = 0; l < 32; ++l) {
        ql[64 * n + l] = static_cast<uint8_t>((h[l] & 15) | ((h[l + 64] & 15) << 4));
        ql[64 * n + l + 32] = static_cast<uint8_t>((h[l + 32] & 15) | ((h[l + 96] & 15) << 4));
        qh[32 * n + l] = static_cast<uint8_t>((h[l] >> 4) | ((h[l + 32] >> 4) << 2) |
                                              ((h[l + 64] >> 4) << 4) | ((h[l + 96] >> 4) << 6));
      }
    }
  }
}

// ---------------------------------------------------------------- reference dot products

// Row `wr` (nb blocks of format T) . activation row i.
float DotQ8_0(const uint8_t* wr, int64_t nb, const QuantizedActs& a, int64_t i) {
  const int8_t* q = a.Q(i);
  const float* da = a.d.data() + i * (a.cols / 32);
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b, wr += 34, q += 32) {
    const int8_t* w = reinterpret_cast<const int8_t*>(wr + 2);
    int32_t s = 0;
    for (int j = 0; j < 32; ++j) s += int32_t{w[j]} * q[j];
    sum += static_cast<float>(s) * (Half(wr) * da[b]);
  }
  return sum;
}

float DotQ4_0(const uint8_t* wr, int64_t nb, const QuantizedActs& a, int64_t i) {
  const int8_t* q = a.Q(i);
  const float* da = a.d.data() + i * (a.cols / 32);
  const int32_t* s32 = a.s32.data() + i * (a.cols / 32);
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b, wr += 18, q += 32) {
    const uint8_t* qs = wr + 2;
    int32_t s = 0;
    for (int j = 0; j < 16; ++j)
      s += (qs[j] & 15) * int32_t{q[j]} + (qs[j] >> 4) * int32_t{q[j + 16]};
    s -= 8 * s32[b];
    sum += static_cast<float>(s) * (Half(wr) * da[b]);
  }
  return sum;
}

float DotQ4_K(const uint8_t* wr, int64_t nb, const QuantizedActs& a, int64_t i) {
  const int8_t* q = a.Q(i);
  const float* da = a.d.data() + i * (a.cols / 256);
  const int32_t* s32 = a.s32.data() + i * (a.cols / 32);
  float sum = 0.0f;
  for (int64_t b = 0; b < nb; ++b, wr += 144, q += 256, s32 += 8) {
    const uint8_t* qs = wr + 16;
    int32_t i1 = 0, i2 = 0;
    for (int s = 0; s < 8; ++s) {
      uint8_t sc, m;
      ScaleMinK4(s, wr + 4, &sc, &m);
      const uint8_t* bytes = qs + 32 * (s / 2);
      const int shift = (s % 2) * 4;
      int32_t d = 0;
      for (int l = 0; l < 32; ++l) d += ((bytes[l] >> shift) & 15) * int32_t{q[32 * s + l]};
      i1 += sc * d;
      i2 += m * s32[s];
    }
    sum += (Half(wr) * da[b]) * static_cast<float>(i1);
    sum -= (Half(wr + 2) * da[b]) * static_cast<float>(i2);
  }
  return sum;
}

float DotQ6_K(const uint8_t* wr, int64_t nb, const QuantizedActs& a, int64_t i) {
  const int8_t* q = a.Q(i);
  const float* da = a.d.data() + i * (a.cols / 256);
  const int32_t* ls = a.lsum.data() + i * (a.cols / 4);
  float sum = 0.0f;
  uint8_t v[kQKK];
  for (int64_t b = 0; b < nb; ++b, wr += 210, q += 256, ls += 64) {
    Q6Values(wr, v);
    const int8_t* sc = reinterpret_cast<const int8_t*>(wr + 192);
    int32_t acc = 0;
    for (int g = 0; g < 16; ++g) {
      int32_t d = 0;
      for (int l = 0; l < 16; ++l) d += v[16 * g + l] * int32_t{q[16 * g + l]};
      const int32_t asum = ls[4 * g] + ls[4 * g + 1] + ls[4 * g + 2] + ls[4 * g + 3];
      acc += sc[g] * (d - 32 * asum);
    }
    sum += (Half(wr + 208) * da[b]) * static_cast<float>(acc);
  }
  return sum;
}

}  // namespace

void DequantizeRef(const void* src, DType t, int64_t n, float* dst) {
  const auto* b = static_cast<const uint8_t*>(src);
  const int64_t blocks = n / DTypeBlockValues(t);
  switch (t) {
    case DType::kQ8_0:
      DequantQ8_0(b, blocks, dst);
      return;
    case DType::kQ4_0:
      DequantQ4_0(b, blocks, dst);
      return;
    case DType::kQ4_K:
      DequantQ4_K(b, blocks, dst);
      return;
    case DType::kQ6_K:
      DequantQ6_K(b, blocks, dst);
      return;
    default:
      ConvertToF32(src, t, n, dst);
      return;
  }
}

void QuantizeRef(const float* x, DType t, int64_t n, void* dst) {
  auto* b = static_cast<uint8_t*>(dst);
  const int64_t blocks = n / DTypeBlockValues(t);
  switch (t) {
    case DType::kQ8_0:
      QuantQ8_0(x, blocks, b);
      return;
    case DType::kQ4_0:
      QuantQ4_0(x, blocks, b);
      return;
    case DType::kQ4_K:
      QuantQ4_K(x, blocks, b);
      return;
    case DType::kQ6_K:
      QuantQ6_K(x, blocks, b);
      return;
    default:
      ConvertFromF32(x, t, n, dst);
      return;
  }
}

int64_t PackedBytes(const WeightView& w) {
  static const bool avx512 = CpuSimdLevel() == SimdLevel::kAvx512;
  static const bool vnni = avx512 && __builtin_cpu_supports("avx512vnni");
  static const bool bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  const bool packs = w.dtype == DType::kQ4_0 || w.dtype == DType::kQ8_0
                         ? vnni
                         : w.dtype == DType::kBF16 && bf16 && w.cols % 2 == 0;
  if (!packs) return 0;
  const int64_t groups = (w.rows + kPackRows - 1) / kPackRows;
  return groups * kPackRows * w.RowBytes();
}

void PackWeights(const WeightView& w, void* dst) {
  if (w.dtype == DType::kBF16) {
    // Per group, chunk p (64 bytes) = each row's values 2p, 2p + 1 (4 bytes at 4r).
    const int64_t pairs = w.cols / 2, group = kPackRows * w.cols * 2;
    auto* out = static_cast<uint8_t*>(dst);
    for (int64_t r0 = 0; r0 < w.rows; r0 += kPackRows, out += group) {
      const int64_t n = std::min(kPackRows, w.rows - r0);
      if (n < kPackRows) std::memset(out, 0, static_cast<size_t>(group));  // padding: zero rows
      // Written in order, the group's rows read side by side (16 sequential streams).
      const auto* rows = static_cast<const uint8_t*>(w.Row(r0));
      const int64_t rb = w.cols * 2;
      for (int64_t p = 0; p < pairs; ++p) {
        for (int64_t r = 0; r < n; ++r) std::memcpy(out + 64 * p + 4 * r, rows + r * rb + 4 * p, 4);
      }
    }
    return;
  }
  const bool q8 = w.dtype == DType::kQ8_0;
  const int64_t bb = q8 ? 34 : 18, nb = w.cols / kQK, rb = w.RowBytes();
  const int64_t group = nb * kPackRows * bb;
  const auto* src = static_cast<const uint8_t*>(w.data);
  auto* out = static_cast<uint8_t*>(dst);
  for (int64_t r0 = 0; r0 < w.rows; r0 += kPackRows, out += group) {
    const int64_t n = std::min(kPackRows, w.rows - r0);
    if (n < kPackRows) std::memset(out, 0, static_cast<size_t>(group));  // padding: scale 0
    for (int64_t r = 0; r < n; ++r) {  // each source row read once, in order
      const uint8_t* blk = src + (r0 + r) * rb;
      for (int64_t b = 0; b < nb; ++b, blk += bb) {
        uint8_t* o = out + b * kPackRows * bb;
        std::memcpy(o + 2 * r, blk, 2);
        for (int c = 0; c < (q8 ? 8 : 4); ++c) {
          uint8_t* chunk = o + 32 + 64 * c + 4 * r;
          std::memcpy(chunk, blk + 2 + 4 * c, 4);
          if (q8) {
            for (int j = 0; j < 4; ++j) chunk[j] ^= 0x80;  // q + 128
          }
        }
      }
    }
  }
}

int ActBlock(DType t) { return t == DType::kQ8_0 || t == DType::kQ4_0 ? 32 : 256; }

void internal::QuantizeActRowScalar(const float* x, int64_t cols, int block, int8_t* q, float* d,
                                    int32_t* lsum) {
  for (int64_t b = 0; b < cols / block; ++b) {
    const float* xb = x + b * block;
    float amax = 0.0f;
    for (int j = 0; j < block; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    d[b] = amax / 127.0f;
    for (int j = 0; j < block; ++j) {
      q[b * block + j] =
          static_cast<int8_t>(std::clamp(static_cast<int>(std::nearbyint(xb[j] * id)), -127, 127));
    }
  }
  for (int64_t c = 0; c < cols / 4; ++c)
    lsum[c] = q[4 * c] + q[4 * c + 1] + q[4 * c + 2] + q[4 * c + 3];
}

void QuantMatMulRef(const QuantizedActs& a, const WeightView& w, float* y, int64_t ldy) {
  const int64_t nb = w.cols / DTypeBlockValues(w.dtype);
  for (int64_t r = 0; r < w.rows; ++r) {
    const auto* wr = static_cast<const uint8_t*>(w.Row(r));
    for (int64_t i = 0; i < a.m; ++i) {
      float v = 0.0f;
      switch (w.dtype) {
        case DType::kQ8_0:
          v = DotQ8_0(wr, nb, a, i);
          break;
        case DType::kQ4_0:
          v = DotQ4_0(wr, nb, a, i);
          break;
        case DType::kQ4_K:
          v = DotQ4_K(wr, nb, a, i);
          break;
        case DType::kQ6_K:
          v = DotQ6_K(wr, nb, a, i);
          break;
        default:
          break;
      }
      y[i * ldy + r] = v;
    }
  }
}

namespace internal {
// Scalar rows [r0, r1) (QuantGemvRows at kScalar).
void QuantGemvRowsScalar(const QuantizedActs& a, const WeightView& w, int64_t r0, int64_t r1,
                         float* y, int64_t ldy) {
  WeightView sub = w;
  sub.data = w.Row(r0);
  sub.rows = r1 - r0;
  QuantMatMulRef(a, sub, y + r0, ldy);
}
}  // namespace internal

}  // namespace ragserve::kernels
