#include "index/bm25.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "index/internal/index_file.h"
#include "index/text_tokenizer.h"

namespace ragserve::index {

using internal::Put;
using internal::Reader;

namespace {
constexpr uint32_t kPayloadVersion = 1;
// memory_bytes() per vocabulary term besides its text (held twice: term_text_ and the key of
// term_ids_) and its elements of term_text_, df_ and postings_ (counted by capacity): term_ids_'s
// node (next, key string, id, hash; malloc-rounded) and bucket.
constexpr int64_t kTermMapBytes = 64 + 8;
// Per label: slot_of_'s node (next + key + slot, malloc-rounded) and bucket.
constexpr int64_t kLabelBytes = 32 + 8;

// At most how many elements an array of capacity `cap` holding `size` allocates beyond `cap`
// to hold `add` more: std::vector's growth (doubling per push_back, max(2 * cap, size + add) per
// resize) ends below 2 * (size + add).
int64_t GrowthElements(int64_t size, int64_t cap, int64_t add) {
  if (size + add <= cap) return 0;
  return 2 * (size + add) - cap;
}
}  // namespace

Status ValidateBm25Params(const Bm25Params& p) {
  RS_CHECK_ARG(std::isfinite(p.k1) && p.k1 >= 0 && p.k1 <= 100,
               "bm25: k1 must be in [0, 100], got ", p.k1);
  RS_CHECK_ARG(std::isfinite(p.b) && p.b >= 0 && p.b <= 1, "bm25: b must be in [0, 1], got ", p.b);
  return OkStatus();
}

StatusOr<std::unique_ptr<Bm25Index>> Bm25Index::Create(Bm25Params params) {
  RS_RETURN_IF_ERROR(ValidateBm25Params(params));
  return std::unique_ptr<Bm25Index>(new Bm25Index(params));
}

uint32_t Bm25Index::TermId(const std::string& term) {
  auto [it, inserted] = term_ids_.emplace(term, static_cast<uint32_t>(term_text_.size()));
  if (inserted) {
    term_text_.push_back(term);
    df_.push_back(0);
    postings_.emplace_back();
    term_bytes_ += static_cast<int64_t>(term.size());
  }
  return it->second;
}

void Bm25Index::RemoveSlotLocked(uint32_t slot) {
  Slot& s = slots_[slot];
  for (uint32_t t : s.terms) --df_[t];
  slot_terms_ -= static_cast<int64_t>(s.terms.capacity());
  total_length_ -= s.length;
  slot_of_.erase(s.label);
  s.label = -1;
  s.terms = {};
  ++dead_slots_;
}

void Bm25Index::AddLocked(int64_t label, const std::vector<std::string>& terms) {
  if (auto it = slot_of_.find(label); it != slot_of_.end()) RemoveSlotLocked(it->second);
  if (terms.empty()) return;  // a document without terms can never match: not indexed
  std::unordered_map<uint32_t, uint32_t> tf;
  for (const std::string& t : terms) ++tf[TermId(t)];
  const auto slot = static_cast<uint32_t>(slots_.size());
  Slot s;
  s.label = label;
  s.length = static_cast<uint32_t>(terms.size());
  s.terms.reserve(tf.size());
  for (const auto& [term, count] : tf) {
    s.terms.push_back(term);
    ++df_[term];
    std::vector<Posting>& list = postings_[term];
    const size_t cap = list.capacity();
    list.push_back(Posting{slot, count});
    posting_capacity_ += static_cast<int64_t>(list.capacity() - cap);
  }
  slot_terms_ += static_cast<int64_t>(s.terms.capacity());
  total_length_ += s.length;
  slots_.push_back(std::move(s));
  slot_of_[label] = slot;
}

void Bm25Index::MaybeCompactLocked() {
  // Removed slots keep their postings until they outnumber the live documents.
  if (dead_slots_ < 1024 || dead_slots_ < static_cast<int64_t>(slot_of_.size())) return;
  std::vector<uint32_t> renum(slots_.size(), UINT32_MAX);
  std::vector<Slot> live;
  live.reserve(slot_of_.size());
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].label < 0) continue;
    renum[i] = static_cast<uint32_t>(live.size());
    slot_of_[slots_[i].label] = renum[i];
    live.push_back(std::move(slots_[i]));
  }
  for (auto& list : postings_) {
    size_t w = 0;
    for (const Posting& p : list) {
      if (renum[p.slot] != UINT32_MAX) list[w++] = Posting{renum[p.slot], p.tf};
    }
    list.resize(w);
    list.shrink_to_fit();
  }
  slots_ = std::move(live);
  dead_slots_ = 0;
  RecountLocked();
}

