#include "orchestrator/rpc/completion_queue.h"

#include <pthread.h>

#include <algorithm>

namespace saga::rpc {

CqRunner::CqRunner(grpc::CompletionQueue* cq, int threads, std::string thread_name)
    : cq_(cq), thread_count_(std::max(1, threads)), thread_name_(std::move(thread_name)) {}

CqRunner::~CqRunner() { ShutdownAndJoin(); }

void CqRunner::Start() {
  for (int i = 0; i < thread_count_; ++i) {
    threads_.emplace_back([this] {
      // Linux limits thread names to 15 characters.
      pthread_setname_np(pthread_self(), thread_name_.substr(0, 15).c_str());
      Loop();
    });
  }
}

void CqRunner::ShutdownAndJoin() {
  if (shut_down_) return;
  shut_down_ = true;
  cq_->Shutdown();
  if (threads_.empty()) {
    Loop();  // never started: drain on this thread
    return;
  }
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

void CqRunner::Loop() {
  void* tag = nullptr;
  bool ok = false;
  while (cq_->Next(&tag, &ok)) {
    static_cast<Tag*>(tag)->Proceed(ok);
  }
}

}  // namespace saga::rpc
