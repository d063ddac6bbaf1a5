#include "tests/fault/checker/checker.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

#include <pqxx/pqxx>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "tests/fault/harness/util.h"
#include "tests/fault/harness/workload.h"

namespace saga::fault {
namespace {

using nlohmann::json;

// saga_events.type (orchestrator/engine/types.h; the numbers are stored and never renumbered).
enum Ev : int {
  kSagaStarted = 1,
  kStepStarted = 2,
  kStepSucceeded = 3,
  kStepRetryScheduled = 4,
  kStepFailed = 5,
  kCompensationStarted = 6,
  kCompensationSucceeded = 7,
  kCompensationRetryScheduled = 8,
  kCompensationFailed = 9,
  kAbortRequested = 10,
  kRetryRequested = 11,
  kSagaCompleted = 12,
  kSagaCompensating = 13,
  kSagaCompensated = 14,
  kSagaFailed = 15,
};

bool IsTerminalType(int t) {
  return t == kSagaCompleted || t == kSagaCompensated || t == kSagaFailed;
}

constexpr size_t kMaxExamples = 20;

struct Event {
  int64_t seq = 0;
  int type = 0;
  int step = -1;
  int attempt = 0;
  json detail;
  int64_t at_us = 0;
};

struct Saga {
  std::string id;
  std::string definition;
  std::string status;
  json input;
  std::string key;
  int64_t last_seq = 0;
  int64_t fence = 0;
  int64_t created_us = 0;
  std::vector<Event> events;
};

struct OwnerChange {
  int64_t fence = 0;
  std::string owner;  // "" = released
  int64_t at_us = 0;
  std::string writer;
};

struct EventAudit {
  int64_t seq = 0;
  std::string writer;
  int64_t fence = 0;
  std::string owner;
};

const char* StepName(int i) { return i >= 0 && i < kStepCount ? kSteps[i] : "?"; }

int StepIndex(const std::string& name) {
  for (int i = 0; i < kStepCount; ++i) {
    if (name == kSteps[i]) return i;
  }
  return -1;
}

std::string Secs(double s) { return absl::StrFormat("%.2f s", s); }

// "ipv4:127.0.0.1:40112" / "ipv6:[::1]:40112" -> 40112.
int PeerPort(const std::string& peer) {
  const auto colon = peer.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(peer.substr(colon + 1), &port)) return 0;
  return port;
}

}  // namespace

void CheckReport::Violate(const std::string& invariant, const std::string& message) {
  ++violations[invariant];
  auto& ex = examples[invariant];
  if (ex.size() < kMaxExamples) ex.push_back(message);
}

bool CheckReport::Passed(const std::vector<std::string>& invariants) const {
  for (const auto& i : invariants) {
    auto it = violations.find(i);
    if (it != violations.end() && it->second > 0) return false;
  }
  return true;
}

std::string CheckReport::InvariantSummary(const std::vector<std::string>& invariants) const {
  std::string out;
  for (const auto& i : invariants) {
    auto it = violations.find(i);
    const int64_t n = it == violations.end() ? 0 : it->second;
    absl::StrAppend(&out, i, n == 0 ? " ok" : absl::StrCat(" FAILED (", n, ")"), "  ");
  }
  for (const auto& i : invariants) {
    auto it = examples.find(i);
    if (it == examples.end()) continue;
    for (const auto& m : it->second) absl::StrAppend(&out, "\n  ", i, ": ", m);
  }
  return out;
}

void CheckReport::AddFigure(const std::string& name, const std::string& value) {
  figures.emplace_back(name, value);
}

void CheckReport::AddNumber(const std::string& name, double value, int precision) {
  numbers[name] = value;
  figures.emplace_back(name, precision == 0
                                 ? absl::StrCat(static_cast<int64_t>(std::llround(value)))
                                 : absl::StrFormat("%.*f", precision, value));
}

std::string FiguresTable(const std::vector<std::pair<std::string, std::string>>& figures) {
  size_t w = 6;
  for (const auto& [k, v] : figures) w = std::max(w, k.size());
  std::string out = absl::StrCat("| ", std::string("figure"), std::string(w - 6, ' '),
                                 " | value |\n|", std::string(w + 2, '-'), "|-------|\n");
  for (const auto& [k, v] : figures) {
    absl::StrAppend(&out, "| ", k, std::string(w - k.size(), ' '), " | ", v, " |\n");
  }
  return out;
}

