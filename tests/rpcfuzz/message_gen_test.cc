// The fuzzer's own contracts: a seed reproduces the requests, generated requests are well-formed
// protobuf within the byte budget, and every RPC of the five services has a row in the allowed-code
// table and at least one seed.
#include "tests/rpcfuzz/message_gen.h"

#include <gtest/gtest.h>

#include "tests/rpcfuzz/rpc_table.h"

namespace ragserve::rpcfuzz {
namespace {

TEST(MessageGenTest, SameSeedGivesSameRequests) {
  MessageGen a(42, 1 << 20), b(42, 1 << 20);
  for (const RpcSpec& rpc : AllRpcs()) {
    for (int i = 0; i < 5; ++i) {
      const auto ma = a.Random(rpc.method->input_type());
      const auto mb = b.Random(rpc.method->input_type());
      ASSERT_EQ(SerializeDeterministic(*ma), SerializeDeterministic(*mb)) << rpc.path;
    }
  }
}

TEST(MessageGenTest, RequestsParseBackAndStayNearTheBudget) {
  constexpr int64_t kBudget = 256 << 10;
  MessageGen gen(7, kBudget);
  for (const RpcSpec& rpc : AllRpcs()) {
    for (int i = 0; i < 50; ++i) {
      gen.set_allow_invalid_utf8(false);
      const auto m = gen.Random(rpc.method->input_type());
      const std::string bytes = SerializeDeterministic(*m);
      // One element may overshoot the remaining budget; never by more than another budget.
      EXPECT_LE(static_cast<int64_t>(bytes.size()), 2 * kBudget + 4096) << rpc.path;
      std::unique_ptr<google::protobuf::Message> back(m->New());
      EXPECT_TRUE(back->ParseFromString(bytes)) << rpc.path;
    }
  }
}

TEST(MessageGenTest, MutationChangesASeed) {
  MessageGen gen(3, 1 << 20);
  const Fixtures fx{"0123456789abcdef", "0123456789abcdef0123456789abcdef", ""};
  int changed = 0, total = 0;
  for (const RpcSpec& rpc : AllRpcs()) {
    for (MessageList& seed : Seeds(rpc, fx)) {
      const std::string before = SerializeDeterministic(*seed[0]);
      gen.Mutate(seed[0].get());
      changed += SerializeDeterministic(*seed[0]) != before;
      ++total;
    }
  }
  // Some edits rewrite a field with the value it had (clearing an unset field): most must not.
  EXPECT_GT(changed, total / 2);
}

TEST(RpcTableTest, EveryMethodHasASeedAndNeverAllowsInternalOrUnknown) {
  EXPECT_EQ(AllRpcs().size(),
            31u);  // 28 + RagService.Delete (issue 22) + Embed on RagService and IndexService
  const Fixtures fx{"0123456789abcdef", "0123456789abcdef0123456789abcdef", ""};
  for (const RpcSpec& rpc : AllRpcs()) {
    EXPECT_FALSE(Seeds(rpc, fx).empty()) << rpc.path;
    EXPECT_TRUE(Allowed(rpc, grpc::StatusCode::INVALID_ARGUMENT, false)) << rpc.path;
    EXPECT_FALSE(Allowed(rpc, grpc::StatusCode::INTERNAL, false)) << rpc.path;
    EXPECT_FALSE(Allowed(rpc, grpc::StatusCode::UNKNOWN, true)) << rpc.path;
    EXPECT_FALSE(Allowed(rpc, grpc::StatusCode::DATA_LOSS, false)) << rpc.path;
    // gRPC's own parser answers invalid UTF-8 before any service code: accepted only then.
    EXPECT_TRUE(Allowed(rpc, grpc::StatusCode::INTERNAL, true)) << rpc.path;
  }
}

}  // namespace
}  // namespace ragserve::rpcfuzz
