#include "tests/rpcfuzz/fuzz_cluster.h"

#include <grpcpp/generic/generic_stub.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iterator>
#include <thread>

#include "services/common/client.h"

namespace ragserve::rpcfuzz {

using Clock = std::chrono::steady_clock;

void ShareMessages(Case* c) {
  c->slices.clear();
  for (const auto& m : c->messages) c->slices.emplace_back(m);
}

Outcome Execute(const std::shared_ptr<grpc::Channel>& channel, const Case& c, int64_t slack_ms) {
  Outcome out;
  const auto start = Clock::now();
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(c.deadline_ms));
  grpc::CompletionQueue cq;
  const auto limit =
      std::chrono::system_clock::now() + std::chrono::milliseconds(c.deadline_ms + slack_ms);
  auto wait = [&]() {
    void* tag;
    bool ok = false;
    if (out.hung) return false;
    if (cq.AsyncNext(&tag, &ok, limit) != grpc::CompletionQueue::GOT_EVENT) {
      out.hung = true;
      ctx.TryCancel();
      return false;
    }
    return ok;
  };
  auto call = stub.PrepareCall(&ctx, c.path, &cq);
  call->StartCall(reinterpret_cast<void*>(1));
  bool ok = wait();
  bool cancelled = false;
  const size_t count = c.slices.empty() ? c.messages.size() : c.slices.size();
  for (size_t i = 0; ok && i < count; ++i) {
    if (c.cut_after_writes == static_cast<int>(i)) {
      ctx.TryCancel();
      cancelled = true;
      break;
    }
    grpc::Slice slice = c.slices.empty() ? grpc::Slice(c.messages[i]) : c.slices[i];
    grpc::ByteBuffer bb(&slice, 1);
    call->Write(bb, reinterpret_cast<void*>(2));
    ok = wait();
  }
  if (ok && !cancelled) {
    call->WritesDone(reinterpret_cast<void*>(3));
    ok = wait();
  }
  while (!out.hung) {
    if (c.read_delay_ms > 0 && !cancelled) {
      std::this_thread::sleep_for(std::chrono::milliseconds(c.read_delay_ms));
    }
    grpc::ByteBuffer resp;
    call->Read(&resp, reinterpret_cast<void*>(4));
    if (!wait()) break;
    ++out.reads;
    if (c.cut_after_reads >= 0 && out.reads >= c.cut_after_reads && !cancelled) {
      ctx.TryCancel();
      cancelled = true;
    }
  }
  if (out.hung) ctx.TryCancel();
  call->Finish(&out.status, reinterpret_cast<void*>(5));
  {
    void* tag;
    bool fin_ok;
    // After a cancel every pending operation completes promptly; drain them all.
    while (
        cq.AsyncNext(&tag, &fin_ok, std::chrono::system_clock::now() + std::chrono::seconds(30)) ==
            grpc::CompletionQueue::GOT_EVENT &&
        tag != reinterpret_cast<void*>(5)) {
    }
  }
  cq.Shutdown();
  {
    void* tag;
    bool ok2;
    while (cq.Next(&tag, &ok2)) {
    }
  }
  out.wall_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  return out;
}

std::string StatusName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : std::to_string(i);
}

ProcMemory ReadProcMemory(pid_t pid) {
  ProcMemory m;
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) m.rss_kb = std::stoll(line.substr(6));
    if (line.rfind("VmHWM:", 0) == 0) m.hwm_kb = std::stoll(line.substr(6));
  }
  return m;
}

