#include "orchestrator/store/pg/pg_store.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string_view>
#include <utility>

#include <pqxx/pqxx>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "orchestrator/common/status_macros.h"
#include "orchestrator/store/pg/array_literal.h"
#include "orchestrator/store/pg/connection_pool.h"
#include "orchestrator/store/pg/conninfo.h"
#include "orchestrator/store/pg/migrations.h"
#include "orchestrator/store/pg/statements.h"

namespace saga::store::pg {

using engine::Event;
using engine::EventType;
using engine::SagaStatus;

namespace internal {

// One queued StartSaga or Commit.
struct PendingOp {
  bool is_start = false;
  NewSaga saga;
  Transition transition;
  absl::AnyInvocable<void(absl::StatusOr<StartResult>) &&> start_done;
  absl::AnyInvocable<void(absl::Status) &&> commit_done;

  // The saga id in lowercase, which orders the ops of one saga (see PgStore::in_flight_).
  std::string order_key;

  // Encoded event details (nullopt: empty object, stored as NULL), set by validation.
  std::vector<std::optional<std::string>> details;

  // The outcome.
  absl::Status status;
  StartResult result;

  const std::string& saga_id() const { return is_start ? saga.id : transition.saga_id; }
  const std::vector<Event>& events() const { return is_start ? saga.events : transition.events; }

  // Runs the callback (if any) with the outcome.
  void Complete() && {
    if (is_start) {
      if (!start_done) return;
      if (status.ok()) {
        std::move(start_done)(std::move(result));
      } else {
        std::move(start_done)(status);
      }
    } else if (commit_done) {
      std::move(commit_done)(status);
    }
  }
};

}  // namespace internal

namespace {

using internal::PendingOp;

// Longest lease accepted; longer ones are clamped (the interval arithmetic must not overflow).
constexpr absl::Duration kMaxLease = absl::Hours(24 * 365);
constexpr int kDefaultListLimit = 100;
constexpr int kMaxListLimit = 1000;
constexpr absl::Duration kPingTimeout = absl::Seconds(2);

std::string Name(const sql::Statement& statement) { return std::string(statement.name); }

// The text stored in sagas.status: the engine's name; empty for a value outside the enum.
std::string_view StatusText(SagaStatus status) {
  const std::string_view name = engine::SagaStatusName(status);
  SagaStatus known;
  return engine::ParseSagaStatus(name, &known) ? name : std::string_view();
}

std::optional<SagaStatus> ParseStatusText(std::string_view text) {
  SagaStatus status;
  if (!engine::ParseSagaStatus(text, &status)) return std::nullopt;
  return status;
}

// A printable, bounded rendering of client text for error messages.
std::string Quoted(std::string_view text) {
  constexpr size_t kMax = 64;
  std::string_view head = text.substr(0, kMax);
  std::string out = absl::CHexEscape(absl::string_view(head.data(), head.size()));
  if (text.size() > kMax) out.append("...");
  return out;
}

// The canonical lowercase form of a UUID in 8-4-4-4-12 hex form.
absl::StatusOr<std::string> NormalizeSagaId(std::string_view id) {
  bool ok = id.size() == 36;
  for (size_t i = 0; ok && i < id.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      ok = id[i] == '-';
    } else {
      ok = absl::ascii_isxdigit(static_cast<unsigned char>(id[i]));
    }
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrFormat("saga id '%s' is not a UUID", Quoted(id)));
  }
  return absl::AsciiStrToLower(std::string(id));
}

absl::Status CheckText(std::string_view what, std::string_view text) {
  if (text.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s contains a NUL byte, which PostgreSQL cannot store", what));
  }
  return absl::OkStatus();
}

// True if JSON text holds the escape \u0000, which jsonb rejects. Backslashes occur in JSON only
// as escapes inside strings, so scanning escape pairs from the left is exact.
bool HasNulEscape(std::string_view json) {
  for (size_t i = 0; i < json.size(); ++i) {
    if (json[i] != '\\') continue;
    if (json.substr(i + 1, 5) == "u0000") return true;
    ++i;  // skip the escaped character
  }
  return false;
}

absl::Status CheckJson(std::string_view what, std::string_view json) {
  SAGA_RETURN_IF_ERROR(CheckText(what, json));
  if (!nlohmann::json::accept(json)) {
    return absl::InvalidArgumentError(absl::StrFormat("%s is not valid JSON", what));
  }
  if (HasNulEscape(json)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s contains \\u0000, which PostgreSQL cannot store", what));
  }
  return absl::OkStatus();
}

// An event's detail as stored: NULL for an empty object, else its JSON text.
absl::StatusOr<std::optional<std::string>> EncodeDetail(const nlohmann::json& detail) {
  if (detail.is_object() && detail.empty()) return std::nullopt;
  std::string text;
  try {
    text = detail.dump();
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("event detail: ", e.what()));
  }
  if (HasNulEscape(text)) {
    return absl::InvalidArgumentError(
        "event detail contains \\u0000, which PostgreSQL cannot store");
  }
  return text;
}

// Checks the events (seq first_seq, first_seq + 1, ...) and encodes their details.
absl::Status PrepareEvents(const std::string& saga_id, const std::vector<Event>& events,
                           std::optional<int64_t> first_seq,
                           std::vector<std::optional<std::string>>* details) {
  details->clear();
  for (size_t i = 0; i < events.size(); ++i) {
    const Event& event = events[i];
    const int64_t expected = first_seq.has_value()
                                 ? *first_seq + static_cast<int64_t>(i)
                                 : (i == 0 ? event.seq : events[0].seq + static_cast<int64_t>(i));
    if (event.seq != expected || event.seq < 1) {
      return absl::InvalidArgumentError(
          absl::StrFormat("saga %s: event seq %d out of order (expected %d)", saga_id, event.seq,
                          std::max<int64_t>(expected, 1)));
    }
    const int type = static_cast<int>(event.type);
    if (type < 1 || type > 32767) {
      return absl::InvalidArgumentError(
          absl::StrFormat("saga %s: event type %d out of range", saga_id, type));
    }
    SAGA_ASSIGN_OR_RETURN(std::optional<std::string> detail, EncodeDetail(event.detail));
    details->push_back(std::move(detail));
  }
  return absl::OkStatus();
}

