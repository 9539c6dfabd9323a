#include "services/decoder/decoder_service.h"

#include <atomic>
#include <deque>
#include <filesystem>
#include <mutex>
#include <optional>
#include <utility>

#include "services/common/grpc_status.h"
#include "services/common/grpc_util.h"
#include "services/common/logging.h"
#include "services/common/stream_outbox.h"
#include "services/decoder/prompt.h"
#include "services/engine/unicode.h"

namespace ragserve::decoder {

namespace {

std::atomic<uint64_t> g_request_counter{0};

// Protobuf strings must be UTF-8: a model may emit byte tokens that never form a valid sequence;
// each such byte becomes U+FFFD on the wire (token_ids still carry the exact output).
std::string ToWireText(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t n = engine::unicode::Utf8CharLen(text, i);
    if (n == 1 && static_cast<unsigned char>(text[i]) >= 0x80) {
      out += "\xEF\xBF\xBD";
    } else {
      out.append(text, i, n);
    }
    i += n;
  }
  return out;
}

using Outbox = StreamOutbox<v1::GenerateEvent>;

// Folds a token delta into the delta queued before it.
bool MergeDeltas(v1::GenerateEvent* back, const v1::GenerateEvent& next) {
  if (!back->has_delta() || !next.has_delta()) return false;
  auto* d = back->mutable_delta();
  for (int32_t id : next.delta().token_ids()) d->add_token_ids(id);
  d->mutable_text()->append(next.delta().text());
  return true;
}

class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateEvent> {
 public:
  GenerateReactor(DecoderService* svc, const TokenAuth& auth, grpc::CallbackServerContext* ctx,
                  const v1::GenerateRequest* req)
      : svc_(svc), outbox_(std::make_shared<Outbox>(this, MergeDeltas)) {
    if (grpc::Status st = PrecheckCall(ctx, auth); !st.ok()) {
      outbox_->Close(st);
      return;
    }
    auto job = svc->MakeJob(*req);
    if (!job.ok()) {
      outbox_->Close(ToGrpcStatus(job.status()));
      return;
    }
    request_id_ = (*job)->request_id;
    const std::string worker = svc->worker_id();
    const int cached = 0;
    std::shared_ptr<Outbox> box = outbox_;
    (*job)->on_delta = [box](const std::vector<int32_t>& ids, const std::string& text) {
      v1::GenerateEvent ev;
      for (int32_t id : ids) ev.mutable_delta()->add_token_ids(id);
      ev.mutable_delta()->set_text(ToWireText(text));
      box->Push(std::move(ev));
    };
    (*job)->on_done = [box, worker, cached](const Status& st, const GenerateResult& r) {
      if (st.ok()) {
        v1::GenerateEvent ev;
        auto* s = ev.mutable_stats();
        s->set_prompt_tokens(r.prompt_tokens);
        s->set_cached_prompt_tokens(cached);
        s->set_generated_tokens(r.generated_tokens);
        s->set_finish_reason(r.finish_reason);
        s->set_worker_id(worker);
        auto* t = s->mutable_timings();
        t->set_prefill_ms(r.prefill_ms);
        t->set_ttft_ms(r.ttft_ms);
        t->set_decode_ms(r.decode_ms);
        t->set_total_ms(r.total_ms);
        if (r.decode_ms > 0 && r.generated_tokens > 1) {
          t->set_decode_tokens_per_s((r.generated_tokens - 1) / (r.decode_ms / 1000.0));
        }
        box->Push(std::move(ev));
      }
      box->Close(ToGrpcStatus(st));
    };
    if (Status st = svc->generator()->Submit(std::move(*job)); !st.ok()) {
      outbox_->Close(ToGrpcStatus(st));
    }
  }

  void OnWriteDone(bool ok) override { outbox_->WriteDone(ok); }
  void OnCancel() override {
    if (!request_id_.empty()) svc_->generator()->Cancel(request_id_);
  }
  void OnDone() override {
    outbox_->Detach();
    delete this;
  }

