#include "services/index/embedder.h"

#include <xxhash.h>

#include <cmath>
#include <unordered_map>

namespace ragserve::collection {

namespace {
bool IsWordByte(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}
}  // namespace

StatusOr<std::unique_ptr<HashingEmbedder>> HashingEmbedder::Create(int dim) {
  RS_CHECK_ARG(dim >= 1 && dim <= 65536, "hashing embedder: dim must be in [1, 65536], got ", dim);
  return std::unique_ptr<HashingEmbedder>(new HashingEmbedder(dim));
}

std::vector<std::string> HashingEmbedder::Words(std::string_view text) {
  std::vector<std::string> words;
  std::string cur;
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (IsWordByte(c)) {
      cur.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : ch);
    } else if (!cur.empty()) {
      words.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) words.push_back(std::move(cur));
  return words;
}

void HashingEmbedder::EmbedOne(std::string_view text, float* out) const {
  std::fill(out, out + dim_, 0.0f);
  const std::vector<std::string> words = Words(text);
  std::unordered_map<std::string, int> tf;
  for (size_t i = 0; i < words.size(); ++i) {
    ++tf[words[i]];
    if (i + 1 < words.size()) ++tf[words[i] + " " + words[i + 1]];
  }
  for (const auto& [feature, count] : tf) {
    const uint64_t h = XXH64(feature.data(), feature.size(), 0);
    const uint64_t s = XXH64(feature.data(), feature.size(), 1);
    const float w = 1.0f + std::log(static_cast<float>(count));
    out[h % static_cast<uint64_t>(dim_)] += (s >> 63) ? -w : w;
  }
  double norm = 0;
  for (int j = 0; j < dim_; ++j) norm += double(out[j]) * out[j];
  if (norm > 0) {
    const float inv = static_cast<float>(1.0 / std::sqrt(norm));
    for (int j = 0; j < dim_; ++j) out[j] *= inv;
  }
}

Status HashingEmbedder::Embed(const std::vector<std::string>& texts, float* out) const {
  RS_CHECK_ARG(texts.empty() || out != nullptr, "hashing embedder: null output buffer");
  for (size_t i = 0; i < texts.size(); ++i) EmbedOne(texts[i], out + i * dim_);
  return OkStatus();
}

StatusOr<std::unique_ptr<Embedder>> MakeEmbedder(std::string_view name, int dim) {
  // "model:<dir>" (a BERT-family encoder run by the engine, issue 22 item 3) plugs in here.
  RS_CHECK_ARG(!name.starts_with("model:"), "embedder '", name,
               "': model embedders are not available in this build yet (available: hashing)");
  RS_CHECK_ARG(name.empty() || name == "hashing", "unknown embedder '", name,
               "' (available: hashing)");
  RS_ASSIGN_OR_RETURN(auto e, HashingEmbedder::Create(dim));
  return std::unique_ptr<Embedder>(std::move(e));
}

}  // namespace ragserve::collection
