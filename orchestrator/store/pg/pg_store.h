// PgStore: saga::store::Store on PostgreSQL (libpqxx 6.4), with a bounded connection pool,
// group commit and embedded schema migrations.
//
// Model:
// - Create() applies the embedded migrations (migrations/V*.sql) under an advisory lock, then
//   starts `committers` group-commit threads. Connections open lazily, at most `pool_size`.
// - StartSaga and Commit enqueue; each committer thread takes everything queued (at most
//   `max_batch` ops), writes it with ONE statement (kWriteBatch: insert sagas, fenced update,
//   their events) that commits on its own, without BEGIN/COMMIT, then runs the callbacks on
//   that thread. A batch that holds several ops of one saga needs a statement per op of that
//   saga; those statements share one transaction. A batch that fails for a data reason is
//   re-run op by op, so one bad op cannot fail the others.
//   The ops of one saga are written and called back in submission order: while one is in a
//   committer's batch, that saga's later ops wait for the next batch (so a caller may pipeline
//   StartSaga and Commits of a saga without waiting for each callback).
// - Transitions are fenced on (id, owner, fence) and also on the event sequence: a transition
//   with events must start at the row's last_seq + 1, so history rows are never duplicated.
// - All times (leases, due times, created_at...) are the database's clock.
// - Saga ids are accepted in any hex case and returned in lowercase. Inputs and specs are
//   stored as jsonb, so input_json / spec_json come back with jsonb's key order and spacing
//   (equal as JSON, not byte-equal); compare hashes computed by the caller instead.
// - RequestAbort, RequestRetry and ReleaseAll send pg_notify('saga_wake', id or '');
//   PgListener (pg_listener.h) receives it.
//
// Thread-safety: thread-safe. Callbacks run on a committer thread, after COMMIT; they must not
// block, and must not call Shutdown().
//
// Status codes (in addition to those documented in store.h):
// - kInvalidArgument: a saga id that is not a UUID ("saga id 'x' is not a UUID"; reads never
//   send it to the database), text with a NUL byte or a \u0000 escape (PostgreSQL cannot store
//   it), input_json that is not JSON, events whose seq does not count up by one.
// - kUnavailable: database unreachable, pool exhausted for acquire_timeout, store shut down.
// - kAborted: fence, owner or event sequence no longer holds (Commit); a serialization failure
//   or deadlock that persisted after a few internal retries.
// - kNotFound: Commit of a saga that does not exist; reads of a missing saga or definition.
// - kUnknown: the connection broke during COMMIT; the write may or may not have happened.
// - kInternal: any other database error (with the operation and the server's message).
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "orchestrator/store/store.h"

namespace saga::store::pg {

class ConnectionPool;
namespace internal {
struct PendingOp;
}  // namespace internal

struct PgStoreOptions {
  // libpq connection string: URI or key=value; "" uses the PG* environment variables.
  std::string url;
  // Maximum open connections, shared by the committers and the synchronous methods.
  int pool_size = 8;
  // Group-commit threads.
  int committers = 2;
  // Maximum ops per group-commit transaction.
  int max_batch = 256;
  // Group commit's bounded wait: when writes arrive concurrently (the last batch had more than
  // one), a committer waits up to this long for `batch_target` writes before it commits.
  // Zero commits at once. Never applies to a lone writer, so low-load latency is unchanged.
  absl::Duration commit_delay = absl::Microseconds(500);
  int batch_target = 16;
  // How long a method waits for a free connection before kUnavailable.
  absl::Duration acquire_timeout = absl::Seconds(5);
  // libpq connect_timeout (a connect_timeout already in `url` wins). Rounded up to seconds.
  absl::Duration connect_timeout = absl::Seconds(5);
  // Apply the embedded migrations in Create.
  bool run_migrations = true;
  // Honour NewSaga / Transition::write_on_caller: such a write, when no committer is writing
  // and nothing is queued, is written on the submitting thread. At one saga in flight that
  // saves a thread wake-up per write.
  bool write_on_caller = true;
};

class PgStore final : public Store {
 public:
  // Applies migrations (if enabled) and starts the committer threads.
  // kInvalidArgument (bad options), kUnavailable (cannot connect), kFailedPrecondition (the
  // database schema is newer than this binary), kInternal (a migration failed).
  static absl::StatusOr<std::unique_ptr<PgStore>> Create(const PgStoreOptions& options);

