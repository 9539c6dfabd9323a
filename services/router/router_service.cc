#include "services/router/router_service.h"

#include <grpcpp/client_context.h>

#include <utility>

#include "services/common/auth.h"
#include "services/common/client.h"
#include "services/common/grpc_status.h"
#include "services/common/grpc_util.h"

namespace ragserve::router {

StatusOr<std::unique_ptr<RouterService>> RouterService::Create(ServiceServer* server,
                                                               RouterOptions opts) {
  RS_CHECK_ARG(!opts.index_addr.empty(), "--index-addr must not be empty");
  std::unique_ptr<RouterService> svc(new RouterService(server, std::move(opts)));
  ChannelOptions copts;
  copts.tls_ca = svc->opts_.downstream_tls_ca;
  RS_ASSIGN_OR_RETURN(auto channel, MakeChannel(svc->opts_.index_addr, copts));
  svc->index_ = v1::IndexService::NewStub(channel);
  return svc;
}

RouterService::RouterService(ServiceServer* server, RouterOptions opts)
    : server_(server), opts_(std::move(opts)) {}

template <typename Req, typename Resp, typename Method>
grpc::ServerUnaryReactor* RouterService::ForwardToIndex(grpc::CallbackServerContext* ctx,
                                                        const Req* req, Resp* resp, Method method,
                                                        const char* what) {
  return ServeUnary(ctx, server_, [this, ctx, req, resp, method, what] {
    auto cctx = grpc::ClientContext::FromCallbackServerContext(*ctx);
    AttachToken(cctx.get(), opts_.downstream_token);
    const grpc::Status st = ((*index_).*method)(cctx.get(), *req, resp);
    if (st.ok()) return OkStatus();
    Status s = FromGrpcStatus(st);
    // Errors about the request keep their code; a missing index service says where it looked.
    if (s.code() == StatusCode::kUnavailable) {
      return Unavailable(
          StrCat(what, ": index service at ", opts_.index_addr, " unavailable: ", s.message()));
    }
    return s;
  });
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
                        "list collections");
}

grpc::ServerUnaryReactor* RouterService::Stats(grpc::CallbackServerContext* ctx,
                                               const v1::StatsRequest* req,
                                               v1::StatsResponse* resp) {
  return ForwardToIndex(ctx, req, resp, &v1::IndexService::Stub::Stats, "stats");
}

}  // namespace ragserve::router
