// The real ragserve-kvr binary on loopback: a sequence streamed in with CreateSequence, then
// Attend over gRPC equals the same KvRetrieval library in-process, before and after decode-time
// Append; bad input, release, the memory limit and auth give clear errors and leave nothing
// behind.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "ragserve/v1/kvr.grpc.pb.h"
#include "services/common/auth.h"
#include "services/common/client.h"
#include "services/common/wire.h"
#include "services/kvr/kv_retrieval.h"
#include "tests/support/kvr_synthetic.h"
#include "tests/support/process.h"

namespace ragserve::kvr {
namespace {

constexpr int kLayers = 2, kKvHeads = 2, kGroup = 4, kQHeads = kKvHeads * kGroup, kDim = 64;
constexpr int64_t kTokens = 2000, kDecode = 40, kSinks = 16, kWindow = 64;
constexpr char kToken[] = "kvr-test-token";        // internal credential
constexpr char kAdminToken[] = "kvr-admin-token";  // Stats needs the admin one

// K/V [tokens, Hkv, d], prefill queries [tokens, Hq, d] and decode queries [kDecode, Hq, d] of one
// layer, from one synthetic workload per kv head (its group's query heads).
struct LayerData {
  std::vector<float> k, v, pq, dq;
};

LayerData MakeLayer(int layer) {
  LayerData L;
  const int64_t n = kTokens + kDecode;
  L.k.resize(n * kKvHeads * kDim);
  L.v.resize(n * kKvHeads * kDim);
  L.pq.resize(kTokens * kQHeads * kDim);
  L.dq.resize(kDecode * kQHeads * kDim);
  for (int g = 0; g < kKvHeads; ++g) {
    SyntheticParams p;
    p.n_keys = n;
    p.head_dim = kDim;
    p.group_size = kGroup;
    p.n_decode = kDecode;
    p.n_topics = 2;
    p.seed = 100 + layer * 10 + g;
    auto w = GenerateWorkload(p).value();
    for (int64_t t = 0; t < n; ++t) {
      std::copy_n(w.keys.begin() + t * kDim, kDim, L.k.begin() + (t * kKvHeads + g) * kDim);
      std::copy_n(w.values.begin() + t * kDim, kDim, L.v.begin() + (t * kKvHeads + g) * kDim);
    }
    for (int64_t t = 0; t < kTokens; ++t) {
      std::copy_n(w.prefill_queries.begin() + t * kGroup * kDim, kGroup * kDim,
                  L.pq.begin() + (t * kQHeads + g * kGroup) * kDim);
    }
    for (int64_t t = 0; t < kDecode; ++t) {
      std::copy_n(w.decode_queries.begin() + t * kGroup * kDim, kGroup * kDim,
                  L.dq.begin() + (t * kQHeads + g * kGroup) * kDim);
    }
  }
  return L;
}

v1::SequenceSpec Spec(const std::string& id) {
  v1::SequenceSpec s;
  s.set_sequence_id(id);
  s.set_num_layers(kLayers);
  s.set_num_kv_heads(kKvHeads);
  s.set_num_q_heads(kQHeads);
  s.set_head_dim(kDim);
  s.set_sink_tokens(kSinks);
  s.set_window_tokens(kWindow);
  s.set_index_kind(v1::KEY_INDEX_ATTENTION_AWARE);
  return s;
}

class KvrServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    layers_ = new std::vector<LayerData>;
    for (int l = 0; l < kLayers; ++l) layers_->push_back(MakeLayer(l));
  }
  static void TearDownTestSuite() { delete layers_; }

  void SetUp() override {
    dir_ = testing::MakeTempDir("kvr-test");
    const std::string ready = dir_ + "/ready.json";
    ASSERT_TRUE(proc_.Start(
        testing::BinPath("ragserve-kvr"),
        {"--port", "0", "--metrics-port", "0", "--ready-file", ready, "--internal-token", kToken,
         "--admin-token", kAdminToken, "--memory-limit-gib", "0.02"},
        dir_ + "/log.txt", {}, dir_));
    int port = 0, mport = 0;
    ASSERT_TRUE(testing::WaitForReadyFile(ready, 60, &port, &mport))
        << testing::ReadFileOrEmpty(dir_ + "/log.txt");
    auto ch = MakeChannel("127.0.0.1:" + std::to_string(port));
    ASSERT_TRUE(ch.ok());
    stub_ = v1::KvRetrievalService::NewStub(*ch);
  }

  void TearDown() override {
    proc_.Signal(SIGTERM);
    int code = -1;
    EXPECT_TRUE(proc_.Wait(10, &code));
    EXPECT_EQ(code, 0) << testing::ReadFileOrEmpty(dir_ + "/log.txt");
  }

