// `ragctl ingest` of a 50 MB markdown file through a real router and index: the file is streamed
// and cut into passages, so ragctl's peak memory stays far below the file's size, and the last
// passage is found with its document, position and offset.
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <fcntl.h>

#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "ragserve/v1/index.grpc.pb.h"
#include "tests/e2e/cluster.h"

extern char** environ;

namespace ragserve {
namespace {

constexpr int64_t kFileBytes = 50'000'000;

// Writes ~kFileBytes of markdown: sections of random words, "zephyrine" only in the last one.
void WriteMarkdown(const std::string& path) {
  std::ofstream f(path);
  std::mt19937_64 rng(22);
  const char* kWords[] = {"the",   "river", "ferry",   "keeper", "stone",  "bridge",
                          "north", "of",    "harbour", "market", "island", "tower",
                          "a",     "and",   "to",      "in"};
  int64_t size = 0;
  for (int s = 0; size < kFileBytes; ++s) {
    std::string section = "## Section " + std::to_string(s) + "\n\n";
    const int n = 40 + static_cast<int>(rng() % 120);
    for (int i = 0; i < n; ++i) section += std::string(kWords[rng() % 16]) + " ";
    section += ".\n\n";
    f << section;
    size += static_cast<int64_t>(section.size());
  }
  f << "The zephyrine lighthouse closes the file.\n";
}

// Runs argv with stdout to `out_path`; returns the exit code and the peak RSS in KiB.
int RunMeasured(const std::vector<std::string>& argv, const std::string& out_path,
                long* max_rss_kib) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) return -1;
  int status = 0;
  rusage ru{};
  if (wait4(pid, &status, 0, &ru) != pid) return -1;
  *max_rss_kib = ru.ru_maxrss;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(IngestE2eTest, FiftyMegabyteMarkdownIsStreamedInPassagesWithBoundedMemory) {
  const std::string dir = testing::MakeTempDir("ingest-e2e");
  testing::Cluster cluster(dir);
  std::string err;
  ASSERT_TRUE(cluster.Start("index", "index", {"--data-dir", dir + "/index-data"}, &err)) << err;
  ASSERT_TRUE(cluster.Start("router", "router",
                            {"--index-addr", cluster.Get("index")->addr(), "--decoders",
                             "127.0.0.1:" + std::to_string(testing::FreePort())},
                            &err))
      << err;
  const std::string md = dir + "/big.md";
  WriteMarkdown(md);
  long rss_kib = 0;
  const int code = RunMeasured(
      {testing::BinPath("ragctl"), "--addr", cluster.Get("router")->addr(), "ingest", md,
       "--collection", "big", "--create", "--dimension", "16", "--index", "flat", "--no-progress",
       "--batch", "256", "--chunk-tokens", "1000", "--chunk-overlap", "0"},
      dir + "/ragctl.out", &rss_kib);
  const std::string out = testing::ReadFileOrEmpty(dir + "/ragctl.out");
  ASSERT_EQ(code, 0) << out;
  long passages = 0;
  ASSERT_EQ(std::sscanf(out.c_str(), "ingested %ld passages", &passages), 1) << out;
  EXPECT_GT(passages, 5000);  // ~8M words in passages of at most 1,000
  // Loading the file whole would take more than its 50 MB; streamed, ragctl holds a batch.
  EXPECT_LT(rss_kib, 40 * 1024) << "ragctl peak RSS " << rss_kib << " KiB";
  std::printf("ragctl: %ld passages, peak RSS %ld KiB\n", passages, rss_kib);

  auto index = v1::IndexService::NewStub(*MakeChannel(cluster.Get("index")->addr()));
  grpc::ClientContext ctx;
  v1::SearchRequest req;
  req.set_collection("big");
  req.add_queries()->set_text("zephyrine");
  req.set_k(3);
  req.set_include_text(true);
  req.set_retrieval(v1::RETRIEVAL_MODE_BM25);
  v1::SearchResponse resp;
  ASSERT_TRUE(index->Search(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.results(0).hits_size(), 1);
  const v1::Hit& h = resp.results(0).hits(0);
  EXPECT_EQ(h.document_id(), md);
  EXPECT_EQ(h.chunk_index(), passages - 1);
  EXPECT_GT(h.offset(), kFileBytes - 20000);
  EXPECT_NE(h.text().find("zephyrine lighthouse"), std::string::npos);
  grpc::ClientContext sctx;
  v1::StatsRequest sreq;
  sreq.set_collection("big");
  v1::StatsResponse stats;
  ASSERT_TRUE(index->Stats(&sctx, sreq, &stats).ok());
  EXPECT_EQ(stats.info().num_documents(), passages);
}

}  // namespace
}  // namespace ragserve
