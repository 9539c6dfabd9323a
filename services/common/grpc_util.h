// Helpers for callback-API gRPC handlers, shared by every service adapter.
//
// ServeUnary runs a handler off the gRPC thread on the server's bounded executor (STYLE.md #8),
// after the checks every call needs: auth, an already-expired deadline, a cancelled call. The
// handler returns a ragserve::Status, mapped to gRPC in one place (grpc_status.h).
#pragma once

#include <google/protobuf/message_lite.h>
#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>

#include <chrono>
#include <functional>

#include "services/common/grpc_status.h"
#include "services/common/server.h"

namespace ragserve {

// Checks shared by all calls: auth, deadline already passed, cancelled. OK to proceed.
grpc::Status PrecheckCall(grpc::CallbackServerContext* ctx, const TokenAuth& auth);

// Seconds left before the call's deadline (+inf without one).
double SecondsLeft(const grpc::ServerContextBase& ctx);

// OK while the caller still waits for the answer; DeadlineExceeded once its deadline has passed,
// Cancelled once it cancelled. Long handlers check it between steps, so work nobody waits for
// stops instead of holding an executor thread (under a flood: long after its callers left).
Status CallerStillWaiting(const grpc::ServerContextBase& ctx);

// Runs `fn` on `server`'s executor and finishes the returned reactor with its status.
// A full executor queue (--executor-queue), a request whose bytes would pass the executor's
// request memory budget (--executor-queue-mb), or a caller whose deadline comes before the
// queue's expected wait (BoundedExecutor::ExpectedWaitSeconds: work that would time out queued)
// gives RESOURCE_EXHAUSTED at once, and so does a queued call as soon as the wait ahead of it is
// known to pass its deadline (re-checked every 100 ms; BoundedExecutor::Submit); `fn` is not run
// when a precheck fails, nor when its caller's deadline passed or it cancelled while the call was
// queued (DEADLINE_EXCEEDED / CANCELLED). `req` and `resp` are the call's request and answer: the
// request's size is what the call holds of the executor's byte budget while queued and running, and
// the request and the answer together from the end of `fn` until the answer is sent (the call is
// done), so answers waiting for slow readers count against the budget too.
grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* ctx, ServiceServer* server,
                                     const google::protobuf::MessageLite* req,
                                     const google::protobuf::MessageLite* resp,
                                     std::function<Status()> fn);

// ServeUnary on the server's lane of cheap calls (ServiceServer::light_executor()), so the call
// is answered while a flood keeps the main executor busy: for load reports, stats and listings
// (in memory, bounded, no I/O). One exception: the router forwards ListCollections and Stats to
// the index, which answers them on its own lane (a lane thread waits one round trip, at most
// the caller's deadline). RESOURCE_EXHAUSTED when the lane's queue is full (never on the
// caller's deadline: the lane's calls are short).
grpc::ServerUnaryReactor* ServeCheapUnary(grpc::CallbackServerContext* ctx, ServiceServer* server,
                                          const google::protobuf::MessageLite* req,
                                          const google::protobuf::MessageLite* resp,
                                          std::function<Status()> fn);

// The same checks, then `fn` runs on the calling gRPC thread: only for work that is bounded, in
// memory and short (tens to hundreds of microseconds, e.g. one ANN query), where the two thread
// hand-offs of the executor path would cost more than the work itself. Anything that can block
// or run long (I/O, batches, model compute) goes through ServeUnary.
// (`req` and `resp` are unused; the signature matches ServeUnary's so a handler can pick either.)
grpc::ServerUnaryReactor* ServeUnaryInline(grpc::CallbackServerContext* ctx, ServiceServer* server,
                                           const google::protobuf::MessageLite* req,
                                           const google::protobuf::MessageLite* resp,
                                           std::function<Status()> fn);

// The request memory budget of a client-streaming reactor (index Upsert, kvr CreateSequence,
// router Ingest). gRPC reads a message as soon as a read is started, whatever the executor
// holds, so a flood of streams was read in full and refused only afterwards, or (near the
// transport's quota, --grpc-memory-mb) kept its senders waiting on flow control until their
// deadline. So before its first read a stream reserves the largest message the server accepts
// (--max-message-mb) on the executor's byte budget (--executor-queue-mb) and holds it until it
// ends; its messages, read and applied one at a time, live within it. When the budget is full
// the call ends RESOURCE_EXHAUSTED before anything is read. The price: about budget / max
// message streams run at once (one always can), however small their messages; a caller that
// opens a stream and sends nothing holds its reservation until it leaves.
// Not thread-safe: one read or task at a time, as a reactor runs them.
class StreamReadBudget {
 public:
  explicit StreamReadBudget(ServiceServer* server);
  ~StreamReadBudget();  // Gives back the reservation if still held.
  StreamReadBudget(const StreamReadBudget&) = delete;
  StreamReadBudget& operator=(const StreamReadBudget&) = delete;

  // Before each StartRead: reserves one message of the largest size unless held already.
  // ResourceExhausted (naming the flags) when the budget cannot take it: finish the call with it
  // instead of reading.
  Status Reserve();
  // After a message is read: what it holds in memory beyond the reservation is charged too
  // (never refused: it is allocated already), until Release. A message of many small parts
  // holds several times its wire size, which the reservation is.
  void Account(const google::protobuf::MessageLite& msg);
  // Queues `task` (applying the message read, or ending the stream) on the server's executor;
  // the message's bytes are within the reservation. ResourceExhausted when the queue is full or
  // would hold the message past the caller's deadline (`ctx`), and `shed` is called instead of
  // the task when that turns out while it is queued (BoundedExecutor::Submit): finish the call
  // with the status there. Messages applied before stay applied.
  Status Submit(std::function<void()> task, const grpc::ServerContextBase& ctx,
                BoundedExecutor::ShedFn shed);
  // Gives back the reservation (once the last message is applied, before the call is finished,
  // so a caller that has its answer finds the budget as its call left it).
  void Release();

 private:
  BoundedExecutor& executor_;
  const int64_t message_bytes_;
  int64_t reserved_ = 0;
};

}  // namespace ragserve
