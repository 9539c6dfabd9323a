#include "services/common/grpc_util.h"

#include <google/protobuf/message.h>

#include <algorithm>
#include <limits>

#include "services/common/executor.h"

namespace ragserve {

double SecondsLeft(const grpc::ServerContextBase& ctx) {
  const auto deadline = ctx.deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return std::numeric_limits<double>::infinity();
  }
  return std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
}

Status CallerStillWaiting(const grpc::ServerContextBase& ctx) {
  if (ctx.IsCancelled()) return Cancelled("the caller cancelled the call");
  if (SecondsLeft(ctx) <= 0) return DeadlineExceeded("the call's deadline passed");
  return OkStatus();
}

grpc::Status PrecheckCall(grpc::CallbackServerContext* ctx, const TokenAuth& auth) {
  if (grpc::Status st = auth.Check(*ctx); !st.ok()) return st;
  if (SecondsLeft(*ctx) <= 0) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                        "deadline expired before the call ran");
  }
  if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "call cancelled");
  return grpc::Status::OK;
}

namespace {

// HTTP/2's initial flow-control window: an answer this small is sent without waiting for its
// reader.
constexpr int64_t kSentWithoutWaitingBytes = 64 * 1024;

// What a parsed message holds in memory. A message of many small sub-messages holds several
// times its wire size (each sub-message, repeated field and string is an allocation of its own:
// a 200,000-item Attend request ~5x), so a budget in wire bytes admitted several times its bytes
// of such calls. Full messages are measured by protobuf (SpaceUsedLong, a walk like
// ByteSizeLong's); small ones (`wire`: m.ByteSizeLong()), and lite ones, count their wire size.
int64_t MemoryBytes(const google::protobuf::MessageLite& m, int64_t wire) {
  if (wire < kSentWithoutWaitingBytes) return wire;
  const auto* full = dynamic_cast<const google::protobuf::Message*>(&m);
  if (full == nullptr) return wire;
  return std::max(wire, static_cast<int64_t>(full->SpaceUsedLong()));
}

// A unary reactor that holds bytes of its executor's budget until the call is over (OnDone):
// the request and answer live until the answer is sent, which for a big answer to a slow reader
// is long after the task that made it returned its bytes.
class BudgetedUnaryReactor : public grpc::ServerUnaryReactor {
 public:
  explicit BudgetedUnaryReactor(BoundedExecutor& executor) : executor_(executor) {}
  // Takes `bytes` more (never refused: they are allocated already), given back in OnDone.
  void Hold(int64_t bytes) {
    executor_.Charge(bytes);
    held_ += bytes;
  }
  void OnDone() override {
    executor_.Unreserve(held_);
    delete this;
  }

