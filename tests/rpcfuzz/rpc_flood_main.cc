// rpc_flood: floods each ragserve service with maximal valid requests and checks that resident
// memory stays under its limit and that overload is answered with a clean status.
//
//   rpc_flood [--services index,kvr,ctxcache,decoder,router] [--clients 64] [--burst 256]
//             [--seconds 10] [--max-message-mb 64]
//
// The cluster is rpc_fuzz's (fuzz_cluster.h: the five real binaries, tiny model). For each service
// in turn: a flood phase (--clients callers, each sending the service's maximal requests in a
// loop: the largest message it accepts, the most documents / passages / items per message, the
// longest prompt, server streams held open and read slowly, client streams of big messages),
// then a burst phase (--burst callers at once, well beyond the service's configured concurrency),
// then recovery (time until the service answers a simple request again). Throughout, a sampler
// reads every service's VmRSS from /proc every 20 ms and a prober asks the flooded service for
// health and a simple RPC every 100 ms.
//
// The run fails (exit 1) when a service exits or logs a sanitizer report, a call gets a status
// other than OK / INVALID_ARGUMENT / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED / UNAVAILABLE (and
// CANCELLED for calls the flood cut itself), a status message exceeds the client's metadata
// limit, a service's peak VmRSS passes its --rss-limit-mb, or a service does not answer the
// simple request within --recover-seconds after its flood. Nothing here asserts on time except
// that last bound. A safety valve SIGKILLs the cluster when any service passes --abort-rss-mb
// (the machine is shared), which also fails the run.
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "ragserve/v1/decoder.grpc.pb.h"
#include "ragserve/v1/index.grpc.pb.h"
#include "ragserve/v1/kvr.grpc.pb.h"
#include "ragserve/v1/rag.grpc.pb.h"
#include "services/common/client.h"
#include "tests/rpcfuzz/fuzz_cluster.h"
#include "tests/rpcfuzz/rpc_table.h"
#include "tests/support/process.h"

