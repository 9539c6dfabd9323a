#include "services/router/router_service.h"

#include <grpcpp/client_context.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <utility>

#include "services/common/auth.h"
#include "services/common/client.h"
#include "services/common/grpc_status.h"
#include "services/common/grpc_util.h"
#include "services/common/logging.h"
#include "services/common/metrics.h"
#include "services/common/wire.h"
#include "services/router/ingest_chunking.h"

namespace ragserve::router {

StatusOr<std::unique_ptr<RouterService>> RouterService::Create(ServiceServer* server,
                                                               RouterOptions opts) {
  RS_CHECK_ARG(!opts.index_addr.empty(), "--index-addr must not be empty");
  std::unique_ptr<RouterService> svc(new RouterService(server, std::move(opts)));
  ChannelOptions copts;
  copts.tls_ca = svc->opts_.downstream_tls_ca;
  copts.tls_client_cert = server->config().tls_client_cert;
  copts.tls_client_key = server->config().tls_client_key;
  // The index and the context cache are single peers (PeerChannel: calls wait for them while
  // they start); decode workers are many, and the pool fails over between them instead.
  RS_ASSIGN_OR_RETURN(svc->index_peer_, PeerChannel::Create(svc->opts_.index_addr, copts));
  svc->index_ = v1::IndexService::NewStub(svc->index_peer_->channel());
  if (!svc->opts_.ctxcache_addr.empty()) {
    RS_ASSIGN_OR_RETURN(svc->ctxcache_peer_, PeerChannel::Create(svc->opts_.ctxcache_addr, copts));
    svc->ctxcache_ = v1::ContextCacheService::NewStub(svc->ctxcache_peer_->channel());
  }
  RS_ASSIGN_OR_RETURN(svc->policy_, ParsePolicy(svc->opts_.policy));
  RS_CHECK_ARG(svc->opts_.max_attempts >= 1, "--max-attempts must be >= 1");
  RS_CHECK_ARG(svc->opts_.default_top_k >= 1 && svc->opts_.default_top_k <= 64,
               "--default-top-k must be in 1..64");
  RS_CHECK_ARG(svc->opts_.workers.call_timeout_s > 0, "--worker-timeout must be > 0");
  RS_CHECK_ARG(svc->opts_.max_ingest_docs >= 1, "--max-ingest-docs must be >= 1");
  RS_CHECK_ARG(svc->opts_.worker_idle_timeout_s >= 0, "--worker-idle-timeout must be >= 0");
  RS_CHECK_ARG(svc->opts_.index_timeout_s >= 0 && svc->opts_.ctxcache_timeout_s >= 0,
               "--index-timeout and --ctxcache-timeout must be >= 0");
  if (svc->opts_.worker_idle_timeout_s > 0) {
    svc->stall_watchdog_ = std::make_unique<StallWatchdog>(
        std::chrono::milliseconds(static_cast<int64_t>(svc->opts_.worker_idle_timeout_s * 1000)));
  }
  if (svc->opts_.ingest_chunk_tokens != 0) {
    RS_RETURN_IF_ERROR(Annotate(chunking::ValidateChunkOptions({svc->opts_.ingest_chunk_tokens,
                                                                svc->opts_.ingest_chunk_overlap}),
                                "--ingest-chunk-tokens / --ingest-chunk-overlap"));
  }
  WorkerPoolOptions wopts = svc->opts_.workers;
  wopts.token = svc->opts_.downstream_token;
  wopts.channel = copts;
  wopts.channel.keepalive_time_ms = static_cast<int>(svc->opts_.worker_keepalive_s * 1000);
  RS_ASSIGN_OR_RETURN(svc->pool_, WorkerPool::Create(std::move(wopts)));
  // Queries get the server's request memory budget (--executor-queue-mb) of their own.
  svc->query_executor_ = std::make_unique<BoundedExecutor>(
      svc->opts_.query_threads, svc->opts_.query_queue,
      int64_t{server->config().executor_queue_mb} << 20,
      ExecutorFlagNames{"--query-threads", "--query-queue", "--executor-queue-mb"});
  svc->metrics_ = std::make_unique<RouterMetrics>(
      &MetricsRegistry::Default(), svc->opts_.served_model_name, svc->query_executor_.get());
  return svc;
}

namespace {

// "<hostname>-<pid>-<64 random bits>": request ids of router replicas never collide, even when
// they listen on the same address (0.0.0.0:50051) on different hosts or after a restart.
std::string NewRequestIdPrefix() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0) host[0] = '\0';
  std::random_device rd;
  const uint64_t r = (uint64_t{rd()} << 32) ^ rd();
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(r));
  return StrCat(host, "-", getpid(), "-", hex);
}

}  // namespace

