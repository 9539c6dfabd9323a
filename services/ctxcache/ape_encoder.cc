#include "services/ctxcache/ape_encoder.h"

#include <filesystem>
#include <utility>

#include "services/common/logging.h"
#include "services/common/rag_template.h"
#include "services/engine/gguf_model.h"
#include "services/engine/tokenizer_config.h"

namespace ragserve::ctxcache {

StatusOr<DType> ParseStoreDType(const std::string& name, const std::string& flag) {
  if (name == "f32") return DType::kF32;
  if (name == "f16") return DType::kF16;
  if (name == "bf16") return DType::kBF16;
  return InvalidArgument(StrCat(flag, " must be f32, f16 or bf16, got '", name, "'"));
}

StatusOr<ModelAndTokenizer> LoadModelDir(const std::string& dir, const std::string& flag,
                                         const kernels::Ops* ops,
                                         const std::string& weights_dtype) {
  ModelAndTokenizer out;
  RS_ASSIGN_OR_RETURN(const engine::WeightsLoadOptions wopts,
                      engine::ParseWeightsDtype(weights_dtype));
  if (engine::IsGgufModelPath(dir)) {  // one file: weights, hyper-parameters and vocabulary
    RS_ASSIGN_OR_RETURN(out.model, engine::Model::Load(dir, ops, wopts));
    RS_ASSIGN_OR_RETURN(out.tokenizer, engine::LoadModelTokenizer(dir));
    RS_ASSIGN_OR_RETURN(std::unique_ptr<engine::GgufFile> file, engine::OpenGguf(dir));
    auto chat = engine::GgufChatTemplate(file->header);
    if (chat.ok()) {
      out.chat_template = std::move(*chat);
    } else {
      RS_LOG(warn, "{}: the model's chat template is not usable: {}", dir,
             chat.status().ToString());
    }
    return out;
  }
  if (!std::filesystem::is_directory(dir)) {
    return InvalidArgument(StrCat(flag, " ", dir, ": no such directory or .gguf file"));
  }
  RS_ASSIGN_OR_RETURN(out.model, engine::Model::Load(dir, ops, wopts));
  RS_ASSIGN_OR_RETURN(out.tokenizer, engine::Tokenizer::FromFile(dir + "/tokenizer.json"));
  auto chat = engine::LoadChatTemplate(dir);
  if (chat.ok()) {
    out.chat_template = std::move(*chat);
  } else {
    RS_LOG(warn, "{}: the model's chat template is not usable: {}", dir, chat.status().ToString());
  }
  return out;
}

StatusOr<StoredBlock> ToStoredBlock(const engine::KvBlock& b, DType dtype) {
  RS_ASSIGN_OR_RETURN(StoredBlock out,
                      MakeStoredBlock(b.geometry.num_kv_heads, b.geometry.head_dim, b.tokens, b.k,
                                      b.v, b.fingerprint, dtype, b.positions));
  return out;
}

std::shared_ptr<const engine::KvBlock> ToEngineBlock(const StoredBlock& b,
                                                     const engine::KvGeometry& g) {
  auto out = std::make_shared<engine::KvBlock>();
  out->geometry = g;
  out->tokens = b.tokens;
  out->positions = b.positions;
  out->fingerprint = b.fingerprint;
  out->k.resize(static_cast<size_t>(b.layers));
  out->v.resize(static_cast<size_t>(b.layers));
  for (int l = 0; l < b.layers; ++l) {
    out->k[l].resize(static_cast<size_t>(b.LayerElements()));
    out->v[l].resize(static_cast<size_t>(b.LayerElements()));
    b.LayerToF32(l, /*is_value=*/false, out->k[l].data());
    b.LayerToF32(l, /*is_value=*/true, out->v[l].data());
  }
  return out;
}

ApeEncoder::ApeEncoder(engine::Model* model, const engine::Tokenizer* tokenizer, BlockCache* cache,
                       ApeSettings settings)
    : model_(model), tokenizer_(tokenizer), cache_(cache), settings_(std::move(settings)) {}

StatusOr<std::unique_ptr<ApeEncoder>> ApeEncoder::Create(engine::Model* model,
                                                         const engine::Tokenizer* tokenizer,
                                                         BlockCache* cache, ApeSettings settings) {
  RS_CHECK_ARG(model != nullptr && tokenizer != nullptr && cache != nullptr,
               "APE encoder needs a model, a tokenizer and a cache");
  RS_CHECK_ARG(settings.temperature > 0 && settings.temperature <= 4,
               "APE temperature must be in (0, 4], got ", settings.temperature);
  RS_CHECK_ARG(settings.scaling > 0 && settings.scaling <= 4, "APE scaling must be in (0, 4], got ",
               settings.scaling);
  RS_CHECK_ARG(settings.max_passage_tokens >= 1, "max passage tokens must be >= 1");
  std::unique_ptr<ApeEncoder> enc(new ApeEncoder(model, tokenizer, cache, std::move(settings)));
  // The prefix starts the sequence: BOS (when the model has one) + the prefix text.
  const auto& cfg = model->config();
  enc->prefix_tokens_ = tokenizer->Encode(enc->settings_.prefix, /*add_bos=*/true);
  if (!tokenizer->bos_id() && cfg.bos_token_id) {
    enc->prefix_tokens_.insert(enc->prefix_tokens_.begin(), *cfg.bos_token_id);
  }
  RS_CHECK_ARG(!enc->prefix_tokens_.empty(),
               "the APE prefix is empty and the model has no BOS token to start from");
  RS_ASSIGN_OR_RETURN(engine::KvBlock pre,
                      model->EncodeBlock(nullptr, enc->prefix_tokens_, /*start_pos=*/0));
  enc->prefix_kv_ = std::make_shared<const engine::KvBlock>(std::move(pre));
  return enc;
}

std::string ApeEncoder::SettingsText() const {
  // Only what changes the stored KV (see the header).
  return StrCat("ape-v1;template=1;dtype=", DTypeName(settings_.store_dtype),
                ";max_tokens=", settings_.max_passage_tokens);
}

StatusOr<KeyId> ApeEncoder::KeyFor(const std::string& passage) const {
  RS_ASSIGN_OR_RETURN(CacheKey key, CacheKey::Make(model_->fingerprint(), settings_.prefix, passage,
                                                   SettingsText()));
  return key.id();
}

void ApeEncoder::SetRemote(RemoteLookup lookup, MetricsRegistry* metrics) {
  remote_ = std::move(lookup);
  MetricsRegistry* reg = metrics != nullptr ? metrics : &MetricsRegistry::Default();
  remote_rejected_ = &reg->GetCounter(
      "ragserve_ctxcache_remote_rejected_total",
      "Remote context cache entries that did not match this model or passage (recomputed)");
}

Status ApeEncoder::CheckRemote(const StoredBlock& b, const std::vector<int32_t>& tokens) const {
  const engine::KvGeometry g = model_->geometry();
  RS_RETURN_IF_ERROR(b.Validate());
  if (b.fingerprint != model_->fingerprint()) {
    return FailedPrecondition(StrCat("made by model ", b.fingerprint));
  }
  if (b.layers != g.num_layers || b.kv_heads != g.num_kv_heads || b.head_dim != g.head_dim) {
    return FailedPrecondition(StrCat("geometry ", b.layers, "x", b.kv_heads, "x", b.head_dim,
                                     " is not the model's ", g.num_layers, "x", g.num_kv_heads, "x",
                                     g.head_dim));
  }
  if (b.tokens != static_cast<int64_t>(tokens.size())) {
    return FailedPrecondition(StrCat(b.tokens, " tokens; the passage has ", tokens.size()));
  }
  for (int64_t i = 0; i < b.tokens; ++i) {
    if (b.positions[i] != passage_start() + i) {
      return FailedPrecondition(
          StrCat("token ", i, " at position ", b.positions[i], ", not ", passage_start() + i));
    }
  }
  if (!b.token_ids.empty() && b.token_ids != tokens) {
    return FailedPrecondition("token ids differ from this tokenizer's encoding of the passage");
  }
  return OkStatus();
}

StatusOr<EncodedPassage> ApeEncoder::Encode(const std::string& passage) {
  RS_CHECK_ARG(!passage.empty(), "empty passage");
  RS_ASSIGN_OR_RETURN(CacheKey key, CacheKey::Make(model_->fingerprint(), settings_.prefix, passage,
                                                   SettingsText()));
  EncodedPassage out;
  out.key = key.id();
  bool fetched = false;
  auto compute = [this, &passage, &key, &fetched]() -> StatusOr<StoredBlock> {
    const std::vector<int32_t> tokens = tokenizer_->Encode(RagPassageText(passage));
    RS_CHECK_ARG(!tokens.empty(), "passage encodes to no tokens");
    RS_CHECK_ARG(static_cast<int>(tokens.size()) <= settings_.max_passage_tokens, "passage has ",
                 tokens.size(), " tokens; the limit is ", settings_.max_passage_tokens);
    const int64_t ctx = model_->config().max_position_embeddings;
    RS_CHECK_ARG(ctx <= 0 || passage_start() + static_cast<int64_t>(tokens.size()) < ctx,
                 "prefix + passage (", passage_start() + tokens.size(),
                 " tokens) exceed the model context of ", ctx);
    if (remote_) {
      const engine::KvGeometry g = model_->geometry();
      RemoteExpect expect{model_->fingerprint(), g.num_layers, g.num_kv_heads, g.head_dim,
                          static_cast<int64_t>(tokens.size())};
      StatusOr<StoredBlock> r = remote_(key.id(), expect);
      if (r.ok()) {
        const Status fits = CheckRemote(*r, tokens);
        if (fits.ok()) {
          fetched = true;
          return r;
        }
        remote_rejected_->Inc();
        RS_LOG(warn, "ctxcache: remote entry {} rejected ({}); computing it", key.id().Hex(),
               fits.ToString());
      } else if (r.status().code() != StatusCode::kNotFound) {
        RS_LOG(debug, "ctxcache: remote lookup of {} failed ({}); computing it", key.id().Hex(),
               r.status().ToString());
      }
    }
    RS_ASSIGN_OR_RETURN(engine::KvBlock b,
                        model_->EncodeBlock(prefix_kv_.get(), tokens, passage_start()));
    RS_ASSIGN_OR_RETURN(StoredBlock cb, ToStoredBlock(b, settings_.store_dtype));
    cb.token_ids = tokens;  // lets a remote reader check the passage's tokenization
    return cb;
  };
  RS_ASSIGN_OR_RETURN(auto block, cache_->GetOrCompute(key, compute, &out.source));
  if (fetched && out.source == CacheSource::kComputed) out.source = CacheSource::kRemote;
  out.kv = ToEngineBlock(*block, model_->geometry());
  return out;
}

StatusOr<std::shared_ptr<const engine::KvBlock>> ApeEncoder::Lookup(const KeyId& key) {
  RS_ASSIGN_OR_RETURN(auto block, cache_->Get(key));
  RS_CHECK_ARG(block->fingerprint == model_->fingerprint(), "cached block ", key.Hex(),
               " was made by model ", block->fingerprint, ", not ", model_->fingerprint());
  return ToEngineBlock(*block, model_->geometry());
}

}  // namespace ragserve::ctxcache
