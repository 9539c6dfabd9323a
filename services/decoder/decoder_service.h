// The gRPC DecoderService of a decode worker: Generate (server-streaming tokens), GetLoad, Cancel.
// Generation runs on the Generator's loop thread; each Generate call gets a reactor that writes
// the token deltas as they come (coalescing deltas that pile up behind a slow client).
#pragma once

#include <memory>
#include <string>

#include "ragserve/v1/decoder.grpc.pb.h"
#include "services/common/server.h"
#include "services/decoder/generator.h"
#include "services/engine/model.h"
#include "services/engine/tokenizer.h"

namespace ragserve::decoder {

struct DecoderOptions {
  std::string model_dir;  // HF-layout model directory; empty: no model (Generate fails clearly)
  std::string worker_id;  // reported in stats and load; default host:port
  GeneratorOptions generator;
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
  StatusOr<std::unique_ptr<GenerateJob>> MakeJob(const v1::GenerateRequest& req) const;

  Generator* generator() { return generator_.get(); }
  // --worker-id, or the server's bound host:port.
  std::string worker_id() const;

 private:
  DecoderService(ServiceServer* server, DecoderOptions opts);

  ServiceServer* server_;
  DecoderOptions opts_;
  std::unique_ptr<engine::Model> model_;
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  std::unique_ptr<Generator> generator_;
};

}  // namespace ragserve::decoder