RouterService::RouterService(ServiceServer* server, RouterOptions opts)
    : server_(server), opts_(std::move(opts)), request_prefix_(NewRequestIdPrefix()) {}

std::unique_ptr<grpc::ClientContext> RouterService::DownstreamContext(
    const grpc::CallbackServerContext& ctx, PeerChannel* peer, double timeout_s) const {
  auto deadline = ctx.deadline();
  if (timeout_s > 0) {
    deadline =
        std::min(deadline, std::chrono::system_clock::now() +
                               std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  }
  peer->AwaitFirstConnection(deadline, [&ctx] { return ctx.IsCancelled(); });
  // The client's cancellation propagates; the deadline is set here (the earlier one).
  auto cctx = grpc::ClientContext::FromCallbackServerContext(
      ctx, grpc::PropagationOptions().disable_deadline_propagation());
  cctx->set_deadline(deadline);
  AttachToken(cctx.get(), opts_.downstream_token);
  return cctx;
}

Status RouterService::PeerError(const grpc::CallbackServerContext& ctx, const grpc::Status& st,
                                std::string_view what, std::string_view service,
                                const std::string& addr, double timeout_s,
                                std::string_view flag) const {
  Status s = FromGrpcStatus(st);
  if (s.code() == StatusCode::kUnavailable) {
    return Unavailable(StrCat(what, ": ", service, " at ", addr, " unavailable: ", s.message()));
  }
  if (s.code() == StatusCode::kDeadlineExceeded && !CallerDone(ctx)) {
    // The router's timeout ended the call, not the client's deadline: the peer is hung (or too
    // slow); the client may retry.
    return Unavailable(StrCat(what, ": ", service, " at ", addr, " did not answer within ",
                              timeout_s, " s (router ", flag, ")"));
  }
  return Annotate(s, what);
}

template <typename Req, typename Resp, typename Method>
grpc::ServerUnaryReactor* RouterService::ForwardToIndex(grpc::CallbackServerContext* ctx,
                                                        const Req* req, Resp* resp, Method method,
                                                        const char* what, bool cheap) {
  auto serve = cheap ? ServeCheapUnary : ServeUnary;
  return serve(ctx, server_, req, resp, [this, ctx, req, resp, method, what] {
    auto cctx = DownstreamContext(*ctx, index_peer_.get(), opts_.index_timeout_s);
    const grpc::Status st = ((*index_).*method)(cctx.get(), *req, resp);
    if (st.ok()) return OkStatus();
    // Errors about the request keep their code; a missing index service says where it looked.
    const Status s = FromGrpcStatus(st);
    if (s.code() != StatusCode::kUnavailable && s.code() != StatusCode::kDeadlineExceeded) {
      return s;
    }
    return IndexError(*ctx, st, what);
  });
}

Status RouterService::CheckMayCreate(const grpc::ServerContextBase& ctx) const {
  const TokenAuth& auth = server_->auth();
  if (!auth.enabled() || auth.CallerOf(ctx) == Credential::kAdmin) return OkStatus();
  return PermissionDenied(
      "Ingest with create_spec creates a collection: that needs the admin credential (create it "
      "with CreateCollection first, or ingest without create_spec)");
}

grpc::ServerUnaryReactor* RouterService::CreateCollection(grpc::CallbackServerContext* ctx,
                                                          const v1::CreateCollectionRequest* req,
                                                          v1::CreateCollectionResponse* resp) {
  return ForwardToIndex(ctx, req, resp, &v1::IndexService::Stub::CreateCollection,
                        "create collection");
}

grpc::ServerUnaryReactor* RouterService::DropCollection(grpc::CallbackServerContext* ctx,
                                                        const v1::DropCollectionRequest* req,
                                                        v1::DropCollectionResponse* resp) {
  return ForwardToIndex(ctx, req, resp, &v1::IndexService::Stub::DropCollection, "drop collection");
}

grpc::ServerUnaryReactor* RouterService::ListCollections(grpc::CallbackServerContext* ctx,
                                                         const v1::ListCollectionsRequest* req,
                                                         v1::ListCollectionsResponse* resp) {
  return ForwardToIndex(ctx, req, resp, &v1::IndexService::Stub::ListCollections,
                        "list collections", /*cheap=*/true);
}

grpc::ServerUnaryReactor* RouterService::Stats(grpc::CallbackServerContext* ctx,
                                               const v1::StatsRequest* req,
                                               v1::StatsResponse* resp) {
  return ForwardToIndex(ctx, req, resp, &v1::IndexService::Stub::Stats, "stats", /*cheap=*/true);
}

grpc::ServerUnaryReactor* RouterService::Delete(grpc::CallbackServerContext* ctx,
                                                const v1::DeleteRequest* req,
                                                v1::DeleteResponse* resp) {
  return ForwardToIndex(ctx, req, resp, &v1::IndexService::Stub::Delete, "delete");
}

grpc::ServerUnaryReactor* RouterService::Embed(grpc::CallbackServerContext* ctx,
                                               const v1::EmbedRequest* req,
                                               v1::EmbedResponse* resp) {
  return ForwardToIndex(ctx, req, resp, &v1::IndexService::Stub::Embed, "embed");
}

// ---- Query -------------------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

bool MergeAnswerDeltas(v1::QueryEvent* back, const v1::QueryEvent& next) {
  if (!back->has_delta() || !next.has_delta()) return false;
  auto* d = back->mutable_delta();
  d->mutable_text()->append(next.delta().text());
  for (int32_t id : next.delta().token_ids()) d->add_token_ids(id);
  return true;
}

Histogram& QueryLatency(const std::string& what) {
  return MetricsRegistry::Default().GetHistogram("ragserve_router_query_seconds",
                                                 "Router query phases: search, ttft, total",
                                                 LatencyBuckets(), {{"phase", what}});
}

}  // namespace

