// The SIMD side of kernels/cpu/quant.h: integer dot products of GGUF blocks with int8 activations
// for AVX2 (vpmaddubsw + vpmaddwd) and AVX-512 VNNI (vpdpbusd), per-function target attributes
// (no -march needed), chosen at run time; and QuantMatMul, the threaded GEMV / GEMM over them.
//
// Shape of a kernel: weight rows [r0, r1) against M activation rows i0.. (M <= 8 on AVX-512, <= 4
// on AVX2; decode: every row; prefill: a tile of M tokens, the caller loops over tiles so the same
// weight rows are read from cache). Per weight row and step (64 values on AVX-512, 32 on AVX2) the
// weight bytes are decoded once into unsigned bytes in value order (Q8_0: |w|, its sign moved onto
// the activations), then every activation row does one integer dot product, lane sums of 4 values
// (int32), exactly the integers the scalar reference sums. Q8_0/Q4_0 blocks scale their lane
// sums in f32 right away (scale vector = d_w per block x d_a per block, broadcast over the block's
// lanes); the k-quants multiply lane sums by their 6/8-bit sub-block scales in
// int32 and scale once per 256-value super-block. Packed Q4_0 / Q8_0 (PackWeights) turn this
// around: 16 weight rows per register (a lane each) against one token's broadcast activations, up
// to 16 tokens per unpacked block.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/simd_sum.h"
#include "kernels/cpu/spin_pool.h"