int64_t LeaseMicros(absl::Duration lease) {
  return absl::ToInt64Microseconds(std::clamp(lease, absl::ZeroDuration(), kMaxLease));
}

absl::Status CheckLease(absl::Duration lease) {
  if (lease < absl::ZeroDuration()) return absl::InvalidArgumentError("lease is negative");
  return absl::OkStatus();
}

absl::Status ValidateStart(PendingOp& op) {
  NewSaga& saga = op.saga;
  SAGA_ASSIGN_OR_RETURN(saga.id, NormalizeSagaId(saga.id));
  if (saga.definition_name.empty()) {
    return absl::InvalidArgumentError("saga definition_name is empty");
  }
  SAGA_RETURN_IF_ERROR(CheckText("definition name", saga.definition_name));
  SAGA_RETURN_IF_ERROR(CheckText("input hash", saga.input_hash));
  SAGA_RETURN_IF_ERROR(CheckText("idempotency key", saga.idempotency_key));
  SAGA_RETURN_IF_ERROR(CheckText("traceparent", saga.traceparent));
  SAGA_RETURN_IF_ERROR(CheckText("owner", saga.owner));
  SAGA_RETURN_IF_ERROR(CheckJson("saga input", saga.input_json));
  SAGA_RETURN_IF_ERROR(CheckLease(saga.lease));
  if (StatusText(saga.status).empty()) return absl::InvalidArgumentError("bad saga status");
  return PrepareEvents(saga.id, saga.events, /*first_seq=*/1, &op.details);
}

absl::Status ValidateCommit(PendingOp& op) {
  Transition& transition = op.transition;
  SAGA_ASSIGN_OR_RETURN(transition.saga_id, NormalizeSagaId(transition.saga_id));
  if (transition.owner.empty()) return absl::InvalidArgumentError("transition owner is empty");
  SAGA_RETURN_IF_ERROR(CheckText("owner", transition.owner));
  SAGA_RETURN_IF_ERROR(CheckText("error", transition.error));
  if (StatusText(transition.status).empty()) {
    return absl::InvalidArgumentError("bad saga status");
  }
  return PrepareEvents(transition.saga_id, transition.events, std::nullopt, &op.details);
}

// Errors that depend on the ops' data, not on the database's state: re-running the ops one by
// one isolates the op that caused it.
bool IsDataError(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return true;
    default:
      return false;
  }
}

// The literal of an array whose elements were validated (no NUL bytes). Should that ever not
// hold, the exception fails the transaction with kInternal (WithTransaction catches it).
std::string Build(const ArrayLiteral& literal) {
  absl::StatusOr<std::string> text = literal.Build();
  if (!text.ok()) throw std::invalid_argument(std::string(text.status().message()));
  return *std::move(text);
}

// Timestamps are read as microseconds since the Unix epoch.
absl::Time FromMicros(const pqxx::field& field) {
  return absl::FromUnixMicros(field.as<int64_t>());
}

// "2024-01-02 03:04:05.123456+00", or +-infinity.
std::string FormatTimestamp(absl::Time t) {
  if (t == absl::InfiniteFuture()) return "infinity";
  if (t == absl::InfinitePast()) return "-infinity";
  return absl::FormatTime("%Y-%m-%d %H:%M:%E6S+00", t, absl::UTCTimeZone());
}

absl::StatusOr<SagaRow> ReadSagaRow(const pqxx::row& row) {
  SagaRow out;
  out.id = row[0].as<std::string>();
  out.definition_name = row[1].as<std::string>();
  out.definition_version = row[2].as<int>();
  const std::string status = row[3].as<std::string>();
  std::optional<SagaStatus> parsed = ParseStatusText(status);
  if (!parsed.has_value()) {
    return absl::InternalError(
        absl::StrFormat("saga %s has unknown status '%s'", out.id, Quoted(status)));
  }
  out.status = *parsed;
  out.input_json = row[4].as<std::string>();
  out.idempotency_key = row[5].as<std::string>();
  out.traceparent = row[6].as<std::string>();
  out.error = row[7].as<std::string>();
  out.created_at = FromMicros(row[8]);
  out.updated_at = FromMicros(row[9]);
  out.last_seq = row[10].as<int64_t>();
  out.fence = row[11].as<int64_t>();
  out.owner = row[12].as<std::string>();
  out.abort_requested = row[13].as<bool>();
  out.abort_reason = row[14].as<std::string>();
  out.retry_requested = row[15].as<bool>();
  return out;
}

// Reads SAGA_PG_EVENT_COLUMNS (column 0 is the saga id). Throws on malformed JSON, which
// WithTransaction maps to kInternal.
Event ReadEvent(const pqxx::row& row) {
  Event event;
  event.seq = row[1].as<int64_t>();
  event.type = static_cast<EventType>(row[2].as<int>());
  event.step = row[3].as<int>();
  event.attempt = row[4].as<int>();
  if (row[5].is_null()) {
    event.detail = nlohmann::json::object();
  } else {
    event.detail = nlohmann::json::parse(row[5].as<std::string>());
  }
  event.recorded_at = FromMicros(row[6]);
  return event;
}

absl::StatusOr<DefinitionRecord> ReadDefinition(const pqxx::row& row) {
  DefinitionRecord out;
  out.name = row[0].as<std::string>();
  out.version = row[1].as<int>();
  out.spec_json = row[2].as<std::string>();
  out.content_hash = row[3].as<std::string>();
  out.descriptor_set = absl::HexStringToBytes(row[4].as<std::string>());
  out.created_at = FromMicros(row[5]);
  return out;
}

// Appends the events of `op` to the six event arrays of kWriteBatch.
struct EventArrays {
  ArrayLiteral saga_id, seq, type, step, attempt, detail;
  int64_t count = 0;

