// Attention kernels (contract: kernels/cuda/attention.h):
//   FlashDecodeKernel   split-K flash-decoding over a paged KV view (few queries, long contexts)
//   MergeSplitsKernel   LSE merge of the split-K partials
//   FlashPrefillKernel  tiled flash-attention prefill (many queries, causal/window/block masks)
//   MergePartialsKernel the public LSE merge of two partials (APE factor on the b side)
//
// Scores are kept in the base-2 domain: q is pre-multiplied by scale * log2(e), so every softmax
// exponential is one exp2f, and lse = ln(2) * (m + log2(l)) at the end.
#include "kernels/cuda/attention.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace ragserve::kernels::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFullMask = 0xffffffffu;

// ---- Element loads ---------------------------------------------------------------------------

// The scalar fallback's element type: the dtype is read at run time (LoadAsFloat), one element per
// load. Used when rows are not 16-byte aligned (head_dim * elem_size % 16 != 0, or odd pointers).
struct AnyDType {};

// Elements per load: a 16-byte vector for the typed paths, one element for the fallback.
template <typename T>
struct ChunkElems {
  static constexpr int value = 16 / static_cast<int>(sizeof(T));
};
template <>
struct ChunkElems<AnyDType> {
  static constexpr int value = 1;
};

// Loads ChunkElems<T> elements starting at element `off` of `pool` as floats into out[].
template <typename T>
__device__ __forceinline__ void LoadChunk(const void* pool, int64_t off, DType dt, float* out);

template <>
__device__ __forceinline__ void LoadChunk<float>(const void* pool, int64_t off, DType, float* out) {
  const float4 x = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(pool) + off));
  out[0] = x.x;
  out[1] = x.y;
  out[2] = x.z;
  out[3] = x.w;
}

template <>
__device__ __forceinline__ void LoadChunk<__half>(const void* pool, int64_t off, DType,
                                                  float* out) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(static_cast<const __half*>(pool) + off));
  const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __half22float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

template <>
__device__ __forceinline__ void LoadChunk<__nv_bfloat16>(const void* pool, int64_t off, DType,
                                                         float* out) {
  const uint4 raw =
      __ldg(reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(pool) + off));
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f = __bfloat1622float2(h[i]);
    out[2 * i] = f.x;
    out[2 * i + 1] = f.y;
  }
}

template <>
__device__ __forceinline__ void LoadChunk<AnyDType>(const void* pool, int64_t off, DType dt,
                                                    float* out) {
  out[0] = LoadAsFloat(pool, dt, off);
}

// ---- Paged KV geometry -----------------------------------------------------------------------

// PagedKvView flattened for the kernels. Key positions are int (length <= 2^30 is checked).
struct KvGeom {
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* pages = nullptr;
  int page_size = 1;        // clamped to <= max(length, 1): the same page/row for every key
  int page_shift = -1;      // log2(page_size) when it is a power of two, else -1
  int length = 0;           // keys stored
  int head_dim = 0;         // elements per (token, kv head) row
  int64_t row_stride = 0;   // elements between consecutive tokens (kv_heads * head_dim)
  int64_t page_stride = 0;  // elements between consecutive pages (page_size * row_stride)
  DType dtype = DType::kF32;
};

// Element offset of the (token j, kv head kvh) row in the K/V pools.
__device__ __forceinline__ int64_t RowOffset(const KvGeom& kv, int j, int kvh) {
  int page;
  int row;
  if (kv.page_shift >= 0) {
    page = j >> kv.page_shift;
    row = j & (kv.page_size - 1);
  } else {
    page = j / kv.page_size;
    row = j - page * kv.page_size;
  }
  return static_cast<int64_t>(__ldg(kv.pages + page)) * kv.page_stride +
         static_cast<int64_t>(row) * kv.row_stride + static_cast<int64_t>(kvh) * kv.head_dim;
}

// Keys [*lo, *hi) seen by query i of n (window already clamped to [0, length]; 0: unbounded).
__host__ __device__ __forceinline__ void KeyRange(int length, int n, int i, bool causal, int window,
                                                  int* lo, int* hi) {
  if (!causal) {  // a block: every key, or the last `window` of them
    *lo = (window > 0 && length - window > 0) ? length - window : 0;
    *hi = length;
    return;
  }
  const int idx = length - n + i;
  *hi = idx + 1;
  *lo = (window > 0 && idx + 1 - window > 0) ? idx + 1 - window : 0;
}

// exp2(x - m) for a running max m that may be -inf (an empty side weighs 0, never NaN).
__device__ __forceinline__ float SafeExp2(float x, float m) {
  return x == -INFINITY ? 0.0f : exp2f(x - m);
}

// ---- Split-K flash-decoding ------------------------------------------------------------------

constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kMaxSplits = 1024;
constexpr int kMinKeysPerSplit = 128;

// Thread layout of the decode kernel for loader T and head-dim bucket kMaxD: a "key group" of
// kLanes consecutive lanes reads one K/V row (lane li owns chunks li, li + kLanes, ...), so a warp
// reads 32 / kLanes rows per load instruction, each row as contiguous 16-byte pieces.
template <typename T, int kMaxD>
struct DecodeCfg {
  static constexpr int kCE = ChunkElems<T>::value;            // elements per load
  static constexpr int kChunks = kMaxD / kCE;                 // loads per row (bucket)
  static constexpr int kLanes = kChunks < 32 ? kChunks : 32;  // lanes per key
  static constexpr int kCPL = kChunks / kLanes;               // loads per lane per row
  static constexpr int kE = kCPL * kCE;                       // elements per lane per row
  static constexpr int kGroups = kDecodeThreads / kLanes;     // key groups per block
  static constexpr int kKeysPerGroup = kE <= 4 ? 4 : 2;       // keys per group per iteration
  static constexpr int kStep = kGroups * kKeysPerGroup;       // keys per block iteration
  static_assert(kChunks * kCE == kMaxD && kChunks % kLanes == 0, "bad decode layout");
};

