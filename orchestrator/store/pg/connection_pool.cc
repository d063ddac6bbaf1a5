#include "orchestrator/store/pg/connection_pool.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"

namespace saga::store::pg {
namespace {

// The server's message on one line ("ERROR:  x\nDETAIL:  y\n" -> "ERROR:  x DETAIL:  y").
std::string OneLine(const char* what) {
  std::string text = absl::StrReplaceAll(what, {{"\n", " "}});
  absl::StripTrailingAsciiWhitespace(&text);
  return text;
}

enum class Retry { kNo, kConflict, kReconnect };

struct Classified {
  absl::Status status;
  Retry retry = Retry::kNo;
  // The connection must not be reused.
  bool broken = false;
};

Classified Classify(std::string_view op, const std::exception& e, bool committing) {
  const std::string message = absl::StrFormat("%s: %s", op, OneLine(e.what()));
  if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr ||
      dynamic_cast<const pqxx::statement_completion_unknown*>(&e) != nullptr) {
    return {absl::UnknownError(absl::StrCat(message, " (outcome unknown)")), Retry::kNo, true};
  }
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) {
    if (committing) {
      return {absl::UnknownError(absl::StrCat(message, " (connection lost during COMMIT)")),
              Retry::kNo, true};
    }
    return {absl::UnavailableError(message), Retry::kReconnect, true};
  }
  if (const auto* sql_error = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string& state = sql_error->sqlstate();
    if (state == "40001" || state == "40P01") {
      return {absl::AbortedError(message), Retry::kConflict, false};
    }
    if (state == "40003") return {absl::UnknownError(message), Retry::kNo, true};
    if (state == "23505") return {absl::AlreadyExistsError(message), Retry::kNo, false};
    // untranslatable_character (\u0000 in jsonb), character_not_in_repertoire (bad UTF-8).
    if (state == "22P05" || state == "22021") {
      return {absl::InvalidArgumentError(message), Retry::kNo, false};
    }
    // connection_exception, too_many_connections, admin/crash shutdown, cannot_connect_now.
    if (absl::StartsWith(state, "08") || state == "53300" || state == "57P01" || state == "57P02" ||
        state == "57P03") {
      if (committing) return {absl::UnknownError(message), Retry::kNo, true};
      return {absl::UnavailableError(message), Retry::kReconnect, true};
    }
    if (state == "57014") {  // query_canceled: statement_timeout
      return {absl::UnavailableError(message), Retry::kNo, false};
    }
    return {absl::InternalError(message), Retry::kNo, false};
  }
  // Anything else (conversion errors, usage errors, std::bad_alloc, JSON parse errors): the
  // connection's state is not known; do not reuse it.
  if (committing) return {absl::UnknownError(message), Retry::kNo, true};
  return {absl::InternalError(message), Retry::kNo, true};
}

}  // namespace

absl::StatusOr<std::unique_ptr<pqxx::connection>> OpenConnection(
    const std::string& conninfo, std::span<const sql::Statement> statements) {
  try {
    auto conn = std::make_unique<pqxx::connection>(conninfo);
    // Plan each prepared statement once. With the default (auto), PostgreSQL re-plans
    // statements whose parameters are arrays on every execution, because a plan for the actual
    // array lengths looks cheaper than the generic one; for the group-commit statement that
    // planning (about 0.6 ms) costs more than running it. Every statement of statements.h
    // reaches its rows through an index whatever its parameters, so one plan serves all.
    conn->set_variable("plan_cache_mode", "force_generic_plan");
    // A plan is made once per connection, often while the tables are still small (a new
    // database, or statistics not yet gathered), when a sequential scan looks cheapest; it
    // would then be kept while the tables grow. Every statement has an index to use.
    conn->set_variable("enable_seqscan", "off");
    for (const sql::Statement& statement : statements) {
      conn->prepare(std::string(statement.name), std::string(statement.sql));
    }
    return conn;
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrFormat("connect to PostgreSQL: %s", OneLine(e.what())));
  }
}

absl::Status StatusFromException(std::string_view op, const std::exception& e, bool committing) {
  return Classify(op, e, committing).status;
}

ConnectionPool::ConnectionPool(std::string conninfo, int size, absl::Duration acquire_timeout)
    : conninfo_(std::move(conninfo)), size_(size), acquire_timeout_(acquire_timeout) {}

ConnectionPool::~ConnectionPool() { Close(); }

ConnectionPool::Handle::Handle(Handle&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)),
      conn_(std::move(other.conn_)),
      broken_(other.broken_) {}

ConnectionPool::Handle::~Handle() {
  if (pool_ != nullptr) pool_->Release(std::move(conn_), broken_);
}

