// A whole ragserve cluster of real binaries on loopback for end-to-end tests: index, N decode
// workers and the router (plus the tiny model they load), each on ephemeral ports.
#pragma once

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/client.h"
#include "tests/support/process.h"

namespace ragserve::testing {

// A client context whose deadline is `seconds` from now.
inline std::unique_ptr<grpc::ClientContext> Ctx(double seconds = 60) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
  return ctx;
}

struct ClusterService {
  std::string name;
  std::string bin;
  std::vector<std::string> args;
  std::unique_ptr<Process> proc = std::make_unique<Process>();
  int port = 0;
  int metrics_port = 0;
  std::string log;
  std::string addr() const { return "127.0.0.1:" + std::to_string(port); }
};

class Cluster {
 public:
  // Makes the tiny model once per directory and returns its path ("" on failure).
  static std::string MakeModel(const std::string& dir) {
    std::string error;
    return MakeTinyModel(dir, &error);
  }

  explicit Cluster(std::string dir) : dir_(std::move(dir)) {}
  ~Cluster() {
    for (auto& s : services_) {
      s.proc->Signal(SIGTERM);
      int code;
      s.proc->Wait(10, &code);
    }
  }

  // Starts ragserve-<bin> with args + ephemeral ports; false (with the log) if it never serves.
  bool Start(const std::string& bin, const std::string& name, std::vector<std::string> args,
             std::string* error) {
    ClusterService s;
    s.name = name;
    s.bin = bin;
    s.args = args;
    s.log = dir_ + "/" + name + ".log";
    const std::string ready = dir_ + "/" + name + ".ready";
    std::vector<std::string> all = {"--port", "0", "--metrics-port", "0", "--ready-file", ready};
    all.insert(all.end(), args.begin(), args.end());
    if (!s.proc->Start(BinPath("ragserve-" + bin), all, s.log, {}, dir_)) {
      *error = "spawn failed: ragserve-" + bin;
      return false;
    }
    if (!WaitForReadyFile(ready, 60, &s.port, &s.metrics_port)) {
      *error = name + " did not start:\n" + ReadFileOrEmpty(s.log);
      return false;
    }
    services_.push_back(std::move(s));
    return true;
  }

  // Starts a stopped (killed) service again with its args, on the same port.
  bool Restart(const std::string& name, std::string* error) {
    ClusterService* s = Get(name);
    if (s == nullptr) return false;
    int code = 0;
    s->proc->Wait(10, &code);
    s->proc = std::make_unique<Process>();
    const std::string ready = dir_ + "/" + name + ".ready";
    std::remove(ready.c_str());
    std::vector<std::string> all = {"--port", std::to_string(s->port), "--metrics-port",
                                    "0",      "--ready-file",          ready};
    all.insert(all.end(), s->args.begin(), s->args.end());
    if (!s->proc->Start(BinPath("ragserve-" + s->bin), all, s->log, {}, dir_)) return false;
    int port = 0;
    if (!WaitForReadyFile(ready, 60, &port, &s->metrics_port)) {
      *error = name + " did not restart:\n" + ReadFileOrEmpty(s->log);
      return false;
    }
    return true;
  }

  ClusterService* Get(const std::string& name) {
    for (auto& s : services_) {
      if (s.name == name) return &s;
    }
    return nullptr;
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<ClusterService> services_;
};

// Creates the flat, 256-dim cosine collection `name` through the router and ingests three short
// documents into it: d0 (the Nawerk River is 412 km long), d1 (Trykelurk lizards), d2 (Ostvik's
// harbour). The status of the Ingest call.
inline grpc::Status IngestSampleDocs(v1::RagService::Stub* router, grpc::ClientContext* ctx,
                                     const std::string& name = "docs") {
  v1::IngestResponse resp;
  auto writer = router->Ingest(ctx, &resp);
  v1::IngestRequest req;
  req.set_collection(name);
  auto* spec = req.mutable_create_spec();
  spec->set_name(name);
  spec->set_dimension(256);
  spec->set_metric(v1::METRIC_COSINE);
  spec->set_index_kind(v1::INDEX_KIND_FLAT);
  const char* const kTexts[] = {"The Nawerk River is 412 kilometres long.",
                                "Trykelurk lizards have a green stripe on their back.",
                                "The harbour of Ostvik freezes every January."};
  for (int i = 0; i < 3; ++i) {
    auto* d = req.add_documents();
    d->set_id("d" + std::to_string(i));
    d->set_text(kTexts[i]);
  }
  writer->Write(req);
  writer->WritesDone();
  return writer->Finish();
}

}  // namespace ragserve::testing
