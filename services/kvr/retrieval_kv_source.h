// RetrievalKvSource: the engine's KvSource (services/engine/kv_source.h) backed by KV retrieval
// (RetrievalAttention), so a decode worker keeps a long prompt's KV cache in a KV retrieval store
// and attends, at each decode step, the sinks + window exactly and the top-k retrieved keys of
// the rest (merged by LSE).
//
// Life cycle of one sequence (the forward calls Append then Attend per layer and step):
//   prefill  (the first `prefill_tokens` tokens, any chunking): K/V go to a local causal KvCache
//            that serves the exact causal attention of the prompt, and K/V + the queries go to
//            the store (the queries build the attention-aware key index). The step whose last
//            layer completes the prompt starts the build of the store's key indexes
//            (KvrSequence::FinishPrefill).
//   building only with options.build_executor: the build runs there, off the caller's (decode
//            loop) thread. Meanwhile the sequence keeps decoding with exact full attention over
//            the local cache (prompt + the tokens decoded since), and the new tokens' K/V are
//            also kept for the store. The first Append of the first step after the build
//            finished switches to decode: the tokens decoded meanwhile go to the store (Appends
//            of at most 8 MB) and the local cache is freed. Without an executor the build runs
//            inline at the end of prefill (the step waits for it) and there is no building phase.
//   decode   the new tokens' K/V are held locally ("pending") for the step: each query attends
//            the stored tokens through the store's hybrid attention (sinks + window exact,
//            top_k retrieved from the middle, merged by LSE) and the pending tokens exactly
//            (causal), the two partials merged exactly. The pending K/V of every layer reach the
//            store in one Append at the next step's first Append. So the store's window is the
//            W tokens before the current one; the current token is always attended exactly.
//   release  Release() (idempotent; also run by the destructor) frees the store's sequence.
//            During a build it returns at once: the build task then owns the store's sequence,
//            discards the build's result and releases the sequence when FinishPrefill returns.
// With top_k >= the middle of the store (or an exact index and top_k covering every key), decode
// equals full attention up to float rounding, whenever the build finishes.
//
// KvrSequence calls never overlap: the source calls its sequence only on the caller's thread and
// only outside the building phase; the build task is the only caller while it runs, and the
// source learns that it returned (under the build state's mutex) before it calls the sequence
// again. A release during the build hands the sequence to the task instead of calling it.
//
// Failures do not fail the forward batch: the first error of the store (or of a bad call, or of
// the index build) is kept in status(), later calls return zeros (o = 0, lse = -inf) without
// touching the store and Append/Attend still return OK, so the other sequences of the batch go
// on; the caller checks status() after each forward step and ends this sequence with it.
//
// Thread-safety: like every KvSource, one sequence's calls must not overlap.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "services/common/executor.h"
#include "services/common/mutex.h"
#include "services/engine/kv_source.h"
#include "services/kvr/kv_retrieval.h"

namespace ragserve::kvr {

// One sequence in a KV retrieval store (in-process KvRetrieval, or a remote ragserve-kvr).
// Shapes: k, v: [n, Hkv, d]; q, o: [n, Hq, d]; lse: [n, Hq]; f32.
class KvrSequence {
 public:
  virtual ~KvrSequence() = default;
  // Prefill K/V and queries of one layer, tokens in order (a layer's calls continue its
  // positions).
  virtual Status AddPrefill(int layer, int64_t n, const float* k, const float* v,
                            const float* q) = 0;
  // Builds the key indexes from the prefill queries (returns the build time in ms); afterwards
  // only Append/Attend.
  virtual StatusOr<double> FinishPrefill() = 0;
  // Decode-time K/V of n new tokens for every layer: k[layer], v[layer].
  virtual Status Append(int64_t n, const std::vector<const float*>& k,
                        const std::vector<const float*>& v) = 0;
  // Hybrid attention of n queries of one layer, each over every stored token (scale
  // 1/sqrt(head_dim)); keys_scored (may be null) gets the index cost.
  virtual Status Attend(int layer, int64_t n, const float* q, const AttendOptions& opt, float* o,
                        float* lse, int64_t* keys_scored) = 0;
  // Frees the sequence in the store. Called at most once.
  virtual Status Release() = 0;
};

// Opens sequences in a store.
class KvrClient {
 public:
  virtual ~KvrClient() = default;
  // `config` as KvRetrieval::Create (sinks/window/index kind -1 = the store's defaults).
  virtual StatusOr<std::unique_ptr<KvrSequence>> Create(const std::string& id,
                                                        const SequenceConfig& config) = 0;
};

// The in-process store. `kvr` is borrowed and must outlive the client and its sequences.
class LocalKvrClient final : public KvrClient {
 public:
  explicit LocalKvrClient(KvRetrieval* kvr) : kvr_(kvr) {}
  StatusOr<std::unique_ptr<KvrSequence>> Create(const std::string& id,
                                                const SequenceConfig& config) override;

