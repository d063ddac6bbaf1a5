// ConnectionPool: a bounded pool of pqxx::connection, each used by one thread at a time, and
// WithTransaction, the one place where the store catches libpqxx exceptions and maps them to
// absl::Status (STYLE.md section 3).
//
// Connections open lazily (on Acquire, when no idle one is left) and prepare every statement
// of statements.h (libpqxx registers them with the server on first use). A connection seen
// broken is dropped, together with the idle ones (they likely lost the same server).
//
// Thread-safe. Internal to store/pg: this header includes libpqxx.
//
// Status codes: kUnavailable (cannot connect; no connection free within the timeout; pool
// closed; connection lost), kAborted (serialization failure or deadlock after retries),
// kUnknown (the connection broke during COMMIT), kAlreadyExists (unique violation),
// kInvalidArgument (text PostgreSQL cannot store, e.g. \u0000 in jsonb), kInternal (any other
// error; the message carries the operation and the server's message, never the conninfo).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <pqxx/pqxx>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "orchestrator/store/pg/statements.h"

namespace saga::store::pg {

// Opens a connection and prepares `statements` on it; kUnavailable with the server's message
// on failure.
absl::StatusOr<std::unique_ptr<pqxx::connection>> OpenConnection(
    const std::string& conninfo, std::span<const sql::Statement> statements);

class ConnectionPool {
 public:
  // `conninfo` should carry a connect_timeout. `size` >= 1.
  ConnectionPool(std::string conninfo, int size, absl::Duration acquire_timeout);
  ~ConnectionPool();
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;

  // Exclusive use of one connection until destroyed.
  class Handle {
   public:
    Handle(Handle&& other) noexcept;
    Handle& operator=(Handle&&) = delete;
    ~Handle();
    pqxx::connection& conn() { return *conn_; }
    // The connection is not returned to the pool.
    void MarkBroken() { broken_ = true; }

   private:
    friend class ConnectionPool;
    Handle(ConnectionPool* pool, std::unique_ptr<pqxx::connection> conn)
        : pool_(pool), conn_(std::move(conn)) {}
    ConnectionPool* pool_;
    std::unique_ptr<pqxx::connection> conn_;
    bool broken_ = false;
  };

  // Waits up to `timeout` (the pool's acquire_timeout when InfiniteDuration) for a free slot.
  absl::StatusOr<Handle> Acquire(absl::Duration timeout = absl::InfiniteDuration());

  // Drops the idle connections (after one was found broken).
  void DiscardIdle();
  // Closes idle connections now and busy ones when released; Acquire fails afterwards.
  void Close();

  int in_use() const;

 private:
  void Release(std::unique_ptr<pqxx::connection> conn, bool broken);

  const std::string conninfo_;
  const int size_;
  const absl::Duration acquire_timeout_;

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_ ABSL_GUARDED_BY(mu_);
  int in_use_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

struct TransactionOptions {
  // Pool acquire timeout; InfiniteDuration: the pool's default.
  absl::Duration acquire_timeout = absl::InfiniteDuration();
  // Attempts on serialization failure / deadlock before kAborted.
  int max_conflict_attempts = 4;
};

// Runs `fn` in a READ COMMITTED transaction on a pooled connection and commits it if `fn`
// returns OK (rolls back otherwise and returns fn's status). `fn` may run more than once
// (retries after serialization failures, deadlocks and a connection lost before COMMIT), so
// it must reset its outputs on entry. Exceptions never escape.
absl::Status WithTransaction(ConnectionPool& pool, std::string_view op,
                             absl::FunctionRef<absl::Status(pqxx::transaction_base&)> fn,
                             const TransactionOptions& options = {});

// Like WithTransaction, but without BEGIN and COMMIT: each statement `fn` runs commits on its
// own (two round trips fewer). For work whose only change is one statement, which PostgreSQL
// applies atomically, possibly followed by reads. Retried on serialization failures and
// deadlocks (the statement was rolled back) and when connecting fails; a connection lost
// while `fn` runs is kUnknown, since the statement may have committed.
absl::Status WithAutocommit(ConnectionPool& pool, std::string_view op,
                            absl::FunctionRef<absl::Status(pqxx::transaction_base&)> fn,
                            const TransactionOptions& options = {});

// Maps an exception thrown by libpqxx (or anything else) during `op` to a status. Used where a
// transaction is not pooled (migrations, listener). `committing`: the exception came from
// COMMIT, so a lost connection makes the outcome unknown.
absl::Status StatusFromException(std::string_view op, const std::exception& e, bool committing);

}  // namespace saga::store::pg
