// chaos-driver: the whole cluster (index, kvr, ctxcache, two decoders, router) under a steady
// load of greedy RAG queries (the loadgen query path) and a concurrent ingest stream, while a
// schedule of faults runs: kill -9 + restart, SIGSTOP (a hung peer), a degraded link (latency +
// packet loss), a full disk. Reports, per fault: the queries that failed and their statuses, the
// recovery time to full throughput, acknowledged ingests lost, greedy answers that differ from
// the fault-free reference, and each service's memory high-water mark (VmHWM).
//
// Run it through tools/chaos (the wrapper builds the network namespaces and tmpfs data dirs as
// root, and removes them whatever happens); docs/RELIABILITY.md has the table of a full run.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/index.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/client.h"
#include "services/common/mutex.h"
#include "tools/chaos/delay_proxy.h"
#include "tools/loadgen/loadgen.h"

namespace ragserve::chaos {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::atomic<bool> g_interrupted{false};
Clock::time_point g_t0;

double Now() { return std::chrono::duration<double>(Clock::now() - g_t0).count(); }
Clock::time_point At(double s) {
  return g_t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}
void SleepS(double s) {
  if (s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

void Log(const std::string& line) {
  std::fprintf(stderr, "[chaos %7.2fs] %s\n", Now(), line.c_str());
  std::fflush(stderr);
}

// ---- Options -----------------------------------------------------------------------------------

struct Options {
  std::string bin_dir;
  std::string source_dir;
  std::string work_dir;
  std::string model;
  std::string netns_tag;   // "" = everything on 127.0.0.1
  std::string net_prefix;  // "10.77.31": service i at .(2+i), this program at .10
  std::string faults = "full";
  double qps = 4;
  int max_tokens = 16;
  int questions = 12;
  int sequential_every = 4;  // every Nth round of the questions is sent sequential (KV retrieval)
  double ingest_rate = 2;    // batches per second
  int ingest_docs = 4;       // documents per batch
  bool ingest_pre_encode = true;  // ingest also encodes the documents in the context cache
  double query_timeout_s = 20;
  double retry_s = 30;  // a query retries UNAVAILABLE / RESOURCE_EXHAUSTED this long
  double baseline_s = 8;
  double settle_s = 3;
  double down_s = 1;          // kill -9 -> restart
  double window_s = 3;        // recovery: a window this long of clean, fast answers
  double recover_max_s = 90;  // give up waiting for recovery (a failed fault)
  double grace_s = 5;         // failures accepted this long after recovery
  double latency_ok_s = 0;    // recovery: answers at most this slow (0 = from the reference)
  int link_delay_ms = 150;
  int link_jitter_ms = 30;
  double link_loss_pct = 5;
  bool self_test_checks = false;
  std::string json_out;
};

// ---- Processes ---------------------------------------------------------------------------------

struct Service {
  std::string name;  // index, kvr, ctxcache, dec0, dec1, router
  std::string binary;
  std::string ns;  // network namespace, "" = the host's
  std::string host;
  int port = 0;
  std::vector<std::string> args;
  pid_t pid = -1;
  int incarnation = 0;
};

const char* const kServices[] = {"index", "kvr", "ctxcache", "dec0", "dec1", "router"};
constexpr int kNumServices = 6;

int ServiceIndex(const std::string& name) {
  for (int i = 0; i < kNumServices; ++i) {
    if (name == kServices[i]) return i;
  }
  return -1;
}

int FreePort(const std::string& host) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  ::inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

int64_t ReadHwmKb(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));
  }
  return 0;
}

