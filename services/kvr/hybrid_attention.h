// HybridAttention: RetrievalAttention's decode-time attention over a sequence in KvStore.
//
// For (seq, layer, kv_head) with n stored tokens, S = sink_tokens and W = window_tokens:
//   static set   = tokens [0, min(S, n)) and [max(S, n - W), n)   -> attended exactly
//   middle       = tokens [S, n - W)                               -> held in a key index
// Attend() searches the index with each of the group's h query heads (top_k each), takes the
// union of the retrieved tokens, attends it on CPU (every head sees the whole union), and
// merges the static and retrieved partials exactly from their (o, lse). When top_k covers the
// whole middle, the middle is attended exactly (so the result equals full attention).
// Tokens that leave the window as decoding appends are inserted into the index on the next
// Attend/Sync. Scale = 1/sqrt(head_dim). Each index's memory (VectorIndex::memory_bytes) is charged
// to its sequence in the store (KvStore::Charge): a build over the limit fails with
// ResourceExhausted and leaves no index; growth by insertion is always counted.
//
// Thread safety: all methods are thread-safe; calls on the same (seq, layer, kv_head) are
// serialized, different heads run concurrently.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "index/attention_aware.h"
#include "index/hnsw.h"
#include "index/ivf.h"
#include "index/vector_index.h"
#include "services/common/mutex.h"
#include "services/kvr/kv_store.h"

namespace ragserve::kvr {

enum class KeyIndexKind { kExact = 0, kHnsw = 1, kIvf = 2, kAttentionAware = 3 };
// "exact" | "hnsw" | "ivf" | "attention_aware".
StatusOr<KeyIndexKind> ParseKeyIndexKind(std::string_view name);
std::string_view KeyIndexKindName(KeyIndexKind kind);

struct HybridOptions {
  int64_t sink_tokens = 128;    // S: first tokens always attended exactly
  int64_t window_tokens = 512;  // W: last tokens always attended exactly
  KeyIndexKind index_kind = KeyIndexKind::kAttentionAware;
  index::AttentionAwareParams attention_aware;
  // The key indexes are the vector indexes with the inner-product metric; these are
  // RetrievalAttention's off-the-shelf baselines (HNSW counting the keys it scores, IVF-Flat with
  // nlist 0 = 4 sqrt(keys) capped at keys / 39, FAISS's default 10 k-means iterations).
  index::HnswParams hnsw{.M = 16, .ef_construction = 100, .ef_search = 128, .count_scored = true};
  index::IvfParams ivf{.nprobe = 16, .kmeans_iterations = 10};
  index::SearchParams search;  // per-call ef_search / nprobe (0 = index default)
};

struct AttendStats {
  int64_t static_keys = 0;     // keys attended exactly (sinks + window)
  int64_t middle_keys = 0;     // keys in the retrieval region
  int64_t retrieved_keys = 0;  // distinct keys attended from the retrieval region
  int64_t keys_scored = 0;     // q.k products the index computed (all h queries)
};

// Per-call options of Attend().
struct AttendOptions {
  int top_k = 100;    // keys retrieved per query head, 1..tokens stored
  int ef_search = 0;  // graph beam / 0 = index default (HNSW, attention-aware)
  int nprobe = 0;     // IVF lists / 0 = index default
  bool retrieved_only =
      false;  // attend only the retrieved middle keys (caller owns the static set)
};

// Builds a key index of the given kind over keys[n, d] with ids[n], using prefill
// queries[n_queries, d] when the kind needs them (attention-aware; others ignore them).
StatusOr<std::unique_ptr<index::VectorIndex>> MakeKeyIndex(const HybridOptions& options, int d,
                                                           int64_t n, const float* keys,
                                                           const int64_t* ids, int64_t n_queries,
                                                           const float* queries);

class HybridAttention {
 public:
  // `store` must outlive this object.
  HybridAttention(KvStore* store, HybridOptions options);
  ~HybridAttention();

  // After prefill: builds the index over the current middle of (seq, layer, kv_head) from the
  // prefill queries[n_queries, h, d] of the group (flattened to n_queries * h query vectors;
  // n_queries may be 0 for kinds that need none). Replaces an existing index. An empty middle
  // is not an error: the queries are kept and the index is built at the first Sync/Attend that
  // finds tokens in the middle. The attention-aware kind without queries: InvalidArgument.
  Status BuildIndex(const std::string& seq, int layer, int kv_head, int64_t n_queries, int h,
                    const float* queries);
  // Inserts tokens that left the window since the last call into the index.
  Status Sync(const std::string& seq, int layer, int kv_head);
  // q[h, head_dim] -> o[h, head_dim], lse[h]. InvalidArgument on head_dim != the sequence's,
  // h < 1, top_k <= 0 or > tokens stored, NaN/Inf in q; NotFound / FailedPrecondition from the
  // store; FailedPrecondition when the middle is not covered by top_k and no index exists.
  // With retrieved_only, an empty retrieval set gives o = 0, lse = -inf.
  Status Attend(const std::string& seq, int layer, int kv_head, const float* q, int h, int head_dim,
                const AttendOptions& opt, float* o, float* lse, AttendStats* stats = nullptr);
  // The retrieval step of Attend alone: for each of the h query heads, the top_k middle tokens
  // by q.k from the index (token positions, best first, -1 padded) into ids[h * top_k]. Same
  // errors as Attend; FailedPrecondition when no index exists. stats gets keys_scored.
  Status Retrieve(const std::string& seq, int layer, int kv_head, const float* q, int h,
                  int head_dim, const AttendOptions& opt, int64_t* ids,
                  AttendStats* stats = nullptr);
  // Full exact attention over every stored token (the reference; also used by tests/bench).
  Status AttendFull(const std::string& seq, int layer, int kv_head, const float* q, int h,
                    int head_dim, float* o, float* lse);
  // True when (seq, layer, kv_head) has a key index.
  bool HasIndex(const std::string& seq, int layer, int kv_head);
  // Forgets the indexes of a sequence (call after KvStore::Release).
  void Drop(const std::string& seq);

 private:
  struct HeadState;
  StatusOr<std::shared_ptr<HeadState>> State(const std::string& seq, int layer, int kv_head,
                                             bool create);
  Status SyncLocked(const std::string& seq, int layer, int kv_head, HeadState* st);
  // Argument checks shared by Attend and Retrieve; returns the tokens stored.
  StatusOr<int64_t> CheckAttendArgs(const std::string& seq, int layer, int kv_head, const float* q,
                                    int h, int head_dim, int top_k) const;
  Status SearchLocked(HeadState* st, const float* q, int h, const AttendOptions& opt, int64_t* ids,
                      int64_t* keys_scored) const;

  KvStore* const store_;
  const HybridOptions options_;
  Mutex mu_;
  std::map<std::tuple<std::string, int, int>, std::shared_ptr<HeadState>> states_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace ragserve::kvr
