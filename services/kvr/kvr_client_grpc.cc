#include "services/kvr/kvr_client_grpc.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <utility>

#include "services/common/auth.h"
#include "services/common/grpc_status.h"
#include "services/common/mutex.h"
#include "services/common/wire.h"

namespace ragserve::kvr {

// Consecutive timed-out / unreachable calls open the breaker: calls fail fast for a while, so a
// stalled store costs the worker's loop one deadline or two, not one per layer, step and sequence.
class CallBreaker {
 public:
  explicit CallBreaker(const RemoteKvrOptions& o)
      : threshold_(std::max(1, o.breaker_failures)), open_ms_(o.breaker_open_ms) {}

  // Unavailable while open.
  Status Admit() {
    MutexLock lock(mu_);
    if (failures_ < threshold_ || Clock::now() >= open_until_) return OkStatus();
    return Unavailable(StrCat("ragserve-kvr failed ", failures_,
                              " calls in a row (timed out or unreachable); calls paused"));
  }
  void Record(const Status& st) {
    MutexLock lock(mu_);
    if (st.code() != StatusCode::kUnavailable && st.code() != StatusCode::kDeadlineExceeded) {
      failures_ = 0;
      return;
    }
    if (++failures_ >= threshold_) open_until_ = Clock::now() + std::chrono::milliseconds(open_ms_);
  }

 private:
  using Clock = std::chrono::steady_clock;
  const int threshold_;
  const int64_t open_ms_;
  Mutex mu_;
  int failures_ ABSL_GUARDED_BY(mu_) = 0;  // consecutive failed calls
  Clock::time_point open_until_ ABSL_GUARDED_BY(mu_);
};

namespace {

// Bytes of tensor data per CreateSequence message (a long prefill chunk is split).
constexpr int64_t kMaxMessageBytes = int64_t{8} << 20;

std::chrono::system_clock::time_point Deadline(int64_t ms) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(ms);
}

v1::KeyIndexKind KindToProto(int kind) {
  switch (kind) {
    case static_cast<int>(KeyIndexKind::kExact):
      return v1::KEY_INDEX_EXACT;
    case static_cast<int>(KeyIndexKind::kHnsw):
      return v1::KEY_INDEX_HNSW;
    case static_cast<int>(KeyIndexKind::kIvf):
      return v1::KEY_INDEX_IVF;
    case static_cast<int>(KeyIndexKind::kAttentionAware):
      return v1::KEY_INDEX_ATTENTION_AWARE;
    default:
      return v1::KEY_INDEX_KIND_UNSPECIFIED;
  }
}

class RemoteKvrSequence final : public KvrSequence {
 public:
  RemoteKvrSequence(v1::KvRetrievalService::Stub* stub, const RemoteKvrOptions& options,
                    std::shared_ptr<CallBreaker> breaker, std::string id, const SequenceConfig& cfg)
      : stub_(stub),
        options_(options),
        breaker_(std::move(breaker)),
        id_(std::move(id)),
        hkv_(cfg.kv.num_kv_heads),
        hq_(cfg.num_q_heads == 0 ? cfg.kv.num_kv_heads : cfg.num_q_heads),
        d_(cfg.kv.head_dim) {}

  ~RemoteKvrSequence() override {
    if (writer_ != nullptr) {
      create_ctx_.TryCancel();
      (void)writer_->Finish();
    }
  }

  // Opens the stream and sends the spec; an unreachable server shows up here or at the next
  // write.
  Status Open(const SequenceConfig& cfg) {
    create_ctx_.set_deadline(Deadline(options_.prefill_timeout_ms));
    AttachToken(&create_ctx_, options_.token);
    writer_ = stub_->CreateSequence(&create_ctx_, &create_resp_);
    v1::CreateSequenceRequest req;
    v1::SequenceSpec* s = req.mutable_spec();
    s->set_sequence_id(id_);
    s->set_num_layers(cfg.kv.num_layers);
    s->set_num_kv_heads(cfg.kv.num_kv_heads);
    s->set_num_q_heads(hq_);
    s->set_head_dim(cfg.kv.head_dim);
    s->set_store_dtype(cfg.kv.dtype == KvDtype::kF16 ? v1::DTYPE_F16 : v1::DTYPE_F32);
    s->set_sink_tokens(static_cast<int32_t>(std::max<int64_t>(0, cfg.sink_tokens)));
    s->set_window_tokens(static_cast<int32_t>(std::max<int64_t>(0, cfg.window_tokens)));
    s->set_index_kind(KindToProto(cfg.index_kind));
    if (cfg.ttl_ms > 0) {
      s->set_ttl_seconds(static_cast<int32_t>(std::max<int64_t>(1, cfg.ttl_ms / 1000)));
    }
    return Write(req);
  }