namespace ragserve::kernels {
namespace internal {
void QuantGemvRowsScalar(const QuantizedActs& a, const WeightView& w, int64_t r0, int64_t r1,
                         float* y, int64_t ldy);
}  // namespace internal

namespace {

#define RS_Q_AVX2 __attribute__((target("avx2,fma,f16c")))
#define RS_Q_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define RS_Q_BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")))

// How far ahead in the weight stream to prefetch (as the f32/bf16 GEMVs do).
constexpr int64_t kPrefetch = 1024;

inline uint16_t Bits16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
}

// Scale and min of Q4_K sub-block j (0..7) from the 12 packed bytes.
inline void ScaleMinK4(const uint8_t* q, uint8_t* sc, uint8_t* m) {
  for (int j = 0; j < 4; ++j) {
    sc[j] = q[j] & 63;
    m[j] = q[j + 4] & 63;
  }
  for (int j = 4; j < 8; ++j) {
    sc[j] = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m[j] = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// ScaleMinK4 in 32-bit words, the 8 scales and 8 mins packed a byte each (bytes stored one by one
// and read back as a word would stall store-to-load forwarding on every super-block).
inline void ScaleMinK4Packed(const uint8_t* q, uint64_t* sc, uint64_t* m) {
  uint32_t u0, u1, u2;
  std::memcpy(&u0, q, 4);
  std::memcpy(&u1, q + 4, 4);
  std::memcpy(&u2, q + 8, 4);
  const uint32_t sc_lo = u0 & 0x3f3f3f3fu, m_lo = u1 & 0x3f3f3f3fu;
  const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
  const uint32_t m_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
  *sc = sc_lo | (uint64_t{sc_hi} << 32);
  *m = m_lo | (uint64_t{m_hi} << 32);
}

// Integer sum of one 32-value Q8_0 / Q4_0 block against activations q (the odd last block of a
// row on AVX-512, which steps two blocks at a time).
inline int32_t BlockDot32(DType t, const uint8_t* blk, const int8_t* q) {
  int32_t s = 0;
  if (t == DType::kQ8_0) {
    const int8_t* w = reinterpret_cast<const int8_t*>(blk + 2);
    for (int j = 0; j < 32; ++j) s += int32_t{w[j]} * q[j];
  } else {
    const uint8_t* qs = blk + 2;
    for (int j = 0; j < 16; ++j) {
      s += ((qs[j] & 15) - 8) * int32_t{q[j]} + ((qs[j] >> 4) - 8) * int32_t{q[j + 16]};
    }
  }
  return s;
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// ---------------------------------------------------------------- AVX-512 VNNI

RS_Q_AVX512 inline float Hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

RS_Q_AVX512 inline float H512(const uint8_t* p) { return _cvtsh_ss(Bits16(p)); }

template <int M>
RS_Q_AVX512 void Q32Rows512(DType t, const QuantizedActs& a, int64_t i0, const WeightView& w,
                            int64_t r0, int64_t r1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / 32, rb = w.RowBytes(), bb = DTypeBlockBytes(t);
  const bool q8 = t == DType::kQ8_0;
  const int8_t* aq[M];
  const float* ad[M];
  const int32_t* lo[M];
  const int32_t* lp[M];
  for (int i = 0; i < M; ++i) {
    aq[i] = a.Q(i0 + i);
    ad[i] = a.d.data() + (i0 + i) * nb;
    lo[i] = a.loff.data() + (i0 + i) * (a.cols / 4);
    lp[i] = a.loffp.data() + (i0 + i) * (a.cols / 128 * 16);
  }
  // Lanes 4k .. 4k + 3 take element k of a quad.
  const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  // Lanes 0-7 take element 0 of a pair, lanes 8-15 element 1.
  const __m512i pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.data) + r * rb;
    __m512 acc[M];
    for (int i = 0; i < M; ++i) acc[i] = _mm512_setzero_ps();
    int64_t b = 0;
    if (q8) {  // four blocks at a time against the permuted activations (QuantizedActs::qp)
      for (; b + 4 <= nb; b += 4) {
        const uint8_t* b0 = wr + b * 34;
        _mm_prefetch(reinterpret_cast<const char*>(b0) + kPrefetch, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(b0) + kPrefetch + 64, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(b0) + kPrefetch + 128, _MM_HINT_T0);
        // First 16 values of each block, then the last 16: the layout of qp.
        __m512i lo =
            _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 2)));
        __m512i hi =
            _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 18)));
        auto half = [](const uint8_t* p) {
          return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        };
        lo = _mm512_inserti32x4(lo, half(b0 + 36), 1);
        hi = _mm512_inserti32x4(hi, half(b0 + 52), 1);
        lo = _mm512_inserti32x4(lo, half(b0 + 70), 2);
        hi = _mm512_inserti32x4(hi, half(b0 + 86), 2);
        lo = _mm512_inserti32x4(lo, half(b0 + 104), 3);
        hi = _mm512_inserti32x4(hi, half(b0 + 120), 3);
        __m128i dh = _mm_cvtsi32_si128(Bits16(b0));
        dh = _mm_insert_epi16(dh, Bits16(b0 + 34), 1);
        dh = _mm_insert_epi16(dh, Bits16(b0 + 68), 2);
        dh = _mm_insert_epi16(dh, Bits16(b0 + 102), 3);
        const __m128 dw4 = _mm_cvtph_ps(dh);
        const __mmask64 nlo = _mm512_movepi8_mask(lo), nhi = _mm512_movepi8_mask(hi);
        const __m512i alo = _mm512_abs_epi8(lo), ahi = _mm512_abs_epi8(hi);
        for (int i = 0; i < M; ++i) {
          const int8_t* ap = a.Qp(i0 + i) + b * 32;
          const __m512i xl = _mm512_load_si512(ap), xh = _mm512_load_si512(ap + 64);
          __m512i dot =
              _mm512_dpbusd_epi32(_mm512_setzero_si512(), alo,
                                  _mm512_mask_sub_epi8(xl, nlo, _mm512_setzero_si512(), xl));
          dot = _mm512_dpbusd_epi32(dot, ahi,
                                    _mm512_mask_sub_epi8(xh, nhi, _mm512_setzero_si512(), xh));
          const __m128 s4 = _mm_mul_ps(dw4, _mm_loadu_ps(ad[i] + b));
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                   _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(s4)), acc[i]);
        }
      }
    }
    if (!q8) {  // Q4_0 four blocks at a time against the permuted activations (QuantizedActs::qp)
      const __m512i low4x = _mm512_set1_epi8(0x0F);
      for (; b + 4 <= nb; b += 4) {
        const uint8_t* b0 = wr + b * 18;
        _mm_prefetch(reinterpret_cast<const char*>(b0) + kPrefetch, _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(b0) + kPrefetch + 64, _MM_HINT_T0);
        __m512i v =
            _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 2)));
        v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 20)), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 38)), 2);
        v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 56)), 3);
        const __m512i l = _mm512_and_si512(v, low4x);
        const __m512i h = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4x);
        __m128i dh = _mm_cvtsi32_si128(Bits16(b0));
        dh = _mm_insert_epi16(dh, Bits16(b0 + 18), 1);
        dh = _mm_insert_epi16(dh, Bits16(b0 + 36), 2);
        dh = _mm_insert_epi16(dh, Bits16(b0 + 54), 3);
        const __m128 dw4 = _mm_cvtph_ps(dh);
        for (int i = 0; i < M; ++i) {
          const int8_t* ap = a.Qp(i0 + i) + b * 32;
          __m512i dot = _mm512_loadu_si512(lp[i] + b * 4);
          dot = _mm512_dpbusd_epi32(dot, l, _mm512_load_si512(ap));
          dot = _mm512_dpbusd_epi32(dot, h, _mm512_load_si512(ap + 64));
          const __m128 s4 = _mm_mul_ps(dw4, _mm_loadu_ps(ad[i] + b));
          acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                   _mm512_permutexvar_ps(quad, _mm512_castps128_ps512(s4)), acc[i]);
        }
      }
    }
    for (; b + 2 <= nb; b += 2) {
      const uint8_t* b0 = wr + b * bb;
      _mm_prefetch(reinterpret_cast<const char*>(b0) + kPrefetch, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b0) + kPrefetch + 64, _MM_HINT_T0);
      // The two blocks' d_w as [d0, d1, ., .].
      const __m128 dw2 =
          _mm_cvtph_ps(_mm_insert_epi16(_mm_cvtsi32_si128(Bits16(b0)), Bits16(b0 + bb), 1));
      __m512i wq;
      __mmask64 neg = 0;
      if (q8) {
        const __m512i raw = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2))),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 36)), 1);
        neg = _mm512_movepi8_mask(raw);
        wq = _mm512_abs_epi8(raw);
      } else {
        const __m256i v = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 2))),
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 20)), 1);
        const __m256i l = _mm256_and_si256(v, low4);
        const __m256i h = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(l), h, 1);
        wq = _mm512_shuffle_i64x2(x, x, _MM_SHUFFLE(3, 1, 2, 0));  // lo0 hi0 lo1 hi1
      }
      for (int i = 0; i < M; ++i) {
        __m512i av = _mm512_load_si512(aq[i] + b * 32);
        __m512i dot;
        if (q8) {
          av = _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av);
          dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, av);
        } else {  // starts from -8 x the lane sums: the nibbles' offset
          dot = _mm512_dpbusd_epi32(_mm512_loadu_si512(lo[i] + b * 8), wq, av);
        }
        const __m128 s2 =
            _mm_mul_ps(dw2, _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(ad[i] + b))));
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                                 _mm512_permutexvar_ps(pair, _mm512_castps128_ps512(s2)), acc[i]);
      }
    }
    for (int i = 0; i < M; ++i) {
      float s = Hsum512(acc[i]);
      if (b < nb) {  // odd block count: the last block
        const uint8_t* blk = wr + b * bb;
        s += static_cast<float>(BlockDot32(t, blk, aq[i] + b * 32)) * (H512(blk) * ad[i][b]);
      }
      y[(i0 + i) * ldy + r] = s;
    }
  }
}

