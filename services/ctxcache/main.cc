// ragserve-ctxcache: APE parallel encoding and the passage KV cache (RAM + RocksDB)
#include <CLI/CLI.hpp>
#include <memory>

#include "services/common/server.h"
#include "services/ctxcache/service.h"

int main(int argc, char** argv) {
  ragserve::ctxcache::ContextCacheOptions opts;
  int64_t ram_mb = opts.ram_bytes >> 20;
  std::unique_ptr<ragserve::ctxcache::ContextCacheService> service;
  ragserve::ServiceMain m;
  m.name = "ctxcache";
  m.description = "ragserve context cache: APE parallel encoding, passage KV in RAM and RocksDB";
  m.default_port = 50054;
  m.default_metrics_port = 9094;
  int64_t disk_write_buffer_mb = opts.disk_write_buffer_bytes >> 20;
  m.add_flags = [&opts, &ram_mb, &disk_write_buffer_mb](CLI::App& app) {
    app.add_option("--model", opts.model_dir,
                   "HF-layout model directory or .gguf file (needed for Encode)");
    app.add_option("--weights-dtype", opts.weights_dtype,
                   "Weight matrices after load (as the decoders load them, or the KV "
                   "fingerprints differ): auto | f32 | f16 | bf16 | q8_0 | q4_0 | q4_k | q6_k")
        ->check(CLI::IsMember({"", "auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q6_k"},
                              CLI::ignore_case));
    app.add_option("--data-dir", opts.data_dir, "RocksDB directory of the disk tier")
        ->capture_default_str();
    app.add_option("--disk-write-buffer-mb", disk_write_buffer_mb,
                   "Disk tier's RocksDB memtable (RAM): encoded blocks reach the disk each time "
                   "it fills")
        ->capture_default_str()
        ->check(CLI::Range(1, 1024));
    app.add_option("--ram-mb", ram_mb, "RAM tier budget")
        ->capture_default_str()
        ->check(CLI::Range(int64_t{0}, int64_t{1} << 30));
    app.add_option("--dtype", opts.dtype, "Stored KV dtype: f32 | f16 | bf16")
        ->capture_default_str()
        ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  };
  m.setup = [&opts, &service, &ram_mb,
             &disk_write_buffer_mb](ragserve::ServiceServer& server) -> ragserve::Status {
    opts.ram_bytes = ram_mb << 20;
    opts.disk_write_buffer_bytes = disk_write_buffer_mb << 20;
    RS_ASSIGN_OR_RETURN(service, ragserve::ctxcache::ContextCacheService::Create(&server, opts));
    server.AddService(service.get(), "ragserve.v1.ContextCacheService");
    return ragserve::OkStatus();
  };
  m.teardown = [&service] {
    if (service) service->Flush();
  };
  return ragserve::RunServiceMain(m, argc, argv);
}
