// ragserve-ctxcache: APE parallel encoding and the passage KV cache
#include <grpcpp/grpcpp.h>

#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "services/common/grpc_util.h"
#include "services/common/server.h"

namespace {

// The ContextCacheService adapter. Until its core library is wired in, only Stats is served.
class Service final : public ragserve::v1::ContextCacheService::CallbackService {
 public:
  explicit Service(ragserve::ServiceServer* server) : server_(server) {}

  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx,
                                  const ragserve::v1::CtxStatsRequest* req,
                                  ragserve::v1::CtxStatsResponse* resp) override {
    return ragserve::ServeUnary(ctx, server_, [resp] {
      resp->set_ram_entries(0);
      return ragserve::OkStatus();
    });
  }

 private:
  ragserve::ServiceServer* server_;
};

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<Service> service;
  ragserve::ServiceMain m;
  m.name = "ctxcache";
  m.description = "ragserve ctxcache: APE parallel encoding and the passage KV cache";
  m.default_port = 50054;
  m.default_metrics_port = 50054 - 50051 + 9091;
  m.setup = [&service](ragserve::ServiceServer& server) {
    service = std::make_unique<Service>(&server);
    server.AddService(service.get(), "ragserve.v1.ContextCacheService");
    return ragserve::OkStatus();
  };
  return ragserve::RunServiceMain(m, argc, argv);
}
