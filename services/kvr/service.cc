#include "services/kvr/service.h"

#include <chrono>

#include "services/common/executor.h"
#include "services/common/grpc_status.h"
#include "services/common/grpc_util.h"
#include "services/common/metrics.h"
#include "services/common/wire.h"

namespace ragserve::kvr {

namespace {

// Stores one KvChunk (K/V and optional prefill queries of one layer).
Status ApplyChunk(KvRetrieval* kvr, const std::string& seq, const SequenceConfig& cfg,
                  const v1::KvChunk& c, int64_t* tokens_added) {
  const int64_t hkv = cfg.kv.num_kv_heads, d = cfg.kv.head_dim;
  const int64_t hq = cfg.num_q_heads == 0 ? hkv : cfg.num_q_heads;
  *tokens_added = 0;
  if (c.has_k() || c.has_v()) {
    RS_CHECK_ARG(c.k().shape_size() >= 1, "chunk k: missing shape [tokens, ", hkv, ", ", d, "]");
    const int64_t n = c.k().shape(0);
    RS_ASSIGN_OR_RETURN(auto k, wire::TensorToFloats(c.k(), {n, hkv, d}, true, "k"));
    RS_ASSIGN_OR_RETURN(auto v, wire::TensorToFloats(c.v(), {n, hkv, d}, true, "v"));
    RS_RETURN_IF_ERROR(kvr->AppendKv(seq, c.layer(), n, k.data(), v.data()));
    *tokens_added = n;
  }
  if (c.has_prefill_queries()) {
    RS_CHECK_ARG(c.prefill_queries().shape_size() >= 1, "prefill_queries: missing shape");
    const int64_t n = c.prefill_queries().shape(0);
    RS_ASSIGN_OR_RETURN(
        auto q, wire::TensorToFloats(c.prefill_queries(), {n, hq, d}, false, "prefill_queries"));
    RS_RETURN_IF_ERROR(kvr->AddPrefillQueries(seq, c.layer(), n, q.data()));
  }
  return OkStatus();
}

StatusOr<SequenceConfig> ConfigFromProto(const v1::SequenceSpec& p) {
  SequenceConfig c;
  c.kv.num_layers = p.num_layers();
  c.kv.num_kv_heads = p.num_kv_heads();
  c.kv.head_dim = p.head_dim();
  switch (p.store_dtype()) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::DTYPE_F32:
      c.kv.dtype = KvDtype::kF32;
      break;
    case v1::DTYPE_F16:
      c.kv.dtype = KvDtype::kF16;
      break;
    default:
      return InvalidArgument(
          StrCat("store_dtype must be F32 or F16, got ", v1::DType_Name(p.store_dtype())));
  }
  c.num_q_heads = p.num_q_heads();
  RS_CHECK_ARG(p.sink_tokens() >= 0, "sink_tokens must be >= 0, got ", p.sink_tokens());
  RS_CHECK_ARG(p.window_tokens() >= 0, "window_tokens must be >= 0, got ", p.window_tokens());
  RS_CHECK_ARG(p.ttl_seconds() >= 0, "ttl_seconds must be >= 0, got ", p.ttl_seconds());
  // 0 means "server default" on the wire for sinks/window/ttl (proto3 has no presence).
  c.sink_tokens = p.sink_tokens() > 0 ? p.sink_tokens() : -1;
  c.window_tokens = p.window_tokens() > 0 ? p.window_tokens() : -1;
  c.ttl_ms = p.ttl_seconds() > 0 ? int64_t{1000} * p.ttl_seconds() : -1;
  switch (p.index_kind()) {
    case v1::KEY_INDEX_KIND_UNSPECIFIED:
      c.index_kind = -1;
      break;
    case v1::KEY_INDEX_EXACT:
      c.index_kind = static_cast<int>(KeyIndexKind::kExact);
      break;
    case v1::KEY_INDEX_HNSW:
      c.index_kind = static_cast<int>(KeyIndexKind::kHnsw);
      break;
    case v1::KEY_INDEX_IVF:
      c.index_kind = static_cast<int>(KeyIndexKind::kIvf);
      break;
    case v1::KEY_INDEX_ATTENTION_AWARE:
      c.index_kind = static_cast<int>(KeyIndexKind::kAttentionAware);
      break;
    default:
      return InvalidArgument(StrCat("unknown index_kind ", p.index_kind()));
  }
  return c;
}

// Client-streamed CreateSequence: the first message's spec creates the sequence, every chunk is
// stored on the executor before the next read; after the last message the indexes are built.
// Any error releases the sequence, so a failed create leaves nothing behind.
class CreateReactor final : public grpc::ServerReadReactor<v1::CreateSequenceRequest> {
 public:
  CreateReactor(KvRetrievalGrpcService* svc, grpc::CallbackServerContext* ctx,
                v1::CreateSequenceResponse* resp)
      : svc_(svc), ctx_(ctx), resp_(resp) {
    if (grpc::Status st = PrecheckCall(ctx, svc->server()->auth()); !st.ok()) {
      Finish(st);
      return;
    }
    ReadNext();
  }