absl::Status InstallAudit(const std::string& db_url) {
  static constexpr char kSql[] = R"sql(
CREATE TABLE IF NOT EXISTS fault_owner_audit (
  id       bigserial PRIMARY KEY,
  saga_id  uuid NOT NULL,
  fence    bigint NOT NULL,
  owner    text,
  at       timestamptz NOT NULL DEFAULT clock_timestamp(),
  writer   text NOT NULL DEFAULT current_setting('application_name'));
CREATE TABLE IF NOT EXISTS fault_event_audit (
  saga_id  uuid NOT NULL,
  seq      bigint NOT NULL,
  writer   text NOT NULL,
  fence    bigint NOT NULL,
  owner    text,
  at       timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION fault_audit_owner() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO fault_owner_audit (saga_id, fence, owner) VALUES (NEW.id, NEW.fence, NEW.owner);
  RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION fault_audit_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO fault_event_audit (saga_id, seq, writer, fence, owner)
    SELECT n.saga_id, n.seq, current_setting('application_name'), s.fence, s.owner
      FROM fault_new_events n JOIN sagas s ON s.id = n.saga_id;
  RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS fault_owner_insert ON sagas;
DROP TRIGGER IF EXISTS fault_owner_update ON sagas;
DROP TRIGGER IF EXISTS fault_events_insert ON saga_events;
CREATE TRIGGER fault_owner_insert AFTER INSERT ON sagas
  FOR EACH ROW EXECUTE FUNCTION fault_audit_owner();
CREATE TRIGGER fault_owner_update AFTER UPDATE ON sagas
  FOR EACH ROW WHEN (OLD.fence IS DISTINCT FROM NEW.fence OR OLD.owner IS DISTINCT FROM NEW.owner)
  EXECUTE FUNCTION fault_audit_owner();
CREATE TRIGGER fault_events_insert AFTER INSERT ON saga_events
  REFERENCING NEW TABLE AS fault_new_events
  FOR EACH STATEMENT EXECUTE FUNCTION fault_audit_events();
)sql";
  try {
    pqxx::connection conn(db_url);
    pqxx::work txn(conn);
    txn.exec(kSql);
    txn.commit();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("installing the audit triggers: ", e.what()));
  }
}

