#include "services/index/collection.h"

#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <shared_mutex>
#include <unordered_set>

#include "index/text_tokenizer.h"
#include "services/common/logging.h"
#include "services/common/rocksdb_util.h"
#include "services/index/retrieval.h"

namespace ragserve::collection {

namespace fs = std::filesystem;
using index::Metric;
using index::VectorIndex;
using DbLock = ReaderMutexLock<index::internal::RwMutex>;

class ABSL_SCOPED_LOCKABLE CollectionStore::DbRef {
 public:
  explicit DbRef(const CollectionStore& s)
      ABSL_SHARED_LOCK_FUNCTION(s.db_mu_) ABSL_NO_THREAD_SAFETY_ANALYSIS
      : mu_(s.db_mu_),
        db_((mu_.lock_shared(), s.db_.get())) {}
  ~DbRef() ABSL_UNLOCK_FUNCTION() { mu_.unlock_shared(); }
  DbRef(const DbRef&) = delete;
  DbRef& operator=(const DbRef&) = delete;
  rocksdb::DB* operator->() const { return db_; }
  rocksdb::DB* get() const { return db_; }

 private:
  index::internal::RwMutex& mu_;
  rocksdb::DB* const db_;
};

namespace {

// Key layout (one RocksDB, byte prefixes; cid = 4-byte big-endian collection id):
//   "G"                        -> u32 next collection id
//   "C" name                   -> collection spec JSON (with "cid")
//   "N" cid                    -> u64 next write sequence of the collection
//   "D" cid doc_id             -> document record (label, vector, text, metadata)
//   "T" cid be64(seq)          -> u64 label removed by the write with that sequence
//   "I" cid                    -> checkpoint JSON {"seq", "file"}
constexpr size_t kMaxIdBytes = 512;

std::string Be32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>(v >> (24 - 8 * i));
  return s;
}
std::string Be64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (56 - 8 * i));
  return s;
}
uint64_t ReadBe64(std::string_view s) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(s[i]);
  return v;
}
std::string Key(char tag, uint32_t cid, std::string_view rest = {}) {
  std::string k(1, tag);
  k += Be32(cid);
  k.append(rest);
  return k;
}
template <typename T>
void PutRaw(std::string* s, const T& v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

struct DocRecord {
  uint64_t label = 0;
  std::vector<float> vector;
  std::string text;
  std::string metadata_json;
};

std::string EncodeDoc(uint64_t label, const Document& d, const std::string& meta) {
  std::string s;
  PutRaw<uint64_t>(&s, label);
  PutRaw<uint32_t>(&s, static_cast<uint32_t>(d.vector.size()));
  s.append(reinterpret_cast<const char*>(d.vector.data()), d.vector.size() * sizeof(float));
  PutRaw<uint32_t>(&s, static_cast<uint32_t>(d.text.size()));
  s += d.text;
  s += meta;
  return s;
}

Status DecodeDoc(std::string_view v, DocRecord* r) {
  auto take = [&v](void* dst, size_t n) {
    if (v.size() < n) return false;
    std::memcpy(dst, v.data(), n);
    v.remove_prefix(n);
    return true;
  };
  uint32_t dim = 0, tlen = 0;
  if (!take(&r->label, 8) || !take(&dim, 4) || v.size() < size_t{dim} * 4) {
    return DataLoss("index store: corrupt document record");
  }
  r->vector.resize(dim);
  take(r->vector.data(), size_t{dim} * 4);
  if (!take(&tlen, 4) || v.size() < tlen) return DataLoss("index store: corrupt document record");
  r->text.assign(v.data(), tlen);
  v.remove_prefix(tlen);
  r->metadata_json.assign(v.data(), v.size());
  return OkStatus();
}

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return OkStatus();
  if (s.IsNotFound()) return NotFound(StrCat(what, ": ", s.ToString()));
  // A full disk is a resource running out, not a bug: the caller may retry once space is freed.
  if (s.IsNoSpace()) return ResourceExhausted(StrCat(what, ": disk full: ", s.ToString()));
  return Internal(StrCat(what, ": ", s.ToString()));
}

rocksdb::WriteOptions SyncWrite() {
  rocksdb::WriteOptions w;
  w.sync = true;  // an acknowledged write survives kill -9 and power loss
  return w;
}

// Visits every key with `prefix` in order.
template <typename Fn>
Status ScanPrefix(rocksdb::DB* db, const std::string& prefix, Fn&& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek(prefix); it->Valid() && it->key().starts_with(prefix); it->Next()) {
    RS_RETURN_IF_ERROR(fn(std::string_view(it->key().data(), it->key().size()),
                          std::string_view(it->value().data(), it->value().size())));
  }
  return FromRocks(it->status(), "index store: scan");
}

// Bytes of the write-ahead logs in `db_dir`: what a reopen replays and flushes to a table file.
uint64_t WalBytes(const std::string& db_dir) {
  uint64_t bytes = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(db_dir, ec)) {
    if (e.path().extension() == ".log") bytes += e.file_size(ec);
  }
  return bytes;
}

// Room a reopen needs besides the WAL (a new MANIFEST, OPTIONS file and WAL).
constexpr uint64_t kReopenMarginBytes = uint64_t{1} << 20;

bool IsIvf(const std::string& kind) { return kind == "ivf_flat" || kind == "ivf_pq"; }

std::string SpecJson(uint32_t cid, const CollectionSpec& s) {
  nlohmann::json j = {{"cid", cid},
                      {"name", s.name},
                      {"dim", s.dim},
                      {"metric", std::string(index::MetricName(s.metric))},
                      {"kind", s.index_kind},
                      {"params", s.params_json},
                      {"embedder", s.embedder},
                      {"bm25_k1", s.bm25.k1},
                      {"bm25_b", s.bm25.b},
                      {"retrieval", s.retrieval},
                      {"fusion",
                       {{"method", s.fusion.method},
                        {"rrf_k", s.fusion.rrf_k},
                        {"dense_weight", s.fusion.dense_weight}}}};
  return j.dump();
}

// The retrieval settings of a spec record; records written before they existed get defaults.
void ParseRetrievalJson(const nlohmann::json& j, CollectionSpec* s) {
  s->bm25.k1 = j.value("bm25_k1", s->bm25.k1);
  s->bm25.b = j.value("bm25_b", s->bm25.b);
  s->retrieval = j.value("retrieval", s->retrieval);
  if (j.contains("fusion") && j["fusion"].is_object()) {
    const auto& f = j["fusion"];
    s->fusion.method = f.value("method", s->fusion.method);
    s->fusion.rrf_k = f.value("rrf_k", s->fusion.rrf_k);
    s->fusion.dense_weight = f.value("dense_weight", s->fusion.dense_weight);
  }
}

Status ParseMetadata(const std::string& text, std::string_view id, nlohmann::json* out) {
  if (text.empty()) {
    *out = nlohmann::json::object();
    return OkStatus();
  }
  RS_RETURN_IF_ERROR(CheckJsonDepth(text, StrCat("document '", id, "': metadata")));
  try {
    *out = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    return InvalidArgument(StrCat("document '", id, "': metadata is not valid JSON: ", e.what()));
  }
  RS_CHECK_ARG(out->is_object(), "document '", id, "': metadata must be a JSON object, got ",
               out->type_name());
  return OkStatus();
}

// ---- Memory estimate of the per-document maps (Collection::MemoryBytes) ------------------------
// a + b for byte counts (>= 0): INT64_MAX when the sum does not fit.
int64_t SaturatingAdd(int64_t a, int64_t b) {
  int64_t sum = 0;
  return __builtin_add_overflow(a, b, &sum) ? INT64_MAX : sum;
}
// glibc malloc: a chunk is the request + 8 bytes of header, rounded up to 16, at least 32.
int64_t Malloced(int64_t n) { return std::max<int64_t>(32, (n + 8 + 15) / 16 * 16); }
// The heap bytes of a std::string of `len` bytes (none within the 15-byte small buffer).
int64_t StringHeap(size_t len) { return len <= 15 ? 0 : Malloced(static_cast<int64_t>(len) + 1); }

