// Text embedders of the index service: text -> fixed-dimension float vectors.
//
// HashingEmbedder is the deterministic default that needs no model: signed feature hashing of
// normalized words and word bigrams with sublinear term frequency, L2-normalized.
// ModelEmbedder runs a BERT-family encoder from a Hugging Face checkpoint directory on the CPU
// (services/engine/bert.h), named "model:<dir>" in a collection spec.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "services/common/status.h"

namespace ragserve::engine {
class BertEncoder;
}

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

// A BERT-family encoder (services/engine/bert.h) as an embedder: dim() is the model's hidden size,
// vectors are pooled as the checkpoint says (1_Pooling/config.json, else the name's option, else
// mean) and L2-normalized; a text without any token (empty, only spaces) embeds to zeros.
class ModelEmbedder final : public Embedder {
 public:
  explicit ModelEmbedder(std::shared_ptr<const engine::BertEncoder> encoder);
  int dim() const override;
  Status Embed(const std::vector<std::string>& texts, float* out) const override;

 private:
  std::shared_ptr<const engine::BertEncoder> encoder_;
};

// "model:<dir>[?pooling=mean|cls][&max_length=N]" split into its parts. <dir> is a checkpoint
// directory (relative paths resolve against the service's working directory); pooling overrides
// the checkpoint's 1_Pooling/config.json; max_length caps the tokens per text.
struct ModelEmbedderSpec {
  std::string dir;
  std::string pooling;  // "" (the checkpoint's), "mean" or "cls"
  int max_length = 0;   // 0: the model's
};
StatusOr<ModelEmbedderSpec> ParseModelEmbedderName(std::string_view name);

// The embedder named by a collection setting for dimension `dim`: "" or "hashing", or
// "model:<dir>..." (loaded once per name and shared by the collections naming it).
// InvalidArgument naming an unknown embedder, a checkpoint that does not load (with the loader's
// message), or a dim different from the model's hidden size.
StatusOr<std::unique_ptr<Embedder>> MakeEmbedder(std::string_view name, int dim);

}  // namespace ragserve::collection
