#include "services/ctxcache/service.h"

#include <filesystem>
#include <utility>

#include "services/common/executor.h"
#include "services/common/grpc_status.h"
#include "services/common/grpc_util.h"
#include "services/common/logging.h"
#include "services/common/rag_template.h"

namespace ragserve::ctxcache {

namespace {
constexpr int kMaxPassagesPerEncode = 256;

v1::DType ToProto(DType t) {
  switch (t) {
    case DType::kF16:
      return v1::DTYPE_F16;
    case DType::kBF16:
      return v1::DTYPE_BF16;
    default:
      return v1::DTYPE_F32;
  }
}
}  // namespace

StatusOr<std::unique_ptr<ContextCacheService>> ContextCacheService::Create(
    ServiceServer* server, ContextCacheOptions opts) {
  RS_ASSIGN_OR_RETURN(const DType dtype, ParseStoreDType(opts.dtype, "--dtype"));
  RS_CHECK_ARG(opts.chunk_bytes >= 1024, "chunk size must be >= 1 KiB");
  std::unique_ptr<ContextCacheService> svc(new ContextCacheService(server, std::move(opts)));
  BlockCacheOptions copts;
  copts.ram_limit_bytes = svc->opts_.ram_bytes;
  copts.disk_dir = svc->opts_.data_dir;
  copts.disk_write_buffer_bytes = svc->opts_.disk_write_buffer_bytes;
  copts.store_dtype = dtype;
  std::error_code ec;
  std::filesystem::create_directories(svc->opts_.data_dir, ec);
  if (ec) {
    return InvalidArgument(StrCat("--data-dir ", svc->opts_.data_dir, ": ", ec.message()));
  }
  RS_ASSIGN_OR_RETURN(svc->cache_, BlockCache::Open(copts));
  if (!svc->opts_.model_dir.empty()) {
    RS_ASSIGN_OR_RETURN(ModelAndTokenizer mt,
                        LoadModelDir(svc->opts_.model_dir, "--model", &kernels::FastOps(),
                                     svc->opts_.weights_dtype));
    svc->model_ = std::move(mt.model);
    svc->tokenizer_ = std::move(mt.tokenizer);
    ApeSettings as;
    as.prefix = svc->opts_.prefix.empty() ? std::string(kRagPrefix) : svc->opts_.prefix;
    as.store_dtype = dtype;
    RS_ASSIGN_OR_RETURN(svc->ape_, ApeEncoder::Create(svc->model_.get(), svc->tokenizer_.get(),
                                                      svc->cache_.get(), as));
    RS_LOG(info, "ctxcache: model {} fingerprint {}", svc->opts_.model_dir,
           svc->model_->fingerprint());
  } else {
    RS_LOG(warn, "ctxcache: no --model: serving cached entries only, Encode is unavailable");
  }
  return svc;
}

void ContextCacheService::Flush() {
  if (cache_) cache_->Flush();
}

Status ContextCacheService::CheckModel(const v1::ModelFingerprint& fp) const {
  if (fp.hex().empty()) return OkStatus();
  if (!model_) return OkStatus();  // entries carry their fingerprint; Get checks it
  RS_CHECK_ARG(fp.hex() == model_->fingerprint(), "model fingerprint ", fp.hex(),
               " does not match this cache's model ", model_->fingerprint());
  return OkStatus();
}

grpc::ServerUnaryReactor* ContextCacheService::Encode(grpc::CallbackServerContext* ctx,
                                                      const v1::EncodeRequest* req,
                                                      v1::EncodeResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, ctx, req, resp]() -> Status {
    if (!ape_) return FailedPrecondition("this context cache has no model loaded (--model)");
    RS_RETURN_IF_ERROR(CheckModel(req->model()));
    RS_CHECK_ARG(req->passages_size() >= 1 && req->passages_size() <= kMaxPassagesPerEncode,
                 "passages must number 1..", kMaxPassagesPerEncode, ", got ", req->passages_size());
    RS_CHECK_ARG(
        req->settings().prefix().empty() || req->settings().prefix() == ape_->settings().prefix,
        "settings.prefix differs from this cache's prefix");
    for (const auto& p : req->passages()) {
      RS_CHECK_ARG(!p.text().empty(), "passage '", p.id(), "' is empty");
    }
    for (const auto& p : req->passages()) {
      // Up to 256 prefills: stop when the caller is gone (what is encoded so far stays cached).
      RS_RETURN_IF_ERROR(CallerStillWaiting(*ctx));
      auto e = ape_->Encode(p.text());
      if (!e.ok()) return Annotate(e.status(), StrCat("passage '", p.id(), "'"));
      auto* r = resp->add_results();
      r->set_passage_id(p.id());
      r->mutable_key()->set_hex(e->key.Hex());
      r->set_tokens(static_cast<int32_t>(e->kv->tokens));
      r->set_was_cached(e->source != CacheSource::kComputed);
    }
    return OkStatus();
  });
}