 private:
  KvRetrieval* kvr_;
};

struct RetrievalSourceOptions {
  int64_t prefill_tokens = 0;  // prompt tokens attended exactly before retrieval starts, >= 1
  AttendOptions attend;        // top_k (clamped to the tokens stored), ef_search
  int sink_tokens = -1;        // -1: the store's default (also for the two below)
  int window_tokens = -1;
  int index_kind = -1;            // a KeyIndexKind value
  int64_t ttl_ms = -1;            // idle release in the store (a safety net for a lost worker)
  KvDtype dtype = KvDtype::kF32;  // storage of K/V in the store
  // Where the key index build (KvrSequence::FinishPrefill) runs. Null: inline, at the end of the
  // step that completes the prompt. Set (borrowed): as a task there while the sequence decodes
  // with exact attention (see the header comment). The executor must be joined before the
  // client's store goes away: a task may release an abandoned sequence after its source is gone.
  // When it refuses the task (full, shut down) the build runs inline.
  BoundedExecutor* build_executor = nullptr;
};

// Counters of one source (for tests, logs and benchmarks).
struct RetrievalSourceStats {
  int64_t decode_attends = 0;  // store Attend calls (one per layer and decode token)
  int64_t keys_scored = 0;     // q.k products the key indexes computed
  int64_t appends = 0;         // decode-time store Appends (one per step, all layers)
  double build_ms = 0;         // FinishPrefill wall time
  int64_t build_tokens = 0;    // decode tokens attended exactly while the index was built
};

namespace internal {

// Shared by RetrievalKvSource and DeviceRetrievalKvSource.
// Validates the geometry and options (InvalidArgument naming the bad value) and gives the
// store's config for a sequence.
StatusOr<SequenceConfig> SourceSequenceConfig(const engine::KvGeometry& g,
                                              const RetrievalSourceOptions& options);

// Host K/V of the tokens a source holds but has not sent to the store, per layer
// [count(layer), Hkv, d].
class PendingKv {
 public:
  PendingKv(int layers, int64_t row)
      : row_(row), k_(static_cast<size_t>(layers)), v_(k_.size()), n_(k_.size(), 0) {}
  // Room for n more tokens of `layer` after the held ones (replace: drop those first): where
  // to write their keys and values.
  std::pair<float*, float*> Extend(int layer, int64_t n, bool replace);
  int64_t count(int layer) const { return n_[layer]; }
  const float* k(int layer) const { return k_[layer].data(); }
  const float* v(int layer) const { return v_[layer].data(); }
  void Clear(int layer);
  // Sends every layer's tokens to `seq` (one Append, or slices of at most kMaxAppendBytes of
  // K/V each) and clears them; returns how many tokens (per layer) went. Internal error when the
  // layers hold different counts (a step cut short).
  static constexpr int64_t kMaxAppendBytes = int64_t{8} << 20;
  StatusOr<int64_t> Flush(KvrSequence* seq, int64_t max_append_bytes = kMaxAppendBytes);

 private:
  int64_t row_;
  std::vector<std::vector<float>> k_, v_;
  std::vector<int64_t> n_;
};

}  // namespace internal

// A retrieval-backed KV source: one sequence in a KV retrieval store, attended on the CPU
// (RetrievalKvSource) or with the GPU hybrid layout (device_retrieval_source.h). Holds what both
// share: the store's sequence, the sticky error, the K/V not yet sent to the store, the counters.
class RetrievalSource : public engine::KvSource {
 public:
  // The first error this source hit (OK while healthy); see the header comment.
  const Status& status() const { return status_; }
  // True once the prompt is prefilled and the store's indexes are built (and, after a build on
  // the executor, the first Append since it finished switched to them).
  bool decoding() const { return phase_ == Phase::kDecoding; }
  // True while the key index build runs on the executor (the sequence decodes exactly).
  bool building() const { return phase_ == Phase::kBuilding; }
  // Tokens of K/V this source holds in the worker's own memory now (host, or GPU pages).
  virtual int64_t local_kv_tokens() const = 0;
  // The most tokens it will hold there from now on; -1 while that is not bounded yet (before
  // decode the local cache grows with every token).
  virtual int64_t local_kv_tokens_bound() const = 0;
  // Frees the store's sequence (and the source's own local KV); idempotent. An error here is
  // returned (and logged by callers) but does not change status(). During a build: returns OK at
  // once and the build task releases the sequence when the build returns.
  virtual Status Release();
  ~RetrievalSource() override;
  const std::string& id() const { return id_; }
  const RetrievalSourceStats& stats() const { return stats_; }

