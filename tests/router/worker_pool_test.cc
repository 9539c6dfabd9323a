// WorkerPool against fake decode workers on loopback: each fake answers GetLoad with a report the
// test sets (or fails it), so health, the three policies, the in-flight limit, the circuit
// breaker and DNS discovery are checked through Pick's choices. The poller thread sleeps for a
// minute between rounds; the tests drive discovery and polling with RefreshNow().
#include "services/router/worker_pool.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netdb.h>
#include <sys/socket.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace ragserve::router {
namespace {

// A DecoderService whose GetLoad returns what the test set; Generate and Cancel are not used.
class FakeWorker final : public v1::DecoderService::Service {
 public:
  FakeWorker() {
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    b.RegisterService(this);
    server_ = b.BuildAndStart();
  }
  ~FakeWorker() override { server_->Shutdown(std::chrono::system_clock::now()); }

  grpc::Status GetLoad(grpc::ServerContext*, const v1::LoadRequest*, v1::LoadReport* out) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (down_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "fake worker is down");
    *out = report_;
    return grpc::Status::OK;
  }

  void SetLoad(int active, int queued = 0, int64_t queued_tokens = 0,
               std::vector<std::string> cached = {}) {
    std::lock_guard<std::mutex> lock(mu_);
    report_.set_active_sequences(active);
    report_.set_queued_requests(queued);
    report_.set_queued_tokens(queued_tokens);
    report_.clear_cached_passage_keys();
    for (auto& k : cached) report_.add_cached_passage_keys(k);
  }
  // Health NOT_SERVING for the decoder service (a worker draining on SIGTERM).
  void SetDraining(bool draining) {
    server_->GetHealthCheckService()->SetServingStatus("ragserve.v1.DecoderService", !draining);
  }
  void SetDown(bool down) {
    std::lock_guard<std::mutex> lock(mu_);
    down_ = down;
  }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::mutex mu_;
  bool down_ = false;
  v1::LoadReport report_;
};

WorkerPoolOptions Options(const std::vector<const FakeWorker*>& workers) {
  WorkerPoolOptions o;
  for (const auto* w : workers) o.addresses.push_back(w->address());
  o.poll_interval_s = 60;  // the tests poll with RefreshNow()
  o.resolve_interval_s = 60;
  return o;
}

std::unique_ptr<WorkerPool> MakePool(const WorkerPoolOptions& o) {
  auto pool = WorkerPool::Create(o);
  EXPECT_TRUE(pool.ok()) << pool.status().ToString();
  return pool.ok() ? std::move(*pool) : nullptr;
}

// The address Pick chooses (its lease released at once).
std::string PickAddress(WorkerPool& pool, Policy policy, const PickHint& hint = {}) {
  auto lease = pool.Pick(policy, hint);
  if (!lease.ok()) return "error: " + lease.status().ToString();
  return (*lease)->address();
}

PickHint OnePassage(const std::string& key, int64_t tokens) {
  PickHint h;
  h.passage_tokens = {tokens};
  h.cache_keys = {key};
  return h;
}

TEST(WorkerPoolTest, ParsePolicyKnowsTheThreeNames) {
  EXPECT_EQ(*ParsePolicy("round_robin"), Policy::kRoundRobin);
  EXPECT_EQ(*ParsePolicy("least_load"), Policy::kLeastLoad);
  EXPECT_EQ(*ParsePolicy("cache_aware"), Policy::kCacheAware);
  const auto bad = ParsePolicy("fastest");
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'fastest'"), std::string::npos);
}