  ~PgStore() override;
  PgStore(const PgStore&) = delete;
  PgStore& operator=(const PgStore&) = delete;

  // Commits what is queued, stops the committer threads and closes the connections. Later
  // StartSaga/Commit calls complete at once (on the calling thread) with kUnavailable; the
  // synchronous methods return kUnavailable. Idempotent; called by the destructor.
  void Shutdown();

  // --- Store ---
  absl::StatusOr<PutDefinitionResult> PutDefinition(const DefinitionRecord& record) override;
  absl::StatusOr<DefinitionRecord> GetDefinition(const std::string& name, int version) override;
  absl::StatusOr<std::vector<DefinitionRecord>> ListDefinitions() override;

  void StartSaga(NewSaga saga,
                 absl::AnyInvocable<void(absl::StatusOr<StartResult>) &&> done) override;
  void Commit(Transition transition, absl::AnyInvocable<void(absl::Status) &&> done) override;

  absl::StatusOr<std::vector<ClaimedSaga>> ClaimDue(const std::string& owner, absl::Duration lease,
                                                    int limit) override;
  absl::StatusOr<std::vector<ClaimedSaga>> Reclaim(const std::string& owner, absl::Duration lease,
                                                   const std::vector<std::string>& ids) override;
  absl::StatusOr<std::vector<OwnedSaga>> RenewLeases(const std::string& owner,
                                                     absl::Duration lease) override;
  absl::Status ReleaseAll(const std::string& owner) override;

  absl::StatusOr<SagaRow> RequestAbort(const std::string& id, const std::string& reason) override;
  absl::StatusOr<SagaRow> RequestRetry(const std::string& id) override;

  // One statement (one transaction) per call.
  absl::StatusOr<PurgeResult> PurgeFinished(absl::Duration older_than, int limit) override;

  absl::StatusOr<SagaRow> GetSaga(const std::string& id) override;
  // Events with seq > after_seq, by seq. kNotFound if the saga does not exist.
  absl::StatusOr<std::vector<engine::Event>> ReadEvents(const std::string& id,
                                                        int64_t after_seq) override;
  // Newest first by (created_at, id). limit <= 0 means 100; at most 1000.
  absl::StatusOr<std::vector<SagaRow>> ListSagas(const ListFilter& filter) override;

  // SELECT 1 with a 2 s statement timeout (and at most 2 s waiting for a connection).
  absl::Status Ping() override;

  // --- metrics ---
  // Group-commit transactions committed.
  int64_t batches_committed() const { return batches_committed_.load(); }
  // Ops (StartSaga + Commit, accepted or fenced) in committed group-commit transactions.
  int64_t ops_committed() const { return ops_committed_.load(); }
  // Commits rejected because owner, fence or sequence no longer held.
  int64_t fenced_writes() const { return fenced_writes_.load(); }
  // Sagas deleted by PurgeFinished.
  int64_t sagas_purged() const { return sagas_purged_.load(); }
  // Connections currently lent out.
  int pool_in_use() const;

 private:
  using PendingOp = internal::PendingOp;

  PgStore(const PgStoreOptions& options, std::unique_ptr<ConnectionPool> pool);

  void Enqueue(std::unique_ptr<PendingOp> op);
  void CommitterLoop();
  // True if a queued op's saga is not in another committer's batch.
  bool HasEligibleOpLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes `ops` (validated) and completes them, but does not run callbacks.
  void WriteBatch(const std::vector<PendingOp*>& ops);

  const PgStoreOptions options_;
  std::unique_ptr<ConnectionPool> pool_;

  absl::Mutex mu_;
  std::deque<std::unique_ptr<PendingOp>> queue_ ABSL_GUARDED_BY(mu_);
  // Sagas (lowercase ids) with ops in a batch being written. Their later ops wait, so that the
  // ops of one saga are written, and called back, in the order they were submitted, even with
  // several committers.
  absl::flat_hash_set<std::string> in_flight_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Batches being written, by committers or by submitting threads (write_on_caller).
  int writing_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::thread> committers_;
  absl::Mutex shutdown_mu_;  // serializes Shutdown()
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;

  std::atomic<int64_t> batches_committed_{0};
  std::atomic<int64_t> ops_committed_{0};
  std::atomic<int64_t> fenced_writes_{0};
  std::atomic<int64_t> sagas_purged_{0};
};

}  // namespace saga::store::pg
