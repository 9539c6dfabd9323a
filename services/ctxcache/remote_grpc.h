// A client of a remote ContextCacheService for decoders: fetches a cached entry's KV by key (the
// Get stream reassembled into a StoredBlock) so a passage pre-encoded there (e.g. by the router's
// Ingest pre_encode) is not recomputed. ApeEncoder::SetRemote plugs it in behind the local tiers
// (RemoteExpect is declared there).
//
// Failure policy: a fetch never blocks long and never fails a request by itself. Each call has a
// deadline (timeout_ms); after a transport error (service down, deadline) the client skips the
// service for retry_after_ms (calls answer Unavailable at once), then tries again.
// Metrics: ragserve_ctxcache_remote_fetches_total{result="hit"|"miss"|"error"|"skipped"} and
// ragserve_ctxcache_remote_fetch_seconds (hits and misses).
// Thread-safety: Fetch may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "ragserve/v1/ctxcache.grpc.pb.h"
#include "services/common/client.h"
#include "services/common/metrics.h"
#include "services/ctxcache/ape_encoder.h"

namespace ragserve::ctxcache {

struct RemoteBlockCacheOptions {
  std::string address;                 // host:port of the ContextCacheService
  ChannelOptions channel;              // TLS etc.
  std::string token;                   // bearer token sent with every call (empty: none)
  int timeout_ms = 2000;               // deadline of one fetch
  int retry_after_ms = 2000;           // after a transport error, skip the service this long
  MetricsRegistry* metrics = nullptr;  // nullptr = MetricsRegistry::Default()
};

class RemoteBlockCache {
 public:
  // InvalidArgument for an empty address or bad timeouts; the channel connects lazily.
  static StatusOr<std::unique_ptr<RemoteBlockCache>> Create(RemoteBlockCacheOptions opts);

  // The entry `key`: a valid block with the service's stored dtype, positions from the header,
  // token ids when the service has them, and expect.fingerprint. NotFound when the service does
  // not hold it; Unavailable (or DeadlineExceeded) when the call failed or was skipped after a
  // recent failure; DataLoss for a malformed stream (chunk out of order or bounds, wrong sizes);
  // FailedPrecondition when the entry's geometry is not `expect`.
  StatusOr<StoredBlock> Fetch(const KeyId& key, const RemoteExpect& expect);

  const std::string& address() const { return opts_.address; }

 private:
  explicit RemoteBlockCache(RemoteBlockCacheOptions opts);
  StatusOr<StoredBlock> Read(const KeyId& key, const RemoteExpect& expect);

  RemoteBlockCacheOptions opts_;
  std::unique_ptr<v1::ContextCacheService::Stub> stub_;
  std::atomic<int64_t> skip_until_ns_{0};  // steady_clock time before which calls are skipped
  Counter *hits_, *misses_, *errors_, *skipped_;
  Histogram* latency_;
};

}  // namespace ragserve::ctxcache
