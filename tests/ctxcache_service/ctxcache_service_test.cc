// The real ragserve-ctxcache binary with the tiny model: Encode -> keys, Get streams KV equal to
// the in-process encoding, Has/Evict, the disk tier survives a restart, bad input.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <memory>
#include <thread>

#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "services/common/client.h"
#include "services/common/rag_template.h"
#include "services/ctxcache/ape_encoder.h"
#include "services/ctxcache/remote_grpc.h"
#include "tests/support/process.h"

namespace ragserve {
namespace {

class CtxServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("ctxsvc");
    std::string error;
    ASSERT_FALSE(testing::MakeTinyModel(dir_, &error).empty()) << error;
    Start();
  }
  void TearDown() override { Stop(); }

  void Start() {
    proc_ = std::make_unique<testing::Process>();
    const std::string ready = dir_ + "/ready.json";
    std::remove(ready.c_str());
    ASSERT_TRUE(proc_->Start(
        testing::BinPath("ragserve-ctxcache"),
        {"--port", "0", "--metrics-port", "0", "--ready-file", ready, "--model", dir_ + "/model",
         "--data-dir", dir_ + "/data", "--executor-threads", std::to_string(executor_threads_)},
        dir_ + "/log.txt"));
    int mport = 0;
    ASSERT_TRUE(testing::WaitForReadyFile(ready, 60, &port_, &mport))
        << testing::ReadFileOrEmpty(dir_ + "/log.txt");
    stub_ = v1::ContextCacheService::NewStub(*MakeChannel("127.0.0.1:" + std::to_string(port_)));
  }
  int executor_threads_ = 0;  // 0 = one per core

  void Stop() {
    proc_->Signal(SIGTERM);
    int code = -1;
    EXPECT_TRUE(proc_->Wait(10, &code));
    EXPECT_EQ(code, 0);
  }

  grpc::Status Encode(const std::vector<std::string>& texts, v1::EncodeResponse* resp) {
    grpc::ClientContext ctx;
    v1::EncodeRequest req;
    for (size_t i = 0; i < texts.size(); ++i) {
      auto* p = req.add_passages();
      p->set_id("p" + std::to_string(i));
      p->set_text(texts[i]);
    }
    return stub_->Encode(&ctx, req, resp);
  }

  // Reassembles K of layer 0 from the Get stream.
  grpc::Status GetLayer0K(const std::string& hex, std::vector<float>* k, int* tokens) {
    grpc::ClientContext ctx;
    v1::GetRequest req;
    req.mutable_key()->set_hex(hex);
    auto reader = stub_->Get(&ctx, req);
    v1::GetResponse m;
    std::string bytes;
    int messages = 0;
    while (reader->Read(&m)) {
      if (messages++ == 0) *tokens = m.tokens();
      if (m.layer() == 0 && !m.is_value()) {
        EXPECT_EQ(m.chunk().offset(), bytes.size());
        bytes += m.chunk().data();
      }
    }
    k->resize(bytes.size() / 4);
    if (!bytes.empty()) std::memcpy(k->data(), bytes.data(), bytes.size());
    return reader->Finish();
  }

  std::string dir_;
  int port_ = 0;
  std::unique_ptr<testing::Process> proc_;
  std::unique_ptr<v1::ContextCacheService::Stub> stub_;
};

const char kText[] =
    "The lighthouse on Varnholm Island is painted a deep teal and was built in 1871.";

