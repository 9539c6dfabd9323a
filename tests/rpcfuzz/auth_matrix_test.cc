// Least-privilege auth, end to end: every RPC of the five services (the fuzzer's table, so a new
// RPC is covered without listing it here) is called with every credential (none, a wrong token,
// public, internal, admin) against the real binaries on loopback, each started with all three
// tokens. Each cell must be UNAUTHENTICATED (none, wrong), PERMISSION_DENIED naming the credential
// the RPC needs (a valid token the RPC does not accept), or get past auth (the handler answered
// with its own status), exactly as services/common/auth_policy.cc says. Health stays open.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <string>

#include "ragserve/v1/index.pb.h"
#include "services/common/auth.h"
#include "services/common/client.h"
#include "services/common/status.h"
#include "tests/e2e/cluster.h"
#include "tests/rpcfuzz/rpc_table.h"

namespace ragserve::rpcfuzz {
namespace {

constexpr const char* kServiceNames[] = {"index", "kvr", "ctxcache", "decoder", "router"};

struct Tokens {
  std::string pub = "pub-6f1c-token";
  std::string internal = "int-93ab-token";
  std::string admin = "adm-20d7-token";
};

// One call of any shape through the generic stub: writes the serialized `msgs`, reads every
// response (appended to *responses when given), returns the final status.
grpc::Status RawCall(const std::shared_ptr<grpc::Channel>& ch, const std::string& path,
                     const std::vector<std::string>& msgs, const std::string& token,
                     std::string* responses = nullptr) {
  grpc::GenericStub stub(ch);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  AttachToken(&ctx, token);
  grpc::CompletionQueue cq;
  auto wait = [&cq]() {
    void* tag = nullptr;
    bool ok = false;
    return cq.Next(&tag, &ok) && ok;
  };
  auto call = stub.PrepareCall(&ctx, path, &cq);
  call->StartCall(nullptr);
  bool ok = wait();
  for (size_t i = 0; ok && i < msgs.size(); ++i) {
    grpc::Slice slice(msgs[i]);
    grpc::ByteBuffer bb(&slice, 1);
    call->Write(bb, nullptr);
    ok = wait();
  }
  if (ok) {
    call->WritesDone(nullptr);
    ok = wait();
  }
  for (grpc::ByteBuffer resp; ok;) {
    call->Read(&resp, nullptr);
    ok = wait();
    std::vector<grpc::Slice> slices;
    if (ok && responses != nullptr && resp.Dump(&slices).ok()) {
      for (const grpc::Slice& sl : slices) {
        responses->append(reinterpret_cast<const char*>(sl.begin()), sl.size());
      }
    }
  }
  grpc::Status st;
  call->Finish(&st, nullptr);
  wait();
  cq.Shutdown();
  for (void* tag; cq.Next(&tag, &ok);) {
  }
  return st;
}

grpc::Status Call(const std::shared_ptr<grpc::Channel>& ch, const std::string& path,
                  const MessageList& msgs, const std::string& token) {
  std::vector<std::string> raw;
  for (const auto& m : msgs) raw.push_back(m->SerializeAsString());
  return RawCall(ch, path, raw, token);
}

class AuthMatrixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ragserve::testing::MakeTempDir("auth-matrix");
    model_ = ragserve::testing::Cluster::MakeModel(dir_);
    ASSERT_FALSE(model_.empty());
    cluster_ = std::make_unique<ragserve::testing::Cluster>(dir_);
  }

  // Starts ragserve-<name> with the three tokens plus `args`.
  void Start(const std::string& name, std::vector<std::string> args) {
    args.insert(args.end(), {"--auth-token", tok_.pub, "--internal-token", tok_.internal,
                             "--admin-token", tok_.admin});
    std::string err;
    ASSERT_TRUE(cluster_->Start(name, name, args, &err)) << err;
    auto ch = MakeChannel(cluster_->Get(name)->addr());
    ASSERT_TRUE(ch.ok());
    channels_[name] = *ch;
  }

  std::string Addr(const std::string& name) { return cluster_->Get(name)->addr(); }

  Tokens tok_;
  std::string dir_, model_;
  std::unique_ptr<ragserve::testing::Cluster> cluster_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
};

// What a cell must show: 'U' UNAUTHENTICATED, 'D' PERMISSION_DENIED, 'P' past auth.
char Expected(CredentialSet accepted, int column) {
  if (column < 2) return 'U';
  const CredentialSet cred = column == 2 ? kPublicCred : column == 3 ? kInternalCred : kAdminCred;
  return (accepted & cred) != 0 ? 'P' : 'D';
}

char Observed(const grpc::Status& st) {
  if (st.error_code() == grpc::StatusCode::UNAUTHENTICATED) return 'U';
  if (st.error_code() == grpc::StatusCode::PERMISSION_DENIED) return 'D';
  return 'P';
}