// Issue 17 #10: which endings are the worker's fault (fail over, count for the breaker), a busy
// worker (fail over only), the caller giving up (neither), or an answer (resets the breaker).
TEST(WorkerPoolTest, ClassifyWorkerCallBlamesTheWorkerOnlyForItsOwnFailures) {
  using C = grpc::StatusCode;
  for (auto c : {C::UNAVAILABLE, C::INTERNAL, C::UNKNOWN, C::DATA_LOSS, C::ABORTED,
                 C::FAILED_PRECONDITION, C::UNIMPLEMENTED, C::DEADLINE_EXCEEDED}) {
    EXPECT_EQ(ClassifyWorkerCall(c, /*caller_done=*/false), CallOutcome::kWorkerFault) << c;
  }
  EXPECT_EQ(ClassifyWorkerCall(C::RESOURCE_EXHAUSTED, false), CallOutcome::kTryElsewhere);
  EXPECT_EQ(ClassifyWorkerCall(C::CANCELLED, false), CallOutcome::kTryElsewhere);
  EXPECT_EQ(ClassifyWorkerCall(C::CANCELLED, /*caller_done=*/true), CallOutcome::kCallerGaveUp);
  EXPECT_EQ(ClassifyWorkerCall(C::DEADLINE_EXCEEDED, true), CallOutcome::kCallerGaveUp);
  for (auto c : {C::OK, C::INVALID_ARGUMENT, C::NOT_FOUND, C::ALREADY_EXISTS, C::OUT_OF_RANGE,
                 C::PERMISSION_DENIED, C::UNAUTHENTICATED}) {
    EXPECT_EQ(ClassifyWorkerCall(c, false), CallOutcome::kAnswered) << c;
  }
  EXPECT_TRUE(ShouldFailOver(CallOutcome::kWorkerFault));
  EXPECT_TRUE(ShouldFailOver(CallOutcome::kTryElsewhere));
  EXPECT_FALSE(ShouldFailOver(CallOutcome::kCallerGaveUp));
  EXPECT_FALSE(ShouldFailOver(CallOutcome::kAnswered));
}

TEST(WorkerPoolTest, CreateRejectsMissingOrMalformedWorkers) {
  WorkerPoolOptions none;
  none.addresses = {""};  // "--decoders=" clears the list
  EXPECT_EQ(WorkerPool::Create(none).status().code(), StatusCode::kInvalidArgument);
  WorkerPoolOptions no_port;
  no_port.addresses = {"localhost"};
  const auto st = WorkerPool::Create(no_port).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("'localhost'"), std::string::npos) << st.message();
  FakeWorker w;
  WorkerPoolOptions zero = Options({&w});
  zero.max_inflight_per_worker = 0;
  EXPECT_EQ(WorkerPool::Create(zero).status().code(), StatusCode::kInvalidArgument);
}

TEST(WorkerPoolTest, RoundRobinTakesHealthyWorkersInTurnAndSkipsDownOnes) {
  FakeWorker a, b, c;
  c.SetDown(true);
  auto pool = MakePool(Options({&a, &b, &c}));
  ASSERT_NE(pool, nullptr);
  std::vector<std::string> picked;
  for (int i = 0; i < 4; ++i) picked.push_back(PickAddress(*pool, Policy::kRoundRobin));
  EXPECT_EQ(picked, (std::vector<std::string>{a.address(), b.address(), a.address(), b.address()}));
  // c answers again: the next poll makes it eligible.
  c.SetDown(false);
  pool->RefreshNow();
  std::set<std::string> seen;
  for (int i = 0; i < 3; ++i) seen.insert(PickAddress(*pool, Policy::kRoundRobin));
  EXPECT_EQ(seen, (std::set<std::string>{a.address(), b.address(), c.address()}));
}

TEST(WorkerPoolTest, NoHealthyWorkerIsUnavailableUntilOneAnswersAgain) {
  FakeWorker a;
  a.SetDown(true);
  auto pool = MakePool(Options({&a}));
  ASSERT_NE(pool, nullptr);
  const auto none = pool->Pick(Policy::kLeastLoad, {});
  EXPECT_EQ(none.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find("no healthy decode worker (1 known"), std::string::npos)
      << none.status().message();
  // Pick polls once more when nothing is healthy: a worker that just came back is found
  // without waiting for the poller.
  a.SetDown(false);
  EXPECT_EQ(PickAddress(*pool, Policy::kLeastLoad), a.address());
}

TEST(WorkerPoolTest, LeastLoadCountsInFlightActiveAndQueuedThenQueuedTokens) {
  FakeWorker a, b;
  a.SetLoad(/*active=*/3, /*queued=*/2);
  b.SetLoad(/*active=*/4, /*queued=*/0);
  auto pool = MakePool(Options({&a, &b}));
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(PickAddress(*pool, Policy::kLeastLoad), b.address());  // 4 < 5
  {
    // Two requests in flight on b make it the busier one (6 > 5).
    auto l1 = pool->Pick(Policy::kLeastLoad, {});
    ASSERT_TRUE(l1.ok());
    EXPECT_EQ((*l1)->address(), b.address());
    EXPECT_EQ((*l1)->inflight(), 1);
    PickHint skip_a;
    skip_a.exclude = {a.address()};
    auto l2 = pool->Pick(Policy::kLeastLoad, skip_a);
    ASSERT_TRUE(l2.ok());
    EXPECT_EQ((*l2)->inflight(), 2);
    EXPECT_EQ(PickAddress(*pool, Policy::kLeastLoad), a.address());
  }
  // Leases released: b is the least loaded again. Equal counts: fewer queued tokens wins.
  EXPECT_EQ(PickAddress(*pool, Policy::kLeastLoad), b.address());
  a.SetLoad(2, 0, /*queued_tokens=*/900);
  b.SetLoad(2, 0, /*queued_tokens=*/100);
  pool->RefreshNow();
  EXPECT_EQ(PickAddress(*pool, Policy::kLeastLoad), b.address());
  a.SetLoad(2, 0, 50);
  pool->RefreshNow();
  EXPECT_EQ(PickAddress(*pool, Policy::kLeastLoad), a.address());
}