TEST_F(CtxServiceTest, EncodeThenGetReturnsTheSameKvAsInProcessAndSurvivesRestart) {
  v1::EncodeResponse r1;
  ASSERT_TRUE(Encode({kText, "Another passage about rivers."}, &r1).ok());
  ASSERT_EQ(r1.results_size(), 2);
  EXPECT_FALSE(r1.results(0).was_cached());
  EXPECT_EQ(r1.results(0).key().hex().size(), 32u);
  v1::EncodeResponse r2;
  ASSERT_TRUE(Encode({kText}, &r2).ok());
  EXPECT_TRUE(r2.results(0).was_cached());
  EXPECT_EQ(r2.results(0).key().hex(), r1.results(0).key().hex());

  std::vector<float> k;
  int tokens = 0;
  ASSERT_TRUE(GetLayer0K(r1.results(0).key().hex(), &k, &tokens).ok());
  // In-process encoding with the same model, prefix and settings gives the same bits.
  auto model = engine::Model::Load(dir_ + "/model");
  auto tok = engine::Tokenizer::FromFile(dir_ + "/model/tokenizer.json");
  ASSERT_TRUE(model.ok() && tok.ok());
  auto cache = ctxcache::BlockCache::Open({});
  ctxcache::ApeSettings as;
  as.prefix = kRagPrefix;
  auto enc = ctxcache::ApeEncoder::Create(model->get(), tok->get(), cache->get(), as);
  ASSERT_TRUE(enc.ok());
  auto e = (*enc)->Encode(kText);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->key.Hex(), r1.results(0).key().hex());
  EXPECT_EQ(tokens, e->kv->tokens);
  EXPECT_EQ(k, e->kv->k[0]);

  // Restart: the disk tier still has the entry.
  Stop();
  Start();
  grpc::ClientContext ctx;
  v1::HasRequest has;
  has.add_keys()->set_hex(r1.results(0).key().hex());
  has.add_keys()->set_hex(std::string(32, '0'));
  v1::HasResponse hr;
  ASSERT_TRUE(stub_->Has(&ctx, has, &hr).ok());
  ASSERT_EQ(hr.present_size(), 2);
  EXPECT_TRUE(hr.present(0));
  EXPECT_FALSE(hr.present(1));
  std::vector<float> k2;
  ASSERT_TRUE(GetLayer0K(r1.results(0).key().hex(), &k2, &tokens).ok());
  EXPECT_EQ(k2, k);
}

