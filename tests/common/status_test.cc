#include "services/common/status.h"

#include <gtest/gtest.h>

#include "services/common/grpc_status.h"

namespace ragserve {
namespace {

TEST(StatusTest, EveryCodeMapsToTheSameGrpcCodeAndBack) {
  for (int c = 0; c < kNumStatusCodes; ++c) {
    const Status s(static_cast<StatusCode>(c), "message " + std::to_string(c));
    const grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), c);
    if (c != 0) {
      EXPECT_EQ(g.error_message(), "message " + std::to_string(c));
    }
    const Status back = FromGrpcStatus(g);
    EXPECT_EQ(back.code(), s.code());
    EXPECT_EQ(back.message(), s.message());
  }
}

// Found by rpc_fuzz: a Release of a 60 KB sequence id answered NOT_FOUND quoting the id, and the
// client got RESOURCE_EXHAUSTED "received initial metadata size exceeds limit" instead.
TEST(StatusTest, LongMessagesAreCutToFitAStatusHeader) {
  const std::string id(1 << 20, 'x');
  const grpc::Status g = ToGrpcStatus(NotFound("sequence '" + id + "' not found"));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LE(g.error_message().size(), kMaxGrpcMessageBytes);
  EXPECT_EQ(g.error_message().rfind("sequence 'xxx", 0), 0u);
  // A cut never splits a UTF-8 character.
  std::string accents;
  while (accents.size() < 4 * kMaxGrpcMessageBytes) accents += "\xc3\xa9";
  const std::string m = ToGrpcStatus(InvalidArgument("a" + accents)).error_message();
  const size_t dots = m.find("...");
  ASSERT_NE(dots, std::string::npos);
  EXPECT_EQ((dots - 1) % 2, 0u) << "cut inside a character";
}

TEST(StatusTest, ContractCodesMatchGrpcNames) {
  EXPECT_EQ(ToGrpcStatus(InvalidArgument("x")).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ToGrpcStatus(NotFound("x")).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ToGrpcStatus(AlreadyExists("x")).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(ToGrpcStatus(ResourceExhausted("x")).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ToGrpcStatus(DeadlineExceeded("x")).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(ToGrpcStatus(Unavailable("x")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ToGrpcStatus(Unauthenticated("x")).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ToGrpcStatus(Internal("x")).error_code(), grpc::StatusCode::INTERNAL);
  EXPECT_TRUE(ToGrpcStatus(OkStatus()).ok());
}

TEST(StatusTest, NamesAndToString) {
  EXPECT_EQ(StatusCodeName(StatusCode::kResourceExhausted), "RESOURCE_EXHAUSTED");
  EXPECT_EQ(InvalidArgument("k must be > 0, got 0").ToString(),
            "INVALID_ARGUMENT: k must be > 0, got 0");
  EXPECT_EQ(OkStatus().ToString(), "OK");
  EXPECT_EQ(Annotate(NotFound("id 7"), "collection docs").message(), "collection docs: id 7");
  EXPECT_TRUE(Annotate(OkStatus(), "ctx").ok());
}

StatusOr<int> Half(int x) {
  RS_CHECK_ARG(x % 2 == 0, "x must be even, got ", x);
  return x / 2;
}

StatusOr<int> Quarter(int x) {
  RS_ASSIGN_OR_RETURN(int h, Half(x));
  RS_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

TEST(StatusTest, MacrosPropagateErrorsAndValues) {
  EXPECT_EQ(*Quarter(8), 2);
  auto bad = Quarter(6);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "x must be even, got 3");
}

}  // namespace
}  // namespace ragserve
