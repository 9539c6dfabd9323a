// ragserve-decoder: the decode worker (continuous batching, hybrid attention)
#include <grpcpp/grpcpp.h>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "services/common/grpc_util.h"
#include "services/common/server.h"

namespace {

// The DecoderService adapter. Until its core library is wired in, only GetLoad is served.
class Service final : public ragserve::v1::DecoderService::CallbackService {
 public:
  explicit Service(ragserve::ServiceServer* server) : server_(server) {}

  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* ctx,
                                    const ragserve::v1::LoadRequest* req,
                                    ragserve::v1::LoadReport* resp) override {
    return ragserve::ServeUnary(ctx, server_, [resp] {
      resp->set_device("cpu");
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
  m.name = "decoder";
  m.description = "ragserve decoder: the decode worker (continuous batching, hybrid attention)";
  m.default_port = 50055;
  m.default_metrics_port = 50055 - 50051 + 9091;
  m.setup = [&service](ragserve::ServiceServer& server) {
    service = std::make_unique<Service>(&server);
    server.AddService(service.get(), "ragserve.v1.DecoderService");
    return ragserve::OkStatus();
  };
  return ragserve::RunServiceMain(m, argc, argv);
}