  void Prepare(grpc::ClientContext* ctx, bool with_token = true, const char* token = kToken) {
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    if (with_token) AttachToken(ctx, token);
  }

  // Streams tokens [0, kTokens) of every layer in chunks of `chunk` tokens.
  grpc::Status Create(const std::string& id, int64_t chunk, v1::CreateSequenceResponse* resp,
                      bool corrupt_last = false) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    auto w = stub_->CreateSequence(&ctx, resp);
    bool first = true;
    for (int64_t t0 = 0; t0 < kTokens; t0 += chunk) {
      const int64_t n = std::min(chunk, kTokens - t0);
      v1::CreateSequenceRequest req;
      if (first) *req.mutable_spec() = Spec(id);
      first = false;
      for (int l = 0; l < kLayers; ++l) {
        const LayerData& L = (*layers_)[l];
        v1::KvChunk* c = req.add_chunks();
        c->set_layer(l);
        wire::FloatsToTensor(L.k.data() + t0 * kKvHeads * kDim, {n, kKvHeads, kDim},
                             c->mutable_k());
        wire::FloatsToTensor(L.v.data() + t0 * kKvHeads * kDim, {n, kKvHeads, kDim},
                             c->mutable_v());
        wire::FloatsToTensor(L.pq.data() + t0 * kQHeads * kDim, {n, kQHeads, kDim},
                             c->mutable_prefill_queries());
        if (corrupt_last && t0 + chunk >= kTokens) c->mutable_v()->set_shape(2, kDim + 1);
      }
      if (!w->Write(req)) break;
    }
    w->WritesDone();
    return w->Finish();
  }

  // The same sequence in-process.
  static void CreateLocal(KvRetrieval* local) {
    SequenceConfig cfg;
    cfg.kv = {.num_layers = kLayers, .num_kv_heads = kKvHeads, .head_dim = kDim};
    cfg.num_q_heads = kQHeads;
    cfg.sink_tokens = kSinks;
    cfg.window_tokens = kWindow;
    cfg.index_kind = static_cast<int>(KeyIndexKind::kAttentionAware);
    ASSERT_TRUE(local->Create("s", cfg).ok());
    for (int l = 0; l < kLayers; ++l) {
      const LayerData& L = (*layers_)[l];
      ASSERT_TRUE(local->AppendKv("s", l, kTokens, L.k.data(), L.v.data()).ok());
      ASSERT_TRUE(local->AddPrefillQueries("s", l, kTokens, L.pq.data()).ok());
    }
    ASSERT_TRUE(local->FinishPrefill("s").ok());
  }

  grpc::Status AttendRemote(const std::string& id, int64_t step, int top_k,
                            v1::AttendResponse* resp) {
    v1::AttendRequest req;
    req.set_sequence_id(id);
    req.set_top_k(top_k);
    for (int l = 0; l < kLayers; ++l) {
      v1::AttendItem* it = req.add_items();
      it->set_layer(l);
      wire::FloatsToTensor((*layers_)[l].dq.data() + step * kQHeads * kDim, {kQHeads, kDim},
                           it->mutable_queries());
    }
    grpc::ClientContext ctx;
    Prepare(&ctx);
    return stub_->Attend(&ctx, req, resp);
  }

  // Attend over gRPC equals in-process for every layer.
  void ExpectSameAttend(KvRetrieval* local, int64_t step, int top_k) {
    v1::AttendResponse resp;
    grpc::Status st = AttendRemote("s", step, top_k, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(resp.results_size(), kLayers);
    for (int l = 0; l < kLayers; ++l) {
      const auto& r = resp.results(l);
      EXPECT_EQ(r.layer(), l);
      auto o = wire::TensorToFloats(r.o(), {kQHeads, kDim}, false, "o");
      auto lse = wire::TensorToFloats(r.lse(), {kQHeads}, false, "lse");
      ASSERT_TRUE(o.ok() && lse.ok());
      auto ref = local->Attend("s", l, (*layers_)[l].dq.data() + step * kQHeads * kDim,
                               kQHeads * kDim, {.top_k = top_k});
      ASSERT_TRUE(ref.ok()) << ref.status().ToString();
      for (int i = 0; i < kQHeads * kDim; ++i) ASSERT_NEAR((*o)[i], ref->o[i], 1e-6) << i;
      for (int i = 0; i < kQHeads; ++i) ASSERT_NEAR((*lse)[i], ref->lse[i], 1e-6);
      EXPECT_EQ(r.keys_scored(), ref->keys_scored);
      EXPECT_GT(r.keys_scored(), 0);
    }
  }

  static std::vector<LayerData>* layers_;
  std::string dir_;
  testing::Process proc_;
  std::unique_ptr<v1::KvRetrievalService::Stub> stub_;
};