int RunCmd(const std::string& cmd) {
  const int rc = std::system((cmd + " >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

class Cluster {
 public:
  explicit Cluster(const Options& o) : o_(o) {}

  std::map<std::string, Service>& services() { return svc_; }
  Service& Get(const std::string& name) { return svc_.at(name); }
  std::string Addr(const std::string& name) {
    const Service& s = svc_.at(name);
    return StrCat(s.host, ":", s.port);
  }

  bool Spawn(Service& s) {
    const std::string ready = StrCat(o_.work_dir, "/run/", s.name, ".ready");
    fs::remove(ready);
    std::vector<std::string> argv;
    if (!s.ns.empty()) argv = {"ip", "netns", "exec", s.ns};
    argv.push_back(StrCat(o_.bin_dir, "/", s.binary));
    for (const std::string& a :
         std::vector<std::string>{"--host", s.host, "--port", std::to_string(s.port),
                                  "--metrics-port", "0", "--ready-file", ready}) {
      argv.push_back(a);
    }
    argv.insert(argv.end(), s.args.begin(), s.args.end());
    const std::string log = StrCat(o_.work_dir, "/logs/", s.name, ".log");
    const pid_t pid = ::fork();
    if (pid < 0) return false;
    if (pid == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::setenv("OMP_NUM_THREADS", "1", 1);  // five services share the machine's cores
      std::vector<char*> cargv;
      for (auto& a : argv) cargv.push_back(a.data());
      cargv.push_back(nullptr);
      ::execvp(cargv[0], cargv.data());
      ::_exit(127);
    }
    s.pid = pid;
    ++s.incarnation;
    std::ofstream(StrCat(o_.work_dir, "/pids/", s.name, ".pid")) << pid << "\n";
    return true;
  }

  // Waits for the ready file and a SERVING health answer.
  bool WaitReady(const Service& s, double timeout_s) {
    const std::string ready = StrCat(o_.work_dir, "/run/", s.name, ".ready");
    const double until = Now() + timeout_s;
    auto ch = MakeChannel(StrCat(s.host, ":", s.port));
    if (!ch.ok()) return false;
    while (Now() < until && !g_interrupted) {
      int status = 0;
      if (::waitpid(s.pid, &status, WNOHANG) == s.pid) return false;  // exited
      if (fs::exists(ready) && CheckHealth(*ch, "", 1.0).ok()) return true;
      SleepS(0.05);
    }
    return false;
  }

  bool Start(const std::string& name, double timeout_s = 120) {
    Service& s = svc_.at(name);
    if (!Spawn(s)) return false;
    if (!WaitReady(s, timeout_s)) {
      Log(StrCat(name, " did not become ready; log: ", o_.work_dir, "/logs/", name, ".log"));
      return false;
    }
    return true;
  }

  void Signal(const std::string& name, int sig) {
    const Service& s = svc_.at(name);
    if (s.pid > 0) ::kill(s.pid, sig);
  }

  // SIGKILL and reap.
  void Kill(const std::string& name) {
    Service& s = svc_.at(name);
    if (s.pid <= 0) return;
    ::kill(s.pid, SIGKILL);
    int status = 0;
    ::waitpid(s.pid, &status, 0);
    s.pid = -1;
  }

  // SIGTERM everything (SIGCONT first: a stopped process cannot exit), SIGKILL after 10 s.
  void StopAll() {
    for (auto& [name, s] : svc_) {
      if (s.pid > 0) {
        ::kill(s.pid, SIGCONT);
        ::kill(s.pid, SIGTERM);
      }
    }
    for (auto& [name, s] : svc_) {
      if (s.pid <= 0) continue;
      int status = 0;
      for (int i = 0; i < 100 && ::waitpid(s.pid, &status, WNOHANG) == 0; ++i) SleepS(0.1);
      if (::waitpid(s.pid, &status, WNOHANG) == 0) {
        ::kill(s.pid, SIGKILL);
        ::waitpid(s.pid, &status, 0);
      }
      s.pid = -1;
      fs::remove(StrCat(o_.work_dir, "/pids/", name, ".pid"));
    }
  }

  // Any service that exited by itself (not killed by us): its name, else "".
  std::string Exited() {
    for (auto& [name, s] : svc_) {
      int status = 0;
      if (s.pid > 0 && ::waitpid(s.pid, &status, WNOHANG) == s.pid) {
        s.pid = -1;
        return StrCat(name, WIFSIGNALED(status) ? " killed by signal " : " exited with ",
                      WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
      }
    }
    return "";
  }

 private:
  const Options& o_;
  std::map<std::string, Service> svc_;
};

// ---- Records -----------------------------------------------------------------------------------

struct Attempt {
  double start = 0, end = 0;
  std::string code;
  std::string message;
};

struct QueryRecord {
  int id = 0;
  int question = 0;
  bool ape = true;  // passages from the context cache (APE); else sequential, with KV retrieval
  bool not_sent = false;  // still queued when the load stopped (an overloaded run): not counted
  double sched = 0;
  double end = -1;  // < 0: still running
  bool ok = false;
  std::string code;
  std::vector<Attempt> failed;  // failed attempts, in order
  std::vector<int32_t> tokens;  // the successful answer
  int router_retries = 0;
  double latency = 0;  // of the successful attempt, from its start
};

struct IngestBatch {
  int batch = 0;
  std::vector<std::string> ids, texts;
  double first = 0;
  double acked_at = -1;  // < 0: never acknowledged
  std::vector<Attempt> failed;
};

struct Fault {
  std::string spec, kind, target;
  double seconds = 0;
  bool skipped = false;
  std::string skip_reason;
  double start = -1, clear = -1, ready = -1, recovered = -1, phase_end = -1;
  int64_t hwm_kb[kNumServices] = {};
};

class Records {
 public:
  int AddQuery(int question, bool ape, double sched) {
    MutexLock l(mu_);
    QueryRecord r;
    r.id = static_cast<int>(queries_.size());
    r.question = question;
    r.ape = ape;
    r.sched = sched;
    queries_.push_back(r);
    return r.id;
  }
  void FinishQuery(int id, QueryRecord r) {
    MutexLock l(mu_);
    queries_[id] = std::move(r);
  }
  std::vector<QueryRecord> Queries() {
    MutexLock l(mu_);
    return queries_;
  }
  QueryRecord Query(int id) {
    MutexLock l(mu_);
    return queries_[id];
  }
  void MarkNotSent(int id) {
    MutexLock l(mu_);
    queries_[id].not_sent = true;
  }
  void AddBatch(IngestBatch b) {
    MutexLock l(mu_);
    batches_.push_back(std::move(b));
  }
  std::vector<IngestBatch> Batches() {
    MutexLock l(mu_);
    return batches_;
  }

 private:
  Mutex mu_;
  std::vector<QueryRecord> queries_ ABSL_GUARDED_BY(mu_);
  std::vector<IngestBatch> batches_ ABSL_GUARDED_BY(mu_);
};

// ---- Load: queries -----------------------------------------------------------------------------

bool Retryable(const std::string& code) {
  return code == "UNAVAILABLE" || code == "RESOURCE_EXHAUSTED";
}

// Sends queries at a steady rate (one every 1/qps s, on a pool of senders, latency measured from
// the scheduled time); each retries UNAVAILABLE / RESOURCE_EXHAUSTED with backoff for retry_s.
class QueryLoad {
 public:
  QueryLoad(const Options& o, std::shared_ptr<grpc::Channel> router,
            std::vector<std::string> questions, Records* rec)
      : o_(o), router_(std::move(router)), questions_(std::move(questions)), rec_(rec) {}

  // One query with retries, synchronously (the reference answers are taken this way).
  QueryRecord Run(int question, bool ape, double sched) {
    QueryRecord r;
    r.question = question;
    r.ape = ape;
    r.sched = sched;
    loadgen::LoadOptions lo;
    lo.collection = "docs";
    lo.max_tokens = o_.max_tokens;
    lo.top_k = 4;
    lo.use_context_cache = ape;
    lo.timeout_s = o_.query_timeout_s;
    for (int attempt = 0;; ++attempt) {
      const double start = Now();
      loadgen::QueryOutcome out = loadgen::QueryOnce(router_, lo, questions_[question], At(start));
      const double end = Now();
      if (out.ok) {
        r.ok = true;
        r.code = "OK";
        r.tokens = std::move(out.token_ids);
        r.router_retries = out.retries;
        r.latency = end - start;
        r.end = end;
        return r;
      }
      r.failed.push_back(Attempt{start, end, out.code, out.message});
      r.code = out.code;
      if (!Retryable(out.code) || end - sched > o_.retry_s || g_interrupted) {
        r.end = end;
        return r;
      }
      SleepS(std::min(2.0, 0.25 * (attempt + 1)));
    }
  }

  void Start() {
    for (int i = 0; i < 48; ++i) senders_.emplace_back([this] { SenderLoop(); });
    scheduler_ = std::thread([this] { ScheduleLoop(); });
  }

  // Stops scheduling and waits for the queries in flight.
  void Stop() {
    stop_ = true;
    if (scheduler_.joinable()) scheduler_.join();
    {
      MutexLock l(mu_);
      // Queries still queued (the cluster fell behind the offered rate) are not sent.
      for (int id : pending_) rec_->MarkNotSent(id);
      pending_.clear();
      done_ = true;
      cv_.notify_all();
    }
    for (auto& t : senders_) t.join();
  }

 private:
  void ScheduleLoop() {
    const double t_start = Now();
    for (int i = 0; !stop_ && !g_interrupted; ++i) {
      const double sched = t_start + i / o_.qps;
      std::this_thread::sleep_until(At(sched));
      if (stop_) break;
      // Every question both ways: APE (passage KV from the context cache) and sequential
      // (a long prompt whose KV lives in ragserve-kvr: KV retrieval).
      const int n = static_cast<int>(questions_.size());
      const int id = rec_->AddQuery(i % n, (i / n) % o_.sequential_every != 1, sched);
      MutexLock l(mu_);
      pending_.push_back(id);
      cv_.notify_one();
    }
  }

  void SenderLoop() {
    while (true) {
      int id;
      {
        MutexLock l(mu_);
        l.Wait(cv_,
               [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ || !pending_.empty(); });
        if (pending_.empty()) return;
        id = pending_.front();
        pending_.pop_front();
      }
      const QueryRecord base = rec_->Query(id);  // question and schedule
      QueryRecord r = Run(base.question, base.ape, base.sched);
      r.id = id;
      rec_->FinishQuery(id, std::move(r));
    }
  }

  const Options& o_;
  std::shared_ptr<grpc::Channel> router_;
  std::vector<std::string> questions_;
  Records* rec_;
  std::atomic<bool> stop_{false};
  std::thread scheduler_;
  std::vector<std::thread> senders_;
  Mutex mu_;
  std::condition_variable cv_;
  std::deque<int> pending_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

// ---- Load: ingest ------------------------------------------------------------------------------

const char* const kWords[] = {"amber",  "basalt", "cedar",    "delta",   "ember",  "fjord",
                              "garnet", "harbor", "iris",     "juniper", "kelp",   "lagoon",
                              "marble", "nectar", "obsidian", "pebble",  "quartz", "reed"};

// One Ingest call of `b` through the router; the status.
grpc::Status IngestOnce(v1::RagService::Stub* stub, const IngestBatch& b, double timeout_s,
                        bool pre_encode) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000)));
  v1::IngestResponse resp;
  auto w = stub->Ingest(&ctx, &resp);
  v1::IngestRequest req;
  req.set_collection("chaos");
  req.set_pre_encode(pre_encode);
  for (size_t i = 0; i < b.ids.size(); ++i) {
    auto* d = req.add_documents();
    d->set_id(b.ids[i]);
    d->set_text(b.texts[i]);
  }
  w->Write(req);
  w->WritesDone();
  grpc::Status st = w->Finish();
  if (st.ok() && resp.ingested() != static_cast<int64_t>(b.ids.size())) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        StrCat("acknowledged ", resp.ingested(), " of ", b.ids.size()));
  }
  return st;
}

