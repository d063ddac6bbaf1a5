// A single background thread that runs tasks at given times: the shop participants use it to
// answer delayed and held-back calls without blocking gRPC's callback threads.
// Thread-safe: every method may be called from any thread. Tasks run on the scheduler's own
// thread (or inline in Schedule/Stop once stopped) and must be short and must not call back
// into the scheduler's Stop.
#pragma once

#include <cstdint>
#include <queue>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace saga::examples {

class DelayScheduler {
 public:
  DelayScheduler();
  // Stops (running every pending task at once) and joins the thread.
  ~DelayScheduler();

  DelayScheduler(const DelayScheduler&) = delete;
  DelayScheduler& operator=(const DelayScheduler&) = delete;

  // Runs `task` at `when` (at once, on the scheduler thread, if `when` has passed). After Stop
  // the task runs inline, before Schedule returns.
  void Schedule(absl::Time when, absl::AnyInvocable<void() &&> task);

  // Runs every pending task now, in time order, and makes later Schedule calls run inline.
  // Idempotent; returns once the pending tasks have run.
  void Stop();

  // The number of tasks waiting for their time.
  int Pending() const;

 private:
  struct Entry {
    absl::Time when;
    uint64_t seq;  // FIFO among equal times
    // Mutable so that the task can be moved out of the priority queue's const top().
    mutable absl::AnyInvocable<void() &&> task;
  };
  struct Later {
    bool operator()(const Entry& a, const Entry& b) const {
      return a.when != b.when ? a.when > b.when : a.seq > b.seq;
    }
  };

  void Run();

  mutable absl::Mutex mu_;
  absl::CondVar wake_;     // a new task, or Stop
  absl::CondVar drained_;  // the queue became empty with no task running
  std::priority_queue<Entry, std::vector<Entry>, Later> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool running_ ABSL_GUARDED_BY(mu_) = false;  // the thread is running a task
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace saga::examples
