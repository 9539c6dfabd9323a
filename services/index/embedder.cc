#include "services/index/embedder.h"

#include <xxhash.h>

#include <cmath>
#include <map>
#include <mutex>
#include <unordered_map>

#include "services/engine/bert.h"

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

ModelEmbedder::ModelEmbedder(std::shared_ptr<const engine::BertEncoder> encoder)
    : encoder_(std::move(encoder)) {}

int ModelEmbedder::dim() const { return encoder_->dim(); }

Status ModelEmbedder::Embed(const std::vector<std::string>& texts, float* out) const {
  RS_CHECK_ARG(texts.empty() || out != nullptr, "model embedder: null output buffer");
  const int d = encoder_->dim();
  // Texts without any token embed to zeros (as with the hashing embedder), so the collection
  // rejects an empty query instead of searching with the embedding of "[CLS] [SEP]".
  std::vector<std::string> nonempty;
  std::vector<size_t> where;
  for (size_t i = 0; i < texts.size(); ++i) {
    if (encoder_->tokenizer().Words(texts[i]).empty()) {
      std::fill(out + i * d, out + (i + 1) * d, 0.0f);
    } else {
      nonempty.push_back(texts[i]);
      where.push_back(i);
    }
  }
  if (nonempty.empty()) return OkStatus();
  if (where.size() == texts.size()) return encoder_->Encode(texts, out);
  std::vector<float> e(nonempty.size() * d);
  RS_RETURN_IF_ERROR(encoder_->Encode(nonempty, e.data()));
  for (size_t t = 0; t < where.size(); ++t) {
    std::copy(e.begin() + t * d, e.begin() + (t + 1) * d, out + where[t] * d);
  }
  return OkStatus();
}

StatusOr<ModelEmbedderSpec> ParseModelEmbedderName(std::string_view name) {
  RS_CHECK_ARG(name.starts_with("model:"), "embedder '", name, "' does not start with 'model:'");
  ModelEmbedderSpec spec;
  std::string_view rest = name.substr(6);
  const size_t q = rest.find('?');
  spec.dir = std::string(rest.substr(0, q));
  RS_CHECK_ARG(!spec.dir.empty(), "embedder '", name, "': no model directory after 'model:'");
  if (q == std::string_view::npos) return spec;
  std::string_view opts = rest.substr(q + 1);
  while (!opts.empty()) {
    const size_t amp = opts.find('&');
    const std::string_view kv = opts.substr(0, amp);
    opts = amp == std::string_view::npos ? std::string_view() : opts.substr(amp + 1);
    const size_t eq = kv.find('=');
    RS_CHECK_ARG(eq != std::string_view::npos, "embedder '", name, "': option '", kv,
                 "' is not key=value");
    const std::string_view key = kv.substr(0, eq), value = kv.substr(eq + 1);
    if (key == "pooling") {
      RS_CHECK_ARG(value == "mean" || value == "cls", "embedder '", name, "': pooling '", value,
                   "' is not supported (supported: mean, cls)");
      spec.pooling = std::string(value);
    } else if (key == "max_length") {
      int v = 0;
      for (char ch : value) {
        RS_CHECK_ARG(ch >= '0' && ch <= '9' && v < 1000000, "embedder '", name, "': max_length '",
                     value, "' is not a number");
        v = v * 10 + (ch - '0');
      }
      RS_CHECK_ARG(v >= 2, "embedder '", name, "': max_length must be >= 2, got '", value, "'");
      spec.max_length = v;
    } else {
      return InvalidArgument(StrCat("embedder '", name, "': unknown option '", key,
                                    "' (supported: pooling, max_length)"));
    }
  }
  return spec;
}

namespace {

// Encoders already loaded, by their name: collections naming the same model share one copy.
std::mutex g_models_mu;
std::map<std::string, std::weak_ptr<const engine::BertEncoder>> g_models;  // guarded by g_models_mu

StatusOr<std::shared_ptr<const engine::BertEncoder>> LoadEncoder(std::string_view name) {
  RS_ASSIGN_OR_RETURN(ModelEmbedderSpec spec, ParseModelEmbedderName(name));
  std::lock_guard<std::mutex> g(g_models_mu);
  auto it = g_models.find(std::string(name));
  if (it != g_models.end()) {
    if (auto e = it->second.lock()) return e;
  }
  engine::BertEncoderOptions opts;
  if (!spec.pooling.empty()) {
    RS_ASSIGN_OR_RETURN(opts.pooling, engine::ParsePoolingName(spec.pooling));
  }
  opts.max_length = spec.max_length;
  auto loaded = engine::BertEncoder::Load(spec.dir, opts);
  if (!loaded.ok()) {
    // Every load failure is a bad collection setting from the caller's point of view.
    return InvalidArgument(StrCat("embedder '", name, "': ", loaded.status().message()));
  }
  std::shared_ptr<const engine::BertEncoder> e(std::move(loaded).value());
  g_models[std::string(name)] = e;
  return e;
}

}  // namespace

StatusOr<std::unique_ptr<Embedder>> MakeEmbedder(std::string_view name, int dim) {
  if (name.starts_with("model:")) {
    RS_ASSIGN_OR_RETURN(auto encoder, LoadEncoder(name));
    RS_CHECK_ARG(encoder->dim() == dim, "embedder '", name, "' produces ", encoder->dim(),
                 "-dimensional vectors (the model's hidden_size), but the collection's dim is ",
                 dim, "; create the collection with dim ", encoder->dim());
    return std::unique_ptr<Embedder>(new ModelEmbedder(std::move(encoder)));
  }
  RS_CHECK_ARG(name.empty() || name == "hashing", "unknown embedder '", name,
               "' (available: hashing, model:<dir>)");
  RS_ASSIGN_OR_RETURN(auto e, HashingEmbedder::Create(dim));
  return std::unique_ptr<Embedder>(std::move(e));
}

}  // namespace ragserve::collection