 private:
  BoundedExecutor& executor_;
  int64_t held_ = 0;  // written by the task before Finish, read in OnDone after it
};

// ServeUnary on `executor`; with `deadline_admission`, refused when the queue would hold the call
// past its deadline (BoundedExecutor::ExpectedWaitSeconds), and dropped from the queue with
// RESOURCE_EXHAUSTED as soon as its wait is known to pass it (BoundedExecutor::Submit's shed).
grpc::ServerUnaryReactor* ServeUnaryOn(BoundedExecutor& executor, bool deadline_admission,
                                       grpc::CallbackServerContext* ctx, ServiceServer* server,
                                       const google::protobuf::MessageLite* req,
                                       const google::protobuf::MessageLite* resp,
                                       std::function<Status()> fn) {
  auto* reactor = new BudgetedUnaryReactor(executor);
  if (grpc::Status st = PrecheckCall(ctx, server->auth()); !st.ok()) {
    reactor->Finish(st);
    return reactor;
  }
  const int64_t bytes =
      req == nullptr ? 0 : MemoryBytes(*req, static_cast<int64_t>(req->ByteSizeLong()));
  Status submitted = executor.Submit(
      [ctx, reactor, bytes, resp, fn = std::move(fn)] {
        // A call whose caller left while it was queued is not run (under a flood: most of them).
        if (Status waiting = CallerStillWaiting(*ctx); !waiting.ok()) {
          reactor->Finish(ToGrpcStatus(Annotate(waiting, "not run")));
          return;
        }
        const Status st = CallCatchingExceptions("call handler", fn);
        // From here to the end of the call the request and the answer (the message and its
        // serialized copy in the transport) are held by the reactor (the task's own hold on the
        // request ends when it returns). Small calls are not: their answer fits the caller's
        // first flow-control window, so it is sent at once.
        const int64_t wire =
            st.ok() && resp != nullptr ? static_cast<int64_t>(resp->ByteSizeLong()) : 0;
        const int64_t answer = wire == 0 ? 0 : MemoryBytes(*resp, wire) + wire;
        if (bytes + answer > kSentWithoutWaitingBytes) reactor->Hold(bytes + answer);
        reactor->Finish(ToGrpcStatus(st));
      },
      bytes, deadline_admission ? SecondsLeft(*ctx) : BoundedExecutor::kNoDeadline,
      // Dropped from the queue when its wait turns out to pass its deadline: answered at once.
      [reactor](const Status& shed) { reactor->Finish(ToGrpcStatus(shed)); });
  if (!submitted.ok()) reactor->Finish(ToGrpcStatus(submitted));
  return reactor;
}

}  // namespace

grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* ctx, ServiceServer* server,
                                     const google::protobuf::MessageLite* req,
                                     const google::protobuf::MessageLite* resp,
                                     std::function<Status()> fn) {
  return ServeUnaryOn(server->executor(), /*deadline_admission=*/true, ctx, server, req, resp,
                      std::move(fn));
}

grpc::ServerUnaryReactor* ServeCheapUnary(grpc::CallbackServerContext* ctx, ServiceServer* server,
                                          const google::protobuf::MessageLite* req,
                                          const google::protobuf::MessageLite* resp,
                                          std::function<Status()> fn) {
  return ServeUnaryOn(server->light_executor(), /*deadline_admission=*/false, ctx, server, req,
                      resp, std::move(fn));
}

grpc::ServerUnaryReactor* ServeUnaryInline(grpc::CallbackServerContext* ctx, ServiceServer* server,
                                           const google::protobuf::MessageLite* /*req*/,
                                           const google::protobuf::MessageLite* /*resp*/,
                                           std::function<Status()> fn) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  grpc::Status st = PrecheckCall(ctx, server->auth());
  reactor->Finish(st.ok() ? ToGrpcStatus(CallCatchingExceptions("call handler", fn)) : st);
  return reactor;
}

StreamReadBudget::StreamReadBudget(ServiceServer* server)
    : executor_(server->executor()),
      message_bytes_(int64_t{server->config().max_message_mb} << 20) {}

StreamReadBudget::~StreamReadBudget() { Release(); }

Status StreamReadBudget::Reserve() {
  if (reserved_ > 0) return OkStatus();
  if (Status st = executor_.Reserve(message_bytes_); !st.ok()) {
    return Annotate(st, StrCat("no room to read a stream message of up to ", message_bytes_,
                               " bytes (--max-message-mb)"));
  }
  reserved_ = message_bytes_;
  return OkStatus();
}

void StreamReadBudget::Account(const google::protobuf::MessageLite& msg) {
  const int64_t held = MemoryBytes(msg, static_cast<int64_t>(msg.ByteSizeLong()));
  if (held <= reserved_) return;
  executor_.Charge(held - reserved_);
  reserved_ = held;
}

Status StreamReadBudget::Submit(std::function<void()> task, const grpc::ServerContextBase& ctx,
                                BoundedExecutor::ShedFn shed) {
  return executor_.Submit(std::move(task), /*bytes=*/0, SecondsLeft(ctx), std::move(shed));
}

void StreamReadBudget::Release() {
  executor_.Unreserve(reserved_);
  reserved_ = 0;
}

}  // namespace ragserve
