// The index service in process (ServiceServer + IndexGrpcService) under a flood of maximal
// Upsert messages against a small --memory-limit-mb (StoreLimits::max_memory_bytes): the flood
// is answered RESOURCE_EXHAUSTED naming the flag once the collections are full, every message
// is applied whole or not at all, every acknowledged one is there, and the process's memory
// stops growing at the limit.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "ragserve/v1/index.grpc.pb.h"
#include "services/common/server.h"
#include "services/index/collection.h"
#include "services/index/service.h"
#include "tests/support/process.h"

namespace ragserve::collection {
namespace {

int64_t LimitTestRssBytes() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

TEST(IndexMemoryLimitTest, UpsertFloodIsResourceExhaustedAtTheLimitWithEveryMessageWholeOrAbsent) {
  const std::string dir = testing::MakeTempDir("rs_index_memlimit");
  constexpr int64_t kLimit = int64_t{32} << 20;
  StoreLimits limits;
  limits.max_memory_bytes = kLimit;
  auto store = CollectionStore::Open(dir + "/data", limits).value();
  ServerConfig cfg;
  cfg.service = "index";
  cfg.metrics_port = -1;
  // 4 streams at once hold 4 x 8 MiB of the 256 MiB request budget (--executor-queue-mb), so
  // that budget never refuses them first.
  cfg.max_message_mb = 8;
  ServiceServer server(cfg);
  IndexGrpcService service(&server, store.get());
  server.AddService(&service, "ragserve.v1.IndexService");
  ASSERT_TRUE(server.Start().ok());
  auto channel = grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials());
  auto stub = v1::IndexService::NewStub(channel);
  {
    v1::CreateCollectionRequest req;
    req.mutable_spec()->set_name("flood");
    req.mutable_spec()->set_dimension(64);
    req.mutable_spec()->set_index_kind(v1::INDEX_KIND_FLAT);
    v1::CreateCollectionResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->CreateCollection(&ctx, req, &resp).ok());
  }
  const int64_t rss0 = LimitTestRssBytes();
  // 4 clients, each sending one-message Upsert streams of 2,000 new documents (texts of 40
  // words, new ones among them, and metadata) until two in a row are refused.
  constexpr int kClients = 4, kDocs = 2000;
  std::atomic<int64_t> acknowledged{0}, refused{0}, other{0};
  std::atomic<int> next_message{0};
  std::string refusal;
  std::mutex refusal_mu;
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&] {
      int refused_in_a_row = 0;
      while (refused_in_a_row < 2) {
        const int m = next_message++;
        if (m >= 100) return;  // 200,000 documents: far past the limit (a broken build)
        v1::UpsertRequest msg;
        msg.set_collection("flood");
        std::mt19937 rng(m);
        for (int i = 0; i < kDocs; ++i) {
          auto* d = msg.add_documents();
          d->set_id("m" + std::to_string(m) + "-" + std::to_string(i));
          std::string text;
          for (int w = 0; w < 40; ++w) text += "w" + std::to_string(rng() % 20000) + " ";
          d->set_text(text);
          d->set_metadata_json(R"({"message": )" + std::to_string(m) + "}");
        }
        grpc::ClientContext ctx;
        v1::UpsertResponse resp;
        auto writer = stub->Upsert(&ctx, &resp);
        writer->Write(msg);
        writer->WritesDone();
        const grpc::Status st = writer->Finish();
        if (st.ok()) {
          acknowledged += kDocs;
          refused_in_a_row = 0;
        } else if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED &&
                   st.error_message().find("--memory-limit-mb") != std::string::npos) {
          ++refused;
          ++refused_in_a_row;
          std::lock_guard<std::mutex> l(refusal_mu);
          refusal = st.error_message();
        } else {
          ++other;
          ADD_FAILURE() << st.error_code() << ": " << st.error_message();
          return;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  const int64_t rss = LimitTestRssBytes() - rss0;
  auto c = store->Get("flood").value();
  const CollectionInfo info = c->Info();
  std::printf(
      "flood of %d-document Upserts against a %lld MiB limit: %lld documents acknowledged, %lld "
      "messages refused; estimate %.1f MiB; VmRSS +%.1f MiB\n  %s\n",
      kDocs, static_cast<long long>(kLimit >> 20), static_cast<long long>(acknowledged.load()),
      static_cast<long long>(refused.load()), store->MemoryBytes() / 1048576.0, rss / 1048576.0,
      refusal.c_str());
  EXPECT_EQ(other.load(), 0);
  EXPECT_GE(refused.load(), kClients * 2);
  EXPECT_GT(acknowledged.load(), 0);
  // Whole messages only, and exactly the acknowledged ones.
  EXPECT_EQ(info.num_documents, acknowledged.load());
  EXPECT_EQ(info.num_vectors, acknowledged.load());
  EXPECT_LE(store->MemoryBytes(), kLimit);
  {
    v1::StatsRequest req;
    req.set_collection("flood");
    v1::StatsResponse resp;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Stats(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.info().memory_bytes(), store->MemoryBytes());
  }
  // The process grew by the collections (~1.1x the estimate,
  // tests/index/collection_memory_test.cc), RocksDB's memtable (up to 64 MiB), the flood's messages
  // in flight and the allocator's slack; without the limit it would grow until the 100 messages
  // were in.
  EXPECT_LT(rss, 2 * kLimit + (int64_t{64} << 20));
  server.Shutdown();
}

}  // namespace
}  // namespace ragserve::collection
