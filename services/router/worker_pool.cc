#include "services/router/worker_pool.h"

#include <grpcpp/client_context.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "grpc/health/v1/health.grpc.pb.h"
#include "services/common/auth.h"
#include "services/common/logging.h"

namespace ragserve::router {

namespace {
using Clock = std::chrono::steady_clock;
constexpr auto kRoutedGrace = std::chrono::seconds(5);

Clock::duration Seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// "host:port" -> every address it resolves to, as "ip:port" ("[ip6]:port").
StatusOr<std::vector<std::string>> ResolveAll(const std::string& hostport) {
  const size_t colon = hostport.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == hostport.size()) {
    return InvalidArgument(StrCat("worker DNS name must be host:port, got '", hostport, "'"));
  }
  const std::string host = hostport.substr(0, colon);
  const std::string port = hostport.substr(colon + 1);
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return Unavailable(StrCat("resolving ", hostport, ": ", gai_strerror(rc)));
  }
  std::set<std::string> out;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char ip[NI_MAXHOST];
    if (getnameinfo(a->ai_addr, a->ai_addrlen, ip, sizeof(ip), nullptr, 0, NI_NUMERICHOST) != 0) {
      continue;
    }
    out.insert(a->ai_family == AF_INET6 ? StrCat("[", ip, "]:", port) : StrCat(ip, ":", port));
  }
  freeaddrinfo(res);
  return std::vector<std::string>(out.begin(), out.end());
}

int64_t LoadOf(const Worker& w, const v1::LoadReport& load) {
  return int64_t{w.inflight()} + load.active_sequences() + load.queued_requests();
}

}  // namespace

CallOutcome ClassifyWorkerCall(grpc::StatusCode code, bool caller_done) {
  using C = grpc::StatusCode;
  switch (code) {
    case C::OK:
    case C::INVALID_ARGUMENT:  // the request is malformed: every worker would say so
    case C::NOT_FOUND:
    case C::ALREADY_EXISTS:     // its request id is live there
    case C::OUT_OF_RANGE:       // prompt + max_tokens beyond the model context
    case C::PERMISSION_DENIED:  // token configuration: the same on every worker
    case C::UNAUTHENTICATED:
      return CallOutcome::kAnswered;
    case C::CANCELLED:
      // The client's cancel reaches the worker call first and ctx->IsCancelled() a moment
      // later: never blame the worker for a CANCELLED.
      return caller_done ? CallOutcome::kCallerGaveUp : CallOutcome::kTryElsewhere;
    case C::DEADLINE_EXCEEDED:
      // Unless the client's deadline passed, the router's call_timeout_s ended the call: the
      // worker did not answer in time.
      return caller_done ? CallOutcome::kCallerGaveUp : CallOutcome::kWorkerFault;
    case C::RESOURCE_EXHAUSTED:
      return CallOutcome::kTryElsewhere;
    default:  // UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS, ABORTED, FAILED_PRECONDITION, ...
      return CallOutcome::kWorkerFault;
  }
}

bool ShouldFailOver(CallOutcome outcome) {
  return outcome == CallOutcome::kWorkerFault || outcome == CallOutcome::kTryElsewhere;
}

StatusOr<Policy> ParsePolicy(const std::string& name) {
  if (name == "round_robin") return Policy::kRoundRobin;
  if (name == "least_load") return Policy::kLeastLoad;
  if (name == "cache_aware") return Policy::kCacheAware;
  return InvalidArgument(
      StrCat("unknown routing policy '", name, "' (round_robin, least_load, cache_aware)"));
}

Worker::Worker(std::string address, std::shared_ptr<grpc::Channel> channel)
    : address_(std::move(address)),
      channel_(std::move(channel)),
      stub_(v1::DecoderService::NewStub(channel_)) {}

WorkerLease& WorkerLease::operator=(WorkerLease&& o) noexcept {
  if (this != &o) {
    Release();
    w_ = std::move(o.w_);
  }
  return *this;
}

void WorkerLease::Release() {
  if (w_) w_->inflight_.fetch_sub(1);
  w_.reset();
}

StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Create(WorkerPoolOptions opts) {
  opts.addresses.erase(std::remove(opts.addresses.begin(), opts.addresses.end(), std::string()),
                       opts.addresses.end());
  RS_CHECK_ARG(!opts.addresses.empty() || !opts.dns.empty(),
               "no decode workers: give --decoders host:port,... and/or --decoders-dns host:port");
  RS_CHECK_ARG(opts.max_inflight_per_worker >= 1, "max in-flight per worker must be >= 1");
  RS_CHECK_ARG(opts.poll_interval_s > 0, "poll interval must be > 0");
  std::unique_ptr<WorkerPool> pool(new WorkerPool(std::move(opts)));
  {
    MutexLock lock(pool->mu_);
    for (const auto& a : pool->opts_.addresses) {
      if (a.empty()) continue;  // "--decoders=" clears the default list
      RS_CHECK_ARG(a.find(':') != std::string::npos && a[0] != '-',
                   "decoder address must be host:port, got '", a, "'");
      pool->AddWorker(a);
    }
  }
  pool->RefreshNow();
  pool->poller_ = std::thread([p = pool.get()] { p->PollLoop(); });
  return pool;
}

