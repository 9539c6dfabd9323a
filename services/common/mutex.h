// Mutexes and scoped locks that clang's thread-safety analysis understands (LevelDB's
// port::Mutex / MutexLock pattern): std::mutex and std::shared_mutex with the capability
// annotations libstdc++ lacks. Fields name their mutex with ABSL_GUARDED_BY(mu_), functions that
// expect it held with ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) (absl/base/thread_annotations.h), and
// tools/check-thread-safety (part of `make test`) compiles the project with clang
// -Wthread-safety -Werror=thread-safety. With g++ the annotations expand to nothing; these types
// behave exactly like the std ones they wrap.
//
// A condition-variable predicate runs with the mutex held, but the analysis sees a lambda as a
// separate function: annotate it, `lock.Wait(cv_, [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
// return stop_; })`.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>
#include <utility>

#include "absl/base/thread_annotations.h"

namespace ragserve {

// An exclusive mutex (std::mutex). Also meets BasicLockable, so std::scoped_lock works; prefer
// MutexLock, which the analysis checks.
class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  bool try_lock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.try_lock(); }

 private:
  friend class MutexLock;
  std::mutex mu_;
};

// A readers-writer mutex (std::shared_mutex).
class ABSL_LOCKABLE SharedMutex {
 public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;

  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  void lock_shared() ABSL_SHARED_LOCK_FUNCTION() { mu_.lock_shared(); }
  void unlock_shared() ABSL_UNLOCK_FUNCTION() { mu_.unlock_shared(); }

 private:
  std::shared_mutex mu_;
};

// Holds a Mutex for its scope (std::unique_lock). Unlock()/Lock() release and retake it inside
// the scope; Wait/WaitFor wait on a std::condition_variable like its wait/wait_for.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : lock_(mu.mu_) {}
  ~MutexLock() ABSL_UNLOCK_FUNCTION() = default;
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void Unlock() ABSL_UNLOCK_FUNCTION() { lock_.unlock(); }
  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { lock_.lock(); }

  // Blocks until pred() holds (pred runs with the mutex held).
  template <class Pred>
  void Wait(std::condition_variable& cv, Pred pred) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    cv.wait(lock_, std::move(pred));
  }
  // Blocks until pred() holds or timeout passes; returns pred().
  template <class Rep, class Period, class Pred>
  bool WaitFor(std::condition_variable& cv, const std::chrono::duration<Rep, Period>& timeout,
               Pred pred) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return cv.wait_for(lock_, timeout, std::move(pred));
  }

 private:
  std::unique_lock<std::mutex> lock_;
};

// Holds M (SharedMutex, or any annotated mutex with lock()/unlock()) exclusively for its scope.
template <class M>
class ABSL_SCOPED_LOCKABLE WriterMutexLock {
 public:
  explicit WriterMutexLock(M& mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_.lock(); }
  ~WriterMutexLock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  WriterMutexLock(const WriterMutexLock&) = delete;
  WriterMutexLock& operator=(const WriterMutexLock&) = delete;

 private:
  M& mu_;
};

// Holds M (SharedMutex, or any annotated mutex with lock_shared()/unlock_shared()) shared for
// its scope.
template <class M>
class ABSL_SCOPED_LOCKABLE ReaderMutexLock {
 public:
  explicit ReaderMutexLock(M& mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) { mu_.lock_shared(); }
  ~ReaderMutexLock() ABSL_UNLOCK_FUNCTION() { mu_.unlock_shared(); }
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;

 private:
  M& mu_;
};

}  // namespace ragserve
