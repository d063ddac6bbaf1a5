#include "examples/participants/delay_scheduler.h"

#include <utility>

namespace saga::examples {

DelayScheduler::DelayScheduler() : thread_([this] { Run(); }) {}

DelayScheduler::~DelayScheduler() {
  Stop();
  if (thread_.joinable()) thread_.join();
}

void DelayScheduler::Schedule(absl::Time when, absl::AnyInvocable<void() &&> task) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopped_) {
      queue_.push(Entry{when, next_seq_++, std::move(task)});
      wake_.Signal();
      return;
    }
  }
  std::move(task)();
}

void DelayScheduler::Stop() {
  absl::MutexLock lock(&mu_);
  stopped_ = true;
  wake_.Signal();
  while (!queue_.empty() || running_) drained_.Wait(&mu_);
}

int DelayScheduler::Pending() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size());
}

void DelayScheduler::Run() {
  absl::MutexLock lock(&mu_);
  while (true) {
    if (queue_.empty()) {
      drained_.SignalAll();
      if (stopped_) return;
      wake_.Wait(&mu_);
      continue;
    }
    const absl::Time when = queue_.top().when;
    if (!stopped_ && when > absl::Now()) {
      // Wakes for the earliest task's time, a new (maybe earlier) task, or Stop.
      wake_.WaitWithDeadline(&mu_, when);
      continue;
    }
    absl::AnyInvocable<void()&&> task = std::move(queue_.top().task);
    queue_.pop();
    running_ = true;
    mu_.Unlock();
    std::move(task)();
    mu_.Lock();
    running_ = false;
  }
}

}  // namespace saga::examples