WorkerPool::WorkerPool(WorkerPoolOptions opts) : opts_(std::move(opts)) {}

WorkerPool::~WorkerPool() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (poller_.joinable()) poller_.join();
}

std::shared_ptr<Worker> WorkerPool::AddWorker(const std::string& address) {
  for (auto& w : workers_) {
    if (w->address() == address) return w;
  }
  auto ch = MakeChannel(address, opts_.channel);
  if (!ch.ok()) {
    RS_LOG(warn, "router: cannot make a channel to {}: {}", address, ch.status().ToString());
    return nullptr;
  }
  auto w = std::make_shared<Worker>(address, *ch);
  workers_.push_back(w);
  RS_LOG(info, "router: decode worker {} added", address);
  return w;
}

void WorkerPool::Resolve() {
  if (opts_.dns.empty()) return;
  auto addrs = ResolveAll(opts_.dns);
  if (!addrs.ok()) {
    RS_LOG(warn, "router: {}", addrs.status().ToString());
    return;  // keep the last known set
  }
  MutexLock lock(mu_);
  const std::set<std::string> now(addrs->begin(), addrs->end());
  const std::set<std::string> fixed(opts_.addresses.begin(), opts_.addresses.end());
  for (const auto& a : now) {
    if (auto w = AddWorker(a)) w->in_dns = true;
  }
  workers_.erase(std::remove_if(workers_.begin(), workers_.end(),
                                [&](const std::shared_ptr<Worker>& w) {
                                  const bool gone = w->in_dns && !now.count(w->address()) &&
                                                    !fixed.count(w->address());
                                  if (gone) RS_LOG(info, "router: worker {} left", w->address());
                                  return gone;
                                }),
                 workers_.end());
}

void WorkerPool::Poll() {
  std::vector<std::shared_ptr<Worker>> ws;
  {
    MutexLock lock(mu_);
    ws = workers_;
  }
  for (auto& w : ws) PollWorker(w);
}

namespace {

// Whether the worker's health service says NOT_SERVING (draining). A worker without a health
// service (UNIMPLEMENTED) or one that does not answer is judged by GetLoad alone.
bool HealthSaysDraining(const std::shared_ptr<grpc::Channel>& channel,
                        std::chrono::system_clock::time_point deadline) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service("ragserve.v1.DecoderService");
  grpc::health::v1::HealthCheckResponse resp;
  if (!stub->Check(&ctx, req, &resp).ok()) return false;
  return resp.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
}

}  // namespace

void WorkerPool::PollWorker(const std::shared_ptr<Worker>& w) {
  const auto deadline =
      std::chrono::system_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(std::max(0.2, opts_.poll_interval_s) * 1000));
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  AttachToken(&ctx, opts_.token);
  v1::LoadRequest req;
  v1::LoadReport load;
  const grpc::Status st = w->stub()->GetLoad(&ctx, req, &load);
  const bool draining = st.ok() && HealthSaysDraining(w->channel_, deadline);
  {
    MutexLock lock(mu_);
    const bool was = w->healthy;
    const bool was_draining = w->draining;
    w->healthy = st.ok();
    w->draining = draining;
    if (draining != was_draining) {
      RS_LOG(info, "router: worker {} {}", w->address(),
             draining ? "is draining (NOT_SERVING): no new calls" : "serves again");
    }
    if (st.ok()) {
      w->load = load;
      w->cached_keys = std::set<std::string>(load.cached_passage_keys().begin(),
                                             load.cached_passage_keys().end());
      // Passages routed here recently may not be in the report yet (still being encoded when
      // the worker answered): keep them for a short grace period.
      const auto now = Clock::now();
      for (auto it = w->routed_keys.begin(); it != w->routed_keys.end();) {
        if (now - it->second > kRoutedGrace) {
          it = w->routed_keys.erase(it);
        } else {
          w->cached_keys.insert(it->first);
          ++it;
        }
      }
    }
    if (was != w->healthy) {
      RS_LOG(info, "router: worker {} is {}{}", w->address(), w->healthy ? "healthy" : "down",
             st.ok() ? "" : StrCat(" (", st.error_message(), ")"));
    }
  }
}

void WorkerPool::RefreshNow() {
  Resolve();
  Poll();
}

