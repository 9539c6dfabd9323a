// A backend that dies under the decode worker (a GPU context with a sticky error) must fail the
// worker's requests with UNAVAILABLE (so a router retries them elsewhere), refuse new ones and
// report the failure once; a step that merely fails (a healthy backend) fails only its batch.
// The "GPU" here is FastOps behind an Ops whose Synchronize/Health fail on demand: the
// generator's logic is what is under test, and it runs on the CPU in every CI run.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "services/decoder/generator.h"
#include "tests/engine/engine_test_util.h"

namespace ragserve::decoder {
namespace {

class BreakableOps final : public kernels::Ops {
 public:
  std::string_view name() const override { return "breakable"; }
  Status Synchronize() const override {
    return fail_step.load() ? Internal("an illegal memory access was encountered") : OkStatus();
  }
  Status Health() const override {
    return dead.load() ? Unavailable("device context lost") : OkStatus();
  }
  void MatMul(const float* x, int64_t m, const kernels::WeightView& w,
              const kernels::WeightView* bias, float* y) const override {
    fast().MatMul(x, m, w, bias, y);
  }
  void RmsNorm(const float* x, int64_t m, int64_t n, const kernels::WeightView& g, float eps,
               float* y) const override {
    fast().RmsNorm(x, m, n, g, eps, y);
  }
  void Rope(float* x, int64_t m, int heads, int head_dim, const int32_t* positions,
            const float* inv_freq) const override {
    fast().Rope(x, m, heads, head_dim, positions, inv_freq);
  }
  void SiluMul(const float* gate, const float* up, int64_t n, float* out) const override {
    fast().SiluMul(gate, up, n, out);
  }
  void Add(float* y, const float* x, int64_t n) const override { fast().Add(y, x, n); }
  void Embed(const kernels::WeightView& table, const int32_t* ids, int64_t m,
             float* out) const override {
    fast().Embed(table, ids, m, out);
  }
  void Attention(const float* q, int h, const float* k, int64_t ldk, const float* v, int64_t ldv,
                 int64_t n, int d, float scale, float* o, float* lse) const override {
    fast().Attention(q, h, k, ldk, v, ldv, n, d, scale, o, lse);
  }

  mutable std::atomic<bool> fail_step{false};  // Forward's final Synchronize fails
  mutable std::atomic<bool> dead{false};       // Health reports the device gone

 private:
  static const kernels::Ops& fast() { return kernels::FastOps(); }
};

struct JobOutcome {
  Status status;
  GenerateStats result;
};

std::unique_ptr<GenerateJob> Job(const std::string& id, std::promise<JobOutcome>* done,
                                 std::promise<void>* first_token) {
  auto job = std::make_unique<GenerateJob>();
  job->request_id = id;
  job->prompt = {1, 5, 9, 13, 17};
  job->stop.max_tokens = 1000;
  auto fired = std::make_shared<std::atomic<bool>>(false);
  job->on_delta = [first_token, fired](const std::vector<int32_t>&, const std::string&) {
    if (first_token != nullptr && !fired->exchange(true)) first_token->set_value();
  };
  job->on_done = [done](const Status& st, const GenerateStats& r) { done->set_value({st, r}); };
  return job;
}

class DeviceFailureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine::TinyModelOptions o = engine::testing::SmallOptions();
    o.max_position_embeddings = 2048;
    model_ = engine::testing::MakeModel(dir_, o, "m", &ops_);
    ASSERT_NE(model_, nullptr);
  }
  engine::testing::TempDir dir_;
  BreakableOps ops_;
  std::unique_ptr<engine::Model> model_;
};

TEST_F(DeviceFailureTest, ADeadBackendFailsEveryRequestWithUnavailableAndRefusesNewOnes) {
  std::atomic<int> failures{0};
  Status reported;
  GeneratorOptions go;
  go.on_device_failure = [&](const Status& st) {
    reported = st;
    ++failures;
  };
  Generator gen(model_.get(), nullptr, go);
  std::promise<JobOutcome> a_done, b_done;
  std::promise<void> a_first;
  ASSERT_TRUE(gen.Submit(Job("a", &a_done, &a_first)).ok());
  ASSERT_TRUE(gen.Submit(Job("b", &b_done, nullptr)).ok());
  ASSERT_EQ(a_first.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
  ops_.dead = true;
  ops_.fail_step = true;
  for (auto* p : {&a_done, &b_done}) {
    auto f = p->get_future();
    ASSERT_EQ(f.wait_for(std::chrono::seconds(30)), std::future_status::ready);
    const JobOutcome out = f.get();
    EXPECT_EQ(out.status.code(), StatusCode::kUnavailable) << out.status.ToString();
    EXPECT_NE(out.status.message().find("device context lost"), std::string::npos)
        << out.status.ToString();
  }
  std::promise<JobOutcome> c_done;
  const Status c = gen.Submit(Job("c", &c_done, nullptr));
  EXPECT_EQ(c.code(), StatusCode::kUnavailable) << c.ToString();
  EXPECT_EQ(failures.load(), 1);
  EXPECT_EQ(reported.code(), StatusCode::kUnavailable);
  gen.Shutdown();
}

TEST_F(DeviceFailureTest, AFailedStepOnAHealthyBackendFailsOnlyThatBatch) {
  std::atomic<int> failures{0};
  GeneratorOptions go;
  go.on_device_failure = [&](const Status&) { ++failures; };
  Generator gen(model_.get(), nullptr, go);
  std::promise<JobOutcome> a_done;
  std::promise<void> a_first;
  ASSERT_TRUE(gen.Submit(Job("a", &a_done, &a_first)).ok());
  ASSERT_EQ(a_first.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
  ops_.fail_step = true;
  auto fa = a_done.get_future();
  ASSERT_EQ(fa.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(fa.get().status.code(), StatusCode::kInternal);
  ops_.fail_step = false;
  // The worker still serves.
  std::promise<JobOutcome> b_done;
  auto job = Job("b", &b_done, nullptr);
  job->stop.max_tokens = 3;
  ASSERT_TRUE(gen.Submit(std::move(job)).ok());
  auto fb = b_done.get_future();
  ASSERT_EQ(fb.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  const JobOutcome b = fb.get();
  EXPECT_TRUE(b.status.ok()) << b.status.ToString();
  EXPECT_EQ(b.result.generated_tokens, 3);
  EXPECT_EQ(failures.load(), 0);
  gen.Shutdown();
}

}  // namespace
}  // namespace ragserve::decoder