struct DecodeParams {
  const float* q = nullptr;  // [n, heads, head_dim]
  int n = 0;
  int heads = 0;
  int group = 0;           // query heads per kv head
  int head_subgroups = 0;  // ceil(group / kGT): blocks sharing one kv head's group
  float qscale = 0.0f;     // scale * log2(e)
  bool causal = true;
  int window = 0;
  int splits = 1;
  int chunk = 0;         // keys per split
  float* o = nullptr;    // [n, heads, splits, head_dim] (the output itself when splits == 1)
  float* lse = nullptr;  // [n, heads, splits]
};

// q: [n, H, D], k/v pages: [P, page_size, Hkv, D] -> o: [n, H, splits, D], lse: [n, H, splits]
// grid (head_subgroups * n * splits, Hkv), block kDecodeThreads; blockIdx.x = (split * n + i) *
// head_subgroups + sub, so the blocks reading the same keys (other queries, other heads of the
// group) run side by side and share them through L2. Block (sub, i, split, kvh) attends query i's
// heads kvh * group + sub * kGT + [0, kGT) to the keys of its split (a chunk of
// [lo(query 0), length) cut to query i's own range) and writes a normalized partial (o, lse).
template <typename T, int kMaxD, int kGT>
__global__ void __launch_bounds__(kDecodeThreads)
    FlashDecodeKernel(const DecodeParams p, const KvGeom kv) {
  using Cfg = DecodeCfg<T, kMaxD>;
  constexpr int kL = Cfg::kLanes;
  constexpr int kE = Cfg::kE;
  constexpr int kCE = Cfg::kCE;
  constexpr int kCPL = Cfg::kCPL;
  constexpr int kKPG = Cfg::kKeysPerGroup;

  __shared__ float acc_s[kGT][kMaxD];
  __shared__ float l_s[kGT];
  __shared__ float m_s[kDecodeWarps][kGT];

  const int sub = static_cast<int>(blockIdx.x % p.head_subgroups);
  const int rest = static_cast<int>(blockIdx.x / p.head_subgroups);
  const int qi = rest % p.n;
  const int split = rest / p.n;
  const int kvh = static_cast<int>(blockIdx.y);
  const int h0 = kvh * p.group + sub * kGT;
  const int nh = min(kGT, p.group - sub * kGT);
  const int head_dim = kv.head_dim;

  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int li = lane % kL;  // lane within the key group
  const int gid = tid / kL;  // key group within the block

  for (int x = tid; x < kGT * kMaxD; x += kDecodeThreads) (&acc_s[0][0])[x] = 0.0f;
  if (tid < kGT) l_s[tid] = 0.0f;

  int lo;
  int hi;
  int lo0;
  int hi0;
  KeyRange(kv.length, p.n, qi, p.causal, p.window, &lo, &hi);
  KeyRange(kv.length, p.n, 0, p.causal, p.window, &lo0, &hi0);
  const int64_t split_begin = lo0 + static_cast<int64_t>(split) * p.chunk;
  const int begin = static_cast<int>(max(static_cast<int64_t>(lo), split_begin));
  const int end = static_cast<int>(min(static_cast<int64_t>(hi), split_begin + p.chunk));

  // This lane's slice of the (pre-scaled) query rows: element t * kCE + e is dim
  // (li + t * kL) * kCE + e. Dims past head_dim (and heads past nh) are zero.
  float q[kGT][kE];
#pragma unroll
  for (int g = 0; g < kGT; ++g) {
    const float* qrow = p.q + (static_cast<int64_t>(qi) * p.heads + h0 + g) * head_dim;
#pragma unroll
    for (int t = 0; t < kCPL; ++t) {
#pragma unroll
      for (int e = 0; e < kCE; ++e) {
        const int d = (li + t * kL) * kCE + e;
        q[g][t * kCE + e] = (g < nh && d < head_dim) ? qrow[d] * p.qscale : 0.0f;
      }
    }
  }

  float m[kGT];
  float l[kGT];
  float acc[kGT][kE];
#pragma unroll
  for (int g = 0; g < kGT; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < kE; ++e) acc[g][e] = 0.0f;
  }

  // The trip count is uniform over the block (begin/end are), so full-mask shuffles are safe;
  // keys past `end` are masked per group.
  for (int base = begin; base < end; base += Cfg::kStep) {
    float kf[kKPG][kE];
    float vf[kKPG][kE];
    bool valid[kKPG];
    // All loads of the iteration are issued before any math (kKPG rows of K and V in flight).
#pragma unroll
    for (int u = 0; u < kKPG; ++u) {
      const int j = base + gid * kKPG + u;
      valid[u] = j < end;
      const int64_t row = valid[u] ? RowOffset(kv, j, kvh) : 0;
#pragma unroll
      for (int t = 0; t < kCPL; ++t) {
        const int d0 = (li + t * kL) * kCE;
        if (valid[u] && d0 < head_dim) {
          LoadChunk<T>(kv.k, row + d0, kv.dtype, &kf[u][t * kCE]);
          LoadChunk<T>(kv.v, row + d0, kv.dtype, &vf[u][t * kCE]);
        } else {
#pragma unroll
          for (int e = 0; e < kCE; ++e) {
            kf[u][t * kCE + e] = 0.0f;
            vf[u][t * kCE + e] = 0.0f;
          }
        }
      }
    }
#pragma unroll
    for (int g = 0; g < kGT; ++g) {
      float s[kKPG];
#pragma unroll
      for (int u = 0; u < kKPG; ++u) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < kE; ++e) dot = fmaf(q[g][e], kf[u][e], dot);
#pragma unroll
        for (int off = kL / 2; off > 0; off >>= 1) dot += __shfl_xor_sync(kFullMask, dot, off);
        s[u] = valid[u] ? dot : -INFINITY;
      }
      float mx = m[g];
