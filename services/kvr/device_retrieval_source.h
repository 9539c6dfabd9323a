// DeviceRetrievalKvSource: RetrievalAttention's hybrid layout for a model running on a GPU
// (decoder --device cuda with --kv-retrieval). The attention sinks and the recent window stay in
// GPU pages; the rest of a long context's KV lives in CPU memory behind the KV retrieval library
// (in-process or a remote ragserve-kvr). Each decode step merges, by log-sum-exp on the GPU, the
// exact partial over sinks + window (flash-decoding on the device) with the partial over the top-k
// keys the store retrieves from the middle (retrieved_only). The store's work on the CPU overlaps
// the GPU's: the GPU attention is queued before the store is asked.
//
// Life cycle (the forward calls Append then Attend per layer and step; pointers are device):
//   prefill  the prompt's K/V go to GPU pages and serve the exact causal attention of the prompt;
//            K/V and queries are copied to the store (the queries build the attention-aware key
//            index). After the step that completes the prompt the store builds its indexes and
//            the GPU pages of the middle [S, n - W) go back to the pool. (The whole prompt is in
//            GPU memory during prefill: exact prefill attention needs it.) With a build executor
//            the build runs there and the sequence decodes with exact attention over its GPU
//            pages until it is done (retrieval_kv_source.h); the middle's pages go back at the
//            switch to decode.
//   decode   a new token's K/V go to GPU pages now and to the store at the next step's first
//            Append (all layers at once). With n tokens stored, the store's middle is
//            [S, max(S, n - W)); the GPU attends everything else exactly, so with top_k covering
//            the middle the result equals full attention.
// Errors do not fail the batch: as RetrievalKvSource, the first error is kept in status(),
// outputs become (0, -inf) and Append/Attend return OK; the caller checks status() after a step.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/paged_kv.h"
#include "services/kvr/retrieval_kv_source.h"

namespace ragserve::kvr {

class DeviceRetrievalKvSource final : public RetrievalSource {
 public:
  // options.sink_tokens and options.window_tokens must be given (>= 0): the GPU part must know
  // the store's regions. `pool` holds the GPU pages (the model's KV page geometry); `ops` is the
  // device backend (kernels/cuda/ops.h) used for copies.
  static StatusOr<std::unique_ptr<DeviceRetrievalKvSource>> Create(
      KvrClient* client, const std::string& id, const engine::KvGeometry& geometry,
      const RetrievalSourceOptions& options, std::shared_ptr<kernels::cuda::KvPagePool> pool,
      const kernels::Ops* ops);
  ~DeviceRetrievalKvSource() override;  // Release()

  Status Append(int layer, const float* k, const float* v, int n,
                const int32_t* positions) override;
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override;
  kernels::MemorySpace memory() const override { return kernels::MemorySpace::kDevice; }

  // Also gives the GPU pages back.
  Status Release() override;
  int64_t local_kv_tokens() const override;
  int64_t local_kv_tokens_bound() const override;
  // GPU bytes held by this sequence's pages (sinks + window + pages not yet evicted).
  int64_t gpu_bytes() const { return gpu_ ? gpu_->bytes() : 0; }
  // Tokens whose KV is in the store only (the middle moved off the GPU).
  int64_t cpu_only_tokens() const { return evicted_end_ > sinks_ ? evicted_end_ - sinks_ : 0; }

 private:
  DeviceRetrievalKvSource(std::string id, const engine::KvGeometry& g,
                          RetrievalSourceOptions options, std::unique_ptr<KvrSequence> seq,
                          std::unique_ptr<kernels::cuda::PagedKvCache> gpu,
                          const kernels::Ops* ops);
  Status PrefillAttend(int layer, const float* q, int n, float scale, float* o, float* lse);
  Status DecodeAttend(int layer, const float* q, int n, float scale, float* o, float* lse);
  // Frees the GPU pages of the store's middle.
  void EvictMiddle();

  const int64_t sinks_, window_;
  const kernels::Ops* ops_;
  std::unique_ptr<kernels::cuda::PagedKvCache> gpu_;
  int64_t evicted_end_ = 0;            // GPU pages below this (and past the sinks) were given back
  std::vector<float> hq_, ho_, hlse_;  // host staging
  kernels::ScratchBuffer o2_, lse2_;   // device partials
};

}  // namespace ragserve::kvr