// Batches of new documents at a steady rate, one call at a time; a failed batch is retried (same
// ids: upserts are idempotent) until acknowledged or 60 s have passed.
class IngestLoad {
 public:
  IngestLoad(const Options& o, std::shared_ptr<grpc::Channel> router, Records* rec)
      : o_(o), stub_(v1::RagService::NewStub(router)), rec_(rec) {}
  void Start() {
    thread_ = std::thread([this] { Loop(); });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    const double t_start = Now();
    for (int k = 0; !stop_ && !g_interrupted; ++k) {
      std::this_thread::sleep_until(At(std::max(Now(), t_start + k / o_.ingest_rate)));
      if (stop_) break;
      IngestBatch b;
      b.batch = k;
      b.first = Now();
      for (int j = 0; j < o_.ingest_docs; ++j) {
        b.ids.push_back(StrCat("chaos-", k, "-", j));
        std::string text = StrCat("Chaos record ", k, ".", j, ":");
        for (int w = 0; w < 12; ++w) text += StrCat(" ", kWords[(k * 7 + j * 5 + w * 3) % 18]);
        b.texts.push_back(std::move(text));
      }
      while (!g_interrupted) {
        const double start = Now();
        const grpc::Status st =
            IngestOnce(stub_.get(), b, o_.query_timeout_s, o_.ingest_pre_encode);
        if (st.ok()) {
          b.acked_at = Now();
          break;
        }
        b.failed.push_back(Attempt{
            start, Now(), std::string(StatusCodeName(static_cast<StatusCode>(st.error_code()))),
            st.error_message()});
        // After the schedule ends a batch still gets its retries: an unacknowledged batch is
        // allowed, but one given up early would hide a slow recovery.
        if (Now() - b.first > 60) break;
        SleepS(0.5);
      }
      rec_->AddBatch(std::move(b));
    }
  }

  const Options& o_;
  std::unique_ptr<v1::RagService::Stub> stub_;
  Records* rec_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// ---- Memory ------------------------------------------------------------------------------------

// Samples every service's VmHWM every 200 ms; the largest per service since Reset().
class MemorySampler {
 public:
  MemorySampler() = default;
  void Start() {
    thread_ = std::thread([this] {
      while (!stop_) {
        Sample();
        SleepS(0.2);
      }
    });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Reads now (called before a kill: a killed process takes its VmHWM with it).
  void Sample() {
    pid_t pids[kNumServices];
    {
      MutexLock l(pid_mu_);
      for (int i = 0; i < kNumServices; ++i) pids[i] = pids_[i];
    }
    MutexLock l(mu_);
    for (int i = 0; i < kNumServices; ++i) {
      if (pids[i] > 0) phase_max_[i] = std::max(phase_max_[i], ReadHwmKb(pids[i]));
    }
  }
  void SetPid(const std::string& name, pid_t pid) {
    MutexLock l(pid_mu_);
    pids_[ServiceIndex(name)] = pid;
  }
  // The maxima since the last call; starts a new phase (current VmHWMs carry over).
  void TakePhase(int64_t* out) {
    Sample();
    MutexLock l(mu_);
    for (int i = 0; i < kNumServices; ++i) {
      out[i] = phase_max_[i];
      phase_max_[i] = 0;
    }
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
  Mutex pid_mu_;
  pid_t pids_[kNumServices] ABSL_GUARDED_BY(pid_mu_) = {-1, -1, -1, -1, -1, -1};
  Mutex mu_;
  int64_t phase_max_[kNumServices] ABSL_GUARDED_BY(mu_) = {};
};

// ---- Faults ------------------------------------------------------------------------------------

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, sep)) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

const char* const kFullSchedule =
    "kill:index,kill:kvr,kill:ctxcache,kill:dec1,kill:router,stop:index:10,stop:dec0:20,"
    "stop:kvr:5,stop:ctxcache:8,link:dec1:15,diskfull:ctxcache:10,diskfull:index:10";
const char* const kShortSchedule = "kill:dec1,stop:index:3,kill:router,kill:kvr";

StatusOr<std::vector<Fault>> ParseSchedule(std::string spec) {
  if (spec == "full") spec = kFullSchedule;
  if (spec == "short") spec = kShortSchedule;
  if (spec == "none") spec = "";
  std::vector<Fault> out;
  for (const std::string& item : Split(spec, ',')) {
    const auto parts = Split(item, ':');
    RS_CHECK_ARG(parts.size() >= 2 && parts.size() <= 3, "fault '", item,
                 "': expected kind:target[:seconds]");
    Fault f;
    f.spec = item;
    f.kind = parts[0];
    f.target = parts[1];
    RS_CHECK_ARG(f.kind == "kill" || f.kind == "stop" || f.kind == "link" || f.kind == "diskfull",
                 "fault '", item, "': kind must be kill, stop, link or diskfull");
    RS_CHECK_ARG(ServiceIndex(f.target) >= 0, "fault '", item, "': unknown service '", f.target,
                 "' (index, kvr, ctxcache, dec0, dec1, router)");
    RS_CHECK_ARG(f.kind != "link" || f.target == "dec1", "fault '", item,
                 "': the degraded link is dec1's (the router reaches it through "
                 "the delay proxy)");
    RS_CHECK_ARG(f.kind != "diskfull" || f.target == "index" || f.target == "ctxcache", "fault '",
                 item, "': diskfull targets index or ctxcache (their data dirs)");
    f.seconds = parts.size() == 3 ? std::stod(parts[2]) : (f.kind == "kill" ? 0 : 5);
    out.push_back(f);
  }
  return out;
}

// ---- The run -----------------------------------------------------------------------------------

struct Verdict {
  int lost = 0;
  int corrupted = 0;
  int unchecked = 0;
  std::vector<std::string> lost_ids;
  std::vector<std::string> problems;
};

class ChaosRun {
 public:
  explicit ChaosRun(Options o) : o_(std::move(o)), cluster_(o_) {}