// Bytes a parsed JSON value holds beyond its own 16 bytes: nlohmann allocates an object as a
// std::map (a node per member: links, key, value), an array as a std::vector of values and a
// string as a std::string. Recursion is at most kMaxJsonDepth deep (checked on the text).
int64_t JsonHeap(const nlohmann::json& j) {
  int64_t bytes = 0;
  switch (j.type()) {
    case nlohmann::json::value_t::object:
      bytes = Malloced(sizeof(nlohmann::json::object_t));
      for (const auto& [key, value] : j.get_ref<const nlohmann::json::object_t&>()) {
        bytes += Malloced(32 + sizeof(std::string) + sizeof(nlohmann::json)) +
                 StringHeap(key.size()) + JsonHeap(value);
      }
      return bytes;
    case nlohmann::json::value_t::array: {
      const auto& a = j.get_ref<const nlohmann::json::array_t&>();
      bytes = Malloced(sizeof(nlohmann::json::array_t));
      if (a.capacity() > 0) {
        bytes += Malloced(static_cast<int64_t>(a.capacity() * sizeof(nlohmann::json)));
      }
      for (const auto& v : a) bytes += JsonHeap(v);
      return bytes;
    }
    case nlohmann::json::value_t::string:
      return Malloced(sizeof(std::string)) + StringHeap(j.get_ref<const std::string&>().size());
    case nlohmann::json::value_t::binary:
      return Malloced(sizeof(nlohmann::json::binary_t)) +
             static_cast<int64_t>(j.get_ref<const nlohmann::json::binary_t&>().size());
    default:
      return 0;  // numbers, booleans and null live in the 16 bytes
  }
}

// The bytes one document takes in Collection::by_label_ and label_of_: the two hash nodes (with
// a bucket each, doubled for the table's growth), the id held twice and the parsed metadata.
int64_t EntryBytes(const std::string& id, const nlohmann::json& metadata) {
  constexpr int64_t kByLabelNode = 8 + 8 + 32 + 16 + 8;  // next, label, doc_id, metadata, bytes
  constexpr int64_t kLabelOfNode = 8 + 32 + 8 + 8;       // next, id, label, cached hash
  return Malloced(kByLabelNode) + Malloced(kLabelOfNode) + 2 * 16 + 2 * StringHeap(id.size()) +
         JsonHeap(metadata);
}

// Records where a passage sits in its source document (Document::document_id) in its metadata.
Status AddPassageLocation(const Document& d, nlohmann::json* meta) {
  if (d.document_id.empty()) return OkStatus();
  RS_CHECK_ARG(d.document_id.size() <= kMaxIdBytes, "document '", d.id,
               "': document_id must be 1..", kMaxIdBytes, " bytes, got ", d.document_id.size());
  RS_CHECK_ARG(d.chunk_index >= 0 && d.offset >= 0, "document '", d.id,
               "': chunk_index and offset must be >= 0, got ", d.chunk_index, " and ", d.offset);
  (*meta)[kDocIdKey] = d.document_id;
  (*meta)[kChunkKey] = d.chunk_index;
  (*meta)[kOffsetKey] = d.offset;
  return OkStatus();
}

}  // namespace

Status ValidateCollectionName(const std::string& name) {
  bool ok = !name.empty() && name.size() <= 128;
  for (char c : name) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-');
  }
  RS_CHECK_ARG(ok, "collection name '", name, "' must match [A-Za-z0-9_.-]{1,128}");
  return OkStatus();
}

Status ValidateFusion(const FusionSpec& f) {
  RS_CHECK_ARG(f.method == "rrf" || f.method == "weighted",
               "fusion method must be rrf or weighted, got '", f.method, "'");
  RS_CHECK_ARG(f.rrf_k >= 1 && f.rrf_k <= 10000, "fusion rrf_k must be in [1, 10000], got ",
               f.rrf_k);
  RS_CHECK_ARG(f.dense_weight >= 0 && f.dense_weight <= 1,
               "fusion dense_weight must be in [0, 1], got ", f.dense_weight);
  return OkStatus();
}

Status ValidateRetrieval(const CollectionSpec& spec) {
  RS_CHECK_ARG(spec.retrieval == "dense" || spec.retrieval == "bm25" || spec.retrieval == "hybrid",
               "retrieval must be dense, bm25 or hybrid, got '", spec.retrieval, "'");
  RS_RETURN_IF_ERROR(ValidateFusion(spec.fusion));
  return index::ValidateBm25Params(spec.bm25);
}

int64_t IvfTrainingMinimum(const index::IndexSpec& spec) {
  int64_t need = std::max<int64_t>(1000, spec.ivf.nlist);
  if (spec.kind == "ivf_pq") need = std::max<int64_t>(need, int64_t{1} << spec.ivf.pq_nbits);
  return need;
}

// ---- Collection -------------------------------------------------------------------------------

Collection::Collection(CollectionStore* store, uint32_t cid, CollectionSpec spec,
                       index::IndexSpec ispec, std::unique_ptr<Embedder> embedder)
    : store_(store),
      cid_(cid),
      spec_(std::move(spec)),
      ispec_(std::move(ispec)),
      embedder_(std::move(embedder)) {}

Collection::~Collection() = default;

Status Collection::RebuildFromDbLocked(const index::IndexSpec& ispec,
                                       std::shared_ptr<VectorIndex>* out) {
  std::vector<float> x;
  std::vector<int64_t> labels;
  {
    CollectionStore::DbRef db(*store_);
    RS_RETURN_IF_ERROR(ScanPrefix(db.get(), Key('D', cid_), [&](auto, std::string_view v) {
      DocRecord r;
      RS_RETURN_IF_ERROR(DecodeDoc(v, &r));
      if (static_cast<int>(r.vector.size()) != spec_.dim) {
        return DataLoss(StrCat("index store: document vector of dim ", r.vector.size()));
      }
      x.insert(x.end(), r.vector.begin(), r.vector.end());
      labels.push_back(static_cast<int64_t>(r.label));
      return OkStatus();
    }));
  }
  const int64_t n = static_cast<int64_t>(labels.size());
  index::IndexSpec use = ispec;
  if (IsIvf(ispec.kind) && n < IvfTrainingMinimum(ispec)) use.kind = "flat";
  RS_ASSIGN_OR_RETURN(auto built, index::BuildIndex(use, n, x.data(), labels.data()));
  *out = std::shared_ptr<VectorIndex>(std::move(built));
  return OkStatus();
}

namespace {

// The checkpoint record: the write sequence the saved index files reflect and their names.
struct CheckpointRecord {
  uint64_t seq = 0;
  std::string file;       // vector index
  std::string bm25_file;  // BM25 index ("" in records written before it existed)
};

CheckpointRecord ReadCheckpointRecord(rocksdb::DB* db, const std::string& key,
                                      const std::string& name) {
  CheckpointRecord rec;
  std::string v;
  if (!db->Get(rocksdb::ReadOptions(), key, &v).ok()) return rec;
  try {
    auto j = nlohmann::json::parse(v);
    rec.seq = j.at("seq").get<uint64_t>();
    rec.file = j.at("file").get<std::string>();
    rec.bm25_file = j.value("bm25", std::string());
  } catch (const std::exception& e) {
    RS_LOG(warn, "collection {}: bad checkpoint record ({}); rebuilding", name, e.what());
    return CheckpointRecord{};
  }
  return rec;
}

}  // namespace

