// Collections of the index service: documents (id, text, JSON metadata) and their vectors
// stored durably in RocksDB, served through a derived ANN index (flat / hnsw / ivf_flat /
// ivf_pq from index/). gRPC-free; services/index/service.cc maps it onto IndexService.
//
// Durability: every Upsert/Delete is one RocksDB write batch with sync=true, so an acknowledged
// write survives kill -9. The ANN index is derived state: Checkpoint()/Close() save it to
// <data_dir>/indexes/<collection id>-<seq>.idx together with the write sequence it reflects;
// on open the file is loaded and caught up from RocksDB (documents written after it are added,
// tombstones written after it are removed), or the index is rebuilt from RocksDB when the file
// is missing or corrupt.
//
// IVF collections: an IVF index needs training data, so until a collection holds
// IvfTrainingMinimum() vectors it is served by an exact flat index; the upsert that reaches the
// minimum trains the IVF index on every stored vector and switches to it. Its automatic nlist
// (4*sqrt(n)) is fixed at that moment; Rebuild() re-trains on the collection as it is now.
// Labels: every upsert gives the document a fresh int64 label (the write sequence number), so a
// replacement is "remove old label + add new label"; HNSW keeps removed labels as deleted graph
// nodes until the next Rebuild(), so heavy replace churn grows HNSW memory.
//
// Thread safety: all methods are thread-safe. Searches run concurrently with each other and
// with writes; writes to one collection are serialized (write_mu_). Rebuild() builds the new
// index to the side while searches keep using the old one, then swaps it in; writes to that
// collection wait for the rebuild.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "index/bm25.h"
#include "index/index_factory.h"
#include "index/internal/rw_mutex.h"
#include "index/vector_index.h"
#include "services/common/mutex.h"
#include "services/common/status.h"
#include "services/index/embedder.h"

namespace rocksdb {
class DB;
class Env;
struct Options;
class WriteBatch;
}  // namespace rocksdb