std::vector<LayerData>* KvrServiceTest::layers_ = nullptr;

TEST_F(KvrServiceTest, AttendOverGrpcEqualsInProcessBeforeAndAfterAppend) {
  v1::CreateSequenceResponse cresp;
  grpc::Status st = Create("s", 700, &cresp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(cresp.tokens(), kTokens);
  EXPECT_GT(cresp.bytes(), kTokens * kLayers * kKvHeads * kDim * 4 * 2 - 1);
  KvRetrieval local;
  CreateLocal(&local);
  for (int64_t step : {0, 1, 2}) ExpectSameAttend(&local, step, 50);

  // Decode: append kDecode tokens per layer remotely and locally; tokens leave the window.
  for (int64_t t = kTokens; t < kTokens + kDecode; ++t) {
    v1::AppendRequest req;
    req.set_sequence_id("s");
    for (int l = 0; l < kLayers; ++l) {
      v1::KvChunk* c = req.add_chunks();
      c->set_layer(l);
      wire::FloatsToTensor((*layers_)[l].k.data() + t * kKvHeads * kDim, {1, kKvHeads, kDim},
                           c->mutable_k());
      wire::FloatsToTensor((*layers_)[l].v.data() + t * kKvHeads * kDim, {1, kKvHeads, kDim},
                           c->mutable_v());
      ASSERT_TRUE(local
                      .AppendKv("s", l, 1, (*layers_)[l].k.data() + t * kKvHeads * kDim,
                                (*layers_)[l].v.data() + t * kKvHeads * kDim)
                      .ok());
    }
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::AppendResponse aresp;
    ASSERT_TRUE(stub_->Append(&ctx, req, &aresp).ok());
    EXPECT_EQ(aresp.tokens(), t + 1);
    if (t % 10 == 0) ExpectSameAttend(&local, t - kTokens, 50);
  }

  grpc::ClientContext sctx;
  Prepare(&sctx, true, kAdminToken);
  v1::KvrStatsResponse stats;
  ASSERT_TRUE(stub_->Stats(&sctx, {}, &stats).ok());
  EXPECT_EQ(stats.sequences(), 1);
  EXPECT_GE(stats.attend_calls(), 7 * kLayers);
  EXPECT_GT(stats.bytes_used(), 0);
  EXPECT_EQ(stats.bytes_limit(), static_cast<int64_t>(0.02 * (1 << 30)));
}

TEST_F(KvrServiceTest, BadInputReleaseMemoryLimitAndAuthAreClearErrors) {
  // A malformed last chunk: INVALID_ARGUMENT naming it, and the sequence is not left behind.
  v1::CreateSequenceResponse cresp;
  grpc::Status st = Create("s", 1000, &cresp, /*corrupt_last=*/true);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("v: dimension 2"), std::string::npos) << st.error_message();
  {
    grpc::ClientContext ctx;
    Prepare(&ctx, true, kAdminToken);
    v1::KvrStatsResponse stats;
    ASSERT_TRUE(stub_->Stats(&ctx, {}, &stats).ok());
    EXPECT_EQ(stats.sequences(), 0);
    EXPECT_EQ(stats.bytes_used(), 0);
  }
  ASSERT_TRUE(Create("s", 1000, &cresp).ok());

  v1::AttendResponse resp;
  EXPECT_EQ(AttendRemote("nope", 0, 10, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(AttendRemote("s", 0, 0, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  st = AttendRemote("s", 0, kTokens + 1, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("top_k"), std::string::npos) << st.error_message();
  {
    v1::AttendRequest req;
    req.set_sequence_id("s");
    req.set_top_k(10);
    std::vector<float> q(kQHeads * kDim, 0.5f);
    q[7] = std::numeric_limits<float>::quiet_NaN();
    wire::FloatsToTensor(q.data(), {kQHeads, kDim}, req.add_items()->mutable_queries());
    grpc::ClientContext ctx;
    Prepare(&ctx);
    EXPECT_EQ(stub_->Attend(&ctx, req, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    wire::FloatsToTensor(q.data(), {kQHeads / 2, kDim * 2},
                         req.mutable_items(0)->mutable_queries());
    grpc::ClientContext ctx2;
    Prepare(&ctx2);
    st = stub_->Attend(&ctx2, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("queries"), std::string::npos) << st.error_message();
  }
  // Without the token.
  {
    grpc::ClientContext ctx;
    Prepare(&ctx, /*with_token=*/false);
    v1::AttendRequest req;
    req.set_sequence_id("s");
    EXPECT_EQ(stub_->Attend(&ctx, req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  // Over the memory limit (20 MiB; the sequence holds ~3 MiB): RESOURCE_EXHAUSTED, and the
  // failed sequence is released.
  {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::CreateSequenceResponse r2;
    auto w = stub_->CreateSequence(&ctx, &r2);
    v1::CreateSequenceRequest req;
    v1::SequenceSpec spec = Spec("big");
    spec.set_index_kind(v1::KEY_INDEX_EXACT);
    *req.mutable_spec() = spec;
    std::vector<float> kv(4096 * kKvHeads * kDim, 0.25f);
    v1::KvChunk* c = req.add_chunks();
    wire::FloatsToTensor(kv.data(), {4096, kKvHeads, kDim}, c->mutable_k());
    wire::FloatsToTensor(kv.data(), {4096, kKvHeads, kDim}, c->mutable_v());
    for (int i = 0; i < 10 && w->Write(req); ++i) req.clear_spec();
    w->WritesDone();
    st = w->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  }
  // Release: bytes come back; later use is FAILED_PRECONDITION.
  {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::ReleaseRequest req;
    req.set_sequence_id("s");
    v1::ReleaseResponse rr;
    ASSERT_TRUE(stub_->Release(&ctx, req, &rr).ok());
    EXPECT_GT(rr.bytes_freed(), 0);
  }
  EXPECT_EQ(AttendRemote("s", 0, 10, &resp).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::AppendRequest req;
    req.set_sequence_id("s");
    v1::AppendResponse ar;
    EXPECT_EQ(stub_->Append(&ctx, req, &ar).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext ctx;
    Prepare(&ctx, true, kAdminToken);
    v1::KvrStatsResponse stats;
    ASSERT_TRUE(stub_->Stats(&ctx, {}, &stats).ok());
    EXPECT_EQ(stats.sequences(), 0);
    EXPECT_EQ(stats.bytes_used(), 0);
  }
}

TEST_F(KvrServiceTest, ShapesAndSpecsBeyondLimitsAreInvalidArgumentAndTheServiceLives) {
  // Each request once killed the process (the buffer was sized from the shape before the byte
  // count was checked, or the shape's size overflowed int64 and passed the check).
  auto create = [&](const v1::SequenceSpec& spec, std::vector<int64_t> k_shape, size_t bytes) {
    grpc::ClientContext ctx;
    Prepare(&ctx);
    v1::CreateSequenceResponse resp;
    auto w = stub_->CreateSequence(&ctx, &resp);
    v1::CreateSequenceRequest req;
    *req.mutable_spec() = spec;
    if (!k_shape.empty()) {
      v1::KvChunk* c = req.add_chunks();
      for (auto* t : {c->mutable_k(), c->mutable_v()}) {
        t->set_dtype(v1::DTYPE_F32);
        for (int64_t d : k_shape) t->add_shape(d);
        t->set_data(std::string(bytes, '\0'));
      }
    }
    w->Write(req);
    w->WritesDone();
    return w->Finish();
  };
  v1::SequenceSpec small = Spec("small");
  small.set_num_kv_heads(1);
  small.set_num_q_heads(1);
  small.set_head_dim(4);
  grpc::Status st = create(small, {int64_t{1} << 40, 1, 4}, 16);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  st = create(small, {int64_t{1} << 62, 1, 4}, 0);  // 2^62 * 4 * 4 bytes wraps to 0
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("overflow"), std::string::npos) << st.error_message();
  v1::SequenceSpec huge = Spec("huge");
  huge.set_num_layers(2147483647);
  huge.set_num_kv_heads(1 << 20);
  huge.set_num_q_heads(1 << 20);
  huge.set_head_dim(1 << 20);
  st = create(huge, {}, 0);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  v1::SequenceSpec layers = Spec("layers");
  layers.set_num_layers(2147483647);
  st = create(layers, {}, 0);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  // Still serving, nothing left behind.
  grpc::ClientContext ctx;
  Prepare(&ctx, true, kAdminToken);
  v1::KvrStatsResponse stats;
  ASSERT_TRUE(stub_->Stats(&ctx, {}, &stats).ok());
  EXPECT_EQ(stats.sequences(), 0);
  v1::CreateSequenceResponse cresp;
  EXPECT_TRUE(Create("s", 1000, &cresp).ok());
}

}  // namespace
}  // namespace ragserve::kvr