void Bm25Index::RecountLocked() {
  posting_capacity_ = slot_terms_ = term_bytes_ = 0;
  for (const auto& list : postings_) posting_capacity_ += static_cast<int64_t>(list.capacity());
  for (const Slot& s : slots_) slot_terms_ += static_cast<int64_t>(s.terms.capacity());
  for (const auto& t : term_text_) term_bytes_ += static_cast<int64_t>(t.size());
}

void Bm25Index::Add(int64_t n, const int64_t* labels, const std::string_view* texts) {
  // Tokenize outside the lock: it is most of the work.
  std::vector<std::vector<std::string>> terms(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) terms[i] = LexicalTerms(texts[i]);
  AddTerms(n, labels, terms.data());
}

void Bm25Index::AddTerms(int64_t n, const int64_t* labels, const std::vector<std::string>* terms) {
  WriterMutexLock l(mu_);
  for (int64_t i = 0; i < n; ++i) AddLocked(labels[i], terms[i]);
  MaybeCompactLocked();
}

int64_t Bm25Index::AddBytes(int64_t n, const std::vector<std::string>* terms) const {
  // Per distinct term of the batch: the documents holding it (one posting each).
  std::unordered_map<std::string_view, int64_t> docs_with;
  int64_t slots = 0, slot_terms = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (terms[i].empty()) continue;  // not indexed
    ++slots;
    std::unordered_set<std::string_view> distinct(terms[i].begin(), terms[i].end());
    slot_terms += static_cast<int64_t>(distinct.size());
    for (std::string_view t : distinct) ++docs_with[t];
  }
  ReaderMutexLock l(mu_);
  // Every count below is at most the batch's bytes or the index's sizes (< 2^40), so the sums of
  // products of them by small constants stay far from overflowing int64.
  int64_t bytes = slots * kLabelBytes + slot_terms * static_cast<int64_t>(sizeof(uint32_t));
  bytes += GrowthElements(static_cast<int64_t>(slots_.size()),
                          static_cast<int64_t>(slots_.capacity()), slots) *
           static_cast<int64_t>(sizeof(Slot));
  int64_t new_terms = 0;
  for (const auto& [term, count] : docs_with) {
    auto it = term_ids_.find(std::string(term));
    if (it == term_ids_.end()) {
      ++new_terms;
      bytes += kTermMapBytes + 2 * static_cast<int64_t>(term.size()) +
               GrowthElements(0, 0, count) * static_cast<int64_t>(sizeof(Posting));
      continue;
    }
    const auto& list = postings_[it->second];
    bytes += GrowthElements(static_cast<int64_t>(list.size()),
                            static_cast<int64_t>(list.capacity()), count) *
             static_cast<int64_t>(sizeof(Posting));
  }
  const auto vocab = static_cast<int64_t>(term_text_.size());
  bytes += GrowthElements(vocab, static_cast<int64_t>(term_text_.capacity()), new_terms) *
               static_cast<int64_t>(sizeof(std::string)) +
           GrowthElements(vocab, static_cast<int64_t>(df_.capacity()), new_terms) *
               static_cast<int64_t>(sizeof(uint32_t)) +
           GrowthElements(vocab, static_cast<int64_t>(postings_.capacity()), new_terms) *
               static_cast<int64_t>(sizeof(std::vector<Posting>));
  return bytes;
}

int64_t Bm25Index::Remove(int64_t n, const int64_t* labels) {
  WriterMutexLock l(mu_);
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto it = slot_of_.find(labels[i]);
    if (it == slot_of_.end()) continue;
    RemoveSlotLocked(it->second);
    ++removed;
  }
  MaybeCompactLocked();
  return removed;
}

