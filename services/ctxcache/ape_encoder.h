// APE parallel encoding of passages on top of the context cache (paper facts:
// ../shared/papers/ape.md).
//
// A shared prefix (the RAG instruction) is encoded once, causally, at positions 0..P-1. Each
// passage is encoded on its own after that prefix, always at positions P..P+L-1, so its KV does
// not depend on the other passages it is served with and is cached under
// (model fingerprint, prefix, passage text, encoding settings). At question time the prefix KV and
// the chosen passages' KVs are joined in an engine::ApeKvSource: question and answer tokens
// (positions from P + max L on) attend to the passages with temperature T and scaling S.
//
// What goes into the cache key's settings: only what changes the stored KV (the passage template
// version and the storage dtype). T and S act at attention time, so one cached encoding serves
// every T/S setting (and APE off).
//
// Thread safety: all methods may be called from any thread (the model serializes its forward
// passes; the cache is thread-safe and single-flight).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "services/ctxcache/block_cache.h"
#include "services/ctxcache/cache_key.h"
#include "services/engine/kv_source.h"
#include "services/engine/model.h"
#include "services/engine/tokenizer.h"

namespace ragserve::engine {
class ChatTemplate;  // services/engine/chat_template.h
}  // namespace ragserve::engine

namespace ragserve::ctxcache {

// "f32" | "f16" | "bf16" -> DType; InvalidArgument naming `flag` otherwise.
StatusOr<DType> ParseStoreDType(const std::string& name, const std::string& flag);

// A model directory's weights and tokenizer.json, or a .gguf file's weights and embedded
// vocabulary; InvalidArgument naming `flag` when the path is neither, the loaders' errors
// otherwise.
struct ModelAndTokenizer {
  std::unique_ptr<engine::Model> model;
  std::unique_ptr<engine::Tokenizer> tokenizer;
  // The model's own chat template (tokenizer_config.json / chat_template.jinja, or a GGUF file's
  // tokenizer.chat_template, with its bos/eos
  // strings); null when the model has none, or when it cannot be compiled (logged as a warning:
  // loading never fails for it). The decoder renders chat requests with it.
  std::shared_ptr<const engine::ChatTemplate> chat_template;
};
// `ops` runs the model (FastOps by default; kernels/cuda/ops.h for a GPU); `weights_dtype` is
// --weights-dtype (engine::ParseWeightsDtype: "" keeps the stored dtypes).
StatusOr<ModelAndTokenizer> LoadModelDir(const std::string& dir, const std::string& flag,
                                         const kernels::Ops* ops = &kernels::FastOps(),
                                         const std::string& weights_dtype = "");

struct ApeSettings {
  std::string prefix;  // shared prefix text, encoded once before every passage
  // T on scores to passage tokens and S on the passages' LSE: the defaults of decoders and the
  // context-cache service. The best cell of the dev sweep on the shipped reader
  // (tools/bench/ape_sweep.py; docs/BENCHMARKS.md, "APE on the trained reader"): on the
  // second-run weights no T or S below 1 beats plain parallel encoding (T = S = 1), and
  // T = 1.0, S = 1.1 is one dev item of 400 ahead of it, i.e. almost no correction. The paper's
  // public release uses T = S = 0.9; the first weights' best was T = 0.6, S = 0.8.
  float temperature = 1.0f;
  float scaling = 1.1f;
  DType store_dtype = DType::kF32;
  int max_passage_tokens = 2048;
};

// One encoded passage: its cache key and f32 KV ready for attention.
struct EncodedPassage {
  KeyId key;
  std::shared_ptr<const engine::KvBlock> kv;
  CacheSource source = CacheSource::kComputed;  // kRemote: fetched from the remote lookup
};

// What a remote cache's entry must match for this encoder's model (checked by the fetcher on the
// stream before it allocates, and again by the encoder on the block).
struct RemoteExpect {
  std::string fingerprint;  // model fingerprint
  int32_t layers = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  int64_t max_tokens = 0;
};

// A cache tier behind the local ones, e.g. the ContextCacheService over gRPC (RemoteBlockCache):
// returns the stored block of `key`, NotFound when it does not hold it, any other error when it
// failed.
using RemoteLookup = std::function<StatusOr<StoredBlock>(const KeyId& key, const RemoteExpect& e)>;

class ApeEncoder {
 public:
  // model, tokenizer and cache are not owned and must outlive the encoder. Encodes the prefix.
  static StatusOr<std::unique_ptr<ApeEncoder>> Create(engine::Model* model,
                                                      const engine::Tokenizer* tokenizer,
                                                      BlockCache* cache, ApeSettings settings);

  // The cache key of a passage under these settings (no computation).
  StatusOr<KeyId> KeyFor(const std::string& passage) const;
  // Encodes (or fetches from the cache) one passage. InvalidArgument for an empty passage or one
  // over max_passage_tokens.
  StatusOr<EncodedPassage> Encode(const std::string& passage);
  // Asks `lookup` for a passage that misses the local tiers before computing it (inside the
  // single-flight computation, so concurrent requests fetch once). A fetched block is used only
  // if it matches this model and passage exactly (fingerprint, layers, kv heads, head dim, token
  // count, positions after the prefix, and token ids when it carries them); otherwise, and on any
  // lookup error, the passage is computed locally: a remote never fails an Encode. Counted in
  // `metrics` (nullptr = default registry) as ragserve_ctxcache_remote_rejected_total. Call
  // before the first Encode.
  void SetRemote(RemoteLookup lookup, MetricsRegistry* metrics = nullptr);

  // A cached passage by key (NotFound when neither tier has it).
  StatusOr<std::shared_ptr<const engine::KvBlock>> Lookup(const KeyId& key);

  // Token ids of the prefix (BOS + prefix text) and their KV.
  const std::vector<int32_t>& prefix_tokens() const { return prefix_tokens_; }
  const std::shared_ptr<const engine::KvBlock>& prefix_kv() const { return prefix_kv_; }
  int32_t passage_start() const { return static_cast<int32_t>(prefix_tokens_.size()); }
  const ApeSettings& settings() const { return settings_; }
  BlockCache* cache() { return cache_; }
  engine::Model* model() { return model_; }

 private:
  ApeEncoder(engine::Model* model, const engine::Tokenizer* tokenizer, BlockCache* cache,
             ApeSettings settings);
  std::string SettingsText() const;
  // Why a remote block cannot stand for `tokens` (OK when it can).
  Status CheckRemote(const StoredBlock& b, const std::vector<int32_t>& tokens) const;

  engine::Model* model_;
  const engine::Tokenizer* tokenizer_;
  BlockCache* cache_;
  ApeSettings settings_;
  std::vector<int32_t> prefix_tokens_;
  std::shared_ptr<const engine::KvBlock> prefix_kv_;
  RemoteLookup remote_;
  Counter* remote_rejected_ = nullptr;
};

// engine::KvBlock (f32) <-> cache StoredBlock (stored dtype).
StatusOr<StoredBlock> ToStoredBlock(const engine::KvBlock& b, DType dtype);
std::shared_ptr<const engine::KvBlock> ToEngineBlock(const StoredBlock& b,
                                                     const engine::KvGeometry& g);

}  // namespace ragserve::ctxcache