// Documents written after a checkpoint (caught up into the loaded index files).
struct Collection::RecentDocs {
  std::vector<int64_t> labels;
  std::vector<float> x;
  std::vector<std::string> texts;
};

std::shared_ptr<VectorIndex> Collection::LoadVectorIndex(const std::string& file) const {
  if (file.empty()) return nullptr;
  auto loaded = index::LoadIndex(store_->IndexDir() + "/" + file);
  const std::string& want = ispec_.kind;
  if (loaded.ok() && (*loaded)->dim() == spec_.dim && (*loaded)->metric() == spec_.metric &&
      ((*loaded)->kind() == want || (IsIvf(want) && (*loaded)->kind() == "flat"))) {
    return std::shared_ptr<VectorIndex>(std::move(*loaded));
  }
  RS_LOG(warn, "collection {}: index file {} unusable ({}); rebuilding from the store", spec_.name,
         file, loaded.ok() ? "kind/dim mismatch" : loaded.status().ToString());
  return nullptr;
}

std::shared_ptr<index::Bm25Index> Collection::LoadBm25(const std::string& file) const {
  if (file.empty()) return nullptr;
  auto loaded = index::Bm25Index::Load(store_->IndexDir() + "/" + file);
  if (loaded.ok() && (*loaded)->params().k1 == spec_.bm25.k1 &&
      (*loaded)->params().b == spec_.bm25.b) {
    return std::shared_ptr<index::Bm25Index>(std::move(*loaded));
  }
  RS_LOG(warn, "collection {}: bm25 file {} unusable ({}); rebuilding from the store", spec_.name,
         file, loaded.ok() ? "parameter mismatch" : loaded.status().ToString());
  return nullptr;
}

Status Collection::RebuildBm25FromDbLocked(std::shared_ptr<index::Bm25Index>* out) {
  RS_ASSIGN_OR_RETURN(auto built, index::Bm25Index::Create(spec_.bm25));
  CollectionStore::DbRef db(*store_);
  RS_RETURN_IF_ERROR(ScanPrefix(db.get(), Key('D', cid_), [&](auto, std::string_view v) {
    DocRecord r;
    RS_RETURN_IF_ERROR(DecodeDoc(v, &r));
    const auto label = static_cast<int64_t>(r.label);
    const std::string_view text = r.text;
    built->Add(1, &label, &text);
    return OkStatus();
  }));
  *out = std::shared_ptr<index::Bm25Index>(std::move(built));
  return OkStatus();
}

Status Collection::Open() {
  MutexLock w(write_mu_);
  CheckpointRecord ckpt;
  RecentDocs recent;          // documents written after the checkpoint: caught up below
  std::vector<int64_t> gone;  // labels removed after the checkpoint
  {
    CollectionStore::DbRef db(*store_);
    std::string v;
    auto s = db->Get(rocksdb::ReadOptions(), Key('N', cid_), &v);
    if (s.ok() && v.size() == 8) next_seq_ = ReadBe64(v);
    ckpt = ReadCheckpointRecord(db.get(), Key('I', cid_), spec_.name);
    // Documents -> label maps.
    RS_RETURN_IF_ERROR(
        ScanPrefix(db.get(), Key('D', cid_), [&](std::string_view k, std::string_view val) {
          DocRecord r;
          RS_RETURN_IF_ERROR(DecodeDoc(val, &r));
          Entry e;
          e.doc_id.assign(k.substr(5));
          e.metadata = nlohmann::json::parse(r.metadata_json, nullptr, false);
          if (e.metadata.is_discarded()) e.metadata = nlohmann::json::object();
          e.bytes = EntryBytes(e.doc_id, e.metadata);
          entry_bytes_ += e.bytes;
          const auto label = static_cast<int64_t>(r.label);
          label_of_[e.doc_id] = label;
          by_label_.emplace(label, std::move(e));
          if (r.label >= ckpt.seq) {
            recent.labels.push_back(label);
            recent.x.insert(recent.x.end(), r.vector.begin(), r.vector.end());
            recent.texts.push_back(std::move(r.text));
          }
          return OkStatus();
        }));
    RS_RETURN_IF_ERROR(
        ScanPrefix(db.get(), Key('T', cid_), [&](std::string_view k, std::string_view val) {
          if (ReadBe64(k.substr(5)) >= ckpt.seq && val.size() == 8) {
            gone.push_back(static_cast<int64_t>(ReadBe64(val)));
          }
          return OkStatus();
        }));
  }
  std::shared_ptr<VectorIndex> idx = LoadVectorIndex(ckpt.file);
  std::shared_ptr<index::Bm25Index> bm25 = LoadBm25(ckpt.bm25_file);
  if (idx != nullptr) RS_RETURN_IF_ERROR(CatchUpVectorIndex(ckpt.file, recent, gone, &idx));
  if (bm25 != nullptr) {
    std::vector<std::string_view> texts(recent.texts.begin(), recent.texts.end());
    bm25->Add(static_cast<int64_t>(texts.size()), recent.labels.data(), texts.data());
    bm25->Remove(static_cast<int64_t>(gone.size()), gone.data());
  }
  if (idx == nullptr) RS_RETURN_IF_ERROR(RebuildFromDbLocked(ispec_, &idx));
  if (bm25 == nullptr) RS_RETURN_IF_ERROR(RebuildBm25FromDbLocked(&bm25));
  bm25_ = std::move(bm25);
  {
    WriterMutexLock st(state_mu_);
    index_ = std::move(idx);
  }
  Status s = MaybeTrainIvfLocked();
  RecountMemory();
  return s;
}

void Collection::RecountMemory() {
  std::shared_ptr<VectorIndex> idx;
  {
    ReaderMutexLock st(state_mu_);
    idx = index_;
  }
  int64_t bytes = entry_bytes_.load();
  if (idx != nullptr) bytes = SaturatingAdd(bytes, idx->memory_bytes());
  if (bm25_ != nullptr) bytes = SaturatingAdd(bytes, bm25_->memory_bytes());
  memory_bytes_ = bytes;
}

Status Collection::CatchUpVectorIndex(const std::string& file, const RecentDocs& recent,
                                      const std::vector<int64_t>& gone,
                                      std::shared_ptr<VectorIndex>* idx) {
  const auto n = static_cast<int64_t>(recent.labels.size());
  if (n > 0) RS_RETURN_IF_ERROR((*idx)->add(n, recent.x.data(), recent.labels.data()));
  if (!gone.empty()) RS_RETURN_IF_ERROR((*idx)->remove(gone.size(), gone.data()).status());
  if ((*idx)->size() != static_cast<int64_t>(by_label_.size())) {
    RS_LOG(warn, "collection {}: index holds {} vectors, store {}; rebuilding", spec_.name,
           (*idx)->size(), by_label_.size());
    idx->reset();
  } else {
    RS_LOG(info, "collection {}: loaded {} (+{} caught up, -{} removed)", spec_.name, file, n,
           gone.size());
  }
  return OkStatus();
}

Status Collection::MaybeTrainIvfLocked() {
  if (!IsIvf(ispec_.kind)) return OkStatus();
  std::shared_ptr<VectorIndex> cur;
  int64_t n = 0;
  {
    ReaderMutexLock st(state_mu_);
    cur = index_;
    n = static_cast<int64_t>(by_label_.size());
  }
  if (cur->kind() != "flat" || n < IvfTrainingMinimum(ispec_)) return OkStatus();
  std::shared_ptr<VectorIndex> built;
  RS_RETURN_IF_ERROR(RebuildFromDbLocked(ispec_, &built));
  RS_LOG(info, "collection {}: trained {} on {} vectors", spec_.name, ispec_.kind, n);
  WriterMutexLock st(state_mu_);
  index_ = std::move(built);
  return OkStatus();
}