  int Main() {
    auto sched = ParseSchedule(o_.faults);
    if (!sched.ok()) {
      std::fprintf(stderr, "chaos: %s\n", sched.status().ToString().c_str());
      return 2;
    }
    faults_ = std::move(*sched);
    const int setup = Setup();
    if (setup != 0) {
      Teardown();
      return setup;
    }
    RunSchedule();
    const Verdict v = Check();
    int rc = Report(v);
    if (o_.self_test_checks && rc == 0) rc = SelfTest(v);
    Teardown();
    return rc;
  }

 private:
  bool netns() const { return !o_.netns_tag.empty(); }

  std::string HostOf(int i) const {
    return netns() ? StrCat(o_.net_prefix, ".", 2 + i) : std::string("127.0.0.1");
  }
  std::string SelfHost() const { return netns() ? StrCat(o_.net_prefix, ".10") : "127.0.0.1"; }

  int Setup() {
    for (const char* d : {"logs", "run", "pids"}) fs::create_directories(o_.work_dir + "/" + d);
    fs::create_directories(o_.work_dir + "/index-data");
    fs::create_directories(o_.work_dir + "/ctxcache-data");
    if (o_.model.empty()) {
      o_.model = o_.work_dir + "/model";
      if (!fs::exists(o_.model + "/config.json")) {
        Log("making the tiny model");
        if (RunCmd(StrCat(o_.bin_dir, "/make-tiny-model --out ", o_.model, " --corpus ",
                          o_.source_dir, "/data/corpus/passages.jsonl")) != 0) {
          Log("make-tiny-model failed");
          return 2;
        }
      }
    }
    // Topology: addresses and ports (fixed: a restart listens where the peers look).
    auto& svcs = cluster_.services();
    const char* bins[] = {"ragserve-index",   "ragserve-kvr",     "ragserve-ctxcache",
                          "ragserve-decoder", "ragserve-decoder", "ragserve-router"};
    for (int i = 0; i < kNumServices; ++i) {
      Service s;
      s.name = kServices[i];
      s.binary = bins[i];
      s.host = HostOf(i);
      s.ns = netns() ? StrCat(o_.netns_tag, "-", s.name) : "";
      s.port = netns() ? 50052 + i : FreePort(s.host);
      svcs[s.name] = s;
    }
    // The router reaches dec1 through the delay proxy (the degraded link of `link:dec1`).
    auto proxy =
        DelayProxy::Start(SelfHost(), 0, cluster_.Get("dec1").host, cluster_.Get("dec1").port);
    if (!proxy.ok()) {
      Log(proxy.status().ToString());
      return 2;
    }
    proxy_ = std::move(*proxy);
    const std::string model = fs::absolute(o_.model).string();
    cluster_.Get("index").args = {"--data-dir", o_.work_dir + "/index-data"};
    cluster_.Get("kvr").args = {"--memory-limit-gib", "1"};
    // A small RAM tier and memtable: passages are read back from the disk tier, and the blocks
    // the ingest pre-encodes reach the disk every few seconds (with RocksDB's 64 MiB memtable
    // the disk tier wrote nothing during a run and diskfull:ctxcache tested nothing: C6).
    cluster_.Get("ctxcache").args = {"--model",
                                     model,
                                     "--data-dir",
                                     o_.work_dir + "/ctxcache-data",
                                     "--ram-mb",
                                     "4",
                                     "--disk-write-buffer-mb",
                                     "1"};
    for (const char* d : {"dec0", "dec1"}) {
      cluster_.Get(d).args = {
          "--model", model, "--worker-id", d, "--ctxcache-addr", cluster_.Addr("ctxcache"),
          "--kv-retrieval", "remote", "--kvr-addr", cluster_.Addr("kvr"), "--kvr-index-kind",
          "exact", "--kv-retrieval-min-tokens", "64",
          // Small static part: most of a ~600-token prompt is attended
          // through kvr's retrieval, so a kvr fault matters.
          "--kvr-sink-tokens", "16", "--kvr-window-tokens", "64", "--kv-budget-mb", "256",
          // Index built on the loop thread: with a background build a short answer can end
          // before it switches to kvr (decoding exactly meanwhile) and miss the fault.
          "--kvr-build-threads", "0"};
    }
    cluster_.Get("router").args = {
        "--index-addr", cluster_.Addr("index"), "--decoders",
        StrCat(cluster_.Addr("dec0"), ",", SelfHost(), ":", proxy_->port()), "--ctxcache-addr",
        cluster_.Addr("ctxcache"), "--poll-interval", "0.2",
        // Shorter than the client's 20 s deadline, so that a hung index, context cache or
        // decoder (stop:*) fails an attempt (which the client retries, or the router fails
        // over) instead of holding it for the whole deadline (C4, C5).
        "--index-timeout", "5", "--ctxcache-timeout", "5", "--worker-idle-timeout", "5"};
    for (const char* name : kServices) {
      Log(StrCat("starting ", name, " at ", cluster_.Addr(name)));
      if (!cluster_.Start(name)) return 2;
      mem_.SetPid(name, cluster_.Get(name).pid);
    }
    auto ch = MakeChannel(cluster_.Addr("router"));
    auto ich = MakeChannel(cluster_.Addr("index"));
    if (!ch.ok() || !ich.ok()) return 2;
    router_ = *ch;
    index_ = *ich;
    // The corpus (queries) and the ingest collection (concurrent writes) are separate, so the
    // writes cannot change what a question retrieves.
    if (!IngestCorpus()) return 2;
    auto questions = loadgen::ReadQuestions(o_.source_dir + "/data/corpus/questions.jsonl");
    if (!questions.ok()) {
      Log(questions.status().ToString());
      return 2;
    }
    questions_ = std::move(*questions);
    if (static_cast<int>(questions_.size()) > o_.questions) questions_.resize(o_.questions);
    // The fault-free reference: every question once, alone, on the healthy cluster.
    QueryLoad ref(o_, router_, questions_, &records_);
    for (int q = 0; q < static_cast<int>(questions_.size()); ++q) {
      for (const bool ape : {false, true}) {  // reference_[2 * q + ape]
        QueryRecord r = ref.Run(q, ape, Now());
        if (!r.ok || !r.failed.empty()) {
          Log(StrCat("reference query ", q, " failed: ", r.code,
                     r.failed.empty() ? "" : " " + r.failed.back().message));
          return 2;
        }
        reference_.push_back(r.tokens);
        ref_latency_.push_back(r.latency);
      }
    }
    Log(StrCat("reference answers: ", questions_.size(), " questions x (APE, sequential), ",
               o_.max_tokens, " greedy tokens each"));
    mem_.Start();
    return 0;
  }