inline int32_t Load32(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Q4_0 / Q8_0 (F) from the packed form (PackWeights): rows [r0, r1) (r0 a multiple of kPackRows,
// so a group boundary) against the T activation rows of the tile at i0 (QuantizedActs::tiled). Per
// group of 16 rows and block, the weights go once into 8 registers of unsigned bytes, wq[j] holding
// (int32 lane r) row r's values 4j .. 4j + 3 (Q4_0: unpacked from its 4 chunks; Q8_0: its 8
// chunks as loaded); then each token's block is 8 vpdpbusd against its 4-value groups broadcast,
// starting from the offset (Q4_0: -8, Q8_0: -128 x the block's activation sum), and one
// multiply-add of the int32 sums by d_w (16 rows) x d_a into the token's accumulator, whose lanes
// are the 16 outputs. Every activation operand is at a fixed offset from the tile's block.
template <DType F, int T>
RS_Q_AVX512 void PackedRows512(const QuantizedActs& a, int64_t i0, const WeightView& w, int64_t r0,
                               int64_t r1, float* y, int64_t ldy) {
  constexpr bool kQ8 = F == DType::kQ8_0;
  constexpr int64_t kBlockBytes = kQ8 ? 34 : 18;
  constexpr int64_t kGroupBlock = kPackRows * kBlockBytes;  // weight bytes per group and block
  constexpr int64_t kTileBlock = T * 40;                    // activation bytes per tile and block
  const int64_t nb = w.cols / 32;
  const uint8_t* tile = a.Tile(i0);
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  for (int64_t g = r0; g < r1; g += kPackRows) {
    const uint8_t* gp = static_cast<const uint8_t*>(w.packed) + g * nb * kBlockBytes;
    __m512 acc[T];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* p = gp + b * kGroupBlock;
      for (int64_t off = 0; off < kGroupBlock; off += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(p) + kPrefetch + off, _MM_HINT_T0);
      }
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      __m512i wq[8];
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        if constexpr (kQ8) {
          wq[c] = _mm512_loadu_si512(p + 32 + 64 * c);
          wq[c + 4] = _mm512_loadu_si512(p + 32 + 64 * (c + 4));
        } else {
          const __m512i v = _mm512_loadu_si512(p + 32 + 64 * c);
          wq[c] = _mm512_and_si512(v, low4);
          wq[c + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        }
      }
      const uint8_t* ab = tile + b * kTileBlock;
      const auto* ad = reinterpret_cast<const float*>(ab + T * 32);
      const auto* ao = reinterpret_cast<const int32_t*>(ab + T * 36);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        const int8_t* q = reinterpret_cast<const int8_t*>(ab) + 32 * t;
        // ao holds -8 x the block sum; Q8_0's offset is 16 times that.
        __m512i s = _mm512_set1_epi32(ao[t]);
        if constexpr (kQ8) s = _mm512_slli_epi32(s, 4);
        // Few tokens (decode) leave too little independent work to hide a chain of 8 dependent
        // vpdpbusd: values 0-15 and 16-31 then sum in two chains.
        __m512i s2 = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
          const __m512i x = _mm512_set1_epi32(Load32(q + 4 * j));
          if (T < 4 && j >= 4) {
            s2 = _mm512_dpbusd_epi32(s2, wq[j], x);
          } else {
            s = _mm512_dpbusd_epi32(s, wq[j], x);
          }
        }
        if constexpr (T < 4) s = _mm512_add_epi32(s, s2);
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(ad[t])),
                                 acc[t]);
      }
    }
    const auto rows = static_cast<__mmask16>((1u << std::min(kPackRows, r1 - g)) - 1);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) _mm512_mask_storeu_ps(y + (i0 + t) * ldy + g, rows, acc[t]);
  }
}

// BF16 (packed, Bf16PackedMatMul): rows [r0, r1) (r0 a multiple of kPackRows) against the T
// tokens of the tile `tile` ([pair][S][T] int32: each token's bf16 pair, S parts of it: S = 1 the
// activations rounded to bf16, S = 2 that and the rounded remainder). Per group of 16 rows and
// pair, one weight load and S x T vdpbf16ps with the token's pair broadcast; fewer than 8 tokens
// (too few independent chains to hide the latency) sum even and odd pairs apart.
// One pair of PackedBf16Rows512: the 16 rows' weights wp against the T tokens' S parts at a.
template <int S, int T>
RS_Q_BF16 inline __attribute__((always_inline)) void Bf16Step(__m512* acc, const uint8_t* wp,
                                                              const uint32_t* a) {
  const __m512bh wv = (__m512bh)_mm512_loadu_si512(wp);
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
#pragma GCC unroll 2
    for (int k = 0; k < S; ++k) {
      acc[t] = _mm512_dpbf16_ps(acc[t], wv, (__m512bh)_mm512_set1_epi32(a[k * T + t]));
    }
  }
}

template <int S, int T>
RS_Q_BF16 void PackedBf16Rows512(const uint32_t* tile, const WeightView& w, int64_t r0, int64_t r1,
                                 int64_t i0, float* y, int64_t ldy) {
  constexpr int kChains = T < 8 ? 2 : 1;
  const int64_t pairs = w.cols / 2;
  for (int64_t g = r0; g < r1; g += kPackRows) {
    const uint8_t* gp = static_cast<const uint8_t*>(w.packed) + g * w.cols * 2;
    __m512 acc[kChains][T];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      for (int c = 0; c < kChains; ++c) acc[c][t] = _mm512_setzero_ps();
    }
    int64_t p = 0;
    for (; p + kChains <= pairs; p += kChains) {
      _mm_prefetch(reinterpret_cast<const char*>(gp + 64 * p) + kPrefetch, _MM_HINT_T0);
#pragma GCC unroll 2
      for (int c = 0; c < kChains; ++c)
        Bf16Step<S, T>(acc[c], gp + 64 * (p + c), tile + (p + c) * S * T);
    }
    for (; p < pairs; ++p) Bf16Step<S, T>(acc[0], gp + 64 * p, tile + p * S * T);  // odd last pair
    const auto rows = static_cast<__mmask16>((1u << std::min(kPackRows, r1 - g)) - 1);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      __m512 v = acc[0][t];
      if constexpr (kChains == 2) v = _mm512_add_ps(v, acc[1][t]);
      _mm512_mask_storeu_ps(y + (i0 + t) * ldy + g, rows, v);
    }
  }
}