bool FuzzCluster::Start(const std::string& dir, const std::string& model, std::string* error,
                        const ServiceFlags& extra) {
  cluster_ = std::make_unique<testing::Cluster>(dir);
  auto flags = [&extra](const std::string& name, std::vector<std::string> args) {
    const auto it = extra.find(name);
    if (it != extra.end()) args.insert(args.end(), it->second.begin(), it->second.end());
    return args;
  };
  if (!cluster_->Start("index", "index", flags("index", {"--data-dir", dir + "/index-data"}),
                       error) ||
      !cluster_->Start("kvr", "kvr", flags("kvr", {"--memory-limit-gib", "1"}), error) ||
      !cluster_->Start("ctxcache", "ctxcache",
                       flags("ctxcache", {"--model", model, "--data-dir", dir + "/ctxcache-data",
                                          "--ram-mb", "256"}),
                       error) ||
      !cluster_->Start(
          "decoder", "decoder",
          flags("decoder", {"--model", model, "--worker-id", "fz-decoder", "--kv-budget-mb", "256",
                            "--kvr-addr", cluster_->Get("kvr")->addr(), "--ctxcache-addr",
                            cluster_->Get("ctxcache")->addr()}),
          error) ||
      !cluster_->Start(
          "router", "router",
          flags("router", {"--index-addr", cluster_->Get("index")->addr(), "--decoders",
                           cluster_->Get("decoder")->addr(), "--ctxcache-addr",
                           cluster_->Get("ctxcache")->addr(), "--poll-interval", "0.2"}),
          error)) {
    return false;
  }
  for (const char* name : kServiceNames) {
    auto ch = MakeChannel(cluster_->Get(name)->addr());
    if (!ch.ok()) {
      *error = "channel to " + std::string(name);
      return false;
    }
    // Connected before the first request, so a tiny deadline meets a ready channel.
    if (!(*ch)->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30))) {
      *error = "could not connect to " + std::string(name);
      return false;
    }
    channels_[name] = *ch;
    log_offsets_[name] = 0;
  }
  return true;
}

std::string FuzzCluster::CheckProcessesAndLogs(std::string* service) {
  for (const char* name : kServiceNames) {
    testing::ClusterService* s = cluster_->Get(name);
    *service = name;
    if (!s->proc->running()) {
      int code = 0;
      s->proc->Wait(0, &code);
      return std::string(name) + " exited (code " + std::to_string(code) + "); log ends:\n" +
             LogTail(name);
    }
    std::ifstream f(s->log, std::ios::binary);
    f.seekg(0, std::ios::end);
    const int64_t size = f.tellg();
    if (size > log_offsets_[name]) {
      const int64_t from = std::max<int64_t>(0, log_offsets_[name] - 200);
      std::string text(static_cast<size_t>(size - from), '\0');
      f.seekg(from);
      f.read(text.data(), static_cast<std::streamsize>(text.size()));
      log_offsets_[name] = size;
      for (const char* marker :
           {"ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
            "WARNING: ThreadSanitizer", "terminate called"}) {
        const auto at = text.find(marker);
        if (at != std::string::npos) {
          return std::string(name) + " log: " + text.substr(at, 1500);
        }
      }
    }
  }
  service->clear();
  return "";
}

std::string FuzzCluster::CheckHealthAndMemory(int64_t* max_rss_mb, int64_t rss_limit_mb,
                                              double health_timeout_s) {
  for (size_t i = 0; i < std::size(kServiceNames); ++i) {
    const char* name = kServiceNames[i];
    const Status st = CheckHealth(channels_[name], "", health_timeout_s);
    if (!st.ok()) return std::string(name) + " not SERVING: " + st.message();
    const int64_t rss = ReadProcMemory(cluster_->Get(name)->proc->pid()).rss_kb / 1024;
    max_rss_mb[i] = std::max(max_rss_mb[i], rss);
    if (rss > rss_limit_mb) {
      return std::string(name) + " resident memory " + std::to_string(rss) + " MiB > limit " +
             std::to_string(rss_limit_mb) + " MiB";
    }
  }
  return "";
}

std::string FuzzCluster::LogTail(const std::string& name) {
  const std::string all = testing::ReadFileOrEmpty(cluster_->Get(name)->log);
  size_t at = all.size();
  for (int lines = 0; lines < 8 && at > 0; ++lines) {
    const size_t nl = all.rfind('\n', at - 1);
    at = nl == std::string::npos ? 0 : nl;
  }
  std::string tail = all.substr(at);
  return tail.size() > 3000 ? tail.substr(tail.size() - 3000) : tail;
}

}  // namespace ragserve::rpcfuzz