  bool IngestCorpus() {
    auto stub = v1::RagService::NewStub(router_);
    {
      grpc::ClientContext ctx;
      v1::CreateCollectionRequest req;
      auto* spec = req.mutable_spec();
      spec->set_name("chaos");
      spec->set_dimension(64);
      spec->set_metric(v1::METRIC_COSINE);
      spec->set_index_kind(v1::INDEX_KIND_FLAT);
      v1::CreateCollectionResponse resp;
      const grpc::Status st = stub->CreateCollection(&ctx, req, &resp);
      if (!st.ok()) {
        Log("create collection chaos: " + st.error_message());
        return false;
      }
    }
    grpc::ClientContext ctx;
    v1::IngestResponse resp;
    auto w = stub->Ingest(&ctx, &resp);
    v1::IngestRequest req;
    req.set_collection("docs");
    auto* spec = req.mutable_create_spec();
    spec->set_name("docs");
    spec->set_dimension(256);
    spec->set_metric(v1::METRIC_COSINE);
    spec->set_index_kind(v1::INDEX_KIND_FLAT);
    std::ifstream f(o_.source_dir + "/data/corpus/passages.jsonl");
    std::string line;
    while (std::getline(f, line)) {
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded()) continue;
      auto* d = req.add_documents();
      d->set_id(j.value("id", ""));
      d->set_text(j.value("text", ""));
    }
    const int n = req.documents_size();
    w->Write(req);
    w->WritesDone();
    const grpc::Status st = w->Finish();
    if (!st.ok()) {
      Log("ingest corpus: " + st.error_message());
      return false;
    }
    Log(StrCat("corpus: ", n, " passages in 'docs'"));
    return true;
  }

  // Recovered at the scheduled time of the first query after `after` that opens a window of
  // window_s in which every query was answered at the first attempt and in time, and not before
  // an ingest batch sent after `after` was acknowledged at its first attempt; -1 if not yet.
  double RecoveredAt(double after, double latency_ok) {
    double ingest_ok = -1;
    for (const auto& b : records_.Batches()) {
      if (b.first >= after && b.acked_at >= 0 && b.failed.empty()) {
        ingest_ok = b.first;
        break;
      }
    }
    if (ingest_ok < 0) return -1;
    const double q = QueriesRecoveredAt(after, latency_ok);
    return q < 0 ? -1 : std::max(q, ingest_ok);
  }

  double QueriesRecoveredAt(double after, double latency_ok) {
    auto qs = records_.Queries();
    const int need = std::max(2, static_cast<int>(std::floor(o_.qps * o_.window_s * 0.9)));
    for (size_t i = 0; i < qs.size(); ++i) {
      if (qs[i].sched < after) continue;
      int good = 0;
      bool bad = false, open = false;
      size_t j = i;
      for (; j < qs.size() && qs[j].sched < qs[i].sched + o_.window_s; ++j) {
        if (qs[j].end < 0) {
          open = true;
          break;
        }
        if (!qs[j].ok || !qs[j].failed.empty() || qs[j].end - qs[j].sched > latency_ok) {
          bad = true;
          break;
        }
        ++good;
      }
      if (open) return -1;  // not decided yet
      if (!bad && good >= need && j < qs.size()) return qs[i].sched;
    }
    return -1;
  }

  double LatencyOk() const {
    if (o_.latency_ok_s > 0) return o_.latency_ok_s;
    double worst = 0;
    for (double l : ref_latency_) worst = std::max(worst, l);
    // Generous: the fault-free answers alone, times 4, plus a second (the load adds queueing).
    return std::max(2.0, 4 * worst + 1.0);
  }