class QueryReactor final : public grpc::ServerWriteReactor<v1::QueryEvent> {
 public:
  QueryReactor(RouterService* svc, grpc::CallbackServerContext* ctx, const v1::QueryRequest* req)
      : out_(std::make_shared<StreamOutbox<v1::QueryEvent>>(this, MergeAnswerDeltas)) {
    if (grpc::Status st = PrecheckCall(ctx, svc->server_->auth()); !st.ok()) {
      out_->Close(st);
      return;
    }
    auto out = out_;
    // A queued query holds its request: counted against the request memory budget.
    Status submitted =
        svc->query_executor_->Submit([svc, ctx, req, out] { svc->RunQuery(ctx, *req, out); },
                                     static_cast<int64_t>(req->ByteSizeLong()));
    if (!submitted.ok()) out_->Close(ToGrpcStatus(submitted));
  }
  void OnWriteDone(bool ok) override { out_->WriteDone(ok); }
  void OnDone() override {
    out_->Detach();
    delete this;
  }

 private:
  std::shared_ptr<StreamOutbox<v1::QueryEvent>> out_;
};

grpc::ServerWriteReactor<v1::QueryEvent>* RouterService::Query(grpc::CallbackServerContext* ctx,
                                                               const v1::QueryRequest* req) {
  return new QueryReactor(this, ctx, req);
}

void RouterService::RunQuery(grpc::CallbackServerContext* ctx, const v1::QueryRequest& req,
                             const std::shared_ptr<StreamOutbox<v1::QueryEvent>>& out) {
  metrics_->QueryStarted();
  const Status st = DoQuery(ctx, req, out.get());
  metrics_->QueryEnded();
  MetricsRegistry::Default()
      .GetCounter("ragserve_router_queries_total", "Queries finished, by code",
                  {{"code", std::string(StatusCodeName(st.code()))}})
      .Inc();
  out->Close(ToGrpcStatus(st));  // last: the call (and ctx) may end right after this
}

// What a query's generation has produced so far, across workers.
struct RouterService::Answer {
  int delivered = 0;  // answer tokens streamed to the client
  int retries = 0;    // workers that failed mid-query and were replaced
  bool first = false;
  double ttft_ms = 0;
  bool have_stats = false;
  v1::GenerateStats stats;  // the last worker's
};

