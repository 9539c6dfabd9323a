// The credential matrix: which credentials each RPC of the five ragserve services accepts.
// Every method of a service registered on a ServiceServer must have a row here: the server
// refuses to start otherwise (fail closed), and tests/common/auth_policy_test.cc walks the
// descriptor pool. docs/SECURITY.md explains the rows; keep the two in step.
#include <google/protobuf/descriptor.h>

#include <utility>

#include "services/common/auth.h"

namespace ragserve {
namespace {

constexpr CredentialSet P = kPublicCred, I = kInternalCred, A = kAdminCred;

struct PolicyRow {
  const char* path;
  CredentialSet accepted;
};

// Admin RPCs that the router forwards after authorizing them at its edge (create/drop/stats of
// a collection) also accept the internal credential on the index: the router calls the index
// with the internal token only. Admin RPCs nobody forwards (Rebuild, Evict, kvr/ctxcache Stats)
// accept admin alone.
constexpr PolicyRow kPolicy[] = {
    // RagService: the public edge (router). Ingest with create_spec also needs admin (router).
    {"/ragserve.v1.RagService/Query", P},
    {"/ragserve.v1.RagService/Ingest", P | A},
    {"/ragserve.v1.RagService/CreateCollection", A},
    {"/ragserve.v1.RagService/DropCollection", A},
    {"/ragserve.v1.RagService/ListCollections", P | A},
    {"/ragserve.v1.RagService/Stats", A},
    {"/ragserve.v1.RagService/Delete", P | A},  // a data-plane write, like Ingest
    {"/ragserve.v1.RagService/Embed", P | A},   // the collection's embedder (/v1/embeddings)
    // IndexService: called by the router (internal) and by operators (admin).
    {"/ragserve.v1.IndexService/CreateCollection", I | A},
    {"/ragserve.v1.IndexService/DropCollection", I | A},
    {"/ragserve.v1.IndexService/ListCollections", I | A},
    {"/ragserve.v1.IndexService/Upsert", I},
    {"/ragserve.v1.IndexService/Delete", I},
    {"/ragserve.v1.IndexService/Search", I},
    {"/ragserve.v1.IndexService/Embed", I},
    {"/ragserve.v1.IndexService/GetDocuments", I},
    {"/ragserve.v1.IndexService/Stats", I | A},
    {"/ragserve.v1.IndexService/Rebuild", A},
    // KvRetrievalService: called by its decoder; an operator may release a stuck sequence.
    {"/ragserve.v1.KvRetrievalService/CreateSequence", I},
    {"/ragserve.v1.KvRetrievalService/Append", I},
    {"/ragserve.v1.KvRetrievalService/Attend", I},
    {"/ragserve.v1.KvRetrievalService/Release", I | A},
    {"/ragserve.v1.KvRetrievalService/Stats", A},
    // ContextCacheService: called by the router (pre-encode) and decoders (fetch).
    {"/ragserve.v1.ContextCacheService/Encode", I},
    {"/ragserve.v1.ContextCacheService/Get", I},
    {"/ragserve.v1.ContextCacheService/Has", I},
    {"/ragserve.v1.ContextCacheService/Evict", A},
    {"/ragserve.v1.ContextCacheService/Stats", A},
    // DecoderService: called by the router; an operator may read load or cancel a request.
    {"/ragserve.v1.DecoderService/Generate", I},
    {"/ragserve.v1.DecoderService/GetLoad", I | A},
    {"/ragserve.v1.DecoderService/Cancel", I | A},
};

}  // namespace

std::optional<CredentialSet> AcceptedCredentials(std::string_view method_path) {
  for (const PolicyRow& row : kPolicy) {
    if (method_path == row.path) return row.accepted;
  }
  return std::nullopt;
}

std::vector<std::string> MethodsWithoutPolicy(const std::string& service_full_name) {
  const auto* sd =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(service_full_name);
  if (sd == nullptr) return {service_full_name + " unknown (not in the descriptor pool)"};
  std::vector<std::string> missing;
  for (int i = 0; i < sd->method_count(); ++i) {
    std::string path = "/" + sd->full_name() + "/" + sd->method(i)->name();
    if (!AcceptedCredentials(path)) missing.push_back(std::move(path));
  }
  return missing;
}

}  // namespace ragserve