namespace ragserve::rpcfuzz {
namespace {

using Clock = std::chrono::steady_clock;
using C = grpc::StatusCode;

// SIGINT / SIGTERM: callers stop after their current call, the run reports what it has and the
// cluster is shut down (instead of orphaned).
std::atomic<bool> g_stop{false};
void OnStopSignal(int) { g_stop.store(true); }

double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct Options {
  std::string services = "index,kvr,ctxcache,decoder,router";
  int clients = 64;          // Flood phase callers per service.
  int burst = 256;           // Burst phase callers per service.
  double seconds = 10;       // Flood phase length; the burst phase gets half of it.
  int max_message_mb = 64;   // The services' --max-message-mb (requests are sized just under).
  int passage_chars = 2000;  // Text of one passage (ctxcache Encode, decoder Generate).
  int docs = 10000;          // Documents per Upsert / Ingest message (the services' default cap).
  int64_t call_deadline_ms = 20000;
  double recover_seconds = 30;  // After its flood a service must answer within this.
  // Peak VmRSS allowed per service; "" = the defaults below.
  std::string rss_limits = "";
  int64_t abort_rss_mb = 6144;  // Safety valve: kill the cluster past this (shared machine).
  std::vector<std::string> service_flags;  // "kvr:--memory-limit-gib=1" (extra service flags).
  std::string model;
  std::string work_dir;
};

// --- Loads: the maximal requests of each service ----------------------------------------------

// A request kind and the calls it makes. Cases are built once and shared by every caller (the
// raw call references their bytes), so a flood of 64 MiB messages costs the flooder one copy.
struct Load {
  std::string name;         // "Upsert 10000 docs x 6.5 KiB"
  std::vector<Case> cases;  // Callers cycle through them.
};

std::string Text(size_t n, uint64_t salt) {
  static const char* const kWords[] = {"ferry", "river",  "light", "harbour", "stone", "train",
                                       "north", "winter", "green", "lizard",  "sea",   "bridge"};
  std::string s;
  s.reserve(n + 16);
  uint64_t x = salt * 2654435761u + 1;
  while (s.size() < n) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    s += kWords[(x >> 33) % 12];
    s += ' ';
  }
  s.resize(n);
  return s;
}

std::string Ser(const google::protobuf::Message& m) { return m.SerializeAsString(); }

Case UnaryCase(const std::string& path, const google::protobuf::Message& m, int64_t deadline_ms) {
  Case c;
  c.path = path;
  c.deadline_ms = deadline_ms;
  c.messages.push_back(Ser(m));
  return c;
}

// Just under the message limit: the frame and field headers need a little room.
int64_t MessageBudget(const Options& o) {
  return int64_t{o.max_message_mb} * 1024 * 1024 - 64 * 1024;
}

constexpr int kFloodDim = 64;  // The flood collection's embedding dimension.

void AddFloodDocs(google::protobuf::RepeatedPtrField<v1::Document>* docs, int n, size_t text_bytes,
                  const std::string& prefix) {
  for (int i = 0; i < n; ++i) {
    v1::Document* d = docs->Add();
    d->set_id(prefix + std::to_string(i));
    d->set_text(Text(text_bytes, static_cast<uint64_t>(i)));
  }
}

std::vector<Load> IndexLoads(const Options& o) {
  const int64_t budget = MessageBudget(o);
  std::vector<Load> loads;
  {  // The most documents one Upsert message may hold (--max-upsert-docs 10000), filled to the
     // message limit; the same ids every time, so the collection does not grow.
    const int docs = o.docs;
    v1::UpsertRequest u;
    u.set_collection("flood");
    AddFloodDocs(u.mutable_documents(), docs, static_cast<size_t>(budget / docs - 24), "f");
    Case c;
    c.path = "/ragserve.v1.IndexService/Upsert";
    c.deadline_ms = o.call_deadline_ms;
    c.messages.push_back(Ser(u));
    loads.push_back({"Upsert " + std::to_string(docs) + " docs, max message", {c}});
  }
  {  // Embed: the most texts (2048), filled to the message limit.
    v1::EmbedRequest e;
    e.set_collection("flood");
    for (int i = 0; i < 2048; ++i) e.add_texts(Text(static_cast<size_t>(budget / 2048 - 8), i));
    loads.push_back({"Embed 2048 texts, max message",
                     {UnaryCase("/ragserve.v1.IndexService/Embed", e, o.call_deadline_ms)}});
  }
  {  // Search: queries x k at the 2^20 results cap, with texts: the answer is what is large.
    v1::SearchRequest s;
    s.set_collection("flood");
    for (int i = 0; i < 104; ++i) s.add_queries()->set_text(Text(64, 1000 + i));
    s.set_k(10000);
    s.set_include_text(true);
    loads.push_back({"Search 104 queries x k 10000 with texts",
                     {UnaryCase("/ragserve.v1.IndexService/Search", s, o.call_deadline_ms)}});
  }
  {  // GetDocuments: every document, many times over, filled to the message limit with ids.
    v1::GetDocumentsRequest g;
    g.set_collection("flood");
    for (int64_t i = 0, bytes = 0; bytes < budget - 16; ++i) {
      g.add_ids("f" + std::to_string(i % o.docs));
      bytes += 8;
    }
    loads.push_back({"GetDocuments max message of ids",
                     {UnaryCase("/ragserve.v1.IndexService/GetDocuments", g, o.call_deadline_ms)}});
  }
  return loads;
}

void SetF32(v1::Tensor* t, std::vector<int64_t> shape, float base) {
  t->set_dtype(v1::DTYPE_F32);
  int64_t n = 1;
  for (int64_t d : shape) {
    t->add_shape(d);
    n *= d;
  }
  std::string bytes(static_cast<size_t>(n * 4), '\0');
  for (int64_t i = 0; i < n; ++i) {
    const float v = base + 0.001f * static_cast<float>(i % 101);
    std::memcpy(&bytes[static_cast<size_t>(i) * 4], &v, 4);
  }
  t->set_data(std::move(bytes));
}

constexpr int kSeqLayers = 4, kSeqKvHeads = 4, kSeqQHeads = 8, kSeqDim = 64;

std::vector<Load> KvrLoads(const Options& o) {
  const int64_t budget = MessageBudget(o);
  std::vector<Load> loads;
  {  // CreateSequence: the spec alone, then one layer of K and V per message, each message at
     // the limit; four layers. The spec message is rewritten per call (a fresh sequence id) and
     // the big ones are shared; the caller releases the sequence after it is made (Phase).
    const int64_t row = int64_t{2} * kSeqKvHeads * kSeqDim * 4;  // K + V bytes per token
    const int64_t tokens = (budget - 4096) / row;
    Case c;
    c.path = "/ragserve.v1.KvRetrievalService/CreateSequence";
    c.deadline_ms = o.call_deadline_ms;
    {
      v1::CreateSequenceRequest r;
      {
        auto* s = r.mutable_spec();
        s->set_sequence_id("@");  // replaced per call (Phase)
        s->set_num_layers(kSeqLayers);
        s->set_num_kv_heads(kSeqKvHeads);
        s->set_num_q_heads(kSeqQHeads);
        s->set_head_dim(kSeqDim);
        s->set_store_dtype(v1::DTYPE_F32);
        s->set_index_kind(v1::KEY_INDEX_EXACT);
        s->set_ttl_seconds(60);
      }
      c.messages.push_back(Ser(r));
    }
    for (int l = 0; l < kSeqLayers; ++l) {
      v1::CreateSequenceRequest r;
      auto* ch = r.add_chunks();
      ch->set_layer(l);
      SetF32(ch->mutable_k(), {tokens, kSeqKvHeads, kSeqDim}, 0.1f);
      SetF32(ch->mutable_v(), {tokens, kSeqKvHeads, kSeqDim}, -0.1f);
      c.messages.push_back(Ser(r));
    }
    loads.push_back({"CreateSequence 4 layers x max message", {c}});
  }
  {  // Attend: as many query items as the message holds, against the fixture sequence.
    v1::AttendRequest a;
    a.set_sequence_id("fzseq");
    a.set_top_k(8);
    const int64_t per_item = 2 * 4 * 4 + 24;  // [2 q heads, dim 4] f32 + headers
    const int64_t items = std::min<int64_t>(budget / per_item, 200000);
    for (int64_t i = 0; i < items; ++i) {
      auto* it = a.add_items();
      it->set_layer(static_cast<int32_t>(i % 2));
      SetF32(it->mutable_queries(), {2, 4}, 0.3f);
    }
    loads.push_back({"Attend " + std::to_string(items) + " items",
                     {UnaryCase("/ragserve.v1.KvRetrievalService/Attend", a, o.call_deadline_ms)}});
  }
  return loads;
}

std::vector<Load> CtxcacheLoads(const Options& o, const Fixtures& fx) {
  std::vector<Load> loads;
  {  // Encode: the most passages (256), each --passage-chars long; a different set per case so
     // most are computed, not cache hits.
    Load l{"Encode 256 passages x " + std::to_string(o.passage_chars) + " chars", {}};
    for (int v = 0; v < 4; ++v) {
      v1::EncodeRequest e;
      e.mutable_model()->set_hex(fx.fingerprint);
      for (int i = 0; i < 256; ++i) {
        auto* p = e.add_passages();
        p->set_id("p" + std::to_string(i));
        p->set_text(Text(static_cast<size_t>(o.passage_chars), 100000u * v + i));
      }
      l.cases.push_back(
          UnaryCase("/ragserve.v1.ContextCacheService/Encode", e, o.call_deadline_ms));
    }
    loads.push_back(std::move(l));
  }
  {  // Get: a cached block streamed to a slow reader.
    v1::GetRequest g;
    g.mutable_model()->set_hex(fx.fingerprint);
    g.mutable_key()->set_hex(fx.passage_key);
    Case c = UnaryCase("/ragserve.v1.ContextCacheService/Get", g, o.call_deadline_ms);
    c.read_delay_ms = 50;
    loads.push_back({"Get, slow reader", {c}});
  }
  return loads;
}

std::vector<Load> DecoderLoads(const Options& o) {
  std::vector<Load> loads;
  {  // The most passages (64) that fit the 4,096-token context with a question and a long
     // answer, read slowly.
    v1::GenerateRequest r;
    r.set_question(Text(400, 7));
    for (int i = 0; i < 64; ++i) {
      auto* p = r.add_passages();
      p->set_id("p" + std::to_string(i));
      p->set_text(Text(120, 500 + i));
    }
    r.mutable_sampling()->set_max_tokens(256);
    r.mutable_sampling()->set_ignore_eos(true);
    Case c = UnaryCase("/ragserve.v1.DecoderService/Generate", r, o.call_deadline_ms);
    c.read_delay_ms = 20;
    loads.push_back({"Generate 64 passages, 256 tokens, slow reader", {c}});
  }
  {  // A long raw prompt (~2,000 tokens of the 4,096-token context).
    v1::GenerateRequest r;
    r.set_prompt_override(Text(6000, 11));
    r.mutable_sampling()->set_max_tokens(32);
    r.mutable_sampling()->set_ignore_eos(true);
    Case c = UnaryCase("/ragserve.v1.DecoderService/Generate", r, o.call_deadline_ms);
    c.read_delay_ms = 20;
    loads.push_back({"Generate long prompt, slow reader", {c}});
  }
  return loads;
}

std::vector<Load> RouterLoads(const Options& o) {
  const int64_t budget = MessageBudget(o);
  std::vector<Load> loads;
  {  // Query: the most passages (top_k 64), a long answer, held open and read slowly.
    v1::QueryRequest q;
    q.set_collection("flood");
    q.set_question(Text(200, 3));
    q.set_top_k(64);
    q.mutable_sampling()->set_max_tokens(128);
    q.mutable_sampling()->set_ignore_eos(true);
    Case c = UnaryCase("/ragserve.v1.RagService/Query", q, o.call_deadline_ms);
    c.read_delay_ms = 50;
    loads.push_back({"Query top_k 64, 128 tokens, slow reader", {c}});
  }
  {  // Ingest: two messages of the most documents (--max-ingest-docs 10000) at the limit.
    Case c;
    c.path = "/ragserve.v1.RagService/Ingest";
    c.deadline_ms = o.call_deadline_ms;
    for (int m = 0; m < 2; ++m) {
      v1::IngestRequest r;
      if (m == 0) r.set_collection("flood-ingest");
      AddFloodDocs(r.mutable_documents(), o.docs, static_cast<size_t>(budget / o.docs - 24),
                   m == 0 ? "a" : "b");
      c.messages.push_back(Ser(r));
    }
    loads.push_back({"Ingest 2 x " + std::to_string(o.docs) + " docs, max message", {c}});
  }
  return loads;
}

// The cheap request asked of the flooded service every 100 ms (is it still answering?).
Case ProbeCase(const std::string& service) {
  Case c;
  c.deadline_ms = 2000;
  if (service == "index") {
    c.path = "/ragserve.v1.IndexService/ListCollections";
    c.messages.push_back(Ser(v1::ListCollectionsRequest()));
  } else if (service == "kvr") {
    c.path = "/ragserve.v1.KvRetrievalService/Stats";
    c.messages.push_back(Ser(v1::KvrStatsRequest()));
  } else if (service == "ctxcache") {
    c.path = "/ragserve.v1.ContextCacheService/Stats";
    c.messages.push_back(Ser(v1::CtxStatsRequest()));
  } else if (service == "decoder") {
    c.path = "/ragserve.v1.DecoderService/GetLoad";
    c.messages.push_back(Ser(v1::LoadRequest()));
  } else {
    c.path = "/ragserve.v1.RagService/ListCollections";
    c.messages.push_back(Ser(v1::ListCollectionsRequest()));
  }
  return c;
}

// --- Measuring -----------------------------------------------------------------------------------

struct LoadStats {
  std::map<std::string, int64_t> codes;
  std::vector<double> ok_ms;
  int64_t late = 0;              // Calls not ended 10 s past their deadline (client-side).
  std::vector<std::string> bad;  // Failures (first few).
};

struct ServiceResult {
  std::string service;
  std::map<std::string, LoadStats> by_load;  // "flood: <load>" / "burst: <load>"
  int64_t peak_rss_mb = 0;                   // Sampled during this service's phases.
  int64_t limit_mb = 0;
  int64_t probes_ok = 0, probes_failed = 0;
  double probe_max_ms = 0;
  double recover_s = -1;  // -1: never answered within --recover-seconds.
  std::vector<std::string> failures;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

// Samples every service's VmRSS until stopped; keeps the peak per service since Reset().
class RssSampler {
 public:
  RssSampler(FuzzCluster* cluster, int64_t abort_mb) : cluster_(cluster), abort_mb_(abort_mb) {
    for (const char* s : kServiceNames) pids_[s] = cluster->pid(s);
    thread_ = std::thread([this] { Loop(); });
  }
  ~RssSampler() {
    stop_ = true;
    thread_.join();
  }
  void Reset() {
    std::lock_guard<std::mutex> l(mu_);
    peak_.clear();
  }
  int64_t Peak(const std::string& s) {
    std::lock_guard<std::mutex> l(mu_);
    return peak_[s];
  }
  // Set when the safety valve fired: the service and its RSS.
  std::string aborted() {
    std::lock_guard<std::mutex> l(mu_);
    return aborted_;
  }