Status RouterService::DoQuery(grpc::CallbackServerContext* ctx, const v1::QueryRequest& req,
                              StreamOutbox<v1::QueryEvent>* out) {
  const auto t0 = Clock::now();
  RS_RETURN_IF_ERROR(CheckQuery(*ctx, req));
  v1::GenerateRequest greq = MakeGenerateRequest(req);
  PickHint hint;
  hint.other_tokens = static_cast<int64_t>(PromptBytes(req) / 4 + 32);
  double search_ms = 0;
  if (!req.collection().empty()) {
    // 1. Retrieve: the index embeds the question and searches; the passages go to the client.
    v1::SearchResponse found;
    RS_RETURN_IF_ERROR(Search(ctx, req, &found));
    search_ms = MsSince(t0);
    QueryLatency("search").Observe(search_ms / 1000);
    out->Push(PassagesEvent(req, found, &greq, &hint));
  }
  // 2. Generate on a worker; a worker lost before or during the answer hands over to another.
  Answer answer;
  RS_RETURN_IF_ERROR(GenerateWithFailover(ctx, t0, std::move(hint), &greq, out, &answer));
  // 3. Stats.
  v1::QueryEvent stats = StatsEvent(t0, search_ms, answer);
  metrics_->Answered(stats.stats());
  out->Push(std::move(stats));
  return OkStatus();
}

namespace {

constexpr size_t kMaxPromptBytes = size_t{1} << 20;  // a raw prompt or a whole conversation

// The text retrieval searches with: the question, else the last user message of a chat.
std::string SearchText(const v1::QueryRequest& req) {
  if (!req.question().empty()) return req.question();
  for (int i = req.messages_size() - 1; i >= 0; --i) {
    if (req.messages(i).role() == "user") return req.messages(i).content();
  }
  return "";
}

}  // namespace

size_t RouterService::PromptBytes(const v1::QueryRequest& req) {
  size_t bytes = req.question().size() + req.prompt().size();
  for (const auto& m : req.messages()) bytes += m.role().size() + m.content().size();
  return bytes;
}

Status RouterService::CheckQuery(const grpc::CallbackServerContext& ctx,
                                 const v1::QueryRequest& req) const {
  const bool chat = req.messages_size() > 0;
  const bool raw = !req.prompt().empty();
  RS_CHECK_ARG(!chat || !raw, "messages and prompt are exclusive");
  RS_CHECK_ARG(!raw || (req.collection().empty() && req.question().empty()),
               "prompt (raw completion) takes no collection and no question");
  if (!chat && !raw) {
    RS_CHECK_ARG(!req.collection().empty(), "collection must not be empty");
    RS_CHECK_ARG(!req.question().empty(), "question must not be empty");
  }
  if (chat && !req.collection().empty()) {
    RS_CHECK_ARG(!SearchText(req).empty(),
                 "a chat query with a collection needs a question or a non-empty user message");
  }
  RS_CHECK_ARG(req.question().size() <= 65536, "question is ", req.question().size(),
               " bytes; the limit is 64 KiB");
  RS_CHECK_ARG(PromptBytes(req) <= kMaxPromptBytes, "the prompt and messages hold ",
               PromptBytes(req), " bytes; the limit is 1 MiB");
  RS_CHECK_ARG(req.top_k() >= 0 && req.top_k() <= 64, "top_k must be in 0..64, got ", req.top_k());
  RS_CHECK_ARG(req.vector_size() <= 65536, "vector has ", req.vector_size(),
               " components; the limit is 65536");
  RS_CHECK_ARG(req.sampling().max_tokens() >= 0, "sampling.max_tokens must be >= 0");
  // A query queued for a caller that has left is not run.
  RS_RETURN_IF_ERROR(Annotate(CallerStillWaiting(ctx), "query not run"));
  return OkStatus();
}

Status RouterService::Search(grpc::CallbackServerContext* ctx, const v1::QueryRequest& req,
                             v1::SearchResponse* found) {
  v1::SearchRequest sreq;
  sreq.set_collection(req.collection());
  auto* q = sreq.add_queries();
  q->set_text(SearchText(req));
  *q->mutable_vector() = req.vector();  // query by vector: the index checks its dimension
  sreq.set_retrieval(req.retrieval());
  if (req.has_fusion()) *sreq.mutable_fusion() = req.fusion();
  sreq.set_k(req.top_k() > 0 ? req.top_k() : opts_.default_top_k);
  *sreq.mutable_filter() = req.filter();
  sreq.set_include_text(true);
  auto cctx = DownstreamContext(*ctx, index_peer_.get(), opts_.index_timeout_s);
  const grpc::Status gst = index_->Search(cctx.get(), sreq, found);
  if (gst.ok()) return OkStatus();
  return IndexError(*ctx, gst, "search");
}