TEST(WorkerPoolTest, CacheAwarePrefersResidentPassagesUnlessTheLoadCostsMore) {
  FakeWorker a, b;
  a.SetLoad(/*active=*/1, 0, 0, {"k1"});
  b.SetLoad(/*active=*/0);
  WorkerPoolOptions o = Options({&a, &b});
  o.load_weight = 64;
  auto pool = MakePool(o);
  ASSERT_NE(pool, nullptr);
  // a holds the passage: 0 uncached tokens + 64 * 1 load beats b's 500 uncached tokens.
  EXPECT_EQ(PickAddress(*pool, Policy::kCacheAware, OnePassage("k1", 500)), a.address());
  // A short passage is cheaper to prefill on the idle worker than a's load: 40 < 64.
  EXPECT_EQ(PickAddress(*pool, Policy::kCacheAware, OnePassage("k1", 40)), b.address());
  // Without cache keys only question tokens and load count.
  PickHint no_keys;
  no_keys.passage_tokens = {500};
  no_keys.other_tokens = 10;
  EXPECT_EQ(PickAddress(*pool, Policy::kCacheAware, no_keys), b.address());
}

TEST(WorkerPoolTest, CacheAwareSendsARepeatToTheWorkerItWasRoutedToBeforeTheNextPoll) {
  FakeWorker a, b;
  a.SetLoad(/*active=*/5);
  b.SetLoad(/*active=*/0);
  auto pool = MakePool(Options({&a, &b}));
  ASSERT_NE(pool, nullptr);
  // Nobody holds "k2": the idle b gets it.
  EXPECT_EQ(PickAddress(*pool, Policy::kCacheAware, OnePassage("k2", 300)), b.address());
  // Now b is busier than a; a's 300 prefill tokens (+ 0 load) would beat b's 64 * 2 load if b
  // were not counted as holding k2, which its report does not list yet (still encoding).
  a.SetLoad(0);
  b.SetLoad(2);
  pool->RefreshNow();
  EXPECT_EQ(PickAddress(*pool, Policy::kCacheAware, OnePassage("k2", 300)), b.address());
  // A passage routed nowhere goes by load.
  EXPECT_EQ(PickAddress(*pool, Policy::kCacheAware, OnePassage("k3", 300)), a.address());
}

TEST(WorkerPoolTest, CacheAwareNeverFloodsAWorkerBeyondTheImbalanceLimit) {
  FakeWorker a, b;
  a.SetLoad(0, 0, 0, {"hot"});
  b.SetLoad(0);
  WorkerPoolOptions o = Options({&a, &b});
  o.max_imbalance = 2;
  o.load_weight = 1;  // the passage outweighs any load here
  auto pool = MakePool(o);
  ASSERT_NE(pool, nullptr);
  std::vector<WorkerLease> held;
  for (int i = 0; i < 3; ++i) {
    auto l = pool->Pick(Policy::kCacheAware, OnePassage("hot", 10000));
    ASSERT_TRUE(l.ok());
    EXPECT_EQ((*l)->address(), a.address()) << "pick " << i;
    held.push_back(std::move(*l));
  }
  // a has 3 in flight, b 0: 3 > 0 + 2, so a is out of the running despite the hot passage.
  EXPECT_EQ(PickAddress(*pool, Policy::kCacheAware, OnePassage("hot", 10000)), b.address());
}

