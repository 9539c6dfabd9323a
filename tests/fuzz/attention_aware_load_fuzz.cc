// clang-format off
// FUZZ_SOURCES: index/attention_aware.cc index/key_util.cc services/common/status.cc services/common/logging.cc
// clang-format on
// Fuzzes AttentionAwareIndex::Load (the key index file of the KV retrieval service): any file
// must load or give an error Status, never crash or allocate beyond what the file can fill; a
// file that loads must serve a search and an insertion (its graph is validated on load).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "index/attention_aware.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/aa_load_fuzz_" + std::to_string(::getpid()) + ".idx";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return 0;
  if (size > 0) std::fwrite(data, 1, size, f);
  std::fclose(f);
  auto idx = ragserve::index::AttentionAwareIndex::Load(path);
  if (!idx.ok()) return 0;
  auto& x = **idx;
  if (x.dim() > 4096) return 0;
  std::vector<float> q(static_cast<size_t>(x.dim()), 0.5f);
  std::vector<float> dist(4);
  std::vector<int64_t> ids(4);
  (void)x.search(1, q.data(), 4, dist.data(), ids.data());
  const int64_t id = 1 << 20;
  (void)x.add(1, q.data(), &id);
  (void)x.search(1, q.data(), 4, dist.data(), ids.data());
  return 0;
}