namespace ragserve::collection {

// How dense and BM25 hit lists are fused in hybrid retrieval.
struct FusionSpec {
  // weighted (default: see retrieval_bench in docs/BENCHMARKS.md) | rrf: sum of 1 / (rrf_k + rank)
  std::string method = "weighted";
  int rrf_k = 60;  // 1..10000
  // weighted: dense_weight * dense + (1 - dense_weight) * bm25, each list's scores min-max
  // normalised to [0, 1] (a document missing from a list gets 0 there); in [0, 1].
  double dense_weight = 0.5;
};

struct CollectionSpec {
  std::string name;  // [A-Za-z0-9_.-]{1,128}
  int dim = 0;       // >= 1
  index::Metric metric = index::Metric::kCosine;
  std::string index_kind = "hnsw";  // flat | hnsw | ivf_flat | ivf_pq
  std::string params_json = "{}";   // see index/index_factory.h
  std::string embedder = "hashing";
  index::Bm25Params bm25;            // the BM25 index every collection keeps over its texts
  std::string retrieval = "hybrid";  // dense | bm25 | hybrid: how text queries are answered
  FusionSpec fusion;
};

// InvalidArgument naming the bad value: retrieval, fusion method/rrf_k/dense_weight, bm25 params.
Status ValidateRetrieval(const CollectionSpec& spec);
Status ValidateFusion(const FusionSpec& f);

// Metadata keys that locate a passage cut from a longer document (Document::document_id etc.).
inline constexpr char kDocIdKey[] = "_doc_id";
inline constexpr char kChunkKey[] = "_chunk";
inline constexpr char kOffsetKey[] = "_offset";

struct Document {
  std::string id;  // 1..512 bytes
  std::string text;
  std::string metadata_json = "{}";  // a JSON object ("" = {}), nested at most kMaxJsonDepth
  std::vector<float> vector;         // empty = embed `text`; else exactly dim finite floats
  // A passage of a longer document: stored in the metadata under kDocIdKey / kChunkKey /
  // kOffsetKey when document_id is set (chunk_index and offset must then be >= 0).
  std::string document_id;
  int32_t chunk_index = 0;
  int64_t offset = 0;
};

struct Query {
  std::vector<float> vector;  // dim floats, or empty to embed `text`
  std::string text;
};

// Deepest nesting of arrays/objects accepted in metadata JSON and filter values (checked on the
// raw text before parsing, so deep input never reaches a recursive parser or serialiser).
inline constexpr int kMaxJsonDepth = 64;
// Per-search caps (InvalidArgument above them): k, ef_search, nprobe, queries x k.
inline constexpr int kMaxK = 10000;
inline constexpr int kMaxEfSearch = 10000;
inline constexpr int kMaxNprobe = 65536;
inline constexpr int64_t kMaxResultsPerSearch = int64_t{1} << 20;

// Request-size limits of a store (ragserve-index flags), checked before anything is allocated.
struct StoreLimits {
  int64_t max_docs_per_upsert = 10000;                // documents in one Upsert call/message
  int64_t max_embed_batch_bytes = int64_t{64} << 20;  // texts x dim x 4 embedded by one call
  // Bytes one Search or Get answer may hold (ids, texts, metadata, vectors): the gRPC send limit
  // (--max-message-mb). A larger answer could not be sent anyway; it is refused with
  // ResourceExhausted as soon as the texts read pass this, before the rest is read and copied.
  int64_t max_response_bytes = int64_t{64} << 20;
  // Bytes the collections may hold in memory, all together (--memory-limit-mb): vector indexes,
  // BM25 indexes and the per-document maps (Collection::MemoryBytes). An Upsert message whose
  // estimated growth would pass it is refused with ResourceExhausted before any of it is
  // written. Not counted: RocksDB's own caches and memtables, transient copies of requests, and
  // the second index a Rebuild or an IVF training builds beside the one serving.
  int64_t max_memory_bytes = int64_t{4096} << 20;
};

// Numeric bounds on a metadata field (unset = open); the field must be a JSON number.
struct NumericRange {
  std::optional<double> gt, gte, lt, lte;
};

struct SearchOptions {
  int k = 10;  // 1..kMaxK
  // Equality filter: metadata[field] must equal the JSON value written as text ("\"x\"", "42").
  std::map<std::string, std::string> filter_equals;
  std::map<std::string, NumericRange> filter_ranges;
  // metadata[field] must equal one of the JSON values (1..1024 of them).
  std::map<std::string, std::vector<std::string>> filter_any_of;
  std::string retrieval;             // "" = the collection's; dense | bm25 | hybrid
  std::optional<FusionSpec> fusion;  // unset = the collection's
  int ef_search = 0;                 // 0 = index default; at most kMaxEfSearch
  int nprobe = 0;                    // 0 = index default; at most kMaxNprobe
  bool include_text = true;
};

struct Hit {
  std::string id;
  // dense: squared L2 distance (l2) or similarity (ip, cosine); bm25: BM25 score; hybrid: the
  // fused score (larger is better)
  float score = 0;
  std::string text;
  std::string metadata_json;
  std::string document_id;  // kDocIdKey of the metadata, else id
  int32_t chunk_index = 0;
  int64_t offset = 0;
};

struct CollectionInfo {
  CollectionSpec spec;
  int64_t num_documents = 0;
  int64_t num_vectors = 0;  // vectors in the ANN index
  int64_t index_bytes = 0;
  int64_t disk_bytes = 0;
  bool rebuilding = false;
  int64_t lexical_documents = 0;  // documents in the BM25 index
  int64_t lexical_bytes = 0;
  int64_t memory_bytes = 0;  // Collection::MemoryBytes()
  std::string active_kind;   // kind serving searches now ("flat" while an IVF awaits training)
};

// Vectors an IVF collection must hold before its IVF index is trained.
int64_t IvfTrainingMinimum(const index::IndexSpec& spec);

class CollectionStore;

class Collection {
 public:
  ~Collection();
  const CollectionSpec& spec() const { return spec_; }
  int dim() const { return spec_.dim; }

