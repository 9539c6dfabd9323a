// rpc_fuzz: a structure-aware fuzzer of every RPC of the five ragserve services, against the real
// binaries on loopback (tests/e2e/cluster.h starts them with the tiny model).
//
//   rpc_fuzz --seed 1 --requests 1000 [--seconds 600] [--services index,kvr] [--keep-going]
//   rpc_fuzz --replay tests/rpcfuzz/regressions
//
// Each request is a random message built from the method's descriptor or a mutated valid seed
// (message_gen.h), sent with grpc::GenericStub under a tiny or a normal deadline; client streams
// may be cut off after any message and server streams after any response. A run fails when a
// service process exits, a sanitizer report appears in a service's log, a call does not complete
// by its deadline plus slack, a status code is outside the method's allowed set (rpc_table.h), a
// normal-deadline call runs out of time, a service stops answering grpc.health.v1 SERVING, or a
// service's resident memory passes --rss-limit-mb. The failing request is written as a case file
// to --save-dir; --replay runs case files against a fresh cluster with the same checks.
// RAGSERVE_BIN_DIR picks the service binaries (e.g. a build-asan/bin for the sanitized run).
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/text_format.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "services/common/client.h"
#include "tests/e2e/cluster.h"
#include "tests/rpcfuzz/fuzz_cluster.h"
#include "tests/rpcfuzz/message_gen.h"
#include "tests/rpcfuzz/rpc_table.h"

