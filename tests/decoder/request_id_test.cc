// Issue 17 #5: the real ragserve-decoder refuses a request id that is live, i.e. queued or
// already generating (it used to check only the queue, so a second request with a running
// request's id was admitted and one client's Cancel could end another client's answer).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <string>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "services/common/client.h"
#include "tests/support/process.h"

namespace ragserve {
namespace {

v1::GenerateRequest Request(const std::string& id, int max_tokens) {
  v1::GenerateRequest req;
  req.set_request_id(id);
  req.set_prompt_override("Count to a thousand");
  req.mutable_sampling()->set_max_tokens(max_tokens);
  req.mutable_sampling()->set_ignore_eos(true);
  return req;
}

void SetDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
}

grpc::Status Drain(grpc::ClientReader<v1::GenerateEvent>* reader) {
  v1::GenerateEvent ev;
  while (reader->Read(&ev)) {
  }
  return reader->Finish();
}

TEST(DecoderRequestIdTest, AnIdThatIsGeneratingIsAlreadyExistsAndItsOwnerIsUntouched) {
  const std::string dir = testing::MakeTempDir("decoder-request-id");
  std::string error;
  ASSERT_FALSE(testing::MakeTinyModel(dir, &error).empty()) << error;
  const std::string ready = dir + "/ready.json";
  testing::Process proc;
  ASSERT_TRUE(proc.Start(
      testing::BinPath("ragserve-decoder"),
      {"--port", "0", "--metrics-port", "0", "--ready-file", ready, "--model", dir + "/model"},
      dir + "/log.txt"));
  int port = 0, mport = 0;
  ASSERT_TRUE(testing::WaitForReadyFile(ready, 60, &port, &mport))
      << testing::ReadFileOrEmpty(dir + "/log.txt");
  auto stub = v1::DecoderService::NewStub(*MakeChannel("127.0.0.1:" + std::to_string(port)));

  grpc::ClientContext running_ctx;
  SetDeadline(&running_ctx);
  auto running = stub->Generate(&running_ctx, Request("router-a/q0", 4000));
  v1::GenerateEvent ev;
  ASSERT_TRUE(running->Read(&ev));  // admitted and generating, no longer queued

  grpc::ClientContext dup_ctx;
  SetDeadline(&dup_ctx);
  auto dup = stub->Generate(&dup_ctx, Request("router-a/q0", 3));
  const grpc::Status st = Drain(dup.get());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  EXPECT_NE(st.error_message().find("router-a/q0"), std::string::npos) << st.error_message();

  // The first request is still generating; another id is served meanwhile.
  EXPECT_TRUE(running->Read(&ev));
  grpc::ClientContext other_ctx;
  SetDeadline(&other_ctx);
  EXPECT_TRUE(Drain(stub->Generate(&other_ctx, Request("router-b/q0", 3)).get()).ok());
  running_ctx.TryCancel();
  EXPECT_EQ(Drain(running.get()).error_code(), grpc::StatusCode::CANCELLED);
  proc.Signal(SIGTERM);
  int code = -1;
  EXPECT_TRUE(proc.Wait(10, &code));
}

}  // namespace
}  // namespace ragserve
