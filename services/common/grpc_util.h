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
// A full executor queue, or a request whose bytes would pass the executor's request memory
// budget (--executor-queue-mb), gives RESOURCE_EXHAUSTED; `fn` is not run when a precheck fails.
// `req` is the call's request (its size is what the queued call holds).
grpc::ServerUnaryReactor* ServeUnary(grpc::CallbackServerContext* ctx, ServiceServer* server,
                                     const google::protobuf::MessageLite* req,
                                     std::function<Status()> fn);

// ServeUnary on the server's lane of cheap calls (ServiceServer::light_executor()), so the call
// is answered while a flood keeps the main executor busy: for load reports, stats and listings
// (in memory, bounded, no I/O). One exception: the router forwards ListCollections and Stats to
// the index, which answers them on its own lane (a lane thread waits one round trip, at most
// the caller's deadline). RESOURCE_EXHAUSTED when the lane's queue is full.
grpc::ServerUnaryReactor* ServeCheapUnary(grpc::CallbackServerContext* ctx, ServiceServer* server,
                                          const google::protobuf::MessageLite* req,
                                          std::function<Status()> fn);

// The same checks, then `fn` runs on the calling gRPC thread: only for work that is bounded, in
// memory and short (tens to hundreds of microseconds, e.g. one ANN query), where the two thread
// hand-offs of the executor path would cost more than the work itself. Anything that can block
// or run long (I/O, batches, model compute) goes through ServeUnary.
// (`req` is unused; the signature matches ServeUnary's so a handler can pick either.)
grpc::ServerUnaryReactor* ServeUnaryInline(grpc::CallbackServerContext* ctx, ServiceServer* server,
                                           const google::protobuf::MessageLite* req,
                                           std::function<Status()> fn);

}  // namespace ragserve