  // Inserts or replaces (by id) the documents, durably, then indexes them. Validates the whole
  // batch first (empty or over max_docs_per_upsert, ids, dimension, NaN/Inf, metadata JSON and
  // its depth; ResourceExhausted when the texts to embed exceed max_embed_batch_bytes, or when
  // the growth it would bring the collections' memory past max_memory_bytes): on error nothing
  // changes. Returns the number written.
  StatusOr<int64_t> Upsert(std::vector<Document> docs);
  // Deletes the ids and every passage whose document_id is in document_ids (unknown ids are
  // ignored) from the store, the vector index and the BM25 index; returns the number deleted.
  StatusOr<int64_t> Delete(const std::vector<std::string>& ids,
                           const std::vector<std::string>& document_ids = {});
  // One hit list per query, best first. The retrieval mode (options, else the collection's):
  // dense searches the query's vector (or its embedded text); bm25 its text in the BM25 index;
  // hybrid both, fused (a query with a vector and no text is dense only). InvalidArgument for an
  // empty batch, k / ef_search / nprobe out of range, a wrong dimension, NaN/Inf, a query text
  // without words (it would embed to a zero vector / match nothing), a bm25 query without text,
  // or a bad filter; ResourceExhausted when the query texts exceed max_embed_batch_bytes or the
  // hits (with their texts) exceed max_response_bytes.
  StatusOr<std::vector<std::vector<Hit>>> Search(const std::vector<Query>& queries,
                                                 const SearchOptions& options) const;
  // The collection's embedder on `texts`: texts.size() x dim floats into *out, the vectors its
  // documents and text queries get. ResourceExhausted over max_embed_batch_bytes.
  Status EmbedTexts(const std::vector<std::string>& texts, std::vector<float>* out) const;
  // Found documents in request order (with their stored vectors) and the missing ids;
  // ResourceExhausted once they pass max_response_bytes (the rest is not read).
  Status Get(const std::vector<std::string>& ids, std::vector<Document>* found,
             std::vector<std::string>* missing) const;
  CollectionInfo Info() const;
  // Estimated bytes the collection holds in memory, in O(1): its vector index and BM25 index
  // (their memory_bytes(): allocated capacity, deleted HNSW nodes included) and its
  // per-document maps (ids, labels, parsed metadata), as of its last write.
  int64_t MemoryBytes() const { return memory_bytes_.load(); }
  // Rebuilds the index with a new kind/params ("" kind = keep); searches continue meanwhile.
  Status Rebuild(const std::string& kind, const std::string& params_json);
  // Saves the index file and prunes the tombstones it covers.
  Status Checkpoint();