  Status AddPrefill(int layer, int64_t n, const float* k, const float* v, const float* q) override {
    if (writer_ == nullptr) return FailedPrecondition("the CreateSequence stream is closed");
    const int64_t kv_row = int64_t{hkv_} * d_, q_row = int64_t{hq_} * d_;
    const int64_t per_msg =
        std::max<int64_t>(1, kMaxMessageBytes / ((2 * kv_row + q_row) * int64_t{sizeof(float)}));
    for (int64_t t = 0; t < n; t += per_msg) {
      const int64_t m = std::min(per_msg, n - t);
      v1::CreateSequenceRequest req;
      v1::KvChunk* c = req.add_chunks();
      c->set_layer(layer);
      wire::FloatsToTensor(k + t * kv_row, {m, hkv_, d_}, c->mutable_k());
      wire::FloatsToTensor(v + t * kv_row, {m, hkv_, d_}, c->mutable_v());
      wire::FloatsToTensor(q + t * q_row, {m, hq_, d_}, c->mutable_prefill_queries());
      RS_RETURN_IF_ERROR(Write(req));
    }
    return OkStatus();
  }

  StatusOr<double> FinishPrefill() override {
    if (writer_ == nullptr) return FailedPrecondition("the CreateSequence stream is closed");
    writer_->WritesDone();
    const grpc::Status st = writer_->Finish();
    writer_.reset();
    if (!st.ok()) return Annotate(FromGrpcStatus(st), "CreateSequence");
    return create_resp_.build_ms();
  }

  Status Append(int64_t n, const std::vector<const float*>& k,
                const std::vector<const float*>& v) override {
    v1::AppendRequest req;
    req.set_sequence_id(id_);
    for (size_t l = 0; l < k.size(); ++l) {
      v1::KvChunk* c = req.add_chunks();
      c->set_layer(static_cast<int32_t>(l));
      wire::FloatsToTensor(k[l], {n, hkv_, d_}, c->mutable_k());
      wire::FloatsToTensor(v[l], {n, hkv_, d_}, c->mutable_v());
    }
    v1::AppendResponse resp;
    return StepCall("Append",
                    [&](grpc::ClientContext* ctx) { return stub_->Append(ctx, req, &resp); });
  }

  Status Attend(int layer, int64_t n, const float* q, const AttendOptions& opt, float* o,
                float* lse, int64_t* keys_scored) override {
    RS_CHECK_ARG(opt.nprobe == 0 && !opt.retrieved_only,
                 "remote Attend takes top_k and ef_search only");
    v1::AttendRequest req;
    req.set_sequence_id(id_);
    req.set_top_k(opt.top_k);
    req.set_ef_search(opt.ef_search);
    const int64_t row = int64_t{hq_} * d_;
    for (int64_t i = 0; i < n; ++i) {
      v1::AttendItem* item = req.add_items();
      item->set_layer(layer);
      wire::FloatsToTensor(q + i * row, {hq_, d_}, item->mutable_queries());
    }
    v1::AttendResponse resp;
    RS_RETURN_IF_ERROR(StepCall(
        "Attend", [&](grpc::ClientContext* ctx) { return stub_->Attend(ctx, req, &resp); }));
    if (resp.results_size() != n) {
      return Internal(StrCat("Attend: ", resp.results_size(), " results for ", n, " queries"));
    }
    for (int64_t i = 0; i < n; ++i) {
      const v1::AttendResult& r = resp.results(static_cast<int>(i));
      RS_ASSIGN_OR_RETURN(auto ro,
                          wire::TensorToFloats(r.o(), {hq_, d_}, false, "Attend result o"));
      RS_ASSIGN_OR_RETURN(auto rl,
                          wire::TensorToFloats(r.lse(), {hq_}, false, "Attend result lse"));
      std::copy(ro.begin(), ro.end(), o + i * row);
      std::copy(rl.begin(), rl.end(), lse + i * hq_);
      if (keys_scored != nullptr) *keys_scored += r.keys_scored();
    }
    return OkStatus();
  }

