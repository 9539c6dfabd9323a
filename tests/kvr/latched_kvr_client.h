// A KvrClient test double over a real one (e.g. LocalKvrClient): its sequences forward every call,
// except that FinishPrefill first waits until the test opens the latch, and may then return an
// injected error instead of building. It also checks that no two calls of one sequence overlap
// (the contract of retrieval_kv_source.h) and counts the builds that started and finished.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "services/kvr/retrieval_kv_source.h"

namespace ragserve::kvr::testing {

class LatchedKvrClient final : public KvrClient {
 public:
  explicit LatchedKvrClient(KvrClient* inner) : inner_(inner) {}

  // FinishPrefill returns once the latch is open (it starts closed unless Open() was called).
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // Blocks until `n` builds are waiting on (or have passed) the latch, or `timeout_s` passed;
  // true if they did.
  bool WaitForBuildsStarted(int n, double timeout_s) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                        [&] { return started_ >= n; });
  }
  // FinishPrefill of every later build returns this error (after the latch) when not OK.
  void FailBuilds(Status st) {
    std::lock_guard<std::mutex> lock(mu_);
    build_error_ = std::move(st);
  }
  int builds_started() const {
    std::lock_guard<std::mutex> lock(mu_);
    return started_;
  }
  int builds_finished() const { return finished_.load(); }
  // Calls of one sequence that overlapped another call of the same sequence (must stay 0).
  int overlaps() const { return overlaps_.load(); }

  StatusOr<std::unique_ptr<KvrSequence>> Create(const std::string& id,
                                                const SequenceConfig& config) override {
    RS_ASSIGN_OR_RETURN(auto inner, inner_->Create(id, config));
    return std::unique_ptr<KvrSequence>(std::make_unique<Seq>(this, std::move(inner)));
  }

 private:
  class Seq final : public KvrSequence {
   public:
    Seq(LatchedKvrClient* owner, std::unique_ptr<KvrSequence> inner)
        : owner_(owner), inner_(std::move(inner)) {}
    Status AddPrefill(int layer, int64_t n, const float* k, const float* v,
                      const float* q) override {
      Guard g(this);
      return inner_->AddPrefill(layer, n, k, v, q);
    }
    StatusOr<double> FinishPrefill() override {
      Guard g(this);
      Status injected;
      {
        std::unique_lock<std::mutex> lock(owner_->mu_);
        ++owner_->started_;
        owner_->cv_.notify_all();
        owner_->cv_.wait(lock, [&] { return owner_->open_; });
        injected = owner_->build_error_;
      }
      StatusOr<double> r = injected.ok() ? inner_->FinishPrefill() : StatusOr<double>(injected);
      ++owner_->finished_;
      return r;
    }
    Status Append(int64_t n, const std::vector<const float*>& k,
                  const std::vector<const float*>& v) override {
      Guard g(this);
      return inner_->Append(n, k, v);
    }
    Status Attend(int layer, int64_t n, const float* q, const AttendOptions& opt, float* o,
                  float* lse, int64_t* keys_scored) override {
      Guard g(this);
      return inner_->Attend(layer, n, q, opt, o, lse, keys_scored);
    }
    Status Release() override {
      Guard g(this);
      return inner_->Release();
    }

   private:
    // Counts a call that starts while another call of this sequence runs.
    struct Guard {
      explicit Guard(Seq* s) : s_(s) {
        if (s_->busy_.exchange(true)) ++s_->owner_->overlaps_;
      }
      ~Guard() { s_->busy_ = false; }
      Seq* s_;
    };
    LatchedKvrClient* owner_;
    std::unique_ptr<KvrSequence> inner_;
    std::atomic<bool> busy_{false};
  };

  KvrClient* inner_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int started_ = 0;
  Status build_error_;
  std::atomic<int> finished_{0};
  std::atomic<int> overlaps_{0};
};

}  // namespace ragserve::kvr::testing
