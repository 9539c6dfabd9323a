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

// One call of grpc.health.v1.Health/Check with `request` (serialized), 60 s deadline;
// `wait_for_ready`: wait for a connection instead of failing on a broken one.
grpc::Status Call(grpc::GenericStub& stub, const grpc::ByteBuffer& request,
                  bool wait_for_ready = false) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  ctx.set_wait_for_ready(wait_for_ready);
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

struct BigRequestOutcome {
  grpc::Status big;    // the 32 MiB request
  grpc::Status plain;  // the plain health check after it, on a new channel
};

// Sends a health check naming a 32 MiB service to a server with --grpc-memory-mb
// `grpc_memory_mb`, then a plain one on a new channel (the quota may have closed the first
// connection; what matters is that the server lives on and answers).
BigRequestOutcome HealthCheckOfABigRequest(int grpc_memory_mb) {
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
  BigRequestOutcome out;
  out.big = Call(stub, send);
  grpc::GenericStub fresh(
      grpc::CreateCustomChannel(server.address(), grpc::InsecureChannelCredentials(), args));
  grpc::Slice empty("");
  out.plain = Call(fresh, grpc::ByteBuffer(&empty, 1), /*wait_for_ready=*/true);
  server.Shutdown();
  return out;
}

std::string Describe(const grpc::Status& s) {
  return std::to_string(s.error_code()) + " " + s.error_message();
}

// Without a quota (0: what every server was before --grpc-memory-mb) the request reaches the
// health service, which refuses the name (INVALID_ARGUMENT); with a 4 MiB quota the transport
// cannot hold the 32 MiB request and ends the call RESOURCE_EXHAUSTED before any handler runs.
// Either way the server answers the next call.
TEST(GrpcQuotaTest, ARequestLargerThanTheQuotaIsResourceExhaustedBeforeAnyHandler) {
  const BigRequestOutcome unbounded = HealthCheckOfABigRequest(0);
  EXPECT_NE(unbounded.big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << Describe(unbounded.big);
  EXPECT_NE(unbounded.big.error_code(), grpc::StatusCode::OK);
  EXPECT_TRUE(unbounded.plain.ok()) << Describe(unbounded.plain);
  const BigRequestOutcome bounded = HealthCheckOfABigRequest(4);
  EXPECT_EQ(bounded.big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << Describe(bounded.big);
  EXPECT_TRUE(bounded.plain.ok()) << Describe(bounded.plain);
}

}  // namespace
}  // namespace ragserve