v1::GenerateRequest RouterService::MakeGenerateRequest(const v1::QueryRequest& req) {
  v1::GenerateRequest greq;
  greq.set_request_id(StrCat(request_prefix_, "/q", next_request_.fetch_add(1)));
  greq.set_question(req.question());
  *greq.mutable_messages() = req.messages();
  greq.set_prompt_override(req.prompt());
  greq.set_sequential_context(!req.use_context_cache());
  *greq.mutable_sampling() = req.sampling();
  if (greq.sampling().max_tokens() == 0) {
    greq.mutable_sampling()->set_max_tokens(opts_.default_max_tokens);
  }
  return greq;
}

v1::QueryEvent RouterService::PassagesEvent(const v1::QueryRequest& req,
                                            const v1::SearchResponse& found,
                                            v1::GenerateRequest* greq, PickHint* hint) {
  v1::QueryEvent ev;
  auto* ps = ev.mutable_passages();
  if (found.results_size() == 0) return ev;
  for (const auto& h : found.results(0).hits()) {
    auto* p = ps->add_passages();
    p->set_id(h.id());
    p->set_score(h.score());
    p->set_text(h.text());
    p->set_metadata_json(h.metadata_json());
    p->set_document_id(h.document_id());
    p->set_chunk_index(h.chunk_index());
    p->set_offset(h.offset());
    auto* cp = greq->add_passages();
    cp->set_id(h.id());
    cp->set_text(h.text());
    hint->passage_tokens.push_back(static_cast<int64_t>(h.text().size() / 4 + 1));
    if (req.use_context_cache()) {
      // Workers report the content keys of passages resident in their KV cache.
      hint->cache_keys.push_back(wire::PassageKey(h.text()));
    }
  }
  return ev;
}

bool RouterService::CallerDone(const grpc::CallbackServerContext& ctx) {
  return ctx.IsCancelled() || ctx.deadline() <= std::chrono::system_clock::now();
}

Status RouterService::GenerateWithFailover(grpc::CallbackServerContext* ctx, Clock::time_point t0,
                                           PickHint hint, v1::GenerateRequest* greq,
                                           StreamOutbox<v1::QueryEvent>* out, Answer* answer) {
  // The next worker re-prefills the prompt plus the tokens already sent (resume_token_ids) and
  // continues the answer.
  std::string last_error;
  CallOutcome last = CallOutcome::kWorkerFault;
  for (int attempt = 0; attempt < opts_.max_attempts; ++attempt) {
    if (CallerDone(*ctx)) {
      return ctx->IsCancelled() ? Cancelled("query cancelled by the client")
                                : DeadlineExceeded("the query's deadline passed");
    }
    auto lease = pool_->Pick(policy_, hint);
    if (!lease.ok()) {
      if (attempt == 0) return lease.status();
      return Unavailable(StrCat("answer interrupted after ", answer->delivered,
                                " tokens and no other worker could continue: ",
                                lease.status().message(), " (last error: ", last_error, ")"));
    }
    WorkerLease worker = std::move(*lease);
    hint.exclude.insert(worker->address());
    metrics_->Routed(worker->address());
    const grpc::Status gst = StreamAnswer(ctx, *worker.get(), t0, greq, out, answer);
    last = ClassifyWorkerCall(gst.error_code(), CallerDone(*ctx));
    pool_->Report(*worker.get(), last, gst);
    if (gst.ok()) return OkStatus();
    if (ctx->IsCancelled()) return Cancelled("query cancelled by the client");
    metrics_->WorkerError(worker->address());
    if (!ShouldFailOver(last)) {
      return Annotate(FromGrpcStatus(gst), StrCat("decode worker ", worker->address()));
    }
    last_error = StrCat(worker->address(), ": ", gst.error_message());
    RS_LOG(warn, "router: worker {} failed after {} tokens ({}); moving the request",
           worker->address(), answer->delivered, gst.error_message());
    if (greq->sampling().max_tokens() <= greq->resume_token_ids_size()) break;  // answer complete
    ++answer->retries;
    if (attempt + 1 == opts_.max_attempts) {
      const std::string msg =
          StrCat("decode failed on ", opts_.max_attempts, " workers; last: ", last_error);
      return last == CallOutcome::kTryElsewhere ? ResourceExhausted(msg) : Unavailable(msg);
    }
  }
  return OkStatus();
}