Status Collection::CheckEmbedBatch(size_t texts, std::string_view what) const {
  // texts * dim * 4 <= max, without overflow: texts <= max / (dim * 4).
  const int64_t per_text = int64_t{spec_.dim} * static_cast<int64_t>(sizeof(float));
  const int64_t max_texts = store_->limits().max_embed_batch_bytes / per_text;
  if (static_cast<uint64_t>(texts) > static_cast<uint64_t>(max_texts)) {
    return ResourceExhausted(
        StrCat(what, " into '", spec_.name, "': ", texts, " texts to embed at ", per_text,
               " bytes each exceed the ", store_->limits().max_embed_batch_bytes,
               "-byte embedding batch limit; send at most ", max_texts, " per call"));
  }
  return OkStatus();
}

StatusOr<int64_t> Collection::Upsert(std::vector<Document> docs) {
  RS_CHECK_ARG(!docs.empty(), "upsert into '", spec_.name, "': empty batch");
  const int64_t max_docs = store_->limits().max_docs_per_upsert;
  RS_CHECK_ARG(static_cast<int64_t>(docs.size()) <= max_docs, "upsert into '", spec_.name,
               "': ", docs.size(), " documents in one call; the limit is ", max_docs);
  // Validate everything before touching anything.
  std::vector<nlohmann::json> metas(docs.size());
  std::vector<std::string> to_embed;
  std::vector<size_t> embed_pos;
  for (size_t i = 0; i < docs.size(); ++i) {
    Document& d = docs[i];
    RS_CHECK_ARG(!d.id.empty() && d.id.size() <= kMaxIdBytes, "document ", i, ": id must be 1..",
                 kMaxIdBytes, " bytes, got ", d.id.size());
    RS_RETURN_IF_ERROR(ParseMetadata(d.metadata_json, d.id, &metas[i]));
    RS_RETURN_IF_ERROR(AddPassageLocation(d, &metas[i]));
    if (d.vector.empty()) {
      to_embed.push_back(d.text);
      embed_pos.push_back(i);
      continue;
    }
    RS_CHECK_ARG(static_cast<int>(d.vector.size()) == spec_.dim, "document '", d.id,
                 "': vector has dimension ", d.vector.size(), ", collection '", spec_.name,
                 "' has ", spec_.dim);
    for (size_t j = 0; j < d.vector.size(); ++j) {
      RS_CHECK_ARG(std::isfinite(d.vector[j]), "document '", d.id, "': vector component ", j,
                   " is not finite (", d.vector[j], ")");
    }
  }
  if (!to_embed.empty()) {
    RS_RETURN_IF_ERROR(CheckEmbedBatch(to_embed.size(), "upsert"));
    std::vector<float> e(to_embed.size() * spec_.dim);
    RS_RETURN_IF_ERROR(embedder_->Embed(to_embed, e.data()));
    for (size_t t = 0; t < embed_pos.size(); ++t) {
      docs[embed_pos[t]].vector.assign(e.begin() + t * spec_.dim, e.begin() + (t + 1) * spec_.dim);
    }
  }
  // Within a batch the last document with an id wins.
  std::unordered_map<std::string, size_t> last;
  for (size_t i = 0; i < docs.size(); ++i) last[docs[i].id] = i;
  std::vector<size_t> order;  // the documents written, in batch order
  for (size_t i = 0; i < docs.size(); ++i) {
    if (last[docs[i].id] == i) order.push_back(i);
  }
  // Tokenized here, outside the lock, for both the memory estimate and the BM25 index.
  std::vector<std::vector<std::string>> terms(order.size());
  std::vector<int64_t> entry_bytes(order.size());
  int64_t new_entry_bytes = 0;
  for (size_t t = 0; t < order.size(); ++t) {
    terms[t] = index::LexicalTerms(docs[order[t]].text);
    entry_bytes[t] = EntryBytes(docs[order[t]].id, metas[order[t]]);
    new_entry_bytes += entry_bytes[t];  // each < 2^40 (message bytes x a small factor)
  }

  MutexLock w(write_mu_);
  if (dropped_) return NotFound(StrCat("collection '", spec_.name, "' was dropped"));
  std::shared_ptr<VectorIndex> idx;
  {
    ReaderMutexLock st(state_mu_);
    idx = index_;
  }
  // Admission: what the vector index, the BM25 index and the maps grow by at most (a replaced
  // document's old entries are given back only after the write).
  const auto n_new = static_cast<int64_t>(order.size());
  const int64_t grow =
      SaturatingAdd(SaturatingAdd(new_entry_bytes, idx->memory_bytes_to_add(n_new)),
                    bm25_->AddBytes(n_new, terms.data()));
  RS_RETURN_IF_ERROR(store_->ReserveMemory(
      grow, StrCat("upsert of ", n_new, " documents into '", spec_.name, "'")));
  // Until the write is applied and counted (RecountMemory), its growth stays reserved.
  struct Reservation {
    Collection* c;
    int64_t bytes;
    ~Reservation() {
      c->RecountMemory();
      c->store_->ReleaseMemory(bytes);
    }
  } reservation{this, grow};
  rocksdb::WriteBatch batch;
  std::vector<int64_t> labels, old_labels;
  std::vector<float> x;
  uint64_t seq = next_seq_;
  for (size_t i : order) {
    const Document& d = docs[i];
    const uint64_t label = seq++;
    batch.Put(Key('D', cid_, d.id), EncodeDoc(label, d, metas[i].dump()));
    auto it = label_of_.find(d.id);
    if (it != label_of_.end()) {
      old_labels.push_back(it->second);
      batch.Put(Key('T', cid_, Be64(seq++)), Be64(static_cast<uint64_t>(it->second)));
    }
    labels.push_back(static_cast<int64_t>(label));
    x.insert(x.end(), d.vector.begin(), d.vector.end());
  }
  batch.Put(Key('N', cid_), Be64(seq));
  RS_RETURN_IF_ERROR(store_->WriteSync(&batch, "upsert: write"));
  next_seq_ = seq;
  Status ist = idx->add(static_cast<int64_t>(labels.size()), x.data(), labels.data());
  {
    WriterMutexLock st(state_mu_);
    for (int64_t ol : old_labels) {
      auto it = by_label_.find(ol);
      if (it == by_label_.end()) continue;
      entry_bytes_ -= it->second.bytes;
      by_label_.erase(it);
    }
    for (size_t t = 0; t < order.size(); ++t) {
      Document& d = docs[order[t]];
      label_of_[d.id] = labels[t];
      by_label_[labels[t]] = Entry{d.id, std::move(metas[order[t]]), entry_bytes[t]};
    }
    entry_bytes_ += new_entry_bytes;
  }
  if (!old_labels.empty()) {
    auto r = idx->remove(static_cast<int64_t>(old_labels.size()), old_labels.data());
    if (!r.ok() && ist.ok()) ist = r.status();
    bm25_->Remove(static_cast<int64_t>(old_labels.size()), old_labels.data());
  }
  bm25_->AddTerms(static_cast<int64_t>(labels.size()), labels.data(), terms.data());
  if (!ist.ok()) {
    // The documents are durable; the derived index is repaired by rebuilding it.
    RS_LOG(error, "collection {}: index update failed ({}); rebuilding", spec_.name,
           ist.ToString());
    std::shared_ptr<VectorIndex> rebuilt;
    RS_RETURN_IF_ERROR(RebuildFromDbLocked(ispec_, &rebuilt));
    WriterMutexLock st(state_mu_);
    index_ = std::move(rebuilt);
  }
  RS_RETURN_IF_ERROR(MaybeTrainIvfLocked());
  return static_cast<int64_t>(order.size());
}