  void OnReadDone(bool ok) override {
    // The message is held until applied, within the stream's reservation (StreamReadBudget);
    // after the last one the index build holds no request.
    if (ok) budget_.Account(msg_);
    if (!ok) budget_.Release();
    Status submitted = budget_.Submit(
        [this, ok] {
          // Nothing is stored or built for a caller that has left (under a flood: most of the
          // queued messages); what it created is released below.
          Status st = CallerStillWaiting(*ctx_);
          if (st.ok()) {
            st = CallCatchingExceptions("CreateSequence",
                                        [this, ok] { return ok ? Apply() : Complete(); });
          }
          if (!st.ok()) {
            Fail(st);
            return;
          }
          if (ok) {
            ReadNext();
          } else {
            Finish(grpc::Status::OK);
          }
        },
        *ctx_, [this](const Status& shed) { Fail(shed); });
    if (!submitted.ok()) Fail(submitted);
  }

  // Ends the call with `st`, releasing what it created and its reservation (before the answer,
  // so a caller that has it finds the budget as its call left it).
  void Fail(const Status& st) {
    if (created_) (void)svc_->kvr()->Release(id_);
    budget_.Release();
    Finish(ToGrpcStatus(st));
  }

  void OnDone() override { delete this; }

 private:
  // Reads the next message once the request memory budget can hold one (StreamReadBudget).
  void ReadNext() {
    if (Status st = budget_.Reserve(); !st.ok()) {
      if (created_) (void)svc_->kvr()->Release(id_);
      Finish(ToGrpcStatus(Annotate(st, "sequence chunk not read")));
      return;
    }
    StartRead(&msg_);
  }

  Status Apply() {
    if (!created_) {
      RS_CHECK_ARG(msg_.has_spec(), "the first CreateSequenceRequest must carry the spec");
      RS_CHECK_ARG(!msg_.spec().sequence_id().empty(), "spec.sequence_id must not be empty");
      RS_ASSIGN_OR_RETURN(cfg_, ConfigFromProto(msg_.spec()));
      id_ = msg_.spec().sequence_id();
      RS_RETURN_IF_ERROR(svc_->kvr()->Create(id_, cfg_));
      created_ = true;
    } else {
      RS_CHECK_ARG(!msg_.has_spec(), "spec is only allowed in the first message");
    }
    for (const auto& c : msg_.chunks()) {
      int64_t added = 0;
      RS_RETURN_IF_ERROR(ApplyChunk(svc_->kvr(), id_, cfg_, c, &added));
    }
    return OkStatus();
  }

  Status Complete() {
    if (!created_) return InvalidArgument("no CreateSequenceRequest with a spec was received");
    // A stream that ended because the client cancelled carries partial K/V: not a sequence.
    if (ctx_->IsCancelled()) return Cancelled(StrCat("CreateSequence '", id_, "' was cancelled"));
    RS_ASSIGN_OR_RETURN(const double build_ms, svc_->kvr()->FinishPrefill(id_));
    RS_ASSIGN_OR_RETURN(const int64_t tokens, svc_->kvr()->NumTokens(id_, 0));
    RS_ASSIGN_OR_RETURN(const int64_t bytes, svc_->kvr()->SequenceBytes(id_));
    resp_->set_tokens(tokens);
    resp_->set_bytes(bytes);
    resp_->set_build_ms(build_ms);
    return OkStatus();
  }

  KvRetrievalGrpcService* svc_;
  grpc::CallbackServerContext* ctx_;
  v1::CreateSequenceResponse* resp_;
  v1::CreateSequenceRequest msg_;
  StreamReadBudget budget_{svc_->server()};
  bool created_ = false;
  std::string id_;
  SequenceConfig cfg_;
};

}  // namespace

