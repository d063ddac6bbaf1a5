// PgListener: receives PostgreSQL NOTIFY messages of one channel (the store sends
// pg_notify('saga_wake', <saga id or ''>)) on a dedicated connection, so that replicas wake at
// once instead of waiting for their next poll. Notifications are hints: after a reconnect some
// may have been missed, so Run reports an empty payload ("poll now").
//
// Thread-safety: Create is thread-safe; one thread calls Run at a time.
//
// Status codes: Create returns kInvalidArgument (channel is not a plain lowercase identifier)
// or kUnavailable (cannot connect / LISTEN).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace saga::store::pg {

class PgListener {
 public:
  // Connects and issues LISTEN, so notifications sent after Create returns are not lost.
  // `url` as PgStoreOptions::url; `channel` like "saga_wake".
  static absl::StatusOr<std::unique_ptr<PgListener>> Create(const std::string& url,
                                                            const std::string& channel);
  ~PgListener();
  PgListener(const PgListener&) = delete;
  PgListener& operator=(const PgListener&) = delete;

  // Blocks until `stop` is true (observed within ~250 ms; while a reconnect attempt is in
  // progress, within the 5 s connect timeout), calling `on_notify(payload)` on this thread for
  // each notification. When the connection breaks it reconnects with backoff (100 ms doubling
  // to 5 s) and then calls on_notify("") so the caller re-polls.
  void Run(std::function<void(std::string payload)> on_notify, const std::atomic<bool>& stop);

 private:
  struct Connection;

  PgListener(std::string conninfo, std::string channel, std::unique_ptr<Connection> conn);
  static absl::StatusOr<std::unique_ptr<Connection>> Connect(const std::string& conninfo,
                                                             const std::string& channel);

  const std::string conninfo_;
  const std::string channel_;
  std::unique_ptr<Connection> conn_;
};

}  // namespace saga::store::pg