  void Add(const PendingOp& op) {
    const std::vector<Event>& events = op.events();
    for (size_t i = 0; i < events.size(); ++i) {
      saga_id.Add(op.saga_id());
      seq.Add(events[i].seq);
      type.Add(static_cast<int64_t>(events[i].type));
      step.Add(static_cast<int64_t>(events[i].step));
      attempt.Add(static_cast<int64_t>(events[i].attempt));
      detail.AddOptional(op.details[i]);
      ++count;
    }
  }
};

// Reads claimed rows and their full histories (kClaimDue / kReclaim result).
absl::StatusOr<std::vector<ClaimedSaga>> ReadClaimed(pqxx::transaction_base& txn,
                                                     const pqxx::result& rows) {
  std::vector<ClaimedSaga> claimed;
  claimed.reserve(rows.size());
  std::map<std::string, size_t> index;
  ArrayLiteral ids;
  for (const pqxx::row& row : rows) {
    SAGA_ASSIGN_OR_RETURN(SagaRow saga, ReadSagaRow(row));
    index[saga.id] = claimed.size();
    ids.Add(saga.id);
    claimed.push_back(ClaimedSaga{std::move(saga), {}});
  }
  if (claimed.empty()) return claimed;
  for (const pqxx::row& row : txn.exec_prepared(Name(sql::kSelectEventsOfSagas), Build(ids))) {
    auto it = index.find(row[0].as<std::string>());
    if (it == index.end()) continue;
    claimed[it->second].events.push_back(ReadEvent(row));
  }
  return claimed;
}

// --- group commit ---

// The ops that one kWriteBatch statement writes: starts (at most one per id and per
// (definition, key)) and at most one transition per saga, none of a saga started in the same
// statement (a statement does not see its own inserts).
struct Round {
  std::vector<PendingOp*> starts;
  std::vector<PendingOp*> transitions;
};

// Splits a batch into rounds that run in order. Round 0 has every start that can be inserted
// (the others are resolved against what exists afterwards, exactly as if they had come in a
// later batch) and the first transition of every saga; the k-th transition of a saga goes
// into round k (k + 1 when the batch also starts that saga). Each list is sorted: a stable
// order of unique-index insertions and row locks across concurrent writers avoids deadlocks.
std::vector<Round> PlanRounds(const std::vector<PendingOp*>& ops) {
  std::vector<Round> rounds(1);
  std::set<std::string> seen_ids;
  std::set<std::pair<std::string, std::string>> seen_keys;
  for (PendingOp* op : ops) {
    if (!op->is_start) continue;
    const NewSaga& saga = op->saga;
    bool duplicate = !seen_ids.insert(saga.id).second;
    if (!saga.idempotency_key.empty() &&
        !seen_keys.insert({saga.definition_name, saga.idempotency_key}).second) {
      duplicate = true;
    }
    if (!duplicate) rounds[0].starts.push_back(op);
  }
  std::map<std::string, size_t> occurrences;
  for (PendingOp* op : ops) {
    if (op->is_start) continue;
    const std::string& id = op->transition.saga_id;
    const size_t round = occurrences[id]++ + (seen_ids.contains(id) ? 1 : 0);
    if (rounds.size() <= round) rounds.resize(round + 1);
    rounds[round].transitions.push_back(op);
  }
  std::sort(rounds[0].starts.begin(), rounds[0].starts.end(),
            [](const PendingOp* a, const PendingOp* b) {
              return std::tie(a->saga.definition_name, a->saga.idempotency_key, a->saga.id) <
                     std::tie(b->saga.definition_name, b->saga.idempotency_key, b->saga.id);
            });
  for (Round& round : rounds) {
    std::sort(round.transitions.begin(), round.transitions.end(),
              [](const PendingOp* a, const PendingOp* b) {
                return a->transition.saga_id < b->transition.saga_id;
              });
  }
  return rounds;
}

// Answers the starts that kWriteBatch did not create: the same start again (an existing saga
// with the same id, or the same definition and key, and the same input) gets the existing
// saga; a different input is kAlreadyExists.
void ResolveStarts(pqxx::transaction_base& tx, const std::vector<PendingOp*>& unresolved) {
  struct Existing {
    std::string id, definition_name, key, input_hash;
    int64_t fence = 0;
  };
  ArrayLiteral ids, key_definitions, keys;
  for (const PendingOp* op : unresolved) {
    ids.Add(op->saga.id);
    if (!op->saga.idempotency_key.empty()) {
      key_definitions.Add(op->saga.definition_name);
      keys.Add(op->saga.idempotency_key);
    }
  }
  std::map<std::string, Existing> by_id;
  std::map<std::pair<std::string, std::string>, Existing> by_key;
  for (const pqxx::row& row : tx.exec_prepared(Name(sql::kSelectStartConflicts), Build(ids),
                                               Build(key_definitions), Build(keys))) {
    Existing existing{row[0].as<std::string>(), row[1].as<std::string>(), row[2].as<std::string>(),
                      row[3].as<std::string>(), row[4].as<int64_t>()};
    by_id[existing.id] = existing;
    if (!existing.key.empty()) by_key[{existing.definition_name, existing.key}] = existing;
  }
  for (PendingOp* op : unresolved) {
    const NewSaga& saga = op->saga;
    if (!saga.idempotency_key.empty()) {
      auto it = by_key.find({saga.definition_name, saga.idempotency_key});
      if (it != by_key.end()) {
        if (it->second.input_hash == saga.input_hash) {
          op->result = StartResult{it->second.id, /*created=*/false, it->second.fence};
        } else {
          op->status = absl::AlreadyExistsError(
              absl::StrFormat("idempotency key '%s' was used with a different input",
                              Quoted(saga.idempotency_key)));
        }
        continue;
      }
    }
    auto it = by_id.find(saga.id);
    if (it != by_id.end() && it->second.definition_name == saga.definition_name &&
        it->second.input_hash == saga.input_hash && it->second.key == saga.idempotency_key) {
      // The same start again (e.g. retried after kUnknown).
      op->result = StartResult{it->second.id, /*created=*/false, it->second.fence};
    } else if (it != by_id.end()) {
      op->status = absl::AlreadyExistsError(absl::StrFormat("saga id %s already exists", saga.id));
    } else {
      // Conflicted with a row that no longer exists: the caller may simply retry.
      op->status = absl::AbortedError(
          absl::StrFormat("saga %s: concurrent conflicting start, retry", saga.id));
    }
  }
}