#pragma unroll
      for (int u = 0; u < kKPG; ++u) mx = fmaxf(mx, s[u]);
      if (mx > m[g]) {  // new running max: rescale (m[g] = -inf gives corr = 0 on empty state)
        const float corr = exp2f(m[g] - mx);
        l[g] *= corr;
#pragma unroll
        for (int e = 0; e < kE; ++e) acc[g][e] *= corr;
        m[g] = mx;
      }
#pragma unroll
      for (int u = 0; u < kKPG; ++u) {
        const float pu = valid[u] ? exp2f(s[u] - m[g]) : 0.0f;
        l[g] += pu;
#pragma unroll
        for (int e = 0; e < kE; ++e) acc[g][e] = fmaf(pu, vf[u][e], acc[g][e]);
      }
    }
  }

  // Combine the key groups of each warp (butterfly over lanes kL, 2 kL, ...: partners own the
  // same dims), then the warps through shared memory.
#pragma unroll
  for (int off = kL; off < 32; off <<= 1) {
#pragma unroll
    for (int g = 0; g < kGT; ++g) {
      const float mo = __shfl_xor_sync(kFullMask, m[g], off);
      const float lo_ = __shfl_xor_sync(kFullMask, l[g], off);
      const float mx = fmaxf(m[g], mo);
      const float wa = SafeExp2(m[g], mx);
      const float wb = SafeExp2(mo, mx);
      l[g] = l[g] * wa + lo_ * wb;
#pragma unroll
      for (int e = 0; e < kE; ++e) {
        const float other = __shfl_xor_sync(kFullMask, acc[g][e], off);
        acc[g][e] = acc[g][e] * wa + other * wb;
      }
      m[g] = mx;
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int g = 0; g < kGT; ++g) m_s[warp][g] = m[g];
  }
  __syncthreads();
  float mb[kGT];  // the block's max per head
#pragma unroll
  for (int g = 0; g < kGT; ++g) {
    mb[g] = m_s[0][g];
#pragma unroll
    for (int w = 1; w < kDecodeWarps; ++w) mb[g] = fmaxf(mb[g], m_s[w][g]);
  }
  if (lane < kL) {
#pragma unroll
    for (int g = 0; g < kGT; ++g) {
      const float w = SafeExp2(m[g], mb[g]);
      if (w == 0.0f) continue;
#pragma unroll
      for (int t = 0; t < kCPL; ++t) {
#pragma unroll
        for (int e = 0; e < kCE; ++e) {
          atomicAdd(&acc_s[g][(li + t * kL) * kCE + e], acc[g][t * kCE + e] * w);
        }
      }
      if (li == 0) atomicAdd(&l_s[g], l[g] * w);
    }
  }
  __syncthreads();

  for (int x = tid; x < nh * head_dim; x += kDecodeThreads) {
    const int g = x / head_dim;
    const int d = x - g * head_dim;
    const float sum = l_s[g];
    const int64_t out_row = (static_cast<int64_t>(qi) * p.heads + h0 + g) * p.splits + split;
    p.o[out_row * head_dim + d] = sum > 0.0f ? acc_s[g][d] / sum : 0.0f;
  }
  if (tid < nh) {
    float mine = mb[0];
#pragma unroll
    for (int g = 1; g < kGT; ++g) {
      if (g == tid) mine = mb[g];
    }
    const float sum = l_s[tid];
    const int64_t out_row = (static_cast<int64_t>(qi) * p.heads + h0 + tid) * p.splits + split;
    p.lse[out_row] = sum > 0.0f ? (mine + log2f(sum)) * kLn2 : -INFINITY;
  }
}

// Block-wide max/sum over kDecodeThreads-sized blocks (all threads get the result).
template <bool kMax>
__device__ __forceinline__ float BlockReduce(float x, float* scratch) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float y = __shfl_xor_sync(kFullMask, x, off);
    x = kMax ? fmaxf(x, y) : x + y;
  }
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int warps = static_cast<int>(blockDim.x) / 32;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (threadIdx.x % 32 == 0) scratch[warp] = x;
  __syncthreads();
  x = scratch[0];
  for (int w = 1; w < warps; ++w) x = kMax ? fmaxf(x, scratch[w]) : x + scratch[w];
  return x;
}

// o_part: [rows, splits, D], lse_part: [rows, splits] -> o: [rows, D], lse: [rows]
// grid (rows), block kDecodeThreads; rows = n * H. Splits with lse = -inf (no keys) weigh 0; a row
// with no keys at all gets o = 0, lse = -inf.
__global__ void __launch_bounds__(kDecodeThreads)
    MergeSplitsKernel(const float* __restrict__ o_part, const float* __restrict__ lse_part,
                      int splits, int head_dim, float* __restrict__ o, float* __restrict__ lse) {
  __shared__ float w_s[kMaxSplits];
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const float* lp = lse_part + row * splits;
  const int tid = static_cast<int>(threadIdx.x);

  float mx = -INFINITY;
  for (int s = tid; s < splits; s += blockDim.x) mx = fmaxf(mx, lp[s]);
  mx = BlockReduce<true>(mx, scratch);
  float sum = 0.0f;
  for (int s = tid; s < splits; s += blockDim.x) {
    const float w = lp[s] == -INFINITY ? 0.0f : expf(lp[s] - mx);
    w_s[s] = w;
    sum += w;
  }
  sum = BlockReduce<false>(sum, scratch);  // its barriers also publish w_s

  const float* op = o_part + row * splits * head_dim;
  for (int d = tid; d < head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float w = w_s[s];
      if (w != 0.0f) acc = fmaf(w, op[static_cast<int64_t>(s) * head_dim + d], acc);
    }
    o[row * head_dim + d] = sum > 0.0f ? acc / sum : 0.0f;
  }
  if (tid == 0) lse[row] = sum > 0.0f ? mx + logf(sum) : -INFINITY;
}

