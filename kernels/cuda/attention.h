// Attention on CUDA: causal prefill with flash-attention tiling (no [n, length] score matrix in
// memory), split-K flash-decoding over a paged KV cache, the LSE merge of partial attentions and
// the APE-adjusted merge. Same contract as the CPU partial attention (kernels/cpu/attention.h): the
// result over a key set S is o = sum_j softmax_j(scale * q.k_j) v_j (normalized within S) and
// lse = log sum_j exp(scale * q.k_j) (natural log); an empty S gives o = 0, lse = -inf.
//
// Every pointer is device memory; queries, outputs and LSEs are f32; K/V are f32, f16 or bf16
// (accumulation in f32). Query head h reads kv head h / (heads / kv_heads) (grouped-query
// attention). Calls are asynchronous on `stream`; errors in the arguments come back as
// InvalidArgument before anything is launched.
//
// Only CUDA translation units include this header (it needs cuda_runtime.h); the engine reaches
// the kernels through kernels/cuda/paged_kv.h and kernels/cuda/ops.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/cuda_util.h"
#include "services/common/status.h"

namespace ragserve::kernels::cuda {

// One layer of one sequence's keys and values in pages. Token t lives at row t % page_size of page
// pages[t / page_size]; page p holds [page_size, kv_heads, head_dim] elements of `dtype` starting
// at element p * page_size * kv_heads * head_dim of k_pool (keys) and v_pool (values). A contiguous
// [length, kv_heads, head_dim] buffer is the view with page_size >= length and pages = {0}.
struct PagedKvView {
  const void* k_pool = nullptr;
  const void* v_pool = nullptr;
  const int32_t* pages = nullptr;  // [ceil(length / page_size)] page ids
  int64_t page_size = 0;           // tokens per page, >= 1
  int64_t length = 0;              // tokens stored (>= 0)
  int kv_heads = 0;
  int head_dim = 0;  // <= kMaxHeadDim
  DType dtype = DType::kF32;
};

inline constexpr int kMaxHeadDim = 256;

// One attention call: n query tokens of `heads` heads against the keys of `kv`.
struct AttentionArgs {
  const float* q = nullptr;  // [n, heads, head_dim]
  int n = 0;                 // query tokens, >= 0 (0: nothing to do)
  int heads = 0;             // a multiple of kv.kv_heads
  float scale = 0.0f;        // score = scale * q.k (APE context blocks pass scale / temperature)
  // causal: query i is the token at cache index kv.length - n + i (the queries' own K/V are
  // already stored) and sees keys [max(0, idx + 1 - window), idx] (window <= 0: from 0).
  // !causal: every query sees every stored key (a prefix or a passage block), or with window > 0
  // only the last `window` stored keys [length - window, length) (the GPU window of the hybrid
  // path; the first keys of a view are a prefix of it with a smaller length).
  bool causal = true;
  int64_t window = 0;
  float* o = nullptr;    // [n, heads, head_dim]
  float* lse = nullptr;  // [n, heads]
};

// Device scratch for split-K partials; one per stream (not thread-safe), reused across calls.
class AttentionWorkspace {
 public:
  DeviceScratch partials;
};

// Runs attention. Chooses the kernel from the shape: n <= kDecodeMaxQueries runs split-K
// flash-decoding (the key range is cut into chunks processed by separate thread blocks, each
// writing an (o, lse) partial to the workspace, then merged by LSE); larger n runs the tiled
// causal prefill kernel. Either kernel handles both the causal and the block (non-causal) case.
// InvalidArgument for null pointers, head_dim outside [1, kMaxHeadDim], heads not a multiple of
// kv_heads, n > kv.length when causal, page_size < 1, negative length.
Status Attention(const AttentionArgs& args, const PagedKvView& kv, AttentionWorkspace* ws,
                 cudaStream_t stream);

inline constexpr int kDecodeMaxQueries = 4;

// Options that force one kernel (tests and the benchmark compare them; 0 = automatic).
struct AttentionTuning {
  int force_kernel = 0;  // 0 auto, 1 flash-decoding (split-K), 2 tiled prefill
  int splits = 0;        // flash-decoding: number of key chunks (0: chosen from length and SMs)
};
Status Attention(const AttentionArgs& args, const PagedKvView& kv, AttentionWorkspace* ws,
                 cudaStream_t stream, const AttentionTuning& tuning);

// Merges partial b into partial a in place over `rows` (token, head) rows of dim d:
//   lse_b' = lse_b * b_lse_factor;  lse = log(exp(lse_a) + exp(lse_b'));
//   o_a = exp(lse_a - lse) o_a + exp(lse_b' - lse) o_b;  lse_a = lse.
// b_lse_factor = 1 is the exact merge of disjoint key sets; APE passes scaling * temperature for
// the context partial (its weight against the rest becomes softmax([S*T*LSE_C, LSE_O])). Either
// side may be empty (-inf).
Status MergePartials(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int64_t rows,
                     int d, float b_lse_factor, cudaStream_t stream);

}  // namespace ragserve::kernels::cuda
