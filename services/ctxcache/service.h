// The gRPC ContextCacheService: Encode (APE-encode passages into the cache, return their keys),
// Get (stream a cached entry's KV in chunks under the message limit), Has, Evict, Stats.
// Without a model the service still serves cached entries; Encode then fails clearly.
#pragma once

#include <memory>
#include <string>

#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "services/common/server.h"
#include "services/ctxcache/ape_encoder.h"

namespace ragserve::ctxcache {

struct ContextCacheOptions {
  std::string model_dir;  // HF-layout model; empty: serve cached entries only
  // --weights-dtype (ape_encoder.h LoadModelDir): the decoders' value, or their KV is not shared.
  std::string weights_dtype;
  std::string data_dir = "ctxcache-data";  // RocksDB disk tier
  int64_t ram_bytes = int64_t{1} << 30;    // RAM tier
  // The disk tier's RocksDB memtable: blocks reach the disk each time it fills.
  int64_t disk_write_buffer_bytes = int64_t{8} << 20;
  std::string dtype = "f32";               // stored dtype: f32 | f16 | bf16
  std::string prefix;                      // APE shared prefix (default: the RAG instruction)
  int64_t chunk_bytes = int64_t{1} << 20;  // Get: bytes of KV per message
};

class ContextCacheService final : public v1::ContextCacheService::CallbackService {
 public:
  static StatusOr<std::unique_ptr<ContextCacheService>> Create(ServiceServer* server,
                                                               ContextCacheOptions opts);

  grpc::ServerUnaryReactor* Encode(grpc::CallbackServerContext* ctx, const v1::EncodeRequest* req,
                                   v1::EncodeResponse* resp) override;
  grpc::ServerWriteReactor<v1::GetResponse>* Get(grpc::CallbackServerContext* ctx,
                                                 const v1::GetRequest* req) override;
  grpc::ServerUnaryReactor* Has(grpc::CallbackServerContext* ctx, const v1::HasRequest* req,
                                v1::HasResponse* resp) override;
  grpc::ServerUnaryReactor* Evict(grpc::CallbackServerContext* ctx, const v1::EvictRequest* req,
                                  v1::EvictResponse* resp) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const v1::CtxStatsRequest* req,
                                  v1::CtxStatsResponse* resp) override;
  // Flushes pending disk writes (call on shutdown).
  void Flush();

 private:
  ContextCacheService(ServiceServer* server, ContextCacheOptions opts)
      : server_(server), opts_(std::move(opts)) {}
  Status CheckModel(const v1::ModelFingerprint& fp) const;

  ServiceServer* server_;
  ContextCacheOptions opts_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<BlockCache> cache_;
  std::unique_ptr<ApeEncoder> ape_;
};

}  // namespace ragserve::ctxcache