// ---- Tiled prefill ---------------------------------------------------------------------------

constexpr int kPrefillThreads = 128;
// The block's rows are (query, head-of-group) pairs: row R of kv head kvh is query R / group,
// head kvh * group + R % group, so a group's heads share every K/V tile.
// Threads: 16 row groups of 8 consecutive lanes; row group rg owns rows rg * kRM + [0, kRM);
// lane tc of it owns tile keys tc + 8 * c and output dims tc * 4 + 32 * t + [0, 4).
template <int kD>
struct PrefillCfg;
template <>
struct PrefillCfg<64> {
  static constexpr int kRM = 4;
  static constexpr int kBK = 64;
};
template <>
struct PrefillCfg<128> {
  static constexpr int kRM = 4;
  static constexpr int kBK = 32;
};
template <>
struct PrefillCfg<256> {
  static constexpr int kRM = 2;
  // 24 keys per tile keeps shared memory at 86,208 bytes: under the 99 KB opt-in limit of
  // sm_86/sm_89 (A10, L4, L40S), which 32 keys (103,808 bytes) exceeds.
  static constexpr int kBK = 24;
};

template <int kD>
struct PrefillLayout {
  static constexpr int kRM = PrefillCfg<kD>::kRM;
  static constexpr int kBK = PrefillCfg<kD>::kBK;
  static constexpr int kBQ = 16 * kRM;  // rows per block
  static constexpr int kKN = kBK / 8;   // tile keys per lane
  static constexpr int kDN = kD / 8;    // output dims per lane
  static constexpr int kQLd = kD + 4;   // padded row strides (floats; float4-aligned)
  static constexpr int kKLd = kD + 4;
  static constexpr int kVLd = kD;
  static constexpr int kPLd = kBK + 1;
  static constexpr int kQOff = 0;
  static constexpr int kKOff = kQOff + kBQ * kQLd;
  static constexpr int kVOff = kKOff + kBK * kKLd;
  static constexpr int kPOff = kVOff + kBK * kVLd;
  static constexpr int kFloats = kPOff + kBQ * kPLd;
  // Row offsets of the tile's keys (int64) after the floats; kFloats is even so they are aligned.
  static constexpr size_t kSmemBytes = kFloats * sizeof(float) + kBK * sizeof(int64_t);
  static_assert(kFloats % 2 == 0, "row offsets must be 8-byte aligned");
};

struct PrefillParams {
  const float* q = nullptr;  // [n, heads, head_dim]
  int n = 0;
  int heads = 0;
  int group = 0;
  float qscale = 0.0f;  // scale * log2(e)
  bool causal = true;
  int window = 0;
  float* o = nullptr;    // [n, heads, head_dim]
  float* lse = nullptr;  // [n, heads]
};

