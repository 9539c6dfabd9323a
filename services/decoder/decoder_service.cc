#include "services/decoder/decoder_service.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <optional>
#include <string_view>
#include <utility>

#include "kernels/cuda/device.h"
#include "kernels/cuda/ops.h"
#include "services/common/executor.h"
#include "services/common/grpc_status.h"
#include "services/common/grpc_util.h"
#include "services/common/logging.h"
#include "services/common/mutex.h"
#include "services/common/rag_template.h"
#include "services/common/stream_outbox.h"
#include "services/common/wire.h"
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

// The closing stats event of a finished request.
v1::GenerateEvent StatsEvent(const GenerateStats& r, const std::string& worker, double context_ms) {
  v1::GenerateEvent ev;
  auto* s = ev.mutable_stats();
  s->set_prompt_tokens(r.prompt_tokens);
  s->set_cached_prompt_tokens(r.cached_prompt_tokens);
  s->set_generated_tokens(r.generated_tokens);
  s->set_finish_reason(r.finish_reason);
  s->set_worker_id(worker);
  auto* t = s->mutable_timings();
  t->set_context_ms(context_ms);
  t->set_prefill_ms(r.prefill_ms);
  t->set_ttft_ms(r.ttft_ms + context_ms);
  t->set_decode_ms(r.decode_ms);
  t->set_total_ms(r.total_ms + context_ms);
  if (r.decode_ms > 0 && r.generated_tokens > 1) {
    t->set_decode_tokens_per_s((r.generated_tokens - 1) / (r.decode_ms / 1000.0));
  }
  return ev;
}

class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateEvent> {
 public:
  GenerateReactor(DecoderService* svc, const TokenAuth& auth, grpc::CallbackServerContext* ctx,
                  const v1::GenerateRequest* req)
      : svc_(svc),
        ctx_(ctx),
        outbox_(std::make_shared<Outbox>(this, MergeDeltas)),
        call_(std::make_shared<CallState>()),
        metrics_(svc->serving_metrics()->StartRequest()) {
    call_->generator = svc->generator();
    if (grpc::Status st = PrecheckCall(ctx, auth); !st.ok()) {
      outbox_->Close(st);
      return;
    }
    // Preparing the job may encode passages (a prefill): off the gRPC thread. The reactor (and
    // ctx, req) live until the outbox finishes the call, which only this task or the generator's
    // on_done does.
    // Refused, or dropped while queued, when the queue ahead would hold it past its deadline
    // (BoundedExecutor::Submit).
    Status submitted = svc->server()->executor().Submit(
        [this, req] { Start(*req); }, static_cast<int64_t>(req->ByteSizeLong()), SecondsLeft(*ctx),
        [this](const Status& shed) { Refuse(shed); });
    if (!submitted.ok()) Refuse(submitted);
  }

  // Ends a call the generator never took.
  void Refuse(const Status& st) {
    metrics_->OnDone(st, GenerateStats{});
    outbox_->Close(ToGrpcStatus(st));
  }

  // Runs on the executor. Once the job is submitted the generator may finish it and the reactor
  // may be deleted at any moment: nothing after Submit touches `this` or ctx_ (only copies).
  void Start(const v1::GenerateRequest& req) {
    std::shared_ptr<Outbox> box = outbox_;
    std::shared_ptr<RequestMetrics> metrics = metrics_;
    const Status st =
        CallCatchingExceptions("Generate", [&] { return PrepareAndSubmit(req, metrics); });
    if (!st.ok()) {
      metrics->OnDone(st, GenerateStats{});  // refused before the generator took it
      box->Close(ToGrpcStatus(st));
    }
  }

  void OnWriteDone(bool ok) override { outbox_->WriteDone(ok); }
  void OnCancel() override { call_->CancelOnce(); }
  void OnDone() override {
    outbox_->Detach();
    delete this;
  }

 private:
  // Whether the client left, and the submitted request's id: shared with Start, which may still
  // read it after the reactor is gone. Whichever of Start and OnCancel comes second cancels.
  struct CallState {
    Generator* generator = nullptr;
    Mutex mu;
    bool cancelled ABSL_GUARDED_BY(mu) = false;
    std::string id ABSL_GUARDED_BY(mu);  // set once the job is submitted

    void CancelOnce() {
      std::string submitted;
      {
        MutexLock lock(mu);
        cancelled = true;
        submitted = id;
      }
      if (!submitted.empty()) generator->Cancel(submitted);
    }
    void NoteSubmitted(const std::string& request_id) {
      bool cancel_now = false;
      {
        MutexLock lock(mu);
        id = request_id;
        cancel_now = cancelled;
      }
      if (cancel_now) generator->Cancel(request_id);  // the client left meanwhile
    }
  };

