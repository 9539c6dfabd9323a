#include "services/common/auth.h"

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

grpc::Status TokenAuth::Check(const grpc::ServerContextBase& ctx) const {
  if (!enabled()) return grpc::Status::OK;
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "missing 'authorization: Bearer <token>' metadata");
  }
  const std::string_view value(it->second.data(), it->second.size());
  constexpr std::string_view kScheme = "Bearer ";
  if (value.substr(0, kScheme.size()) != kScheme) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "authorization metadata must use the Bearer scheme");
  }
  if (!ConstantTimeEquals(value.substr(kScheme.size()), token_)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
  }
  return grpc::Status::OK;
}

void AttachToken(grpc::ClientContext* ctx, const std::string& token) {
  if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
}

}  // namespace ragserve