namespace ragserve::rpcfuzz {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Set by SIGINT / SIGTERM / SIGHUP: the workers stop after their current call and the run ends
// normally, so the cluster's processes are stopped instead of orphaned.
std::atomic<bool> g_interrupted{false};
void OnStopSignal(int) { g_interrupted.store(true); }

struct Options {
  uint64_t seed = 1;
  int64_t requests = 200;  // Per service.
  double seconds = 0;      // Wall budget for the whole run; 0 = none.
  std::string services = "router,index,kvr,ctxcache,decoder";
  int64_t max_message_kb = 4096;
  int64_t deadline_ms = 15000;  // The "normal" deadline.
  int64_t slack_ms = 5000;      // A call not done by deadline + slack hangs.
  // Added to the normal deadline per token a request asks to generate (sampling.max_tokens), so
  // a slow (sanitized, loaded) decoder is not judged stalled for honest work; 0 = off.
  double ms_per_token = 0;
  int64_t rss_limit_mb = 3072;
  int64_t check_every = 25;  // Health + RSS every this many requests.
  int64_t settle_ms = 1000;  // Replay: wait this long after each case before looking again.
  std::string model;
  std::string work_dir;
  std::string save_dir;
  std::string replay;
  int jobs = 1;  // Concurrent callers; 1 keeps a run reproducible from its seed.
  bool keep_going = false;
  bool verbose = false;
};

// --- Case files --------------------------------------------------------------------------------
// Text header lines "key: value", a line "---", then per message "<length>\n<bytes>".

std::string Hex16(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string SaveCase(const Case& c, const std::string& dir, const std::string& symptom) {
  fs::create_directories(dir);
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const std::string& s) {
    for (unsigned char ch : s) h = (h ^ ch) * 1099511628211ull;
  };
  mix(c.path);
  for (const auto& m : c.messages) mix(m);
  const std::string method = c.path.substr(c.path.find('.', 1) + 4);  // "IndexService/Search"
  std::string base = method;
  std::replace(base.begin(), base.end(), '/', '-');
  base = dir + "/" + base + "-" + Hex16(h);
  {
    std::ofstream f(base + ".case", std::ios::binary);
    f << "rpcfuzz-case v1\n";
    f << "path: " << c.path << "\n";
    f << "deadline_ms: " << c.deadline_ms << "\n";
    f << "cut_after_writes: " << c.cut_after_writes << "\n";
    f << "cut_after_reads: " << c.cut_after_reads << "\n";
    f << "invalid_utf8: " << (c.invalid_utf8 ? 1 : 0) << "\n";
    f << "repeat: " << c.repeat << "\n";
    // First line plus the end (where a log tail says why), on one line.
    const std::string first = symptom.substr(0, symptom.find('\n'));
    std::string one_line = first.size() == symptom.size() || symptom.size() <= 600
                               ? symptom
                               : first + " ... " + symptom.substr(symptom.size() - 400);
    std::replace(one_line.begin(), one_line.end(), '\n', ' ');
    f << "symptom: " << one_line << "\n";
    f << "---\n";
    for (const auto& m : c.messages) f << m.size() << "\n" << m;
  }
  {  // A readable copy (long strings and bytes abbreviated) for the reviewer.
    const RpcSpec* rpc = FindRpc(c.path);
    std::ofstream f(base + ".txt");
    f << "# " << c.path << "  deadline " << c.deadline_ms << " ms, cut writes "
      << c.cut_after_writes << ", cut reads " << c.cut_after_reads << "\n# " << symptom << "\n";
    google::protobuf::TextFormat::Printer printer;
    printer.SetTruncateStringFieldLongerThan(200);
    for (const auto& m : c.messages) {
      std::unique_ptr<google::protobuf::Message> msg(
          google::protobuf::MessageFactory::generated_factory()
              ->GetPrototype(rpc->method->input_type())
              ->New());
      msg->ParseFromString(m);
      std::string text;
      printer.PrintToString(*msg, &text);
      if (text.size() > 20000) text = text.substr(0, 20000) + "...\n";
      f << "--- message (" << m.size() << " bytes)\n" << text;
    }
  }
  return base + ".case";
}

bool LoadCase(const std::string& path, Case* c, std::string* error) {
  std::ifstream f(path, std::ios::binary);
  std::string line;
  if (!std::getline(f, line) || line != "rpcfuzz-case v1") {
    *error = "not an rpcfuzz case";
    return false;
  }
  while (std::getline(f, line) && line != "---") {
    const auto colon = line.find(": ");
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, colon), value = line.substr(colon + 2);
    if (key == "path") c->path = value;
    if (key == "deadline_ms") c->deadline_ms = std::stoll(value);
    if (key == "cut_after_writes") c->cut_after_writes = std::stoi(value);
    if (key == "cut_after_reads") c->cut_after_reads = std::stoi(value);
    if (key == "invalid_utf8") c->invalid_utf8 = value == "1";
    if (key == "repeat") c->repeat = std::max(1, std::stoi(value));
  }
  while (std::getline(f, line)) {
    const size_t n = std::stoull(line);
    std::string m(n, '\0');
    f.read(m.data(), static_cast<std::streamsize>(n));
    if (static_cast<size_t>(f.gcount()) != n) {
      *error = "truncated message";
      return false;
    }
    c->messages.push_back(std::move(m));
  }
  if (FindRpc(c->path) == nullptr) {
    *error = "unknown method " + c->path;
    return false;
  }
  return true;
}

// The oracle for one completed call ("" = fine).
std::string Judge(const RpcSpec& rpc, const Case& c, const Outcome& o, const Options& opt) {
  if (o.hung) {
    return "hang: no completion " + std::to_string(opt.slack_ms) + " ms after the " +
           std::to_string(c.deadline_ms) + " ms deadline";
  }
  const auto code = o.status.error_code();
  // Made by the client's transport, not the server: the answer's headers (its status message) were
  // over the client's metadata limit, so the real code never arrived.
  if (o.status.error_message().find("metadata size exceeds limit") != std::string::npos) {
    return "oversized status: " + o.status.error_message();
  }
  if (!Allowed(rpc, code, c.invalid_utf8)) {
    return "status " + std::to_string(static_cast<int>(code)) + " not allowed for " + rpc.path +
           ": " + o.status.error_message().substr(0, 500);
  }
  const bool cut = c.cut_after_writes >= 0 || c.cut_after_reads >= 0;
  if (code == grpc::StatusCode::DEADLINE_EXCEEDED && c.deadline_ms >= opt.deadline_ms && !cut) {
    return "stall: no answer within the normal " + std::to_string(c.deadline_ms) + " ms deadline";
  }
  return "";
}

