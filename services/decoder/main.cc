// ragserve-decoder: a decode worker (model runtime, continuous batching)
#include <CLI/CLI.hpp>
#include <memory>

#include "services/common/server.h"
#include "services/decoder/decoder_service.h"
#include "services/decoder/kv_retrieval_setup.h"

int main(int argc, char** argv) {
  ragserve::decoder::DecoderOptions opts;
  int64_t kv_budget_mb = opts.generator.kv_budget_bytes >> 20;
  int64_t passage_cache_mb = opts.passage_cache_bytes >> 20;
  ragserve::decoder::KvRetrievalFlags kvr_flags;
  std::string device_kv_dtype = "f16";
  std::unique_ptr<ragserve::decoder::DecoderService> service;
  ragserve::ServiceMain m;
  m.name = "decoder";
  m.description = "ragserve decode worker: streams generated tokens with continuous batching";
  m.default_port = 50055;
  m.default_metrics_port = 9095;
  m.add_flags = [&opts, &kv_budget_mb, &passage_cache_mb, &kvr_flags,
                 &device_kv_dtype](CLI::App& app) {
    ragserve::decoder::AddKvRetrievalFlags(app, &kvr_flags);
    app.add_option("--model", opts.model_dir,
                   "HF-layout model directory (config.json, "
                   "model.safetensors, tokenizer.json) or a .gguf file");
    app.add_option("--weights-dtype", opts.weights_dtype,
                   "Weight matrices after load: auto (as stored; a quantized .gguf stays "
                   "quantized) | f32 | f16 | bf16 | q8_0 | q4_0 | q4_k | q6_k (quantized at load "
                   "from an HF checkpoint; CPU only)")
        ->check(CLI::IsMember({"", "auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"},
                              CLI::ignore_case));
    app.add_option("--worker-id", opts.worker_id, "Name in stats and load reports (host:port)");
    app.add_option("--served-model-name", opts.served_model_name,
                   "model_name label of the serving metrics (default: the --model folder's name)");
    app.add_option("--device", opts.device,
                   "Model backend: cpu | cuda (GPU 0; weights uploaded once, KV in GPU pages)")
        ->capture_default_str()
        ->check(CLI::IsMember({"cpu", "cuda"}));
    app.add_option("--device-kv-dtype", device_kv_dtype,
                   "--device cuda: KV stored in GPU pages as f32 | f16 | bf16")
        ->capture_default_str()
        ->check(CLI::IsMember({"f32", "f16", "bf16"}));
    app.add_option("--max-active", opts.generator.max_active,
                   "Sequences decoded together in one batch")
        ->capture_default_str()
        ->check(CLI::Range(1, 4096));
    app.add_option("--max-queue", opts.generator.max_queue,
                   "Requests waiting for a batch slot before RESOURCE_EXHAUSTED")
        ->capture_default_str()
        ->check(CLI::Range(0, 1 << 20));
    app.add_option("--prefill-chunk", opts.generator.prefill_chunk,
                   "Prompt tokens prefilled per step, interleaved with decode")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 20));
    app.add_option("--context-mode", opts.context_mode,
                   "Passages: ape (parallel-encoded, cached KV) | sequential (prefill all)")
        ->capture_default_str()
        ->check(CLI::IsMember({"ape", "sequential"}));
    app.add_option("--rag-chat-role", opts.rag_chat.role,
                   "Chat requests on a model with a chat template: passages go in a system "
                   "message (system) or before the last user message (user)")
        ->capture_default_str()
        ->check(CLI::IsMember({"system", "user"}));
    app.add_option("--rag-chat-instruction", opts.rag_chat.instruction,
                   "Text before the passages in a chat conversation (default: the RAG "
                   "instruction of services/common/rag_template.h)");
    app.add_flag("--no-chat-template", opts.no_chat_template,
                 "Ignore the model's chat template: requests get the RAG prompt (and APE)");
    app.add_option("--ape-temperature", opts.ape_temperature,
                   "APE attention temperature T on passage tokens")
        ->capture_default_str()
        ->check(CLI::Range(0.05, 4.0));
    app.add_option("--ape-scaling", opts.ape_scaling, "APE scaling factor S on passage attention")
        ->capture_default_str()
        ->check(CLI::Range(0.05, 4.0));
    app.add_option("--passage-cache-mb", passage_cache_mb, "RAM for cached passage KV")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
    app.add_option("--passage-cache-dir", opts.passage_cache_dir,
                   "RocksDB directory for passage KV that survives restarts (optional)");
    app.add_option("--passage-dtype", opts.passage_dtype, "Stored passage KV: f32 | f16 | bf16")
        ->capture_default_str()
        ->check(CLI::IsMember({"f32", "f16", "bf16"}));
    app.add_option("--ctxcache-addr", opts.ctxcache_addr,
                   "ContextCacheService host:port: fetch passage KV missing here from it "
                   "(misses and failures fall back to local compute)");
    app.add_option("--ctxcache-timeout-ms", opts.ctxcache_timeout_ms,
                   "Deadline of one passage fetch from the context cache")
        ->capture_default_str()
        ->check(CLI::Range(1, 600000));
    app.add_option("--ctxcache-tls-ca", opts.ctxcache_tls_ca,
                   "PEM CA bundle: TLS to the context cache when set");
    app.add_option("--kv-budget-mb", kv_budget_mb, "KV cache memory for all active sequences")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  };
  m.setup = [&opts, &service, &kv_budget_mb, &passage_cache_mb, &kvr_flags,
             &device_kv_dtype](ragserve::ServiceServer& server) -> ragserve::Status {
    opts.generator.device_kv_dtype = device_kv_dtype == "f32"    ? ragserve::kernels::DType::kF32
                                     : device_kv_dtype == "bf16" ? ragserve::kernels::DType::kBF16
                                                                 : ragserve::kernels::DType::kF16;
    RS_ASSIGN_OR_RETURN(opts.generator.kv_retrieval,
                        ragserve::decoder::MakeKvRetrievalFactory(kvr_flags, server.config()));
    opts.generator.kv_budget_bytes = kv_budget_mb << 20;
    opts.passage_cache_bytes = passage_cache_mb << 20;
    RS_ASSIGN_OR_RETURN(service, ragserve::decoder::DecoderService::Create(&server, opts));
    server.AddService(service.get(), "ragserve.v1.DecoderService");
    return ragserve::OkStatus();
  };
  m.teardown = [&service] {
    if (service) service->Shutdown();
  };
  return ragserve::RunServiceMain(m, argc, argv);
}