std::vector<std::string> Collection::IdsOfDocuments(
    const std::vector<std::string>& document_ids) const {
  std::vector<std::string> out;
  if (document_ids.empty()) return out;
  const std::set<std::string> want(document_ids.begin(), document_ids.end());
  ReaderMutexLock st(state_mu_);
  for (const auto& [label, e] : by_label_) {
    auto it = e.metadata.find(kDocIdKey);
    if (it != e.metadata.end() && it->is_string() && want.count(it->get<std::string>())) {
      out.push_back(e.doc_id);
    }
  }
  return out;
}

StatusOr<int64_t> Collection::Delete(const std::vector<std::string>& ids,
                                     const std::vector<std::string>& document_ids) {
  RS_CHECK_ARG(!ids.empty() || !document_ids.empty(), "delete from '", spec_.name,
               "': empty id list");
  MutexLock w(write_mu_);
  if (dropped_) return NotFound(StrCat("collection '", spec_.name, "' was dropped"));
  std::vector<std::string> all = ids;
  for (auto& id : IdsOfDocuments(document_ids)) all.push_back(std::move(id));
  rocksdb::WriteBatch batch;
  std::vector<int64_t> gone;
  std::unordered_set<std::string> gone_ids;
  std::vector<std::string> gone_order;
  uint64_t seq = next_seq_;
  for (const auto& id : all) {
    auto it = label_of_.find(id);
    if (it == label_of_.end()) continue;
    if (!gone_ids.insert(id).second) continue;
    batch.Delete(Key('D', cid_, id));
    batch.Put(Key('T', cid_, Be64(seq++)), Be64(static_cast<uint64_t>(it->second)));
    gone.push_back(it->second);
    gone_order.push_back(id);
  }
  if (gone.empty()) return int64_t{0};
  batch.Put(Key('N', cid_), Be64(seq));
  RS_RETURN_IF_ERROR(store_->WriteSync(&batch, "delete: write"));
  next_seq_ = seq;
  std::shared_ptr<VectorIndex> idx;
  {
    WriterMutexLock st(state_mu_);
    for (size_t i = 0; i < gone.size(); ++i) {
      if (auto it = by_label_.find(gone[i]); it != by_label_.end()) {
        entry_bytes_ -= it->second.bytes;
        by_label_.erase(it);
      }
      label_of_.erase(gone_order[i]);
    }
    idx = index_;
  }
  bm25_->Remove(static_cast<int64_t>(gone.size()), gone.data());
  Status removed = idx->remove(static_cast<int64_t>(gone.size()), gone.data()).status();
  RecountMemory();
  RS_RETURN_IF_ERROR(removed);
  return static_cast<int64_t>(gone.size());
}

Status Collection::EmbedQueries(const std::vector<Query>& queries, std::vector<float>* out) const {
  const int d = spec_.dim;
  RS_RETURN_IF_ERROR(CheckEmbedBatch(queries.size(), "search"));
  out->assign(queries.size() * d, 0.0f);
  std::vector<std::string> texts;
  std::vector<size_t> pos;
  for (size_t i = 0; i < queries.size(); ++i) {
    const Query& q = queries[i];
    if (q.vector.empty()) {
      RS_CHECK_ARG(!q.text.empty(), "query ", i, ": needs a vector or a text");
      texts.push_back(q.text);
      pos.push_back(i);
      continue;
    }
    RS_CHECK_ARG(static_cast<int>(q.vector.size()) == d, "query ", i, ": vector has dimension ",
                 q.vector.size(), ", collection '", spec_.name, "' has ", d);
    for (int j = 0; j < d; ++j) {
      RS_CHECK_ARG(std::isfinite(q.vector[j]), "query ", i, ": vector component ", j,
                   " is not finite (", q.vector[j], ")");
    }
    std::copy(q.vector.begin(), q.vector.end(), out->begin() + i * d);
  }
  if (!texts.empty()) {
    std::vector<float> e(texts.size() * d);
    RS_RETURN_IF_ERROR(embedder_->Embed(texts, e.data()));
    for (size_t t = 0; t < pos.size(); ++t) {
      const float* v = e.data() + t * d;
      // A text without words embeds to zeros, which scores every document alike.
      RS_CHECK_ARG(std::any_of(v, v + d, [](float x) { return x != 0; }), "query ", pos[t],
                   ": text '", texts[t].substr(0, 64), texts[t].size() > 64 ? "..." : "",
                   "' has no words to search for (only spaces or punctuation)");
      std::copy(v, v + d, out->begin() + pos[t] * d);
    }
  }
  return OkStatus();
}

struct Collection::Plan {
  const std::vector<Query>* queries = nullptr;
  std::string mode;  // dense | bm25 | hybrid
  FusionSpec fusion;
  int k = 0;
  int depth = 0;              // hits each retriever returns (k unless fused)
  std::vector<float> q;       // dense: one vector per query (empty in bm25 mode)
  std::vector<char> lexical;  // per query: searched in the BM25 index
  index::SearchParams sp;     // ef_search, nprobe, filter
};

namespace {

Status CheckSearchOptions(const std::string& name, size_t queries, const SearchOptions& o) {
  RS_CHECK_ARG(queries >= 1 && queries <= 1024, "search '", name,
               "': batch must hold 1..1024 queries, got ", queries);
  RS_CHECK_ARG(o.k >= 1 && o.k <= kMaxK, "search '", name, "': k must be in [1, ", kMaxK, "], got ",
               o.k);
  RS_CHECK_ARG(o.ef_search >= 0 && o.ef_search <= kMaxEfSearch, "search: ef_search must be in [0, ",
               kMaxEfSearch, "], got ", o.ef_search);
  RS_CHECK_ARG(o.nprobe >= 0 && o.nprobe <= kMaxNprobe, "search: nprobe must be in [0, ",
               kMaxNprobe, "], got ", o.nprobe);
  RS_CHECK_ARG(static_cast<int64_t>(queries) * o.k <= kMaxResultsPerSearch, "search '", name,
               "': queries x k = ", queries, " x ", o.k, " exceeds ", kMaxResultsPerSearch,
               " results per call");
  RS_CHECK_ARG(o.retrieval.empty() || o.retrieval == "dense" || o.retrieval == "bm25" ||
                   o.retrieval == "hybrid",
               "search: retrieval must be dense, bm25 or hybrid, got '", o.retrieval, "'");
  if (o.fusion) RS_RETURN_IF_ERROR(ValidateFusion(*o.fusion));
  return OkStatus();
}

// Which queries go to the BM25 index: all of them in bm25 mode (each needs words), those with a
// text in hybrid mode (a vector-only query is dense only).
Status PlanLexical(const std::vector<Query>& queries, const std::string& mode,
                   std::vector<char>* lexical) {
  lexical->assign(queries.size(), 0);
  if (mode == "dense") return OkStatus();
  for (size_t i = 0; i < queries.size(); ++i) {
    const Query& q = queries[i];
    if (mode == "bm25") {
      RS_CHECK_ARG(!q.text.empty(), "query ", i, ": bm25 retrieval needs a query text");
      RS_CHECK_ARG(!index::LexicalTerms(q.text).empty(), "query ", i, ": text '",
                   q.text.substr(0, 64), q.text.size() > 64 ? "..." : "",
                   "' has no words to search for (only spaces or punctuation)");
    }
    (*lexical)[i] = !q.text.empty();
  }
  return OkStatus();
}

}  // namespace