TEST_F(AuthMatrixTest, EveryRpcWithEveryCredentialIsRefusedOrServedAsThePolicySays) {
  ASSERT_NO_FATAL_FAILURE(Start("index", {"--data-dir", dir_ + "/index"}));
  ASSERT_NO_FATAL_FAILURE(Start("kvr", {"--memory-limit-gib", "0.25"}));
  ASSERT_NO_FATAL_FAILURE(
      Start("ctxcache", {"--model", model_, "--data-dir", dir_ + "/ctxcache", "--ram-mb", "64"}));
  ASSERT_NO_FATAL_FAILURE(Start("decoder", {"--model", model_, "--kv-budget-mb", "64", "--kvr-addr",
                                            Addr("kvr"), "--ctxcache-addr", Addr("ctxcache")}));
  ASSERT_NO_FATAL_FAILURE(
      Start("router", {"--index-addr", Addr("index"), "--decoders", Addr("decoder"),
                       "--ctxcache-addr", Addr("ctxcache"), "--poll-interval", "0.2"}));
  // Health and reflection stay open: probes and grpcurl carry no token.
  for (const char* name : kServiceNames) {
    EXPECT_TRUE(CheckHealth(channels_[name], "", 30).ok()) << name;
    // ServerReflectionRequest{list_services: ""}: field 7, length 0.
    std::string listed;
    const grpc::Status st =
        RawCall(channels_[name], "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                {std::string("\x3a\x00", 2)}, "", &listed);
    EXPECT_TRUE(st.ok()) << name << ": " << st.error_message();
    EXPECT_NE(listed.find("ragserve.v1."), std::string::npos)
        << name << " reflection lists no service";
  }
  const Fixtures fx = SetUpFixtures(channels_, tok_.internal, tok_.admin);
  ASSERT_FALSE(fx.fingerprint.empty()) << "fixtures need ctxcache Stats with the admin token";

  const std::string columns[] = {"", "wrong-token", tok_.pub, tok_.internal, tok_.admin};
  std::printf("U: UNAUTHENTICATED, D: PERMISSION_DENIED, else the handler's own status\n");
  std::printf("%-50s %-10s %-10s %-10s %-10s %-10s\n", "rpc", "none", "wrong", "public", "internal",
              "admin");
  for (const RpcSpec& rpc : AllRpcs()) {
    const std::optional<CredentialSet> accepted = AcceptedCredentials(rpc.path);
    ASSERT_TRUE(accepted.has_value()) << rpc.path << " has no row in auth_policy.cc";
    const std::vector<MessageList> seeds = Seeds(rpc, fx);
    ASSERT_FALSE(seeds.empty()) << rpc.path;
    std::string row;
    int served = 0;
    for (int col = 0; col < 5; ++col) {
      const grpc::Status st = Call(channels_[rpc.service], rpc.path, seeds[0], columns[col]);
      char want = Expected(*accepted, col);
      // Ingest's seed creates its collection (create_spec): only admin may, checked past auth.
      const bool creates = rpc.path == "/ragserve.v1.RagService/Ingest" && col == 2;
      if (creates) want = 'D';
      const char got = Observed(st);
      char cell[32];
      std::snprintf(
          cell, sizeof(cell), " %-10s",
          got == 'P' ? std::string(StatusCodeName(static_cast<StatusCode>(st.error_code()))).c_str()
                     : std::string(1, got).c_str());
      row += cell;
      EXPECT_EQ(got, want) << rpc.path << " with credential column " << col << ": "
                           << st.error_code() << " " << st.error_message();
      if (got == 'D' && !creates) {
        EXPECT_NE(st.error_message().find("needs the " + CredentialNames(*accepted)),
                  std::string::npos)
            << rpc.path << ": " << st.error_message();
      }
      if (creates) {
        EXPECT_NE(st.error_message().find("create_spec"), std::string::npos);
      }
      if (got == 'P') {
        ++served;
        // Past auth means the handler answered, with a status its contract allows.
        EXPECT_TRUE(Allowed(rpc, st.error_code(), false))
            << rpc.path << " column " << col << ": " << st.error_code() << " "
            << st.error_message();
        // Least privilege, whatever the table says: the public credential opens nothing inside
        // the cluster and the internal one nothing at the public edge.
        EXPECT_FALSE(col == 2 && rpc.service != "router") << rpc.path << " served public";
        EXPECT_FALSE(col == 3 && rpc.service == "router") << rpc.path << " served internal";
      }
    }
    EXPECT_GT(served, 0) << rpc.path << " serves no credential";
    std::printf("%-50s%s\n", rpc.path.c_str(), row.c_str());
  }
}

TEST_F(AuthMatrixTest, MissingCredentialIsRefusedWithAStartupWarning) {
  // Auth on with the internal token only: admin calls cannot be authorized (fail closed).
  std::string err;
  ASSERT_TRUE(cluster_->Start(
      "index", "index", {"--data-dir", dir_ + "/index", "--internal-token", tok_.internal}, &err))
      << err;
  auto ch = MakeChannel(Addr("index"));
  ASSERT_TRUE(ch.ok());
  MessageList rebuild;
  auto req = std::make_unique<v1::RebuildRequest>();
  req->set_collection("c");
  rebuild.push_back(std::move(req));
  const std::string path = "/ragserve.v1.IndexService/Rebuild";
  EXPECT_EQ(Call(*ch, path, rebuild, tok_.admin).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  const grpc::Status st = Call(*ch, path, rebuild, tok_.internal);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_NE(st.error_message().find("needs the admin credential"), std::string::npos);
  const std::string log = ragserve::testing::ReadFileOrEmpty(cluster_->Get("index")->log);
  EXPECT_NE(log.find("no admin token configured; refusing every call to Rebuild"),
            std::string::npos)
      << log;
}

}  // namespace
}  // namespace ragserve::rpcfuzz
