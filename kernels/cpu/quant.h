// GGUF block-quantized weights on the CPU: the block formats, their reference (de)quantizers, and
// the integer GEMV/GEMM that FastOps runs on weights kept in these blocks (memory-mapped straight
// from a .gguf file, or quantized at load from an f32/bf16 checkpoint).
//
// Block layouts (little-endian; "f16" is an IEEE half), as ggml defines them:
//   Q8_0  32 values, 34 bytes: f16 d; i8 q[32].                 x = q * d
//   Q4_0  32 values, 18 bytes: f16 d; u8 qs[16].                x[j] = ((qs[j] & 15) - 8) * d,
//                                                                x[j+16] = ((qs[j] >> 4) - 8) * d
//   Q4_K 256 values, 144 bytes: f16 d, dmin; u8 scales[12] (8 pairs of 6-bit scale/min);
//         u8 qs[128]. Sub-block s (32 values): x = (d * sc_s) * q - dmin * m_s, q a nibble
//         (low nibbles of 32 bytes, then their high nibbles, per 64 values).
//   Q6_K 256 values, 210 bytes: u8 ql[128] (low 4 bits); u8 qh[64] (high 2 bits); i8 scales[16];
//         f16 d. x = (d * scale_16) * (q - 32), q a 6-bit value.
//
// The dot products (what llama.cpp's vec_dot does, in integers): the activations are quantized
// per block to int8 with one f32 scale (QuantizeActs: blocks of 32 for Q8_0/Q4_0, of 256 for the
// k-quants, d_a = max|x| / 127, q = round(x / d_a)), then per weight block the integer sum of
// q_w * q_a is exact in int32 and scaled once:
//   Q8_0: sum += float(Σ q_w q_a) * (d_w * d_a)
//   Q4_0: sum += float(Σ nibble q_a - 8 Σ q_a) * (d_w * d_a)
//   Q4_K: sum += (d_w d_a) * float(Σ_s sc_s Σ nibble q_a) - (dmin_w d_a) * float(Σ_s m_s Σ q_a)
//   Q6_K: sum += (d_w d_a) * float(Σ_g scale_g (Σ q6 q_a - 32 Σ q_a))
// The integer parts are identical on every instruction-set path; only the order in which the
// scaled f32 terms are added differs (QuantMatMul vs QuantMatMulRef: float reordering only; with
// power-of-two scales and small sums the results are bit-identical, which the tests use).
// Against the exact product with the dequantized weights, the error is the activation rounding:
// |y - w.x| <= Σ_j |w_j| * d_a(j) / 2 (plus f32 rounding).
//
// Q4_0 and Q8_0 repacked (PackWeights): with AVX-512 VNNI they run from a copy made at load, rows
// interleaved 16 at a time so that one vpdpbusd multiplies 4 values of each of 16 rows (one int32
// lane per row, unsigned: Q4_0's nibbles, Q8_0's q + 128) by 4 activations of one token
// broadcast: the 16 lanes are 16 outputs, a weight register serves every token of a tile, the
// offset (-8 or -128 x the block's activation sum) starts the sum, and each block's int32 sums
// are scaled with one f32 multiply-add per token for 16 rows at once (llama.cpp's interleaved-row
// GEMM).
//
// Paths: scalar (the reference), AVX2 (vpmaddubsw + vpmaddwd: u8 x s8 pairs, which cannot
// saturate here since |q_a| <= 127 and the unsigned operand is <= 128), AVX-512 VNNI (vpdpbusd,
// unsigned weights x signed activations; Q8_0's signed weights go through |w| and sign(w) * a;
// the k-quants' sub-block scales multiplied in by vpdpwssd). Chosen at run time: QuantSimdLevel().
// AVX-VNNI (the 256-bit form of CPUs without AVX-512) is not used yet: they take the AVX2 path.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/ops.h"