Status Collection::SearchDenseLocked(const Plan& plan, std::vector<Ranked>* out) const {
  const auto n = static_cast<int64_t>(plan.queries->size());
  out->assign(n, {});
  if (plan.mode == "bm25") return OkStatus();
  const int k = plan.depth;
  std::vector<float> dist(n * k);
  std::vector<int64_t> labels(n * k);
  RS_RETURN_IF_ERROR(index_->search(n, plan.q.data(), k, dist.data(), labels.data(), plan.sp));
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < k && labels[i * k + j] >= 0; ++j) {
      (*out)[i].emplace_back(labels[i * k + j], dist[i * k + j]);
    }
  }
  return OkStatus();
}

Status Collection::SearchLexicalLocked(const Plan& plan, std::vector<Ranked>* out) const {
  const size_t n = plan.queries->size();
  out->assign(n, {});
  const int k = plan.depth;
  std::vector<float> scores(k);
  std::vector<int64_t> labels(k);
  for (size_t i = 0; i < n; ++i) {
    if (!plan.lexical[i]) continue;
    RS_RETURN_IF_ERROR(bm25_->Search(1, &(*plan.queries)[i].text, k, scores.data(), labels.data(),
                                     plan.sp.filter));
    for (int j = 0; j < k && labels[j] >= 0; ++j) (*out)[i].emplace_back(labels[j], scores[j]);
  }
  return OkStatus();
}

std::vector<Hit> Collection::HitsLocked(const Ranked& ranked, bool include_text) const {
  std::vector<Hit> hits;
  for (const auto& [label, score] : ranked) {
    auto it = by_label_.find(label);
    if (it == by_label_.end()) continue;  // replaced or deleted while the search ran
    const nlohmann::json& meta = it->second.metadata;
    Hit h;
    h.id = it->second.doc_id;
    h.score = score;
    auto doc = meta.find(kDocIdKey);
    h.document_id = doc != meta.end() && doc->is_string() ? doc->get<std::string>() : h.id;
    auto chunk = meta.find(kChunkKey);
    if (chunk != meta.end() && chunk->is_number_integer()) h.chunk_index = chunk->get<int32_t>();
    auto off = meta.find(kOffsetKey);
    if (off != meta.end() && off->is_number_integer()) h.offset = off->get<int64_t>();
    if (include_text) h.metadata_json = meta.dump();
    hits.push_back(std::move(h));
  }
  return hits;
}

StatusOr<std::vector<std::vector<Hit>>> Collection::Search(const std::vector<Query>& queries,
                                                           const SearchOptions& options) const {
  RS_RETURN_IF_ERROR(CheckSearchOptions(spec_.name, queries.size(), options));
  RS_ASSIGN_OR_RETURN(const MetadataFilter mf, MetadataFilter::Compile(options));
  Plan plan;
  plan.queries = &queries;
  plan.mode = options.retrieval.empty() ? spec_.retrieval : options.retrieval;
  plan.fusion = options.fusion ? *options.fusion : spec_.fusion;
  plan.k = options.k;
  plan.depth = plan.mode == "hybrid" ? FusionDepth(options.k) : options.k;
  RS_RETURN_IF_ERROR(PlanLexical(queries, plan.mode, &plan.lexical));
  if (plan.mode != "bm25") RS_RETURN_IF_ERROR(EmbedQueries(queries, &plan.q));
  plan.sp.ef_search = options.ef_search;
  plan.sp.nprobe = options.nprobe;
  std::vector<std::vector<Hit>> out(queries.size());
  {
    ReaderMutexLock st(state_mu_);
    std::function<bool(int64_t)> filter = [&](int64_t label) ABSL_NO_THREAD_SAFETY_ANALYSIS {
      auto it = by_label_.find(label);  // runs inside the searches below, under state_mu_
      return it != by_label_.end() && mf.Matches(it->second.metadata);
    };
    // Without a filter, labels that are not (or no longer) mapped are dropped by HitsLocked.
    if (!mf.empty()) plan.sp.filter = &filter;
    std::vector<Ranked> dense, lexical;
    RS_RETURN_IF_ERROR(SearchDenseLocked(plan, &dense));
    RS_RETURN_IF_ERROR(SearchLexicalLocked(plan, &lexical));
    const bool larger_better = index::HigherIsBetter(spec_.metric);
    for (size_t i = 0; i < queries.size(); ++i) {
      Ranked r;
      if (plan.mode == "dense" || !plan.lexical[i]) {  // a vector-only query is dense only
        r = std::move(dense[i]);
        if (r.size() > static_cast<size_t>(plan.k)) r.resize(plan.k);
      } else if (plan.mode == "bm25") {
        r = std::move(lexical[i]);
      } else {
        r = Fuse(dense[i], lexical[i], larger_better, plan.fusion, plan.k);
      }
      out[i] = HitsLocked(r, options.include_text);
    }
  }
  if (options.include_text) RS_RETURN_IF_ERROR(FillTexts(&out));
  return out;
}

namespace {

// Wire bytes of a hit or document besides its strings (tags, lengths, score, offsets).
constexpr int64_t kPerResultOverhead = 32;

Status AnswerTooLarge(std::string_view what, const std::string& name, int64_t limit) {
  return ResourceExhausted(StrCat(what, " '", name, "': the answer passes ", limit,
                                  " bytes (the message limit); ask for fewer results",
                                  what == "search" ? " or without texts" : ""));
}

}  // namespace

Status Collection::FillTexts(std::vector<std::vector<Hit>>* results) const {
  const int64_t limit = store_->limits().max_response_bytes;
  int64_t bytes = 0;
  for (const auto& hits : *results) {
    for (const Hit& h : hits) {
      bytes += kPerResultOverhead +
               static_cast<int64_t>(h.id.size() + h.document_id.size() + h.metadata_json.size());
    }
  }
  if (bytes > limit) return AnswerTooLarge("search", spec_.name, limit);
  CollectionStore::DbRef db(*store_);
  for (auto& hits : *results) {
    for (Hit& h : hits) {
      std::string v;
      DocRecord r;
      if (db->Get(rocksdb::ReadOptions(), Key('D', cid_, h.id), &v).ok() && DecodeDoc(v, &r).ok()) {
        bytes += static_cast<int64_t>(r.text.size());
        if (bytes > limit) return AnswerTooLarge("search", spec_.name, limit);
        h.text = std::move(r.text);
      }
    }
  }
  return OkStatus();
}

Status Collection::Get(const std::vector<std::string>& ids, std::vector<Document>* found,
                       std::vector<std::string>* missing) const {
  found->clear();
  missing->clear();
  const int64_t limit = store_->limits().max_response_bytes;
  int64_t bytes = 0;
  CollectionStore::DbRef db(*store_);
  for (const auto& id : ids) {
    bytes += kPerResultOverhead + static_cast<int64_t>(id.size());
    if (bytes > limit) return AnswerTooLarge("get", spec_.name, limit);
    std::string v;
    auto s = db->Get(rocksdb::ReadOptions(), Key('D', cid_, id), &v);
    if (s.IsNotFound()) {
      missing->push_back(id);
      continue;
    }
    RS_RETURN_IF_ERROR(FromRocks(s, "get"));
    DocRecord r;
    RS_RETURN_IF_ERROR(DecodeDoc(v, &r));
    bytes += static_cast<int64_t>(r.text.size() + r.metadata_json.size() +
                                  r.vector.size() * sizeof(float));
    if (bytes > limit) return AnswerTooLarge("get", spec_.name, limit);
    found->push_back(
        Document{id, std::move(r.text), std::move(r.metadata_json), std::move(r.vector)});
  }
  return OkStatus();
}

