// The router's public RagService: collection admin forwarded to the index service, queries and
// ingest orchestrated across index, context cache and decode workers.
//
// Thread safety: one instance serves all calls concurrently; handlers run on the server's
// bounded executor and every downstream call carries the caller's deadline and cancellation.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "ragserve/v1/index.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/client.h"
#include "services/common/executor.h"
#include "services/common/server.h"
#include "services/common/stream_outbox.h"
#include "services/router/router_metrics.h"
#include "services/router/stall_watchdog.h"
#include "services/router/worker_pool.h"

namespace ragserve::router {

struct RouterOptions {
  std::string index_addr = "127.0.0.1:50052";  // IndexService host:port
  std::string ctxcache_addr;                   // ContextCacheService host:port (pre-encoding)
  std::string downstream_token;                // Bearer token sent to internal services
  std::string downstream_tls_ca;               // PEM CA: TLS to internal services when set
  WorkerPoolOptions workers;                   // decode workers (token/TLS filled from above)
  std::string policy = "cache_aware";          // round_robin | least_load | cache_aware
  int default_top_k = 4;                       // passages when a query says 0
  int default_max_tokens = 128;                // answer tokens when a query says 0
  int max_attempts = 3;                        // decode workers tried per query (failover)
  int query_threads = 16;                      // queries orchestrated at once
  int query_queue = 256;                       // queries waiting; beyond: RESOURCE_EXHAUSTED
  int max_ingest_docs = 10000;                 // documents per Ingest message; beyond: INVALID_ARG
  // Ingest cuts a document longer than one passage into passages of this many words overlapping
  // by ingest_chunk_overlap (ragctl ingest's defaults; 0 = store every document whole).
  int ingest_chunk_tokens = 200;
  int ingest_chunk_overlap = 32;
  double worker_keepalive_s = 30;  // keepalive pings to workers during calls (0 = off)
  // A worker's answer stream that sends nothing for this long after its first message is a
  // failed worker: the query moves to another (resume_token_ids). 0 = off.
  double worker_idle_timeout_s = 20;
  // Longest an index call (search, admin, ingest's create) may take, within the client's
  // deadline: a hung index is UNAVAILABLE after this instead of holding the query until the
  // client's deadline (or forever without one). Not applied to the Upsert stream of an Ingest.
  double index_timeout_s = 30;
  double ctxcache_timeout_s = 120;  // the same for context cache calls (Ingest pre_encode)
  std::string served_model_name = "ragserve";  // model_name label of the serving metrics
};

class RouterService final : public v1::RagService::CallbackService {
 public:
  // Channels are created here and connect lazily; a bad address is InvalidArgument.
  static StatusOr<std::unique_ptr<RouterService>> Create(ServiceServer* server, RouterOptions opts);