absl::StatusOr<CheckReport> CheckRun(const CheckOptions& options) {
  CheckReport report;
  std::map<std::string, Saga> sagas;
  std::map<std::string, std::vector<OwnerChange>> owners;
  std::map<std::string, std::vector<EventAudit>> event_audit;
  bool have_audit = false;
  try {
    pqxx::connection conn(options.db_url);
    pqxx::read_transaction txn(conn);
    for (const auto& row : txn.exec(
             "SELECT id::text, definition_name, status, input::text, coalesce(idempotency_key, ''),"
             " last_seq, fence, (extract(epoch FROM created_at) * 1000000)::bigint FROM sagas")) {
      Saga s;
      s.id = row[0].as<std::string>();
      s.definition = row[1].as<std::string>();
      s.status = row[2].as<std::string>();
      s.input = json::parse(row[3].as<std::string>(), nullptr, false);
      s.key = row[4].as<std::string>();
      s.last_seq = row[5].as<int64_t>();
      s.fence = row[6].as<int64_t>();
      s.created_us = row[7].as<int64_t>();
      sagas[s.id] = std::move(s);
    }
    for (const auto& row :
         txn.exec("SELECT saga_id::text, seq, type, step, attempt, coalesce(detail::text, '{}'),"
                  " (extract(epoch FROM recorded_at) * 1000000)::bigint"
                  " FROM saga_events ORDER BY saga_id, seq")) {
      Event e;
      e.seq = row[1].as<int64_t>();
      e.type = row[2].as<int>();
      e.step = row[3].as<int>();
      e.attempt = row[4].as<int>();
      e.detail = json::parse(row[5].as<std::string>(), nullptr, false);
      e.at_us = row[6].as<int64_t>();
      auto it = sagas.find(row[0].as<std::string>());
      if (it == sagas.end()) {
        report.Violate("I3", absl::StrCat("event of unknown saga ", row[0].as<std::string>()));
        continue;
      }
      it->second.events.push_back(std::move(e));
    }
    have_audit = txn.exec1("SELECT to_regclass('fault_event_audit') IS NOT NULL")[0].as<bool>();
    if (have_audit) {
      for (const auto& row : txn.exec("SELECT saga_id::text, fence, coalesce(owner, ''),"
                                      " (extract(epoch FROM at) * 1000000)::bigint, writer FROM "
                                      "fault_owner_audit ORDER BY id")) {
        owners[row[0].as<std::string>()].push_back(
            OwnerChange{row[1].as<int64_t>(), row[2].as<std::string>(), row[3].as<int64_t>(),
                        row[4].as<std::string>()});
      }
      for (const auto& row :
           txn.exec("SELECT saga_id::text, seq, writer, fence, coalesce(owner, '')"
                    " FROM fault_event_audit ORDER BY saga_id, seq")) {
        event_audit[row[0].as<std::string>()].push_back(
            EventAudit{row[1].as<int64_t>(), row[2].as<std::string>(), row[3].as<int64_t>(),
                       row[4].as<std::string>()});
      }
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("reading the database: ", e.what()));
  }

  // --- the participants' ledgers, indexed by (saga, step, kind) ---
  struct Calls {
    std::vector<const bank::v1::LedgerEntry*> all;
    std::vector<const bank::v1::LedgerEntry*> applied;
    std::set<std::string> keys;
  };
  // (saga id, step index, compensation) -> calls
  std::map<std::tuple<std::string, int, bool>, Calls> calls;
  int64_t deliveries = 0, repeats = 0, refused_late = 0, empty_comps = 0, unknown_callers = 0;
  std::map<std::string, int64_t> faults;
  int64_t total = 0, initial_total = 0;
  std::vector<std::string> anomalies;
  std::map<std::string, std::pair<int64_t, int64_t>> balances;  // account -> (balance, held)
  std::map<std::string, int64_t> escrow;
  for (const BankDump& bank : options.banks) {
    for (const auto& e : bank.entries) {
      ++deliveries;
      if (e.repeat()) ++repeats;
      if (e.refused_late()) ++refused_late;
      if (e.applied() && e.empty()) ++empty_comps;
      if (!e.fault().empty()) ++faults[e.fault()];
      const std::string kind = e.compensation() ? "compensation" : "action";
      const std::string expected_key = absl::StrCat(e.saga_id(), "/", e.step(), "/", kind);
      if (e.idempotency_key() != expected_key) {
        report.Violate("I4", absl::StrCat("call ", e.method(), " of saga ", e.saga_id(), " step ",
                                          e.step(), " carried key '", e.idempotency_key(),
                                          "', expected '", expected_key, "'"));
      }
      if (e.saga_id() != e.body_transfer_id() || e.step() != e.body_step()) {
        report.Violate("I4", absl::StrCat("call ", e.method(), " metadata names saga ", e.saga_id(),
                                          " step ", e.step(), " but the request ",
                                          e.body_transfer_id(), " step ", e.body_step()));
      }
      Calls& c = calls[{e.body_transfer_id(), StepIndex(e.body_step()), e.compensation()}];
      c.all.push_back(&e);
      c.keys.insert(e.idempotency_key());
      if (e.applied()) c.applied.push_back(&e);
    }
    total += bank.snapshot.total();
    initial_total += bank.snapshot.initial_total();
    for (const auto& a : bank.snapshot.anomalies()) anomalies.push_back(a);
    for (const auto& a : bank.snapshot.accounts()) balances[a.name()] = {a.balance(), a.held()};
    for (const auto& [t, x] : bank.snapshot.escrow()) escrow[t] += x;
  }
  int64_t duplicates_applied = 0;
  for (const auto& [id, c] : calls) {
    const auto& [saga, step, comp] = id;
    if (c.applied.size() > 1) {
      duplicates_applied += static_cast<int64_t>(c.applied.size()) - 1;
      report.Violate("I4", absl::StrCat("saga ", saga, " step ", StepName(step), " ",
                                        comp ? "compensation" : "action", " applied ",
                                        c.applied.size(), " times"));
    }
    if (c.keys.size() > 1) {
      report.Violate("I4", absl::StrCat("saga ", saga, " step ", StepName(step), " ",
                                        comp ? "compensation" : "action", " seen under ",
                                        c.keys.size(), " keys: ", absl::StrJoin(c.keys, ", ")));
    }
    if (!sagas.contains(saga)) {
      report.Violate("I4", absl::StrCat("participant called for unknown saga ", saga));
    }
  }
  for (const auto& a : anomalies) {
    if (a.find("second key") != std::string::npos || a.find("used for") != std::string::npos) {
      report.Violate("I4", absl::StrCat("participant: ", a));
    } else {
      report.Violate("I6", absl::StrCat("participant: ", a));
    }
  }
  auto CallsOf = [&](const std::string& saga, int step, bool comp) -> const Calls* {
    auto it = calls.find({saga, step, comp});
    return it == calls.end() ? nullptr : &it->second;
  };

  // --- I1: acknowledged starts ---
  std::map<std::string, std::vector<const Saga*>> by_key;
  for (const auto& [id, s] : sagas) {
    if (s.definition == options.definition && !s.key.empty()) by_key[s.key].push_back(&s);
  }
  int64_t acked = 0;
  std::set<std::string> acked_ids;
  if (options.have_acks) {
    for (const Ack& a : options.acks) {
      if (a.saga_id.empty()) continue;
      ++acked;
      acked_ids.insert(a.saga_id);
      if (a.ids_seen.size() > 1) {
        report.Violate("I1", absl::StrCat("key ", a.key, " was answered with ", a.ids_seen.size(),
                                          " different ids: ", absl::StrJoin(a.ids_seen, ", ")));
      }
      auto it = by_key.find(a.key);
      if (it == by_key.end()) {
        report.Violate(
            "I1", absl::StrCat("acknowledged saga ", a.saga_id, " (key ", a.key, ") has no row"));
      } else if (it->second.size() != 1) {
        report.Violate("I1", absl::StrCat("key ", a.key, " has ", it->second.size(), " sagas"));
      } else if (it->second[0]->id != a.saga_id) {
        report.Violate("I1", absl::StrCat("key ", a.key, " acknowledged as ", a.saga_id,
                                          " but the row is ", it->second[0]->id));
      }
    }
  }
  for (const auto& [key, list] : by_key) {
    if (list.size() > 1) {
      report.Violate("I1", absl::StrCat("key ", key, " has ", list.size(), " sagas"));
    }
  }

  // --- per saga: I2, I3, I5, I7, I8 (structure) ---
  std::map<std::string, int64_t> by_status, by_plan;
  int64_t unplanned_compensations = 0, unknown_outcomes = 0, events_total = 0, claims = 0;
  std::vector<double> to_terminal;
  std::vector<std::pair<int64_t, int>> timeline;  // (at, +1 start / -1 end)
  std::map<std::string, int64_t> expected_delta;  // account -> balance change of COMPLETED
  bool balances_exact = true;
  const int64_t heal_us =
      options.heal_time == absl::InfinitePast() ? 0 : absl::ToUnixMicros(options.heal_time);
  const int64_t bound_us = absl::ToInt64Microseconds(options.terminal_bound);
  for (const auto& [id, s] : sagas) {
    ++by_status[s.status];
    events_total += static_cast<int64_t>(s.events.size());
    claims += s.fence - 1;
    const std::string plan = s.input.is_object() ? s.input.value("plan", "?") : "?";
    ++by_plan[plan];
    const bool terminal =
        s.status == "COMPLETED" || s.status == "COMPENSATED" || s.status == "FAILED";
    if (!terminal) {
      report.Violate("I2", absl::StrCat("saga ", id, " is ", s.status));
      balances_exact = false;
    } else if (s.status == "FAILED" && !options.allow_failed) {
      report.Violate("I2", absl::StrCat("saga ", id,
                                        " is FAILED (no failure was injected to "
                                        "exceed the compensation policy)"));
      balances_exact = false;
    }
    // I3: gap-free, one terminal event, last.
    int terminal_events = 0, started_events = 0;
    for (size_t i = 0; i < s.events.size(); ++i) {
      const Event& e = s.events[i];
      if (e.seq != static_cast<int64_t>(i) + 1) {
        report.Violate("I3", absl::StrCat("saga ", id, ": event #", i + 1, " has seq ", e.seq));
        break;
      }
    }
    for (const Event& e : s.events) {
      if (IsTerminalType(e.type)) ++terminal_events;
      if (e.type == kSagaStarted) ++started_events;
    }
    if (s.events.empty() || s.events.front().type != kSagaStarted || started_events != 1) {
      report.Violate("I3",
                     absl::StrCat("saga ", id, ": history does not begin with one SAGA_STARTED"));
    }
    if (!s.events.empty() && s.events.back().seq != s.last_seq) {
      report.Violate("I3", absl::StrCat("saga ", id, ": last_seq ", s.last_seq,
                                        " but the history ends at ", s.events.back().seq));
    }
    if (terminal) {
      const int want = s.status == "COMPLETED"     ? kSagaCompleted
                       : s.status == "COMPENSATED" ? kSagaCompensated
                                                   : kSagaFailed;
      if (terminal_events != 1 || s.events.empty() || s.events.back().type != want) {
        report.Violate("I3", absl::StrCat("saga ", id, " (", s.status, ") has ", terminal_events,
                                          " terminal events, the last event being type ",
                                          s.events.empty() ? 0 : s.events.back().type));
      }
    } else if (terminal_events != 0) {
      report.Violate("I3", absl::StrCat("saga ", id, " (", s.status, ") has a terminal event"));
    }
    if (!s.events.empty()) {
      timeline.emplace_back(s.events.front().at_us, +1);
      if (terminal) timeline.emplace_back(s.events.back().at_us, -1);
    }
    if (terminal && !s.events.empty()) {
      const int64_t end = s.events.back().at_us;
      to_terminal.push_back(static_cast<double>(end - s.created_us) / 1e6);
      const int64_t from = std::max(heal_us, s.created_us);
      if (end > from + bound_us) {
        report.Violate(
            "I2", absl::StrCat("saga ", id, " ended ", Secs(static_cast<double>(end - from) / 1e6),
                               " after the last fault healed (bound ",
                               absl::FormatDuration(options.terminal_bound), ")"));
      }
    }

    // I8 (structure): attempts count up, each answered at most once, only the latest.
    struct StepTrack {
      int started = 0;             // last forward attempt started
      std::map<int, int> answers;  // attempt -> answer outcomes (3, 4, 5)
      std::map<int, bool> retry_scheduled;
      bool succeeded = false;
      bool definite_failure = false;
      bool unknown = false;
      bool settled = false;
      int comp_started = 0;
      std::map<int, int> comp_answers;
      int comp_succeeded = 0;
      int64_t first_comp_start_seq = 0;
      int64_t comp_success_seq = 0;
    };
    std::vector<StepTrack> st(kStepCount);
    for (const Event& e : s.events) {
      if (e.step < -1 || e.step >= kStepCount) {
        report.Violate("I3", absl::StrCat("saga ", id, " seq ", e.seq, ": step ", e.step));
        continue;
      }
      if (e.step < 0) {
        if (e.type == kRetryRequested) {
          for (auto& t : st) t.comp_started = 0, t.comp_answers.clear();
        }
        continue;
      }
      StepTrack& t = st[static_cast<size_t>(e.step)];
      const std::string where =
          absl::StrCat("saga ", id, " seq ", e.seq, " step ", StepName(e.step));
      switch (e.type) {
        case kStepStarted:
          if (e.attempt != t.started + 1 || t.settled) {
            report.Violate("I8",
                           absl::StrCat(where, ": attempt ", e.attempt, " started after attempt ",
                                        t.started, t.settled ? " (step already settled)" : ""));
          }
          t.started = e.attempt;
          break;
        case kStepSucceeded:
        case kStepRetryScheduled:
        case kStepFailed: {
          const bool engine_decided = e.type == kStepFailed && e.detail.is_object() &&
                                      e.detail.value("unknown", false) &&
                                      (t.retry_scheduled[e.attempt] || t.answers[e.attempt] == 0);
          if (e.attempt != t.started) {
            report.Violate("I8", absl::StrCat(where, ": outcome for attempt ", e.attempt,
                                              " while attempt ", t.started, " is the latest"));
          }
          if (t.settled) {
            report.Violate("I8", absl::StrCat(where, ": outcome after the step was settled"));
          }
          if (!engine_decided && ++t.answers[e.attempt] > 1) {
            report.Violate("I8", absl::StrCat(where, ": attempt ", e.attempt, " answered twice"));
          }
          if (e.type == kStepRetryScheduled) t.retry_scheduled[e.attempt] = true;
          if (e.type == kStepSucceeded) t.succeeded = t.settled = true;
          if (e.type == kStepFailed) {
            t.settled = true;
            if (e.detail.is_object() && e.detail.value("unknown", false)) {
              t.unknown = true;
              ++unknown_outcomes;
            } else {
              t.definite_failure = true;
            }
          }
          break;
        }
        case kCompensationStarted:
          if (e.attempt != t.comp_started + 1) {
            report.Violate("I8", absl::StrCat(where, ": compensation attempt ", e.attempt,
                                              " started after attempt ", t.comp_started));
          }
          if (t.comp_succeeded > 0) {
            report.Violate("I5",
                           absl::StrCat(where, ": compensation started again after it succeeded"));
          }
          if (t.first_comp_start_seq == 0) t.first_comp_start_seq = e.seq;
          t.comp_started = e.attempt;
          break;
        case kCompensationSucceeded:
        case kCompensationRetryScheduled:
        case kCompensationFailed:
          if (e.attempt != t.comp_started) {
            report.Violate("I8",
                           absl::StrCat(where, ": compensation outcome for attempt ", e.attempt,
                                        " while attempt ", t.comp_started, " is the latest"));
          }
          if (++t.comp_answers[e.attempt] > 1) {
            report.Violate(
                "I8", absl::StrCat(where, ": compensation attempt ", e.attempt, " answered twice"));
          }
          if (e.type == kCompensationSucceeded) {
            ++t.comp_succeeded;
            t.comp_success_seq = e.seq;
          }
          break;
        default:
          break;
      }
    }

    // Ledger facts per step.
    for (int i = 0; i < kStepCount; ++i) {
      const StepTrack& t = st[static_cast<size_t>(i)];
      const Calls* act = CallsOf(id, i, false);
      const Calls* comp = CallsOf(id, i, true);
      const bool needs = t.succeeded || t.unknown;
      const std::string where =
          absl::StrCat("saga ", id, " (", s.status, ", plan ", plan, ") step ", StepName(i));
      if (!needs && (t.first_comp_start_seq != 0 || (comp != nullptr && !comp->all.empty()))) {
        report.Violate("I5", absl::StrCat(where, ": compensated although it ",
                                          t.definite_failure ? "failed for good" : "never ran"));
      }
      if (act != nullptr && !act->applied.empty() && t.definite_failure) {
        report.Violate("I5", absl::StrCat(where,
                                          ": its effect was applied but the step was "
                                          "recorded as a definite failure"));
      }
      if (act != nullptr && comp != nullptr && !act->applied.empty() && !comp->applied.empty() &&
          act->applied.front()->at_us() > comp->applied.front()->at_us()) {
        report.Violate("I5",
                       absl::StrCat(where, ": forward effect applied after its compensation"));
      }
      if (comp != nullptr && !comp->applied.empty() && act != nullptr) {
        const bool was_applied =
            !act->applied.empty() && act->applied.front()->at_us() < comp->applied.front()->at_us();
        if (comp->applied.front()->empty() == was_applied) {
          report.Violate(
              "I5",
              absl::StrCat(where, ": compensation ",
                           comp->applied.front()->empty() ? "found nothing" : "undid",
                           " although the action was ", was_applied ? "" : "not ", "applied"));
        }
      }
      if (s.status == "COMPENSATED") {
        if (needs && t.comp_succeeded != 1) {
          report.Violate("I5", absl::StrCat(where, ": ", t.comp_succeeded,
                                            " COMPENSATION_SUCCEEDED events, expected 1"));
        }
        if (needs && (comp == nullptr || comp->applied.size() != 1)) {
          report.Violate("I5", absl::StrCat(where, ": compensation applied ",
                                            comp == nullptr ? 0 : comp->applied.size(),
                                            " times at the participant, expected 1"));
        }
        if (act != nullptr && !act->applied.empty() && (comp == nullptr || comp->applied.empty())) {
          report.Violate("I5", absl::StrCat(where, ": effect applied and never undone"));
        }
        // Reverse order: this step's compensation starts after every later one succeeded.
        for (int j = i + 1; j < kStepCount && needs && t.first_comp_start_seq != 0; ++j) {
          const StepTrack& later = st[static_cast<size_t>(j)];
          if (!(later.succeeded || later.unknown)) continue;
          if (later.comp_success_seq == 0 || t.first_comp_start_seq < later.comp_success_seq) {
            report.Violate(
                "I5", absl::StrCat(where, ": compensation started (seq ", t.first_comp_start_seq,
                                   ") before step ", StepName(j), "'s compensation succeeded (seq ",
                                   later.comp_success_seq, ")"));
          }
          const Calls* later_comp = CallsOf(id, j, true);
          if (comp != nullptr && later_comp != nullptr && !comp->applied.empty() &&
              !later_comp->applied.empty() &&
              comp->applied.front()->at_us() < later_comp->applied.front()->at_us()) {
            report.Violate("I5", absl::StrCat(where,
                                              ": compensation applied at the participant "
                                              "before step ",
                                              StepName(j), "'s"));
          }
        }
      }
      if (s.status == "COMPLETED") {
        if (!t.succeeded) report.Violate("I7", absl::StrCat(where, ": no STEP_SUCCEEDED"));
        if (act == nullptr || act->applied.size() != 1) {
          report.Violate(
              "I7", absl::StrCat(where, ": effect applied ",
                                 act == nullptr ? 0 : act->applied.size(), " times, expected 1"));
        }
        if (t.first_comp_start_seq != 0 || (comp != nullptr && !comp->all.empty())) {
          report.Violate("I7", absl::StrCat(where, ": compensation called in a COMPLETED saga"));
        }
      }
    }
    if (s.status == "COMPLETED" && plan.rfind("fail", 0) == 0) {
      report.Violate("I7", absl::StrCat("saga ", id, " COMPLETED although its plan is '", plan,
                                        "' (a scripted business failure)"));
    }
    if (s.status == "COMPENSATED" && plan == "complete") ++unplanned_compensations;
    if (s.status == "COMPLETED" && s.input.is_object()) {
      const int64_t amount = s.input.value("amount", int64_t{0});
      const int64_t fee = s.input.value("fee", int64_t{0});
      expected_delta[s.input.value("from", "")] -= amount + fee;
      expected_delta[s.input.value("to", "")] += amount;
      expected_delta["fees"] += fee;
    }
  }

  // --- I6: money ---
  if (!options.banks.empty()) {
    if (total != initial_total) {
      report.Violate("I6", absl::StrCat("total balance ", total, " != initial ", initial_total));
    }
    for (const auto& [t, x] : escrow) {
      report.Violate("I6", absl::StrCat("transfer ", t, " left ", x, " in escrow"));
    }
    for (const auto& [name, bh] : balances) {
      if (bh.second != 0) {
        report.Violate("I6", absl::StrCat("account ", name, " left a hold of ", bh.second));
      }
      if (balances_exact) {
        const int64_t start = name == "fees" ? 0 : options.initial_balance;
        const int64_t want = start + expected_delta[name];
        if (bh.first != want) {
          report.Violate("I6", absl::StrCat("account ", name, " has ", bh.first, ", expected ",
                                            want, " from the COMPLETED transfers"));
        }
      }
    }
  }

  // --- I8: the audit of writers and fences; calls by non-owners ---
  int64_t audited_events = 0, stale_writes = 0, non_owner_calls = 0, attributed_calls = 0;
  if (have_audit) {
    for (const auto& [id, rows] : event_audit) {
      const auto& changes = owners[id];
      std::map<int64_t, std::string> claimer;  // fence -> the owner that took it
      for (const auto& c : changes) {
        if (!c.owner.empty() && !claimer.contains(c.fence)) claimer[c.fence] = c.owner;
      }
      int64_t last_fence = 0;
      for (const EventAudit& a : rows) {
        ++audited_events;
        auto it = claimer.find(a.fence);
        if (it == claimer.end() || it->second != a.writer) {
          ++stale_writes;
          report.Violate("I8", absl::StrCat("saga ", id, " seq ", a.seq, " written by '", a.writer,
                                            "' under fence ", a.fence, " held by '",
                                            it == claimer.end() ? "?" : it->second, "'"));
        }
        if (a.fence < last_fence) {
          report.Violate("I8", absl::StrCat("saga ", id, " seq ", a.seq, " written under fence ",
                                            a.fence, " after fence ", last_fence));
        }
        last_fence = std::max(last_fence, a.fence);
      }
    }
    if (!options.port_owner.empty()) {
      const int64_t grace_us = 100000;
      for (const auto& [key, c] : calls) {
        const auto& changes = owners[std::get<0>(key)];
        for (const auto* e : c.all) {
          auto pit = options.port_owner.find(PeerPort(e->peer()));
          if (pit == options.port_owner.end()) {
            ++unknown_callers;
            continue;
          }
          ++attributed_calls;
          const std::string& caller = pit->second;
          // Did `caller` own the saga at any instant of [t - grace, t + grace]?
          const int64_t t = e->received_us();
          bool owned = false;
          std::string owner_at;
          for (size_t k = 0; k < changes.size(); ++k) {
            const int64_t from = changes[k].at_us;
            const int64_t to = k + 1 < changes.size() ? changes[k + 1].at_us : INT64_MAX;
            if (from <= t) owner_at = changes[k].owner;
            if (changes[k].owner == caller && from <= t + grace_us && to >= t - grace_us) {
              owned = true;
            }
          }
          if (!owned) {
            ++non_owner_calls;
            if (options.non_owner_calls_are_violations) {
              report.Violate(
                  "I8", absl::StrCat("saga ", std::get<0>(key), ": ", e->method(), " called by '",
                                     caller, "' while '", owner_at, "' owned it"));
            }
          }
        }
      }
    }
  }

  // --- figures ---
  std::sort(timeline.begin(), timeline.end());
  std::vector<int64_t> all_events;
  for (const auto& [id, s] : sagas) {
    for (const auto& e : s.events) all_events.push_back(e.at_us);
  }
  std::sort(all_events.begin(), all_events.end());
  // The longest time without any new event while some saga was between start and end.
  int64_t longest_pause = 0;
  {
    size_t ti = 0;
    int open = 0;
    for (size_t i = 0; i + 1 < all_events.size(); ++i) {
      while (ti < timeline.size() && timeline[ti].first <= all_events[i]) {
        open += timeline[ti++].second;
      }
      if (open > 0) longest_pause = std::max(longest_pause, all_events[i + 1] - all_events[i]);
    }
  }
  report.AddNumber("sagas", static_cast<double>(sagas.size()));
  if (options.have_acks) {
    report.AddNumber("starts acknowledged", static_cast<double>(acked));
    int64_t unacked = 0;
    for (const auto& [id, s] : sagas) unacked += acked_ids.contains(id) ? 0 : 1;
    report.AddNumber("sagas without an acknowledged start", static_cast<double>(unacked));
  }
  std::vector<std::string> parts;
  for (const auto& [k, v] : by_status) parts.push_back(absl::StrCat(k, " ", v));
  report.AddFigure("by status", absl::StrJoin(parts, ", "));
  for (const auto& [k, v] : by_status) {
    report.numbers[absl::StrCat("status ", k)] = static_cast<double>(v);
  }
  parts.clear();
  for (const auto& [k, v] : by_plan) parts.push_back(absl::StrCat(k, " ", v));
  report.AddFigure("by scripted plan", absl::StrJoin(parts, ", "));
  report.AddNumber("compensated without a scripted failure or hang",
                   static_cast<double>(unplanned_compensations));
  report.AddNumber("events", static_cast<double>(events_total));
  report.AddNumber("claims after the first owner (fence - 1)", static_cast<double>(claims));
  report.AddNumber("steps with an unknown outcome", static_cast<double>(unknown_outcomes));
  report.AddNumber("participant deliveries", static_cast<double>(deliveries));
  report.AddNumber("repeats delivered (same key again)", static_cast<double>(repeats));
  report.AddNumber("duplicates applied", static_cast<double>(duplicates_applied));
  parts.clear();
  for (const auto& [k, v] : faults) parts.push_back(absl::StrCat(k, " ", v));
  report.AddFigure("faults injected at the participant",
                   parts.empty() ? "none" : absl::StrJoin(parts, ", "));
  report.AddNumber("late actions refused (anti-hanging)", static_cast<double>(refused_late));
  report.AddNumber("empty compensations", static_cast<double>(empty_comps));
  std::vector<double> tt = to_terminal;
  if (tt.empty()) {
    for (const char* f :
         {"time to terminal p50 (s)", "time to terminal p99 (s)", "time to terminal max (s)"}) {
      report.AddFigure(f, "n/a (no saga ended)");
    }
  } else {
    report.AddNumber("time to terminal p50 (s)", Percentile(tt, 50), 2);
    report.AddNumber("time to terminal p99 (s)", Percentile(tt, 99), 2);
    report.AddNumber("time to terminal max (s)", tt.back(), 2);
  }
  report.AddNumber("longest pause in progress (s)", static_cast<double>(longest_pause) / 1e6, 2);
  if (!options.banks.empty()) {
    report.AddFigure("balance total (initial)", absl::StrCat(total, " (", initial_total, ")"));
  }
  if (have_audit) {
    report.AddNumber("events audited", static_cast<double>(audited_events));
    report.AddNumber("events written under a stale fence", static_cast<double>(stale_writes));
    if (!options.port_owner.empty()) {
      report.AddNumber("calls attributed to a replica", static_cast<double>(attributed_calls));
      report.AddNumber("calls by a replica not owning the saga",
                       static_cast<double>(non_owner_calls));
      report.AddNumber("calls with an unknown sender", static_cast<double>(unknown_callers));
    }
  } else {
    report.AddFigure("audit", "not installed: I8 checked from the history's structure only");
  }
  return report;
}

}  // namespace saga::fault