CollectionInfo Collection::Info() const {
  CollectionInfo info;
  std::shared_ptr<VectorIndex> idx;
  {
    ReaderMutexLock st(state_mu_);
    info.spec = spec_;
    info.num_documents = static_cast<int64_t>(by_label_.size());
    idx = index_;
  }
  info.num_vectors = idx->size();
  info.index_bytes = idx->memory_bytes();
  info.active_kind = std::string(idx->kind());
  info.rebuilding = rebuilding_.load();
  info.lexical_documents = bm25_->size();
  info.lexical_bytes = bm25_->memory_bytes();
  info.memory_bytes = MemoryBytes();
  const std::string lo = Key('D', cid_), hi = Key('D', cid_ + 1);
  rocksdb::Range r(lo, hi);
  uint64_t bytes = 0;
  {
    CollectionStore::DbRef db(*store_);
    db->GetApproximateSizes(rocksdb::SizeApproximationOptions{.include_memtables = true},
                            db->DefaultColumnFamily(), &r, 1, &bytes);
  }
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(store_->IndexDir(), ec)) {
    if (e.path().filename().string().starts_with(std::to_string(cid_) + "-")) {
      bytes += e.file_size(ec);
    }
  }
  info.disk_bytes = static_cast<int64_t>(bytes);
  return info;
}

Status Collection::Rebuild(const std::string& kind, const std::string& params_json) {
  index::IndexSpec ns;
  {
    MutexLock w(write_mu_);
    RS_ASSIGN_OR_RETURN(ns, index::MakeIndexSpec(kind.empty() ? ispec_.kind : kind, spec_.metric,
                                                 spec_.dim, params_json));
  }
  MutexLock w(write_mu_);
  if (dropped_) return NotFound(StrCat("collection '", spec_.name, "' was dropped"));
  rebuilding_ = true;
  std::shared_ptr<VectorIndex> built;
  Status s = RebuildFromDbLocked(ns, &built);
  if (!s.ok()) {
    rebuilding_ = false;
    return s;
  }
  CollectionSpec nspec = spec_;
  nspec.index_kind = ns.kind;
  nspec.params_json = index::IndexParamsJson(ns);
  rocksdb::WriteBatch spec_batch;
  spec_batch.Put("C" + nspec.name, SpecJson(cid_, nspec));
  s = store_->WriteSync(&spec_batch, "rebuild: write spec");
  if (s.ok()) {
    WriterMutexLock st(state_mu_);
    index_ = std::move(built);
    spec_ = nspec;
    ispec_ = ns;
  }
  RecountMemory();
  rebuilding_ = false;
  return s;
}

Status Collection::Checkpoint() {
  MutexLock w(write_mu_);
  if (dropped_) return OkStatus();
  const std::string file = StrCat(cid_, "-", next_seq_, ".idx");
  const std::string bm25_file = StrCat(cid_, "-", next_seq_, ".bm25");
  const std::string dir = store_->IndexDir() + "/";
  CheckpointRecord old;
  {
    CollectionStore::DbRef db(*store_);
    old = ReadCheckpointRecord(db.get(), Key('I', cid_), spec_.name);
  }
  std::error_code ec;
  if (old.file == file && old.bm25_file == bm25_file && fs::exists(dir + file, ec) &&
      fs::exists(dir + bm25_file, ec)) {
    return OkStatus();  // nothing new
  }
  std::shared_ptr<VectorIndex> idx;
  {
    ReaderMutexLock st(state_mu_);
    idx = index_;
  }
  RS_RETURN_IF_ERROR(idx->save(dir + file));
  RS_RETURN_IF_ERROR(bm25_->Save(dir + bm25_file));
  rocksdb::WriteBatch batch;
  batch.Put(Key('I', cid_),
            nlohmann::json{{"seq", next_seq_}, {"file", file}, {"bm25", bm25_file}}.dump());
  batch.DeleteRange(Key('T', cid_), Key('T', cid_ + 1));  // every tombstone is older than seq
  RS_RETURN_IF_ERROR(store_->WriteSync(&batch, "checkpoint: write"));
  if (!old.file.empty() && old.file != file) fs::remove(dir + old.file, ec);
  if (!old.bm25_file.empty() && old.bm25_file != bm25_file) fs::remove(dir + old.bm25_file, ec);
  return OkStatus();
}

// ---- CollectionStore --------------------------------------------------------------------------

StatusOr<std::unique_ptr<CollectionStore>> CollectionStore::Open(const std::string& data_dir,
                                                                 StoreLimits limits,
                                                                 rocksdb::Env* env) {
  RS_CHECK_ARG(!data_dir.empty(), "index store: empty data dir");
  RS_CHECK_ARG(limits.max_docs_per_upsert >= 1,
               "index store: max documents per upsert must be >= 1");
  RS_CHECK_ARG(limits.max_embed_batch_bytes >= 1,
               "index store: embedding batch limit must be >= 1");
  RS_CHECK_ARG(limits.max_memory_bytes >= 1, "index store: memory limit must be >= 1 byte, got ",
               limits.max_memory_bytes);
  std::error_code ec;
  fs::create_directories(data_dir + "/indexes", ec);
  if (ec) return Internal(StrCat("index store: cannot create ", data_dir, ": ", ec.message()));
  auto store = std::unique_ptr<CollectionStore>(new CollectionStore(data_dir, limits));
  store->db_options_ = std::make_unique<rocksdb::Options>();
  rocksdb::Options& opts = *store->db_options_;
  opts.create_if_missing = true;
  opts.env = env != nullptr ? env : rocksdb::Env::Default();
  opts.info_log = std::make_shared<RocksInfoLog>("index store");
  rocksdb::DB* db = nullptr;
  RS_RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(opts, data_dir + "/db", &db),
                               StrCat("index store: opening ", data_dir, "/db")));
  store->db_.reset(db);
  std::string v;
  if (db->Get(rocksdb::ReadOptions(), "G", &v).ok() && v.size() == 8) {
    store->next_cid_ = static_cast<uint32_t>(ReadBe64(v));
  }
  std::vector<std::pair<uint32_t, CollectionSpec>> specs;
  RS_RETURN_IF_ERROR(ScanPrefix(db, "C", [&](std::string_view, std::string_view val) {
    auto j = nlohmann::json::parse(val, nullptr, false);
    try {
      CollectionSpec s;
      s.name = j.at("name").get<std::string>();
      s.dim = j.at("dim").get<int>();
      RS_ASSIGN_OR_RETURN(s.metric, index::ParseMetric(j.at("metric").get<std::string>()));
      s.index_kind = j.at("kind").get<std::string>();
      s.params_json = j.at("params").get<std::string>();
      s.embedder = j.at("embedder").get<std::string>();
      ParseRetrievalJson(j, &s);
      specs.emplace_back(j.at("cid").get<uint32_t>(), std::move(s));
    } catch (const std::exception& e) {
      return DataLoss(StrCat("index store: corrupt collection record: ", e.what()));
    }
    return OkStatus();
  }));
  for (auto& [cid, spec] : specs) {
    RS_ASSIGN_OR_RETURN(
        auto ispec, index::MakeIndexSpec(spec.index_kind, spec.metric, spec.dim, spec.params_json));
    RS_ASSIGN_OR_RETURN(auto emb, MakeEmbedder(spec.embedder, spec.dim));
    auto c = std::shared_ptr<Collection>(
        new Collection(store.get(), cid, spec, std::move(ispec), std::move(emb)));
    RS_RETURN_IF_ERROR(Annotate(c->Open(), StrCat("opening collection ", spec.name)));
    store->collections_[spec.name] = std::move(c);
  }
  return store;
}

int64_t CollectionStore::MemoryBytes() const {
  int64_t total = 0;
  for (const auto& c : List()) total = SaturatingAdd(total, c->MemoryBytes());
  return total;
}

