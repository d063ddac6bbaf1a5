// Every SQL statement of the PostgreSQL store, as named constants. Connections prepare all of
// kPreparedStatements when they open (ConnectionPool) and run them with exec_prepared; no SQL is
// ever built from values. Batch statements take PostgreSQL array literals (array_literal.h) and
// expand them with unnest().
//
// Conventions: timestamps are returned as bigint microseconds since the Unix epoch
// ((extract(epoch FROM t) * 1000000)::bigint) and taken as timestamptz text; durations are
// taken as bigint microseconds; all times are the database's clock (now()).
//
// Thread-safety: constant data.
#pragma once

#include <string_view>

namespace saga::store::pg::sql {

struct Statement {
  std::string_view name;
  std::string_view sql;
};

// The columns of a SagaRow, read from `sagas s` (see ReadSagaRow in pg_store.cc).
#define SAGA_PG_SAGA_COLUMNS                                                              \
  " s.id::text, s.definition_name, s.definition_version, s.status, s.input::text,"        \
  " coalesce(s.idempotency_key, ''), coalesce(s.traceparent, ''), coalesce(s.error, '')," \
  " (extract(epoch FROM s.created_at) * 1000000)::bigint,"                                \
  " (extract(epoch FROM s.updated_at) * 1000000)::bigint,"                                \
  " s.last_seq, s.fence, coalesce(s.owner, ''), s.abort_requested,"                       \
  " coalesce(s.abort_reason, ''), s.retry_requested "

// The columns of an Event, read from `saga_events e` (see ReadEvent in pg_store.cc).
#define SAGA_PG_EVENT_COLUMNS                                           \
  " e.saga_id::text, e.seq, e.type, e.step, e.attempt, e.detail::text," \
  " (extract(epoch FROM e.recorded_at) * 1000000)::bigint "

// The columns of a DefinitionRecord, read from `saga_definitions d`.
#define SAGA_PG_DEFINITION_COLUMNS                    \
  " d.name, d.version, d.spec::text, d.content_hash," \
  " encode(d.descriptor_set, 'hex'),"                 \
  " (extract(epoch FROM d.created_at) * 1000000)::bigint "

// ---------------------------------------------------------------------------------------------
// Session and health.

inline constexpr Statement kPing{"ping", "SELECT 1"};

// $1: the timeout as a string ("2000" = 2 s), for the current transaction only.
inline constexpr Statement kSetLocalStatementTimeout{
    "set_local_statement_timeout", "SELECT set_config('statement_timeout', $1, true)"};

// ---------------------------------------------------------------------------------------------
// Migrations (run on a dedicated connection; see migrations.cc).

// A session-level advisory lock serializes migrating processes. $1: kMigrationLockKey.
inline constexpr Statement kMigrationLock{"migration_lock", "SELECT pg_advisory_lock($1::bigint)"};
inline constexpr Statement kMigrationUnlock{"migration_unlock",
                                            "SELECT pg_advisory_unlock($1::bigint)"};
// Run with exec (a utility statement), under the migration lock.
inline constexpr std::string_view kCreateMigrationsTable =
    "CREATE TABLE IF NOT EXISTS saga_schema_migrations ("
    " version int PRIMARY KEY,"
    " name text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())";
inline constexpr Statement kSelectMigrationVersions{
    "select_migration_versions", "SELECT version FROM saga_schema_migrations ORDER BY version"};
inline constexpr Statement kInsertMigration{
    "insert_migration", "INSERT INTO saga_schema_migrations (version, name) VALUES ($1, $2)"};

// ---------------------------------------------------------------------------------------------
// Definitions.

// Serializes PutDefinition per name (two-key advisory lock space; 1935763297 = 'saga').
inline constexpr Statement kLockDefinitionName{
    "lock_definition_name", "SELECT pg_advisory_xact_lock(1935763297, hashtext($1))"};

inline constexpr Statement kFindDefinitionByHash{
    "find_definition_by_hash",
    "SELECT version FROM saga_definitions WHERE name = $1 AND content_hash = $2"};

// $1 name, $2 spec (json text), $3 content_hash, $4 descriptor_set (hex). Returns the version.
inline constexpr Statement kInsertDefinition{
    "insert_definition",
    "INSERT INTO saga_definitions (name, version, spec, content_hash, descriptor_set)"
    " SELECT $1::text, coalesce(max(version), 0) + 1, $2::jsonb, $3::text, decode($4, 'hex')"
    " FROM saga_definitions WHERE name = $1::text"
    " RETURNING version"};

inline constexpr Statement kGetDefinition{
    "get_definition", "SELECT" SAGA_PG_DEFINITION_COLUMNS
                      "FROM saga_definitions d WHERE d.name = $1 AND d.version = $2"};

inline constexpr Statement kGetLatestDefinition{
    "get_latest_definition",
    "SELECT" SAGA_PG_DEFINITION_COLUMNS
    "FROM saga_definitions d WHERE d.name = $1 ORDER BY d.version DESC LIMIT 1"};

inline constexpr Statement kListDefinitions{
    "list_definitions", "SELECT DISTINCT ON (d.name)" SAGA_PG_DEFINITION_COLUMNS
                        "FROM saga_definitions d ORDER BY d.name, d.version DESC"};

// ---------------------------------------------------------------------------------------------
// Group commit.

// Writes one round of the group commit in one statement: creates sagas ($1..$11, one element
// per saga), applies fenced transitions ($12..$20, one element per saga, at most one per saga,
// none of a saga created here), and inserts the events ($21..$26, one element per event) of the
// sagas it created and of the transitions it accepted.
//
// A saga whose id or (definition_name, idempotency_key) exists already is not created (an empty
// key is stored as NULL and never conflicts). A transition is accepted when owner and fence
// still hold and its first event continues the saga's history (prev_seq = last_seq; NULL when
// it has no events). The rows to update are locked in id order first, as RenewLeases locks
// them, so that the two never deadlock whatever join order the planner picks. The owner test is
// written IS NOT DISTINCT FROM (t.owner is never NULL) so that the planner cannot pick the
// small sagas_owner_idx, which would visit every saga of the replica for each row updated; the
// primary key is the only index left for the join.
//
// Events are inserted without ON CONFLICT: only for a saga this statement created, or whose
// history it continues (prev_seq = last_seq, in the same statement), so none can exist yet; a
// duplicate would mean a corrupt history and fails the write. (ON CONFLICT also costs two WAL
// records per event: a speculative insert and its confirmation.)
//
// Returns one row ('S', id) per created saga, one row ('T', id) per accepted transition, and
// ('E', n): the number of events inserted.
inline constexpr Statement kWriteBatch{
    "write_batch",
    "WITH new_sagas AS ("
    "  INSERT INTO sagas (id, definition_name, definition_version, status, input, input_hash,"
    "                     idempotency_key, traceparent, owner, fence, lease_expires_at,"
    "                     next_wake_at, last_seq)"
    "  SELECT u.id, u.definition_name, u.definition_version, u.status, u.input, u.input_hash,"
    "         nullif(u.idempotency_key, ''), nullif(u.traceparent, ''), nullif(u.owner, ''), 1,"
    "         CASE WHEN u.owner <> '' THEN now() + u.lease_us * interval '1 microsecond' END,"
    "         now(), u.last_seq"
    "  FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::jsonb[], $6::text[],"
    "              $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[])"
    "       AS u(id, definition_name, definition_version, status, input, input_hash,"
    "            idempotency_key, traceparent, owner, lease_us, last_seq)"
    "  ON CONFLICT DO NOTHING"
    "  RETURNING id"
    "), locked AS MATERIALIZED ("
    "  SELECT s.id FROM sagas s WHERE s.id = ANY($12::uuid[]) ORDER BY s.id FOR NO KEY UPDATE"
    "), applied AS ("
    "  UPDATE sagas AS s SET"
    "    status = t.status,"
    "    error = coalesce(nullif(t.error, ''), s.error),"
    "    last_seq = coalesce(t.last_seq, s.last_seq),"
    "    updated_at = now(),"
    "    owner = CASE WHEN t.release THEN NULL ELSE s.owner END,"
    "    lease_expires_at = CASE WHEN t.release THEN NULL ELSE s.lease_expires_at END,"
    "    next_wake_at = CASE WHEN t.release THEN NULL ELSE s.next_wake_at END,"
    "    abort_requested = s.abort_requested AND NOT t.clear_requests,"
    "    retry_requested = s.retry_requested AND NOT t.clear_requests"
    "  FROM unnest($12::uuid[], $13::bigint[], $14::text[], $15::text[], $16::text[],"
    "              $17::bigint[], $18::bigint[], $19::boolean[], $20::boolean[])"
    "       AS t(id, fence, owner, status, error, prev_seq, last_seq, release, clear_requests)"
    "  WHERE s.id = t.id AND s.id IN (SELECT id FROM locked)"
    "    AND s.fence = t.fence AND s.owner IS NOT DISTINCT FROM t.owner"
    "    AND (t.prev_seq IS NULL OR s.last_seq = t.prev_seq)"
    "  RETURNING s.id"
    "), new_events AS ("
    "  INSERT INTO saga_events (saga_id, seq, type, step, attempt, detail)"
    "  SELECT e.saga_id, e.seq, e.type, e.step, e.attempt, e.detail"
    "  FROM unnest($21::uuid[], $22::bigint[], $23::smallint[], $24::int[], $25::int[],"
    "              $26::jsonb[]) AS e(saga_id, seq, type, step, attempt, detail)"
    "  WHERE e.saga_id IN (SELECT id FROM new_sagas UNION ALL SELECT id FROM applied)"
    "  RETURNING 1"
    ")"
    " SELECT 'S', id::text FROM new_sagas"
    " UNION ALL SELECT 'T', id::text FROM applied"
    " UNION ALL SELECT 'E', count(*)::text FROM new_events"};

// kWriteBatch for a round of exactly one op, which is every write at low load. The same
// effects and the same result rows as kWriteBatch, with scalar parameters for the saga and a
// plan a fraction of the size: no lock-ordering step (one row is locked) and no joins of
// parameter arrays. At one saga in flight the big plan's start-up and scans were about a third
// of PostgreSQL's CPU per write.
//
// kWriteOneStart: $1 id, $2 definition_name, $3 definition_version, $4 status, $5 input (json),
// $6 input_hash, $7 idempotency_key ('' = none), $8 traceparent, $9 owner ('' = none),
// $10 lease (us), $11 last_seq; the events $12..$16 (seq, type, step, attempt, detail).
inline constexpr Statement kWriteOneStart{
    "write_one_start",
    "WITH new_sagas AS ("
    "  INSERT INTO sagas (id, definition_name, definition_version, status, input, input_hash,"
    "                     idempotency_key, traceparent, owner, fence, lease_expires_at,"
    "                     next_wake_at, last_seq)"
    "  VALUES ($1::uuid, $2::text, $3::int, $4::text, $5::jsonb, $6::text, nullif($7::text, ''),"
    "          nullif($8::text, ''), nullif($9::text, ''), 1,"
    "          CASE WHEN $9::text <> '' THEN now() + $10::bigint * interval '1 microsecond' END,"
    "          now(), $11::bigint)"
    "  ON CONFLICT DO NOTHING"
    "  RETURNING id"
    "), new_events AS ("
    "  INSERT INTO saga_events (saga_id, seq, type, step, attempt, detail)"
    "  SELECT n.id, e.seq, e.type, e.step, e.attempt, e.detail"
    "  FROM new_sagas n, unnest($12::bigint[], $13::smallint[], $14::int[], $15::int[],"
    "                           $16::jsonb[]) AS e(seq, type, step, attempt, detail)"
    "  RETURNING 1"
    ")"
    " SELECT 'S', id::text FROM new_sagas"
    " UNION ALL SELECT 'E', count(*)::text FROM new_events"};

// kWriteOneTransition: $1 id, $2 fence, $3 owner, $4 status, $5 error, $6 prev_seq and
// $7 last_seq (both -1 when the transition has no events), $8 release, $9 clear_requests; the
// events $10..$14 (seq, type, step, attempt, detail).
inline constexpr Statement kWriteOneTransition{
    "write_one_transition",
    "WITH applied AS ("
    "  UPDATE sagas AS s SET"
    "    status = $4::text,"
    "    error = coalesce(nullif($5::text, ''), s.error),"
    "    last_seq = CASE WHEN $7::bigint < 0 THEN s.last_seq ELSE $7::bigint END,"
    "    updated_at = now(),"
    "    owner = CASE WHEN $8::boolean THEN NULL ELSE s.owner END,"
    "    lease_expires_at = CASE WHEN $8::boolean THEN NULL ELSE s.lease_expires_at END,"
    "    next_wake_at = CASE WHEN $8::boolean THEN NULL ELSE s.next_wake_at END,"
    "    abort_requested = s.abort_requested AND NOT $9::boolean,"
    "    retry_requested = s.retry_requested AND NOT $9::boolean"
    "  WHERE s.id = $1::uuid AND s.fence = $2::bigint AND s.owner IS NOT DISTINCT FROM $3::text"
    "    AND ($6::bigint < 0 OR s.last_seq = $6::bigint)"
    "  RETURNING s.id"
    "), new_events AS ("
    "  INSERT INTO saga_events (saga_id, seq, type, step, attempt, detail)"
    "  SELECT a.id, e.seq, e.type, e.step, e.attempt, e.detail"
    "  FROM applied a, unnest($10::bigint[], $11::smallint[], $12::int[], $13::int[],"
    "                         $14::jsonb[]) AS e(seq, type, step, attempt, detail)"
    "  RETURNING 1"
    ")"
    " SELECT 'T', id::text FROM applied"
    " UNION ALL SELECT 'E', count(*)::text FROM new_events"};

// The existing sagas that a start conflicted with: by id ($1) or by
// (definition_name, idempotency_key) ($2, $3). Two index lookups (an OR of the two would scan
// the table).
inline constexpr Statement kSelectStartConflicts{
    "select_start_conflicts",
    "SELECT s.id::text, s.definition_name, coalesce(s.idempotency_key, ''), s.input_hash,"
    " s.fence"
    " FROM sagas s WHERE s.id = ANY($1::uuid[])"
    " UNION"
    " SELECT s.id::text, s.definition_name, coalesce(s.idempotency_key, ''), s.input_hash,"
    " s.fence"
    " FROM unnest($2::text[], $3::text[]) AS k(definition_name, idempotency_key)"
    " JOIN sagas s ON s.definition_name = k.definition_name"
    "             AND s.idempotency_key = k.idempotency_key"};

// Why transitions were rejected: the current owner, fence and last_seq of sagas $1.
inline constexpr Statement kSelectFences{
    "select_fences",
    "SELECT s.id::text, coalesce(s.owner, ''), s.fence, s.last_seq"
    " FROM sagas s WHERE s.id = ANY($1::uuid[])"};

// ---------------------------------------------------------------------------------------------
// Ownership.

// $1 owner, $2 lease (us), $3 limit.
inline constexpr Statement kClaimDue{
    "claim_due",
    "WITH due AS MATERIALIZED ("
    "  SELECT id FROM sagas"
    "  WHERE next_wake_at <= now()"
    "    AND (lease_expires_at IS NULL OR lease_expires_at < now())"
    "  ORDER BY next_wake_at"
    "  LIMIT $3"
    "  FOR UPDATE SKIP LOCKED"
    ")"
    " UPDATE sagas AS s SET owner = $1, fence = s.fence + 1,"
    "   lease_expires_at = now() + $2::bigint * interval '1 microsecond'"
    " FROM due WHERE s.id = due.id"
    " RETURNING" SAGA_PG_SAGA_COLUMNS};

// $1 owner, $2 lease (us), $3 ids.
inline constexpr Statement kReclaim{
    "reclaim",
    "UPDATE sagas AS s SET fence = s.fence + 1,"
    "   lease_expires_at = now() + $2::bigint * interval '1 microsecond'"
    " WHERE s.owner = $1 AND s.id = ANY($3::uuid[])"
    " RETURNING" SAGA_PG_SAGA_COLUMNS};

// The full history of sagas $1, by (saga_id, seq).
inline constexpr Statement kSelectEventsOfSagas{
    "select_events_of_sagas",
    "SELECT" SAGA_PG_EVENT_COLUMNS
    "FROM saga_events e WHERE e.saga_id = ANY($1::uuid[]) ORDER BY e.saga_id, e.seq"};

// $1 owner, $2 lease (us).
inline constexpr Statement kRenewLeases{
    "renew_leases",
    "UPDATE sagas AS s SET lease_expires_at = now() + $2::bigint * interval '1 microsecond'"
    " FROM (SELECT id FROM sagas WHERE owner = $1 ORDER BY id FOR NO KEY UPDATE) AS mine"
    " WHERE s.id = mine.id AND s.owner = $1"
    " RETURNING s.id::text, s.abort_requested"};
// (Rows are locked in id order, as the group commit locks them, so the two never deadlock.)

// $1 owner. next_wake_at stays, so running sagas are due at once.
inline constexpr Statement kReleaseAll{
    "release_all",
    "UPDATE sagas AS s SET owner = NULL, lease_expires_at = NULL WHERE s.owner = $1"};

// $1 payload: a saga id, or '' for "poll now". Delivered at COMMIT.
inline constexpr Statement kNotifyWake{"notify_wake", "SELECT pg_notify('saga_wake', $1)"};

// ---------------------------------------------------------------------------------------------
// Operator requests. Both return the updated row, or nothing when the saga is missing or its
// status does not allow the request (the caller then reads the row to tell which).

// $1 id, $2 reason.
inline constexpr Statement kRequestAbort{
    "request_abort",
    "UPDATE sagas AS s SET abort_requested = true,"
    "   abort_reason = coalesce(s.abort_reason, nullif($2, '')),"
    "   next_wake_at = CASE WHEN s.owner IS NULL THEN coalesce(s.next_wake_at, now())"
    "                       ELSE s.next_wake_at END,"
    "   updated_at = now()"
    " WHERE s.id = $1 AND s.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED')"
    " RETURNING" SAGA_PG_SAGA_COLUMNS};

// $1 id.
inline constexpr Statement kRequestRetry{
    "request_retry",
    "UPDATE sagas AS s SET retry_requested = true, next_wake_at = now(), updated_at = now()"
    " WHERE s.id = $1 AND s.status = 'FAILED'"
    " RETURNING" SAGA_PG_SAGA_COLUMNS};

// ---------------------------------------------------------------------------------------------
// Retention.

// Deletes up to $2 sagas that ended COMPLETED or COMPENSATED more than $1 microseconds ago
// (updated_at: a saga's last write is its end), with their events. FAILED sagas are kept:
// they wait for an operator. The scan is a range of sagas_status_created_idx (a saga ended
// after it was created, so its created_at is older still); SKIP LOCKED passes over rows that
// another replica is deleting at the same moment. Returns the numbers of sagas and of events
// deleted.
inline constexpr Statement kPurgeFinished{
    "purge_finished",
    "WITH doomed AS MATERIALIZED ("
    "  SELECT s.id FROM sagas s"
    "  WHERE s.status IN ('COMPLETED', 'COMPENSATED')"
    "    AND s.created_at < now() - $1::bigint * interval '1 microsecond'"
    "    AND s.updated_at < now() - $1::bigint * interval '1 microsecond'"
    "  LIMIT $2::int"
    "  FOR UPDATE SKIP LOCKED"
    "), gone_events AS ("
    "  DELETE FROM saga_events e USING doomed d WHERE e.saga_id = d.id RETURNING 1"
    "), gone AS ("
    "  DELETE FROM sagas s USING doomed d WHERE s.id = d.id RETURNING 1"
    ")"
    " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_events)"};

// ---------------------------------------------------------------------------------------------
// Reads.

inline constexpr Statement kGetSaga{"get_saga",
                                    "SELECT" SAGA_PG_SAGA_COLUMNS "FROM sagas s WHERE s.id = $1"};

inline constexpr Statement kSagaExists{"saga_exists", "SELECT 1 FROM sagas WHERE id = $1"};

// $1 id, $2 after_seq.
inline constexpr Statement kReadEvents{
    "read_events", "SELECT" SAGA_PG_EVENT_COLUMNS
                   "FROM saga_events e WHERE e.saga_id = $1 AND e.seq > $2 ORDER BY e.seq"};

// Newest first, strictly before the cursor ($1 created_at as timestamptz text, $2 id; with no
// cursor: 'infinity' and the largest uuid), at most $3 rows.
#define SAGA_PG_LIST_SAGAS_PREFIX \
  "SELECT" SAGA_PG_SAGA_COLUMNS   \
  "FROM sagas s WHERE (s.created_at, s.id) < ($1::timestamptz, $2::uuid)"
#define SAGA_PG_LIST_SAGAS_SUFFIX " ORDER BY s.created_at DESC, s.id DESC LIMIT $3"

inline constexpr Statement kListSagas{"list_sagas",
                                      SAGA_PG_LIST_SAGAS_PREFIX SAGA_PG_LIST_SAGAS_SUFFIX};
// $4 status.
inline constexpr Statement kListSagasByStatus{"list_sagas_by_status", SAGA_PG_LIST_SAGAS_PREFIX
                                              " AND s.status = $4" SAGA_PG_LIST_SAGAS_SUFFIX};
// $4 definition_name.
inline constexpr Statement kListSagasByDefinition{
    "list_sagas_by_definition",
    SAGA_PG_LIST_SAGAS_PREFIX " AND s.definition_name = $4" SAGA_PG_LIST_SAGAS_SUFFIX};
// $4 status, $5 definition_name.
inline constexpr Statement kListSagasByStatusAndDefinition{
    "list_sagas_by_status_and_definition", SAGA_PG_LIST_SAGAS_PREFIX
    " AND s.status = $4 AND s.definition_name = $5" SAGA_PG_LIST_SAGAS_SUFFIX};

#undef SAGA_PG_LIST_SAGAS_PREFIX
#undef SAGA_PG_LIST_SAGAS_SUFFIX
#undef SAGA_PG_SAGA_COLUMNS
#undef SAGA_PG_EVENT_COLUMNS
#undef SAGA_PG_DEFINITION_COLUMNS

// Prepared on every pooled connection when it opens.
inline constexpr Statement kPreparedStatements[] = {
    kPing,
    kSetLocalStatementTimeout,
    kLockDefinitionName,
    kFindDefinitionByHash,
    kInsertDefinition,
    kGetDefinition,
    kGetLatestDefinition,
    kListDefinitions,
    kWriteBatch,
    kWriteOneStart,
    kWriteOneTransition,
    kSelectStartConflicts,
    kSelectFences,
    kClaimDue,
    kReclaim,
    kSelectEventsOfSagas,
    kRenewLeases,
    kReleaseAll,
    kNotifyWake,
    kRequestAbort,
    kRequestRetry,
    kPurgeFinished,
    kGetSaga,
    kSagaExists,
    kReadEvents,
    kListSagas,
    kListSagasByStatus,
    kListSagasByDefinition,
    kListSagasByStatusAndDefinition,
};

// Prepared on the migration connection.
inline constexpr Statement kMigrationStatements[] = {
    kMigrationLock,
    kMigrationUnlock,
    kSelectMigrationVersions,
    kInsertMigration,
};

// The session-level advisory lock key that serializes migrations ('sagamig1').
inline constexpr long long kMigrationLockKey = 0x7361'6761'6d69'6731LL;

}  // namespace saga::store::pg::sql
