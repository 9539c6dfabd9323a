// ragserve-index: vector collections (HNSW, IVF, flat) with documents in RocksDB.
#include <CLI/CLI.hpp>

#include "services/common/logging.h"
#include "services/common/server.h"
#include "services/index/collection.h"
#include "services/index/service.h"

int main(int argc, char** argv) {
  std::string data_dir = "index-data";
  std::unique_ptr<ragserve::collection::CollectionStore> store;
  std::unique_ptr<ragserve::collection::IndexGrpcService> service;
  ragserve::ServiceMain m;
  m.name = "index";
  m.description = "ragserve index: vector collections (HNSW, IVF, flat) with documents in RocksDB";
  m.default_port = 50052;
  m.default_metrics_port = 50052 - 50051 + 9091;
  ragserve::collection::StoreLimits limits;
  int64_t embed_batch_mb = limits.max_embed_batch_bytes >> 20;
  int64_t memory_limit_mb = limits.max_memory_bytes >> 20;
  m.add_flags = [&data_dir, &limits, &embed_batch_mb, &memory_limit_mb](CLI::App& app) {
    app.add_option("--data-dir", data_dir,
                   "Collections folder (RocksDB + index files); created if missing, relative "
                   "paths are relative to the working directory");
    app.add_option("--max-upsert-docs", limits.max_docs_per_upsert,
                   "Documents per Upsert message; beyond: INVALID_ARGUMENT")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
    app.add_option("--max-embed-batch-mb", embed_batch_mb,
                   "MiB of vectors (texts x dim x 4) one Upsert message or Search may embed; "
                   "beyond: RESOURCE_EXHAUSTED")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
    app.add_option("--memory-limit-mb", memory_limit_mb,
                   "MiB the collections may hold in memory, all together (vector and BM25 "
                   "indexes, per-document maps; estimated from their sizes); an Upsert message "
                   "that would pass it: RESOURCE_EXHAUSTED, nothing of it written")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  };
  m.setup = [&](ragserve::ServiceServer& server) -> ragserve::Status {
    limits.max_embed_batch_bytes = embed_batch_mb << 20;
    limits.max_memory_bytes = memory_limit_mb << 20;
    limits.max_response_bytes = int64_t{server.config().max_message_mb} << 20;
    RS_ASSIGN_OR_RETURN(store, ragserve::collection::CollectionStore::Open(data_dir, limits));
    RS_LOG(info, "index: serving {} collections from {}, ~{} MiB of {} MiB in memory",
           store->List().size(), data_dir, store->MemoryBytes() >> 20, memory_limit_mb);
    service = std::make_unique<ragserve::collection::IndexGrpcService>(&server, store.get());
    server.AddService(service.get(), "ragserve.v1.IndexService");
    return ragserve::OkStatus();
  };
  // After the server stopped: save the index files (the documents are already durable).
  m.teardown = [&] {
    service.reset();
    store.reset();
  };
  return ragserve::RunServiceMain(m, argc, argv);
}
