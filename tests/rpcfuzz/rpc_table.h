// The RPC surface the fuzzer covers: every method of the five ragserve services, its call shape,
// the status codes its contract allows (written once here from proto/ragserve/v1/*.proto and the
// error contract in DESIGN.md), the fixtures a run sets up so requests can reach real objects, and
// a few valid seed requests per method for mutation.
#pragma once

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace ragserve::rpcfuzz {

enum class CallKind { kUnary, kServerStream, kClientStream };

struct RpcSpec {
  std::string service;  // Cluster name of the binary serving it: router, index, kvr, ...
  std::string path;     // "/ragserve.v1.IndexService/Search"
  const google::protobuf::MethodDescriptor* method = nullptr;
  CallKind kind = CallKind::kUnary;
  std::set<grpc::StatusCode> allowed;  // Codes a hostile request may get back.
};

// Every method of RagService, IndexService, KvRetrievalService, ContextCacheService and
// DecoderService, in a fixed order. Fatal if a method of those services is missing from the table
// (a new RPC must get its allowed codes here).
const std::vector<RpcSpec>& AllRpcs();
const RpcSpec* FindRpc(const std::string& path);

// Whether `code` is acceptable for `rpc`. `invalid_utf8` says the request carried invalid UTF-8 in
// a proto3 string: gRPC's own deserializer rejects it with INTERNAL before any service code runs.
bool Allowed(const RpcSpec& rpc, grpc::StatusCode code, bool invalid_utf8);

using MessageList = std::vector<std::unique_ptr<google::protobuf::Message>>;

// What the fixtures created, for seeds that reference it.
struct Fixtures {
  std::string fingerprint;  // The model's fingerprint (ctxcache Stats).
  std::string passage_key;  // A ctxcache key that exists.
  std::string prefix_key;
};

// Creates (again; errors ignored) the objects seeds name: index collection "fz" (dim 8) with
// documents d0..d2, kvr sequence "fzseq", a ctxcache entry. `channels` maps service -> channel.
// With auth on, the calls carry `internal_token` (ctxcache Stats: `admin_token`).
Fixtures SetUpFixtures(const std::map<std::string, std::shared_ptr<grpc::Channel>>& channels,
                       const std::string& internal_token = "", const std::string& admin_token = "");

// Valid seed requests for `rpc` (one message for unary/server-streaming calls, a stream of
// messages for client-streaming calls); at least one per method.
std::vector<MessageList> Seeds(const RpcSpec& rpc, const Fixtures& fx);

}  // namespace ragserve::rpcfuzz
