// kvr_decode_bench: batch-1 decode tokens/s at a long prompt, in one run, for
//   full     the engine's contiguous KV cache (the baseline: exact attention over every token)
//   local    RetrievalAttention through an in-process KV retrieval store (RetrievalKvSource)
//   remote   the same through a ragserve-kvr on loopback (real binary, gRPC per layer and step)
// on a random-weight Llama (make-tiny-model's generator; sizes below). For each: prefill time
// (the retrieval rows include the index build), decode tokens/s, speed vs full, greedy token
// agreement with full (teacher-forced: every step compares the argmax for the same history),
// and keys scored per store Attend (index cost).
//
// Usage: kvr_decode_bench [--prompt-tokens N] [--decode T] [--top-k K] [--sinks S] [--window W]
//        [--layers L] [--hidden H] [--heads Q] [--kv-heads KV] [--index-kind K]
//        (run from the repository root; ragserve-kvr from $RAGSERVE_BIN_DIR or ./build/bin)
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "services/common/client.h"
#include "services/engine/model.h"
#include "services/engine/sampling.h"
#include "services/engine/tiny_model.h"
#include "services/kvr/kvr_client_grpc.h"
#include "services/kvr/retrieval_kv_source.h"
#include "tests/support/process.h"

namespace {

using namespace ragserve;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Row {
  std::string name;
  double prefill_s = 0, decode_s = 0, build_ms = 0;
  int agree = 0, steps = 0;
  double keys_per_attend = 0;
  std::vector<int32_t> argmax;  // per step
};

// Prefills `prompt` through kv, then decodes `reference.size()` steps feeding the reference
// tokens (the full-attention greedy ones; empty = greedy on this source's own output).
Row Run(engine::Model& m, engine::KvSource* kv, const std::vector<int32_t>& prompt, int steps,
        const std::vector<int32_t>& reference, const std::string& name) {
  Row r;
  r.name = name;
  std::vector<float> logits;
  auto t0 = Clock::now();
  Status st = m.Prefill(prompt, 0, kv, 512, &logits);
  r.prefill_s = Since(t0);
  if (!st.ok()) {
    std::fprintf(stderr, "%s prefill: %s\n", name.c_str(), st.ToString().c_str());
    std::exit(1);
  }
  t0 = Clock::now();
  for (int i = 0; i < steps; ++i) {
    const int32_t mine = engine::ArgMax(logits);
    r.argmax.push_back(mine);
    const int32_t tok = reference.empty() ? mine : reference[i];
    r.agree += tok == mine;
    ++r.steps;
    engine::SequenceStep step{std::span<const int32_t>(&tok, 1),
                              static_cast<int32_t>(prompt.size()) + i, kv};
    st = m.Forward(std::span<const engine::SequenceStep>(&step, 1), engine::LogitsMode::kLast,
                   &logits);
    if (!st.ok()) {
      std::fprintf(stderr, "%s decode: %s\n", name.c_str(), st.ToString().c_str());
      std::exit(1);
    }
  }
  r.decode_s = Since(t0);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t prompt_tokens = 16384;
  int decode = 64, top_k = 100, sinks = 128, window = 512, ef_search = 0;
  std::string index_kind = "attention_aware";
  engine::TinyModelOptions mo;
  mo.num_layers = 4;
  mo.hidden_size = 512;
  mo.num_heads = 8;
  mo.num_kv_heads = 2;
  mo.intermediate_size = 1536;
  mo.vocab_size = 4096;
  mo.seed = 7;
  CLI::App app{"kvr_decode_bench: decode tokens/s, full KV vs local vs remote KV retrieval"};
  app.add_option("--prompt-tokens", prompt_tokens, "Prompt length")->capture_default_str();
  app.add_option("--decode", decode, "Decode steps timed")->capture_default_str();
  app.add_option("--top-k", top_k, "Retrieved keys per query head and step")->capture_default_str();
  app.add_option("--ef-search", ef_search, "Graph beam (0 = index default)")->capture_default_str();
  app.add_option("--sinks", sinks, "Sink tokens")->capture_default_str();
  app.add_option("--window", window, "Window tokens")->capture_default_str();
  app.add_option("--index-kind", index_kind, "exact | hnsw | ivf | attention_aware")
      ->capture_default_str();
  app.add_option("--layers", mo.num_layers, "Model layers")->capture_default_str();
  app.add_option("--hidden", mo.hidden_size, "Hidden size")->capture_default_str();
  app.add_option("--heads", mo.num_heads, "Query heads")->capture_default_str();
  app.add_option("--kv-heads", mo.num_kv_heads, "KV heads")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  mo.max_position_embeddings = static_cast<int>(prompt_tokens + decode + 16);
  if (getenv("RAGSERVE_BIN_DIR") == nullptr) {
    setenv("RAGSERVE_BIN_DIR", std::filesystem::absolute("build/bin").c_str(), 1);
  }
  auto kind = kvr::ParseKeyIndexKind(index_kind);
  if (!kind.ok()) {
    std::fprintf(stderr, "%s\n", kind.status().ToString().c_str());
    return 2;
  }

  const std::string dir = testing::MakeTempDir("kvr-decode-bench");
  if (Status s = engine::WriteTinyModel(mo, {}, dir + "/model"); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  auto model = engine::Model::Load(dir + "/model");
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  engine::Model& m = **model;
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int32_t> dist(2, mo.vocab_size - 1);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_tokens));
  for (auto& t : prompt) t = dist(rng);