 private:
  friend class CollectionStore;
  struct Entry {
    std::string doc_id;
    nlohmann::json metadata;  // parsed once: the filter runs inside the search loop
    int64_t bytes = 0;        // its share of entry_bytes_ (EntryBytes)
  };
  // A hit list of one retriever: (label, score), best first.
  using Ranked = std::vector<std::pair<int64_t, float>>;
  struct Plan;        // what one Search call runs
  struct RecentDocs;  // documents written after a checkpoint
  Collection(CollectionStore* store, uint32_t cid, CollectionSpec spec, index::IndexSpec ispec,
             std::unique_ptr<Embedder> embedder);
  // Loads the index file or rebuilds, then catches up from RocksDB.
  Status Open();
  Status RebuildFromDbLocked(const index::IndexSpec& ispec,
                             std::shared_ptr<index::VectorIndex>* out);
  Status MaybeTrainIvfLocked();
  Status EmbedQueries(const std::vector<Query>& queries, std::vector<float>* out) const;
  // Steps of Search, run under state_mu_ (shared).
  Status SearchDenseLocked(const Plan& plan, std::vector<Ranked>* out) const
      ABSL_SHARED_LOCKS_REQUIRED(state_mu_);
  Status SearchLexicalLocked(const Plan& plan, std::vector<Ranked>* out) const
      ABSL_SHARED_LOCKS_REQUIRED(state_mu_);
  std::vector<Hit> HitsLocked(const Ranked& ranked, bool include_text) const
      ABSL_SHARED_LOCKS_REQUIRED(state_mu_);
  // The ids of the passages whose kDocIdKey is one of document_ids.
  std::vector<std::string> IdsOfDocuments(const std::vector<std::string>& document_ids) const;
  // Reads the texts of the hits from RocksDB; ResourceExhausted (and stops reading) once the
  // hits pass max_response_bytes.
  Status FillTexts(std::vector<std::vector<Hit>>* results) const;
  // Loads the vector index file of the checkpoint (null when missing or unusable).
  std::shared_ptr<index::VectorIndex> LoadVectorIndex(const std::string& file) const;
  // Adds the documents written after the checkpoint and removes the labels deleted after it;
  // resets *idx when the result disagrees with the store.
  Status CatchUpVectorIndex(const std::string& file, const RecentDocs& recent,
                            const std::vector<int64_t>& gone,
                            std::shared_ptr<index::VectorIndex>* idx)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  // Loads the BM25 file of the checkpoint (null when missing or unusable).
  std::shared_ptr<index::Bm25Index> LoadBm25(const std::string& file) const;
  // Rebuilds the BM25 index from every document in RocksDB.
  Status RebuildBm25FromDbLocked(std::shared_ptr<index::Bm25Index>* out);
  // ResourceExhausted when embedding `texts` texts would exceed max_embed_batch_bytes.
  Status CheckEmbedBatch(size_t texts, std::string_view what) const;

  CollectionStore* const store_;
  const uint32_t cid_;
  // spec_, ispec_, by_label_ and label_of_ are written with write_mu_ and state_mu_ (exclusive)
  // both held and read with either one: a rule clang's analysis cannot state, so they carry no
  // annotation. spec_'s index_kind/params change on Rebuild; name, dim and metric never do.
  CollectionSpec spec_;
  index::IndexSpec ispec_;
  std::unique_ptr<Embedder> embedder_;

  Mutex write_mu_;                                    // serializes writes, rebuilds and checkpoints
  uint64_t next_seq_ ABSL_GUARDED_BY(write_mu_) = 1;  // labels and tombstone sequence numbers
  bool dropped_ ABSL_GUARDED_BY(write_mu_) = false;
  // Guards the fields below; writer-preferring so searches cannot starve writes. Never held
  // across RocksDB I/O; held (shared) across an index search because the filter reads by_label_.
  mutable index::internal::RwMutex state_mu_;
  std::shared_ptr<index::VectorIndex> index_ ABSL_GUARDED_BY(state_mu_);
  // The BM25 index over the documents' texts (internally synchronised; the pointer is set at
  // Open and never changes).
  std::shared_ptr<index::Bm25Index> bm25_;
  std::unordered_map<int64_t, Entry> by_label_;        // see spec_
  std::unordered_map<std::string, int64_t> label_of_;  // see spec_
  std::atomic<bool> rebuilding_{false};
  // Sum of Entry::bytes over by_label_ (written with write_mu_ and state_mu_ held).
  std::atomic<int64_t> entry_bytes_{0};
  // MemoryBytes(): recomputed by RecountMemory at the end of every write (under write_mu_), so
  // the store sums it without waiting for an index's lock.
  std::atomic<int64_t> memory_bytes_{0};
  void RecountMemory();
};

// All collections under one data directory (RocksDB at <dir>/db, index files in <dir>/indexes).
class CollectionStore {
 public:
  // Opens (creating if needed) the store and every collection in it. `env` (tests: a file
  // system that fails on demand) is RocksDB's default when null; it must outlive the store.
  static StatusOr<std::unique_ptr<CollectionStore>> Open(const std::string& data_dir,
                                                         StoreLimits limits = {},
                                                         rocksdb::Env* env = nullptr)
      ABSL_NO_THREAD_SAFETY_ANALYSIS;  // fills a store no other thread sees yet
  // Checkpoints every collection, then closes the DB.
  ~CollectionStore();

