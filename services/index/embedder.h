// Text embedders of the index service: text -> fixed-dimension float vectors.
//
// HashingEmbedder is the deterministic default that needs no model: signed feature hashing of
// normalized words and word bigrams with sublinear term frequency, L2-normalized.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "services/common/status.h"

namespace ragserve::collection {

class Embedder {
 public:
  virtual ~Embedder() = default;
  // Output dimension (floats per text).
  virtual int dim() const = 0;
  // Writes texts.size() vectors into out[texts.size() * dim()]. Thread-safe.
  virtual Status Embed(const std::vector<std::string>& texts, float* out) const = 0;
};

// Signed feature hashing:
//   words   = maximal runs of ASCII letters/digits or UTF-8 bytes >= 0x80, ASCII-lowercased;
//   features = every word and every adjacent word pair ("a b");
//   bucket = XXH64(feature) % dim, sign = bit 63 of XXH64(feature, seed 1);
//   weight = 1 + ln(tf); the vector is L2-normalized (a text without words embeds to zeros).
class HashingEmbedder final : public Embedder {
 public:
  // dim >= 1 (InvalidArgument otherwise).
  static StatusOr<std::unique_ptr<HashingEmbedder>> Create(int dim);
  int dim() const override { return dim_; }
  Status Embed(const std::vector<std::string>& texts, float* out) const override;
  // The normalized words of `text` (exposed for tests).
  static std::vector<std::string> Words(std::string_view text);

 private:
  explicit HashingEmbedder(int dim) : dim_(dim) {}
  void EmbedOne(std::string_view text, float* out) const;
  const int dim_;
};

// The embedder named by a collection setting ("" or "hashing") for dimension `dim`.
// InvalidArgument naming an unknown embedder.
StatusOr<std::unique_ptr<Embedder>> MakeEmbedder(std::string_view name, int dim);

}  // namespace ragserve::collection
