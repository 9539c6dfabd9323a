// clang-format off
// FUZZ_SOURCES: index/attention_aware.cc index/index_util.cc kernels/cpu/attention.cc index/index_file.cc index/vector_index.cc services/common/status.cc services/common/logging.cc
// clang-format on
// Fuzzes AttentionAwareIndex::Load (the key index of the KV retrieval store) past the file
// checksum: the input is [dim: u16 LE][payload: parameters, keys, ids, tombstones, entry points,
// centroids, adjacency], wrapped into a well-formed ragserve index file (header + checksum) so
// every mutation reaches the payload checks. Any payload must load or give an error Status, never
// crash or allocate beyond what the file can fill; one that loads must serve a search and an
// insertion (its graph is validated on load).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "index/attention_aware.h"
#include "index/internal/index_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ragserve::index;  // NOLINT: a fuzz target's main file
  if (size < 2) return 0;
  uint16_t dim = 0;
  std::memcpy(&dim, data, sizeof(dim));
  if (dim == 0 || dim > 4096) return 0;
  static const std::string path = "/tmp/aa_load_fuzz_" + std::to_string(::getpid()) + ".idx";
  const std::string payload(reinterpret_cast<const char*>(data) + 2, size - 2);
  if (!internal::WriteIndexFile(path, {internal::kAttentionAwareCode, Metric::kInnerProduct, dim},
                                payload)
           .ok()) {
    return 0;
  }
  auto idx = AttentionAwareIndex::Load(path);
  if (!idx.ok()) return 0;
  auto& x = **idx;
  std::vector<float> q(static_cast<size_t>(x.dim()), 0.5f);
  std::vector<float> dist(4);
  std::vector<int64_t> ids(4);
  (void)x.search(1, q.data(), 4, dist.data(), ids.data());
  const int64_t id = 1 << 20;
  (void)x.add(1, q.data(), &id);
  (void)x.search(1, q.data(), 4, dist.data(), ids.data());
  return 0;
}