void Bm25Index::SearchOne(const std::string& query, int k,
                          const std::function<bool(int64_t)>* filter, std::vector<double>* acc,
                          float* scores, int64_t* labels) const {
  std::fill(labels, labels + k, -1);
  std::fill(scores, scores + k, 0.0f);
  const double n_docs = static_cast<double>(slot_of_.size());
  if (n_docs == 0) return;
  const double avgdl = static_cast<double>(total_length_) / n_docs;
  const double k1 = params_.k1, b = params_.b;
  std::vector<uint32_t> touched;
  std::unordered_set<uint32_t> seen_terms;
  for (const std::string& term : LexicalTerms(query)) {
    auto it = term_ids_.find(term);
    if (it == term_ids_.end() || !seen_terms.insert(it->second).second) continue;
    const double df = df_[it->second];
    if (df == 0) continue;
    const double idf = std::log(1.0 + (n_docs - df + 0.5) / (df + 0.5));
    for (const Posting& p : postings_[it->second]) {
      const Slot& s = slots_[p.slot];
      if (s.label < 0) continue;
      const double tf = p.tf;
      const double norm = k1 * (1.0 - b + b * static_cast<double>(s.length) / avgdl);
      if ((*acc)[p.slot] == 0) touched.push_back(p.slot);
      (*acc)[p.slot] += idf * tf * (k1 + 1.0) / (tf + norm);
    }
  }
  std::vector<std::pair<double, int64_t>> cand;  // (score, label)
  cand.reserve(touched.size());
  for (uint32_t slot : touched) {
    const double sc = (*acc)[slot];
    (*acc)[slot] = 0;
    const int64_t label = slots_[slot].label;
    if (filter != nullptr && !(*filter)(label)) continue;
    cand.emplace_back(sc, label);
  }
  auto better = [](const auto& x, const auto& y) {
    return x.first != y.first ? x.first > y.first : x.second < y.second;
  };
  const size_t keep = std::min(cand.size(), static_cast<size_t>(k));
  std::partial_sort(cand.begin(), cand.begin() + keep, cand.end(), better);
  for (size_t j = 0; j < keep; ++j) {
    scores[j] = static_cast<float>(cand[j].first);
    labels[j] = cand[j].second;
  }
}

Status Bm25Index::Search(int64_t n, const std::string* queries, int k, float* scores,
                         int64_t* labels, const std::function<bool(int64_t)>* filter) const {
  RS_CHECK_ARG(n >= 0 && k >= 1, "bm25 search: n must be >= 0 and k >= 1, got n ", n, ", k ", k);
  ReaderMutexLock l(mu_);
  // A term matching no document adds 0; a posting's contribution is > 0 unless idf is 0, which
  // cannot happen (idf >= ln(1 + 0.5 / (N + 0.5)) > 0), so acc == 0 means "not touched yet".
  std::vector<double> acc(slots_.size(), 0.0);
  for (int64_t i = 0; i < n; ++i) {
    SearchOne(queries[i], k, filter, &acc, scores + i * k, labels + i * k);
  }
  return OkStatus();
}

int64_t Bm25Index::size() const {
  ReaderMutexLock l(mu_);
  return static_cast<int64_t>(slot_of_.size());
}

int64_t Bm25Index::num_terms() const {
  ReaderMutexLock l(mu_);
  return std::count_if(df_.begin(), df_.end(), [](uint32_t d) { return d > 0; });
}

int64_t Bm25Index::memory_bytes() const {
  ReaderMutexLock l(mu_);
  const auto terms = static_cast<int64_t>(term_text_.size());
  const auto arrays =
      term_text_.capacity() * sizeof(std::string) + df_.capacity() * sizeof(uint32_t) +
      postings_.capacity() * sizeof(std::vector<Posting>) + slots_.capacity() * sizeof(Slot);
  return posting_capacity_ * static_cast<int64_t>(sizeof(Posting)) + static_cast<int64_t>(arrays) +
         slot_terms_ * static_cast<int64_t>(sizeof(uint32_t)) + terms * kTermMapBytes +
         2 * term_bytes_ + static_cast<int64_t>(slot_of_.size()) * kLabelBytes;
}