void WorkerPool::PollLoop() {
  while (true) {
    {
      MutexLock lock(mu_);
      if (lock.WaitFor(cv_, Seconds(opts_.poll_interval_s),
                       [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; })) {
        return;
      }
    }
    if (Clock::now() >= next_resolve_) {
      Resolve();
      next_resolve_ = Clock::now() + Seconds(opts_.resolve_interval_s);
    }
    Poll();
  }
}

StatusOr<WorkerLease> WorkerPool::Pick(Policy policy, const PickHint& hint) {
  auto lease = PickOnce(policy, hint);
  if (lease.ok() || lease.status().code() != StatusCode::kUnavailable) return lease;
  // No healthy worker by the last poll: workers may have just (re)started. Poll now, once.
  Poll();
  return PickOnce(policy, hint);
}

StatusOr<WorkerLease> WorkerPool::PickOnce(Policy policy, const PickHint& hint) {
  MutexLock lock(mu_);
  if (workers_.empty()) return Unavailable("no decode workers known");
  const auto now = Clock::now();
  std::vector<std::shared_ptr<Worker>> ok;
  int healthy = 0;
  for (auto& w : workers_) {
    if (!w->healthy || w->draining || hint.exclude.count(w->address())) continue;
    if (w->open_until > now) continue;  // breaker open
    if (w->consecutive_failures >= opts_.breaker_failures && w->trial_in_flight) continue;
    ++healthy;
    if (w->inflight() >= opts_.max_inflight_per_worker) continue;
    ok.push_back(w);
  }
  if (ok.empty()) {
    if (healthy > 0) {
      return ResourceExhausted(StrCat("all ", healthy,
                                      " healthy decode workers are at their "
                                      "in-flight limit (",
                                      opts_.max_inflight_per_worker, ")"));
    }
    return Unavailable(StrCat("no healthy decode worker (", workers_.size(), " known, ",
                              hint.exclude.size(), " already tried)"));
  }
  std::shared_ptr<Worker> best;
  switch (policy) {
    case Policy::kRoundRobin:
      best = ok[rr_next_++ % ok.size()];
      break;
    case Policy::kLeastLoad: {
      auto key = [](const std::shared_ptr<Worker>& w) {
        return std::make_pair(LoadOf(*w, w->load), w->load.queued_tokens());
      };
      best = *std::min_element(ok.begin(), ok.end(),
                               [&](const auto& a, const auto& b) { return key(a) < key(b); });
      break;
    }
    case Policy::kCacheAware: {
      int min_inflight = std::numeric_limits<int>::max();
      for (auto& w : ok) min_inflight = std::min(min_inflight, w->inflight());
      double best_cost = std::numeric_limits<double>::infinity();
      for (auto& w : ok) {
        if (w->inflight() > min_inflight + opts_.max_imbalance) continue;
        double uncached = static_cast<double>(hint.other_tokens);
        for (size_t i = 0; i < hint.passage_tokens.size(); ++i) {
          const bool resident =
              i < hint.cache_keys.size() && w->cached_keys.count(hint.cache_keys[i]) > 0;
          if (!resident) uncached += static_cast<double>(hint.passage_tokens[i]);
        }
        const double cost = uncached + opts_.load_weight * static_cast<double>(LoadOf(*w, w->load));
        if (cost < best_cost) {
          best_cost = cost;
          best = w;
        }
      }
      break;
    }
  }
  if (best->consecutive_failures >= opts_.breaker_failures) best->trial_in_flight = true;
  // The worker will hold these passages once it has served the request: count them resident
  // now, so a repeat that arrives before the next load poll goes to the same worker.
  for (const auto& k : hint.cache_keys) {
    best->cached_keys.insert(k);
    best->routed_keys[k] = now;
  }
  best->inflight_.fetch_add(1);
  return WorkerLease(best);
}

void WorkerPool::Report(const Worker& w, const grpc::Status& st) {
  Report(w, ClassifyWorkerCall(st.error_code(), /*caller_done=*/false), st);
}

void WorkerPool::Report(const Worker& w, CallOutcome outcome, const grpc::Status& st) {
  MutexLock lock(mu_);
  for (auto& x : workers_) {
    if (x.get() != &w) continue;
    x->trial_in_flight = false;
    switch (outcome) {
      case CallOutcome::kAnswered:
        x->consecutive_failures = 0;
        break;
      case CallOutcome::kWorkerFault:
        if (st.error_code() == grpc::StatusCode::UNAVAILABLE) x->healthy = false;
        if (++x->consecutive_failures >= opts_.breaker_failures) {
          x->open_until = Clock::now() + Seconds(opts_.breaker_cooldown_s);
          RS_LOG(warn, "router: circuit open for worker {} after {} failures ({})", x->address(),
                 x->consecutive_failures, st.error_message());
        }
        break;
      case CallOutcome::kTryElsewhere:
      case CallOutcome::kCallerGaveUp:
        break;
    }
  }
}

}  // namespace ragserve::router
