// Completion-queue plumbing shared by sagad's gRPC services and its participant invoker.
//
// sagad serves its API and calls participants through gRPC's completion-queue API, with the
// queue's events taken by a few threads of its own (usually one). Every event is handled on the
// thread that read it from the socket: gRPC 1.51's callback API instead passes each event between
// two "nexting" threads, which cost sagad about half of its CPU per saga at low load
// (docs/performance.md).
//
// A tag given to gRPC is a `Tag*`; the runner calls `Proceed(ok)` when its operation completes.
// Each object that owns tags frees itself when its last operation has completed, so that
// shutting the queue down (every pending tag then completes with ok = false) frees everything.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "grpcpp/completion_queue.h"

namespace saga::rpc {

class Tag {
 public:
  // Runs on a runner thread when the operation this tag was given to has completed; `ok` is
  // gRPC's: false when the call was cancelled, ended, or the queue is shutting down.
  virtual void Proceed(bool ok) = 0;

 protected:
  ~Tag() = default;
};

// A tag that runs `fn` each time an operation it was given to completes. Not freed by itself:
// it is a member of the object whose operations it stands for.
class FnTag final : public Tag {
 public:
  FnTag() = default;
  explicit FnTag(absl::AnyInvocable<void(bool)> fn) : fn_(std::move(fn)) {}
  void Set(absl::AnyInvocable<void(bool)> fn) { fn_ = std::move(fn); }
  void Proceed(bool ok) override { fn_(ok); }

 private:
  absl::AnyInvocable<void(bool)> fn_;
};

// Threads that take a completion queue's events and run their tags.
class CqRunner {
 public:
  // `cq` must outlive the runner. `threads` < 1 means 1.
  CqRunner(grpc::CompletionQueue* cq, int threads, std::string thread_name);
  CqRunner(const CqRunner&) = delete;
  CqRunner& operator=(const CqRunner&) = delete;
  // Calls ShutdownAndJoin().
  ~CqRunner();

  void Start();
  // Shuts the queue down, runs the tags still pending (with ok = false) and joins the threads.
  // Whatever puts operations on the queue (a server, an invoker) must have stopped first.
  // Idempotent.
  void ShutdownAndJoin();

  grpc::CompletionQueue* cq() const { return cq_; }

 private:
  void Loop();

  grpc::CompletionQueue* cq_;
  int thread_count_;
  std::string thread_name_;
  std::vector<std::thread> threads_;
  bool shut_down_ = false;
};

}  // namespace saga::rpc
