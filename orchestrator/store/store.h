// Durable state of definitions and sagas. The runtime and the API see only this interface;
// store/pg implements it on PostgreSQL.
//
// Ownership model: a saga row has an owner (a sagad replica), a lease that expires at a time of
// the database's clock, and a fence that grows by one on every claim. Every write of a running
// saga names the owner and fence it holds; a write whose fence is stale changes nothing and
// fails with kAborted.
//
// Thread-safe: every method may be called from any thread. Synchronous methods block on the
// database; the asynchronous write methods (StartSaga, Commit) are group-committed: writes of
// many sagas share one transaction, and their callbacks run after COMMIT, on a store thread
// (callbacks must not block).
//
// Status codes: kUnavailable (database unreachable, pool exhausted: retry later),
// kAborted (fence or ownership lost), kNotFound, kAlreadyExists, kFailedPrecondition (the
// saga's status does not allow it), kUnknown (the commit's outcome is unknown), kInternal.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "orchestrator/engine/types.h"

namespace saga::store {

struct DefinitionRecord {
  std::string name;
  int version = 0;
  // Canonical JSON of saga.v1.SagaDefinition.
  std::string spec_json;
  std::string content_hash;
  // Serialized google.protobuf.FileDescriptorSet.
  std::string descriptor_set;
  absl::Time created_at;
};

struct PutDefinitionResult {
  int version = 0;
  bool created = false;
};

struct SagaRow {
  std::string id;
  std::string definition_name;
  int definition_version = 0;
  engine::SagaStatus status = engine::SagaStatus::kRunning;
  std::string input_json;
  std::string idempotency_key;  // empty when none was given
  std::string traceparent;
  std::string error;
  absl::Time created_at;
  absl::Time updated_at;
  int64_t last_seq = 0;
  int64_t fence = 0;
  std::string owner;  // empty when unowned
  bool abort_requested = false;
  std::string abort_reason;
  bool retry_requested = false;
};

// A saga created together with its first events (seq 1..n), owned by `owner` from the start.
struct NewSaga {
  std::string id;  // UUID text
  std::string definition_name;
  int definition_version = 0;
  std::string input_json;
  // Hex digest of the input, compared on an idempotency-key conflict.
  std::string input_hash;
  std::string idempotency_key;  // empty: no deduplication
  std::string traceparent;
  std::string owner;
  absl::Duration lease;
  engine::SagaStatus status = engine::SagaStatus::kRunning;
  std::vector<engine::Event> events;
  // The submitting thread may write it itself (`done` then runs inside the call) when the
  // store has nothing else to write, instead of waking a committer. The runtime sets it when
  // this is the only saga it runs: the thread would only wait for the write anyway.
  bool write_on_caller = false;
};

struct StartResult {
  std::string saga_id;
  // False when the idempotency key named an existing saga with the same input.
  bool created = false;
  // The fence the owner holds (1 for a created saga).
  int64_t fence = 0;
};

// One fenced step of a running saga: its new events and the row's new projection.
struct Transition {
  std::string saga_id;
  std::string owner;
  int64_t fence = 0;
  std::vector<engine::Event> events;  // seq continues the saga's history
  engine::SagaStatus status = engine::SagaStatus::kRunning;
  std::string error;
  // The saga reached a terminal or parked status: give up ownership, nothing is due.
  bool release = false;
  // The owner consumed the abort / retry request flags.
  bool clear_requests = false;
  // The submitting thread may write it itself (`done` then runs inside the call) when the
  // store has nothing else to write, instead of waking a committer. The runtime sets it when
  // this is the only saga it runs: the thread would only wait for the write anyway.
  bool write_on_caller = false;
};

struct ClaimedSaga {
  SagaRow row;  // fence is the new fence held by the claimer
  std::vector<engine::Event> events;
};

struct OwnedSaga {
  std::string id;
  bool abort_requested = false;
};

struct PurgeResult {
  int64_t sagas = 0;
  int64_t events = 0;
};

struct ListFilter {
  std::optional<engine::SagaStatus> status;
  std::string definition;  // empty: any
  int limit = 100;
  // Keyset cursor: rows strictly older than (created_at, id).
  std::optional<std::pair<absl::Time, std::string>> before;
};

class Store {
 public:
  virtual ~Store() = default;