 protected:
  RetrievalSource(std::string id, const engine::KvGeometry& g, RetrievalSourceOptions options,
                  std::unique_ptr<KvrSequence> seq);
  // Keeps the first error, annotated with the sequence id.
  void Fail(const Status& st);
  // The argument checks of Append (layer, count, pointers; not after Release).
  Status CheckAppend(int layer, const float* k, const float* v, int n) const;
  // The checks of Attend: the sticky error, the arguments, not after Release, and n against the
  // layer's pending tokens (prefill: exactly those just appended; decode: at most those).
  Status CheckAttend(int layer, const float* q, int n) const;
  // Sends the pending K/V of every layer to the store in one Append (counts it and the tokens).
  Status FlushPending();
  // At the end of prefill (stored_ set): builds the key indexes inline (phase kDecoding after) or
  // starts the build on the executor (phase kBuilding).
  Status StartBuild();
  // In the building phase, at a step's first Append: when the build has finished, takes its
  // result (phase kDecoding; the build's error otherwise) and returns true; false while it runs.
  StatusOr<bool> PollBuild();

  enum class Phase { kPrefill, kBuilding, kDecoding };

  const std::string id_;
  const engine::KvGeometry g_;
  const RetrievalSourceOptions options_;
  std::unique_ptr<KvrSequence> seq_;  // null once released
  Status status_;
  Phase phase_ = Phase::kPrefill;
  int64_t stored_ = 0;  // tokens per layer in the store (after the last flush)
  // Prefill: the K/V of the layer appended but not yet attended; decode: tokens not yet in the
  // store.
  internal::PendingKv pending_;
  RetrievalSourceStats stats_;

 private:
  // Shared by the source and its build task (the task may outlive the source).
  struct BuildState {
    Mutex mu;
    bool done ABSL_GUARDED_BY(mu) = false;
    Status status ABSL_GUARDED_BY(mu);
    double ms ABSL_GUARDED_BY(mu) = 0;
    // Set by Release during the build: the task releases it (the result is discarded).
    std::unique_ptr<KvrSequence> abandoned ABSL_GUARDED_BY(mu);
  };
  std::shared_ptr<BuildState> build_;  // while a build task runs or its result is not taken
};

class RetrievalKvSource final : public RetrievalSource {
 public:
  // Opens sequence `id` in the store through `client` (borrowed; must outlive the source).
  // InvalidArgument for a bad geometry or options; the client's errors as they are.
  static StatusOr<std::unique_ptr<RetrievalKvSource>> Create(
      KvrClient* client, const std::string& id, const engine::KvGeometry& geometry,
      const RetrievalSourceOptions& options, const kernels::Ops* ops = &kernels::FastOps());
  ~RetrievalKvSource() override;  // Release()

  Status Append(int layer, const float* k, const float* v, int n,
                const int32_t* positions) override;
  Status Attend(int layer, const float* q, int n, float scale, float* o, float* lse) override;

  // Also frees the local prefill cache.
  Status Release() override;
  // The local cache's tokens until the switch to decode, then the step's pending tokens.
  int64_t local_kv_tokens() const override;
  int64_t local_kv_tokens_bound() const override;

 private:
  RetrievalKvSource(std::string id, const engine::KvGeometry& g, RetrievalSourceOptions options,
                    std::unique_ptr<KvrSequence> seq, const kernels::Ops* ops);
  Status PrefillAttend(int layer, const float* q, int n, float scale, float* o, float* lse);
  Status DecodeAttend(int layer, const float* q, int n, float scale, float* o, float* lse);

  const kernels::Ops* ops_;
  // Exact causal attention of the prompt (and of the tokens decoded during a build).
  std::unique_ptr<engine::KvCache> prefill_cache_;
  std::vector<float> qs_, o2_, lse2_;  // scratch
};

}  // namespace ragserve::kvr