// q: [n, H, D], k/v pages: [P, page_size, Hkv, D] -> o: [n, H, D], lse: [n, H]
// grid (ceil(n * group / kBQ), Hkv), block kPrefillThreads, dynamic smem PrefillLayout::kSmemBytes.
// Each block loops over kBK-key tiles of the union of its rows' key ranges (tiles outside it are
// never loaded), with an online softmax per row; the [n, length] scores never exist.
template <typename T, int kD>
__global__ void __launch_bounds__(kPrefillThreads)
    FlashPrefillKernel(const PrefillParams p, const KvGeom kv) {
  using Lay = PrefillLayout<kD>;
  constexpr int kRM = Lay::kRM;
  constexpr int kBK = Lay::kBK;
  constexpr int kBQ = Lay::kBQ;
  constexpr int kKN = Lay::kKN;
  constexpr int kDN = Lay::kDN;
  constexpr int kCE = ChunkElems<T>::value;
  constexpr int kChunks = kD / kCE;  // loads per K/V row (bucket)

  extern __shared__ float4 smem_f4[];
  float* smem = reinterpret_cast<float*>(smem_f4);
  float* q_s = smem + Lay::kQOff;
  float* k_s = smem + Lay::kKOff;
  float* v_s = smem + Lay::kVOff;
  float* p_s = smem + Lay::kPOff;
  int64_t* row_s = reinterpret_cast<int64_t*>(smem + Lay::kFloats);

  const int head_dim = kv.head_dim;
  const int rows_total = p.n * p.group;
  // Reverse tile order: causal tiles at the end of the sequence have the most keys; start them
  // first so the short ones fill the tail.
  const int tile = static_cast<int>(gridDim.x - 1 - blockIdx.x);
  const int kvh = static_cast<int>(blockIdx.y);
  const int row0 = tile * kBQ;
  const int row_last = min(rows_total, row0 + kBQ) - 1;
  const int tid = static_cast<int>(threadIdx.x);
  const int rg = tid / 8;
  const int tc = tid % 8;

  // Q tile (pre-scaled; zero past head_dim and past the last row).
  for (int x = tid; x < kBQ * kD; x += kPrefillThreads) {
    const int r = x / kD;
    const int d = x - r * kD;
    const int R = row0 + r;
    float val = 0.0f;
    if (R < rows_total && d < head_dim) {
      const int qi = R / p.group;
      const int h = kvh * p.group + (R - qi * p.group);
      val = p.q[(static_cast<int64_t>(qi) * p.heads + h) * head_dim + d] * p.qscale;
    }
    q_s[r * Lay::kQLd + d] = val;
  }

  // Key ranges of this thread's rows and of the whole block.
  int row_lo[kRM];
  int row_hi[kRM];
#pragma unroll
  for (int i = 0; i < kRM; ++i) {
    const int R = row0 + rg * kRM + i;
    if (R < rows_total) {
      KeyRange(kv.length, p.n, R / p.group, p.causal, p.window, &row_lo[i], &row_hi[i]);
    } else {
      row_lo[i] = 0;
      row_hi[i] = 0;
    }
  }
  int block_lo;
  int block_hi;
  int unused;
  KeyRange(kv.length, p.n, row0 / p.group, p.causal, p.window, &block_lo, &unused);
  KeyRange(kv.length, p.n, row_last / p.group, p.causal, p.window, &unused, &block_hi);

  float m[kRM];
  float l[kRM];  // this lane's share of the row sum (the 8 lanes are added at the end)
  float acc[kRM][kDN];
#pragma unroll
  for (int i = 0; i < kRM; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
#pragma unroll
    for (int t = 0; t < kDN; ++t) acc[i][t] = 0.0f;
  }

  for (int kb = block_lo; kb < block_hi; kb += kBK) {
    __syncthreads();  // the previous tile's k_s/v_s/p_s (and row_s) are no longer read
    for (int c = tid; c < kBK; c += kPrefillThreads) {
      row_s[c] = kb + c < block_hi ? RowOffset(kv, kb + c, kvh) : -1;
    }
    __syncthreads();
    for (int x = tid; x < kBK * kChunks; x += kPrefillThreads) {
      const int c = x / kChunks;
      const int d0 = (x - c * kChunks) * kCE;
      const int64_t row = row_s[c];
      float kx[kCE];
      float vx[kCE];
      if (row >= 0 && d0 < head_dim) {
        LoadChunk<T>(kv.k, row + d0, kv.dtype, kx);
        LoadChunk<T>(kv.v, row + d0, kv.dtype, vx);
      } else {  // zeros, so masked keys (p = 0) never multiply garbage
#pragma unroll
        for (int e = 0; e < kCE; ++e) {
          kx[e] = 0.0f;
          vx[e] = 0.0f;
        }
      }
      float* kd = k_s + c * Lay::kKLd + d0;
      float* vd = v_s + c * Lay::kVLd + d0;
      if constexpr (kCE % 4 == 0) {
#pragma unroll
        for (int e = 0; e < kCE; e += 4) {
          *reinterpret_cast<float4*>(kd + e) = make_float4(kx[e], kx[e + 1], kx[e + 2], kx[e + 3]);
          *reinterpret_cast<float4*>(vd + e) = make_float4(vx[e], vx[e + 1], vx[e + 2], vx[e + 3]);
        }
      } else {
#pragma unroll
        for (int e = 0; e < kCE; ++e) {
          kd[e] = kx[e];
          vd[e] = vx[e];
        }
      }
    }
    __syncthreads();

    // S = Q K^T for this thread's kRM rows x kKN keys.
    float s[kRM][kKN];
#pragma unroll
    for (int i = 0; i < kRM; ++i) {
#pragma unroll
      for (int c = 0; c < kKN; ++c) s[i][c] = 0.0f;
    }
#pragma unroll 4
    for (int d = 0; d < kD; d += 4) {
      float4 qv[kRM];
      float4 kv4[kKN];
#pragma unroll
      for (int i = 0; i < kRM; ++i) {
        qv[i] = *reinterpret_cast<const float4*>(q_s + (rg * kRM + i) * Lay::kQLd + d);
      }
#pragma unroll
      for (int c = 0; c < kKN; ++c) {
        kv4[c] = *reinterpret_cast<const float4*>(k_s + (tc + 8 * c) * Lay::kKLd + d);
      }
#pragma unroll
      for (int i = 0; i < kRM; ++i) {
#pragma unroll
        for (int c = 0; c < kKN; ++c) {
          float t = s[i][c];
          t = fmaf(qv[i].x, kv4[c].x, t);
          t = fmaf(qv[i].y, kv4[c].y, t);
          t = fmaf(qv[i].z, kv4[c].z, t);
          t = fmaf(qv[i].w, kv4[c].w, t);
          s[i][c] = t;
        }
      }
    }

    // Mask, online softmax per row (the 8 lanes of a row group hold the row's kBK scores).
#pragma unroll
    for (int i = 0; i < kRM; ++i) {
      float mx = -INFINITY;
#pragma unroll
      for (int c = 0; c < kKN; ++c) {
        const int j = kb + tc + 8 * c;
        if (j < row_lo[i] || j >= row_hi[i]) s[i][c] = -INFINITY;
        mx = fmaxf(mx, s[i][c]);
      }
#pragma unroll
      for (int off = 4; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, off));
      const float m_new = fmaxf(m[i], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no keys yet: avoid -inf - -inf
      const float corr = exp2f(m[i] - m_use);
      m[i] = m_new;
      float rowsum = 0.0f;
#pragma unroll
      for (int c = 0; c < kKN; ++c) {
        const float pc = exp2f(s[i][c] - m_use);
        rowsum += pc;
        p_s[(rg * kRM + i) * Lay::kPLd + tc + 8 * c] = pc;
      }
      l[i] = l[i] * corr + rowsum;
#pragma unroll
      for (int t = 0; t < kDN; ++t) acc[i][t] *= corr;
    }
    __syncthreads();

    // O += P V for this thread's rows and dims.
#pragma unroll 2
    for (int c = 0; c < kBK; ++c) {
      float pv[kRM];
#pragma unroll
      for (int i = 0; i < kRM; ++i) pv[i] = p_s[(rg * kRM + i) * Lay::kPLd + c];
#pragma unroll
      for (int t = 0; t < kDN / 4; ++t) {
        const float4 vv = *reinterpret_cast<const float4*>(v_s + c * Lay::kVLd + tc * 4 + 32 * t);
#pragma unroll
        for (int i = 0; i < kRM; ++i) {
          acc[i][4 * t] = fmaf(pv[i], vv.x, acc[i][4 * t]);
          acc[i][4 * t + 1] = fmaf(pv[i], vv.y, acc[i][4 * t + 1]);
          acc[i][4 * t + 2] = fmaf(pv[i], vv.z, acc[i][4 * t + 2]);
          acc[i][4 * t + 3] = fmaf(pv[i], vv.w, acc[i][4 * t + 3]);
        }
      }
    }
  }

#pragma unroll
  for (int i = 0; i < kRM; ++i) {
    float sum = l[i];
#pragma unroll
    for (int off = 4; off > 0; off >>= 1) sum += __shfl_xor_sync(kFullMask, sum, off);
    const int R = row0 + rg * kRM + i;
    if (R >= rows_total) continue;
    const int qi = R / p.group;
    const int h = kvh * p.group + (R - qi * p.group);
    const int64_t out_row = static_cast<int64_t>(qi) * p.heads + h;
    float* orow = p.o + out_row * head_dim;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
#pragma unroll
    for (int t = 0; t < kDN / 4; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int d = tc * 4 + 32 * t + e;
        if (d < head_dim) orow[d] = acc[i][4 * t + e] * inv;
      }
    }
    if (tc == 0) p.lse[out_row] = sum > 0.0f ? (m[i] + log2f(sum)) * kLn2 : -INFINITY;
  }
}