// The activations of a tile of n tokens (rows of x, `cols` apart) into PackedBf16Rows512's layout:
// token k's pair p, part j at tile[(p * S + j) * n + k]; part 0 = bf16(x) (nearest, ties to even),
// part 1 (S = 2) = bf16(x - part 0). 32 columns of every token at a time, so that the writes stay
// within a few cache lines.
template <int S>
RS_Q_BF16 void Bf16Tile(const float* xt, int64_t cols, uint32_t* tile, int64_t n) {
  alignas(64) uint32_t pr[S][16];
  for (int64_t c = 0; c < cols; c += 32) {
    for (int64_t k = 0; k < n; ++k) {
      const float* x = xt + k * cols;
      const int64_t left = std::min<int64_t>(32, cols - c);  // even: whole pairs
      const __mmask16 lo = static_cast<__mmask16>((1u << std::min<int64_t>(16, left)) - 1);
      const __mmask16 hi = static_cast<__mmask16>(left > 16 ? (1u << (left - 16)) - 1 : 0);
      const __m512 a = _mm512_maskz_loadu_ps(lo, x + c), b = _mm512_maskz_loadu_ps(hi, x + c + 16);
      const __m512bh h = _mm512_cvtne2ps_pbh(b, a);
      _mm512_store_si512(pr[0], (__m512i)h);
      if constexpr (S == 2) {
        // The parts back in f32: bf16 bits in the high half of each value.
        const __m512i hb = (__m512i)h;
        const __m512 ha = _mm512_castsi512_ps(_mm512_slli_epi32(hb, 16));
        const __m512 hh = _mm512_castsi512_ps(_mm512_and_si512(hb, _mm512_set1_epi32(-65536)));
        // ha / hh: pairs' even / odd values; a / b hold values 0-15 / 16-31 in order, so the
        // remainders go through the same pack as the values.
        const __m512i even =
            _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        const __m512i odd =
            _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        const __m512 xe = _mm512_permutex2var_ps(a, even, b),
                     xo = _mm512_permutex2var_ps(a, odd, b);
        const __m512 re = _mm512_sub_ps(xe, ha), ro = _mm512_sub_ps(xo, hh);
        // Interleave the remainders back to value order, then round them.
        const __m512i lo16 =
            _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        const __m512i hi16 =
            _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
        const __m512 r0 = _mm512_permutex2var_ps(re, lo16, ro),
                     r1 = _mm512_permutex2var_ps(re, hi16, ro);
        _mm512_store_si512(pr[1], (__m512i)_mm512_cvtne2ps_pbh(r1, r0));
      }
      for (int64_t j = 0; j < left / 2; ++j) {
        for (int s = 0; s < S; ++s) tile[((c / 2 + j) * S + s) * n + k] = pr[s][j];
      }
    }
  }
}

// The k-quants multiply the sub-block scales in while widening: vpmaddubsw (u8 x s8 -> int16
// pairs, at most 63 * 127 * 2) then vpdpwssd with the scale of each pair's sub-block (int16).
template <int M>
RS_Q_AVX512 void Q4KRows512(const QuantizedActs& a, int64_t i0, const WeightView& w, int64_t r0,
                            int64_t r1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / 256, rb = w.RowBytes();
  const int8_t* aq[M];
  const float* da[M];
  const int16_t* s32[M];
  for (int i = 0; i < M; ++i) {
    aq[i] = a.Q(i0 + i);
    da[i] = a.d.data() + (i0 + i) * nb;
    s32[i] = a.s32w.data() + (i0 + i) * (a.cols / 32);
  }
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  // Chunk c (64 values): words 0-15 take scale 2c, words 16-31 scale 2c + 1.
  __m512i sidx[4];
  for (int c = 0; c < 4; ++c) {
    sidx[c] = _mm512_inserti64x4(_mm512_set1_epi16(static_cast<int16_t>(2 * c)),
                                 _mm256_set1_epi16(static_cast<int16_t>(2 * c + 1)), 1);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.data) + r * rb;
    __m512 acc[M];
    for (int i = 0; i < M; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = wr + b * 144;
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetch, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetch + 64, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetch + 128, _MM_HINT_T0);
      uint64_t sc8, mn8;  // the 8 scales and 8 mins, a byte each (kept in registers)
      ScaleMinK4Packed(blk + 4, &sc8, &mn8);
      const __m128i scw = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc8)));
      const __m128i mnw = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(mn8)));
      const __m128 dd =
          _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk)));  // d, dmin
      __m512i isum[M];
      __m128i msum[M];  // the mins' term sum_s m_s * (sum of sub-block s), in 4 lanes
      for (int i = 0; i < M; ++i) {
        isum[i] = _mm512_setzero_si512();
        msum[i] =
            _mm_madd_epi16(mnw, _mm_loadu_si128(reinterpret_cast<const __m128i*>(s32[i] + b * 8)));
      }
      for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * c));
        const __m256i l = _mm256_and_si256(v, low4);
        const __m256i h = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
        const __m512i x = _mm512_inserti64x4(_mm512_castsi256_si512(l), h, 1);
        const __m512i scv = _mm512_permutexvar_epi16(sidx[c], _mm512_castsi128_si512(scw));
        for (int i = 0; i < M; ++i) {
          const __m512i av = _mm512_load_si512(aq[i] + b * 256 + 64 * c);
          isum[i] = _mm512_dpwssd_epi32(isum[i], _mm512_maddubs_epi16(x, av), scv);
        }
      }
      for (int i = 0; i < M; ++i) {
        const __m512 d = _mm512_set1_ps(_mm_cvtss_f32(dd) * da[i][b]);
        const __m512 dm = _mm512_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dd)) * da[i][b]);
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), d, acc[i]);
        acc[i] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(_mm512_zextsi128_si512(msum[i])), dm, acc[i]);
      }
    }
    for (int i = 0; i < M; ++i) y[(i0 + i) * ldy + r] = Hsum512(acc[i]);
  }
}

