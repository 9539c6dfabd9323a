// Bearer-token authentication and least-privilege authorization for any ragserve service (and
// the client side of it).
//
// A call is authenticated when it carries the metadata "authorization: Bearer <token>" and the
// token is one of the three configured credentials (compared in constant time):
//   public    clients of the router (Query, Ingest, ListCollections);
//   internal  service-to-service calls inside the cluster (router -> index/decoder/ctxcache,
//             decoder -> kvr/ctxcache);
//   admin     administration (collection create/drop/rebuild, cache evict, sequence release,
//             stats with internals).
// Each RPC accepts a set of credentials, written once in the table of auth_policy.cc (the matrix
// is in docs/SECURITY.md). A missing or unknown token is UNAUTHENTICATED; a valid token of a
// credential the RPC does not accept is PERMISSION_DENIED naming the credential it needs. Health
// checks and reflection are not guarded (probes need them). ServiceServer checks every
// registered RPC has a row (fail closed) and handlers call PrecheckCall (grpc_util.h) first.
#pragma once

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ragserve {

// Compares in time that depends only on the lengths, not on where the strings differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// One credential, and sets of them as bit masks.
enum class Credential : uint8_t { kPublic = 1, kInternal = 2, kAdmin = 4 };
using CredentialSet = uint8_t;
constexpr CredentialSet kPublicCred = 1;
constexpr CredentialSet kInternalCred = 2;
constexpr CredentialSet kAdminCred = 4;
// "public", "internal or admin", "none".
std::string CredentialNames(CredentialSet set);

// The credentials an RPC accepts, by full method path ("/ragserve.v1.IndexService/Search");
// nullopt when the method has no row in the table (callers refuse it: fail closed).
std::optional<CredentialSet> AcceptedCredentials(std::string_view method_path);
// Methods of the service `service_full_name` ("ragserve.v1.IndexService", looked up in the
// generated descriptor pool) without a row in the table, as paths; ["<service> unknown"] when the
// service is not in the pool. Empty when every method is covered.
std::vector<std::string> MethodsWithoutPolicy(const std::string& service_full_name);

// The configured bearer tokens; an empty one means that credential is not configured.
struct AuthTokens {
  std::string public_token;
  std::string internal_token;
  std::string admin_token;
  bool any() const;
};

class TokenAuth {
 public:
  TokenAuth() = default;
  // Only the public credential (an empty token turns authentication off).
  explicit TokenAuth(std::string public_token);
  explicit TokenAuth(AuthTokens tokens);
  // Auth is on when any credential is configured; then calls without one are refused.
  bool enabled() const { return tokens_.any(); }
  // Credentials that have a token.
  CredentialSet configured() const;

  // Which credential an "authorization" header value ("Bearer <token>") carries. UNAUTHENTICATED
  // naming what is wrong (missing header, wrong scheme, unknown token) otherwise.
  grpc::Status Identify(std::string_view authorization, Credential* who) const;
  // OK when auth is off or the header carries a credential in `accepted`; UNAUTHENTICATED as
  // Identify, PERMISSION_DENIED "<what> needs the <accepted> credential" for a valid token of
  // another credential. For transports other than gRPC (the HTTP API).
  grpc::Status CheckHeader(std::string_view authorization, CredentialSet accepted,
                           std::string_view what) const;
  // The same for a gRPC call, with `accepted` taken from the table for the call's method
  // (CallMethod); a call whose method is unknown or has no row is PERMISSION_DENIED.
  grpc::Status Check(const grpc::ServerContextBase& ctx) const;
  // The credential the call carries (nullopt when auth is off or the token is not valid).
  std::optional<Credential> CallerOf(const grpc::ServerContextBase& ctx) const;

 private:
  AuthTokens tokens_;
};

// The full method path of a call in progress on a ServiceServer ("" when unknown). The server's
// per-call interceptor records it when the call arrives (gRPC's server context does not expose
// it); RegisterCall returns a ticket that UnregisterCall needs, so a late unregister of an
// earlier call on a reused context cannot erase a newer registration.
std::string_view CallMethod(const grpc::ServerContextBase& ctx);
uint64_t RegisterCall(const grpc::ServerContextBase* ctx, const char* method);
void UnregisterCall(const grpc::ServerContextBase* ctx, uint64_t ticket);

// Client side: adds "authorization: Bearer <token>" to the call (no-op for an empty token).
void AttachToken(grpc::ClientContext* ctx, const std::string& token);

}  // namespace ragserve