// ---- Public LSE merge ------------------------------------------------------------------------

constexpr int kMergeWarps = 4;

// o_a, o_b: [rows, d], lse_a, lse_b: [rows] -> o_a, lse_a (in place)
// grid (ceil(rows / kMergeWarps)), block 32 * kMergeWarps; one warp per row.
__global__ void __launch_bounds__(32 * kMergeWarps)
    MergePartialsKernel(float* __restrict__ o_a, float* __restrict__ lse_a,
                        const float* __restrict__ o_b, const float* __restrict__ lse_b,
                        int64_t rows, int d, float b_lse_factor) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeWarps + threadIdx.x / 32;
  const int lane = static_cast<int>(threadIdx.x % 32);
  if (row >= rows) return;
  const float lb_raw = lse_b[row];
  if (lb_raw == -INFINITY) return;  // b is empty (checked before the factor: -inf * 0 is NaN)
  const float lb = lb_raw * b_lse_factor;
  const float la = lse_a[row];
  float* oa = o_a + row * d;
  const float* ob = o_b + row * d;
  if (la == -INFINITY) {
    for (int x = lane; x < d; x += 32) oa[x] = ob[x];
    __syncwarp();
    if (lane == 0) lse_a[row] = lb;
    return;
  }
  const float mx = fmaxf(la, lb);
  const float wa = expf(la - mx);
  const float wb = expf(lb - mx);
  const float inv = 1.0f / (wa + wb);
  for (int x = lane; x < d; x += 32) oa[x] = (wa * oa[x] + wb * ob[x]) * inv;
  __syncwarp();  // every lane has read lse_a[row] before lane 0 overwrites it
  if (lane == 0) lse_a[row] = mx + logf(wa + wb);
}

// ---- Host side -------------------------------------------------------------------------------

// Multiprocessor count of the current device, cached per device id.
StatusOr<int> SmCount() {
  static std::atomic<int> cache[64] = {};
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  if (dev >= 0 && dev < 64) {
    const int c = cache[dev].load(std::memory_order_relaxed);
    if (c > 0) return c;
  }
  int sms = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  if (sms < 1) sms = 1;
  if (dev >= 0 && dev < 64) cache[dev].store(sms, std::memory_order_relaxed);
  return sms;
}

// Resident blocks per SM of one decode kernel instantiation (cached: same for every device of
// the architecture this binary runs on).
template <typename T, int kMaxD, int kGT>
StatusOr<int> DecodeBlocksPerSm() {
  static std::atomic<int> cache{0};
  int c = cache.load(std::memory_order_relaxed);
  if (c > 0) return c;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&c, FlashDecodeKernel<T, kMaxD, kGT>,
                                                           kDecodeThreads, 0));
  if (c < 1) c = 1;
  cache.store(c, std::memory_order_relaxed);
  return c;
}

// One validated call, flattened for the launchers.
struct Call {
  const AttentionArgs* args = nullptr;
  KvGeom kv;
  int kv_heads = 0;
  int group = 0;   // heads / kv_heads
  int window = 0;  // clamped to [0, length] (0: unbounded)
  bool vec = false;
  int bucket = 0;  // 64, 128 or 256
};

