// ragserve-index: vector collections (HNSW, IVF, flat) with documents in RocksDB.
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
  m.add_flags = [&data_dir](CLI::App& app) {
    app.add_option("--data-dir", data_dir,
                   "Collections folder (RocksDB + index files); created if missing, relative "
                   "paths are relative to the working directory");
  };
  m.setup = [&](ragserve::ServiceServer& server) -> ragserve::Status {
    RS_ASSIGN_OR_RETURN(store, ragserve::collection::CollectionStore::Open(data_dir));
    RS_LOG(info, "index: serving {} collections from {}", store->List().size(), data_dir);
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