grpc::Status RouterService::StreamAnswer(grpc::CallbackServerContext* ctx, Worker& worker,
                                         Clock::time_point t0, v1::GenerateRequest* greq,
                                         StreamOutbox<v1::QueryEvent>* out, Answer* answer) {
  // A worker that accepts the call and never answers must not hold this thread past
  // call_timeout_s, whatever deadline (or none) the client set: the client's cancellation is
  // propagated, the deadline is the earlier of the client's and that cap.
  auto cctx = grpc::ClientContext::FromCallbackServerContext(
      *ctx, grpc::PropagationOptions().disable_deadline_propagation());
  AttachToken(cctx.get(), opts_.downstream_token);
  const auto cap =
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(pool_->options().call_timeout_s * 1000));
  cctx->set_deadline(std::min(ctx->deadline(), cap));
  auto reader = worker.stub()->Generate(cctx.get(), *greq);
  // A worker that stops sending mid-answer (hung, SIGSTOPped: its connection stays open) is
  // cancelled after worker_idle_timeout_s of silence and treated as a failed worker.
  std::unique_ptr<StallWatchdog::Watch> watch;
  if (stall_watchdog_) watch = stall_watchdog_->Start(cctx.get());
  v1::GenerateEvent ev;
  while (reader->Read(&ev)) {
    if (watch) watch->Touch();
    if (ev.has_delta()) {
      if (!answer->first && !ev.delta().token_ids().empty()) {
        answer->first = true;
        answer->ttft_ms = MsSince(t0);
        QueryLatency("ttft").Observe(answer->ttft_ms / 1000);
      }
      // Sent tokens are also what a replacement worker resumes from.
      for (int32_t id : ev.delta().token_ids()) greq->add_resume_token_ids(id);
      answer->delivered += ev.delta().token_ids_size();
      v1::QueryEvent qev;
      *qev.mutable_delta()->mutable_token_ids() = ev.delta().token_ids();
      qev.mutable_delta()->set_text(ev.delta().text());
      out->Push(std::move(qev));
    } else if (ev.has_stats()) {
      answer->stats = ev.stats();
      answer->have_stats = true;
    }
  }
  grpc::Status st = reader->Finish();
  if (watch && watch->fired() && !st.ok() && !CallerDone(*ctx)) {
    st = grpc::Status(grpc::StatusCode::UNAVAILABLE,
                      StrCat("worker sent nothing for ", opts_.worker_idle_timeout_s,
                             " s mid-answer (router --worker-idle-timeout)"));
  }
  return st;
}

v1::QueryEvent RouterService::StatsEvent(Clock::time_point t0, double search_ms,
                                         const Answer& answer) {
  v1::QueryEvent ev;
  auto* qs = ev.mutable_stats();
  auto* t = qs->mutable_timings();
  t->set_search_ms(search_ms);
  if (answer.have_stats) {
    const v1::GenerateStats& g = answer.stats;
    t->set_context_ms(g.timings().context_ms());
    t->set_prefill_ms(g.timings().prefill_ms());
    t->set_decode_ms(g.timings().decode_ms());
    t->set_decode_tokens_per_s(g.timings().decode_tokens_per_s());
    qs->set_prompt_tokens(g.prompt_tokens());
    qs->set_cached_prompt_tokens(g.cached_prompt_tokens());
    qs->set_finish_reason(g.finish_reason());
    qs->set_worker_id(g.worker_id());
  }
  t->set_ttft_ms(answer.ttft_ms);
  t->set_total_ms(MsSince(t0));
  qs->set_generated_tokens(answer.delivered);
  qs->set_retries(answer.retries);
  QueryLatency("total").Observe(t->total_ms() / 1000);
  return ev;
}

// ---- Ingest ------------------------------------------------------------------------------------

// Client-streamed documents forwarded to the index's Upsert stream as they arrive. Blocking index
// calls run on the server executor, one message at a time (the next read starts after the write).
class IngestReactor final : public grpc::ServerReadReactor<v1::IngestRequest> {
 public:
  IngestReactor(RouterService* svc, grpc::CallbackServerContext* ctx, v1::IngestResponse* resp)
      : svc_(svc), ctx_(ctx), resp_(resp) {
    if (grpc::Status st = PrecheckCall(ctx, svc->server_->auth()); !st.ok()) {
      Finish(st);
      return;
    }
    ReadNext();
  }