// Tells why transitions were rejected (counted in `fenced`): a stale fence, another owner, or
// a history that moved on.
void ExplainRejected(pqxx::transaction_base& tx, const std::vector<PendingOp*>& rejected,
                     int64_t* fenced) {
  struct Current {
    std::string owner;
    int64_t fence = 0;
    int64_t last_seq = 0;
  };
  ArrayLiteral rejected_ids;
  for (const PendingOp* op : rejected) rejected_ids.Add(op->transition.saga_id);
  std::map<std::string, Current> current;
  for (const pqxx::row& row : tx.exec_prepared(Name(sql::kSelectFences), Build(rejected_ids))) {
    current[row[0].as<std::string>()] =
        Current{row[1].as<std::string>(), row[2].as<int64_t>(), row[3].as<int64_t>()};
  }
  for (PendingOp* op : rejected) {
    const Transition& t = op->transition;
    auto it = current.find(t.saga_id);
    if (it == current.end()) {
      op->status = absl::NotFoundError(absl::StrFormat("saga %s not found", t.saga_id));
      continue;
    }
    ++*fenced;
    if (it->second.fence != t.fence) {
      op->status = absl::AbortedError(absl::StrFormat(
          "saga %s: fence %d is stale (current fence %d)", t.saga_id, t.fence, it->second.fence));
    } else if (it->second.owner != t.owner) {
      op->status =
          absl::AbortedError(absl::StrFormat("saga %s: fence %d is stale (no longer owned by %s)",
                                             t.saga_id, t.fence, Quoted(t.owner)));
    } else {
      op->status = absl::AbortedError(
          absl::StrFormat("saga %s: events start at seq %d but the history ends at %d", t.saga_id,
                          t.events.front().seq, it->second.last_seq));
    }
  }
}

// Runs kWriteOneStart or kWriteOneTransition for a round of exactly one op; the result rows are
// kWriteBatch's.
pqxx::result ExecWriteOne(pqxx::transaction_base& tx, const Round& round) {
  const PendingOp& op = round.starts.empty() ? *round.transitions.front() : *round.starts.front();
  EventArrays events;
  events.Add(op);
  if (!round.starts.empty()) {
    const NewSaga& saga = op.saga;
    return tx.exec_prepared(
        Name(sql::kWriteOneStart), saga.id, saga.definition_name, saga.definition_version,
        std::string(StatusText(saga.status)), saga.input_json, saga.input_hash,
        saga.idempotency_key, saga.traceparent, saga.owner, LeaseMicros(saga.lease),
        static_cast<int64_t>(saga.events.size()), Build(events.seq), Build(events.type),
        Build(events.step), Build(events.attempt), Build(events.detail));
  }
  const Transition& t = op.transition;
  const int64_t prev_seq = t.events.empty() ? -1 : t.events.front().seq - 1;
  const int64_t last_seq = t.events.empty() ? -1 : t.events.back().seq;
  return tx.exec_prepared(Name(sql::kWriteOneTransition), t.saga_id, t.fence, t.owner,
                          std::string(StatusText(t.status)), t.error, prev_seq, last_seq, t.release,
                          t.clear_requests, Build(events.seq), Build(events.type),
                          Build(events.step), Build(events.attempt), Build(events.detail));
}

// Runs kWriteBatch for a round.
pqxx::result ExecWriteBatch(pqxx::transaction_base& tx, const Round& round) {
  ArrayLiteral id, definition_name, definition_version, status, input, input_hash, key, traceparent,
      owner, lease_us, last_seq;
  EventArrays events;
  for (const PendingOp* op : round.starts) {
    const NewSaga& saga = op->saga;
    id.Add(saga.id);
    definition_name.Add(saga.definition_name);
    definition_version.Add(static_cast<int64_t>(saga.definition_version));
    status.Add(StatusText(saga.status));
    input.Add(saga.input_json);
    input_hash.Add(saga.input_hash);
    key.Add(saga.idempotency_key);
    traceparent.Add(saga.traceparent);
    owner.Add(saga.owner);
    lease_us.Add(LeaseMicros(saga.lease));
    last_seq.Add(static_cast<int64_t>(saga.events.size()));
    events.Add(*op);
  }
  ArrayLiteral t_id, t_fence, t_owner, t_status, t_error, t_prev_seq, t_last_seq, t_release,
      t_clear_requests;
  for (const PendingOp* op : round.transitions) {
    const Transition& t = op->transition;
    t_id.Add(t.saga_id);
    t_fence.Add(t.fence);
    t_owner.Add(t.owner);
    t_status.Add(StatusText(t.status));
    t_error.Add(t.error);
    if (t.events.empty()) {
      t_prev_seq.AddNull();
      t_last_seq.AddNull();
    } else {
      t_prev_seq.Add(t.events.front().seq - 1);
      t_last_seq.Add(t.events.back().seq);
    }
    t_release.AddBool(t.release);
    t_clear_requests.AddBool(t.clear_requests);
    events.Add(*op);
  }
  return tx.exec_prepared(
      Name(sql::kWriteBatch), Build(id), Build(definition_name), Build(definition_version),
      Build(status), Build(input), Build(input_hash), Build(key), Build(traceparent), Build(owner),
      Build(lease_us), Build(last_seq), Build(t_id), Build(t_fence), Build(t_owner),
      Build(t_status), Build(t_error), Build(t_prev_seq), Build(t_last_seq), Build(t_release),
      Build(t_clear_requests), Build(events.saga_id), Build(events.seq), Build(events.type),
      Build(events.step), Build(events.attempt), Build(events.detail));
}