absl::StatusOr<ConnectionPool::Handle> ConnectionPool::Acquire(absl::Duration timeout) {
  if (timeout == absl::InfiniteDuration()) timeout = acquire_timeout_;
  std::unique_ptr<pqxx::connection> conn;
  {
    absl::MutexLock lock(&mu_);
    auto free_slot = [this]()
                         ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return closed_ || in_use_ < size_; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&free_slot), timeout)) {
      return absl::UnavailableError(
          absl::StrFormat("connection pool exhausted: %d connections in use for %s", in_use_,
                          absl::FormatDuration(timeout)));
    }
    if (closed_) return absl::UnavailableError("connection pool is closed");
    ++in_use_;
    if (!idle_.empty()) {
      conn = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  if (conn == nullptr) {
    absl::StatusOr<std::unique_ptr<pqxx::connection>> opened =
        OpenConnection(conninfo_, sql::kPreparedStatements);
    if (!opened.ok()) {
      absl::MutexLock lock(&mu_);
      --in_use_;
      return opened.status();
    }
    conn = *std::move(opened);
  }
  return Handle(this, std::move(conn));
}

void ConnectionPool::Release(std::unique_ptr<pqxx::connection> conn, bool broken) {
  std::unique_ptr<pqxx::connection> to_close;
  {
    absl::MutexLock lock(&mu_);
    --in_use_;
    if (broken || closed_ || conn == nullptr || !conn->is_open()) {
      to_close = std::move(conn);
    } else {
      idle_.push_back(std::move(conn));
    }
  }
  // Closing a connection may block on the network: outside the lock. Never throws.
  to_close.reset();
}

void ConnectionPool::DiscardIdle() {
  std::vector<std::unique_ptr<pqxx::connection>> to_close;
  {
    absl::MutexLock lock(&mu_);
    to_close.swap(idle_);
  }
}

void ConnectionPool::Close() {
  std::vector<std::unique_ptr<pqxx::connection>> to_close;
  {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    to_close.swap(idle_);
  }
}

int ConnectionPool::in_use() const {
  absl::MutexLock lock(&mu_);
  return in_use_;
}

namespace {

// Runs `fn` on a pooled connection in a `Txn` (pqxx::work or pqxx::nontransaction), with the
// retries WithTransaction documents. `autocommit`: each statement commits on its own, so a
// connection lost at any point leaves the outcome unknown.
template <typename Txn>
absl::Status RunWithRetries(ConnectionPool& pool, std::string_view op,
                            absl::FunctionRef<absl::Status(pqxx::transaction_base&)> fn,
                            const TransactionOptions& options, bool autocommit) {
  int conflict_attempts = 0;
  int reconnects = 0;
  while (true) {
    absl::StatusOr<ConnectionPool::Handle> handle = pool.Acquire(options.acquire_timeout);
    if (!handle.ok()) {
      return absl::Status(handle.status().code(),
                          absl::StrFormat("%s: %s", op, handle.status().message()));
    }
    bool committing = autocommit;
    Classified failure;
    try {
      Txn txn(handle->conn());
      absl::Status status = fn(txn);
      if (!status.ok()) {
        txn.abort();
        return status;
      }
      committing = true;
      txn.commit();
      return absl::OkStatus();
    } catch (const std::exception& e) {
      failure = Classify(op, e, committing);
    }
    if (failure.broken) {
      handle->MarkBroken();
      if (failure.retry == Retry::kReconnect) pool.DiscardIdle();
    }
    // A conflict (deadlock, serialization failure) rolled back everything, even the one
    // statement of an autocommit run: running it again is safe.
    if (failure.retry == Retry::kConflict && ++conflict_attempts < options.max_conflict_attempts) {
      absl::SleepFor(absl::Milliseconds(2 * conflict_attempts));
      continue;
    }
    // The transaction never reached COMMIT, so one retry on a fresh connection is safe.
    if (failure.retry == Retry::kReconnect && ++reconnects <= 1) continue;
    return failure.status;
  }
}

}  // namespace

absl::Status WithTransaction(ConnectionPool& pool, std::string_view op,
                             absl::FunctionRef<absl::Status(pqxx::transaction_base&)> fn,
                             const TransactionOptions& options) {
  return RunWithRetries<pqxx::work>(pool, op, fn, options, /*autocommit=*/false);
}

absl::Status WithAutocommit(ConnectionPool& pool, std::string_view op,
                            absl::FunctionRef<absl::Status(pqxx::transaction_base&)> fn,
                            const TransactionOptions& options) {
  return RunWithRetries<pqxx::nontransaction>(pool, op, fn, options, /*autocommit=*/true);
}

}  // namespace saga::store::pg