TEST(WorkerPoolTest, InFlightLimitIsResourceExhaustedUntilALeaseIsReleased) {
  FakeWorker a;
  WorkerPoolOptions o = Options({&a});
  o.max_inflight_per_worker = 2;
  auto pool = MakePool(o);
  ASSERT_NE(pool, nullptr);
  auto l1 = pool->Pick(Policy::kRoundRobin, {});
  auto l2 = pool->Pick(Policy::kRoundRobin, {});
  ASSERT_TRUE(l1.ok() && l2.ok());
  const auto full = pool->Pick(Policy::kRoundRobin, {});
  EXPECT_EQ(full.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("in-flight limit (2)"), std::string::npos)
      << full.status().message();
  l1->Release();
  EXPECT_EQ((*l2)->inflight(), 1);
  EXPECT_TRUE(pool->Pick(Policy::kRoundRobin, {}).ok());
}

TEST(WorkerPoolTest, ExcludedAddressesAreNotPicked) {
  FakeWorker a, b;
  auto pool = MakePool(Options({&a, &b}));
  ASSERT_NE(pool, nullptr);
  PickHint hint;
  hint.exclude = {a.address()};
  for (int i = 0; i < 3; ++i) EXPECT_EQ(PickAddress(*pool, Policy::kRoundRobin, hint), b.address());
  hint.exclude.insert(b.address());
  const auto none = pool->Pick(Policy::kRoundRobin, hint);
  EXPECT_EQ(none.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find("2 already tried"), std::string::npos)
      << none.status().message();
}