  // --- definitions ---
  // Stores a definition: the same content_hash as an existing version of `name` returns that
  // version (created=false); otherwise version = latest + 1.
  virtual absl::StatusOr<PutDefinitionResult> PutDefinition(const DefinitionRecord& record) = 0;
  // version 0 = latest. kNotFound.
  virtual absl::StatusOr<DefinitionRecord> GetDefinition(const std::string& name, int version) = 0;
  // The latest version of every definition, by name.
  virtual absl::StatusOr<std::vector<DefinitionRecord>> ListDefinitions() = 0;

  // --- writes of the runtime (group-committed) ---
  // Creates the saga with its events, or finds the existing one with the same
  // (definition_name, idempotency_key): same input_hash -> that saga (created=false);
  // different -> kAlreadyExists.
  virtual void StartSaga(NewSaga saga,
                         absl::AnyInvocable<void(absl::StatusOr<StartResult>) &&> done) = 0;
  // Appends events and updates the row if owner and fence still hold; kAborted otherwise.
  virtual void Commit(Transition transition, absl::AnyInvocable<void(absl::Status) &&> done) = 0;

  // --- ownership ---
  // Claims up to `limit` sagas that are due (unowned or with an expired lease), bumping each
  // fence, and returns them with their full history.
  virtual absl::StatusOr<std::vector<ClaimedSaga>> ClaimDue(const std::string& owner,
                                                            absl::Duration lease, int limit) = 0;
  // Takes back sagas this owner already owns (after a failed write), bumping their fence.
  virtual absl::StatusOr<std::vector<ClaimedSaga>> Reclaim(const std::string& owner,
                                                           absl::Duration lease,
                                                           const std::vector<std::string>& ids) = 0;
  // Extends the lease of every saga `owner` holds; returns those still held.
  virtual absl::StatusOr<std::vector<OwnedSaga>> RenewLeases(const std::string& owner,
                                                             absl::Duration lease) = 0;
  // Gives up every saga `owner` holds, so that another replica can claim them at once.
  virtual absl::Status ReleaseAll(const std::string& owner) = 0;

  // --- operator requests ---
  // Flags an abort for the owner to act on. kNotFound; kFailedPrecondition if the saga ended.
  // Returns the row after the update.
  virtual absl::StatusOr<SagaRow> RequestAbort(const std::string& id,
                                               const std::string& reason) = 0;
  // Flags a retry of a FAILED saga and makes it due. kFailedPrecondition if not FAILED.
  virtual absl::StatusOr<SagaRow> RequestRetry(const std::string& id) = 0;

  // --- retention ---
  // Deletes up to `limit` sagas that ended COMPLETED or COMPENSATED more than `older_than`
  // ago, with their events; their ids and idempotency keys are then unknown. FAILED sagas,
  // and sagas still running or compensating, are never deleted. kInvalidArgument for a
  // negative `older_than` or a `limit` below 1.
  virtual absl::StatusOr<PurgeResult> PurgeFinished(absl::Duration older_than, int limit) = 0;

  // --- reads ---
  virtual absl::StatusOr<SagaRow> GetSaga(const std::string& id) = 0;
  virtual absl::StatusOr<std::vector<engine::Event>> ReadEvents(const std::string& id,
                                                                int64_t after_seq) = 0;
  virtual absl::StatusOr<std::vector<SagaRow>> ListSagas(const ListFilter& filter) = 0;

  // kOk when the database answers.
  virtual absl::Status Ping() = 0;
};

}  // namespace saga::store
