// The gRPC DecoderService of a decode worker: Generate (server-streaming tokens), GetLoad, Cancel.
// Generation runs on the Generator's loop thread; each Generate call gets a reactor that writes
// the token deltas as they come (coalescing deltas that pile up behind a slow client).
#pragma once

#include <deque>
#include <memory>
#include <string>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "services/common/mutex.h"
#include "services/common/server.h"
#include "services/ctxcache/ape_encoder.h"
#include "services/ctxcache/remote_grpc.h"
#include "services/decoder/chat_prompt.h"
#include "services/decoder/generator.h"
#include "services/decoder/serving_metrics.h"
#include "services/engine/chat_template.h"
#include "services/engine/model.h"
#include "services/engine/tokenizer.h"

namespace ragserve::decoder {

// Request limits (INVALID_ARGUMENT beyond them): stop strings are matched against every token's
// text on the generator's single loop thread, and every passage is encoded and held in memory.
inline constexpr int kMaxStopStrings = 16;
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr int kMaxPassages = 64;

struct DecoderOptions {
  std::string model_dir;  // HF-layout model directory; empty: no model (Generate fails clearly)
  std::string worker_id;  // reported in stats and load; default host:port
  // The model_name label of the serving metrics (serving_metrics.h); default: the last path
  // component of model_dir.
  std::string served_model_name;
  // Backend of the model: "cpu" (FastOps) or "cuda" (kernels/cuda/ops.h, device 0: weights
  // uploaded once, plain sequences' KV in device pages of generator.device_kv_dtype).
  std::string device = "cpu";
  // --weights-dtype: the weight matrices' dtype after load (engine::WeightsLoadOptions): "" keeps
  // the stored dtypes (a quantized .gguf stays quantized); f32 | f16 | bf16 | q8_0 | q4_0 | q4_k |
  // q6_k converts, dequantizes or quantizes at load.
  std::string weights_dtype;
  GeneratorOptions generator;
  // Passages: "ape" joins parallel-encoded, cached passage KV (APE); "sequential" prefills the
  // whole prompt. A request may ask for sequential (GenerateRequest.sequential_context).
  std::string context_mode = "ape";
  float ape_temperature = ctxcache::ApeSettings{}.temperature;  // APE defaults (ape_encoder.h)
  float ape_scaling = ctxcache::ApeSettings{}.scaling;
  int64_t passage_cache_bytes = int64_t{1} << 30;  // RAM tier of this worker's passage cache
  std::string passage_cache_dir;                   // RocksDB tier (optional)
  std::string passage_dtype = "f32";               // stored dtype: f32 | f16 | bf16
  // ContextCacheService host:port (optional): a passage missing from this worker's passage cache
  // is fetched from there (e.g. pre-encoded on ingest) before it is computed here. A miss or a
  // failure of the service means local compute; it never fails a request. (A miss is computed
  // here rather than by asking the service to Encode it: this worker has the model and needs the
  // KV now, while a remote encode adds a round trip, the transfer back and the service's queue;
  // the service is filled ahead of time by the router's Ingest pre_encode.) Keys agree when the
  // service runs the same model with --dtype equal to passage_dtype (the prefix and template
  // are shared code). Calls carry this server's auth token.
  std::string ctxcache_addr;
  int ctxcache_timeout_ms = 2000;  // deadline of one fetch
  std::string ctxcache_tls_ca;     // PEM CA: TLS to the context cache when set
  // Chat requests (GenerateRequest.messages) on a model with a chat template: where passages go.
  RagChatOptions rag_chat;
  // Ignore the model's chat template: requests get the RAG prompt (rag_template.h), and APE
  // (which only that prompt can use) stays available.
  bool no_chat_template = false;
};

class DecoderService final : public v1::DecoderService::CallbackService {
 public:
  // Loads the model and tokenizer (when model_dir is set) and starts the generator loop.
  static StatusOr<std::unique_ptr<DecoderService>> Create(ServiceServer* server,
                                                          DecoderOptions opts);
  ~DecoderService() override;

  grpc::ServerWriteReactor<v1::GenerateEvent>* Generate(grpc::CallbackServerContext* ctx,
                                                        const v1::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* ctx, const v1::LoadRequest* req,
                                    v1::LoadReport* resp) override;
  grpc::ServerUnaryReactor* Cancel(grpc::CallbackServerContext* ctx, const v1::CancelRequest* req,
                                   v1::CancelResponse* resp) override;

  // Stops generation: unfinished requests end with UNAVAILABLE (call before the server drains).
  void Shutdown();

  // Turns a request into a generation job (prompt template, tokenization, sampling, stops).
  // Exposed for tests. Callbacks are left empty.
  StatusOr<std::unique_ptr<GenerateJob>> MakeJob(const v1::GenerateRequest& req);

  Generator* generator() { return generator_.get(); }
  ServiceServer* server() { return server_; }
  // --worker-id, or the server's bound host:port.
  std::string worker_id() const;
  // --served-model-name, or the model directory's name.
  std::string model_name() const;
  // Null without a model.
  ServingMetrics* serving_metrics() { return serving_metrics_.get(); }

 private:
  DecoderService(ServiceServer* server, DecoderOptions opts);
  // The steps of MakeJob: the request's sizes and exclusive fields, the APE context of the
  // request's passages (encoded or from the cache), the prompt tokens without APE
  // (prompt_override, or the sequential RAG prompt for `question`), a chat conversation rendered
  // with the model's chat template, and the sampling and stop settings (InvalidArgument for bad
  // values).
  Status CheckRequest(const v1::GenerateRequest& req) const;
  StatusOr<ApeContext> EncodeApeContext(const v1::GenerateRequest& req);
  StatusOr<std::vector<int32_t>> SequentialPromptTokens(const v1::GenerateRequest& req,
                                                        const std::string& question) const;
  StatusOr<std::vector<int32_t>> ChatPromptTokens(const v1::GenerateRequest& req) const;
  Status SetSamplingAndStops(const v1::SamplingParams& sp, int max_tokens, GenerateJob* job) const;

  ServiceServer* server_;
  DecoderOptions opts_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::shared_ptr<const engine::ChatTemplate> chat_template_;  // null: the model has none
  std::unique_ptr<Generator> generator_;
  std::unique_ptr<ServingMetrics> serving_metrics_;  // reads generator_: declared after it
  std::unique_ptr<ctxcache::BlockCache> passage_cache_;
  std::unique_ptr<ctxcache::ApeEncoder> ape_;
  std::unique_ptr<ctxcache::RemoteBlockCache> remote_cache_;  // --ctxcache-addr
  // ragserve_decoder_passages_total{source}, indexed by ctxcache::CacheSource.
  Counter* passages_by_source_[5] = {};
  // Content hashes (hex) of passages recently encoded or served here, most recent last; a
  // routing hint for cache_aware routers (LoadReport.cached_passage_keys).
  Mutex recent_mu_;
  std::deque<std::string> recent_passages_ ABSL_GUARDED_BY(recent_mu_);
  void NoteRecent(const std::string& passage) ABSL_LOCKS_EXCLUDED(recent_mu_);
  friend class GenerateReactorAccess;
};

}  // namespace ragserve::decoder
