#include "services/decoder/kv_retrieval_setup.h"

#include <unistd.h>
#include <CLI/CLI.hpp>

#include <atomic>
#include <memory>
#include <utility>

#include "services/common/client.h"
#include "services/common/executor.h"
#include "services/common/logging.h"
#include "services/kvr/device_retrieval_source.h"
#include "services/kvr/kvr_client_grpc.h"

namespace ragserve::decoder {

void AddKvRetrievalFlags(CLI::App& app, KvRetrievalFlags* f) {
  app.add_option("--kv-retrieval", f->mode,
                 "RetrievalAttention for long prompts: off | local (in-process store) | remote "
                 "(ragserve-kvr at --kvr-addr)")
      ->capture_default_str()
      ->check(CLI::IsMember({"off", "local", "remote"}));
  app.add_option("--kvr-addr", f->addr, "ragserve-kvr host:port (--kv-retrieval remote)");
  app.add_option("--kvr-tls-ca", f->tls_ca, "PEM CA bundle: TLS to ragserve-kvr when set");
  app.add_option("--kv-retrieval-min-tokens", f->min_tokens,
                 "Only prompts of at least this many tokens use KV retrieval")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  app.add_option("--kvr-top-k", f->top_k, "Keys retrieved per query head and decode step")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--kvr-ef-search", f->ef_search,
                 "Beam of the graph key indexes (0 = the index default)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 20));
  app.add_option("--kvr-sink-tokens", f->sink_tokens, "First tokens always attended exactly")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  app.add_option("--kvr-window-tokens", f->window_tokens, "Last tokens always attended exactly")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 24));
  app.add_option("--kvr-index-kind", f->index_kind,
                 "Key index: exact | hnsw | ivf | attention_aware")
      ->capture_default_str()
      ->check(CLI::IsMember({"exact", "hnsw", "ivf", "attention_aware"}));
  app.add_option("--kvr-timeout-ms", f->timeout_ms,
                 "Deadline of each Append / Attend / Release call to ragserve-kvr (made per decode "
                 "step on the loop thread: past it the request fails with UNAVAILABLE)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{3600000}));
  app.add_option("--kvr-prefill-timeout-ms", f->prefill_timeout_ms,
                 "Deadline of the stream that carries a prompt's K/V to ragserve-kvr (bounds the "
                 "whole prefill)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{86400000}));
  app.add_option("--kvr-ttl-s", f->ttl_s,
                 "The store releases a sequence idle this long (a lost worker's leftovers)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  app.add_option("--kvr-build-threads", f->build_threads,
                 "Threads that build prompts' key indexes off the decode loop (a sequence decodes "
                 "with exact attention until its index is built); 0 = build on the loop thread")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  app.add_option("--kvr-memory-mb", f->memory_mb,
                 "K/V memory of the in-process store (--kv-retrieval local)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
}

StatusOr<RetrievalSourceFactory> MakeKvRetrievalFactory(const KvRetrievalFlags& f,
                                                        const ServerConfig& server) {
  if (f.mode == "off") return RetrievalSourceFactory{};
  RS_CHECK_ARG(f.mode == "local" || f.mode == "remote", "--kv-retrieval must be off, local or ",
               "remote, got '", f.mode, "'");
  RS_ASSIGN_OR_RETURN(const kvr::KeyIndexKind kind, kvr::ParseKeyIndexKind(f.index_kind));
  RS_CHECK_ARG(f.min_tokens >= 1, "--kv-retrieval-min-tokens must be >= 1, got ", f.min_tokens);
  RS_CHECK_ARG(f.top_k >= 1, "--kvr-top-k must be >= 1, got ", f.top_k);
  RS_CHECK_ARG(f.ef_search >= 0, "--kvr-ef-search must be >= 0, got ", f.ef_search);
  // 0 on the wire means "the server's default", so both must be explicit.
  RS_CHECK_ARG(f.sink_tokens >= 1 && f.window_tokens >= 1,
               "--kvr-sink-tokens and --kvr-window-tokens must be >= 1");
  kvr::RetrievalSourceOptions ro;
  ro.attend.top_k = f.top_k;
  ro.attend.ef_search = f.ef_search;
  ro.sink_tokens = f.sink_tokens;
  ro.window_tokens = f.window_tokens;
  ro.index_kind = static_cast<int>(kind);
  ro.ttl_ms = f.ttl_s * 1000;

  // Owned by the factory. Members are destroyed in reverse order: the build pool is joined
  // (a running build finishes; an abandoned sequence is released) before the client and the
  // store go.
  struct Backend {
    std::shared_ptr<kvr::KvRetrieval> store;  // local mode
    std::shared_ptr<kvr::KvrClient> client;
    std::unique_ptr<BoundedExecutor> builds;  // null: builds run on the loop thread
  };
  auto backend = std::make_shared<Backend>();
  std::shared_ptr<kvr::KvRetrieval>& store = backend->store;
  std::shared_ptr<kvr::KvrClient>& client = backend->client;
  RS_CHECK_ARG(f.build_threads >= 0, "--kvr-build-threads must be >= 0, got ", f.build_threads);
  if (f.build_threads > 0) {
    // Every active sequence may wait for a build; a refused task builds inline.
    backend->builds = std::make_unique<BoundedExecutor>(f.build_threads, /*queue_capacity=*/256);
    ro.build_executor = backend->builds.get();
  }
  if (f.mode == "local") {
    RS_CHECK_ARG(f.memory_mb >= 1, "--kvr-memory-mb must be >= 1, got ", f.memory_mb);
    kvr::KvRetrievalOptions ko;
    ko.memory_limit_bytes = f.memory_mb << 20;
    ko.defaults.sink_tokens = f.sink_tokens;
    ko.defaults.window_tokens = f.window_tokens;
    ko.defaults.index_kind = kind;
    store = std::make_shared<kvr::KvRetrieval>(std::move(ko));
    client = std::make_shared<kvr::LocalKvrClient>(store.get());
    RS_LOG(info,
           "decoder: KV retrieval in-process for prompts >= {} tokens ({} index, top_k {}, "
           "sinks {}, window {})",
           f.min_tokens, f.index_kind, f.top_k, f.sink_tokens, f.window_tokens);
  } else {
    RS_CHECK_ARG(!f.addr.empty(), "--kv-retrieval remote needs --kvr-addr host:port");
    RS_CHECK_ARG(f.timeout_ms >= 1 && f.prefill_timeout_ms >= 1, "KVR timeouts must be >= 1 ms");
    ChannelOptions co;
    co.tls_ca = f.tls_ca;
    co.tls_client_cert = server.tls_client_cert;
    co.tls_client_key = server.tls_client_key;
    RS_ASSIGN_OR_RETURN(auto channel, MakeChannel(f.addr, co));
    kvr::RemoteKvrOptions rko;
    rko.call_timeout_ms = f.timeout_ms;
    rko.prefill_timeout_ms = f.prefill_timeout_ms;
    rko.token = server.internal_token;
    client = std::make_shared<kvr::RemoteKvrClient>(std::move(channel), std::move(rko));
    RS_LOG(info,
           "decoder: KV retrieval at {} for prompts >= {} tokens ({} index, top_k {}, "
           "sinks {}, window {})",
           f.addr, f.min_tokens, f.index_kind, f.top_k, f.sink_tokens, f.window_tokens);
  }
  // Sequence ids must be unique in a store that several workers may share.
  char host[256] = {0};
  (void)gethostname(host, sizeof(host) - 1);
  const std::string prefix = StrCat(host, "-", getpid(), "-");
  auto counter = std::make_shared<std::atomic<uint64_t>>(0);
  const int64_t min_tokens = f.min_tokens;
  return RetrievalSourceFactory(
      [backend, ro, prefix, counter, min_tokens](
          const engine::KvGeometry& g, const std::string& request_id, int64_t prefill_tokens,
          const DeviceKvTarget* device) -> StatusOr<std::unique_ptr<kvr::RetrievalSource>> {
        if (prefill_tokens < min_tokens) return std::unique_ptr<kvr::RetrievalSource>();
        kvr::RetrievalSourceOptions o = ro;
        o.prefill_tokens = prefill_tokens;
        const std::string id = StrCat(prefix, counter->fetch_add(1), "/", request_id);
        if (device != nullptr) {
          // GPU model: sinks + window in GPU pages, the middle in the store (hybrid layout).
          RS_ASSIGN_OR_RETURN(auto src,
                              kvr::DeviceRetrievalKvSource::Create(backend->client.get(), id, g, o,
                                                                   device->pool, device->ops));
          return std::unique_ptr<kvr::RetrievalSource>(std::move(src));
        }
        RS_ASSIGN_OR_RETURN(auto src,
                            kvr::RetrievalKvSource::Create(backend->client.get(), id, g, o));
        return std::unique_ptr<kvr::RetrievalSource>(std::move(src));
      });
}

}  // namespace ragserve::decoder
