// ragserve::Status / StatusOr<T>: the one error type of every ragserve library.
//
// Libraries return Status or StatusOr<T>; they never throw across a module boundary and never
// know about gRPC. Each service turns a Status into a grpc::Status in exactly one place
// (services/common/grpc_status.h). Codes are numbered exactly like gRPC's, so that mapping is
// total and loses nothing.
#pragma once

#include <cassert>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>

namespace ragserve {

enum class StatusCode : int {
  kOk = 0,
  kCancelled = 1,
  kUnknown = 2,
  kInvalidArgument = 3,
  kDeadlineExceeded = 4,
  kNotFound = 5,
  kAlreadyExists = 6,
  kPermissionDenied = 7,
  kResourceExhausted = 8,
  kFailedPrecondition = 9,
  kAborted = 10,
  kOutOfRange = 11,
  kUnimplemented = 12,
  kInternal = 13,
  kUnavailable = 14,
  kDataLoss = 15,
  kUnauthenticated = 16,
};
constexpr int kNumStatusCodes = 17;

// "OK", "INVALID_ARGUMENT", ... (the gRPC spelling).
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message)
      : code_(code), message_(code == StatusCode::kOk ? std::string() : std::move(message)) {}

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "INVALID_ARGUMENT: dimension 3 != collection dimension 128", or "OK".
  std::string ToString() const;

  bool operator==(const Status& o) const { return code_ == o.code_ && message_ == o.message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Concatenates anything that streams into an std::ostream: StrCat("k=", k, " > n=", n).
template <typename... Args>
std::string StrCat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

inline Status OkStatus() { return Status(); }
// Bad input from a caller: wrong dims, NaN, k <= 0, malformed file. Names the bad value.
inline Status InvalidArgument(std::string msg) {
  return Status(StatusCode::kInvalidArgument, std::move(msg));
}
// Unknown collection / sequence / id / cache key.
inline Status NotFound(std::string msg) { return Status(StatusCode::kNotFound, std::move(msg)); }
inline Status AlreadyExists(std::string msg) {
  return Status(StatusCode::kAlreadyExists, std::move(msg));
}
// Over a memory limit, a queue bound or an in-flight limit.
inline Status ResourceExhausted(std::string msg) {
  return Status(StatusCode::kResourceExhausted, std::move(msg));
}
inline Status FailedPrecondition(std::string msg) {
  return Status(StatusCode::kFailedPrecondition, std::move(msg));
}
inline Status OutOfRange(std::string msg) {
  return Status(StatusCode::kOutOfRange, std::move(msg));
}
inline Status Unimplemented(std::string msg) {
  return Status(StatusCode::kUnimplemented, std::move(msg));
}
inline Status Internal(std::string msg) { return Status(StatusCode::kInternal, std::move(msg)); }
inline Status Unavailable(std::string msg) {
  return Status(StatusCode::kUnavailable, std::move(msg));
}
inline Status DataLoss(std::string msg) { return Status(StatusCode::kDataLoss, std::move(msg)); }
inline Status DeadlineExceeded(std::string msg) {
  return Status(StatusCode::kDeadlineExceeded, std::move(msg));
}
inline Status Cancelled(std::string msg) { return Status(StatusCode::kCancelled, std::move(msg)); }
inline Status Aborted(std::string msg) { return Status(StatusCode::kAborted, std::move(msg)); }
inline Status Unauthenticated(std::string msg) {
  return Status(StatusCode::kUnauthenticated, std::move(msg));
}
inline Status PermissionDenied(std::string msg) {
  return Status(StatusCode::kPermissionDenied, std::move(msg));
}

// Returns `s` with `context + ": "` prepended to its message (same code).
inline Status Annotate(const Status& s, std::string_view context) {
  if (s.ok()) return s;
  return Status(s.code(), StrCat(context, ": ", s.message()));
}

// A value or the error that prevented it. Accessing value() of an error aborts (a bug).
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(const Status& s) : status_(s) {  // NOLINT: implicit like absl::StatusOr
    assert(!s.ok() && "StatusOr constructed from an OK Status without a value");
    if (status_.ok()) status_ = Status(StatusCode::kInternal, "OK status without a value");
  }
  StatusOr(const T& v) : value_(v) {}        // NOLINT
  StatusOr(T&& v) : value_(std::move(v)) {}  // NOLINT
  template <typename U, typename = std::enable_if_t<std::is_convertible_v<U&&, T> &&
                                                    !std::is_same_v<std::decay_t<U>, Status> &&
                                                    !std::is_same_v<std::decay_t<U>, T>>>
  StatusOr(U&& v) : value_(std::forward<U>(v)) {}  // NOLINT

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  const T& value() const& { return *value_; }
  T& value() & { return *value_; }
  T&& value() && { return std::move(*value_); }
  const T& operator*() const& { return *value_; }
  T& operator*() & { return *value_; }
  const T* operator->() const { return &*value_; }
  T* operator->() { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

}  // namespace ragserve

#define RAGSERVE_CONCAT_INNER_(a, b) a##b
#define RAGSERVE_CONCAT_(a, b) RAGSERVE_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (a Status) is not OK.
#define RS_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::ragserve::Status rs_status_ = (expr);  \
    if (!rs_status_.ok()) return rs_status_; \
  } while (0)

// `RS_ASSIGN_OR_RETURN(auto x, Foo());` declares x from a StatusOr or returns its error.
#define RS_ASSIGN_OR_RETURN(lhs, expr) \
  RS_ASSIGN_OR_RETURN_IMPL_(RAGSERVE_CONCAT_(rs_statusor_, __LINE__), lhs, expr)
#define RS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()

// Precondition check at a public boundary: returns InvalidArgument(StrCat(...)) when `cond` is
// false. The message names the bad value: RS_CHECK_ARG(k > 0, "k must be > 0, got ", k).
#define RS_CHECK_ARG(cond, ...)                                                       \
  do {                                                                                \
    if (!(cond)) return ::ragserve::InvalidArgument(::ragserve::StrCat(__VA_ARGS__)); \
  } while (0)