  // Waits (at most 10 s) until decoder `name` reports a running sequence, so that a stop:decN
  // fault catches an answer mid-stream (C4) rather than an idle decoder. A decoder's load is
  // refreshed after a decode step, when its tokens went out.
  void WaitUntilStreaming(const std::string& name) {
    auto ch = MakeChannel(cluster_.Addr(name));
    if (!ch.ok()) return;
    auto stub = v1::DecoderService::NewStub(*ch);
    const double until = Now() + 10;
    while (Now() < until && !g_interrupted) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      v1::LoadRequest req;
      v1::LoadReport load;
      if (stub->GetLoad(&ctx, req, &load).ok() && load.active_sequences() > 0) {
        Log(StrCat(name, ": ", load.active_sequences(), " sequence(s) streaming; stopping it"));
        return;
      }
      SleepS(0.02);
    }
    Log(StrCat(name, ": no sequence streaming within 10 s; stopping it anyway"));
  }

  // Bytes of the files under `dir`, the filler excluded.
  static uint64_t DirBytes(const std::string& dir) {
    uint64_t bytes = 0;
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
      if (e.is_regular_file(ec) && e.path().filename() != "chaos-filler") {
        bytes += e.file_size(ec);
      }
    }
    return bytes;
  }

  // Lines of a service's log (all its incarnations) that contain `what`.
  int CountLogLines(const std::string& service, const std::string& what) const {
    std::ifstream f(StrCat(o_.work_dir, "/logs/", service, ".log"));
    int n = 0;
    for (std::string line; std::getline(f, line);) n += line.find(what) != std::string::npos;
    return n;
  }

  bool Fill(const std::string& dir, bool on) {
    const std::string filler = dir + "/chaos-filler";
    if (!on) {
      fs::remove(filler);
      return true;
    }
    struct statfs sf {};
    if (::statfs(dir.c_str(), &sf) != 0 || sf.f_type != 0x01021994 /* TMPFS_MAGIC */ ||
        static_cast<uint64_t>(sf.f_blocks) * sf.f_bsize > (uint64_t{1} << 30)) {
      return false;  // never fill a real disk
    }
    const int fd = ::open(filler.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return false;
    std::vector<char> mb(1 << 20, 'x');
    while (::write(fd, mb.data(), mb.size()) > 0) {
    }
    std::vector<char> kb(4096, 'x');  // the last partial megabyte
    while (::write(fd, kb.data(), kb.size()) > 0) {
    }
    ::close(fd);
    return true;
  }

  std::string Tc(const std::string& ns, const std::string& args) {
    return StrCat("ip netns exec ", ns, " tc ", args);
  }

  // Packet loss on dec1's veth, both directions: a classic-BPF filter that drops a random
  // fraction (this kernel has no sch_netem; htb + cls_bpf direct-action are there).
  bool Loss(bool on) {
    if (!netns()) return false;
    const std::string sw = o_.netns_tag + "-sw";
    const std::string host = o_.netns_tag + "-dec1";
    const std::string veth = StrCat(o_.netns_tag, "-v", ServiceIndex("dec1"));  // tools/chaos
    const auto threshold = static_cast<uint64_t>(o_.link_loss_pct / 100.0 * 4294967296.0);
    const std::string prog = StrCat("bpf bytecode '4,32 0 0 4294963256,53 1 0 ", threshold,
                                    ",6 0 0 2,6 0 0 4294967295' da");
    bool ok = true;
    for (const auto& [ns, dev] :
         std::vector<std::pair<std::string, std::string>>{{sw, veth}, {host, "eth0"}}) {
      if (on) {
        ok = ok && RunCmd(Tc(ns, StrCat("qdisc add dev ", dev, " root handle 1: htb"))) == 0 &&
             RunCmd(Tc(
                 ns, StrCat("filter add dev ", dev, " parent 1: protocol all prio 1 ", prog))) == 0;
      } else {
        RunCmd(Tc(ns, StrCat("qdisc del dev ", dev, " root")));
      }
    }
    return ok;
  }

  void Inject(Fault& f) {
    const std::string& t = f.target;
    if (f.kind == "kill") {
      mem_.Sample();
      cluster_.Kill(t);
      mem_.SetPid(t, -1);
      SleepS(o_.down_s);
      f.clear = Now();
      Log(StrCat("restarting ", t));
      if (!cluster_.Start(t)) problems_.push_back(StrCat(f.spec, ": ", t, " did not restart"));
      mem_.SetPid(t, cluster_.Get(t).pid);
      f.ready = Now();
    } else if (f.kind == "stop") {
      if (t == "dec0" || t == "dec1") WaitUntilStreaming(t);
      cluster_.Signal(t, SIGSTOP);
      SleepS(f.seconds);
      cluster_.Signal(t, SIGCONT);
      f.clear = Now();
    } else if (f.kind == "link") {
      proxy_->SetDelay(o_.link_delay_ms, o_.link_jitter_ms);
      const bool loss = Loss(true);
      if (!loss) Log("link: no packet loss (needs the network namespaces); latency only");
      SleepS(f.seconds);
      proxy_->SetDelay(0, 0);
      Loss(false);
      f.clear = Now();
    } else if (f.kind == "diskfull") {
      const std::string dir = o_.work_dir + "/" + t + "-data";
      Log(StrCat("diskfull:", t, ": the data dir holds ", DirBytes(dir) >> 10,
                 " KiB before the fill"));
      const int errors_before = CountLogLines(t, "No space left");
      Fill(dir, true);
      SleepS(f.seconds);
      Fill(dir, false);
      f.clear = Now();
      // Shows the fault reached the service: its writes failed on the full disk.
      Log(StrCat("diskfull:", t, ": ", CountLogLines(t, "No space left") - errors_before,
                 " log lines of ", t, " say 'No space left' during the fill"));
    }
  }

  bool Applicable(Fault& f) {
    if (f.kind == "diskfull") {
      struct statfs sf {};
      const std::string dir = o_.work_dir + "/" + f.target + "-data";
      if (::statfs(dir.c_str(), &sf) != 0 || sf.f_type != 0x01021994) {
        f.skip_reason = "data dir is not a tmpfs (run as root through tools/chaos)";
        return false;
      }
    }
    return true;
  }

  void RunSchedule() {
    QueryLoad load(o_, router_, questions_, &records_);
    IngestLoad ingest(o_, router_, &records_);
    load.Start();
    ingest.Start();
    const double latency_ok = LatencyOk();
    Log(StrCat("load: ", o_.qps, " queries/s, ", o_.ingest_rate, " ingest batches/s of ",
               o_.ingest_docs, "; fault-free baseline for ", o_.baseline_s, " s"));
    SleepS(o_.baseline_s);
    mem_.TakePhase(baseline_hwm_);
    baseline_end_ = Now();
    for (Fault& f : faults_) {
      if (g_interrupted) break;
      if (!Applicable(f)) {
        f.skipped = true;
        Log(StrCat(f.spec, ": skipped (", f.skip_reason, ")"));
        continue;
      }
      f.start = Now();
      Log(StrCat("fault ", f.spec));
      Inject(f);
      // Recovered: a clean window after the fault cleared (or within it, for faults the
      // cluster absorbs).
      while (!g_interrupted && Now() - f.clear < o_.recover_max_s) {
        f.recovered = RecoveredAt(f.clear, latency_ok);
        if (f.recovered >= 0) break;
        SleepS(0.25);
      }
      if (f.recovered < 0) {
        problems_.push_back(StrCat(f.spec, ": no recovery within ", o_.recover_max_s, " s"));
        Log(StrCat(f.spec, ": NOT recovered"));
      } else {
        Log(StrCat(f.spec, ": recovered ", f.recovered - f.clear, " s after the fault cleared"));
      }
      const std::string exited = cluster_.Exited();
      if (!exited.empty()) problems_.push_back(StrCat("during ", f.spec, ": ", exited));
      SleepS(o_.settle_s);
      f.phase_end = Now();
      mem_.TakePhase(f.hwm_kb);
    }
    Log("schedule done; stopping the load");
    load.Stop();
    ingest.Stop();
    mem_.Stop();
    end_ = Now();
  }

  // The phase (-1 = baseline, else a fault index) a time falls in.
  int PhaseOf(double t) const {
    int p = -1;
    for (int i = 0; i < static_cast<int>(faults_.size()); ++i) {
      if (!faults_[i].skipped && faults_[i].start >= 0 && t >= faults_[i].start) p = i;
    }
    return p;
  }

  // Failures are accepted inside a fault's window: from its start until its recovery + grace.
  bool InWindow(double t, int phase) const {
    if (phase < 0) return false;
    const Fault& f = faults_[phase];
    const double until =
        (f.recovered >= 0 ? std::max(f.recovered, f.clear) : f.phase_end) + o_.grace_s;
    return t >= f.start && t <= until;
  }

  static bool CleanStatus(const std::string& code) {
    return code == "UNAVAILABLE" || code == "DEADLINE_EXCEEDED" || code == "RESOURCE_EXHAUSTED";
  }

  Verdict Check() {
    Verdict v;
    v.problems = problems_;
    // 1. Acknowledged ingests: every acknowledged document is in the index, with its text.
    const auto batches = records_.Batches();
    std::map<std::string, std::pair<std::string, double>> acked;  // id -> text, ack time
    for (const auto& b : batches) {
      if (b.acked_at < 0) continue;
      for (size_t i = 0; i < b.ids.size(); ++i) acked[b.ids[i]] = {b.texts[i], b.acked_at};
    }
    if (drop_one_write_ && !acked.empty()) {
      // Self-test: one acknowledged document removed from the index behind the client's back.
      grpc::ClientContext ctx;
      v1::DeleteRequest req;
      req.set_collection("chaos");
      req.add_ids(acked.begin()->first);
      v1::DeleteResponse resp;
      auto st = v1::IndexService::NewStub(index_)->Delete(&ctx, req, &resp);
      Log(StrCat("self-test: deleted acknowledged document ", acked.begin()->first, ": ",
                 st.ok() ? "ok" : st.error_message()));
    }
    auto index = v1::IndexService::NewStub(index_);
    std::vector<std::string> ids;
    for (const auto& [id, t] : acked) ids.push_back(id);
    for (size_t i = 0; i < ids.size(); i += 500) {
      v1::GetDocumentsRequest req;
      req.set_collection("chaos");
      for (size_t j = i; j < std::min(ids.size(), i + 500); ++j) req.add_ids(ids[j]);
      v1::GetDocumentsResponse resp;
      grpc::Status st;
      for (int attempt = 0; attempt < 20; ++attempt) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        st = index->GetDocuments(&ctx, req, &resp);
        if (st.ok()) break;
        SleepS(1);
      }
      if (!st.ok()) {
        v.problems.push_back("GetDocuments failed: " + st.error_message());
        continue;
      }
      for (const auto& m : resp.missing_ids()) v.lost_ids.push_back(m);
      for (const auto& d : resp.documents()) {
        if (acked[d.id()].first != d.text()) v.lost_ids.push_back(d.id() + " (text differs)");
      }
    }
    v.lost = static_cast<int>(v.lost_ids.size());
    acked_ = static_cast<int>(acked.size());
    lost_by_phase_.assign(faults_.size() + 1, 0);
    for (const auto& id : v.lost_ids) {
      const std::string bare = id.substr(0, id.find(' '));
      lost_by_phase_[PhaseOf(acked[bare].second) + 1]++;
    }
    // 2. Answers: every successful greedy answer equals the fault-free reference, token for token.
    queries_.clear();
    for (auto& q : records_.Queries()) {
      if (!q.not_sent) queries_.push_back(std::move(q));
    }
    if (corrupt_one_answer_) {
      for (auto& q : queries_) {
        if (q.ok && !q.tokens.empty()) {
          q.tokens.back() ^= 1;  // self-test: one token of one answer garbled
          Log(StrCat("self-test: garbled the last token of query ", q.id));
          break;
        }
      }
    }
    corrupted_by_phase_.assign(faults_.size() + 1, 0);
    for (const auto& q : queries_) {
      if (!q.ok) continue;
      if (q.tokens != reference_[2 * q.question + (q.ape ? 1 : 0)]) {
        ++v.corrupted;
        corrupted_by_phase_[PhaseOf(q.end) + 1]++;
        if (v.corrupted <= 5) {
          v.problems.push_back(StrCat("query ", q.id, " (question ", q.question,
                                      q.ape ? " APE, " : " sequential, ", q.router_retries,
                                      " router failovers): answer differs from "
                                      "the reference"));
        }
      }
    }
    // 3. Failures: documented statuses, inside a fault's window (grouped: one line per kind).
    std::map<std::string, std::pair<int, std::string>> grouped;  // what -> count, an example
    auto note = [&](const std::string& what, const std::string& example) {
      auto& g = grouped[what];
      if (g.first++ == 0) g.second = example;
    };
    auto phase_name = [this](int p) { return p < 0 ? std::string("baseline") : faults_[p].spec; };
    for (const auto& q : queries_) {
      for (const auto& a : q.failed) {
        const int p = PhaseOf(a.end);
        if (!CleanStatus(a.code)) {
          note(StrCat(phase_name(p), ": query attempts ended ", a.code,
                      " (not a documented "
                      "fault status)"),
               StrCat("query ", q.id, ": ", a.message));
        } else if (!InWindow(a.end, p)) {
          note(StrCat(phase_name(p), ": query attempts ended ", a.code,
                      " outside the fault "
                      "window"),
               StrCat("query ", q.id, " at ", Fixed(a.end, 1), " s: ", a.message));
        }
      }
      if (q.end < 0) note("queries never finished", StrCat("query ", q.id));
    }
    for (const auto& b : batches) {
      for (const auto& a : b.failed) {
        const int p = PhaseOf(a.end);
        if (!CleanStatus(a.code)) {
          note(StrCat(phase_name(p), ": ingest attempts ended ", a.code,
                      " (not a documented "
                      "fault status)"),
               StrCat("batch ", b.batch, ": ", a.message));
        } else if (!InWindow(a.end, p)) {
          note(StrCat(phase_name(p), ": ingest attempts ended ", a.code,
                      " outside the fault "
                      "window"),
               StrCat("batch ", b.batch, " at ", Fixed(a.end, 1), " s: ", a.message));
        }
      }
      if (b.acked_at < 0) {
        note("ingest batches never acknowledged (gave up after 60 s of retries)",
             StrCat("batch ", b.batch));
      }
    }
    for (const auto& [what, g] : grouped) {
      v.problems.push_back(StrCat(what, ": ", g.first, " (first: ", g.second, ")"));
    }
    return v;
  }

  static std::string Codes(const std::map<std::string, int>& m) {
    if (m.empty()) return "-";
    std::string s;
    for (const auto& [code, n] : m) s += StrCat(s.empty() ? "" : ", ", code, " ", n);
    return s;
  }

  static std::string Hwm(const int64_t* kb) {
    std::string s;
    for (int i = 0; i < kNumServices; ++i) s += StrCat(i ? " / " : "", (kb[i] + 512) / 1024);
    return s;
  }

  static std::string Fixed(double x, int digits = 1) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.*f", digits, x);
    return buf;
  }

  int Report(const Verdict& v) {
    const auto batches = records_.Batches();
    std::ostringstream os;
    os << "\n| phase | window (s) | queries | attempts failed (status) | queries failed after "
          "retries | recovery (s) | ingest batches acked / attempts failed | acked writes lost "
          "| answers differing | VmHWM MiB (index / kvr / ctxcache / dec0 / dec1 / router) |\n"
       << "|---|---|---|---|---|---|---|---|---|---|\n";
    nlohmann::json jphases = nlohmann::json::array();
    for (int p = -1; p < static_cast<int>(faults_.size()); ++p) {
      if (p >= 0 && faults_[p].skipped) {
        os << "| " << faults_[p].spec << " | skipped: " << faults_[p].skip_reason
           << " | | | | | | | | |\n";
        continue;
      }
      std::map<std::string, int> attempt_codes, final_codes;
      int n = 0;
      for (const auto& q : queries_) {
        if (PhaseOf(q.sched) != p) continue;
        ++n;
        if (!q.ok) final_codes[q.code]++;
      }
      for (const auto& q : queries_) {
        for (const auto& a : q.failed) {
          if (PhaseOf(a.end) == p) attempt_codes[a.code]++;
        }
      }
      int acked = 0, ingest_failed = 0;
      for (const auto& b : batches) {
        if (b.acked_at >= 0 && PhaseOf(b.acked_at) == p) ++acked;
        for (const auto& a : b.failed) {
          if (PhaseOf(a.end) == p) ++ingest_failed;
        }
      }
      std::string name = "baseline (no fault)", window = Fixed(baseline_end_, 1), recovery = "-";
      const int64_t* hwm = baseline_hwm_;
      if (p >= 0) {
        const Fault& f = faults_[p];
        name = f.spec;
        window = Fixed(f.clear - f.start, 1);
        recovery = f.recovered < 0 ? "**none**" : Fixed(std::max(0.0, f.recovered - f.clear), 1);
        hwm = f.hwm_kb;
      }
      os << "| " << name << " | " << window << " | " << n << " | " << Codes(attempt_codes) << " | "
         << Codes(final_codes) << " | " << recovery << " | " << acked << " / " << ingest_failed
         << " | " << lost_by_phase_[p + 1] << " | " << corrupted_by_phase_[p + 1] << " | "
         << Hwm(hwm) << " |\n";
      nlohmann::json j = {{"phase", name},
                          {"queries", n},
                          {"attempts_failed", attempt_codes},
                          {"queries_failed", final_codes},
                          {"ingest_batches_acked", acked},
                          {"ingest_attempts_failed", ingest_failed},
                          {"acked_writes_lost", lost_by_phase_[p + 1]},
                          {"answers_differing", corrupted_by_phase_[p + 1]},
                          {"vmhwm_mib", std::vector<int64_t>(hwm, hwm + kNumServices)}};
      for (auto& x : j["vmhwm_mib"]) x = (x.get<int64_t>() + 512) / 1024;
      if (p >= 0) {
        j["window_s"] = faults_[p].clear - faults_[p].start;
        j["recovery_s"] =
            faults_[p].recovered < 0
                ? nlohmann::json(nullptr)
                : nlohmann::json(std::max(0.0, faults_[p].recovered - faults_[p].clear));
      }
      jphases.push_back(j);
    }
    int ok = 0, total = 0;
    for (const auto& q : queries_) {
      ++total;
      if (q.ok) ++ok;
    }
    os << "\n"
       << total << " queries (" << ok << " answered), " << acked_
       << " acknowledged documents checked by id: " << v.lost << " lost; " << v.corrupted
       << " answers differ from the fault-free reference; run " << Fixed(end_, 0) << " s.\n";
    for (const auto& p : v.problems) os << "PROBLEM: " << p << "\n";
    for (size_t i = 0; i < v.lost_ids.size() && i < 10; ++i) {
      os << "LOST: " << v.lost_ids[i] << "\n";
    }
    const bool pass = v.lost == 0 && v.corrupted == 0 && v.problems.empty();
    os << (pass ? "PASS" : "FAIL") << ": chaos run\n";
    std::printf("%s", os.str().c_str());
    std::fflush(stdout);
    if (!o_.json_out.empty()) {
      nlohmann::json j = {{"phases", jphases},      {"queries", total},
                          {"answered", ok},         {"acked_documents", acked_},
                          {"lost", v.lost},         {"corrupted", v.corrupted},
                          {"problems", v.problems}, {"pass", pass},
                          {"qps", o_.qps},          {"ingest_rate", o_.ingest_rate},
                          {"faults", o_.faults},    {"netns", netns()}};
      std::ofstream(o_.json_out) << j.dump(2) << "\n";
    }
    return pass ? 0 : 1;
  }

  // Shows that the checks fail when they must: one acknowledged write removed from the index and
  // one answer token garbled must be reported as exactly one loss and one differing answer.
  int SelfTest(const Verdict& clean) {
    drop_one_write_ = true;
    corrupt_one_answer_ = true;
    const Verdict v = Check();
    const bool detected = v.lost == clean.lost + 1 && v.corrupted == clean.corrupted + 1;
    std::printf(
        "self-test of the checks: injected 1 lost write and 1 garbled answer; detected "
        "%d lost, %d differing: %s\n",
        v.lost, v.corrupted, detected ? "PASS" : "FAIL");
    return detected ? 0 : 1;
  }

  void Teardown() {
    mem_.Stop();
    if (netns()) Loss(false);
    for (const char* d : {"index", "ctxcache"}) Fill(o_.work_dir + "/" + d + "-data", false);
    cluster_.StopAll();
    proxy_.reset();
  }

  Options o_;
  Cluster cluster_;
  MemorySampler mem_;
  std::unique_ptr<DelayProxy> proxy_;
  std::shared_ptr<grpc::Channel> router_, index_;
  std::vector<std::string> questions_;
  std::vector<std::vector<int32_t>> reference_;
  std::vector<double> ref_latency_;
  std::vector<Fault> faults_;
  Records records_;
  std::vector<QueryRecord> queries_;
  std::vector<std::string> problems_;
  std::vector<int> lost_by_phase_, corrupted_by_phase_;
  int64_t baseline_hwm_[kNumServices] = {};
  double baseline_end_ = 0, end_ = 0;
  int acked_ = 0;
  bool drop_one_write_ = false, corrupt_one_answer_ = false;
};

}  // namespace
}  // namespace ragserve::chaos

