// The only translation unit that includes hnswlib (see internal/hnsw_graph.h).
#include "index/internal/hnsw_graph.h"

#include <hnswlib/hnswlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <unordered_set>

#include "index/internal/index_file.h"
#include "index/internal/index_util.h"
#include "services/common/mutex.h"

namespace ragserve::index::internal {
namespace {

thread_local int64_t t_distances = 0;

struct CountingParam {
  hnswlib::DISTFUNC<float> inner;
  void* inner_param;
  int dim;
};

float CountingDistance(const void* a, const void* b, const void* param) {
  ++t_distances;
  const auto* p = static_cast<const CountingParam*>(param);
  return p->inner(a, b, p->inner_param);
}

// Inner-product distance 1 - a.b (hnswlib's InnerProductSpace), counted, with Dot called directly:
// the key-retrieval searches score thousands of keys per call, and a second indirect call per
// distance made them ~10% slower than before the index families were merged.
float CountingInnerProductDistance(const void* a, const void* b, const void* param) {
  ++t_distances;
  const auto* p = static_cast<const CountingParam*>(param);
  return 1.0f - Dot(static_cast<const float*>(a), static_cast<const float*>(b), p->dim);
}

// A space whose distance function is another space's, counted per thread.
class CountingSpace : public hnswlib::SpaceInterface<float> {
 public:
  CountingSpace(hnswlib::SpaceInterface<float>* inner, HnswGraph::Space kind, int dim)
      : inner_(inner),
        param_{inner->get_dist_func(), inner->get_dist_func_param(), dim},
        func_(kind == HnswGraph::Space::kInnerProduct ? CountingInnerProductDistance
                                                      : CountingDistance) {}
  size_t get_data_size() override { return inner_->get_data_size(); }
  hnswlib::DISTFUNC<float> get_dist_func() override { return func_; }
  void* get_dist_func_param() override { return &param_; }