// --- Generating cases --------------------------------------------------------------------------

// Tokens the request asks to generate: the largest sampling.max_tokens of its messages (Query and
// Generate requests carry a SamplingParams field named "sampling"), 0 for every other request.
int64_t TokensAsked(const MessageList& msgs) {
  int64_t most = 0;
  for (const auto& m : msgs) {
    const auto* sampling = m->GetDescriptor()->FindFieldByName("sampling");
    if (sampling == nullptr || sampling->message_type() == nullptr) continue;
    const auto& params = m->GetReflection()->GetMessage(*m, sampling);
    const auto* max_tokens = params.GetDescriptor()->FindFieldByName("max_tokens");
    if (max_tokens == nullptr ||
        max_tokens->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_INT32) {
      continue;
    }
    most = std::max<int64_t>(most, params.GetReflection()->GetInt32(params, max_tokens));
  }
  return most;
}

Case MakeCase(const RpcSpec& rpc, const Fixtures& fx, MessageGen& gen, const Options& opt) {
  Case c;
  c.path = rpc.path;
  gen.ResetFlags();
  gen.set_allow_invalid_utf8(gen.Chance(0.05));
  c.deadline_ms = gen.Chance(0.08) ? gen.Uniform(0, 50) : opt.deadline_ms;
  std::vector<MessageList> seeds = Seeds(rpc, fx);
  MessageList msgs;
  if (!seeds.empty() && gen.Chance(0.65)) {
    msgs = std::move(seeds[gen.Uniform(0, static_cast<int64_t>(seeds.size()) - 1)]);
    // Mutate at least one message; sometimes more.
    const size_t target =
        static_cast<size_t>(gen.Uniform(0, static_cast<int64_t>(msgs.size()) - 1));
    for (size_t i = 0; i < msgs.size(); ++i) {
      if (i == target || gen.Chance(0.2)) gen.Mutate(msgs[i].get());
    }
  } else {
    msgs.push_back(gen.Random(rpc.method->input_type()));
  }
  if (rpc.kind == CallKind::kClientStream) {
    // More messages: random ones, or copies of the last (same documents twice, same layer twice).
    const int extra = gen.Chance(0.3) ? static_cast<int>(gen.Uniform(1, 4)) : 0;
    for (int i = 0; i < extra; ++i) {
      if (gen.Chance(0.5)) {
        msgs.push_back(gen.Random(rpc.method->input_type()));
      } else {
        std::unique_ptr<google::protobuf::Message> copy(msgs.back()->New());
        copy->CopyFrom(*msgs.back());
        if (gen.Chance(0.5)) gen.Mutate(copy.get());
        msgs.push_back(std::move(copy));
      }
    }
    if (gen.Chance(0.05)) msgs.clear();  // A stream with no message at all.
    if (gen.Chance(0.15)) c.cut_after_writes = static_cast<int>(gen.Uniform(0, msgs.size()));
  }
  if (rpc.kind == CallKind::kServerStream && gen.Chance(0.15)) {
    c.cut_after_reads = static_cast<int>(gen.Uniform(0, 3));
  }
  for (const auto& m : msgs) c.messages.push_back(SerializeDeterministic(*m));
  c.invalid_utf8 = gen.wrote_invalid_utf8();
  if (c.deadline_ms == opt.deadline_ms) {
    c.deadline_ms +=
        static_cast<int64_t>(opt.ms_per_token * static_cast<double>(TokensAsked(msgs)));
  }
  return c;
}

// --- Runs ---------------------------------------------------------------------------------------