  Status PrepareAndSubmit(const v1::GenerateRequest& req,
                          const std::shared_ptr<RequestMetrics>& metrics) {
    const auto t0 = std::chrono::steady_clock::now();
    RS_ASSIGN_OR_RETURN(std::unique_ptr<GenerateJob> job, svc_->MakeJob(req));
    const double context_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    AttachCallbacks(job.get(), context_ms, metrics);
    if (ctx_->IsCancelled()) return Cancelled("the client cancelled the call");
    job->deadline = SteadyDeadlineIn(SecondsLeft(*ctx_));
    const std::string id = job->request_id;
    std::shared_ptr<CallState> call = call_;  // `this` may be deleted once Submit succeeds
    RS_RETURN_IF_ERROR(call->generator->Submit(std::move(job)));
    call->NoteSubmitted(id);
    return OkStatus();
  }

  // Stream deltas and the final stats to the outbox (which outlives the reactor).
  void AttachCallbacks(GenerateJob* job, double context_ms,
                       std::shared_ptr<RequestMetrics> metrics) {
    std::shared_ptr<Outbox> box = outbox_;
    job->on_delta = [box, metrics](const std::vector<int32_t>& ids, const std::string& text) {
      metrics->OnTokens(ids.size());
      v1::GenerateEvent ev;
      for (int32_t t : ids) ev.mutable_delta()->add_token_ids(t);
      ev.mutable_delta()->set_text(ToWireText(text));
      box->Push(std::move(ev));
    };
    job->on_done = [box, worker = svc_->worker_id(), context_ms, metrics](const Status& st,
                                                                          const GenerateStats& r) {
      metrics->OnDone(st, r);
      if (st.ok()) box->Push(StatsEvent(r, worker, context_ms));
      box->Close(ToGrpcStatus(st));
    };
  }

