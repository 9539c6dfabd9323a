// The credential table and TokenAuth: every RPC of the five services has a row (a missing row is
// a failure to start, not an open door), and a bearer token is identified and checked against
// the credentials an RPC accepts. The same checks through real calls, for every RPC and every
// credential: tests/rpcfuzz/auth_matrix_test.cc.
#include "services/common/auth.h"

#include <gtest/gtest.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/index.grpc.pb.h"
#include "ragserve/v1/kvr.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/server.h"

namespace ragserve {
namespace {

TEST(AuthPolicyTest, EveryMethodOfTheFiveServicesHasARow) {
  // Link each proto file's descriptors into the pool (a server links them through its service).
  for (const auto* d : {v1::QueryRequest::descriptor(), v1::SearchRequest::descriptor(),
                        v1::AttendRequest::descriptor(), v1::EncodeRequest::descriptor(),
                        v1::GenerateRequest::descriptor()}) {
    ASSERT_NE(d, nullptr);
  }
  for (const char* svc :
       {v1::RagService::service_full_name(), v1::IndexService::service_full_name(),
        v1::KvRetrievalService::service_full_name(), v1::ContextCacheService::service_full_name(),
        v1::DecoderService::service_full_name()}) {
    const std::vector<std::string> missing = MethodsWithoutPolicy(svc);
    EXPECT_TRUE(missing.empty()) << missing.front() << ": add a row to auth_policy.cc";
  }
}

TEST(AuthPolicyTest, AServiceWithoutRowsIsReportedAndRefusedAtStart) {
  // grpc.health.v1.Health has no rows (the scaffold serves it unguarded itself).
  const std::vector<std::string> missing =
      MethodsWithoutPolicy(grpc::health::v1::Health::service_full_name());
  ASSERT_FALSE(missing.empty());
  EXPECT_EQ(missing.front(), "/grpc.health.v1.Health/Check");
  EXPECT_FALSE(AcceptedCredentials("/ragserve.v1.IndexService/NoSuchMethod").has_value());

  ServerConfig cfg;
  cfg.service = "test";
  cfg.metrics_port = -1;
  ServiceServer server(cfg);
  grpc::health::v1::Health::Service unguarded;
  server.AddService(&unguarded, grpc::health::v1::Health::service_full_name());
  const Status st = server.Start();
  EXPECT_EQ(st.code(), StatusCode::kInternal);
  EXPECT_NE(st.message().find("no credential policy for /grpc.health.v1.Health/Check"),
            std::string::npos)
      << st.ToString();
}

TEST(AuthPolicyTest, AdminRpcsRefuseThePublicCredential) {
  EXPECT_EQ(*AcceptedCredentials("/ragserve.v1.RagService/Query"), kPublicCred);
  EXPECT_EQ(*AcceptedCredentials("/ragserve.v1.RagService/DropCollection"), kAdminCred);
  EXPECT_EQ(*AcceptedCredentials("/ragserve.v1.IndexService/DropCollection"),
            kInternalCred | kAdminCred);  // forwarded by the router after its own check
  EXPECT_EQ(*AcceptedCredentials("/ragserve.v1.IndexService/Rebuild"), kAdminCred);
  EXPECT_EQ(*AcceptedCredentials("/ragserve.v1.ContextCacheService/Evict"), kAdminCred);
  EXPECT_EQ(*AcceptedCredentials("/ragserve.v1.KvRetrievalService/Attend"), kInternalCred);
}

TEST(TokenAuthTest, IdentifiesEachCredentialAndRefusesTheRest) {
  AuthTokens t;
  t.public_token = "pub";
  t.internal_token = "int";
  t.admin_token = "adm";
  const TokenAuth auth(t);
  ASSERT_TRUE(auth.enabled());
  EXPECT_EQ(auth.configured(), kPublicCred | kInternalCred | kAdminCred);
  Credential who{};
  ASSERT_TRUE(auth.Identify("Bearer int", &who).ok());
  EXPECT_EQ(who, Credential::kInternal);
  ASSERT_TRUE(auth.Identify("Bearer adm", &who).ok());
  EXPECT_EQ(who, Credential::kAdmin);
  EXPECT_EQ(auth.Identify("Bearer in", &who).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(auth.Identify("Basic pub", &who).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(auth.Identify("Bearer ", &who).error_code(), grpc::StatusCode::UNAUTHENTICATED);

  EXPECT_TRUE(auth.CheckHeader("Bearer adm", kInternalCred | kAdminCred, "Rebuild").ok());
  const grpc::Status denied = auth.CheckHeader("Bearer pub", kAdminCred, "Rebuild");
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(denied.error_message(),
            "Rebuild needs the admin credential; the call carried the public one");
  EXPECT_EQ(auth.CheckHeader("Bearer nope", kAdminCred, "Rebuild").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST(TokenAuthTest, UnconfiguredCredentialIsRefusedAndNoTokenMeansAuthOff) {
  AuthTokens t;
  t.internal_token = "int";
  const TokenAuth auth(t);
  EXPECT_EQ(auth.configured(), kInternalCred);
  // An empty presented token must not match the empty (unconfigured) admin token.
  EXPECT_EQ(auth.CheckHeader("Bearer ", kAdminCred, "x").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(auth.CheckHeader("Bearer int", kAdminCred, "x").error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  const TokenAuth off;
  EXPECT_FALSE(off.enabled());
  EXPECT_TRUE(off.CheckHeader("", kAdminCred, "x").ok());
  EXPECT_EQ(TokenAuth("pub").configured(), kPublicCred);  // the one-token constructor
  EXPECT_EQ(CredentialNames(kInternalCred | kAdminCred), "internal or admin");
}

}  // namespace
}  // namespace ragserve