int64_t CollectionStore::DbMemoryBytes() const {
  DbRef db(*this);
  uint64_t total = 0;
  for (const char* p : {"rocksdb.cur-size-all-mem-tables", "rocksdb.block-cache-usage",
                        "rocksdb.estimate-table-readers-mem"}) {
    uint64_t v = 0;
    if (db->GetIntProperty(p, &v)) total += v;
  }
  return static_cast<int64_t>(std::min<uint64_t>(total, INT64_MAX));
}

Status CollectionStore::ReserveMemory(int64_t bytes, std::string_view what) {
  MutexLock l(memory_mu_);
  const int64_t held = MemoryBytes();
  const int64_t limit = limits_.max_memory_bytes;
  int64_t after = 0;
  if (__builtin_add_overflow(held, reserved_bytes_, &after) ||
      __builtin_add_overflow(after, bytes, &after) || after > limit) {
    constexpr int64_t kMiB = int64_t{1} << 20;
    return ResourceExhausted(StrCat(
        what, ": it needs up to ", bytes, " bytes more of memory, and the collections hold ", held,
        " bytes (", held / kMiB, " MiB) with ", reserved_bytes_,
        " more admitted for writes in progress: that passes the index's memory limit of ", limit,
        " bytes (--memory-limit-mb=", limit / kMiB,
        "). Nothing of it was written; delete documents or drop collections (deleted vectors of "
        "an HNSW collection are freed by a Rebuild), or raise --memory-limit-mb"));
  }
  reserved_bytes_ += bytes;
  return OkStatus();
}

void CollectionStore::ReleaseMemory(int64_t bytes) {
  MutexLock l(memory_mu_);
  reserved_bytes_ -= bytes;
}

Status CollectionStore::WriteSync(rocksdb::WriteBatch* batch, std::string_view what) {
  RS_RETURN_IF_ERROR(Annotate(ReopenAfterWriteError(), what));
  rocksdb::Status s;
  {
    DbRef db(*this);
    s = db->Write(SyncWrite(), batch);
  }
  // A failed WAL write (full disk: NoSpace is an IOError) stops RocksDB's writes until it is
  // resumed; the next write reopens it once there is room (ReopenAfterWriteError).
  if (s.IsIOError()) needs_reopen_ = true;
  return FromRocks(s, what);  // a full disk is ResourceExhausted
}

Status CollectionStore::ReopenAfterWriteError() {
  if (!needs_reopen_) return OkStatus();
  WriterMutexLock<index::internal::RwMutex> lock(db_mu_);
  if (!needs_reopen_) return OkStatus();  // another writer reopened it meanwhile
  // Every DbRef is released (db_mu_ is held exclusively), so no call sees the closed DB.
  const std::string db_dir = dir_ + "/db";
  RS_RETURN_IF_ERROR(ReopenAfterFailedWrite(*db_options_, db_dir,
                                            WalBytes(db_dir) + kReopenMarginBytes, "index store",
                                            &FromRocks, &last_reopen_ms_, &db_));
  needs_reopen_ = false;
  return OkStatus();
}

CollectionStore::CollectionStore(std::string dir, StoreLimits limits)
    : dir_(std::move(dir)), limits_(limits) {}

CollectionStore::~CollectionStore() {
  Status s = CheckpointAll();
  if (!s.ok()) RS_LOG(warn, "index store: checkpoint at close failed: {}", s.ToString());
  collections_.clear();
  WriterMutexLock<index::internal::RwMutex> lock(db_mu_);
  db_.reset();
}

Status CollectionStore::CheckpointAll() {
  Status first;
  for (const auto& c : List()) {
    Status s = c->Checkpoint();
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

StatusOr<std::shared_ptr<Collection>> CollectionStore::Create(const CollectionSpec& in) {
  RS_RETURN_IF_ERROR(ValidateCollectionName(in.name));
  CollectionSpec spec = in;
  if (spec.index_kind.empty()) spec.index_kind = "hnsw";
  if (spec.embedder.empty()) spec.embedder = "hashing";
  if (spec.retrieval.empty()) spec.retrieval = "hybrid";
  RS_RETURN_IF_ERROR(ValidateRetrieval(spec));
  RS_ASSIGN_OR_RETURN(
      auto ispec, index::MakeIndexSpec(spec.index_kind, spec.metric, spec.dim, spec.params_json));
  spec.params_json = index::IndexParamsJson(ispec);
  RS_ASSIGN_OR_RETURN(auto emb, MakeEmbedder(spec.embedder, spec.dim));
  MutexLock g(mu_);
  if (collections_.count(spec.name)) {
    return AlreadyExists(StrCat("collection '", spec.name, "' already exists"));
  }
  if (dropping_.count(spec.name)) {
    return FailedPrecondition(
        StrCat("collection '", spec.name, "' is being dropped; create it again once that is done"));
  }
  const uint32_t cid = next_cid_;
  rocksdb::WriteBatch batch;
  batch.Put("C" + spec.name, SpecJson(cid, spec));
  batch.Put("G", Be64(cid + 1));
  RS_RETURN_IF_ERROR(WriteSync(&batch, "create collection: write"));
  next_cid_ = cid + 1;
  auto c = std::shared_ptr<Collection>(
      new Collection(this, cid, spec, std::move(ispec), std::move(emb)));
  RS_RETURN_IF_ERROR(c->Open());
  collections_[spec.name] = c;
  return c;
}

Status CollectionStore::Drop(const std::string& name) {
  // The collection leaves the map at once (Get/List stop seeing it) but its data is deleted
  // outside mu_: waiting for its write_mu_ (a long Rebuild) must not block other collections.
  std::shared_ptr<Collection> c;
  {
    MutexLock g(mu_);
    auto it = collections_.find(name);
    if (it == collections_.end()) return NotFound(StrCat("collection '", name, "' does not exist"));
    c = std::move(it->second);
    collections_.erase(it);
    dropping_.insert(name);
  }
  Status s = DeleteCollectionData(name, c.get());
  MutexLock g(mu_);
  dropping_.erase(name);
  if (!s.ok()) collections_[name] = std::move(c);  // nothing was deleted: it is still there
  return s;
}

Status CollectionStore::DeleteCollectionData(const std::string& name, Collection* c) {
  MutexLock w(c->write_mu_);
  const uint32_t cid = c->cid_;
  rocksdb::WriteBatch batch;
  batch.Delete("C" + name);
  for (char tag : {'D', 'T'}) batch.DeleteRange(Key(tag, cid), Key(tag, cid + 1));
  batch.Delete(Key('N', cid));
  batch.Delete(Key('I', cid));
  RS_RETURN_IF_ERROR(WriteSync(&batch, "drop collection: write"));
  c->dropped_ = true;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(IndexDir(), ec)) {
    if (e.path().filename().string().starts_with(std::to_string(cid) + "-")) {
      fs::remove(e.path(), ec);
    }
  }
  return OkStatus();
}

StatusOr<std::shared_ptr<Collection>> CollectionStore::Get(const std::string& name) const {
  MutexLock g(mu_);
  auto it = collections_.find(name);
  if (it == collections_.end()) return NotFound(StrCat("collection '", name, "' does not exist"));
  return it->second;
}

std::vector<std::shared_ptr<Collection>> CollectionStore::List() const {
  MutexLock g(mu_);
  std::vector<std::shared_ptr<Collection>> out;
  for (const auto& [name, c] : collections_) out.push_back(c);
  return out;
}

Status Collection::EmbedTexts(const std::vector<std::string>& texts,
                              std::vector<float>* out) const {
  RS_RETURN_IF_ERROR(CheckEmbedBatch(texts.size(), "embed"));
  out->assign(texts.size() * static_cast<size_t>(spec_.dim), 0.0f);
  if (texts.empty()) return OkStatus();
  return embedder_->Embed(texts, out->data());
}

}  // namespace ragserve::collection