namespace {

// Streams one cached block, one chunk in flight at a time: the next message is made when the
// previous one is written, so a slow reader holds a reference to the block (shared with the cache)
// and one chunk, never a queue of copies of the whole block.
class GetReactor final : public grpc::ServerWriteReactor<v1::GetResponse> {
 public:
  explicit GetReactor(int64_t chunk_bytes) : chunk_bytes_(chunk_bytes) {}

  // Starts streaming `block` (any thread); or finishes with `st` when it is not OK.
  void Begin(const Status& st, std::shared_ptr<const StoredBlock> block) {
    if (!st.ok()) {
      Finish(ToGrpcStatus(st));
      return;
    }
    block_ = std::move(block);
    layer_bytes_ =
        block_->LayerElements() * static_cast<int64_t>(kernels::DTypeSize(block_->dtype));
    WriteNext();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client stopped reading"));
      return;
    }
    WriteNext();
  }
  void OnDone() override { delete this; }

 private:
  // Writes the chunk at the cursor, or finishes after the last one.
  void WriteNext() {
    if (layer_ >= block_->layers || layer_bytes_ == 0) {
      Finish(grpc::Status::OK);
      return;
    }
    msg_.Clear();
    if (first_) {
      msg_.set_num_layers(block_->layers);
      msg_.set_tokens(static_cast<int32_t>(block_->tokens));
      msg_.set_position_start(block_->positions.empty() ? 0 : block_->positions.front());
      for (int32_t t : block_->token_ids) msg_.add_token_ids(t);
      first_ = false;
    }
    msg_.set_layer(layer_);
    msg_.set_is_value(is_value_);
    auto* c = msg_.mutable_chunk();
    c->set_dtype(ToProto(block_->dtype));
    c->add_shape(block_->tokens);
    c->add_shape(block_->kv_heads);
    c->add_shape(block_->head_dim);
    c->set_offset(static_cast<uint64_t>(offset_));
    const auto& bytes = is_value_ ? block_->v[layer_] : block_->k[layer_];
    const int64_t n = std::min(chunk_bytes_, layer_bytes_ - offset_);
    c->set_data(reinterpret_cast<const char*>(bytes.data()) + offset_, static_cast<size_t>(n));
    Advance(n);
    StartWrite(&msg_);
  }
  // Cursor order: layer, then K before V, then offset.
  void Advance(int64_t n) {
    offset_ += n;
    if (offset_ < layer_bytes_) return;
    offset_ = 0;
    if (!is_value_) {
      is_value_ = true;
      return;
    }
    is_value_ = false;
    ++layer_;
  }

  const int64_t chunk_bytes_;
  std::shared_ptr<const StoredBlock> block_;
  int64_t layer_bytes_ = 0;
  int layer_ = 0;
  bool is_value_ = false;
  int64_t offset_ = 0;
  bool first_ = true;
  v1::GetResponse msg_;  // the message being written
};

}  // namespace