// Payload: u32 version | f64 k1 | f64 b | u64 documents, each (i64 label, u32 length) |
//          u64 terms, each (u32 bytes, the term, u32 postings, each (i64 label, u32 tf)).
Status Bm25Index::Save(const std::string& path) const {
  std::string payload;
  {
    ReaderMutexLock l(mu_);
    Put<uint32_t>(&payload, kPayloadVersion);
    Put<double>(&payload, params_.k1);
    Put<double>(&payload, params_.b);
    Put<uint64_t>(&payload, slot_of_.size());
    for (const Slot& s : slots_) {
      if (s.label < 0) continue;
      Put<int64_t>(&payload, s.label);
      Put<uint32_t>(&payload, s.length);
    }
    Put<uint64_t>(&payload, term_text_.size());
    for (size_t t = 0; t < term_text_.size(); ++t) {
      Put<uint32_t>(&payload, static_cast<uint32_t>(term_text_[t].size()));
      payload += term_text_[t];
      Put<uint32_t>(&payload, df_[t]);
      for (const Posting& p : postings_[t]) {
        if (slots_[p.slot].label < 0) continue;
        Put<int64_t>(&payload, slots_[p.slot].label);
        Put<uint32_t>(&payload, p.tf);
      }
    }
  }
  internal::FileHeader h;
  h.kind_code = internal::kBm25Code;
  h.dim = 1;  // a lexical index has no dimension; the envelope wants one > 0
  return internal::WriteIndexFile(path, h, payload);
}

StatusOr<std::unique_ptr<Bm25Index>> Bm25Index::Load(const std::string& path) {
  RS_ASSIGN_OR_RETURN(auto f, internal::ReadIndexFileOfKind(path, {internal::kBm25Code}, "a bm25"));
  Reader r(f.payload);
  auto bad = [&path](std::string_view what) {
    return DataLoss(StrCat("bm25 file ", path, ": ", what));
  };
  uint32_t version = 0;
  Bm25Params p;
  uint64_t n_docs = 0;
  if (!r.Get(&version) || version != kPayloadVersion || !r.Get(&p.k1) || !r.Get(&p.b) ||
      !r.Get(&n_docs) || n_docs > r.remaining() / 12) {
    return bad("bad header");
  }
  RS_RETURN_IF_ERROR(ValidateBm25Params(p));
  std::unique_ptr<Bm25Index> idx(new Bm25Index(p));
  WriterMutexLock l(idx->mu_);
  idx->slots_.resize(n_docs);
  for (uint64_t i = 0; i < n_docs; ++i) {
    Slot& s = idx->slots_[i];
    if (!r.Get(&s.label) || !r.Get(&s.length) || s.label < 0) return bad("bad document");
    if (!idx->slot_of_.emplace(s.label, static_cast<uint32_t>(i)).second) {
      return bad("duplicate document");
    }
    idx->total_length_ += s.length;
  }
  uint64_t n_terms = 0;
  if (!r.Get(&n_terms) || n_terms > r.remaining() / 8) return bad("bad term count");
  for (uint64_t t = 0; t < n_terms; ++t) {
    uint32_t len = 0, df = 0;
    const char* text = nullptr;
    if (!r.Get(&len) || (text = r.Skip(len)) == nullptr || !r.Get(&df) || df > r.remaining() / 12) {
      return bad("bad term");
    }
    const uint32_t id = idx->TermId(std::string(text, len));
    if (id != t) return bad("duplicate term");
    idx->postings_[id].reserve(df);  // df <= remaining / 12 (checked above)
    for (uint32_t j = 0; j < df; ++j) {
      int64_t label = 0;
      uint32_t tf = 0;
      r.Get(&label);
      r.Get(&tf);
      auto it = idx->slot_of_.find(label);
      if (it == idx->slot_of_.end() || tf == 0) return bad("posting of an unknown document");
      idx->postings_[id].push_back(Posting{it->second, tf});
      idx->slots_[it->second].terms.push_back(id);
    }
    idx->df_[id] = df;
  }
  if (r.remaining() != 0) return bad("trailing bytes");
  idx->RecountLocked();
  return idx;
}

}  // namespace ragserve::index