  grpc::ServerUnaryReactor* CreateCollection(grpc::CallbackServerContext* ctx,
                                             const v1::CreateCollectionRequest* req,
                                             v1::CreateCollectionResponse* resp) override;
  grpc::ServerUnaryReactor* DropCollection(grpc::CallbackServerContext* ctx,
                                           const v1::DropCollectionRequest* req,
                                           v1::DropCollectionResponse* resp) override;
  grpc::ServerUnaryReactor* ListCollections(grpc::CallbackServerContext* ctx,
                                            const v1::ListCollectionsRequest* req,
                                            v1::ListCollectionsResponse* resp) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const v1::StatsRequest* req,
                                  v1::StatsResponse* resp) override;
  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx, const v1::DeleteRequest* req,
                                   v1::DeleteResponse* resp) override;
  grpc::ServerUnaryReactor* Embed(grpc::CallbackServerContext* ctx, const v1::EmbedRequest* req,
                                  v1::EmbedResponse* resp) override;
  grpc::ServerWriteReactor<v1::QueryEvent>* Query(grpc::CallbackServerContext* ctx,
                                                  const v1::QueryRequest* req) override;
  grpc::ServerReadReactor<v1::IngestRequest>* Ingest(grpc::CallbackServerContext* ctx,
                                                     v1::IngestResponse* resp) override;

 private:
  RouterService(ServiceServer* server, RouterOptions opts);
  friend class QueryReactor;
  friend class IngestReactor;

  // The whole query: search, stream passages, generate on a worker with failover, stats.
  // Runs on query_executor_; the stream is finished (Close) as its very last act.
  void RunQuery(grpc::CallbackServerContext* ctx, const v1::QueryRequest& req,
                const std::shared_ptr<StreamOutbox<v1::QueryEvent>>& out);
  Status DoQuery(grpc::CallbackServerContext* ctx, const v1::QueryRequest& req,
                 StreamOutbox<v1::QueryEvent>* out);
  // The steps of DoQuery, in order.
  struct Answer;
  using Clock = std::chrono::steady_clock;
  // Bytes of the question, raw prompt and chat messages together.
  static size_t PromptBytes(const v1::QueryRequest& req);
  // InvalidArgument for a malformed query, DeadlineExceeded when its deadline already passed.
  Status CheckQuery(const grpc::CallbackServerContext& ctx, const v1::QueryRequest& req) const;
  // The index's top-k passages (with text) for the question (or a chat's last user message).
  Status Search(grpc::CallbackServerContext* ctx, const v1::QueryRequest& req,
                v1::SearchResponse* found);
  // Request ids are "<request_prefix_>/q<n>", unique across router processes.
  v1::GenerateRequest MakeGenerateRequest(const v1::QueryRequest& req);
  // The client cancelled the query or its deadline passed.
  static bool CallerDone(const grpc::CallbackServerContext& ctx);
  // The client's passages event; adds the passages to greq and their sizes and cache keys to
  // the worker-picking hint.
  static v1::QueryEvent PassagesEvent(const v1::QueryRequest& req, const v1::SearchResponse& found,
                                      v1::GenerateRequest* greq, PickHint* hint);
  // Streams the answer from a picked worker; on a server-side failure the request moves to
  // another worker (up to max_attempts), resuming after the tokens already sent.
  Status GenerateWithFailover(grpc::CallbackServerContext* ctx, Clock::time_point t0, PickHint hint,
                              v1::GenerateRequest* greq, StreamOutbox<v1::QueryEvent>* out,
                              Answer* answer);
  // One worker's Generate stream, forwarded to the client; returns how the stream ended.
  grpc::Status StreamAnswer(grpc::CallbackServerContext* ctx, Worker& worker, Clock::time_point t0,
                            v1::GenerateRequest* greq, StreamOutbox<v1::QueryEvent>* out,
                            Answer* answer);
  static v1::QueryEvent StatsEvent(Clock::time_point t0, double search_ms, const Answer& answer);

  // Runs `call` against the index service with the caller's deadline and cancellation. With
  // `cheap` (ListCollections, Stats: the index answers them on its own lane of cheap calls) on
  // the server's lane of cheap calls, so they are answered while ingest floods the executor.
  template <typename Req, typename Resp, typename Method>
  grpc::ServerUnaryReactor* ForwardToIndex(grpc::CallbackServerContext* ctx, const Req* req,
                                           Resp* resp, Method method, const char* what,
                                           bool cheap = false);
  // The context of a call to the index or context cache made for the client call `ctx`: the
  // client's deadline and cancellation propagate, the internal token is attached. While `peer`
  // has never been reached, first waits for it (PeerChannel: it may still be starting).
  // The call's deadline is the earlier of the client's and now + timeout_s (0 = the client's).
  std::unique_ptr<grpc::ClientContext> DownstreamContext(const grpc::CallbackServerContext& ctx,
                                                         PeerChannel* peer, double timeout_s) const;
  // How a failed index or context cache call reads to the client: UNAVAILABLE names the peer,
  // and so does a call that the router's own timeout (not the client's deadline) ended.
  Status PeerError(const grpc::CallbackServerContext& ctx, const grpc::Status& st,
                   std::string_view what, std::string_view service, const std::string& addr,
                   double timeout_s, std::string_view flag) const;
  Status IndexError(const grpc::CallbackServerContext& ctx, const grpc::Status& st,
                    std::string_view what) const {
    return PeerError(ctx, st, what, "index service", opts_.index_addr, opts_.index_timeout_s,
                     "--index-timeout");
  }
  // Ingest's create_spec creates a collection: OK for the admin credential (or auth off),
  // PermissionDenied otherwise (Ingest itself also accepts the public credential).
  Status CheckMayCreate(const grpc::ServerContextBase& ctx) const;

  ServiceServer* server_;
  RouterOptions opts_;
  std::unique_ptr<PeerChannel> index_peer_;
  std::unique_ptr<v1::IndexService::Stub> index_;
  std::unique_ptr<PeerChannel> ctxcache_peer_;               // null without --ctxcache-addr
  std::unique_ptr<v1::ContextCacheService::Stub> ctxcache_;  // null without --ctxcache-addr
  Policy policy_ = Policy::kCacheAware;
  std::unique_ptr<WorkerPool> pool_;
  std::unique_ptr<StallWatchdog> stall_watchdog_;  // null when worker_idle_timeout_s is 0
  std::unique_ptr<BoundedExecutor> query_executor_;
  std::unique_ptr<RouterMetrics> metrics_;  // reads query_executor_: declared after it
  const std::string request_prefix_;
  std::atomic<uint64_t> next_request_{0};
};

}  // namespace ragserve::router
