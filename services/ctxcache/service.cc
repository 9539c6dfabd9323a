#include "services/ctxcache/service.h"

#include <filesystem>
#include <utility>

#include "services/common/executor.h"
#include "services/common/grpc_status.h"
#include "services/common/grpc_util.h"
#include "services/common/logging.h"
#include "services/common/rag_template.h"
#include "services/common/stream_outbox.h"

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
  copts.store_dtype = dtype;
  std::error_code ec;
  std::filesystem::create_directories(svc->opts_.data_dir, ec);
  if (ec) {
    return InvalidArgument(StrCat("--data-dir ", svc->opts_.data_dir, ": ", ec.message()));
  }
  RS_ASSIGN_OR_RETURN(svc->cache_, BlockCache::Open(copts));
  if (!svc->opts_.model_dir.empty()) {
    RS_ASSIGN_OR_RETURN(ModelAndTokenizer mt, LoadModelDir(svc->opts_.model_dir, "--model"));
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
  return ServeUnary(ctx, server_, [this, req, resp]() -> Status {
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

grpc::ServerWriteReactor<v1::GetResponse>* ContextCacheService::Get(
    grpc::CallbackServerContext* ctx, const v1::GetRequest* req) {
  class Reactor final : public grpc::ServerWriteReactor<v1::GetResponse> {
   public:
    Reactor() : out_(std::make_shared<StreamOutbox<v1::GetResponse>>(this)) {}
    void OnWriteDone(bool ok) override { out_->WriteDone(ok); }
    void OnDone() override {
      out_->Detach();
      delete this;
    }
    std::shared_ptr<StreamOutbox<v1::GetResponse>> out_;
  };
  auto* r = new Reactor();
  auto out = r->out_;
  if (grpc::Status st = PrecheckCall(ctx, server_->auth()); !st.ok()) {
    out->Close(st);
    return r;
  }
  Status submitted = server_->executor().Submit([this, req, out] {
    auto run = [&]() -> Status {
      RS_RETURN_IF_ERROR(CheckModel(req->model()));
      RS_ASSIGN_OR_RETURN(KeyId id, KeyId::FromHex(req->key().hex()));
      RS_ASSIGN_OR_RETURN(auto block, cache_->Get(id));
      // The key already binds the model; this also holds for a cache without a model.
      if (!req->model().hex().empty() && block->fingerprint != req->model().hex()) {
        return FailedPrecondition(StrCat("entry ", id.Hex(), " was made by model ",
                                         block->fingerprint, ", not ", req->model().hex()));
      }
      const int64_t layer_bytes =
          block->LayerElements() * static_cast<int64_t>(kernels::DTypeSize(block->dtype));
      bool first = true;
      for (int l = 0; l < block->layers; ++l) {
        for (bool is_value : {false, true}) {
          const auto& bytes = is_value ? block->v[l] : block->k[l];
          for (int64_t off = 0; off < layer_bytes; off += opts_.chunk_bytes) {
            v1::GetResponse m;
            if (first) {
              m.set_num_layers(block->layers);
              m.set_tokens(static_cast<int32_t>(block->tokens));
              m.set_position_start(block->positions.empty() ? 0 : block->positions.front());
              for (int32_t t : block->token_ids) m.add_token_ids(t);
              first = false;
            }
            m.set_layer(l);
            m.set_is_value(is_value);
            auto* c = m.mutable_chunk();
            c->set_dtype(ToProto(block->dtype));
            c->add_shape(block->tokens);
            c->add_shape(block->kv_heads);
            c->add_shape(block->head_dim);
            c->set_offset(static_cast<uint64_t>(off));
            const int64_t n = std::min(opts_.chunk_bytes, layer_bytes - off);
            c->set_data(reinterpret_cast<const char*>(bytes.data()) + off, static_cast<size_t>(n));
            out->Push(std::move(m));
          }
        }
      }
      return OkStatus();
    };
    out->Close(ToGrpcStatus(CallCatchingExceptions("Get", run)));
  });
  if (!submitted.ok()) out->Close(ToGrpcStatus(submitted));
  return r;
}

grpc::ServerUnaryReactor* ContextCacheService::Has(grpc::CallbackServerContext* ctx,
                                                   const v1::HasRequest* req,
                                                   v1::HasResponse* resp) {
  return ServeUnary(ctx, server_, [this, req, resp]() -> Status {
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
  return ServeUnary(ctx, server_, [this, req, resp]() -> Status {
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
                                                     const v1::CtxStatsRequest* /*req*/,
                                                     v1::CtxStatsResponse* resp) {
  return ServeUnary(ctx, server_, [this, resp] {
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