 private:
  void Loop() {
    while (!stop_) {
      for (const auto& [name, pid] : pids_) {
        const int64_t mb = ReadProcMemory(pid).rss_kb / 1024;
        std::lock_guard<std::mutex> l(mu_);
        peak_[name] = std::max(peak_[name], mb);
        if (mb > abort_mb_ && aborted_.empty()) {
          aborted_ = name + " at " + std::to_string(mb) + " MiB > --abort-rss-mb " +
                     std::to_string(abort_mb_) + ": the cluster was killed";
          for (const auto& [n2, p2] : pids_) kill(p2, SIGKILL);
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  FuzzCluster* cluster_;
  const int64_t abort_mb_;
  std::map<std::string, pid_t> pids_;
  std::mutex mu_;
  std::map<std::string, int64_t> peak_;
  std::string aborted_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Codes a flooded service may answer (DESIGN.md's overload contract); CANCELLED only for calls
// the flood cut itself (none do today).
bool FloodAllowed(grpc::StatusCode code) {
  return code == C::OK || code == C::INVALID_ARGUMENT || code == C::RESOURCE_EXHAUSTED ||
         code == C::DEADLINE_EXCEEDED || code == C::UNAVAILABLE;
}

class Flooder {
 public:
  Flooder(const Options& opt, FuzzCluster* cluster, RssSampler* sampler)
      : opt_(opt), cluster_(cluster), sampler_(sampler) {}

  ServiceResult Run(const std::string& service, const std::vector<Load>& loads, int64_t limit_mb) {
    ServiceResult res;
    res.service = service;
    res.limit_mb = limit_mb;
    sampler_->Reset();
    std::atomic<bool> probing{true};
    std::atomic<bool> flood_over{false};
    Clock::time_point flood_end;
    std::mutex probe_mu;
    // The prober: health + a simple request, every 100 ms, for the whole run of this service.
    std::thread prober([&] {
      const Case probe = ProbeCase(service);
      while (probing) {
        const auto t0 = Clock::now();
        const Status health = CheckHealth(cluster_->channel(service), "", 2);
        const Outcome o = Execute(cluster_->channel(service), probe, 3000);
        const double ms = Since(t0) * 1000;
        {
          std::lock_guard<std::mutex> l(probe_mu);
          const bool ok = health.ok() && o.status.ok();
          if (ok) {
            ++res.probes_ok;
          } else {
            ++res.probes_failed;
          }
          res.probe_max_ms = std::max(res.probe_max_ms, ms);
          if (ok && flood_over && res.recover_s < 0) {
            res.recover_s = std::chrono::duration<double>(Clock::now() - flood_end).count();
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });

    Phase(service, "flood", loads, opt_.clients, opt_.seconds, &res);
    Phase(service, "burst", loads, opt_.burst, opt_.seconds / 2, &res);
    {
      std::lock_guard<std::mutex> l(probe_mu);
      flood_end = Clock::now();
      flood_over = true;
    }
    const auto wait_start = Clock::now();
    while (Since(wait_start) < opt_.recover_seconds && !g_stop.load()) {
      {
        std::lock_guard<std::mutex> l(probe_mu);
        if (res.recover_s >= 0) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    probing = false;
    prober.join();
    res.peak_rss_mb = sampler_->Peak(service);
    // Every service's process checks (a flood of the router reaches the index and the decoder).
    std::string culprit;
    const std::string crash = cluster_->CheckProcessesAndLogs(&culprit);
    if (!crash.empty()) res.failures.push_back(crash);
    if (!sampler_->aborted().empty()) res.failures.push_back(sampler_->aborted());
    if (res.peak_rss_mb > limit_mb) {
      res.failures.push_back(service + " peak VmRSS " + std::to_string(res.peak_rss_mb) +
                             " MiB > limit " + std::to_string(limit_mb) + " MiB");
    }
    if (res.recover_s < 0) {
      res.failures.push_back(service + " did not answer " + ProbeCase(service).path + " within " +
                             std::to_string(opt_.recover_seconds) + " s after the flood");
    }
    for (const auto& [load, st] : res.by_load) {
      for (const auto& b : st.bad) res.failures.push_back(load + ": " + b);
    }
    return res;
  }

 private:
  // `callers` threads send the loads' cases round-robin until `seconds` pass (calls in flight
  // then finish: their deadline bounds the phase).
  void Phase(const std::string& service, const std::string& phase, const std::vector<Load>& loads,
             int callers, double seconds, ServiceResult* res) {
    std::mutex mu;
    const auto start = Clock::now();
    std::vector<std::thread> threads;
    for (int t = 0; t < callers; ++t) {
      threads.emplace_back([&, t] {
        // Spread the callers over several connections, as separate clients would be.
        auto ch = channels_.at(service)[static_cast<size_t>(t) % channels_.at(service).size()];
        for (int64_t round = 0;
             Since(start) < seconds && sampler_->aborted().empty() && !g_stop.load(); ++round) {
          const Load& load = loads[static_cast<size_t>(t + round) % loads.size()];
          const Case& base = load.cases[static_cast<size_t>(round) % load.cases.size()];
          const bool create_seq = base.path == "/ragserve.v1.KvRetrievalService/CreateSequence";
          std::string seq_id;
          Case own;  // CreateSequence needs a fresh id per call: its own first message.
          const Case* c = &base;
          if (create_seq) {
            seq_id = "flood-" + phase + "-" + std::to_string(t) + "-" + std::to_string(round);
            own.path = base.path;
            own.deadline_ms = base.deadline_ms;
            own.slices = base.slices;
            v1::CreateSequenceRequest first;
            first.ParseFromString(base.messages[0]);
            first.mutable_spec()->set_sequence_id(seq_id);
            own.slices[0] = grpc::Slice(Ser(first));
            c = &own;
          }
          const Outcome o = Execute(ch, *c, 10000);
          if (create_seq && o.status.ok()) {
            v1::ReleaseRequest rel;
            rel.set_sequence_id(seq_id);
            (void)Execute(ch, UnaryCase("/ragserve.v1.KvRetrievalService/Release", rel, 20000),
                          10000);
          }
          std::lock_guard<std::mutex> l(mu);
          LoadStats& st = res->by_load[phase + ": " + load.name];
          ++st.codes[StatusName(o.status.error_code())];
          if (o.status.ok()) st.ok_ms.push_back(o.wall_ms);
          // A call the client's own deadline did not end within 10 s says the flooder itself
          // was starved of CPU (the deadline timer is the client's): counted, not a failure.
          if (o.hung) ++st.late;
          std::string bad;
          if (!FloodAllowed(o.status.error_code())) {
            bad = "status " + StatusName(o.status.error_code()) + ": " +
                  o.status.error_message().substr(0, 300);
          }
          if (o.status.error_message().find("metadata size exceeds limit") != std::string::npos) {
            bad = "oversized status: " + o.status.error_message().substr(0, 300);
          }
          if (!bad.empty() && st.bad.size() < 3) st.bad.push_back(bad);
        }
      });
    }
    for (auto& th : threads) th.join();
  }

 public:
  // Several connections per service (channel args differ, so gRPC does not share one).
  void Connect() {
    for (const char* s : kServiceNames) {
      for (int i = 0; i < 8; ++i) {
        grpc::ChannelArguments args;
        args.SetMaxReceiveMessageSize(-1);
        args.SetMaxSendMessageSize(-1);
        args.SetInt("rpc_flood.connection", i);
        channels_[s].push_back(
            grpc::CreateCustomChannel(cluster_->addr(s), grpc::InsecureChannelCredentials(), args));
      }
    }
  }

 private:
  const Options& opt_;
  FuzzCluster* cluster_;
  RssSampler* sampler_;
  std::map<std::string, std::vector<std::shared_ptr<grpc::Channel>>> channels_;
};

// Peak VmRSS allowed per service. Each is the service's configured budgets plus the in-flight
// request memory it may hold, plus a base (model, allocator, threads): see docs/RELIABILITY.md.
std::map<std::string, int64_t> RssLimits(const Options& o) {
  std::map<std::string, int64_t> limits = {
      {"index", 2048}, {"kvr", 2048}, {"ctxcache", 2048}, {"decoder", 2048}, {"router", 2048}};
  std::stringstream ss(o.rss_limits);
  std::string kv;
  while (std::getline(ss, kv, ',')) {
    const auto eq = kv.find('=');
    if (eq != std::string::npos) limits[kv.substr(0, eq)] = std::stoll(kv.substr(eq + 1));
  }
  return limits;
}

// Objects the loads name: the index collection "flood" (flat, with the 10,000 documents the
// Upsert load rewrites, so Search and GetDocuments have something to return), "flood-ingest"
// (the router's Ingest load) and the router's collection "flood" (ingested through the router,
// short passages, for Query).
void SetUpFloodFixtures(FuzzCluster& cluster, const Options& o) {
  {
    auto stub = v1::IndexService::NewStub(cluster.channel("index"));
    for (const char* name : {"flood", "flood-ingest"}) {  // the second for the router's Ingest
      v1::CreateCollectionRequest req;
      auto* spec = req.mutable_spec();
      spec->set_name(name);
      spec->set_dimension(kFloodDim);
      spec->set_index_kind(v1::INDEX_KIND_FLAT);
      grpc::ClientContext ctx;
      v1::CreateCollectionResponse resp;
      (void)stub->CreateCollection(&ctx, req, &resp);
    }
    const std::vector<Load> loads = IndexLoads(o);
    (void)Execute(cluster.channel("index"), loads[0].cases[0], 60000);
  }
  {
    auto stub = v1::RagService::NewStub(cluster.channel("router"));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::IngestResponse resp;
    auto w = stub->Ingest(&ctx, &resp);
    v1::IngestRequest r;
    r.set_collection("flood");
    auto* spec = r.mutable_create_spec();
    spec->set_name("flood");
    spec->set_dimension(kFloodDim);
    spec->set_index_kind(v1::INDEX_KIND_FLAT);
    AddFloodDocs(r.mutable_documents(), 256, 120, "q");  // 64 of them fit the context
    w->Write(r);
    w->WritesDone();
    (void)w->Finish();
  }
}

int Main(const Options& opt) {
  std::vector<std::string> services;
  {
    std::stringstream ss(opt.services);
    std::string s;
    while (std::getline(ss, s, ',')) services.push_back(s);
  }
  const std::string dir = opt.work_dir.empty() ? testing::MakeTempDir("rpcflood") : opt.work_dir;
  std::filesystem::create_directories(dir);
  std::string model = opt.model, error;
  if (model.empty()) model = testing::MakeTinyModel(dir, &error);
  if (model.empty()) {
    std::fprintf(stderr, "rpc_flood: %s\n", error.c_str());
    return 1;
  }
  ServiceFlags flags;
  for (const char* s : kServiceNames) {
    flags[s] = {"--max-message-mb", std::to_string(opt.max_message_mb)};
  }
  for (const auto& f : opt.service_flags) {  // "kvr:--memory-limit-gib=1"
    const auto colon = f.find(':');
    if (colon == std::string::npos) continue;
    flags[f.substr(0, colon)].push_back(f.substr(colon + 1));
  }
  FuzzCluster cluster;
  if (!cluster.Start(dir, model, &error, flags)) {
    std::fprintf(stderr, "rpc_flood: cluster did not start: %s\n", error.c_str());
    return 1;
  }
  const Fixtures fx = SetUpFixtures(cluster.channels());
  SetUpFloodFixtures(cluster, opt);
  const std::map<std::string, int64_t> limits = RssLimits(opt);
  RssSampler sampler(&cluster, opt.abort_rss_mb);
  Flooder flooder(opt, &cluster, &sampler);
  flooder.Connect();

  std::printf(
      "rpc_flood: %d callers (flood), %d (burst), %.0f s + %.0f s per service, messages "
      "up to %d MiB\n",
      opt.clients, opt.burst, opt.seconds, opt.seconds / 2, opt.max_message_mb);
  std::vector<ServiceResult> results;
  for (const auto& s : services) {
    std::vector<Load> loads;
    if (s == "index") loads = IndexLoads(opt);
    if (s == "kvr") loads = KvrLoads(opt);
    if (s == "ctxcache") loads = CtxcacheLoads(opt, fx);
    if (s == "decoder") loads = DecoderLoads(opt);
    if (s == "router") loads = RouterLoads(opt);
    if (loads.empty()) {
      std::fprintf(stderr, "rpc_flood: unknown service '%s'\n", s.c_str());
      return 2;
    }
    for (Load& l : loads) {
      for (Case& c : l.cases) ShareMessages(&c);
    }
    std::fprintf(stderr, "rpc_flood: flooding %s\n", s.c_str());
    results.push_back(flooder.Run(s, loads, limits.at(s)));
    std::fflush(stdout);
    if (!sampler.aborted().empty() || g_stop.load()) break;
  }

  int failures = 0;
  std::printf("\n%-9s %-50s %7s  %s\n", "service", "phase: load", "p50/p99", "statuses");
  for (const auto& r : results) {
    for (const auto& [load, st] : r.by_load) {
      std::string codes;
      for (const auto& [code, n] : st.codes) codes += " " + code + "=" + std::to_string(n);
      if (st.late > 0) codes += " (late: " + std::to_string(st.late) + ")";
      char lat[64];
      std::snprintf(lat, sizeof(lat), "%.0f/%.0f ms", Percentile(st.ok_ms, 0.5),
                    Percentile(st.ok_ms, 0.99));
      std::printf("%-9s %-50s %s %s\n", r.service.c_str(), load.c_str(), lat, codes.c_str());
    }
  }
  std::printf("\n%-9s %14s %9s %10s %12s %13s %s\n", "service", "peak VmRSS", "limit", "VmHWM",
              "probes ok/failed", "probe max", "recovered after");
  for (const auto& r : results) {
    const int64_t hwm = ReadProcMemory(cluster.pid(r.service)).hwm_kb / 1024;
    std::printf("%-9s %10lld MiB %5lld MiB %6lld MiB %8lld/%-7lld %9.0f ms %s\n", r.service.c_str(),
                static_cast<long long>(r.peak_rss_mb), static_cast<long long>(r.limit_mb),
                static_cast<long long>(hwm), static_cast<long long>(r.probes_ok),
                static_cast<long long>(r.probes_failed), r.probe_max_ms,
                r.recover_s < 0 ? "never" : (std::to_string(r.recover_s) + " s").c_str());
    for (const auto& f : r.failures) {
      std::printf("  FAILURE: %s\n", f.c_str());
      ++failures;
    }
  }
  std::printf("rpc_flood: %d failure(s)\n", failures);
  if (failures == 0 && opt.work_dir.empty()) std::filesystem::remove_all(dir);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace ragserve::rpcfuzz

int main(int argc, char** argv) {
  using namespace ragserve::rpcfuzz;
  Options opt;
  CLI::App app{"Flood every ragserve service with maximal requests; check memory and statuses"};
  app.add_option("--services", opt.services, "Comma-separated services to flood, in order");
  app.add_option("--clients", opt.clients, "Concurrent callers of the flood phase");
  app.add_option("--burst", opt.burst, "Concurrent callers of the burst phase");
  app.add_option("--seconds", opt.seconds, "Flood phase per service (the burst gets half)");
  app.add_option("--max-message-mb", opt.max_message_mb,
                 "The services' --max-message-mb; requests are sized just under it");
  app.add_option("--passage-chars", opt.passage_chars, "Characters per passage");
  app.add_option("--docs", opt.docs, "Documents per Upsert / Ingest message (cap: 10000)");
  app.add_option("--deadline-ms", opt.call_deadline_ms, "Deadline of each flood call");
  app.add_option("--recover-seconds", opt.recover_seconds,
                 "A service must answer a simple request within this after its flood");
  app.add_option("--rss-limit-mb", opt.rss_limits,
                 "Peak VmRSS allowed, per service: index=2048,router=1024,... (default 2048)");
  app.add_option("--abort-rss-mb", opt.abort_rss_mb,
                 "Kill the cluster when a service passes this (protects a shared machine)");
  app.add_option("--service-flag", opt.service_flags,
                 "Extra flag of a service, e.g. router:--query-queue=8 (repeatable)");
  app.add_option("--model", opt.model, "Model directory (default: make the tiny model)");
  app.add_option("--work-dir", opt.work_dir, "Cluster data and logs (default: a temp dir)");
  CLI11_PARSE(app, argc, argv);
  google::protobuf::SetLogHandler(nullptr);
  signal(SIGPIPE, SIG_IGN);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, OnStopSignal);
  if (std::getenv("RAGSERVE_BIN_DIR") == nullptr) {
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").parent_path();
    setenv("RAGSERVE_BIN_DIR", self.c_str(), 1);
  }
  if (std::getenv("RAGSERVE_SOURCE_DIR") == nullptr)
    setenv("RAGSERVE_SOURCE_DIR", RPCFUZZ_SOURCE_DIR, 1);
  return Main(opt);
}
