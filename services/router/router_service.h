// The router's public RagService: collection admin forwarded to the index service, queries and
// ingest orchestrated across index, context cache and decode workers.
//
// Thread safety: one instance serves all calls concurrently; handlers run on the server's
// bounded executor and every downstream call carries the caller's deadline and cancellation.
#pragma once

#include <memory>
#include <string>

#include "ragserve/v1/index.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/server.h"

namespace ragserve::router {

struct RouterOptions {
  std::string index_addr = "127.0.0.1:50052";  // IndexService host:port
  std::string downstream_token;                // Bearer token sent to internal services
  std::string downstream_tls_ca;               // PEM CA: TLS to internal services when set
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

 private:
  RouterService(ServiceServer* server, RouterOptions opts);

  // Runs `call` against the index service with the caller's deadline and cancellation.
  template <typename Req, typename Resp, typename Method>
  grpc::ServerUnaryReactor* ForwardToIndex(grpc::CallbackServerContext* ctx, const Req* req,
                                           Resp* resp, Method method, const char* what);

  ServiceServer* server_;
  RouterOptions opts_;
  std::unique_ptr<v1::IndexService::Stub> index_;
};

}  // namespace ragserve::router