TEST(WorkerPoolTest, BreakerOpensAfterServerFailuresThenLetsOneTrialThrough) {
  FakeWorker a, b;
  WorkerPoolOptions o = Options({&a, &b});
  o.breaker_failures = 2;
  o.breaker_cooldown_s = 0.3;
  auto pool = MakePool(o);
  ASSERT_NE(pool, nullptr);
  auto lease_a = [&]() -> WorkerLease {
    PickHint h;
    h.exclude = {b.address()};
    auto l = pool->Pick(Policy::kRoundRobin, h);
    return l.ok() ? std::move(*l) : WorkerLease();
  };
  WorkerLease la = lease_a();
  ASSERT_TRUE(la);
  const Worker& wa = *la.get();
  // Client errors never count; one server failure is below the threshold.
  pool->Report(wa, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad request"));
  pool->Report(wa, grpc::Status(grpc::StatusCode::INTERNAL, "boom"));
  EXPECT_TRUE(lease_a());
  // A success resets the count, so two more failures are needed to open the breaker.
  pool->Report(wa, grpc::Status::OK);
  pool->Report(wa, grpc::Status(grpc::StatusCode::INTERNAL, "boom"));
  EXPECT_TRUE(lease_a());
  pool->Report(wa, grpc::Status(grpc::StatusCode::INTERNAL, "boom"));
  // Open: a is skipped while it cools down (and round robin only finds b).
  EXPECT_FALSE(lease_a());
  for (int i = 0; i < 3; ++i) EXPECT_EQ(PickAddress(*pool, Policy::kRoundRobin), b.address());
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  // Half-open: exactly one trial call; a second waits for the trial's outcome.
  WorkerLease trial = lease_a();
  EXPECT_TRUE(trial);
  EXPECT_FALSE(lease_a());
  // The trial failed: open again for another cooldown.
  pool->Report(wa, grpc::Status(grpc::StatusCode::INTERNAL, "still broken"));
  trial.Release();
  EXPECT_FALSE(lease_a());
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  trial = lease_a();
  ASSERT_TRUE(trial);
  // The trial succeeded: closed, any number of calls again.
  pool->Report(wa, grpc::Status::OK);
  trial.Release();
  WorkerLease x = lease_a(), y = lease_a();
  EXPECT_TRUE(x && y);
}

TEST(WorkerPoolTest, AnUnavailableReportTakesTheWorkerOutUntilItsNextGoodPoll) {
  FakeWorker a, b;
  auto pool = MakePool(Options({&a, &b}));
  ASSERT_NE(pool, nullptr);
  {
    PickHint h;
    h.exclude = {b.address()};
    auto l = pool->Pick(Policy::kRoundRobin, h);
    ASSERT_TRUE(l.ok());
    pool->Report(*l->get(), grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset"));
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(PickAddress(*pool, Policy::kRoundRobin), b.address());
  pool->RefreshNow();  // a answers its GetLoad: healthy again
  std::set<std::string> seen;
  for (int i = 0; i < 2; ++i) seen.insert(PickAddress(*pool, Policy::kRoundRobin));
  EXPECT_EQ(seen, (std::set<std::string>{a.address(), b.address()}));
}

// Every address "localhost" resolves to, as the pool writes them ("ip:port", "[ip6]:port").
std::set<std::string> LocalhostAddresses(int port) {
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  std::set<std::string> out;
  if (getaddrinfo("localhost", std::to_string(port).c_str(), &hints, &res) != 0) return out;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char ip[NI_MAXHOST];
    if (getnameinfo(a->ai_addr, a->ai_addrlen, ip, sizeof(ip), nullptr, 0, NI_NUMERICHOST) != 0) {
      continue;
    }
    const std::string p = std::to_string(port);
    out.insert(a->ai_family == AF_INET6 ? "[" + std::string(ip) + "]:" + p
                                        : std::string(ip) + ":" + p);
  }
  freeaddrinfo(res);
  return out;
}

TEST(WorkerPoolTest, DnsNameAddsEveryResolvedAddressOnceBesideTheStaticList) {
  FakeWorker a;  // listens on 127.0.0.1 only
  const std::set<std::string> resolved = LocalhostAddresses(a.port());
  ASSERT_TRUE(resolved.count(a.address())) << "localhost does not resolve to 127.0.0.1 here";
  WorkerPoolOptions o;
  o.dns = "localhost:" + std::to_string(a.port());
  o.addresses = {a.address()};  // also listed statically: one worker, not two
  o.poll_interval_s = 60;
  o.resolve_interval_s = 60;
  auto pool = MakePool(o);
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(PickAddress(*pool, Policy::kRoundRobin), a.address());
  // Known workers = the resolved addresses (127.0.0.1 counted once; ::1, where resolved, has no
  // server and stays unhealthy).
  PickHint all;
  all.exclude = {a.address()};
  const auto none = pool->Pick(Policy::kRoundRobin, all);
  EXPECT_EQ(none.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find("(" + std::to_string(resolved.size()) + " known"),
            std::string::npos)
      << none.status().message();
}

TEST(WorkerPoolTest, AFailedResolutionKeepsTheKnownWorkers) {
  FakeWorker a;
  WorkerPoolOptions o = Options({&a});
  o.dns = "no-port-given";  // fails before any lookup (no network wait in a sandbox)
  auto pool = MakePool(o);
  ASSERT_NE(pool, nullptr);
  pool->RefreshNow();
  EXPECT_EQ(PickAddress(*pool, Policy::kRoundRobin), a.address());
}

// Issue 17 #10: a caller's cancel neither resets nor counts; busy neither; timeouts count.
TEST(WorkerPoolTest, CallerCancelAndBusyLeaveTheBreakerAloneTimeoutsCount) {
  FakeWorker a, b;
  WorkerPoolOptions o = Options({&a, &b});
  o.breaker_failures = 2;
  o.breaker_cooldown_s = 60;
  auto pool = MakePool(o);
  ASSERT_NE(pool, nullptr);
  PickHint only_a;
  only_a.exclude = {b.address()};
  auto la = pool->Pick(Policy::kRoundRobin, only_a);
  ASSERT_TRUE(la.ok());
  const Worker& wa = *la->get();
  const grpc::Status cancelled(grpc::StatusCode::CANCELLED, "client cancelled");
  pool->Report(wa, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "worker timed out"));
  pool->Report(wa, CallOutcome::kCallerGaveUp, cancelled);  // must not reset the count
  pool->Report(wa, cancelled);                              // nor a CANCELLED classified alone
  pool->Report(wa, grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "queue full"));
  pool->Report(wa, grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "worker timed out"));
  la->Release();
  // Two worker faults in a row (the cancel and the busy answer in between do not count): open.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(PickAddress(*pool, Policy::kRoundRobin), b.address());
  EXPECT_FALSE(pool->Pick(Policy::kRoundRobin, only_a).ok());
}

// Issue 17 #10: a draining worker (health NOT_SERVING, GetLoad still answered) gets no new work.
TEST(WorkerPoolTest, DrainingWorkerIsNotPickedUntilItServesAgain) {
  FakeWorker a, b;
  auto pool = MakePool(Options({&a, &b}));
  ASSERT_NE(pool, nullptr);
  a.SetDraining(true);
  pool->RefreshNow();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(PickAddress(*pool, Policy::kRoundRobin), b.address());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(PickAddress(*pool, Policy::kLeastLoad), b.address());
  a.SetDraining(false);
  pool->RefreshNow();
  std::set<std::string> seen;
  for (int i = 0; i < 2; ++i) seen.insert(PickAddress(*pool, Policy::kRoundRobin));
  EXPECT_EQ(seen, (std::set<std::string>{a.address(), b.address()}));
}

}  // namespace
}  // namespace ragserve::router