grpc::ServerWriteReactor<v1::GetResponse>* ContextCacheService::Get(
    grpc::CallbackServerContext* ctx, const v1::GetRequest* req) {
  auto* r = new GetReactor(opts_.chunk_bytes);
  if (grpc::Status st = PrecheckCall(ctx, server_->auth()); !st.ok()) {
    r->Finish(st);
    return r;
  }
  // The lookup may read the disk tier: on the executor (refused when the queue would hold it past
  // its caller's deadline, also while queued; not run when its caller left while it was queued).
  Status submitted = server_->executor().Submit(
      [this, ctx, req, r] {
        std::shared_ptr<const StoredBlock> block;
        const Status st = CallCatchingExceptions("Get", [&]() -> Status {
          if (Status waiting = CallerStillWaiting(*ctx); !waiting.ok()) {
            return Annotate(waiting, "not run");
          }
          RS_RETURN_IF_ERROR(CheckModel(req->model()));
          RS_ASSIGN_OR_RETURN(KeyId id, KeyId::FromHex(req->key().hex()));
          RS_ASSIGN_OR_RETURN(block, cache_->Get(id));
          // The key already binds the model; this also holds for a cache without a model.
          if (!req->model().hex().empty() && block->fingerprint != req->model().hex()) {
            return FailedPrecondition(StrCat("entry ", id.Hex(), " was made by model ",
                                             block->fingerprint, ", not ", req->model().hex()));
          }
          return OkStatus();
        });
        r->Begin(st, std::move(block));
      },
      /*bytes=*/0, SecondsLeft(*ctx), [r](const Status& shed) { r->Finish(ToGrpcStatus(shed)); });
  if (!submitted.ok()) r->Finish(ToGrpcStatus(submitted));
  return r;
}

grpc::ServerUnaryReactor* ContextCacheService::Has(grpc::CallbackServerContext* ctx,
                                                   const v1::HasRequest* req,
                                                   v1::HasResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_RETURN_IF_ERROR(CheckModel(req->model()));
    RS_CHECK_ARG(req->keys_size() <= 4096, "at most 4096 keys per Has");
    for (const auto& k : req->keys()) {
      RS_ASSIGN_OR_RETURN(KeyId id, KeyId::FromHex(k.hex()));
      resp->add_present(cache_->Has(id));
    }
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* ContextCacheService::Evict(grpc::CallbackServerContext* ctx,
                                                     const v1::EvictRequest* req,
                                                     v1::EvictResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_CHECK_ARG(req->all() || req->keys_size() > 0, "give keys, or all = true");
    RS_CHECK_ARG(!(req->all() && req->keys_size() > 0), "keys and all = true are exclusive");
    if (req->all()) {
      resp->set_evicted(cache_->EvictAll(req->include_disk()));
      return OkStatus();
    }
    int64_t n = 0;
    for (const auto& k : req->keys()) {
      RS_ASSIGN_OR_RETURN(KeyId id, KeyId::FromHex(k.hex()));
      n += cache_->Evict(id, req->include_disk()) > 0 ? 1 : 0;
    }
    resp->set_evicted(n);
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* ContextCacheService::Stats(grpc::CallbackServerContext* ctx,
                                                     const v1::CtxStatsRequest* req,
                                                     v1::CtxStatsResponse* resp) {
  return ServeCheapUnary(ctx, server_, req, resp, [this, resp] {
    const BlockCacheStats s = cache_->Stats();
    resp->set_ram_entries(s.ram_entries);
    resp->set_ram_bytes(s.ram_bytes);
    resp->set_ram_limit_bytes(s.ram_limit_bytes);
    resp->set_disk_entries(s.disk_entries);
    resp->set_disk_bytes(s.disk_bytes);
    resp->set_hits(s.hits_ram + s.hits_disk + s.hits_inflight);
    resp->set_misses(s.misses);
    resp->set_evictions(s.evictions);
    if (model_) resp->mutable_model()->set_hex(model_->fingerprint());
    return OkStatus();
  });
}

}  // namespace ragserve::ctxcache