  void OnReadDone(bool ok) override {
    // The message is held until forwarded, within the stream's reservation (StreamReadBudget).
    if (ok) budget_.Account(msg_);
    if (!ok) budget_.Release();
    Status submitted = budget_.Submit(
        [this, ok] {
          // A message queued for a caller that has left is not forwarded (after a flood the
          // router kept writing abandoned messages to a busy index, blocking its executor).
          if (Status st = CallerStillWaiting(*ctx_); !st.ok()) {
            Abort(Annotate(st, "ingest not forwarded"));
            return;
          }
          if (!ok) {
            Complete();
            return;
          }
          if (Status st = Forward(); !st.ok()) {
            Abort(st);
            return;
          }
          ReadNext();
        },
        *ctx_, [this](const Status& shed) { Abort(Annotate(shed, "ingest not forwarded")); });
    if (!submitted.ok()) Abort(submitted);
  }

  void OnDone() override { delete this; }

 private:
  // Reads the next message once the request memory budget can hold one (StreamReadBudget).
  void ReadNext() {
    if (Status st = budget_.Reserve(); !st.ok()) {
      Abort(Annotate(st, "ingest message not read"));
      return;
    }
    StartRead(&msg_);
  }

  Status Forward() {
    if (collection_.empty()) {
      RS_CHECK_ARG(!msg_.collection().empty(), "the first IngestRequest must name the collection");
      collection_ = msg_.collection();
      if (!msg_.create_spec().name().empty()) {
        RS_CHECK_ARG(msg_.create_spec().name() == collection_, "create_spec.name '",
                     msg_.create_spec().name(), "' differs from collection '", collection_, "'");
        RS_RETURN_IF_ERROR(svc_->CheckMayCreate(*ctx_));
        auto cctx =
            svc_->DownstreamContext(*ctx_, svc_->index_peer_.get(), svc_->opts_.index_timeout_s);
        v1::CreateCollectionRequest creq;
        *creq.mutable_spec() = msg_.create_spec();
        v1::CreateCollectionResponse cresp;
        const grpc::Status st = svc_->index_->CreateCollection(cctx.get(), creq, &cresp);
        if (!st.ok() && st.error_code() != grpc::StatusCode::ALREADY_EXISTS) {
          return svc_->IndexError(*ctx_, st, "create collection");
        }
      }
      // A stream as long as the client's: no router timeout (0).
      upsert_ctx_ = svc_->DownstreamContext(*ctx_, svc_->index_peer_.get(), 0);
      writer_ = svc_->index_->Upsert(upsert_ctx_.get(), &upsert_resp_);
    } else {
      RS_CHECK_ARG(msg_.collection().empty() || msg_.collection() == collection_,
                   "collection changed mid-stream from '", collection_, "' to '", msg_.collection(),
                   "'");
    }
    pre_encode_ = pre_encode_ || msg_.pre_encode();
    if (pre_encode_ && !svc_->ctxcache_) {
      return FailedPrecondition("pre_encode needs a context cache (router --ctxcache-addr)");
    }
    if (msg_.documents_size() == 0) return OkStatus();
    RS_CHECK_ARG(msg_.documents_size() <= svc_->opts_.max_ingest_docs, "IngestRequest holds ",
                 msg_.documents_size(), " documents; the limit per message is ",
                 svc_->opts_.max_ingest_docs, " (router --max-ingest-docs)");
    const int chunk_tokens = svc_->opts_.ingest_chunk_tokens;
    if (chunk_tokens == 0) return Write(msg_.documents(), /*split=*/false);
    google::protobuf::RepeatedPtrField<v1::Document> passages;
    ChunkDocuments(msg_.documents(), {chunk_tokens, svc_->opts_.ingest_chunk_overlap}, &passages);
    if (passages.size() == msg_.documents_size()) return Write(msg_.documents(), false);
    return Write(passages, /*split=*/true);
  }