// An Encode of 256 long passages is many seconds of prefill. When its caller's deadline passes
// the handler stops between passages instead of encoding the rest for nobody (under a flood the
// executor stayed busy with abandoned work long after the callers left). With one executor
// thread the next call runs only after the abandoned one ended: by then the cache has computed
// only the passages encoded before the deadline, not all 256.
TEST_F(CtxServiceTest, EncodeStopsWhenItsCallerHasGone) {
  Stop();
  executor_threads_ = 1;
  Start();
  v1::EncodeRequest req;
  for (int i = 0; i < 256; ++i) {
    auto* p = req.add_passages();
    p->set_id("p" + std::to_string(i));
    std::string text = "Passage " + std::to_string(i) + ":";
    for (int w = 0; w < 300; ++w) text += " river" + std::to_string((i * 300 + w) % 997);
    p->set_text(text);
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    v1::EncodeResponse resp;
    EXPECT_EQ(stub_->Encode(&ctx, req, &resp).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  v1::EncodeResponse one;
  ASSERT_TRUE(Encode({"A short passage after the abandoned call."}, &one).ok());
  grpc::ClientContext ctx;
  v1::CtxStatsResponse stats;
  ASSERT_TRUE(stub_->Stats(&ctx, v1::CtxStatsRequest(), &stats).ok());
  EXPECT_LT(stats.misses(), 200) << "passages computed: the abandoned Encode ran on";
}

TEST_F(CtxServiceTest, EvictAndBadInputGetClearErrors) {
  v1::EncodeResponse r;
  ASSERT_TRUE(Encode({kText}, &r).ok());
  {
    grpc::ClientContext ctx;
    v1::EvictRequest ev;
    ev.add_keys()->set_hex(r.results(0).key().hex());
    ev.set_include_disk(true);
    v1::EvictResponse er;
    ASSERT_TRUE(stub_->Evict(&ctx, ev, &er).ok());
    EXPECT_EQ(er.evicted(), 1);
  }
  std::vector<float> k;
  int tokens = 0;
  EXPECT_EQ(GetLayer0K(r.results(0).key().hex(), &k, &tokens).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(GetLayer0K("not-hex", &k, &tokens).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::EncodeResponse bad;
  EXPECT_EQ(Encode({""}, &bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Encode({}, &bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Encode({std::string(100000, 'x') + " y z"}, &bad).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext ctx;
  v1::EncodeRequest wrong_model;
  wrong_model.mutable_model()->set_hex("0123456789abcdef");
  wrong_model.add_passages()->set_text(kText);
  v1::EncodeResponse wr;
  EXPECT_EQ(stub_->Encode(&ctx, wrong_model, &wr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

// Resident memory of a process in bytes (0 if unknown).
int64_t ResidentBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

TEST_F(CtxServiceTest, SlowReadersDoNotQueueCopiesOfWholeBlocks) {
  // A ~1500-token entry is ~3 MB of KV (8 messages). 40 readers that never read must not make
  // the service queue 40 copies of it: one chunk in flight per reader.
  std::string text;
  for (int i = 0; text.size() < 2100; ++i) text += " w" + std::to_string(i * 7919 % 100000);
  v1::EncodeResponse r;
  grpc::Status st = Encode({text}, &r);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_GT(r.results(0).tokens(), 500);
  const std::string hex = r.results(0).key().hex();
  std::vector<float> k;
  int tokens = 0;
  ASSERT_TRUE(GetLayer0K(hex, &k, &tokens).ok());  // warm: the entry is in RAM
  const int64_t before = ResidentBytes(proc_->pid());
  constexpr int kReaders = 40;
  std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::GetResponse>>> readers;
  v1::GetRequest req;
  req.mutable_key()->set_hex(hex);
  for (int i = 0; i < kReaders; ++i) {
    ctxs.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(stub_->Get(ctxs.back().get(), req));
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));  // the service has done what it will
  const int64_t grown = ResidentBytes(proc_->pid()) - before;
  const int64_t block = int64_t{r.results(0).tokens()} * 4 * 2 * 64 * 4;
  EXPECT_LT(grown, kReaders * block / 3) << "grew " << grown << " bytes; one block is " << block;
  for (auto& c : ctxs) c->TryCancel();
  for (auto& rd : readers) (void)rd->Finish();
  ASSERT_TRUE(GetLayer0K(hex, &k, &tokens).ok());  // still serving
}

// The decoders' client: Fetch reassembles the Get stream into the stored block, verifies the
// geometry, tells a miss from a failure, and skips a service that just failed.
TEST_F(CtxServiceTest, RemoteBlockCacheFetchesEntriesAndSkipsAServiceThatIsDown) {
  v1::EncodeResponse r;
  ASSERT_TRUE(Encode({kText}, &r).ok());
  auto model = engine::Model::Load(dir_ + "/model");
  ASSERT_TRUE(model.ok());
  const engine::KvGeometry g = (*model)->geometry();
  ctxcache::RemoteExpect expect{(*model)->fingerprint(), g.num_layers, g.num_kv_heads, g.head_dim,
                                4096};
  MetricsRegistry reg;
  ctxcache::RemoteBlockCacheOptions ro;
  ro.address = "127.0.0.1:" + std::to_string(port_);
  ro.metrics = &reg;
  ro.retry_after_ms = 60000;
  auto remote = ctxcache::RemoteBlockCache::Create(ro);
  ASSERT_TRUE(remote.ok()) << remote.status().ToString();
  auto key = ctxcache::KeyId::FromHex(r.results(0).key().hex());
  ASSERT_TRUE(key.ok());
  auto b = (*remote)->Fetch(*key, expect);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->tokens, r.results(0).tokens());
  EXPECT_EQ(static_cast<int64_t>(b->token_ids.size()), b->tokens);
  EXPECT_EQ(b->layers, g.num_layers);
  std::vector<float> k0;
  int tokens = 0;
  ASSERT_TRUE(GetLayer0K(r.results(0).key().hex(), &k0, &tokens).ok());
  std::vector<float> fetched(static_cast<size_t>(b->LayerElements()));
  b->LayerToF32(0, false, fetched.data());
  EXPECT_EQ(fetched, k0);

  auto count = [&](const char* result) {
    return reg.GetCounter("ragserve_ctxcache_remote_fetches_total", "", {{"result", result}})
        .Value();
  };
  EXPECT_EQ((*remote)->Fetch(ctxcache::KeyId{}, expect).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(count("miss"), 1);
  ctxcache::RemoteExpect other_geometry = expect;
  other_geometry.kv_heads += 1;
  EXPECT_EQ((*remote)->Fetch(*key, other_geometry).status().code(),
            StatusCode::kFailedPrecondition);
  ctxcache::RemoteExpect too_long = expect;
  too_long.max_tokens = 2;
  EXPECT_EQ((*remote)->Fetch(*key, too_long).status().code(), StatusCode::kDataLoss);
  ctxcache::RemoteExpect other_model = expect;
  other_model.fingerprint = "0123456789abcdef";
  EXPECT_FALSE((*remote)->Fetch(*key, other_model).ok());
  EXPECT_EQ(count("hit"), 1);
  EXPECT_EQ(count("error"), 3);
  // Entry errors do not make the client skip the service.
  EXPECT_TRUE((*remote)->Fetch(*key, expect).ok());

  // Down: the first call fails, the next ones are skipped without a call.
  Stop();
  const Status down = (*remote)->Fetch(*key, expect).status();
  EXPECT_TRUE(down.code() == StatusCode::kUnavailable ||
              down.code() == StatusCode::kDeadlineExceeded)
      << down.ToString();
  EXPECT_EQ(count("error"), 4);
  EXPECT_EQ((*remote)->Fetch(*key, expect).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(count("skipped"), 1);
  Start();
}

}  // namespace
}  // namespace ragserve
