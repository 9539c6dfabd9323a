// ragserve-kvr: RetrievalAttention KV retrieval over a CPU-memory KV cache
#include <grpcpp/grpcpp.h>

#include "ragserve/v1/kvr.grpc.pb.h"
#include "services/common/grpc_util.h"
#include "services/common/server.h"

namespace {

// The KvRetrievalService adapter. Until its core library is wired in, only Stats is served.
class Service final : public ragserve::v1::KvRetrievalService::CallbackService {
 public:
  explicit Service(ragserve::ServiceServer* server) : server_(server) {}

  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx,
                                  const ragserve::v1::KvrStatsRequest* req,
                                  ragserve::v1::KvrStatsResponse* resp) override {
    return ragserve::ServeUnary(ctx, server_, [resp] {
      resp->set_sequences(0);
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
  m.name = "kvr";
  m.description = "ragserve kvr: RetrievalAttention KV retrieval over a CPU-memory KV cache";
  m.default_port = 50053;
  m.default_metrics_port = 50053 - 50051 + 9091;
  m.setup = [&service](ragserve::ServiceServer& server) {
    service = std::make_unique<Service>(&server);
    server.AddService(service.get(), "ragserve.v1.KvRetrievalService");
    return ragserve::OkStatus();
  };
  return ragserve::RunServiceMain(m, argc, argv);
}
