// Writer-preferring readers-writer mutex for the vector indexes.
//
// glibc's std::shared_mutex prefers readers: with a steady stream of searches a writer can wait
// forever (observed: an add() stalled for minutes behind three searching threads). This wrapper
// uses a pthread rwlock of kind PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP, so a waiting
// writer blocks new readers and gets the lock once the current searches finish. It meets the
// SharedMutex requirements and carries clang's capability annotations: hold it with
// ReaderMutexLock / WriterMutexLock (services/common/mutex.h), which the thread-safety analysis
// checks. Not recursive: a thread must not take the shared lock twice while a writer may be
// waiting.
#pragma once

#include <pthread.h>

#include "absl/base/thread_annotations.h"
#include "services/common/mutex.h"  // IWYU pragma: export (ReaderMutexLock, WriterMutexLock)

namespace ragserve::index::internal {

class ABSL_LOCKABLE RwMutex {
 public:
  RwMutex() {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&rw_, &attr);
    pthread_rwlockattr_destroy(&attr);
  }
  ~RwMutex() { pthread_rwlock_destroy(&rw_); }
  RwMutex(const RwMutex&) = delete;
  RwMutex& operator=(const RwMutex&) = delete;

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { pthread_rwlock_wrlock(&rw_); }
  bool try_lock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    return pthread_rwlock_trywrlock(&rw_) == 0;
  }
  void unlock() ABSL_UNLOCK_FUNCTION() { pthread_rwlock_unlock(&rw_); }
  void lock_shared() ABSL_SHARED_LOCK_FUNCTION() { pthread_rwlock_rdlock(&rw_); }
  bool try_lock_shared() ABSL_SHARED_TRYLOCK_FUNCTION(true) {
    return pthread_rwlock_tryrdlock(&rw_) == 0;
  }
  void unlock_shared() ABSL_UNLOCK_FUNCTION() { pthread_rwlock_unlock(&rw_); }

 private:
  pthread_rwlock_t rw_;
};

}  // namespace ragserve::index::internal
