// GetLoad, the call the router's worker pool polls to pick a worker and to tell a live one from a
// dead one, is answered while the decoder's executor is busy (docs/RELIABILITY.md "Floods":
// before, it queued behind the flood's Generate preparations, timed out, and the router marked
// healthy workers as failing). The decoder runs in process without a model; one executor thread
// is held by a test task.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "services/common/server.h"
#include "services/decoder/decoder_service.h"

namespace ragserve::decoder {
namespace {

TEST(GetLoadLaneTest, GetLoadAnswersWhileTheExecutorIsBusy) {
  ServerConfig cfg;
  cfg.service = "decoder";
  cfg.metrics_port = -1;
  cfg.executor_threads = 1;
  ServiceServer server(cfg);
  DecoderOptions opts;
  opts.worker_id = "w0";
  auto svc = DecoderService::Create(&server, opts);
  ASSERT_TRUE(svc.ok()) << svc.status().ToString();
  server.AddService(svc->get(), "ragserve.v1.DecoderService");
  ASSERT_TRUE(server.Start().ok());

  std::promise<void> open;
  std::shared_future<void> gate = open.get_future().share();
  ASSERT_TRUE(server.executor().Submit([gate] { gate.wait(); }).ok());
  while (server.executor().queued() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));

  auto stub = v1::DecoderService::NewStub(
      grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::LoadReport load;
  const grpc::Status st = stub->GetLoad(&ctx, v1::LoadRequest(), &load);
  const int queued = server.executor().queued();
  open.set_value();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(load.worker_id(), "w0");
  EXPECT_EQ(queued, 0) << "GetLoad waited on the main executor";
  (*svc)->Shutdown();
  server.Shutdown();
}

}  // namespace
}  // namespace ragserve::decoder
