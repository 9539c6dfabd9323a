// The decode worker's KV retrieval (RetrievalAttention) settings: flags, and the factory that
// gives a long-prompt sequence a RetrievalKvSource (services/kvr/retrieval_kv_source.h) over an
// in-process store (local) or a ragserve-kvr (remote).
//
// Only sequences without an APE context whose prompt (plus resumed tokens) has at least
// min_tokens tokens go through it; the others keep the worker's KV cache. A KV retrieval
// failure (store full, ragserve-kvr unreachable or past a deadline) fails that request with the
// store's status (e.g. UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), annotated
// "kv retrieval"; it never falls back silently (a fallback would need the whole prompt's KV
// again) and never stops the worker.
#pragma once

#include <cstdint>
#include <string>

#include "services/common/config.h"
#include "services/common/status.h"
#include "services/decoder/generator.h"

namespace ragserve::decoder {

struct KvRetrievalFlags {
  std::string mode = "off";                    // off | local | remote
  std::string addr;                            // remote: ragserve-kvr host:port
  std::string tls_ca;                          // remote: PEM CA bundle; TLS when set
  int64_t min_tokens = 2048;                   // shorter prompts keep the plain KV cache
  int top_k = 100;                             // keys retrieved per query head and step
  int ef_search = 0;                           // graph search beam; 0 = the index default
  int sink_tokens = 128;                       // static set: first S tokens ...
  int window_tokens = 512;                     // ... and last W tokens, attended exactly
  std::string index_kind = "attention_aware";  // exact | hnsw | ivf | attention_aware
  int64_t timeout_ms = 3000;                   // remote: deadline of each Append / Attend / Release
  int64_t prefill_timeout_ms = 3600000;        // remote: deadline of a whole prompt prefill stream
  int64_t ttl_s = 600;       // store-side idle release (safety net for a lost worker)
  int64_t memory_mb = 8192;  // local: K/V memory limit of the in-process store
  int build_threads = 1;     // key index builds off the decode loop; 0 = on the loop thread
};

// --kv-retrieval, --kvr-addr, --kv-retrieval-min-tokens, --kvr-top-k, ...
void AddKvRetrievalFlags(CLI::App& app, KvRetrievalFlags* flags);

// The generator's factory for `flags` (an empty function for mode off). InvalidArgument for
// bad flags (unknown mode or index kind, remote without an address, sizes < 1). Calls to a
// remote store carry the server's internal token when set and present its TLS client
// certificate (--tls-client-cert, mutual TLS) when set.
StatusOr<RetrievalSourceFactory> MakeKvRetrievalFactory(const KvRetrievalFlags& flags,
                                                        const ServerConfig& server);

}  // namespace ragserve::decoder