// Writes one round with one statement (kWriteBatch, or the lean one for a round of one op),
// then answers its ops: created starts and accepted transitions succeed; the others are
// resolved or explained.
absl::Status WriteRound(pqxx::transaction_base& tx, const Round& round, int64_t* fenced) {
  const bool one_op = round.starts.size() + round.transitions.size() == 1;
  const pqxx::result rows = one_op ? ExecWriteOne(tx, round) : ExecWriteBatch(tx, round);
  std::set<std::string> created;
  std::set<std::string> accepted;
  int64_t events_inserted = 0;
  for (const pqxx::row& row : rows) {
    const std::string_view kind = row[0].c_str();
    if (kind == "S") {
      created.insert(row[1].as<std::string>());
    } else if (kind == "T") {
      accepted.insert(row[1].as<std::string>());
    } else {
      events_inserted = row[1].as<int64_t>();
    }
  }

  int64_t events_expected = 0;
  for (PendingOp* op : round.starts) {
    if (!created.contains(op->saga.id)) continue;
    op->result = StartResult{op->saga.id, /*created=*/true, /*fence=*/1};
    events_expected += static_cast<int64_t>(op->saga.events.size());
  }
  std::vector<PendingOp*> rejected;
  for (PendingOp* op : round.transitions) {
    if (accepted.contains(op->transition.saga_id)) {
      events_expected += static_cast<int64_t>(op->transition.events.size());
    } else {
      rejected.push_back(op);
    }
  }
  if (events_inserted != events_expected) {
    return absl::InternalError(
        absl::StrFormat("write batch: %d of %d events inserted (history rows already existed)",
                        events_inserted, events_expected));
  }
  if (!rejected.empty()) ExplainRejected(tx, rejected, fenced);
  return absl::OkStatus();
}

// Writes the rounds in order; the starts that round 0 did not create are resolved after it.
absl::Status WriteRounds(pqxx::transaction_base& tx, const std::vector<PendingOp*>& ops,
                         const std::vector<Round>& rounds, int64_t* fenced) {
  for (size_t r = 0; r < rounds.size(); ++r) {
    SAGA_RETURN_IF_ERROR(WriteRound(tx, rounds[r], fenced));
    if (r != 0) continue;
    std::vector<PendingOp*> unresolved;
    for (PendingOp* op : ops) {
      if (op->is_start && op->result.saga_id.empty()) unresolved.push_back(op);
    }
    if (!unresolved.empty()) ResolveStarts(tx, unresolved);
  }
  return absl::OkStatus();
}

}  // namespace

// --- lifecycle ---

absl::StatusOr<std::unique_ptr<PgStore>> PgStore::Create(const PgStoreOptions& options) {
  if (options.pool_size < 1 || options.committers < 1 || options.max_batch < 1) {
    return absl::InvalidArgumentError("pool_size, committers and max_batch must be >= 1");
  }
  if (options.acquire_timeout <= absl::ZeroDuration() ||
      options.connect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("acquire_timeout and connect_timeout must be positive");
  }
  std::string conninfo = options.url;
  if (!HasConnectionParameter(conninfo, "connect_timeout")) {
    const int64_t seconds = std::max<int64_t>(
        1, absl::ToInt64Seconds(absl::Ceil(options.connect_timeout, absl::Seconds(1))));
    conninfo = WithConnectionParameter(conninfo, "connect_timeout", absl::StrCat(seconds));
  }
  if (!HasConnectionParameter(conninfo, "application_name")) {
    conninfo = WithConnectionParameter(conninfo, "application_name", "saga-orchestrator");
  }
  if (options.run_migrations) SAGA_RETURN_IF_ERROR(ApplyMigrations(conninfo));
  auto pool =
      std::make_unique<ConnectionPool>(conninfo, options.pool_size, options.acquire_timeout);
  return std::unique_ptr<PgStore>(new PgStore(options, std::move(pool)));
}

PgStore::PgStore(const PgStoreOptions& options, std::unique_ptr<ConnectionPool> pool)
    : options_(options), pool_(std::move(pool)) {
  committers_.reserve(static_cast<size_t>(options_.committers));
  for (int i = 0; i < options_.committers; ++i) {
    committers_.emplace_back([this] { CommitterLoop(); });
  }
}

PgStore::~PgStore() { Shutdown(); }

void PgStore::Shutdown() {
  absl::MutexLock shutdown_lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& committer : committers_) committer.join();
  committers_.clear();
  pool_->Close();
}

int PgStore::pool_in_use() const { return pool_->in_use(); }

// --- group commit ---

void PgStore::StartSaga(NewSaga saga,
                        absl::AnyInvocable<void(absl::StatusOr<StartResult>) &&> done) {
  auto op = std::make_unique<PendingOp>();
  op->is_start = true;
  op->saga = std::move(saga);
  op->start_done = std::move(done);
  Enqueue(std::move(op));
}

void PgStore::Commit(Transition transition, absl::AnyInvocable<void(absl::Status) &&> done) {
  auto op = std::make_unique<PendingOp>();
  op->transition = std::move(transition);
  op->commit_done = std::move(done);
  Enqueue(std::move(op));
}

void PgStore::Enqueue(std::unique_ptr<PendingOp> op) {
  op->order_key = absl::AsciiStrToLower(op->saga_id());
  {
    absl::MutexLock lock(&mu_);
    const bool caller_may_write =
        op->is_start ? op->saga.write_on_caller : op->transition.write_on_caller;
    if (stopping_) {
      op->status = absl::UnavailableError("the store is shut down");
    } else if (options_.write_on_caller && caller_may_write && writing_ == 0 && queue_.empty()) {
      // The only write there is: this thread writes it, no committer is woken.
      ++writing_;
      in_flight_.insert(op->order_key);
    } else {
      queue_.push_back(std::move(op));
      return;
    }
  }
  if (op->status.ok()) {
    op->status = op->is_start ? ValidateStart(*op) : ValidateCommit(*op);
    if (op->status.ok()) WriteBatch({op.get()});
    absl::MutexLock lock(&mu_);
    in_flight_.erase(op->order_key);
    --writing_;
  }
  std::move(*op).Complete();
}