 private:
  DecoderService* svc_;
  std::shared_ptr<Outbox> outbox_;
  std::string request_id_;
};

// A reactor that only reports an error (no model loaded).
class ErrorReactor final : public grpc::ServerWriteReactor<v1::GenerateEvent> {
 public:
  explicit ErrorReactor(const grpc::Status& st) { Finish(st); }
  void OnDone() override { delete this; }
};

}  // namespace

StatusOr<std::unique_ptr<DecoderService>> DecoderService::Create(ServiceServer* server,
                                                                 DecoderOptions opts) {
  std::unique_ptr<DecoderService> svc(new DecoderService(server, std::move(opts)));
  if (!svc->opts_.model_dir.empty()) {
    if (!std::filesystem::is_directory(svc->opts_.model_dir)) {
      return InvalidArgument(StrCat("--model ", svc->opts_.model_dir, ": no such directory"));
    }
    RS_ASSIGN_OR_RETURN(svc->model_, engine::Model::Load(svc->opts_.model_dir));
    RS_ASSIGN_OR_RETURN(svc->tokenizer_,
                        engine::Tokenizer::FromFile(svc->opts_.model_dir + "/tokenizer.json"));
    RS_CHECK_ARG(svc->opts_.generator.max_active >= 1, "--max-active must be >= 1");
    RS_CHECK_ARG(svc->opts_.generator.max_queue >= 0, "--max-queue must be >= 0");
    RS_CHECK_ARG(svc->opts_.generator.prefill_chunk >= 1, "--prefill-chunk must be >= 1");
    svc->generator_ =
        std::make_unique<Generator>(svc->model_.get(), svc->tokenizer_.get(), svc->opts_.generator);
    RS_LOG(info, "decoder: model {} ({} layers, vocab {}), fingerprint {}", svc->opts_.model_dir,
           svc->model_->config().num_layers, svc->model_->config().vocab_size,
           svc->model_->fingerprint());
  } else {
    RS_LOG(warn, "decoder: no --model given; Generate answers FAILED_PRECONDITION");
  }
  return svc;
}

DecoderService::DecoderService(ServiceServer* server, DecoderOptions opts)
    : server_(server), opts_(std::move(opts)) {}

DecoderService::~DecoderService() { Shutdown(); }

std::string DecoderService::worker_id() const {
  return opts_.worker_id.empty() ? server_->address() : opts_.worker_id;
}

void DecoderService::Shutdown() {
  if (generator_) generator_->Shutdown();
}