template <typename T, int kMaxD, int kGT>
Status LaunchDecode(const Call& c, AttentionWorkspace* ws, int forced_splits, cudaStream_t stream) {
  const AttentionArgs& a = *c.args;
  const int head_dim = c.kv.head_dim;
  const int hsub = (c.group + kGT - 1) / kGT;
  int lo0;
  int hi0;
  KeyRange(c.kv.length, a.n, 0, a.causal, c.window, &lo0, &hi0);
  const int span = c.kv.length - lo0;  // the union of the queries' key ranges is [lo0, length)
  int splits = 1;
  if (span > 0) {
    if (forced_splits > 0) {
      splits = forced_splits;
    } else {
      // One full wave of resident blocks (never more: a partial second wave would double the
      // time), but no split shorter than kMinKeysPerSplit keys.
      RS_ASSIGN_OR_RETURN(const int sms, SmCount());
      RS_ASSIGN_OR_RETURN(const int per_sm, (DecodeBlocksPerSm<T, kMaxD, kGT>()));
      const int64_t base = static_cast<int64_t>(hsub) * c.kv_heads * a.n;
      const int64_t wave = static_cast<int64_t>(sms) * per_sm;
      const int64_t want = std::max<int64_t>(1, wave / base);
      splits = static_cast<int>(std::min<int64_t>(want, CeilDiv(span, kMinKeysPerSplit)));
    }
    splits = std::clamp(splits, 1, std::min(kMaxSplits, span));
  }
  const int chunk = span > 0 ? static_cast<int>(CeilDiv(span, splits)) : 0;
  if (span > 0) splits = static_cast<int>(CeilDiv(span, chunk));  // no empty trailing split
  const int64_t blocks_x = static_cast<int64_t>(hsub) * a.n * splits;
  RS_CHECK_ARG(blocks_x <= INT_MAX, "attention: flash-decoding grid too large: n = ", a.n,
               ", heads = ", a.heads, ", splits = ", splits);

  DecodeParams p;
  p.q = a.q;
  p.n = a.n;
  p.heads = a.heads;
  p.group = c.group;
  p.head_subgroups = hsub;
  p.qscale = a.scale * kLog2e;
  p.causal = a.causal;
  p.window = c.window;
  p.splits = splits;
  p.chunk = chunk;
  const int64_t rows = static_cast<int64_t>(a.n) * a.heads;
  if (splits == 1) {  // the partial layout with one split is the output layout
    p.o = a.o;
    p.lse = a.lse;
  } else {
    const size_t floats = static_cast<size_t>(rows) * splits * (head_dim + 1);
    RS_ASSIGN_OR_RETURN(void* buf, ws->partials.Get(floats * sizeof(float)));
    p.o = static_cast<float*>(buf);
    p.lse = p.o + rows * splits * head_dim;
  }
  const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(c.kv_heads));
  FlashDecodeKernel<T, kMaxD, kGT><<<grid, kDecodeThreads, 0, stream>>>(p, c.kv);
  RS_RETURN_IF_ERROR(LaunchStatus("attention: FlashDecodeKernel"));
  if (splits == 1) return OkStatus();
  MergeSplitsKernel<<<static_cast<unsigned>(rows), kDecodeThreads, 0, stream>>>(
      p.o, p.lse, splits, head_dim, a.o, a.lse);
  return LaunchStatus("attention: MergeSplitsKernel");
}

template <typename T, int kD>
Status LaunchPrefill(const Call& c, cudaStream_t stream) {
  using Lay = PrefillLayout<kD>;
  const AttentionArgs& a = *c.args;
  PrefillParams p;
  p.q = a.q;
  p.n = a.n;
  p.heads = a.heads;
  p.group = c.group;
  p.qscale = a.scale * kLog2e;
  p.causal = a.causal;
  p.window = c.window;
  p.o = a.o;
  p.lse = a.lse;
  const auto kernel = FlashPrefillKernel<T, kD>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(Lay::kSmemBytes)));
  const int64_t tiles = CeilDiv(static_cast<int64_t>(a.n) * c.group, Lay::kBQ);
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(c.kv_heads));
  kernel<<<grid, kPrefillThreads, Lay::kSmemBytes, stream>>>(p, c.kv);
  return LaunchStatus("attention: FlashPrefillKernel");
}

// Calls fn(T{}) with the loader type: the typed 16-byte path when rows are aligned, else the
// scalar fallback.
template <typename Fn>
Status WithLoader(const Call& c, Fn&& fn) {
  if (!c.vec) return fn(AnyDType{});
  switch (c.kv.dtype) {
    case DType::kF16:
      return fn(__half{});
    case DType::kBF16:
      return fn(__nv_bfloat16{});
    default:
      return fn(float{});
  }
}

// Calls fn(std::integral_constant<int, bucket>{}).
template <typename Fn>
Status WithBucket(int bucket, Fn&& fn) {
  if (bucket == 64) return fn(std::integral_constant<int, 64>{});
  if (bucket == 128) return fn(std::integral_constant<int, 128>{});
  return fn(std::integral_constant<int, 256>{});
}