  Status Release() override {
    if (writer_ != nullptr) {
      // Mid-prefill: cancelling the stream makes the server drop the partial sequence.
      create_ctx_.TryCancel();
      (void)writer_->Finish();
      writer_.reset();
      return OkStatus();
    }
    v1::ReleaseRequest req;
    req.set_sequence_id(id_);
    v1::ReleaseResponse resp;
    // Through the breaker too: a sequence failed by a stalled store is released on the loop
    // thread (the store's TTL reclaims what a failed Release leaves).
    return StepCall("Release",
                    [&](grpc::ClientContext* ctx) { return stub_->Release(ctx, req, &resp); });
  }

 private:
  // A call made per decode step, through the breaker; past its deadline it is UNAVAILABLE (the
  // store is too slow for this worker: the router may retry the request on another).
  Status StepCall(const char* what,
                  const std::function<grpc::Status(grpc::ClientContext*)>& call) const {
    RS_RETURN_IF_ERROR(Annotate(breaker_->Admit(), what));
    grpc::ClientContext ctx;
    Prepare(&ctx);
    Status st = FromGrpcStatus(call(&ctx));
    breaker_->Record(st);
    if (st.code() == StatusCode::kDeadlineExceeded) {
      st = Unavailable(StrCat("ragserve-kvr did not answer within ", options_.call_timeout_ms,
                              " ms (", st.message(), ")"));
    }
    return Annotate(st, what);
  }

  void Prepare(grpc::ClientContext* ctx) const {
    ctx->set_deadline(Deadline(options_.call_timeout_ms));
    AttachToken(ctx, options_.token);
  }

  // A failed write means the server ended the stream: its status says why.
  Status Write(const v1::CreateSequenceRequest& req) {
    if (writer_->Write(req)) return OkStatus();
    const grpc::Status st = writer_->Finish();
    writer_.reset();
    if (st.ok()) return Internal("CreateSequence: the server closed the stream early");
    return Annotate(FromGrpcStatus(st), "CreateSequence");
  }

  v1::KvRetrievalService::Stub* const stub_;
  const RemoteKvrOptions options_;
  const std::shared_ptr<CallBreaker> breaker_;
  const std::string id_;
  const int hkv_, hq_, d_;
  grpc::ClientContext create_ctx_;
  v1::CreateSequenceResponse create_resp_;
  std::unique_ptr<grpc::ClientWriter<v1::CreateSequenceRequest>> writer_;  // open in prefill
};

}  // namespace

RemoteKvrClient::RemoteKvrClient(std::shared_ptr<grpc::Channel> channel, RemoteKvrOptions options)
    : stub_(v1::KvRetrievalService::NewStub(std::move(channel))),
      options_(std::move(options)),
      breaker_(std::make_shared<CallBreaker>(options_)) {}

StatusOr<std::unique_ptr<KvrSequence>> RemoteKvrClient::Create(const std::string& id,
                                                               const SequenceConfig& config) {
  RS_CHECK_ARG(!id.empty(), "empty sequence id");
  RS_CHECK_ARG(config.kv.num_layers >= 1 && config.kv.num_kv_heads >= 1 && config.kv.head_dim >= 1,
               "bad sequence geometry");
  auto seq = std::make_unique<RemoteKvrSequence>(stub_.get(), options_, breaker_, id, config);
  RS_RETURN_IF_ERROR(seq->Open(config));
  return std::unique_ptr<KvrSequence>(std::move(seq));
}

StatusOr<v1::KvrStatsResponse> RemoteKvrClient::Stats() const {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.call_timeout_ms));
  AttachToken(&ctx, options_.token);
  v1::KvrStatsResponse resp;
  RS_RETURN_IF_ERROR(
      Annotate(FromGrpcStatus(stub_->Stats(&ctx, v1::KvrStatsRequest{}, &resp)), "Stats"));
  return resp;
}

}  // namespace ragserve::kvr