template <int M>
RS_Q_AVX512 void Q6KRows512(const QuantizedActs& a, int64_t i0, const WeightView& w, int64_t r0,
                            int64_t r1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / 256, rb = w.RowBytes();
  const int8_t* aq[M];
  const float* da[M];
  const int16_t* s16[M];
  for (int i = 0; i < M; ++i) {
    aq[i] = a.Q(i0 + i);
    da[i] = a.d.data() + (i0 + i) * nb;
    s16[i] = a.s16.data() + (i0 + i) * (a.cols / 16);
  }
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i three = _mm512_set1_epi8(0x03);
  // Per-word shift counts: the lower 256 bits take qh >> 0 (A) / >> 4 (B), the upper >> 2 / >> 6.
  const __m512i shift_a = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
  const __m512i shift_b = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(6), 1);
  // Values 64k .. 64k + 63 (groups 4k .. 4k + 3): each group's scale over its 8 int16 pairs.
  __m512i sidx[4];
  for (int k = 0; k < 4; ++k) {
    alignas(64) int16_t idx[32];
    for (int j = 0; j < 32; ++j) idx[j] = static_cast<int16_t>(4 * k + j / 8);
    sidx[k] = _mm512_load_si512(idx);
  }
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.data) + r * rb;
    __m512 acc[M];
    for (int i = 0; i < M; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = wr + b * 210;
      for (int64_t off = 0; off < 256; off += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetch + off, _MM_HINT_T0);
      }
      const __m256i scw =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 192)));
      const float d = H512(blk + 208);
      __m512i isum[M];
      for (int i = 0; i < M; ++i) {
        // -32 sum_g scale_g (sum of group g): the 6-bit values' offset, subtracted from the start.
        const __m256i off = _mm256_madd_epi16(
            scw, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s16[i] + b * 16)));
        isum[i] = _mm512_zextsi256_si512(
            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 5)));
      }
      for (int n = 0; n < 2; ++n) {
        const __m512i ql = _mm512_loadu_si512(blk + 64 * n);
        const __m256i qh256 =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n));
        const __m512i qh = _mm512_inserti64x4(_mm512_castsi256_si512(qh256), qh256, 1);
        for (int part = 0; part < 2; ++part) {
          const __m512i nib = part == 0 ? _mm512_and_si512(ql, low4)
                                        : _mm512_and_si512(_mm512_srli_epi16(ql, 4), low4);
          const __m512i hb =
              _mm512_and_si512(_mm512_srlv_epi16(qh, part == 0 ? shift_a : shift_b), three);
          const __m512i x = _mm512_or_si512(nib, _mm512_slli_epi16(hb, 4));
          const __m512i scv =
              _mm512_permutexvar_epi16(sidx[2 * n + part], _mm512_castsi256_si512(scw));
          const int64_t v0 = b * 256 + 128 * n + 64 * part;  // first value
          for (int i = 0; i < M; ++i) {
            const __m512i av = _mm512_load_si512(aq[i] + v0);
            isum[i] = _mm512_dpwssd_epi32(isum[i], _mm512_maddubs_epi16(x, av), scv);
          }
        }
      }
      for (int i = 0; i < M; ++i) {
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), _mm512_set1_ps(d * da[i][b]), acc[i]);
      }
    }
    for (int i = 0; i < M; ++i) y[(i0 + i) * ldy + r] = Hsum512(acc[i]);
  }
}

// ---------------------------------------------------------------- AVX2

RS_Q_AVX2 inline float H256(const uint8_t* p) { return _cvtsh_ss(Bits16(p)); }

// Lane sums of 4 u8 x s8 products (what vpdpbusd computes), from vpmaddubsw + vpmaddwd.
RS_Q_AVX2 inline __m256i Dp256(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

template <int M>
RS_Q_AVX2 void Q32Rows256(DType t, const QuantizedActs& a, int64_t i0, const WeightView& w,
                          int64_t r0, int64_t r1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / 32, rb = w.RowBytes(), bb = DTypeBlockBytes(t);
  const bool q8 = t == DType::kQ8_0;
  const int8_t* aq[M];
  const float* ad[M];
  const int32_t* ls[M];
  for (int i = 0; i < M; ++i) {
    aq[i] = a.Q(i0 + i);
    ad[i] = a.d.data() + (i0 + i) * nb;
    ls[i] = a.lsum.data() + (i0 + i) * (a.cols / 4);
  }
  const __m128i low4 = _mm_set1_epi8(0x0F);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.data) + r * rb;
    __m256 acc[M];
    for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* b0 = wr + b * bb;
      _mm_prefetch(reinterpret_cast<const char*>(b0) + kPrefetch, _MM_HINT_T0);
      const __m256 dw = _mm256_set1_ps(H256(b0));
      __m256i wq, sgn = _mm256_setzero_si256();
      if (q8) {
        sgn = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b0 + 2));
        wq = _mm256_sign_epi8(sgn, sgn);  // |w| (-128 stays 0x80 = 128 unsigned)
      } else {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b0 + 2));
        const __m128i lo = _mm_and_si128(v, low4);
        const __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), low4);
        wq = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
      }
      for (int i = 0; i < M; ++i) {
        const __m256i av = _mm256_load_si256(reinterpret_cast<const __m256i*>(aq[i] + b * 32));
        __m256i dot;
        if (q8) {
          dot = Dp256(wq, _mm256_sign_epi8(av, sgn));
        } else {
          dot = _mm256_sub_epi32(
              Dp256(wq, av),
              _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ls[i] + b * 8)),
                                3));
        }
        const __m256 sc = _mm256_mul_ps(dw, _mm256_broadcast_ss(ad[i] + b));
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, acc[i]);
      }
    }
    for (int i = 0; i < M; ++i) y[(i0 + i) * ldy + r] = internal::HorizontalSum256(acc[i]);
  }
}

template <int M>
RS_Q_AVX2 void Q4KRows256(const QuantizedActs& a, int64_t i0, const WeightView& w, int64_t r0,
                          int64_t r1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / 256, rb = w.RowBytes();
  const int8_t* aq[M];
  const float* da[M];
  const int32_t* s32[M];
  for (int i = 0; i < M; ++i) {
    aq[i] = a.Q(i0 + i);
    da[i] = a.d.data() + (i0 + i) * nb;
    s32[i] = a.s32.data() + (i0 + i) * (a.cols / 32);
  }
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.data) + r * rb;
    __m256 acc[M];
    float corr[M];
    for (int i = 0; i < M; ++i) {
      acc[i] = _mm256_setzero_ps();
      corr[i] = 0.0f;
    }
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = wr + b * 144;
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetch, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetch + 64, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetch + 128, _MM_HINT_T0);
      uint8_t sc[8], mn[8];
      ScaleMinK4(blk + 4, sc, mn);
      const float d = H256(blk), dmin = H256(blk + 2);
      __m256i isum[M];
      for (int i = 0; i < M; ++i) isum[i] = _mm256_setzero_si256();
      for (int c = 0; c < 4; ++c) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * c));
        for (int h = 0; h < 2; ++h) {
          const __m256i x =
              h == 0 ? _mm256_and_si256(v, low4) : _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          const __m256i scv = _mm256_set1_epi16(sc[2 * c + h]);
          for (int i = 0; i < M; ++i) {
            const __m256i av = _mm256_load_si256(
                reinterpret_cast<const __m256i*>(aq[i] + b * 256 + 64 * c + 32 * h));
            // The sub-block scale multiplied in while widening the int16 pairs.
            isum[i] =
                _mm256_add_epi32(isum[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x, av), scv));
          }
        }
      }
      for (int i = 0; i < M; ++i) {
        int32_t i2 = 0;
        for (int s = 0; s < 8; ++s) i2 += mn[s] * s32[i][b * 8 + s];
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_set1_ps(d * da[i][b]), acc[i]);
        corr[i] += (dmin * da[i][b]) * static_cast<float>(i2);
      }
    }
    for (int i = 0; i < M; ++i)
      y[(i0 + i) * ldy + r] = internal::HorizontalSum256(acc[i]) - corr[i];
  }
}