  // AlreadyExists when the name is taken; InvalidArgument for a bad name/dim/kind/params.
  StatusOr<std::shared_ptr<Collection>> Create(const CollectionSpec& spec);
  // NotFound when unknown. Deletes documents and index files; waits for a running Rebuild of
  // that collection without blocking calls on other collections. While it runs, Get says
  // NotFound and Create of the name FailedPrecondition.
  Status Drop(const std::string& name);
  StatusOr<std::shared_ptr<Collection>> Get(const std::string& name) const;
  std::vector<std::shared_ptr<Collection>> List() const;
  // Checkpoints every collection.
  Status CheckpointAll();
  const std::string& data_dir() const { return dir_; }
  const StoreLimits& limits() const { return limits_; }
  // Sum of the collections' MemoryBytes() (O(collections)).
  int64_t MemoryBytes() const;
  // Bytes RocksDB itself holds in memory (memtables, block cache, table readers: its own
  // estimates); bounded by its options, not part of MemoryBytes() nor of max_memory_bytes.
  int64_t DbMemoryBytes() const;

 private:
  friend class Collection;
  // Admits `bytes` more collection memory: ResourceExhausted naming the limit when the
  // collections' memory, the reservations of the writes in flight and `bytes` pass
  // max_memory_bytes; else reserves them until ReleaseMemory (once the write is applied, its
  // growth shows in MemoryBytes). `what` names the write.
  Status ReserveMemory(int64_t bytes, std::string_view what);
  void ReleaseMemory(int64_t bytes);
  CollectionStore(std::string dir, StoreLimits limits);
  // A use of db_: holds db_mu_ shared for its scope (defined in the .cc).
  class DbRef;
  // Writes `batch` durably (sync). A full disk is ResourceExhausted; after a failed write (full
  // disk, or any I/O error) the next write first reopens the DB once the disk has room again
  // (ReopenAfterWriteError), so writes resume without a restart.
  Status WriteSync(rocksdb::WriteBatch* batch, std::string_view what);
  // When a write failed since the last open: ReopenAfterFailedWrite (services/common/
  // rocksdb_util.h) once the data disk has room for the WAL to be replayed (its size + 1 MiB).
  // Waits for every DbRef to be released.
  Status ReopenAfterWriteError();
  std::string IndexDir() const { return dir_ + "/indexes"; }
  // Deletes a collection's records and index files (under its write_mu_) and marks it dropped.
  Status DeleteCollectionData(const std::string& name, Collection* c);

  const std::string dir_;
  const StoreLimits limits_;
  std::unique_ptr<rocksdb::Options> db_options_;  // set by Open, never changes
  // db_mu_ guards db_: shared by every use (DbRef: one call or one scan, never nested, never
  // while waiting for a collection lock), exclusive to close and reopen it. Writer-preferring,
  // so a reopen is not starved by searches.
  mutable index::internal::RwMutex db_mu_;
  std::unique_ptr<rocksdb::DB> db_ ABSL_GUARDED_BY(db_mu_);
  // A write failed (full disk, I/O error): the next write reopens the DB first.
  std::atomic<bool> needs_reopen_{false};
  // Reopen attempts are at most one per second while the disk looks free but writes still fail.
  std::atomic<int64_t> last_reopen_ms_{0};
  // Held across Create's write, never while waiting for a collection's write_mu_.
  mutable Mutex mu_;
  std::map<std::string, std::shared_ptr<Collection>> collections_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dropping_ ABSL_GUARDED_BY(mu_);  // names whose Drop deletes their data
  uint32_t next_cid_ ABSL_GUARDED_BY(mu_) = 1;
  // Serializes admissions, so concurrent writes to different collections cannot together pass
  // max_memory_bytes; held only while summing (never across a write).
  Mutex memory_mu_;
  int64_t reserved_bytes_ ABSL_GUARDED_BY(memory_mu_) = 0;  // admitted, not yet applied
};

// Validates a collection name ([A-Za-z0-9_.-]{1,128}); InvalidArgument naming it.
Status ValidateCollectionName(const std::string& name);

}  // namespace ragserve::collection