grpc::ServerReadReactor<v1::CreateSequenceRequest>* KvRetrievalGrpcService::CreateSequence(
    grpc::CallbackServerContext* ctx, v1::CreateSequenceResponse* resp) {
  return new CreateReactor(this, ctx, resp);
}

grpc::ServerUnaryReactor* KvRetrievalGrpcService::Append(grpc::CallbackServerContext* ctx,
                                                         const v1::AppendRequest* req,
                                                         v1::AppendResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    // The sequence's shape comes from the store (the config of Create is not kept here).
    RS_ASSIGN_OR_RETURN(auto info, kvr_->Describe(req->sequence_id()));
    for (const auto& c : req->chunks()) {
      RS_CHECK_ARG(!c.has_prefill_queries(),
                   "Append takes K/V only (prefill queries go to "
                   "CreateSequence)");
      int64_t added = 0;
      RS_RETURN_IF_ERROR(ApplyChunk(kvr_, req->sequence_id(), info, c, &added));
    }
    RS_ASSIGN_OR_RETURN(const int64_t tokens, kvr_->NumTokens(req->sequence_id(), 0));
    resp->set_tokens(tokens);
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* KvRetrievalGrpcService::Attend(grpc::CallbackServerContext* ctx,
                                                         const v1::AttendRequest* req,
                                                         v1::AttendResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_ASSIGN_OR_RETURN(auto info, kvr_->Describe(req->sequence_id()));
    const int64_t hq = info.num_q_heads, d = info.kv.head_dim;
    AttendOptions opt;
    opt.top_k = req->top_k();
    opt.ef_search = req->ef_search();
    opt.retrieved_only = req->retrieved_only();
    RS_CHECK_ARG(req->ef_search() >= 0, "ef_search must be >= 0, got ", req->ef_search());
    auto& reg = MetricsRegistry::Default();
    static Histogram& latency =
        reg.GetHistogram("ragserve_kvr_attend_layer_seconds",
                         "Attend time per layer item (all kv heads)", LatencyBuckets());
    static Counter& scored =
        reg.GetCounter("ragserve_kvr_keys_scored_total", "Keys whose q.k a key index computed");
    for (const auto& item : req->items()) {
      const auto t0 = std::chrono::steady_clock::now();
      RS_ASSIGN_OR_RETURN(auto q, wire::TensorToFloats(item.queries(), {hq, d}, false, "queries"));
      RS_ASSIGN_OR_RETURN(auto r, kvr_->Attend(req->sequence_id(), item.layer(), q.data(),
                                               static_cast<int64_t>(q.size()), opt));
      v1::AttendResult* out = resp->add_results();
      out->set_layer(item.layer());
      wire::FloatsToTensor(r.o.data(), {hq, d}, out->mutable_o());
      wire::FloatsToTensor(r.lse.data(), {hq}, out->mutable_lse());
      out->set_keys_scored(r.keys_scored);
      scored.Inc(static_cast<double>(r.keys_scored));
      latency.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* KvRetrievalGrpcService::Release(grpc::CallbackServerContext* ctx,
                                                          const v1::ReleaseRequest* req,
                                                          v1::ReleaseResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp]() -> Status {
    RS_ASSIGN_OR_RETURN(const int64_t bytes, kvr_->Release(req->sequence_id()));
    resp->set_bytes_freed(bytes);
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* KvRetrievalGrpcService::Stats(grpc::CallbackServerContext* ctx,
                                                        const v1::KvrStatsRequest* req,
                                                        v1::KvrStatsResponse* resp) {
  return ServeCheapUnary(ctx, server_, req, resp, [this, resp]() -> Status {
    kvr_->ExpireIdle();
    const KvRetrievalStats st = kvr_->Stats();
    MetricsRegistry::Default()
        .GetGauge("ragserve_kvr_bytes_used", "K/V and key index bytes held by live sequences")
        .Set(static_cast<double>(st.bytes_used));
    resp->set_sequences(st.sequences);
    resp->set_bytes_used(st.bytes_used);
    resp->set_bytes_limit(st.bytes_limit);
    resp->set_attend_calls(st.attend_calls);
    return OkStatus();
  });
}

}  // namespace ragserve::kvr