template <int M>
RS_Q_AVX2 void Q6KRows256(const QuantizedActs& a, int64_t i0, const WeightView& w, int64_t r0,
                          int64_t r1, float* y, int64_t ldy) {
  const int64_t nb = w.cols / 256, rb = w.RowBytes();
  const int8_t* aq[M];
  const float* da[M];
  const int16_t* s16[M];
  for (int i = 0; i < M; ++i) {
    aq[i] = a.Q(i0 + i);
    da[i] = a.d.data() + (i0 + i) * nb;
    s16[i] = a.s16.data() + (i0 + i) * (a.cols / 16);
  }
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i three = _mm256_set1_epi8(0x03);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* wr = static_cast<const uint8_t*>(w.data) + r * rb;
    __m256 acc[M];
    for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = wr + b * 210;
      for (int64_t off = 0; off < 256; off += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetch + off, _MM_HINT_T0);
      }
      const int8_t* scales = reinterpret_cast<const int8_t*>(blk + 192);
      const __m256i scw =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
      const float d = H256(blk + 208);
      __m256i isum[M];
      for (int i = 0; i < M; ++i) {
        // -32 sum_g scale_g (sum of group g): the 6-bit values' offset, subtracted from the start.
        const __m256i off = _mm256_madd_epi16(
            scw, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s16[i] + b * 16)));
        isum[i] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 5));
      }
      for (int n = 0; n < 2; ++n) {
        const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 128 + 32 * n));
        for (int k = 0; k < 4; ++k) {  // values 128n + 32k .. +31
          const __m256i ql =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * n + 32 * (k & 1)));
          const __m256i nib =
              k < 2 ? _mm256_and_si256(ql, low4) : _mm256_and_si256(_mm256_srli_epi16(ql, 4), low4);
          const __m256i hb =
              _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k)), three);
          const __m256i x = _mm256_or_si256(nib, _mm256_slli_epi16(hb, 4));
          const int g0 = 8 * n + 2 * k;  // groups g0 (int16 pairs 0-7) and g0 + 1 (8-15)
          const __m256i scv = _mm256_inserti128_si256(_mm256_set1_epi16(scales[g0]),
                                                      _mm_set1_epi16(scales[g0 + 1]), 1);
          const int64_t v0 = b * 256 + 128 * n + 32 * k;
          for (int i = 0; i < M; ++i) {
            const __m256i av = _mm256_load_si256(reinterpret_cast<const __m256i*>(aq[i] + v0));
            isum[i] =
                _mm256_add_epi32(isum[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x, av), scv));
          }
        }
      }
      for (int i = 0; i < M; ++i) {
        acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_set1_ps(d * da[i][b]), acc[i]);
      }
    }
    for (int i = 0; i < M; ++i) y[(i0 + i) * ldy + r] = internal::HorizontalSum256(acc[i]);
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// 16 values at a time: |x| max per block, then q = cvtps (round to nearest even, as nearbyint in
// the scalar form) saturated to int8 (|x * 127 / max| <= 127 already); sums of 4 consecutive q.
RS_Q_AVX512 void internal::QuantizeActRowAvx512(const float* x, int64_t cols, int block, int8_t* q,
                                                float* d, int32_t* lsum) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t b = 0; b < cols / block; ++b) {
    const float* xb = x + b * block;
    __m512 mx = _mm512_setzero_ps();
    for (int j = 0; j < block; j += 16) {
      mx = _mm512_max_ps(mx, _mm512_andnot_ps(sign, _mm512_loadu_ps(xb + j)));
    }
    const float amax = _mm512_reduce_max_ps(mx);
    const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
    d[b] = amax / 127.0f;
    const __m512 vid = _mm512_set1_ps(id);
    for (int j = 0; j < block; j += 16) {
      const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + j), vid));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * block + j), _mm512_cvtsepi32_epi8(v));
    }
  }
  // Sums of 4 consecutive int8: vpmaddubsw with ones (u8 ones x s8 q) then vpmaddwd with ones.
  const __m512i ones8 = _mm512_set1_epi8(1);
  const __m512i ones16 = _mm512_set1_epi16(1);
  for (int64_t c = 0; c < cols; c += 64) {
    // The row's q is padded to 64 bytes (QuantizedActs::ldq); only whole lanes are stored.
    const __m512i v = _mm512_loadu_si512(q + c);
    const __m512i s = _mm512_madd_epi16(_mm512_maddubs_epi16(ones8, v), ones16);
    const int64_t lanes = std::min<int64_t>(16, (cols - c) / 4);
    _mm512_mask_storeu_epi32(lsum + c / 4, static_cast<__mmask16>((1u << lanes) - 1), s);
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace {

// ---------------------------------------------------------------- dispatch

// Activation rows per kernel call (a prefill tile): every decoded weight vector serves this many
// (AVX-512: 32 registers hold 8 rows' accumulators; AVX2's 16 hold 4).
constexpr int kTile512 = 8, kTile256 = 4;
// Tokens per tile of the packed kernels: 16 accumulators + 8 weight registers.
constexpr int kTilePacked = kPackTokens;

// PackedRows512<F, 1 .. kTilePacked>, indexed by the tile's token count - 1.
using RowsFn = void (*)(const QuantizedActs&, int64_t, const WeightView&, int64_t, int64_t, float*,
                        int64_t);
template <DType F, int... T>
constexpr std::array<RowsFn, sizeof...(T)> PackedKernels(std::integer_sequence<int, T...>) {
  return {&PackedRows512<F, T + 1>...};
}
constexpr auto kPackedQ4_0 =
    PackedKernels<DType::kQ4_0>(std::make_integer_sequence<int, kTilePacked>());
constexpr auto kPackedQ8_0 =
    PackedKernels<DType::kQ8_0>(std::make_integer_sequence<int, kTilePacked>());

// PackedBf16Rows512<S, 1 .. kTilePacked>, indexed by the tile's token count - 1.
using Bf16RowsFn = void (*)(const uint32_t*, const WeightView&, int64_t, int64_t, int64_t, float*,
                            int64_t);
template <int S, int... T>
constexpr std::array<Bf16RowsFn, sizeof...(T)> Bf16Kernels(std::integer_sequence<int, T...>) {
  return {&PackedBf16Rows512<S, T + 1>...};
}
constexpr auto kPackedBf16 = Bf16Kernels<1>(std::make_integer_sequence<int, kTilePacked>());
constexpr auto kPackedBf16x2 = Bf16Kernels<2>(std::make_integer_sequence<int, kTilePacked>());

template <int M>
void Rows512(const QuantizedActs& a, int64_t i0, const WeightView& w, int64_t r0, int64_t r1,
             float* y, int64_t ldy) {
  const DType t = w.dtype;
  if (t == DType::kQ4_K) return Q4KRows512<M>(a, i0, w, r0, r1, y, ldy);
  if (t == DType::kQ6_K) return Q6KRows512<M>(a, i0, w, r0, r1, y, ldy);
  return Q32Rows512<M>(t, a, i0, w, r0, r1, y, ldy);
}

template <int M>
void RowsM(SimdLevel level, const QuantizedActs& a, int64_t i0, const WeightView& w, int64_t r0,
           int64_t r1, float* y, int64_t ldy) {
  const DType t = w.dtype;
  if (level == SimdLevel::kAvx512) return Rows512<M>(a, i0, w, r0, r1, y, ldy);
  if (t == DType::kQ4_K) return Q4KRows256<M>(a, i0, w, r0, r1, y, ldy);
  if (t == DType::kQ6_K) return Q6KRows256<M>(a, i0, w, r0, r1, y, ldy);
  return Q32Rows256<M>(t, a, i0, w, r0, r1, y, ldy);
}

}  // namespace

// QuantizeActs lives here, beside its AVX-512 row quantizer, so that quant.cc (the block formats
// the loaders and fuzz targets need) depends on no SIMD code.
void QuantizeActs(const float* x, int64_t m, int64_t cols, int block, QuantizedActs* out) {
  QuantizedActs& a = *out;
  a.m = m;
  a.cols = cols;
  a.block = block;
  a.ldq = (cols + 63) / 64 * 64;
  a.q.resize(static_cast<size_t>(m * a.ldq + 64));
  a.qoff = (64 - reinterpret_cast<uintptr_t>(a.q.data()) % 64) % 64;
  const int64_t nb = cols / block;
  a.d.resize(static_cast<size_t>(m * nb));
  a.lsum.resize(static_cast<size_t>(m * cols / 4));
  a.s32.resize(static_cast<size_t>(m * cols / 32));
  a.loff.resize(block == 32 ? static_cast<size_t>(m * cols / 4) : 0);
  a.tiled.resize(block == 32 ? static_cast<size_t>(m * nb * 40) : 0);
  a.qp.resize(block == 32 ? a.q.size() : 0);
  a.qpoff = block == 32 ? (64 - reinterpret_cast<uintptr_t>(a.qp.data()) % 64) % 64 : 0;
  a.loffp.resize(block == 32 ? static_cast<size_t>(m * (cols / 128) * 16) : 0);
  a.s16.resize(block == 32 ? 0 : static_cast<size_t>(m * cols / 16));
  a.s32w.resize(block == 32 ? 0 : static_cast<size_t>(m * cols / 32));
  static const bool avx512 =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * cols;
    int8_t* q = a.q.data() + a.qoff + i * a.ldq;
    if (avx512) {
      internal::QuantizeActRowAvx512(xi, cols, block, q, a.d.data() + i * nb,
                                     a.lsum.data() + i * (cols / 4));
    } else {
      internal::QuantizeActRowScalar(xi, cols, block, q, a.d.data() + i * nb,
                                     a.lsum.data() + i * (cols / 4));
    }
    const int32_t* ls = a.lsum.data() + i * (cols / 4);
    for (int64_t c = 0; c < cols / 32; ++c) {
      int32_t s = 0;
      for (int j = 0; j < 8; ++j) s += ls[8 * c + j];
      a.s32[i * (cols / 32) + c] = s;
    }
    if (block == 32) {
      for (int64_t c = 0; c < cols / 4; ++c) a.loff[i * (cols / 4) + c] = -8 * ls[c];
      // Row i in its tile (QuantizedActs::tiled): tile i / 16 of n rows, row i % 16 of it.
      const int64_t t0 = i / kPackTokens * kPackTokens, n = std::min(kPackTokens, m - t0);
      uint8_t* tile = a.tiled.data() + t0 * nb * 40;
      for (int64_t c = 0; c < nb; ++c) {
        uint8_t* tb = tile + c * n * 40;
        const int32_t off = -8 * a.s32[i * nb + c];
        std::memcpy(tb + (i - t0) * 32, q + c * 32, 32);
        std::memcpy(tb + n * 32 + (i - t0) * 4, &a.d[i * nb + c], 4);
        std::memcpy(tb + n * 36 + (i - t0) * 4, &off, 4);
      }
      int8_t* qp = a.qp.data() + a.qpoff + i * a.ldq;
      int32_t* lp = a.loffp.data() + i * (cols / 128 * 16);
      for (int64_t g = 0; g < cols / 128; ++g) {
        for (int h = 0; h < 2; ++h) {
          for (int k = 0; k < 4; ++k) {
            std::memcpy(qp + g * 128 + h * 64 + k * 16, q + g * 128 + k * 32 + h * 16, 16);
          }
        }
        for (int j = 0; j < 16; ++j) {
          const int64_t c = g * 32 + (j / 4) * 8 + j % 4;  // lane index into ls
          lp[g * 16 + j] = -8 * (ls[c] + ls[c + 4]);
        }
      }
    } else {
      for (int64_t c = 0; c < cols / 16; ++c) {
        a.s16[i * (cols / 16) + c] =
            static_cast<int16_t>(ls[4 * c] + ls[4 * c + 1] + ls[4 * c + 2] + ls[4 * c + 3]);
      }
      for (int64_t c = 0; c < cols / 32; ++c) {
        a.s32w[i * (cols / 32) + c] = static_cast<int16_t>(a.s32[i * (cols / 32) + c]);
      }
    }
  }
}