  DecoderService* svc_;
  grpc::CallbackServerContext* ctx_;
  std::shared_ptr<Outbox> outbox_;
  std::shared_ptr<CallState> call_;
  std::shared_ptr<RequestMetrics> metrics_;  // timed from the call's arrival
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
    const kernels::Ops* ops = &kernels::FastOps();
    RS_CHECK_ARG(svc->opts_.device == "cpu" || svc->opts_.device == "cuda",
                 "--device must be cpu or cuda, got '", svc->opts_.device, "'");
    if (svc->opts_.device == "cuda") {
      StatusOr<const kernels::Ops*> cuda = kernels::cuda::CudaOps();
      if (!cuda.ok()) return Annotate(cuda.status(), "--device cuda");
      ops = *cuda;
      RS_LOG(info, "decoder: model on {}", kernels::cuda::DeviceDescription(0));
    }
    RS_ASSIGN_OR_RETURN(
        ctxcache::ModelAndTokenizer mt,
        ctxcache::LoadModelDir(svc->opts_.model_dir, "--model", ops, svc->opts_.weights_dtype));
    svc->model_ = std::move(mt.model);
    svc->tokenizer_ = std::move(mt.tokenizer);
    RS_RETURN_IF_ERROR(CheckRagChatOptions(svc->opts_.rag_chat));
    if (!svc->opts_.no_chat_template) svc->chat_template_ = std::move(mt.chat_template);
    RS_LOG(info, "decoder: prompts use {}",
           svc->chat_template_
               ? "the model's chat template (sequential prefill: APE needs the RAG prompt)"
               : "the RAG prompt (no chat template)");
    RS_CHECK_ARG(svc->opts_.generator.max_active >= 1, "--max-active must be >= 1");
    RS_CHECK_ARG(svc->opts_.generator.max_queue >= 0, "--max-queue must be >= 0");
    RS_CHECK_ARG(svc->opts_.generator.prefill_chunk >= 1, "--prefill-chunk must be >= 1");
    // A dead GPU context cannot be revived in this process: stop (health turns NOT_SERVING,
    // calls drain) so the orchestrator restarts the worker; the router retries elsewhere.
    svc->opts_.generator.on_device_failure = [server](const Status& st) {
      RS_LOG(error, "decoder: stopping: {}", st.message());
      if (server != nullptr) server->RequestStop();
    };
    svc->generator_ =
        std::make_unique<Generator>(svc->model_.get(), svc->tokenizer_.get(), svc->opts_.generator);
    svc->serving_metrics_ = std::make_unique<ServingMetrics>(
        &MetricsRegistry::Default(), svc->model_name(), svc->generator_.get(),
        svc->opts_.generator.kv_budget_bytes);
    const std::string& mode = svc->opts_.context_mode;
    RS_CHECK_ARG(mode == "ape" || mode == "sequential",
                 "--context-mode must be ape or sequential, got '", mode, "'");
    if (mode == "ape") {
      ctxcache::BlockCacheOptions copts;
      copts.ram_limit_bytes = svc->opts_.passage_cache_bytes;
      copts.disk_dir = svc->opts_.passage_cache_dir;
      RS_ASSIGN_OR_RETURN(copts.store_dtype,
                          ctxcache::ParseStoreDType(svc->opts_.passage_dtype, "--passage-dtype"));
      RS_ASSIGN_OR_RETURN(svc->passage_cache_, ctxcache::BlockCache::Open(copts));
      ctxcache::ApeSettings as;
      as.prefix = kRagPrefix;
      as.temperature = svc->opts_.ape_temperature;
      as.scaling = svc->opts_.ape_scaling;
      as.store_dtype = copts.store_dtype;
      RS_ASSIGN_OR_RETURN(svc->ape_,
                          ctxcache::ApeEncoder::Create(svc->model_.get(), svc->tokenizer_.get(),
                                                       svc->passage_cache_.get(), as));
      const char* kSources[] = {"ram", "disk", "inflight", "computed", "remote"};
      for (int i = 0; i < 5; ++i) {
        svc->passages_by_source_[i] = &server->metrics().GetCounter(
            "ragserve_decoder_passages_total",
            "APE passages served to requests, by where their KV came from",
            {{"source", kSources[i]}});
      }
      if (!svc->opts_.ctxcache_addr.empty()) {
        ctxcache::RemoteBlockCacheOptions ro;
        ro.address = svc->opts_.ctxcache_addr;
        ro.timeout_ms = svc->opts_.ctxcache_timeout_ms;
        ro.channel.tls_ca = svc->opts_.ctxcache_tls_ca;
        ro.channel.tls_client_cert = server->config().tls_client_cert;
        ro.channel.tls_client_key = server->config().tls_client_key;
        ro.token = server->config().internal_token;
        RS_ASSIGN_OR_RETURN(svc->remote_cache_, ctxcache::RemoteBlockCache::Create(ro));
        ctxcache::RemoteBlockCache* remote = svc->remote_cache_.get();
        svc->ape_->SetRemote(
            [remote](const ctxcache::KeyId& key, const ctxcache::RemoteExpect& e) {
              return remote->Fetch(key, e);
            },
            &server->metrics());
        RS_LOG(info, "decoder: passages missing here are fetched from the context cache at {}",
               svc->opts_.ctxcache_addr);
      }
    } else if (!svc->opts_.ctxcache_addr.empty()) {
      RS_LOG(warn, "decoder: --ctxcache-addr is unused with --context-mode sequential");
    }
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

void DecoderService::NoteRecent(const std::string& passage) {
  constexpr size_t kMaxRecent = 4096;
  const std::string hex = wire::PassageKey(passage);
  MutexLock lock(recent_mu_);
  auto it = std::find(recent_passages_.begin(), recent_passages_.end(), hex);
  if (it != recent_passages_.end()) recent_passages_.erase(it);
  recent_passages_.push_back(hex);
  if (recent_passages_.size() > kMaxRecent) recent_passages_.pop_front();
}

std::string DecoderService::model_name() const {
  return opts_.served_model_name.empty() ? DefaultModelName(opts_.model_dir)
                                         : opts_.served_model_name;
}

std::string DecoderService::worker_id() const {
  return opts_.worker_id.empty() ? server_->address() : opts_.worker_id;
}

void DecoderService::Shutdown() {
  if (generator_) generator_->Shutdown();
}

namespace {

// The passages' texts; InvalidArgument for an empty one.
StatusOr<std::vector<std::string_view>> PassageTexts(const v1::GenerateRequest& req) {
  std::vector<std::string_view> passages;
  for (const auto& p : req.passages()) {
    RS_CHECK_ARG(!p.text().empty(), "passage '", p.id(), "' has no text");
    passages.push_back(p.text());
  }
  return passages;
}

}  // namespace

Status DecoderService::CheckRequest(const v1::GenerateRequest& req) const {
  RS_CHECK_ARG(req.sampling().max_tokens() > 0, "sampling.max_tokens must be > 0, got ",
               req.sampling().max_tokens());
  RS_CHECK_ARG(req.prompt_override().empty() || req.passages().empty(),
               "prompt_override and passages are exclusive");
  RS_CHECK_ARG(req.prompt_override().empty() || req.messages().empty(),
               "prompt_override and messages are exclusive");
  RS_CHECK_ARG(!req.question().empty() || !req.prompt_override().empty() || !req.messages().empty(),
               "question (or prompt_override, or messages) must not be empty");
  RS_CHECK_ARG(req.question().size() <= 65536, "question is over 64 KiB");
  RS_CHECK_ARG(req.passages_size() <= kMaxPassages, "at most ", kMaxPassages,
               " passages per request, got ", req.passages_size());
  return CheckChatMessages(req.messages());
}

StatusOr<std::unique_ptr<GenerateJob>> DecoderService::MakeJob(const v1::GenerateRequest& req) {
  if (!model_) return FailedPrecondition("this decode worker has no model loaded (--model)");
  RS_RETURN_IF_ERROR(CheckRequest(req));
  const bool chat = req.messages_size() > 0;
  // A model with a chat template gets every request but a raw prompt_override as a conversation
  // (a question is one user message) rendered with it, and prefilled sequentially: cached APE
  // passage KV is encoded after the RAG prefix of rag_template.h, not inside the template's
  // format. A model without one answers the last user message exactly like a question.
  const bool templated = chat_template_ != nullptr && req.prompt_override().empty();
  std::string question = req.question();
  if (chat && !templated) {
    RS_ASSIGN_OR_RETURN(question, LastUserContent(req.messages()));
  }

  auto job = std::make_unique<GenerateJob>();
  job->request_id = req.request_id().empty()
                        ? StrCat(worker_id(), "/", g_request_counter.fetch_add(1))
                        : req.request_id();
  const bool use_ape = ape_ && !templated && req.prompt_override().empty() &&
                       req.passages_size() > 0 && !req.sequential_context();
  if (use_ape) {
    // APE: the passages' KV comes parallel-encoded from this worker's cache; only the question
    // part is prefilled, after the longest passage.
    RS_ASSIGN_OR_RETURN(ApeContext ape, EncodeApeContext(req));
    job->prompt = tokenizer_->Encode(RagQuestionText(question), /*add_bos=*/false);
    job->ape = std::move(ape);
  } else if (templated) {
    RS_ASSIGN_OR_RETURN(job->prompt, ChatPromptTokens(req));
  } else {
    RS_ASSIGN_OR_RETURN(job->prompt, SequentialPromptTokens(req, question));
  }
  const auto& sp = req.sampling();
  job->resume.assign(req.resume_token_ids().begin(), req.resume_token_ids().end());
  const int remaining = sp.max_tokens() - static_cast<int>(job->resume.size());
  RS_CHECK_ARG(remaining >= 1, "resume_token_ids (", job->resume.size(),
               ") already reach max_tokens (", sp.max_tokens(), ")");
  RS_RETURN_IF_ERROR(SetSamplingAndStops(sp, remaining, job.get()));
  return job;
}

StatusOr<ApeContext> DecoderService::EncodeApeContext(const v1::GenerateRequest& req) {
  const auto& enc = req.encoding();
  RS_CHECK_ARG(enc.prefix().empty() || enc.prefix() == ape_->settings().prefix,
               "encoding.prefix differs from this worker's APE prefix");
  RS_CHECK_ARG(enc.temperature() >= 0 && enc.temperature() <= 4,
               "encoding.temperature must be in [0, 4], got ", enc.temperature());
  RS_CHECK_ARG(enc.scale() >= 0 && enc.scale() <= 4, "encoding.scale must be in [0, 4], got ",
               enc.scale());
  ApeContext ape;
  ape.prefix = ape_->prefix_kv();
  ape.context_tokens = static_cast<int>(ape_->prefix_tokens().size());
  ape.cached_tokens = ape.context_tokens;
  int64_t longest = 0;
  for (const auto& p : req.passages()) {
    RS_CHECK_ARG(!p.text().empty(), "passage '", p.id(), "' has no text");
    RS_ASSIGN_OR_RETURN(ctxcache::EncodedPassage e, ape_->Encode(p.text()));
    passages_by_source_[static_cast<int>(e.source)]->Inc();
    NoteRecent(p.text());
    longest = std::max(longest, e.kv->tokens);
    ape.context_tokens += static_cast<int>(e.kv->tokens);
    if (e.source != ctxcache::CacheSource::kComputed) {
      ape.cached_tokens += static_cast<int>(e.kv->tokens);
    }
    ape.passages.push_back(std::move(e.kv));
    const int64_t ctx = model_->config().max_position_embeddings;
    RS_CHECK_ARG(ctx <= 0 || ape.context_tokens < ctx, "passages (", ape.context_tokens,
                 " tokens so far) exceed the model context of ", ctx, " tokens");
  }
  const bool off = enc.disable_ape();
  ape.temperature =
      off ? 1.0f : (enc.temperature() > 0 ? enc.temperature() : ape_->settings().temperature);
  ape.scaling = off ? 1.0f : (enc.scale() > 0 ? enc.scale() : ape_->settings().scaling);
  ape.start_pos = ape_->passage_start() + static_cast<int32_t>(longest);
  return ape;
}

StatusOr<std::vector<int32_t>> DecoderService::SequentialPromptTokens(
    const v1::GenerateRequest& req, const std::string& question) const {
  std::string prompt = req.prompt_override();
  if (prompt.empty()) {
    RS_ASSIGN_OR_RETURN(std::vector<std::string_view> passages, PassageTexts(req));
    prompt = RagPrompt(question, passages);
  }
  const bool add_bos = model_->config().bos_token_id.has_value() || tokenizer_->bos_id();
  std::vector<int32_t> ids = tokenizer_->Encode(prompt, add_bos);
  if (add_bos && !tokenizer_->bos_id() && model_->config().bos_token_id) {
    ids.insert(ids.begin(), *model_->config().bos_token_id);
  }
  return ids;
}

StatusOr<std::vector<int32_t>> DecoderService::ChatPromptTokens(
    const v1::GenerateRequest& req) const {
  RS_ASSIGN_OR_RETURN(std::vector<std::string_view> passages, PassageTexts(req));
  google::protobuf::RepeatedPtrField<v1::ChatMessage> question;
  if (req.messages().empty()) {
    v1::ChatMessage* m = question.Add();
    m->set_role("user");
    m->set_content(req.question());
  }
  RS_ASSIGN_OR_RETURN(nlohmann::ordered_json conv,
                      ChatConversation(req.messages().empty() ? question : req.messages(), passages,
                                       opts_.rag_chat));
  RS_ASSIGN_OR_RETURN(std::string prompt,
                      chat_template_->Render(conv, /*add_generation_prompt=*/true));
  // As transformers' apply_chat_template(tokenize=True): the template writes BOS and the other
  // special tokens itself, as text.
  return tokenizer_->Encode(prompt, /*add_bos=*/false, /*allow_special=*/true);
}

Status DecoderService::SetSamplingAndStops(const v1::SamplingParams& sp, int max_tokens,
                                           GenerateJob* job) const {
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
  job->stop.max_tokens = max_tokens;
  if (!sp.ignore_eos()) {
    job->stop.eos_ids = model_->config().eos_token_ids;
    if (auto eos = tokenizer_->eos_id()) {
      if (std::find(job->stop.eos_ids.begin(), job->stop.eos_ids.end(), *eos) ==
          job->stop.eos_ids.end()) {
        job->stop.eos_ids.push_back(*eos);
      }
    }
  }
  RS_CHECK_ARG(sp.stop_size() <= kMaxStopStrings, "at most ", kMaxStopStrings,
               " stop strings, got ", sp.stop_size());
  for (const auto& s : sp.stop()) {
    RS_CHECK_ARG(!s.empty(), "empty stop string");
    RS_CHECK_ARG(s.size() <= kMaxStopStringBytes, "a stop string is ", s.size(), " bytes; at most ",
                 kMaxStopStringBytes);
    job->stop.stop_strings.push_back(s);
  }
  return OkStatus();
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
                                                  const v1::LoadRequest* req,
                                                  v1::LoadReport* resp) {
  return ServeCheapUnary(ctx, server_, req, resp, [this, resp] {
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
    MutexLock lock(recent_mu_);
    for (const auto& h : recent_passages_) resp->add_cached_passage_keys(h);
    return OkStatus();
  });
}

grpc::ServerUnaryReactor* DecoderService::Cancel(grpc::CallbackServerContext* ctx,
                                                 const v1::CancelRequest* req,
                                                 v1::CancelResponse* resp) {
  return ServeUnary(ctx, server_, req, resp, [this, req, resp] {
    RS_CHECK_ARG(!req->request_id().empty(), "request_id must not be empty");
    resp->set_found(generator_ && generator_->Cancel(req->request_id()));
    return OkStatus();
  });
}

}  // namespace ragserve::decoder