struct Run {
  const Options& opt;
  std::string model;
  std::string dir;
  std::unique_ptr<FuzzCluster> cluster;  // Replaced only under the unique lock of cluster_mu.
  int generation = 0;                    // Clusters started so far; guarded like `cluster`.
  // Workers hold cluster_mu shared while they use the cluster; a restart holds it exclusively.
  std::shared_mutex cluster_mu;
  std::mutex mu;  // Guards everything below and the cluster's checks.
  Fixtures fx;
  int64_t max_rss_mb[5] = {0, 0, 0, 0, 0};
  std::map<std::string, Case> last_case;  // Per service.

  bool StartCluster() {
    cluster = nullptr;  // Stops the previous one first.
    const std::string sub = dir + "/cluster" + std::to_string(generation++);
    fs::create_directories(sub);
    cluster = std::make_unique<FuzzCluster>();
    std::string error;
    if (!cluster->Start(sub, model, &error)) {
      std::fprintf(stderr, "rpc_fuzz: cluster did not start: %s\n", error.c_str());
      return false;
    }
    fx = SetUpFixtures(cluster->channels());
    if (fx.fingerprint.empty() || fx.passage_key.empty()) {
      std::fprintf(stderr, "rpc_fuzz: fixtures incomplete (fingerprint '%s', passage key '%s')\n",
                   fx.fingerprint.c_str(), fx.passage_key.c_str());
    }
    return true;
  }

  std::string CheckProcesses(std::string* service) {
    std::lock_guard<std::mutex> l(mu);
    return cluster->CheckProcessesAndLogs(service);
  }
  std::string CheckHealth() {
    std::lock_guard<std::mutex> l(mu);
    return cluster->CheckHealthAndMemory(max_rss_mb, opt.rss_limit_mb);
  }

  // Runs one case and every check; "" when all is well, else the failure and in *culprit the
  // service at fault. Call with cluster_mu held (shared).
  std::string RunCase(const Case& c, grpc::StatusCode* code = nullptr,
                      std::string* culprit = nullptr) {
    const RpcSpec* rpc = FindRpc(c.path);
    const Outcome o = Execute(cluster->channel(rpc->service), c, opt.slack_ms);
    if (code != nullptr) *code = o.status.error_code();
    if (opt.verbose) {
      std::fprintf(stderr, "  %s -> %s (%d reads, %.0f ms) %s\n", c.path.c_str(),
                   StatusName(o.status.error_code()).c_str(), o.reads, o.wall_ms,
                   o.status.error_message().substr(0, 120).c_str());
    }
    {
      std::lock_guard<std::mutex> l(mu);
      last_case[rpc->service] = c;
    }
    std::string service;
    std::string failure = CheckProcesses(&service);
    if (failure.empty()) {
      failure = Judge(*rpc, c, o, opt);
      if (!failure.empty()) {
        // A process that crashes while answering may not be reaped yet (a core dump, a deep
        // stack): give it a moment so the crash, not its symptom on the wire, is reported.
        std::this_thread::sleep_for(std::chrono::milliseconds(1500));
        std::string crash = CheckProcesses(&service);
        if (!crash.empty()) failure = crash;
      }
    }
    if (culprit != nullptr) *culprit = service.empty() ? rpc->service : service;
    return failure;
  }

  // Saves the case that failed and, when a service crashed, the last case sent to that service
  // (a router that aborts after answering is noticed on a later request to another service).
  void SaveFailure(const Case& c, const std::string& failure, const std::string& culprit) {
    const std::string saved = SaveCase(c, opt.save_dir, failure);
    std::fprintf(stderr, "  reproducer: %s\n", saved.c_str());
    std::lock_guard<std::mutex> l(mu);
    auto it = last_case.find(culprit);
    if (it != last_case.end() && it->second.messages != c.messages) {
      std::fprintf(stderr, "  last request to %s: %s\n", culprit.c_str(),
                   SaveCase(it->second, opt.save_dir, failure).c_str());
    }
  }
};

