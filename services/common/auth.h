// Bearer-token authentication for any ragserve service (and the client side of it).
//
// A call is authenticated when it carries the metadata "authorization: Bearer <token>". Tokens
// are compared in constant time. Health checks and reflection are not guarded (probes need them);
// every ragserve RPC handler calls Check() first.
#pragma once

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include <string>
#include <string_view>

namespace ragserve {

// Compares in time that depends only on the lengths, not on where the strings differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

class TokenAuth {
 public:
  // An empty token turns authentication off.
  explicit TokenAuth(std::string token = "") : token_(std::move(token)) {}
  bool enabled() const { return !token_.empty(); }
  // OK when auth is off or the call carries the right bearer token; UNAUTHENTICATED naming what
  // is wrong (missing header, wrong scheme, wrong token) otherwise.
  grpc::Status Check(const grpc::ServerContextBase& ctx) const;

 private:
  std::string token_;
};

// Client side: adds "authorization: Bearer <token>" to the call (no-op for an empty token).
void AttachToken(grpc::ClientContext* ctx, const std::string& token);

}  // namespace ragserve