bool PgStore::HasEligibleOpLocked() const {
  for (const std::unique_ptr<PendingOp>& op : queue_) {
    if (!in_flight_.contains(op->order_key)) return true;
  }
  return false;
}

void PgStore::CommitterLoop() {
  const size_t max_batch = static_cast<size_t>(options_.max_batch);
  size_t last_batch_size = 0;
  while (true) {
    std::vector<std::unique_ptr<PendingOp>> batch;
    absl::flat_hash_set<std::string> batch_keys;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return (stopping_ && queue_.empty()) || HasEligibleOpLocked();
      };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping, and everything is written
      if (last_batch_size > 1 && options_.commit_delay > absl::ZeroDuration() &&
          queue_.size() < static_cast<size_t>(options_.batch_target)) {
        // Others are writing too: give them a moment to join this commit.
        const size_t target = static_cast<size_t>(options_.batch_target);
        auto enough = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stopping_ || queue_.size() >= target;
        };
        mu_.AwaitWithTimeout(absl::Condition(&enough), options_.commit_delay);
      }
      // Take, in order, every op whose saga is not in another batch; ops of a saga that is
      // stay queued, and so do all later ops of that saga.
      std::deque<std::unique_ptr<PendingOp>> rest;
      for (std::unique_ptr<PendingOp>& op : queue_) {
        if (batch.size() < max_batch && !in_flight_.contains(op->order_key)) {
          batch_keys.insert(op->order_key);
          batch.push_back(std::move(op));
        } else {
          rest.push_back(std::move(op));
        }
      }
      queue_.swap(rest);
      in_flight_.insert(batch_keys.begin(), batch_keys.end());
      ++writing_;
    }
    std::vector<PendingOp*> valid;
    for (const std::unique_ptr<PendingOp>& op : batch) {
      op->status = op->is_start ? ValidateStart(*op) : ValidateCommit(*op);
      if (op->status.ok()) valid.push_back(op.get());
    }
    if (!valid.empty()) WriteBatch(valid);
    last_batch_size = batch.size();
    for (std::unique_ptr<PendingOp>& op : batch) std::move(*op).Complete();
    absl::MutexLock lock(&mu_);
    for (const std::string& key : batch_keys) in_flight_.erase(key);
    --writing_;
  }
}

void PgStore::WriteBatch(const std::vector<PendingOp*>& ops) {
  const std::vector<Round> rounds = PlanRounds(ops);
  int64_t fenced = 0;
  auto write = [&](pqxx::transaction_base& tx) {
    fenced = 0;
    for (PendingOp* op : ops) {
      op->status = absl::OkStatus();
      op->result = StartResult{};
    }
    return WriteRounds(tx, ops, rounds, &fenced);
  };
  // One round is one statement, atomic on its own: it runs without BEGIN and COMMIT, which
  // saves two round trips per batch. Several rounds share a transaction.
  absl::Status status = rounds.size() == 1 ? WithAutocommit(*pool_, "group commit", write)
                                           : WithTransaction(*pool_, "group commit", write);
  if (status.ok()) {
    batches_committed_.fetch_add(1);
    ops_committed_.fetch_add(static_cast<int64_t>(ops.size()));
    fenced_writes_.fetch_add(fenced);
    return;
  }
  if (ops.size() > 1 && IsDataError(status)) {
    // Some op's data failed the whole statement: write them one by one.
    for (PendingOp* op : ops) WriteBatch({op});
    return;
  }
  for (PendingOp* op : ops) op->status = status;
}

// --- definitions ---

absl::StatusOr<PutDefinitionResult> PgStore::PutDefinition(const DefinitionRecord& record) {
  if (record.name.empty()) return absl::InvalidArgumentError("definition name is empty");
  SAGA_RETURN_IF_ERROR(CheckText("definition name", record.name));
  SAGA_RETURN_IF_ERROR(CheckText("content hash", record.content_hash));
  SAGA_RETURN_IF_ERROR(CheckJson("definition spec", record.spec_json));
  const std::string descriptor_hex = absl::BytesToHexString(record.descriptor_set);
  PutDefinitionResult result;
  SAGA_RETURN_IF_ERROR(WithTransaction(*pool_, "put definition", [&](pqxx::transaction_base& txn) {
    result = PutDefinitionResult{};
    txn.exec_prepared(Name(sql::kLockDefinitionName), record.name);
    pqxx::result existing =
        txn.exec_prepared(Name(sql::kFindDefinitionByHash), record.name, record.content_hash);
    if (!existing.empty()) {
      result.version = existing[0][0].as<int>();
      return absl::OkStatus();
    }
    pqxx::result inserted =
        txn.exec_prepared(Name(sql::kInsertDefinition), record.name, record.spec_json,
                          record.content_hash, descriptor_hex);
    result.version = inserted[0][0].as<int>();
    result.created = true;
    return absl::OkStatus();
  }));
  return result;
}

absl::StatusOr<DefinitionRecord> PgStore::GetDefinition(const std::string& name, int version) {
  if (version < 0) return absl::InvalidArgumentError("definition version is negative");
  SAGA_RETURN_IF_ERROR(CheckText("definition name", name));
  std::optional<DefinitionRecord> found;
  SAGA_RETURN_IF_ERROR(WithTransaction(*pool_, "get definition", [&](pqxx::transaction_base& txn) {
    found.reset();
    pqxx::result rows = version == 0 ? txn.exec_prepared(Name(sql::kGetLatestDefinition), name)
                                     : txn.exec_prepared(Name(sql::kGetDefinition), name, version);
    if (rows.empty()) return absl::OkStatus();
    SAGA_ASSIGN_OR_RETURN(found, ReadDefinition(rows[0]));
    return absl::OkStatus();
  }));
  if (!found.has_value()) {
    if (version == 0) {
      return absl::NotFoundError(absl::StrFormat("definition '%s' not found", Quoted(name)));
    }
    return absl::NotFoundError(
        absl::StrFormat("definition '%s' version %d not found", Quoted(name), version));
  }
  return *std::move(found);
}

