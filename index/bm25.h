// BM25 lexical index: documents (int64 label -> text) scored against query texts with Okapi BM25.
//
//   score(q, d) = sum over the distinct terms t of q that occur in d of
//                 idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))
//   idf(t)      = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))      (never negative)
// where terms come from LexicalTerms (index/text_tokenizer.h), tf is the count of t in d, |d| the
// number of terms of d, N the number of documents, avgdl the mean |d| and df(t) the documents
// holding t. Scores are computed in double and returned as float; ties go to the smaller label.
// tests/reference/bm25_ref.py is an independent implementation of the same definition.
//
// Like the vector indexes, search is batch-first and writes into caller-owned arrays.
// Persistence: Save/Load use the checksummed index file envelope (index/internal/index_file.h,
// kind code kBm25Code) written atomically (temp file, fsync, rename).
// Thread safety: every method is thread-safe; searches run concurrently, writes are exclusive.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "index/internal/rw_mutex.h"
#include "services/common/status.h"

namespace ragserve::index {

struct Bm25Params {
  double k1 = 1.2;  // term-frequency saturation, >= 0
  double b = 0.75;  // length normalisation, in [0, 1]
};

// InvalidArgument naming the bad value.
Status ValidateBm25Params(const Bm25Params& p);

class Bm25Index {
 public:
  // InvalidArgument for bad params.
  static StatusOr<std::unique_ptr<Bm25Index>> Create(Bm25Params params);
  // NotFound / DataLoss / InvalidArgument (not a BM25 file) like the vector index files.
  static StatusOr<std::unique_ptr<Bm25Index>> Load(const std::string& path);

  // Adds n documents; a label already present is replaced.
  void Add(int64_t n, const int64_t* labels, const std::string_view* texts);
  // Add() of documents already tokenized: terms[i] = LexicalTerms(text of document i).
  void AddTerms(int64_t n, const int64_t* labels, const std::vector<std::string>* terms);
  // At most how much memory_bytes() grows when AddTerms(n, labels, terms) adds n labels that are
  // not present: their slots and postings, the terms new to the vocabulary, and the arrays that
  // pass their capacity (doubling). Allocates only a map of the batch's distinct terms.
  int64_t AddBytes(int64_t n, const std::vector<std::string>* terms) const;
  // Removes the labels that are present; returns how many were.
  int64_t Remove(int64_t n, const int64_t* labels);
  // For each of the n query texts, the k best documents: labels[i*k + j] and scores[i*k + j],
  // best first; missing results are label -1, score 0. Documents without a query term never
  // match. `filter` (may be null) keeps a label when it returns true.
  Status Search(int64_t n, const std::string* queries, int k, float* scores, int64_t* labels,
                const std::function<bool(int64_t)>* filter = nullptr) const;
  // Writes the index durably to `path`.
  Status Save(const std::string& path) const;

  const Bm25Params& params() const { return params_; }
  int64_t size() const;       // documents
  int64_t num_terms() const;  // distinct terms with df > 0
  // Bytes held (allocated arrays, map entries, term texts; an estimate for the hash maps), in
  // O(1): kept up to date by every write.
  int64_t memory_bytes() const;

 private:
  struct Posting {
    uint32_t slot;
    uint32_t tf;
  };
  struct Slot {
    int64_t label = -1;  // -1 = removed (its postings are dropped by the next compaction)
    uint32_t length = 0;
    std::vector<uint32_t> terms;  // distinct term ids
  };
  explicit Bm25Index(Bm25Params params) : params_(params) {}
  void AddLocked(int64_t label, const std::vector<std::string>& terms)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveSlotLocked(uint32_t slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaybeCompactLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Recomputes the byte counters below from the arrays (after a load or a compaction).
  void RecountLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint32_t TermId(const std::string& term) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SearchOne(const std::string& query, int k, const std::function<bool(int64_t)>* filter,
                 std::vector<double>* acc, float* scores, int64_t* labels) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const Bm25Params params_;
  mutable internal::RwMutex mu_;
  std::unordered_map<std::string, uint32_t> term_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> term_text_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> df_ ABSL_GUARDED_BY(mu_);
  std::vector<std::vector<Posting>> postings_ ABSL_GUARDED_BY(mu_);
  std::vector<Slot> slots_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<int64_t, uint32_t> slot_of_ ABSL_GUARDED_BY(mu_);
  int64_t total_length_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dead_slots_ ABSL_GUARDED_BY(mu_) = 0;
  // For memory_bytes(): postings allocated (capacity, every list), term ids held by the slots,
  // bytes of the term texts.
  int64_t posting_capacity_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t slot_terms_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t term_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ragserve::index
