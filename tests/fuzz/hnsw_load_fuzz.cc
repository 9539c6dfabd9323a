// clang-format off
// FUZZ_SOURCES: index/hnsw.cc index/hnsw_graph.cc index/index_util.cc kernels/cpu/attention.cc index/index_file.cc index/vector_index.cc services/common/status.cc services/common/logging.cc
// clang-format on
// Fuzzes HnswIndex::Load past the file checksum: the input is [metric + 3 * format: 1 byte]
// [dim: u16 LE][payload: ragserve's parameter block + hnswlib's saveIndex body], wrapped into a
// well-formed ragserve index file (header + checksum) so every mutation reaches the parameter and
// graph checks instead of stopping at the checksum. Format 0 is the layout before the flags word
// (the seeds), format 1 the current one. Any payload must load or give an error Status; one
// that loads must serve searches, an insertion and a removal without a wild read.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "index/hnsw.h"
#include "index/internal/index_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ragserve::index;  // NOLINT: a fuzz target's main file
  if (size < 3) return 0;
  const auto metric = static_cast<Metric>(data[0] % 3);
  const uint32_t format = (data[0] / 3) % 2;
  uint16_t dim = 0;
  std::memcpy(&dim, data + 1, sizeof(dim));
  if (dim == 0 || dim > 512) return 0;
  static const std::string path = "/tmp/hnsw_load_fuzz_" + std::to_string(::getpid()) + ".idx";
  const std::string payload(reinterpret_cast<const char*>(data) + 3, size - 3);
  if (!internal::WriteIndexFile(path, {internal::kHnswCode, metric, dim, format}, payload).ok()) {
    return 0;
  }
  auto loaded = HnswIndex::Load(path);
  if (!loaded.ok()) return 0;
  HnswIndex& idx = **loaded;
  std::vector<float> q(dim, 0.25f);
  std::vector<float> dist(8);
  std::vector<int64_t> ids(8);
  (void)idx.search(1, q.data(), 8, dist.data(), ids.data());
  const int64_t fresh = int64_t{1} << 40;
  (void)idx.add(1, q.data(), &fresh);
  (void)idx.remove(1, ids.data());
  (void)idx.search(1, q.data(), 8, dist.data(), ids.data());
  return 0;
}