namespace ragserve::kernels {

// Dequantizes n values (a multiple of the block) of block format t: bit-exact to the format's
// definition (each product and difference rounded on its own in f32).
void DequantizeRef(const void* src, DType t, int64_t n, float* dst);
// Quantizes n values (a multiple of the block) into block format t with ggml's reference
// quantizer (quantize_row_*_ref).
void QuantizeRef(const float* x, DType t, int64_t n, void* dst);

// Activations of m rows quantized for one block size (32 or 256), as the dot products read them.
struct QuantizedActs {
  int64_t m = 0, cols = 0;
  int block = 32;
  int64_t ldq = 0;            // bytes between rows of q (cols rounded up to 64)
  std::vector<int8_t> q;      // [m, ldq], 64-byte aligned rows (data() + pad)
  std::vector<float> d;       // [m, cols / block]: the scales d_a
  std::vector<int32_t> lsum;  // [m, cols / 4]: sums of 4 consecutive q
  std::vector<int32_t> s32;   // [m, cols / 32]: sums of 32 consecutive q
  // What the AVX-512 kernels start from / multiply in (same integers, other widths):
  std::vector<int32_t> loff;  // block 32: [m, cols / 4]: -8 * lsum (Q4_0's nibble offset)
  // Block 32, for Q8_0 / Q4_0 four blocks at a time: per group of 128 values (cols / 128 of them;
  // the rest is only in q) the first 16 values of each of the 4 blocks, then their last 16; loffp:
  // [m, cols / 128 * 16] the matching -8 x sums (lane j: block j / 4, values 4 (j % 4) .. + 3
  // of both halves).
  std::vector<int8_t> qp;  // [m, ldq], same alignment as q (qpoff)
  std::vector<int32_t> loffp;
  size_t qpoff = 0;
  const int8_t* Qp(int64_t i) const { return qp.data() + qpoff + i * ldq; }
  // Block 32, for the packed kernels: the rows in tiles of kPackTokens (the last one
  // shorter: n rows), per tile and block the n rows' 32 values (row after row), then their d_a
  // (f32), then their -8 x block sums (int32): 40 bytes per row and block, so that a kernel
  // reaches every operand of a tile's block at a fixed offset from one address.
  std::vector<uint8_t> tiled;
  // The tile of rows i0 .. (i0 a multiple of kPackTokens).
  const uint8_t* Tile(int64_t i0) const { return tiled.data() + i0 * (cols / 32) * 40; }
  std::vector<int16_t> s16;   // block 256: [m, cols / 16]: sums of 16 consecutive q (Q6_K)
  std::vector<int16_t> s32w;  // block 256: [m, cols / 32]: s32 as int16 (Q4_K's mins)
  size_t qoff = 0;            // q row 0 starts at q.data() + qoff (64-byte aligned)
  const int8_t* Q(int64_t i) const { return q.data() + qoff + i * ldq; }
};

// The packed form of a Q4_0 / Q8_0 matrix: groups of kPackRows rows (the last group padded with
// zero rows: scale 0), one group after the other; within a group, per 32-value block, 16 x the
// block's bytes: the 16 rows' f16 scales d, then 64-byte chunks of 4 bytes per row (row r at bytes
// 4r .. 4r + 3):
//   Q4_0: 4 chunks, chunk c = row r's qs bytes 4c .. 4c + 3. So chunk c & 15 is, in int32 lane r,
//         the 4 unsigned nibbles of row r's values 4c .. 4c + 3, and (chunk c >> 4) & 15 those of
//         values 16 + 4c .. 16 + 4c + 3.
//   Q8_0: 8 chunks, chunk c = row r's values 4c .. 4c + 3 as q + 128 (unsigned).
// BF16 (an even number of columns) has no blocks: a group is cols / 2 chunks of 64 bytes, chunk p
// = row r's values 2p, 2p + 1 (one bf16 pair per int32 lane r: the operand of vdpbf16ps).
// Same size as the matrix plus the padding rows (zero).
inline constexpr int64_t kPackRows = 16;
// Tokens per tile of the kernels that read it (QuantizedActs::tiled).
inline constexpr int64_t kPackTokens = 16;
// Bytes of w's packed form: 0 unless this CPU has the kernels that read it for w's format (Q4_0,
// Q8_0: AVX-512 VNNI; BF16 with even cols: AVX-512 BF16): then the loader makes one (PackWeights)
// and sets w.packed.
int64_t PackedBytes(const WeightView& w);
// Writes w's packed form (PackedBytes(w) bytes) to dst.
void PackWeights(const WeightView& w, void* dst);

// How Bf16PackedMatMul feeds the f32 activations to vdpbf16ps (bf16 x bf16 products, exact in
// f32, summed in f32):
//   kSplit (default): each activation as two bf16 parts, h = bf16(x) and l = bf16(x - h) (x - h
//     is exact in f32), two vdpbf16ps per pair: |x - h - l| <= 2^-16 |x|, so
//       |y - w.x| <= 2^-16 S + (2 cols + 1) 2^-24 (1 + 2^-7) S,  S = sum_j |w_j x_j|
//     (near an f32 GEMM: whole-model logits stay within the f32 references' tolerances);
//   kRounded (RAGSERVE_BF16_ACTS=1): x rounded to bf16 once, as llama.cpp does (twice the speed):
//       |y - w.x| <= 2^-8 S + (cols + 1) 2^-24 (1 + 2^-7) S.
// Both plus 2^-125 sum_j |w_j| (vdpbf16ps treats denormal inputs as zero). bf16 rounding is to
// nearest, ties to even (vcvtne2ps2bf16).
enum class Bf16Acts { kSplit, kRounded };
// kRounded when RAGSERVE_BF16_ACTS=1 is in the environment (read once), else kSplit.
Bf16Acts Bf16ActsFromEnv();
// Prefill of a packed BF16 matrix (AVX-512 BF16; w.packed set): y[m, w.rows] = x[m, cols] . w^T on
// `threads` threads of the spin pool. The activations are converted once (Bf16Acts), laid out per
// tile of kPackTokens tokens as [pair p][part][token] int32 (the token's values 2p, 2p + 1), and
// each group of 16 weight rows meets every tile: per pair one 64-byte weight load serves the
// tile's tokens, one vdpbf16ps per token and part (16 rows x 2 values into the token's f32
// accumulator, whose lanes are the 16 outputs). Tasks: 16 weight rows each.
void Bf16PackedMatMul(const float* x, int64_t m, const WeightView& w, float* y, int threads,
                      Bf16Acts acts);
// Whether Bf16PackedMatMul runs on this CPU at the current FastOps level (AVX-512 with BF16).
bool Bf16PackedAvailable();

// Quantizes x [m, cols] per block of `block` values (cols a multiple of it) into *out (resized):
// d_a = max|x| / 127, q = x * (127 / max|x|) rounded to nearest, ties to even (AVX-512 when the
// CPU has it, else scalar: the same values either way).
void QuantizeActs(const float* x, int64_t m, int64_t cols, int block, QuantizedActs* out);

// The activation block size that a weight format's dot product takes: 32 or 256.
int ActBlock(DType t);

// Instruction sets of the quantized kernels: kAvx512 needs AVX-512 F/BW/VL and VNNI, kAvx2
// needs AVX2 (no VNNI). The level in use is min(FastOpsSimdLevel(), what this CPU has).
SimdLevel QuantSimdLevel();

// y[i * ldy + r] = row r of w . activation row i, for rows [r0, r1) and every activation row, on
// the given path (a level this CPU supports, see QuantSimdLevel). One thread; a's block must be
// ActBlock(w.dtype). AVX-512 reads w.packed when it is set and r0 is a multiple of kPackRows.
void QuantGemvRows(SimdLevel level, const QuantizedActs& a, const WeightView& w, int64_t r0,
                   int64_t r1, float* y, int64_t ldy);
// The scalar reference of QuantGemvRows (the formulas above, blocks added in order).
void QuantMatMulRef(const QuantizedActs& a, const WeightView& w, float* y, int64_t ldy);

// FastOps' entry: ys[k][m, ws[k].rows] = x[m, cols] . ws[k]^T for block-quantized ws (every cols
// equal): the activations are quantized once per block size, then the rows of every matrix are
// split into tasks on `threads` threads of the spin pool (decode: ~96 KiB of weights per task;
// prefill, m > kGemvMaxRows: 16 weight rows per task, each reused from cache across all the m
// tokens in tiles of 8 on AVX-512, 4 on AVX2, 16 for packed Q4_0 / Q8_0).
void QuantMatMul(const float* x, int64_t m, int count, const WeightView* const* ws,
                 float* const* ys, int threads);

namespace internal {
// One activation row of QuantizeActs: q[cols], d[cols / block], lsum[cols / 4]. The AVX-512 form
// (needs AVX-512 F/BW) writes the same values as the scalar one (tested).
void QuantizeActRowScalar(const float* x, int64_t cols, int block, int8_t* q, float* d,
                          int32_t* lsum);
void QuantizeActRowAvx512(const float* x, int64_t cols, int block, int8_t* q, float* d,
                          int32_t* lsum);
}  // namespace internal

}  // namespace ragserve::kernels
