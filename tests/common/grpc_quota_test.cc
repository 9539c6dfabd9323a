// --grpc-memory-mb: the gRPC ResourceQuota of a ServiceServer bounds what the transport holds
// for requests no handler has taken yet (docs/RELIABILITY.md "Floods").
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "services/common/server.h"

namespace ragserve {
namespace {

// One call of grpc.health.v1.Health/Check with `request` (serialized), 60 s deadline.
grpc::Status Call(grpc::GenericStub& stub, const grpc::ByteBuffer& request) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  grpc::ByteBuffer response;
  grpc::Status st;
  bool done = false;
  std::mutex mu;
  std::condition_variable cv;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> l(mu);
                   st = s;
                   done = true;
                   cv.notify_all();
                 });
  std::unique_lock<std::mutex> l(mu);
  cv.wait(l, [&] { return done; });
  return st;
}

// Sends a health check naming a 32 MiB service to a server with --grpc-memory-mb
// `grpc_memory_mb`, then a plain one; returns the first call's code and whether the second
// was answered OK (the server lives on).
std::pair<grpc::StatusCode, bool> HealthCheckOfABigRequest(int grpc_memory_mb) {
  ServerConfig cfg;
  cfg.service = "quota-test";
  cfg.metrics_port = -1;
  cfg.grpc_memory_mb = grpc_memory_mb;
  ServiceServer server(cfg);
  EXPECT_TRUE(server.Start().ok());
  grpc::ChannelArguments args;
  args.SetMaxSendMessageSize(-1);
  auto channel =
      grpc::CreateCustomChannel(server.address(), grpc::InsecureChannelCredentials(), args);
  grpc::GenericStub stub(channel);
  // HealthCheckRequest { string service = 1; }: tag 0x0a, length varint, bytes.
  const size_t n = size_t{32} << 20;
  std::string req = "\x0a";
  size_t v = n;
  for (; v >= 0x80; v >>= 7) req += static_cast<char>((v & 0x7f) | 0x80);
  req += static_cast<char>(v);
  req += std::string(n, 's');
  grpc::Slice slice(req);
  grpc::ByteBuffer send(&slice, 1);
  const grpc::Status big = Call(stub, send);
  grpc::Slice empty("");
  const grpc::Status plain = Call(stub, grpc::ByteBuffer(&empty, 1));
  server.Shutdown();
  return {big.error_code(), plain.ok()};
}

// Without a quota (0: what every server was before --grpc-memory-mb) the request reaches the
// health service, which refuses the name (INVALID_ARGUMENT); with a 4 MiB quota the transport
// cannot hold the 32 MiB request and ends the call RESOURCE_EXHAUSTED before any handler runs.
// Either way the server answers the next call.
TEST(GrpcQuotaTest, ARequestLargerThanTheQuotaIsResourceExhaustedBeforeAnyHandler) {
  const auto [unbounded, unbounded_next_ok] = HealthCheckOfABigRequest(0);
  EXPECT_NE(unbounded, grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(unbounded, grpc::StatusCode::OK);
  EXPECT_TRUE(unbounded_next_ok);
  const auto [bounded, bounded_next_ok] = HealthCheckOfABigRequest(4);
  EXPECT_EQ(bounded, grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(bounded_next_ok);
}

}  // namespace
}  // namespace ragserve