 private:
  hnswlib::SpaceInterface<float>* inner_;
  CountingParam param_;
  hnswlib::DISTFUNC<float> func_;
};

std::unique_ptr<hnswlib::SpaceInterface<float>> MakeSpace(const HnswGraph::Options& o) {
  if (o.space == HnswGraph::Space::kL2) return std::make_unique<hnswlib::L2Space>(o.dim);
  return std::make_unique<hnswlib::InnerProductSpace>(o.dim);
}

// The fields of hnswlib's fixed header that the validation below needs.
struct HnswlibHeader {
  size_t count = 0, size_data = 0, label_offset = 0, max_m = 0, max_m0 = 0;
  int max_level = 0;
  hnswlib::tableint entry = 0;
};

// Reads hnswlib's fixed header and checks it against the options.
Status ReadHnswlibHeader(Reader* r, const HnswGraph::Options& o, HnswlibHeader* out) {
  using tableint = hnswlib::tableint;
  size_t offset_level0 = 0, max_elements = 0, offset_data = 0, m = 0, ef_construction = 0;
  double mult = 0;
  HnswlibHeader& h = *out;
  if (!r->Get(&offset_level0) || !r->Get(&max_elements) || !r->Get(&h.count) ||
      !r->Get(&h.size_data) || !r->Get(&h.label_offset) || !r->Get(&offset_data) ||
      !r->Get(&h.max_level) || !r->Get(&h.entry) || !r->Get(&h.max_m) || !r->Get(&h.max_m0) ||
      !r->Get(&m) || !r->Get(&mult) || !r->Get(&ef_construction)) {
    return DataLoss("hnswlib header is truncated");
  }
  const size_t links0 = h.max_m0 * sizeof(tableint) + sizeof(hnswlib::linklistsizeint);
  const size_t data_size = static_cast<size_t>(o.dim) * sizeof(float);
  if (m != static_cast<size_t>(o.M) || h.max_m != m || h.max_m0 != 2 * m || offset_level0 != 0 ||
      offset_data != links0 || h.label_offset != links0 + data_size ||
      h.size_data != links0 + data_size + sizeof(hnswlib::labeltype) ||
      // mult_ scales every new element's random level (and so its link-list allocation):
      // hnswlib derives it from M, and so must the file.
      !(std::abs(mult - 1.0 / std::log(static_cast<double>(m))) <= 1e-9 * mult) ||
      ef_construction == 0 || h.count > max_elements) {
    return DataLoss("hnswlib header does not match the index parameters");
  }
  if (h.count == 0 ? (h.max_level != -1 || h.entry != static_cast<tableint>(-1))
                   : (h.max_level < 0 || h.max_level > 64 || h.entry >= h.count)) {
    return DataLoss(StrCat("hnswlib header has a bad entry point ", h.entry, " / top level ",
                           h.max_level, " for ", h.count, " elements"));
  }
  return OkStatus();
}

// Every element's upper link lists: their start (upper[i]) and the element's level.
Status ReadUpperLevels(Reader* r, const HnswlibHeader& h, std::vector<int>* level,
                       std::vector<const char*>* upper) {
  const size_t links = h.max_m * sizeof(hnswlib::tableint) + sizeof(hnswlib::linklistsizeint);
  level->assign(h.count, 0);
  upper->assign(h.count, nullptr);
  for (size_t i = 0; i < h.count; ++i) {
    uint32_t bytes = 0;
    if (!r->Get(&bytes)) return DataLoss("hnswlib link lists are truncated");
    (*upper)[i] = r->Skip(bytes);
    if (bytes % links != 0 || bytes / links > static_cast<uint32_t>(h.max_level) ||
        (*upper)[i] == nullptr) {
      return DataLoss(StrCat("hnswlib element ", i, " has a bad link-list size ", bytes));
    }
    (*level)[i] = static_cast<int>(bytes / links);
  }
  if (r->remaining() != 0) return DataLoss("hnswlib payload has trailing bytes");
  if (h.count > 0 && (*level)[h.entry] != h.max_level) {
    return DataLoss("hnswlib entry point is not on the top level");
  }
  return OkStatus();
}

// One link list: its count fits and every neighbour exists on that level.
Status CheckLinkList(const char* list, size_t cap, int lvl, size_t i,
                     const std::vector<int>& level) {
  uint16_t n = 0;
  std::memcpy(&n, list, sizeof(n));
  if (n > cap) return DataLoss(StrCat("hnswlib element ", i, " lists ", n, " neighbours"));
  for (uint16_t j = 0; j < n; ++j) {
    hnswlib::tableint nb = 0;
    std::memcpy(&nb, list + sizeof(hnswlib::linklistsizeint) + j * sizeof(nb), sizeof(nb));
    if (nb >= level.size() || level[nb] < lvl) {
      return DataLoss(
          StrCat("hnswlib element ", i, " links to a bad neighbour ", nb, " on level ", lvl));
    }
  }
  return OkStatus();
}

// hnswlib 0.6.2's loader trusts its file: sizes become allocations and neighbour ids become
// offsets. Before it sees a body, this walks the same layout (saveIndex: a fixed header, the
// level-0 block of every element, then each element's upper link lists) and checks every size,
// count and id, so a malformed or crafted file gives DataLoss instead of a wild read. On success
// `elements` holds the element count.
Status ValidateHnswlibBody(std::string_view body, const HnswGraph::Options& o, size_t* elements) {
  Reader r(body);
  HnswlibHeader h;
  RS_RETURN_IF_ERROR(ReadHnswlibHeader(&r, o, &h));
  const char* level0 =
      h.count > r.remaining() / h.size_data ? nullptr : r.Skip(h.count * h.size_data);
  if (level0 == nullptr) return DataLoss("hnswlib level-0 block is truncated");
  std::vector<int> level;
  std::vector<const char*> upper;
  RS_RETURN_IF_ERROR(ReadUpperLevels(&r, h, &level, &upper));
  const size_t links = h.max_m * sizeof(hnswlib::tableint) + sizeof(hnswlib::linklistsizeint);
  std::unordered_set<hnswlib::labeltype> labels;
  labels.reserve(h.count);
  for (size_t i = 0; i < h.count; ++i) {
    const char* el = level0 + i * h.size_data;
    if (static_cast<uint8_t>(el[2]) > 1) return DataLoss("hnswlib element has a bad flag byte");
    RS_RETURN_IF_ERROR(CheckLinkList(el, h.max_m0, 0, i, level));
    for (int l = 1; l <= level[i]; ++l) {
      RS_RETURN_IF_ERROR(CheckLinkList(upper[i] + (l - 1) * links, h.max_m, l, i, level));
    }
    hnswlib::labeltype label = 0;
    std::memcpy(&label, el + h.label_offset, sizeof(label));
    if (!labels.insert(label).second) return DataLoss(StrCat("hnswlib label ", label, " repeats"));
  }
  *elements = h.count;
  return OkStatus();
}

}  // namespace

struct HnswGraph::Impl {
  std::unique_ptr<hnswlib::SpaceInterface<float>> base;
  std::unique_ptr<CountingSpace> counting;  // set when counting distances
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> hnsw;
  // memory_bytes() sums the upper levels of the elements once: elements are never taken out of
  // an hnswlib graph (only marked deleted), so the sum of elements [0, levels_counted) holds.
  Mutex levels_mu;
  size_t levels_counted ABSL_GUARDED_BY(levels_mu) = 0;
  size_t upper_levels ABSL_GUARDED_BY(levels_mu) = 0;
  // hnswlib 0.6.2 counts deleted elements (num_deleted_) without a lock: concurrent revivals
  // clear their marks under this one.
  Mutex marks_mu;
  hnswlib::SpaceInterface<float>* space() const {
    return counting != nullptr ? static_cast<hnswlib::SpaceInterface<float>*>(counting.get())
                               : base.get();
  }
};

HnswGraph::HnswGraph(const Options& o) : options_(o), impl_(std::make_unique<Impl>()) {
  impl_->base = MakeSpace(o);
  if (o.count_distances)
    impl_->counting = std::make_unique<CountingSpace>(impl_->base.get(), o.space, o.dim);
}

HnswGraph::HnswGraph(const Options& o, size_t capacity) : HnswGraph(o) {
  impl_->hnsw = std::make_unique<hnswlib::HierarchicalNSW<float>>(impl_->space(), capacity, o.M,
                                                                  o.ef_construction, o.seed);
  // searchKnn uses max(ef_, k): Search passes k = max(ef, k) per call, so ef_ stays minimal and
  // concurrent searches never write shared state.
  impl_->hnsw->setEf(1);
}

HnswGraph::~HnswGraph() = default;

StatusOr<std::unique_ptr<HnswGraph>> HnswGraph::Load(const Options& o, std::string_view body,
                                                     const std::string& scratch) {
  size_t elements = 0;
  RS_RETURN_IF_ERROR(ValidateHnswlibBody(body, o, &elements));
  {
    std::ofstream out(scratch, std::ios::binary | std::ios::trunc);
    out.write(body.data(), body.size());
    if (!out) return Internal(StrCat("hnsw: cannot write temp file ", scratch));
  }
  auto g = std::unique_ptr<HnswGraph>(new HnswGraph(o));
  Status st;
  try {
    g->impl_->hnsw = std::make_unique<hnswlib::HierarchicalNSW<float>>(
        g->impl_->space(), scratch, false, std::max<size_t>(elements, 1));
    g->impl_->hnsw->setEf(1);
  } catch (const std::exception& e) {
    st = DataLoss(StrCat("hnswlib could not load the graph: ", e.what()));
  }
  std::error_code ec;
  std::filesystem::remove(scratch, ec);
  RS_RETURN_IF_ERROR(st);
  // hnswlib 0.6.2's loading constructor counts deletions into an uninitialized num_deleted_:
  // recount them here.
  auto& h = *g->impl_->hnsw;
  h.num_deleted_ = 0;
  for (size_t i = 0; i < h.cur_element_count; ++i) {
    if (h.isMarkedDeleted(static_cast<hnswlib::tableint>(i))) ++h.num_deleted_;
  }
  if (h.data_size_ != o.dim * sizeof(float)) return DataLoss("hnswlib graph has another dim");
  return g;
}

StatusOr<std::string> HnswGraph::Save(const std::string& scratch) const {
  try {
    impl_->hnsw->saveIndex(scratch);
  } catch (const std::exception& e) {
    return Internal(StrCat("hnsw: saving ", scratch, " failed: ", e.what()));
  }
  std::ifstream in(scratch, std::ios::binary);
  std::string body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const bool ok = static_cast<bool>(in) || in.eof();
  in.close();
  std::error_code ec;
  std::filesystem::remove(scratch, ec);
  if (!ok) return Internal(StrCat("hnsw: reading back ", scratch, " failed"));
  return body;
}

size_t HnswGraph::capacity() const { return impl_->hnsw->max_elements_; }
size_t HnswGraph::used() const { return impl_->hnsw->cur_element_count; }
size_t HnswGraph::deleted() const { return impl_->hnsw->num_deleted_; }

int64_t HnswGraph::memory_bytes() const {
  const auto& h = *impl_->hnsw;
  size_t upper = 0;
  {
    MutexLock l(impl_->levels_mu);
    for (size_t i = impl_->levels_counted; i < h.cur_element_count; ++i) {
      impl_->upper_levels += h.element_levels_[i];
    }
    impl_->levels_counted = std::max<size_t>(impl_->levels_counted, h.cur_element_count);
    upper = impl_->upper_levels;
  }
  return static_cast<int64_t>(h.max_elements_ * slot_bytes() + upper * h.size_links_per_element_);
}

int64_t HnswGraph::slot_bytes() const {
  return static_cast<int64_t>(impl_->hnsw->size_data_per_element_ + sizeof(void*) + 64);
}

int64_t HnswGraph::upper_level_bytes() const {
  return static_cast<int64_t>(impl_->hnsw->size_links_per_element_);
}

HnswGraph::Label HnswGraph::Find(int64_t label) const {
  const auto& h = *impl_->hnsw;
  auto it = h.label_lookup_.find(static_cast<hnswlib::labeltype>(label));
  if (it == h.label_lookup_.end()) return Label::kAbsent;
  return h.isMarkedDeleted(it->second) ? Label::kDeleted : Label::kLive;
}

void HnswGraph::Resize(size_t capacity) { impl_->hnsw->resizeIndex(capacity); }

void HnswGraph::Insert(const float* x, int64_t label) {
  impl_->hnsw->addPoint(x, static_cast<hnswlib::labeltype>(label));
}

void HnswGraph::Replace(const float* x, int64_t label) {
  auto& h = *impl_->hnsw;
  const auto name = static_cast<hnswlib::labeltype>(label);
  std::optional<hnswlib::tableint> deleted;
  {
    // Under hnswlib's label lock, as its own lookups: the map must not be read while another
    // thread adds to it (and rehashes it).
    std::unique_lock<std::mutex> names(h.cur_element_count_guard_);
    const auto it = h.label_lookup_.find(name);
    if (it != h.label_lookup_.end() && h.isMarkedDeleted(it->second)) deleted = it->second;
  }
  if (deleted.has_value()) {
    MutexLock l(impl_->marks_mu);
    h.unmarkDeletedInternal(*deleted);  // then addPoint replaces its vector (updatePoint)
  }
  h.addPoint(x, name);
}

std::vector<int64_t> HnswGraph::DeletedSlots(size_t max) const {
  const auto& h = *impl_->hnsw;
  std::vector<int64_t> slots;
  for (size_t i = 0; i < h.cur_element_count && slots.size() < max; ++i) {
    if (h.isMarkedDeleted(static_cast<hnswlib::tableint>(i))) {
      slots.push_back(static_cast<int64_t>(i));
    }
  }
  return slots;
}

void HnswGraph::Reuse(int64_t slot, const float* x, int64_t label) {
  auto& h = *impl_->hnsw;
  const auto id = static_cast<hnswlib::tableint>(slot);
  {
    std::unique_lock<std::mutex> names(h.cur_element_count_guard_);
    h.label_lookup_.erase(h.getExternalLabel(id));
    h.label_lookup_[static_cast<hnswlib::labeltype>(label)] = id;
    h.setExternalLabel(id, static_cast<hnswlib::labeltype>(label));
  }
  {
    MutexLock l(impl_->marks_mu);
    h.unmarkDeletedInternal(id);
  }
  std::unique_lock<std::mutex> update(
      h.link_list_update_locks_[id &
                                (hnswlib::HierarchicalNSW<float>::max_update_element_locks - 1)]);
  h.updatePoint(x, id, 1.0);
}

void HnswGraph::MarkDeleted(int64_t label) {
  impl_->hnsw->markDelete(static_cast<hnswlib::labeltype>(label));
}

void HnswGraph::Search(const float* q, size_t k, size_t ef,
                       std::vector<std::pair<float, int64_t>>* out, int64_t* computed) const {
  const int64_t before = t_distances;
  auto result = impl_->hnsw->searchKnn(q, std::max(ef, k));  // max-heap on distance: worst first
  if (options_.count_distances) *computed += t_distances - before;
  while (result.size() > k) result.pop();
  out->resize(result.size());
  for (size_t j = result.size(); j-- > 0; result.pop()) {
    (*out)[j] = {result.top().first, static_cast<int64_t>(result.top().second)};
  }
}

}  // namespace ragserve::index::internal
