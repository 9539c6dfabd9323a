#include "services/common/auth.h"

#include <unordered_map>

#include "services/common/mutex.h"

namespace ragserve {

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  // Walk the expected length whatever the input, so timing reveals only the lengths.
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char ca = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff |= ca ^ static_cast<unsigned char>(b[i]);
  }
  return diff == 0;
}

std::string CredentialNames(CredentialSet set) {
  std::string out;
  for (auto [bit, name] : {std::pair{kPublicCred, "public"}, std::pair{kInternalCred, "internal"},
                           std::pair{kAdminCred, "admin"}}) {
    if ((set & bit) == 0) continue;
    if (!out.empty()) out += " or ";
    out += name;
  }
  return out.empty() ? "none" : out;
}

bool AuthTokens::any() const {
  return !public_token.empty() || !internal_token.empty() || !admin_token.empty();
}

TokenAuth::TokenAuth(std::string public_token) { tokens_.public_token = std::move(public_token); }

TokenAuth::TokenAuth(AuthTokens tokens) : tokens_(std::move(tokens)) {}

CredentialSet TokenAuth::configured() const {
  return (tokens_.public_token.empty() ? 0 : kPublicCred) |
         (tokens_.internal_token.empty() ? 0 : kInternalCred) |
         (tokens_.admin_token.empty() ? 0 : kAdminCred);
}

grpc::Status TokenAuth::Identify(std::string_view authorization, Credential* who) const {
  constexpr std::string_view kScheme = "Bearer ";
  if (authorization.substr(0, kScheme.size()) != kScheme) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization metadata must use the Bearer scheme");
  }
  const std::string_view token = authorization.substr(kScheme.size());
  // Compare with every configured token (no early exit), so timing does not tell which matched.
  int match = 0;
  const std::pair<const std::string*, Credential> all[] = {
      {&tokens_.public_token, Credential::kPublic},
      {&tokens_.internal_token, Credential::kInternal},
      {&tokens_.admin_token, Credential::kAdmin}};
  for (const auto& [tok, cred] : all) {
    const bool eq = !tok->empty() && ConstantTimeEquals(token, *tok);
    if (eq && match == 0) {
      *who = cred;
      match = 1;
    }
  }
  if (match == 0) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  return grpc::Status::OK;
}

grpc::Status TokenAuth::CheckHeader(std::string_view authorization, CredentialSet accepted,
                                    std::string_view what) const {
  if (!enabled()) return grpc::Status::OK;
  Credential who{};
  if (grpc::Status st = Identify(authorization, &who); !st.ok()) return st;
  if ((accepted & static_cast<CredentialSet>(who)) != 0) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      std::string(what) + " needs the " + CredentialNames(accepted) +
                          " credential; the call carried the " +
                          CredentialNames(static_cast<CredentialSet>(who)) + " one");
}

namespace {

std::optional<std::string_view> AuthorizationOf(const grpc::ServerContextBase& ctx) {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return std::nullopt;
  return std::string_view(it->second.data(), it->second.size());
}

}  // namespace

grpc::Status TokenAuth::Check(const grpc::ServerContextBase& ctx) const {
  if (!enabled()) return grpc::Status::OK;
  const std::optional<std::string_view> header = AuthorizationOf(ctx);
  if (!header) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing 'authorization: Bearer <token>' metadata");
  }
  const std::string_view method = CallMethod(ctx);
  const std::optional<CredentialSet> accepted = AcceptedCredentials(method);
  if (!accepted) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "no credential policy for method '" + std::string(method) + "'");
  }
  return CheckHeader(*header, *accepted, method);
}

std::optional<Credential> TokenAuth::CallerOf(const grpc::ServerContextBase& ctx) const {
  const std::optional<std::string_view> header = AuthorizationOf(ctx);
  Credential who{};
  if (!enabled() || !header || !Identify(*header, &who).ok()) return std::nullopt;
  return who;
}

// ---- Method of a call in progress ------------------------------------------------------------

namespace {

struct CallEntry {
  const char* method;
  uint64_t ticket;
};

struct CallRegistry {
  Mutex mu;
  uint64_t next_ticket ABSL_GUARDED_BY(mu) = 1;
  std::unordered_map<const grpc::ServerContextBase*, CallEntry> calls ABSL_GUARDED_BY(mu);
};

CallRegistry& Registry() {
  static CallRegistry* r = new CallRegistry();
  return *r;
}

}  // namespace

uint64_t RegisterCall(const grpc::ServerContextBase* ctx, const char* method) {
  CallRegistry& r = Registry();
  MutexLock lock(r.mu);
  const uint64_t ticket = r.next_ticket++;
  r.calls[ctx] = CallEntry{method, ticket};
  return ticket;
}

void UnregisterCall(const grpc::ServerContextBase* ctx, uint64_t ticket) {
  CallRegistry& r = Registry();
  MutexLock lock(r.mu);
  auto it = r.calls.find(ctx);
  if (it != r.calls.end() && it->second.ticket == ticket) r.calls.erase(it);
}

std::string_view CallMethod(const grpc::ServerContextBase& ctx) {
  CallRegistry& r = Registry();
  MutexLock lock(r.mu);
  auto it = r.calls.find(&ctx);
  return it == r.calls.end() || it->second.method == nullptr ? std::string_view()
                                                             : it->second.method;
}

void AttachToken(grpc::ClientContext* ctx, const std::string& token) {
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

}  // namespace ragserve