absl::StatusOr<std::vector<DefinitionRecord>> PgStore::ListDefinitions() {
  std::vector<DefinitionRecord> records;
  SAGA_RETURN_IF_ERROR(
      WithTransaction(*pool_, "list definitions", [&](pqxx::transaction_base& txn) {
        records.clear();
        for (const pqxx::row& row : txn.exec_prepared(Name(sql::kListDefinitions))) {
          SAGA_ASSIGN_OR_RETURN(DefinitionRecord record, ReadDefinition(row));
          records.push_back(std::move(record));
        }
        return absl::OkStatus();
      }));
  return records;
}

// --- ownership ---

absl::StatusOr<std::vector<ClaimedSaga>> PgStore::ClaimDue(const std::string& owner,
                                                           absl::Duration lease, int limit) {
  if (owner.empty()) return absl::InvalidArgumentError("owner is empty");
  SAGA_RETURN_IF_ERROR(CheckText("owner", owner));
  SAGA_RETURN_IF_ERROR(CheckLease(lease));
  std::vector<ClaimedSaga> claimed;
  if (limit <= 0) return claimed;
  SAGA_RETURN_IF_ERROR(WithTransaction(*pool_, "claim due sagas", [&](pqxx::transaction_base& txn) {
    pqxx::result rows = txn.exec_prepared(Name(sql::kClaimDue), owner, LeaseMicros(lease), limit);
    SAGA_ASSIGN_OR_RETURN(claimed, ReadClaimed(txn, rows));
    return absl::OkStatus();
  }));
  return claimed;
}

absl::StatusOr<std::vector<ClaimedSaga>> PgStore::Reclaim(const std::string& owner,
                                                          absl::Duration lease,
                                                          const std::vector<std::string>& ids) {
  if (owner.empty()) return absl::InvalidArgumentError("owner is empty");
  SAGA_RETURN_IF_ERROR(CheckText("owner", owner));
  SAGA_RETURN_IF_ERROR(CheckLease(lease));
  ArrayLiteral id_array;
  for (const std::string& id : ids) {
    SAGA_ASSIGN_OR_RETURN(std::string normalized, NormalizeSagaId(id));
    id_array.Add(normalized);
  }
  std::vector<ClaimedSaga> claimed;
  if (ids.empty()) return claimed;
  SAGA_ASSIGN_OR_RETURN(std::string ids_literal, id_array.Build());
  SAGA_RETURN_IF_ERROR(WithTransaction(*pool_, "reclaim sagas", [&](pqxx::transaction_base& txn) {
    pqxx::result rows =
        txn.exec_prepared(Name(sql::kReclaim), owner, LeaseMicros(lease), ids_literal);
    SAGA_ASSIGN_OR_RETURN(claimed, ReadClaimed(txn, rows));
    return absl::OkStatus();
  }));
  return claimed;
}

absl::StatusOr<std::vector<OwnedSaga>> PgStore::RenewLeases(const std::string& owner,
                                                            absl::Duration lease) {
  if (owner.empty()) return absl::InvalidArgumentError("owner is empty");
  SAGA_RETURN_IF_ERROR(CheckText("owner", owner));
  SAGA_RETURN_IF_ERROR(CheckLease(lease));
  std::vector<OwnedSaga> owned;
  SAGA_RETURN_IF_ERROR(WithTransaction(*pool_, "renew leases", [&](pqxx::transaction_base& txn) {
    owned.clear();
    for (const pqxx::row& row :
         txn.exec_prepared(Name(sql::kRenewLeases), owner, LeaseMicros(lease))) {
      owned.push_back(OwnedSaga{row[0].as<std::string>(), row[1].as<bool>()});
    }
    return absl::OkStatus();
  }));
  return owned;
}

absl::Status PgStore::ReleaseAll(const std::string& owner) {
  if (owner.empty()) return absl::InvalidArgumentError("owner is empty");
  SAGA_RETURN_IF_ERROR(CheckText("owner", owner));
  return WithTransaction(*pool_, "release sagas", [&](pqxx::transaction_base& txn) {
    pqxx::result released = txn.exec_prepared(Name(sql::kReleaseAll), owner);
    if (released.affected_rows() > 0) {
      txn.exec_prepared(Name(sql::kNotifyWake), std::string());
    }
    return absl::OkStatus();
  });
}

// --- operator requests ---

namespace {

// RequestAbort / RequestRetry: runs `update` (which returns the updated row, or none) and sends
// a wake-up; kNotFound for a missing saga, kFailedPrecondition with `refusal`'s message when its
// status does not allow the request.
absl::StatusOr<SagaRow> OperatorRequest(
    ConnectionPool& pool, std::string_view op, const std::string& saga_id,
    absl::FunctionRef<pqxx::result(pqxx::transaction_base&)> update,
    absl::FunctionRef<std::string(const SagaRow&)> refusal) {
  SagaRow saga;
  SAGA_RETURN_IF_ERROR(WithTransaction(pool, op, [&](pqxx::transaction_base& txn) {
    pqxx::result rows = update(txn);
    if (rows.empty()) {
      // Missing, or its status does not allow the request: tell which.
      pqxx::result current = txn.exec_prepared(Name(sql::kGetSaga), saga_id);
      if (current.empty()) {
        return absl::NotFoundError(absl::StrFormat("saga %s not found", saga_id));
      }
      SAGA_ASSIGN_OR_RETURN(SagaRow row, ReadSagaRow(current[0]));
      return absl::FailedPreconditionError(refusal(row));
    }
    SAGA_ASSIGN_OR_RETURN(saga, ReadSagaRow(rows[0]));
    txn.exec_prepared(Name(sql::kNotifyWake), saga_id);
    return absl::OkStatus();
  }));
  return saga;
}

}  // namespace

absl::StatusOr<SagaRow> PgStore::RequestAbort(const std::string& id, const std::string& reason) {
  SAGA_ASSIGN_OR_RETURN(const std::string saga_id, NormalizeSagaId(id));
  SAGA_RETURN_IF_ERROR(CheckText("abort reason", reason));
  return OperatorRequest(
      *pool_, "request abort", saga_id,
      [&](pqxx::transaction_base& txn) {
        return txn.exec_prepared(Name(sql::kRequestAbort), saga_id, reason);
      },
      [&](const SagaRow& row) {
        return absl::StrFormat("saga %s has already ended (%s)", saga_id, StatusText(row.status));
      });
}