int Fuzz(const Options& opt, Run& run) {
  std::vector<std::string> services;
  {
    std::stringstream ss(opt.services);
    std::string s;
    while (std::getline(ss, s, ',')) services.push_back(s);
  }
  std::map<std::string, std::vector<const RpcSpec*>> by_service;
  for (const RpcSpec& r : AllRpcs()) by_service[r.service].push_back(&r);
  for (const auto& s : services) {
    if (by_service[s].empty()) {
      std::fprintf(stderr, "rpc_fuzz: unknown service '%s'\n", s.c_str());
      return 2;
    }
  }
  // Every seed, unmutated, first: they should be accepted (a seed the services reject reaches
  // no deeper code than noise; say so).
  for (const auto& s : services) {
    for (const RpcSpec* rpc : by_service[s]) {
      for (const MessageList& seed : Seeds(*rpc, run.fx)) {
        Case c;
        c.path = rpc->path;
        c.deadline_ms = opt.deadline_ms;
        for (const auto& m : seed) c.messages.push_back(SerializeDeterministic(*m));
        grpc::StatusCode code = grpc::StatusCode::OK;
        const std::string failure = run.RunCase(c, &code);
        if (!failure.empty()) {
          std::fprintf(stderr, "rpc_fuzz: FAILURE on a seed of %s: %s\n", rpc->path.c_str(),
                       failure.c_str());
          SaveCase(c, opt.save_dir, failure);
          return 1;
        }
        if (code != grpc::StatusCode::OK && code != grpc::StatusCode::ALREADY_EXISTS) {
          std::fprintf(stderr, "rpc_fuzz: note: a seed of %s gets %s\n", rpc->path.c_str(),
                       StatusName(code).c_str());
        }
      }
    }
  }
  run.fx = SetUpFixtures(run.cluster->channels());

  std::map<std::string, int64_t> sent;
  std::map<std::string, std::map<std::string, int64_t>> codes;  // path -> code -> count
  const auto start = Clock::now();
  int failures = 0;
  int64_t total = 0;
  bool out_of_time = false;
  bool stop = false;  // A failure without --keep-going, or a cluster that will not start.

  // Worker j sends requests round-robin over the services, opt.requests per service divided
  // among the workers. With --jobs 1 (the default) a seed reproduces the run exactly.
  auto worker = [&](int j) {
    MessageGen gen(opt.seed + 7919u * static_cast<uint64_t>(j), opt.max_message_kb * 1024);
    const int64_t share = (opt.requests + opt.jobs - 1 - j) / opt.jobs;
    for (int64_t round = 0; round < share; ++round) {
      for (const auto& s : services) {
        Fixtures fx;
        {
          std::lock_guard<std::mutex> l(run.mu);
          if (stop) return;
          if (g_interrupted.load() ||
              (opt.seconds > 0 &&
               std::chrono::duration<double>(Clock::now() - start).count() > opt.seconds)) {
            out_of_time = true;
            return;
          }
          fx = run.fx;
        }
        const auto& rpcs = by_service[s];
        const RpcSpec& rpc = *rpcs[gen.Uniform(0, static_cast<int64_t>(rpcs.size()) - 1)];
        const Case c = MakeCase(rpc, fx, gen, opt);
        std::string failure, culprit;
        int generation;
        {
          std::shared_lock<std::shared_mutex> cl(run.cluster_mu);
          generation = run.generation;
          grpc::StatusCode code = grpc::StatusCode::OK;
          failure = run.RunCase(c, &code, &culprit);
          bool check = false;
          {
            std::lock_guard<std::mutex> l(run.mu);
            ++codes[c.path][StatusName(code)];
            ++sent[s];
            ++total;
            check = total % opt.check_every == 0;
            if (total % 5000 == 0) {
              std::fprintf(stderr, "rpc_fuzz: progress: %lld requests, %d failure(s), %.0f s\n",
                           static_cast<long long>(total), failures,
                           std::chrono::duration<double>(Clock::now() - start).count());
            }
          }
          if (failure.empty() && check) {
            failure = run.CheckHealth();
            culprit = "";
            if (!failure.empty()) {  // Not answering because it is dying? Report the crash.
              std::this_thread::sleep_for(std::chrono::milliseconds(1500));
              const std::string crash = run.CheckProcesses(&culprit);
              if (!crash.empty()) failure = crash;
            }
            // Fuzzed requests drop collections, release sequences and evict entries: put them
            // back.
            Fixtures again = SetUpFixtures(run.cluster->channels());
            std::lock_guard<std::mutex> l(run.mu);
            run.fx = again;
          }
        }
        if (failure.empty()) continue;
        std::unique_lock<std::shared_mutex> cl(run.cluster_mu);
        // Another worker restarted the cluster meanwhile: what this one saw was that crash.
        if (run.generation != generation) continue;
        {
          std::lock_guard<std::mutex> l(run.mu);
          ++failures;
          std::fprintf(stderr, "rpc_fuzz: FAILURE #%d after %lld requests (%s):\n  %s\n", failures,
                       static_cast<long long>(total), c.path.c_str(), failure.c_str());
        }
        run.SaveFailure(c, failure, culprit);
        std::lock_guard<std::mutex> l(run.mu);
        if (!opt.keep_going || !run.StartCluster()) {
          stop = true;
          return;
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (int j = 0; j < opt.jobs; ++j) threads.emplace_back(worker, j);
  for (auto& t : threads) t.join();

  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  if (failures == 0) {
    const std::string final_check = run.CheckHealth();
    if (!final_check.empty()) {
      std::fprintf(stderr, "rpc_fuzz: FAILURE at the end: %s\n", final_check.c_str());
      return 1;
    }
  }
  std::printf("rpc_fuzz: seed %llu, %d job(s), %lld requests in %.1f s, %d failure(s)%s\n",
              static_cast<unsigned long long>(opt.seed), opt.jobs, static_cast<long long>(total),
              secs, failures,
              g_interrupted.load() ? " (stopped by a signal)"
              : out_of_time        ? " (stopped by --seconds)"
                                   : "");
  for (size_t i = 0; i < std::size(kServiceNames); ++i) {
    std::printf("  %-9s %7lld requests, max RSS %lld MiB\n", kServiceNames[i],
                static_cast<long long>(sent[kServiceNames[i]]),
                static_cast<long long>(run.max_rss_mb[i]));
  }
  std::printf("  status codes per RPC:\n");
  for (const auto& [path, counts] : codes) {
    std::printf("    %-48s", path.c_str());
    for (const auto& [name, n] : counts) {
      std::printf(" %s=%lld", name.c_str(), static_cast<long long>(n));
    }
    std::printf("\n");
  }
  return failures == 0 ? 0 : 1;
}

int Replay(const Options& opt, Run& run) {
  std::vector<std::string> files;
  if (fs::is_directory(opt.replay)) {
    for (const auto& e : fs::directory_iterator(opt.replay)) {
      if (e.path().extension() == ".case") files.push_back(e.path().string());
    }
  } else {
    files.push_back(opt.replay);
  }
  std::sort(files.begin(), files.end());
  int failures = 0;
  for (const auto& file : files) {
    Case c;
    std::string error;
    if (!LoadCase(file, &c, &error)) {
      std::fprintf(stderr, "rpc_fuzz: %s: %s\n", file.c_str(), error.c_str());
      ++failures;
      continue;
    }
    std::string failure;
    for (int i = 0; i < c.repeat && failure.empty(); ++i) failure = run.RunCase(c);
    if (failure.empty()) {
      // A service may die just after answering (the router's double Finish did): look again.
      std::this_thread::sleep_for(std::chrono::milliseconds(opt.settle_ms));
      std::string service;
      failure = run.CheckProcesses(&service);
    }
    if (failure.empty()) failure = run.CheckHealth();
    if (failure.empty()) {
      std::printf("rpc_fuzz: PASS %s\n", file.c_str());
      continue;
    }
    ++failures;
    std::printf("rpc_fuzz: FAIL %s\n  %s\n", file.c_str(), failure.c_str());
    if (!run.StartCluster()) return 1;
  }
  std::printf("rpc_fuzz: replayed %zu case(s), %d failure(s)\n", files.size(), failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace ragserve::rpcfuzz

int main(int argc, char** argv) {
  using namespace ragserve::rpcfuzz;
  Options opt;
  CLI::App app{"Structure-aware fuzzer of every ragserve RPC against the real service binaries"};
  app.add_option("--seed", opt.seed, "Random seed (a seed reproduces a run)");
  app.add_option("--requests", opt.requests, "Requests per service");
  app.add_option("--seconds", opt.seconds, "Stop after this many seconds (0 = no limit)");
  app.add_option("--services", opt.services, "Comma-separated services to fuzz");
  app.add_option("--max-message-kb", opt.max_message_kb, "Largest generated request (KiB)");
  app.add_option("--deadline-ms", opt.deadline_ms, "Normal call deadline");
  app.add_option("--slack-ms", opt.slack_ms, "A call not done by deadline + slack hangs");
  app.add_option("--ms-per-token", opt.ms_per_token,
                 "Normal deadline + this per token a request asks to generate (slow builds)");
  app.add_option("--rss-limit-mb", opt.rss_limit_mb, "Resident memory limit of every service");
  app.add_option("--check-every", opt.check_every, "Health + memory check every N requests");
  app.add_option("--settle-ms", opt.settle_ms, "Replay: wait after each case, then check again");
  app.add_option("--model", opt.model, "Model directory (default: make the tiny model)");
  app.add_option("--work-dir", opt.work_dir, "Cluster data and logs (default: a temp dir)");
  app.add_option("--save-dir", opt.save_dir, "Where failing cases are written");
  app.add_option("--replay", opt.replay, "Replay a case file or a folder of them");
  app.add_option("--jobs", opt.jobs, "Concurrent callers (1 = reproducible from --seed)");
  app.add_flag("--keep-going", opt.keep_going, "After a failure restart the cluster and go on");
  app.add_flag("--verbose", opt.verbose, "Print every call");
  CLI11_PARSE(app, argc, argv);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, OnStopSignal);
  // Requests with invalid UTF-8 make protobuf log an error per serialization.
  google::protobuf::SetLogHandler(nullptr);

  if (std::getenv("RAGSERVE_BIN_DIR") == nullptr) {
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").parent_path();
    setenv("RAGSERVE_BIN_DIR", self.c_str(), 1);
  }
  if (std::getenv("RAGSERVE_SOURCE_DIR") == nullptr)
    setenv("RAGSERVE_SOURCE_DIR", RPCFUZZ_SOURCE_DIR, 1);
  if (opt.save_dir.empty()) {
    opt.save_dir = std::string(std::getenv("RAGSERVE_SOURCE_DIR")) + "/tests/rpcfuzz/regressions";
  }
  Run run{opt};
  run.dir = opt.work_dir.empty() ? ragserve::testing::MakeTempDir("rpcfuzz") : opt.work_dir;
  std::filesystem::create_directories(run.dir);
  run.model = opt.model;
  if (run.model.empty()) {
    std::string error;
    run.model = ragserve::testing::MakeTinyModel(run.dir, &error);
    if (run.model.empty()) {
      std::fprintf(stderr, "rpc_fuzz: %s\n", error.c_str());
      return 1;
    }
  }
  if (!run.StartCluster()) return 1;
  const int rc = opt.replay.empty() ? Fuzz(opt, run) : Replay(opt, run);
  run.cluster = nullptr;
  if (rc == 0 && opt.work_dir.empty()) std::filesystem::remove_all(run.dir);
  return rc;
}