SimdLevel QuantSimdLevel() {
  static const bool vnni = __builtin_cpu_supports("avx512vnni");
  const SimdLevel l = FastOpsSimdLevel();
  return l == SimdLevel::kAvx512 && !vnni ? SimdLevel::kAvx2 : l;
}

void QuantGemvRows(SimdLevel level, const QuantizedActs& a, const WeightView& w, int64_t r0,
                   int64_t r1, float* y, int64_t ldy) {
  if (level == SimdLevel::kScalar) {
    internal::QuantGemvRowsScalar(a, w, r0, r1, y, ldy);
    return;
  }
  if (level == SimdLevel::kAvx512 && w.packed != nullptr && r0 % kPackRows == 0) {
    const auto& kernels = w.dtype == DType::kQ8_0 ? kPackedQ8_0 : kPackedQ4_0;
    for (int64_t i0 = 0; i0 < a.m; i0 += kTilePacked) {
      kernels[std::min<int64_t>(kTilePacked, a.m - i0) - 1](a, i0, w, r0, r1, y, ldy);
    }
    return;
  }
  const int tile = level == SimdLevel::kAvx512 ? kTile512 : kTile256;
  for (int64_t i0 = 0; i0 < a.m; i0 += tile) {
    switch (std::min<int64_t>(tile, a.m - i0)) {
      case 1:
        RowsM<1>(level, a, i0, w, r0, r1, y, ldy);
        break;
      case 2:
        RowsM<2>(level, a, i0, w, r0, r1, y, ldy);
        break;
      case 3:
        RowsM<3>(level, a, i0, w, r0, r1, y, ldy);
        break;
      case 4:
        RowsM<4>(level, a, i0, w, r0, r1, y, ldy);
        break;
      case 5:
        Rows512<5>(a, i0, w, r0, r1, y, ldy);
        break;
      case 6:
        Rows512<6>(a, i0, w, r0, r1, y, ldy);
        break;
      case 7:
        Rows512<7>(a, i0, w, r0, r1, y, ldy);
        break;
      default:
        Rows512<8>(a, i0, w, r0, r1, y, ldy);
        break;
    }
  }
}

