// RemoteKvrClient: a KvrClient (retrieval_kv_source.h) that keeps sequences in a remote
// ragserve-kvr (proto/ragserve/v1/kvr.proto), so a decode worker's RetrievalKvSource can hold a
// long prompt's KV cache in another process / machine.
//
// Per sequence: CreateSequence is one client stream that stays open for the whole prefill (one
// message per layer and prefill chunk: K/V + that chunk's queries) and is closed by
// FinishPrefill, which the server answers after building the key indexes; then one Append per
// decode step (all layers in one request), one Attend per layer and step (the queries of all
// heads, and of every new token of the step, in one request), and Release. Every call has a
// deadline (call_timeout_ms; the stream prefill_timeout_ms); errors come back as the server's
// status, annotated with the call, except a per-step call past its deadline, which is UNAVAILABLE.
// A breaker (options below) fails calls fast while the store is stalled or down. Release of a
// sequence whose stream is still open cancels the stream (the server then drops the partial
// sequence).
//
// Thread-safety: the client may be shared; each sequence is used by one thread at a time.
#pragma once

#include <grpcpp/channel.h>

#include <cstdint>
#include <memory>
#include <string>

#include "ragserve/v1/kvr.grpc.pb.h"
#include "services/kvr/retrieval_kv_source.h"

namespace ragserve::kvr {

struct RemoteKvrOptions {
  // Deadline of each Append / Attend / Release. Append and Attend run per decode step on the
  // decode worker's single loop thread, so this bounds how long one slow store stalls every
  // sequence of the worker; a call past it fails its sequence with UNAVAILABLE (the router then
  // retries the request elsewhere).
  int64_t call_timeout_ms = 3000;
  // Circuit breaker shared by the client's sequences: after `breaker_failures` consecutive
  // calls that timed out or found the store unreachable, calls fail at once with UNAVAILABLE for
  // `breaker_open_ms`; then one call tries again.
  int breaker_failures = 2;
  int64_t breaker_open_ms = 5000;
  // Deadline of a CreateSequence stream, which stays open for the whole prefill: it bounds the
  // prompt's prefill time (a 32K-token prompt took > 10 min on a busy 2-core VM).
  int64_t prefill_timeout_ms = 3600000;
  std::string token;  // bearer token when the server has auth on
};

class CallBreaker;

class RemoteKvrClient final : public KvrClient {
 public:
  RemoteKvrClient(std::shared_ptr<grpc::Channel> channel, RemoteKvrOptions options);
  // Sinks/window/ttl of -1 (or 0: proto3 has no presence) mean the server's defaults; the
  // index kind -1 likewise.
  StatusOr<std::unique_ptr<KvrSequence>> Create(const std::string& id,
                                                const SequenceConfig& config) override;
  // The server's Stats (tests, tools).
  StatusOr<v1::KvrStatsResponse> Stats() const;

 private:
  std::unique_ptr<v1::KvRetrievalService::Stub> stub_;
  const RemoteKvrOptions options_;
  std::shared_ptr<CallBreaker> breaker_;
};

}  // namespace ragserve::kvr
