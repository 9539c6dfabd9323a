// ragserve-kvr: RetrievalAttention KV retrieval over a CPU-memory KV cache (KvRetrievalService).
#include <CLI/CLI.hpp>

#include "services/common/logging.h"
#include "services/common/server.h"
#include "services/kvr/kv_retrieval.h"
#include "services/kvr/service.h"

int main(int argc, char** argv) {
  double memory_limit_gib = 8.0;
  int64_t default_ttl_s = 3600;
  int64_t sinks = 128, window = 512;
  std::string index_kind = "attention_aware";
  int ef_search = 0;
  std::unique_ptr<ragserve::kvr::KvRetrieval> kvr;
  std::unique_ptr<ragserve::kvr::KvRetrievalGrpcService> service;
  ragserve::ServiceMain m;
  m.name = "kvr";
  m.description = "ragserve kvr: RetrievalAttention KV retrieval over a CPU-memory KV cache";
  m.default_port = 50053;
  m.default_metrics_port = 50053 - 50051 + 9091;
  m.add_flags = [&](CLI::App& app) {
    app.add_option("--memory-limit-gib", memory_limit_gib,
                   "K/V + key index memory of all sequences; appends and index builds beyond it "
                   "fail with RESOURCE_EXHAUSTED")
        ->check(CLI::PositiveNumber);
    app.add_option("--default-ttl-s", default_ttl_s,
                   "Release a sequence idle this long when it names no ttl (0 = never)")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--sink-tokens", sinks, "Default first tokens attended exactly")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--window-tokens", window, "Default last tokens attended exactly")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--index-kind", index_kind,
                   "Default key index: exact | hnsw | ivf | attention_aware")
        ->check(CLI::IsMember({"exact", "hnsw", "ivf", "attention_aware"}));
    app.add_option(
           "--ef-search", ef_search,
           "Default beam of the graph indexes when a request gives none (0 = index default)")
        ->check(CLI::NonNegativeNumber);
  };
  m.setup = [&](ragserve::ServiceServer& server) -> ragserve::Status {
    ragserve::kvr::KvRetrievalOptions o;
    o.memory_limit_bytes = static_cast<int64_t>(memory_limit_gib * (1 << 30));
    o.default_ttl_ms = default_ttl_s * 1000;
    o.defaults.sink_tokens = sinks;
    o.defaults.window_tokens = window;
    RS_ASSIGN_OR_RETURN(o.defaults.index_kind, ragserve::kvr::ParseKeyIndexKind(index_kind));
    o.defaults.search.ef_search = ef_search;
    kvr = std::make_unique<ragserve::kvr::KvRetrieval>(std::move(o));
    service = std::make_unique<ragserve::kvr::KvRetrievalGrpcService>(&server, kvr.get());
    server.AddService(service.get(), "ragserve.v1.KvRetrievalService");
    RS_LOG(info, "kvr: memory limit {:.1f} GiB, default index {}, sinks {}, window {}",
           memory_limit_gib, index_kind, sinks, window);
    return ragserve::OkStatus();
  };
  m.teardown = [&] {
    service.reset();
    kvr.reset();
  };
  return ragserve::RunServiceMain(m, argc, argv);
}
