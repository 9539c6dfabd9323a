// ragserve-index: vector collections (HNSW, IVF, flat) with documents in RocksDB
#include <grpcpp/grpcpp.h>

#include "ragserve/v1/index.grpc.pb.h"
#include "services/common/grpc_util.h"
#include "services/common/server.h"

namespace {

// The IndexService adapter. Until its core library is wired in, only ListCollections is served.
class Service final : public ragserve::v1::IndexService::CallbackService {
 public:
  explicit Service(ragserve::ServiceServer* server) : server_(server) {}

  grpc::ServerUnaryReactor* ListCollections(grpc::CallbackServerContext* ctx,
                                            const ragserve::v1::ListCollectionsRequest* req,
                                            ragserve::v1::ListCollectionsResponse* resp) override {
    return ragserve::ServeUnary(ctx, server_, [resp] {
      (void)resp;
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
  m.name = "index";
  m.description = "ragserve index: vector collections (HNSW, IVF, flat) with documents in RocksDB";
  m.default_port = 50052;
  m.default_metrics_port = 50052 - 50051 + 9091;
  m.setup = [&service](ragserve::ServiceServer& server) {
    service = std::make_unique<Service>(&server);
    server.AddService(service.get(), "ragserve.v1.IndexService");
    return ragserve::OkStatus();
  };
  return ragserve::RunServiceMain(m, argc, argv);
}