void QuantMatMul(const float* x, int64_t m, int count, const WeightView* const* ws,
                 float* const* ys, int threads) {
  if (m <= 0 || count <= 0) return;
  thread_local QuantizedActs a32, a256;
  const int64_t cols = ws[0]->cols;
  bool need32 = false, need256 = false;
  int64_t work = 0;
  for (int k = 0; k < count; ++k) {
    (ActBlock(ws[k]->dtype) == 32 ? need32 : need256) = true;
    work += ws[k]->Bytes() * std::max<int64_t>(1, m);
  }
  if (need32) QuantizeActs(x, m, cols, 32, &a32);
  if (need256) QuantizeActs(x, m, cols, 256, &a256);
  struct Task {
    int mat;
    int64_t r0, r1;
  };
  thread_local std::vector<Task> tasks;
  tasks.clear();
  for (int k = 0; k < count; ++k) {
    const WeightView& w = *ws[k];
    // Decode: ~96 KiB of weights per task (claiming a task is noise next to it, and the tasks
    // still balance); prefill: 16 rows, read from cache by every tile of tokens.
    const int64_t rows =
        m <= kGemvMaxRows
            ? std::max<int64_t>(1, (96 << 10) / std::max<int64_t>(1, w.RowBytes()) / 16) * 16
            : 16;
    for (int64_t r = 0; r < w.rows; r += rows) tasks.push_back({k, r, std::min(w.rows, r + rows)});
  }
  const SimdLevel level = QuantSimdLevel();
  const int nthreads = work >= (int64_t{1} << 19) ? threads : 1;
  // The workers see these through pointers (thread_locals name each thread's own copy).
  const Task* task = tasks.data();
  const QuantizedActs* act32 = &a32;
  const QuantizedActs* act256 = &a256;
  ParallelFor(nthreads, static_cast<int64_t>(tasks.size()), [&](int64_t t) {
    const Task& tk = task[t];
    const WeightView& w = *ws[tk.mat];
    QuantGemvRows(level, ActBlock(w.dtype) == 32 ? *act32 : *act256, w, tk.r0, tk.r1, ys[tk.mat],
                  w.rows);
  });
}

bool Bf16PackedAvailable() {
  static const bool bf16 = __builtin_cpu_supports("avx512bf16");
  return bf16 && FastOpsSimdLevel() == SimdLevel::kAvx512;
}

Bf16Acts Bf16ActsFromEnv() {
  static const Bf16Acts mode = [] {
    const char* env = std::getenv("RAGSERVE_BF16_ACTS");
    return env != nullptr && env[0] == '1' ? Bf16Acts::kRounded : Bf16Acts::kSplit;
  }();
  return mode;
}

void Bf16PackedMatMul(const float* x, int64_t m, const WeightView& w, float* y, int threads,
                      Bf16Acts acts_mode) {
  if (m <= 0 || w.rows <= 0) return;
  const bool split = acts_mode == Bf16Acts::kSplit;
  const int parts = split ? 2 : 1;
  const int64_t cols = w.cols;
  thread_local std::vector<uint32_t> acts;
  acts.resize(static_cast<size_t>(m * (cols / 2) * parts));
  uint32_t* tiles = acts.data();
  const bool parallel = m * w.rows * cols >= (int64_t{1} << 22);
  // Tile t (n tokens from token 16 t) at tiles + 16 t * cols / 2 * parts.
  ParallelFor(parallel ? threads : 1, (m + kTilePacked - 1) / kTilePacked, [&](int64_t t) {
    const int64_t t0 = t * kTilePacked, n = std::min<int64_t>(kTilePacked, m - t0);
    uint32_t* tile = tiles + t0 * (cols / 2) * parts;
    if (split) {
      Bf16Tile<2>(x + t0 * cols, cols, tile, n);
    } else {
      Bf16Tile<1>(x + t0 * cols, cols, tile, n);
    }
  });
  const auto& kernels = split ? kPackedBf16x2 : kPackedBf16;
  const int64_t groups = (w.rows + kPackRows - 1) / kPackRows;
  ParallelFor(parallel ? threads : 1, groups, [&](int64_t g) {
    const int64_t r0 = g * kPackRows, r1 = std::min(w.rows, r0 + kPackRows);
    for (int64_t i0 = 0; i0 < m; i0 += kTilePacked) {
      const int64_t n = std::min<int64_t>(kTilePacked, m - i0);
      kernels[n - 1](tiles + i0 * (cols / 2) * parts, w, r0, r1, i0, y, w.rows);
    }
  });
}

}  // namespace ragserve::kernels