  // ragserve-kvr on loopback.
  testing::Process kvr_proc;
  const std::string ready = dir + "/kvr.ready";
  if (!kvr_proc.Start(
          testing::BinPath("ragserve-kvr"),
          {"--port", "0", "--metrics-port", "0", "--ready-file", ready, "--memory-limit-gib", "16"},
          dir + "/kvr.log")) {
    std::fprintf(stderr, "cannot start %s\n", testing::BinPath("ragserve-kvr").c_str());
    return 1;
  }
  int port = 0, mport = 0;
  if (!testing::WaitForReadyFile(ready, 60, &port, &mport)) {
    std::fprintf(stderr, "ragserve-kvr did not start:\n%s\n",
                 testing::ReadFileOrEmpty(dir + "/kvr.log").c_str());
    return 1;
  }

  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  double load[3] = {0, 0, 0};
  (void)getloadavg(load, 3);
  const engine::KvGeometry g = m.geometry();
  std::printf(
      "kvr_decode_bench on %s, %ld cores, load average %.2f; model: %d layers, hidden %d, %d "
      "heads / %d kv heads (head_dim %d), random weights; prompt %ld tokens, %d decode steps "
      "(batch 1), %s index, top_k %d, sinks %d, window %d\n\n",
      host, sysconf(_SC_NPROCESSORS_ONLN), load[0], g.num_layers, mo.hidden_size, g.num_heads,
      g.num_kv_heads, g.head_dim, static_cast<long>(prompt_tokens), decode, index_kind.c_str(),
      top_k, sinks, window);

  std::printf(
      "| attention | prefill s (incl. index build) | index build ms | decode tok/s | vs full | "
      "greedy top-1 agree | keys scored / Attend |\n|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);
  std::vector<Row> rows;
  // Rows are printed as they complete (a long run that fails later keeps what it measured).
  auto print = [&](const Row& r) {
    const double tps = decode / r.decode_s, full_tps = decode / rows[0].decode_s;
    std::printf("| %s | %.1f | %.0f | %.1f | %.2fx | %d/%d | %.0f |\n", r.name.c_str(), r.prefill_s,
                r.build_ms, tps, tps / full_tps, r.agree, r.steps, r.keys_per_attend);
    std::fflush(stdout);
  };
  {
    auto kv = m.NewKvCache();
    rows.push_back(Run(m, kv.get(), prompt, decode, {}, "full KV cache"));
    print(rows.back());
  }
  const std::vector<int32_t> reference = rows[0].argmax;
  kvr::RetrievalSourceOptions ro;
  ro.prefill_tokens = prompt_tokens;
  ro.attend.top_k = top_k;
  ro.attend.ef_search = ef_search;
  ro.sink_tokens = sinks;
  ro.window_tokens = window;
  ro.index_kind = static_cast<int>(*kind);
  {
    kvr::KvRetrievalOptions ko;
    ko.memory_limit_bytes = int64_t{16} << 30;
    kvr::KvRetrieval store(ko);
    kvr::LocalKvrClient client(&store);
    auto src = kvr::RetrievalKvSource::Create(&client, "bench", g, ro);
    if (!src.ok()) {
      std::fprintf(stderr, "%s\n", src.status().ToString().c_str());
      return 1;
    }
    Row r = Run(m, src->get(), prompt, decode, reference, "local retrieval");
    r.build_ms = (*src)->stats().build_ms;
    r.keys_per_attend = static_cast<double>((*src)->stats().keys_scored) /
                        std::max<int64_t>(1, (*src)->stats().decode_attends);
    if (!(*src)->status().ok()) {
      std::fprintf(stderr, "local: %s\n", (*src)->status().ToString().c_str());
      return 1;
    }
    rows.push_back(r);
    print(r);
  }
  {
    auto ch = MakeChannel("127.0.0.1:" + std::to_string(port));
    kvr::RemoteKvrOptions rko;
    rko.prefill_timeout_ms = int64_t{4} * 3600 * 1000;  // a long CPU prefill on a busy machine
    kvr::RemoteKvrClient client(*ch, rko);
    auto src = kvr::RetrievalKvSource::Create(&client, "bench", g, ro);
    if (!src.ok()) {
      std::fprintf(stderr, "%s\n", src.status().ToString().c_str());
      return 1;
    }
    Row r = Run(m, src->get(), prompt, decode, reference, "remote retrieval (gRPC)");
    r.build_ms = (*src)->stats().build_ms;
    r.keys_per_attend = static_cast<double>((*src)->stats().keys_scored) /
                        std::max<int64_t>(1, (*src)->stats().decode_attends);
    if (!(*src)->status().ok()) {
      std::fprintf(stderr, "remote: %s\n", (*src)->status().ToString().c_str());
      return 1;
    }
    rows.push_back(r);
    print(r);
  }
  kvr_proc.Signal(SIGTERM);
  int code = 0;
  kvr_proc.Wait(20, &code);

  double end_load[3] = {0, 0, 0};
  (void)getloadavg(end_load, 3);
  std::printf("\nload average at the end %.2f\n", end_load[0]);
  std::filesystem::remove_all(dir);
  return 0;
}