int main(int argc, char** argv) {
  using ragserve::chaos::Options;
  CLI::App app(
      "chaos-driver: faults under load against the whole ragserve cluster (run it "
      "through tools/chaos)",
      "chaos-driver");
  Options o;
  app.add_option("--bin", o.bin_dir, "Directory of the ragserve binaries")->required();
  app.add_option("--source", o.source_dir, "Repository root (data/corpus)")->required();
  app.add_option("--work-dir", o.work_dir, "Logs, data dirs, model")->required();
  app.add_option("--model", o.model, "Model directory (default: make the tiny model)");
  app.add_option("--netns-tag", o.netns_tag,
                 "Services run in network namespaces <tag>-<service> (set by tools/chaos)");
  app.add_option("--net-prefix", o.net_prefix, "First three octets of the namespaces' subnet");
  app.add_option("--faults", o.faults,
                 "full | short | none | comma list of kind:target[:seconds]; kinds kill, stop, "
                 "link (dec1), diskfull (index, ctxcache)")
      ->capture_default_str();
  app.add_option("--qps", o.qps, "Queries per second (steady)")->capture_default_str();
  app.add_option("--max-tokens", o.max_tokens, "Greedy answer tokens")->capture_default_str();
  app.add_option("--questions", o.questions, "Distinct questions (data/corpus/questions.jsonl)")
      ->capture_default_str();
  app.add_option("--sequential-every", o.sequential_every,
                 "Every Nth round of the questions is asked without the context cache "
                 "(sequential prefill, KV in ragserve-kvr); the others use APE")
      ->capture_default_str()
      ->check(CLI::Range(2, 1000));
  app.add_option("--ingest-rate", o.ingest_rate, "Ingest batches per second")
      ->capture_default_str();
  app.add_option("--ingest-pre-encode", o.ingest_pre_encode,
                 "Ingest with pre_encode: the context cache encodes (and stores) every batch")
      ->capture_default_str();
  app.add_option("--ingest-docs", o.ingest_docs, "Documents per ingest batch")
      ->capture_default_str();
  app.add_option("--query-timeout", o.query_timeout_s, "Deadline of one attempt (s)")
      ->capture_default_str();
  app.add_option("--retry-s", o.retry_s, "A query retries UNAVAILABLE this long (s)")
      ->capture_default_str();
  app.add_option("--baseline-s", o.baseline_s, "Fault-free load before the first fault (s)")
      ->capture_default_str();
  app.add_option("--settle-s", o.settle_s, "Load after each recovery (s)")->capture_default_str();
  app.add_option("--down-s", o.down_s, "kill -9 to restart (s)")->capture_default_str();
  app.add_option("--window-s", o.window_s, "Recovered: a clean window this long (s)")
      ->capture_default_str();
  app.add_option("--recover-max-s", o.recover_max_s, "Unrecovered after this long: a failure")
      ->capture_default_str();
  app.add_option("--grace-s", o.grace_s, "Failures accepted this long after recovery (s)")
      ->capture_default_str();
  app.add_option("--latency-ok-s", o.latency_ok_s,
                 "Recovered answers are at most this slow, from their scheduled time (0 = 4 x the "
                 "slowest reference answer + 1 s, at least 2 s)")
      ->capture_default_str();
  app.add_option("--link-delay-ms", o.link_delay_ms, "link: added latency per direction")
      ->capture_default_str();
  app.add_option("--link-jitter-ms", o.link_jitter_ms, "link: ± jitter")->capture_default_str();
  app.add_option("--link-loss-pct", o.link_loss_pct, "link: packets dropped, each direction")
      ->capture_default_str();
  app.add_flag("--self-test-checks", o.self_test_checks,
               "After a passing run, remove one acknowledged document and garble one answer; "
               "the checks must report exactly those");
  app.add_option("--json", o.json_out, "Write the per-phase results as JSON");
  CLI11_PARSE(app, argc, argv);
  o.work_dir = std::filesystem::absolute(o.work_dir).string();
  ragserve::chaos::g_t0 = std::chrono::steady_clock::now();
  struct sigaction sa {};
  sa.sa_handler = [](int) { ragserve::chaos::g_interrupted = true; };
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  ragserve::chaos::ChaosRun run(std::move(o));
  return run.Main();
}
