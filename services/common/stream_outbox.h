// A write queue for server-streaming callback reactors: producers on any thread Push messages;
// they are written one at a time (gRPC allows one outstanding write); Close finishes the call
// once everything queued is written. Messages that pile up behind a slow client may be merged
// by a caller-provided function. When the reactor is gone (Detach from OnDone) pushes are
// dropped, so producers never touch a dead reactor.
//
// Usage in a reactor: OnWriteDone(ok) -> outbox->WriteDone(ok); OnDone() -> outbox->Detach().
#pragma once

#include <grpcpp/support/server_callback.h>

#include <deque>
#include <functional>
#include <optional>
#include <utility>

#include "services/common/mutex.h"

namespace ragserve {

template <typename Msg>
class StreamOutbox {
 public:
  // merge(back, next) may fold `next` into the last queued (not yet written) message and return
  // true; null: never merge.
  explicit StreamOutbox(grpc::ServerWriteReactor<Msg>* reactor,
                        std::function<bool(Msg*, const Msg&)> merge = nullptr)
      : reactor_(reactor), merge_(std::move(merge)) {}

  void Push(Msg msg) {
    MutexLock lock(mu_);
    if (reactor_ == nullptr || closed_) return;
    if (merge_ && queue_.size() >= 2 && merge_(&queue_.back(), msg)) return;
    queue_.push_back(std::move(msg));
    if (!writing_) StartNext();
  }

  // No more messages: finish with `st` once the queue is written. Later calls are ignored.
  void Close(grpc::Status st) {
    MutexLock lock(mu_);
    if (reactor_ == nullptr || closed_) return;
    closed_ = true;
    final_ = std::move(st);
    if (!writing_) reactor_->Finish(*final_);
  }

  void WriteDone(bool ok) {
    MutexLock lock(mu_);
    queue_.pop_front();
    writing_ = false;
    if (reactor_ == nullptr) return;
    if (!ok) {
      queue_.clear();  // the client is gone; Finish once the producer Closes
      failed_ = true;
    }
    if (!queue_.empty()) {
      StartNext();
    } else if (closed_) {
      reactor_->Finish(*final_);
    }
  }

  void Detach() {
    MutexLock lock(mu_);
    reactor_ = nullptr;
  }

  // True once a write failed (client gone) or the reactor was detached.
  bool broken() {
    MutexLock lock(mu_);
    return failed_ || reactor_ == nullptr;
  }

 private:
  void StartNext() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {  // needs a non-empty queue
    writing_ = true;
    reactor_->StartWrite(&queue_.front());  // deque keeps element addresses on push_back
  }

  Mutex mu_;
  grpc::ServerWriteReactor<Msg>* reactor_ ABSL_GUARDED_BY(mu_);  // null after Detach
  std::function<bool(Msg*, const Msg&)> merge_;
  // The front is being written while writing_.
  std::deque<Msg> queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> final_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ragserve