  // Sends documents to the index and pre-encodes them if asked: in one upsert, or with `split`
  // (a message whose documents were cut into passages, which may be more documents and bytes than
  // the message that brought them) in upserts of at most --max-ingest-docs documents and at most
  // that message's size (which fit the gRPC message limit).
  Status Write(const google::protobuf::RepeatedPtrField<v1::Document>& docs, bool split) {
    const size_t max_bytes = split ? msg_.ByteSizeLong() : SIZE_MAX;
    v1::UpsertRequest u;
    u.set_collection(collection_);
    size_t bytes = u.ByteSizeLong();
    for (const v1::Document& d : docs) {
      const size_t size = d.ByteSizeLong() + 8;  // + the field's tag and length
      if (split && u.documents_size() > 0 &&
          (u.documents_size() == svc_->opts_.max_ingest_docs || bytes + size > max_bytes)) {
        if (!writer_->Write(u)) return FinishUpsert("index upsert");
        u.clear_documents();
        bytes = u.ByteSizeLong();
      }
      *u.add_documents() = d;
      bytes += size;
    }
    if (!writer_->Write(u)) return FinishUpsert("index upsert");
    if (pre_encode_) RS_RETURN_IF_ERROR(PreEncode(docs));
    return OkStatus();
  }

  // Encodes the documents' passages in the context cache (APE), up to 256 per call.
  Status PreEncode(const google::protobuf::RepeatedPtrField<v1::Document>& docs) {
    for (int i = 0; i < docs.size(); i += 256) {
      v1::EncodeRequest req;
      for (int j = i; j < std::min(docs.size(), i + 256); ++j) {
        if (docs[j].text().empty()) continue;
        auto* p = req.add_passages();
        p->set_id(docs[j].id());
        p->set_text(docs[j].text());
      }
      if (req.passages_size() == 0) continue;
      auto cctx = svc_->DownstreamContext(*ctx_, svc_->ctxcache_peer_.get(),
                                          svc_->opts_.ctxcache_timeout_s);
      v1::EncodeResponse resp;
      const grpc::Status st = svc_->ctxcache_->Encode(cctx.get(), req, &resp);
      if (!st.ok()) {
        return svc_->PeerError(*ctx_, st, "pre-encode", "context cache", svc_->opts_.ctxcache_addr,
                               svc_->opts_.ctxcache_timeout_s, "--ctxcache-timeout");
      }
      pre_encoded_ += resp.results_size();
    }
    return OkStatus();
  }

  void Complete() {
    if (!writer_) {
      Finish(ToGrpcStatus(InvalidArgument("no IngestRequest naming a collection was received")));
      return;
    }
    writer_->WritesDone();
    if (Status st = FinishUpsert("index upsert"); !st.ok()) {
      Finish(ToGrpcStatus(st));
      return;
    }
    resp_->set_ingested(upsert_resp_.upserted());
    resp_->set_pre_encoded(pre_encoded_);
    Finish(grpc::Status::OK);
  }

  // Finishes the index Upsert stream exactly once (a second Finish is a gRPC API misuse that
  // aborts the process) and says how it ended; an index that went away is Unavailable.
  Status FinishUpsert(const char* what) {
    const grpc::Status gst = writer_->Finish();
    writer_.reset();
    if (gst.ok()) return OkStatus();
    Status s = FromGrpcStatus(gst);
    if (s.code() == StatusCode::kUnavailable) {
      return Unavailable(StrCat(what, ": index service at ", svc_->opts_.index_addr,
                                " unavailable: ", s.message()));
    }
    return Annotate(s, what);
  }

  void Abort(const Status& st) {
    if (writer_) {
      upsert_ctx_->TryCancel();
      (void)FinishUpsert("index upsert");  // the reason to report is st
    }
    budget_.Release();  // before the answer: the caller finds the budget as its call left it
    Finish(ToGrpcStatus(st));
  }

  RouterService* svc_;
  grpc::CallbackServerContext* ctx_;
  v1::IngestResponse* resp_;
  v1::IngestRequest msg_;
  StreamReadBudget budget_{svc_->server_};
  std::string collection_;
  bool pre_encode_ = false;
  int64_t pre_encoded_ = 0;
  std::unique_ptr<grpc::ClientContext> upsert_ctx_;
  v1::UpsertResponse upsert_resp_;
  std::unique_ptr<grpc::ClientWriter<v1::UpsertRequest>> writer_;
};

grpc::ServerReadReactor<v1::IngestRequest>* RouterService::Ingest(grpc::CallbackServerContext* ctx,
                                                                  v1::IngestResponse* resp) {
  return new IngestReactor(this, ctx, resp);
}

}  // namespace ragserve::router
