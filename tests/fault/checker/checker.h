// The fault suite's checker: after a run, reads `sagas` and `saga_events` (libpqxx), the audit
// tables installed by InstallAudit, and the bank participants' ledgers and final state, and
// verifies the invariants I1-I8 (docs/reliability.md), and computes the run's figures.
//
//   I1 every StartSaga that returned OK has exactly one saga (the acknowledged id)
//   I2 every saga terminal, within `terminal_bound` of the last fault healing; none FAILED
//   I3 each saga's events gap-free from 1 to last_seq, SAGA_STARTED first, exactly one terminal
//      event, last, matching the row's status
//   I4 no effect applied twice; no (saga, step, kind) under two keys
//   I5 COMPENSATED: every succeeded or unknown-outcome step compensated exactly once, in
//      reverse order; definite failures and unstarted steps never compensated; every applied
//      forward effect undone; no forward effect applied after its compensation
//   I6 money conserved: total unchanged, no hold or escrow left, no negative hold or escrow
//      seen, each balance = start + the COMPLETED transfers
//   I7 COMPLETED: every step's effect applied once, no compensation called
//   I8 no write accepted from a stale fence: every event was written by the replica that held
//      the fence current at insert (audit triggers), fences never go back along the history,
//      no attempt answered twice or after a newer attempt started; with a caller-port map,
//      no participant call from a replica that did not own the saga at that time
//
// Thread-compatible; one call per run.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tests/fault/bank/bank_server.h"

namespace saga::fault {

// Creates fault_owner_audit / fault_event_audit and their triggers on `sagas` and
// `saga_events` (after sagad migrated the schema, before sagas start). They record, for every
// claim, release and event insert, who (application_name = sagad's owner id) wrote what under
// which fence. Idempotent.
absl::Status InstallAudit(const std::string& db_url);

struct Ack {
  std::string key;
  std::string saga_id;             // the first OK reply's id
  std::set<std::string> ids_seen;  // all ids OK replies named
};

struct CheckOptions {
  std::string db_url;
  std::string definition = "bank-transfer";
  std::vector<BankDump> banks;
  bool have_acks = false;
  std::vector<Ack> acks;
  // When the last injected fault healed (I2 bound counts from here, or from the saga's
  // creation if later). InfinitePast: from creation.
  absl::Time heal_time = absl::InfinitePast();
  absl::Duration terminal_bound = absl::Seconds(60);
  int64_t initial_balance = 1000000000;
  // Caller TCP port -> sagad owner id, to attribute participant calls to replicas.
  std::map<int, std::string> port_owner;
  // A call by a replica that did not own the saga: an I8 violation (scale-out), or only
  // counted (zombie: delivery is at least once, only writes are fenced).
  bool non_owner_calls_are_violations = true;
  bool allow_failed = false;
};

struct CheckReport {
  // "I1".."I8" -> up to 20 example messages; counts are exact.
  std::map<std::string, std::vector<std::string>> examples;
  std::map<std::string, int64_t> violations;
  std::vector<std::pair<std::string, std::string>> figures;
  std::map<std::string, double> numbers;  // figures as numbers, for scenario assertions

  void Violate(const std::string& invariant, const std::string& message);
  bool Passed(const std::vector<std::string>& invariants) const;
  // "I1 ok, I2 ok, ..." and the examples of the failed ones.
  std::string InvariantSummary(const std::vector<std::string>& invariants) const;
  void AddFigure(const std::string& name, const std::string& value);
  void AddNumber(const std::string& name, double value, int precision = 0);
};

absl::StatusOr<CheckReport> CheckRun(const CheckOptions& options);

// A markdown table of figures.
std::string FiguresTable(const std::vector<std::pair<std::string, std::string>>& figures);

}  // namespace saga::fault