Status ValidateAttention(const AttentionArgs& a, const PagedKvView& kv,
                         const AttentionWorkspace* ws, const AttentionTuning& t) {
  RS_CHECK_ARG(a.n >= 0, "attention: n must be >= 0, got ", a.n);
  RS_CHECK_ARG(kv.head_dim >= 1 && kv.head_dim <= kMaxHeadDim,
               "attention: head_dim must be in [1, ", kMaxHeadDim, "], got ", kv.head_dim);
  RS_CHECK_ARG(kv.kv_heads >= 1 && kv.kv_heads <= 65535,
               "attention: kv_heads must be in [1, 65535], got ", kv.kv_heads);
  RS_CHECK_ARG(a.heads >= 1 && a.heads % kv.kv_heads == 0, "attention: heads (", a.heads,
               ") must be a positive multiple of kv_heads (", kv.kv_heads, ")");
  // 2^30 keys at most: key positions (and a tile or a step past them) stay in int.
  RS_CHECK_ARG(kv.length >= 0 && kv.length <= (int64_t{1} << 30),
               "attention: length must be in [0, 2^30], got ", kv.length);
  RS_CHECK_ARG(kv.page_size >= 1, "attention: page_size must be >= 1, got ", kv.page_size);
  RS_CHECK_ARG(kv.dtype == DType::kF32 || kv.dtype == DType::kF16 || kv.dtype == DType::kBF16,
               "attention: unknown K/V dtype ", static_cast<int>(kv.dtype));
  RS_CHECK_ARG(!a.causal || a.n <= kv.length, "attention: causal needs n <= length, got n = ", a.n,
               " > length = ", kv.length);
  RS_CHECK_ARG(static_cast<int64_t>(a.n) * a.heads <= INT_MAX,
               "attention: n * heads must be < 2^31, got ", static_cast<int64_t>(a.n) * a.heads);
  RS_CHECK_ARG(t.force_kernel >= 0 && t.force_kernel <= 2,
               "attention: force_kernel must be 0, 1 or 2, got ", t.force_kernel);
  RS_CHECK_ARG(t.splits >= 0, "attention: splits must be >= 0, got ", t.splits);
  if (a.n == 0) return OkStatus();
  RS_CHECK_ARG(a.q != nullptr, "attention: q is null");
  RS_CHECK_ARG(a.o != nullptr, "attention: o is null");
  RS_CHECK_ARG(a.lse != nullptr, "attention: lse is null");
  RS_CHECK_ARG(ws != nullptr, "attention: workspace is null");
  if (kv.length > 0) {
    RS_CHECK_ARG(kv.k_pool != nullptr, "attention: k_pool is null (length ", kv.length, ")");
    RS_CHECK_ARG(kv.v_pool != nullptr, "attention: v_pool is null (length ", kv.length, ")");
    RS_CHECK_ARG(kv.pages != nullptr, "attention: pages is null (length ", kv.length, ")");
  }
  return OkStatus();
}

}  // namespace

Status Attention(const AttentionArgs& args, const PagedKvView& kv, AttentionWorkspace* ws,
                 cudaStream_t stream) {
  return Attention(args, kv, ws, stream, AttentionTuning{});
}

Status Attention(const AttentionArgs& args, const PagedKvView& kv, AttentionWorkspace* ws,
                 cudaStream_t stream, const AttentionTuning& tuning) {
  RS_RETURN_IF_ERROR(ValidateAttention(args, kv, ws, tuning));
  if (args.n == 0) return OkStatus();
  const bool decode =
      tuning.force_kernel == 1 || (tuning.force_kernel == 0 && args.n <= kDecodeMaxQueries);

  Call c;
  c.args = &args;
  const int length = static_cast<int>(kv.length);
  const int64_t page_size = std::min<int64_t>(kv.page_size, std::max(length, 1));
  c.kv.k = kv.k_pool;
  c.kv.v = kv.v_pool;
  c.kv.pages = kv.pages;
  c.kv.page_size = static_cast<int>(page_size);
  c.kv.page_shift = -1;
  if ((page_size & (page_size - 1)) == 0) {
    int shift = 0;
    while ((int64_t{1} << shift) < page_size) ++shift;
    c.kv.page_shift = shift;
  }
  c.kv.length = length;
  c.kv.head_dim = kv.head_dim;
  c.kv.row_stride = static_cast<int64_t>(kv.kv_heads) * kv.head_dim;
  // The real page size: a clamped one only changes j / page_size for keys of page 0.
  c.kv.page_stride = kv.page_size * c.kv.row_stride;
  c.kv.dtype = kv.dtype;
  c.kv_heads = kv.kv_heads;
  c.group = args.heads / kv.kv_heads;
  c.window = (args.window <= 0 || args.window >= kv.length) ? 0 : static_cast<int>(args.window);
  const size_t row_bytes = static_cast<size_t>(kv.head_dim) * DTypeSize(kv.dtype);
  c.vec = row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(kv.k_pool) % 16 == 0 &&
          reinterpret_cast<uintptr_t>(kv.v_pool) % 16 == 0;
  c.bucket = kv.head_dim <= 64 ? 64 : kv.head_dim <= 128 ? 128 : 256;

  if (decode) {
    return WithLoader(c, [&](auto tag) {
      using T = decltype(tag);
      return WithBucket(c.bucket, [&](auto bucket) {
        constexpr int kD = decltype(bucket)::value;
        if (c.group == 1) return LaunchDecode<T, kD, 1>(c, ws, tuning.splits, stream);
        if (c.group == 2) return LaunchDecode<T, kD, 2>(c, ws, tuning.splits, stream);
        return LaunchDecode<T, kD, 4>(c, ws, tuning.splits, stream);
      });
    });
  }
  return WithLoader(c, [&](auto tag) {
    using T = decltype(tag);
    return WithBucket(c.bucket, [&](auto bucket) {
      constexpr int kD = decltype(bucket)::value;
      return LaunchPrefill<T, kD>(c, stream);
    });
  });
}

Status MergePartials(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int64_t rows,
                     int d, float b_lse_factor, cudaStream_t stream) {
  RS_CHECK_ARG(rows >= 0, "MergePartials: rows must be >= 0, got ", rows);
  RS_CHECK_ARG(d >= 1, "MergePartials: d must be >= 1, got ", d);
  RS_CHECK_ARG(rows <= int64_t{INT_MAX} * kMergeWarps, "MergePartials: too many rows: ", rows);
  if (rows == 0) return OkStatus();
  RS_CHECK_ARG(o_a != nullptr && lse_a != nullptr, "MergePartials: o_a/lse_a is null");
  RS_CHECK_ARG(o_b != nullptr && lse_b != nullptr, "MergePartials: o_b/lse_b is null");
  const int64_t blocks = CeilDiv(rows, kMergeWarps);
  MergePartialsKernel<<<static_cast<unsigned>(blocks), 32 * kMergeWarps, 0, stream>>>(
      o_a, lse_a, o_b, lse_b, rows, d, b_lse_factor);
  return LaunchStatus("MergePartials");
}

}  // namespace ragserve::kernels::cuda