StatusOr<std::unique_ptr<GenerateJob>> DecoderService::MakeJob(
    const v1::GenerateRequest& req) const {
  if (!model_) return FailedPrecondition("this decode worker has no model loaded (--model)");
  const auto& sp = req.sampling();
  RS_CHECK_ARG(sp.max_tokens() > 0, "sampling.max_tokens must be > 0, got ", sp.max_tokens());
  RS_CHECK_ARG(req.prompt_override().empty() || req.passages().empty(),
               "prompt_override and passages are exclusive");
  RS_CHECK_ARG(!req.question().empty() || !req.prompt_override().empty(),
               "question (or prompt_override) must not be empty");
  RS_CHECK_ARG(req.question().size() <= 65536, "question is over 64 KiB");

  auto job = std::make_unique<GenerateJob>();
  job->request_id = req.request_id().empty()
                        ? StrCat(worker_id(), "/", g_request_counter.fetch_add(1))
                        : req.request_id();
  std::string prompt = req.prompt_override();
  if (prompt.empty()) {
    std::vector<PromptPassage> passages;
    for (const auto& p : req.passages()) {
      RS_CHECK_ARG(!p.text().empty(), "passage '", p.id(), "' has no text");
      passages.push_back({p.id(), p.text()});
    }
    prompt = BuildRagPrompt(req.question(), passages);
  }
  const bool add_bos = model_->config().bos_token_id.has_value() || tokenizer_->bos_id();
  job->prompt = tokenizer_->Encode(prompt, add_bos);
  if (add_bos && !tokenizer_->bos_id() && model_->config().bos_token_id) {
    job->prompt.insert(job->prompt.begin(), *model_->config().bos_token_id);
  }
  job->resume.assign(req.resume_token_ids().begin(), req.resume_token_ids().end());
  const int remaining = sp.max_tokens() - static_cast<int>(job->resume.size());
  RS_CHECK_ARG(remaining >= 1, "resume_token_ids (", job->resume.size(),
               ") already reach max_tokens (", sp.max_tokens(), ")");

  job->sampling.temperature = sp.temperature();
  job->sampling.top_k = sp.top_k();
  RS_CHECK_ARG(sp.top_p() >= 0 && sp.top_p() <= 1, "sampling.top_p must be in [0, 1], got ",
               sp.top_p());
  RS_CHECK_ARG(sp.repetition_penalty() >= 0, "sampling.repetition_penalty must be >= 0, got ",
               sp.repetition_penalty());
  RS_CHECK_ARG(sp.top_k() >= 0, "sampling.top_k must be >= 0, got ", sp.top_k());
  job->sampling.top_p = sp.top_p() == 0 ? 1.0f : sp.top_p();
  job->sampling.repetition_penalty = sp.repetition_penalty() <= 0 ? 1.0f : sp.repetition_penalty();
  job->sampling.seed = sp.seed();
  job->stop.max_tokens = remaining;
  if (!sp.ignore_eos()) {
    job->stop.eos_ids = model_->config().eos_token_ids;
    if (auto eos = tokenizer_->eos_id()) {
      if (std::find(job->stop.eos_ids.begin(), job->stop.eos_ids.end(), *eos) ==
          job->stop.eos_ids.end()) {
        job->stop.eos_ids.push_back(*eos);
      }
    }
  }
  for (const auto& s : sp.stop()) {
    RS_CHECK_ARG(!s.empty(), "empty stop string");
    job->stop.stop_strings.push_back(s);
  }
  return job;
}

grpc::ServerWriteReactor<v1::GenerateEvent>* DecoderService::Generate(
    grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req) {
  if (!generator_) {
    if (grpc::Status st = PrecheckCall(ctx, server_->auth()); !st.ok()) {
      return new ErrorReactor(st);
    }
    return new ErrorReactor(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                         "this decode worker has no model loaded (--model)"));
  }
  return new GenerateReactor(this, server_->auth(), ctx, req);
}

grpc::ServerUnaryReactor* DecoderService::GetLoad(grpc::CallbackServerContext* ctx,
                                                  const v1::LoadRequest* /*req*/,
                                                  v1::LoadReport* resp) {
  return ServeUnary(ctx, server_, [this, resp] {
    resp->set_worker_id(worker_id());
    resp->set_device("cpu");
    if (!generator_) return OkStatus();
    const LoadSnapshot l = generator_->Load();
    resp->set_active_sequences(l.active);
    resp->set_queued_requests(l.queued);
    resp->set_queued_tokens(l.queued_tokens);
    resp->set_free_kv_bytes(l.kv_bytes_free);
    resp->set_max_active_sequences(l.max_active);
    resp->mutable_model()->set_hex(model_->fingerprint());
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* DecoderService::Cancel(grpc::CallbackServerContext* ctx,
                                                 const v1::CancelRequest* req,
                                                 v1::CancelResponse* resp) {
  return ServeUnary(ctx, server_, [this, req, resp] {
    RS_CHECK_ARG(!req->request_id().empty(), "request_id must not be empty");
    resp->set_found(generator_ && generator_->Cancel(req->request_id()));
    return OkStatus();
  });
}

}  // namespace ragserve::decoder