absl::StatusOr<SagaRow> PgStore::RequestRetry(const std::string& id) {
  SAGA_ASSIGN_OR_RETURN(const std::string saga_id, NormalizeSagaId(id));
  return OperatorRequest(
      *pool_, "request retry", saga_id,
      [&](pqxx::transaction_base& txn) {
        return txn.exec_prepared(Name(sql::kRequestRetry), saga_id);
      },
      [&](const SagaRow& row) {
        return absl::StrFormat("saga %s is %s; only a FAILED saga can be retried", saga_id,
                               StatusText(row.status));
      });
}

// --- retention ---

absl::StatusOr<PurgeResult> PgStore::PurgeFinished(absl::Duration older_than, int limit) {
  if (older_than < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("purge: the age of finished sagas must not be negative");
  }
  if (limit < 1) return absl::InvalidArgumentError("purge: limit must be at least 1");
  const int64_t older_than_us = absl::ToInt64Microseconds(older_than);
  PurgeResult result;
  SAGA_RETURN_IF_ERROR(
      WithAutocommit(*pool_, "purge finished sagas", [&](pqxx::transaction_base& txn) {
        pqxx::result rows = txn.exec_prepared(Name(sql::kPurgeFinished), older_than_us, limit);
        result.sagas = rows[0][0].as<int64_t>();
        result.events = rows[0][1].as<int64_t>();
        return absl::OkStatus();
      }));
  sagas_purged_.fetch_add(result.sagas);
  return result;
}

// --- reads ---

absl::StatusOr<SagaRow> PgStore::GetSaga(const std::string& id) {
  SAGA_ASSIGN_OR_RETURN(const std::string saga_id, NormalizeSagaId(id));
  std::optional<SagaRow> saga;
  SAGA_RETURN_IF_ERROR(WithTransaction(*pool_, "get saga", [&](pqxx::transaction_base& txn) {
    saga.reset();
    pqxx::result rows = txn.exec_prepared(Name(sql::kGetSaga), saga_id);
    if (rows.empty()) return absl::OkStatus();
    SAGA_ASSIGN_OR_RETURN(saga, ReadSagaRow(rows[0]));
    return absl::OkStatus();
  }));
  if (!saga.has_value()) return absl::NotFoundError(absl::StrFormat("saga %s not found", saga_id));
  return *std::move(saga);
}

absl::StatusOr<std::vector<Event>> PgStore::ReadEvents(const std::string& id, int64_t after_seq) {
  SAGA_ASSIGN_OR_RETURN(const std::string saga_id, NormalizeSagaId(id));
  std::vector<Event> events;
  bool exists = true;
  SAGA_RETURN_IF_ERROR(WithTransaction(*pool_, "read events", [&](pqxx::transaction_base& txn) {
    events.clear();
    exists = true;
    for (const pqxx::row& row : txn.exec_prepared(Name(sql::kReadEvents), saga_id, after_seq)) {
      events.push_back(ReadEvent(row));
    }
    if (events.empty()) exists = !txn.exec_prepared(Name(sql::kSagaExists), saga_id).empty();
    return absl::OkStatus();
  }));
  if (!exists) return absl::NotFoundError(absl::StrFormat("saga %s not found", saga_id));
  return events;
}

absl::StatusOr<std::vector<SagaRow>> PgStore::ListSagas(const ListFilter& filter) {
  const int limit = filter.limit <= 0 ? kDefaultListLimit : std::min(filter.limit, kMaxListLimit);
  std::string before_time = "infinity";
  std::string before_id = "ffffffff-ffff-ffff-ffff-ffffffffffff";
  if (filter.before.has_value()) {
    before_time = FormatTimestamp(filter.before->first);
    SAGA_ASSIGN_OR_RETURN(before_id, NormalizeSagaId(filter.before->second));
  }
  SAGA_RETURN_IF_ERROR(CheckText("definition", filter.definition));
  std::string status;
  if (filter.status.has_value()) {
    status = std::string(StatusText(*filter.status));
    if (status.empty()) return absl::InvalidArgumentError("bad saga status filter");
  }
  std::vector<SagaRow> sagas;
  SAGA_RETURN_IF_ERROR(WithTransaction(*pool_, "list sagas", [&](pqxx::transaction_base& txn) {
    sagas.clear();
    pqxx::result rows;
    if (!status.empty() && !filter.definition.empty()) {
      rows = txn.exec_prepared(Name(sql::kListSagasByStatusAndDefinition), before_time, before_id,
                               limit, status, filter.definition);
    } else if (!status.empty()) {
      rows =
          txn.exec_prepared(Name(sql::kListSagasByStatus), before_time, before_id, limit, status);
    } else if (!filter.definition.empty()) {
      rows = txn.exec_prepared(Name(sql::kListSagasByDefinition), before_time, before_id, limit,
                               filter.definition);
    } else {
      rows = txn.exec_prepared(Name(sql::kListSagas), before_time, before_id, limit);
    }
    for (const pqxx::row& row : rows) {
      SAGA_ASSIGN_OR_RETURN(SagaRow saga, ReadSagaRow(row));
      sagas.push_back(std::move(saga));
    }
    return absl::OkStatus();
  }));
  return sagas;
}

absl::Status PgStore::Ping() {
  TransactionOptions options;
  options.acquire_timeout = std::min(options_.acquire_timeout, kPingTimeout);
  return WithTransaction(
      *pool_, "ping",
      [&](pqxx::transaction_base& txn) {
        txn.exec_prepared(Name(sql::kSetLocalStatementTimeout),
                          absl::StrCat(absl::ToInt64Milliseconds(kPingTimeout)));
        txn.exec_prepared(Name(sql::kPing));
        return absl::OkStatus();
      },
      options);
}

}  // namespace saga::store::pg
