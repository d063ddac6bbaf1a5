// Driver: the load generator of the fault scenarios, a client of sagad's public API. It starts
// the workload's sagas with at most `in_flight` of them started and not yet ended, retrying each
// StartSaga (same key, same input) on UNAVAILABLE, DEADLINE_EXCEEDED and other transport errors
// until it is acknowledged, round-robin over the replicas' addresses, and follows the sagas to
// their end by polling the `sagas` table (which survives sagad being killed).
//
// Every OK reply is recorded (key -> saga id): the checker's I1 input.
// Thread-safe; Stop() joins the threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "tests/fault/harness/workload.h"

namespace saga::fault {

struct DriverOptions {
  std::vector<std::string> addresses;
  std::string definition = kDefinitionName;
  std::string db_url;  // to follow the sagas to their end
  int in_flight = 100;
  double start_rate = 0;  // starts per second at most; 0: as fast as in_flight allows
  int threads = 6;
  absl::Duration call_deadline = absl::Seconds(5);
  absl::Duration give_up = absl::Seconds(300);  // per saga, for its start
  absl::Duration poll_interval = absl::Milliseconds(200);
};

struct StartRecord {
  std::string key;
  std::string input_json;
  std::string saga_id;  // from the first OK reply
  bool acked = false;
  bool terminal = false;
  std::string status;  // as last polled
  int attempts = 0;
  std::set<std::string> ids_seen;     // every id an OK reply named (I1: exactly one)
  std::map<std::string, int> errors;  // code name -> count
  absl::Time acked_at = absl::InfinitePast();
  absl::Time terminal_seen_at = absl::InfinitePast();
};

class Driver {
 public:
  Driver(DriverOptions options, std::vector<SagaSpec> specs);
  ~Driver();

  void Start();
  // True when every saga was acknowledged (or given up) within `timeout`.
  bool WaitAllStarted(absl::Duration timeout);
  // True when every acknowledged saga was seen terminal within `timeout`.
  bool WaitAllTerminal(absl::Duration timeout);
  void Stop();

  std::vector<StartRecord> Records() const;
  int acked() const { return acked_.load(); }
  int terminal() const { return terminal_.load(); }
  int given_up() const { return given_up_.load(); }
  // Start attempts that failed, by code name.
  std::map<std::string, int> Errors() const;

 private:
  void Worker(int index);
  void Poller();

  const DriverOptions options_;
  std::vector<StartRecord> records_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  size_t next_ = 0;
  int open_ = 0;              // started (or starting) and not seen terminal
  std::set<size_t> pending_;  // acked, not terminal
  absl::Time first_start_ = absl::InfinitePast();
  int64_t issued_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> acked_{0};
  std::atomic<int> terminal_{0};
  std::atomic<int> given_up_{0};
  std::vector<std::thread> threads_;
  std::thread poller_;
};

// A code name for a grpc status code number ("UNAVAILABLE").
std::string CodeName(int code);

}  // namespace saga::fault
