// Duplicate starts (T5): 200 keys x 20 concurrent StartSaga callers, spread over two replicas
// sharing the database; the last 50 keys' callers
// first use client deadlines of 1-30 ms (so that many give up after the server may have
// committed) and then retry with a normal deadline; afterwards 50 keys are re-sent with a
// different input. Pass: exactly 200 sagas; every caller of a key that got OK got the same id;
// at most one `created` per key; different input -> ALREADY_EXISTS; I1-I8 once they ran.
// Sizes: SAGA_FAULT_DUP_{KEYS,CALLERS,CHANGED,DEADLINE_KEYS}.
#include <atomic>
#include <condition_variable>
#include <mutex>

#include <pqxx/pqxx>

#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "saga/v1/orchestrator.grpc.pb.h"
#include "tests/fault/scenarios/common.h"

namespace saga::fault {
namespace {

struct Outcome {
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  std::string saga_id;
  bool created = false;
};

// Sends all `requests` at once (callback API) and waits for every answer.
// Callers alternate between the replicas' stubs.
std::vector<Outcome> Burst(std::unique_ptr<saga::v1::SagaOrchestrator::Stub> (&stubs)[2],
                           const std::vector<saga::v1::StartSagaRequest>& requests,
                           const std::vector<absl::Duration>& deadlines, size_t first = 0) {
  struct Call {
    grpc::ClientContext ctx;
    saga::v1::StartSagaRequest req;
    saga::v1::StartSagaResponse resp;
  };
  std::vector<std::unique_ptr<Call>> calls;
  std::vector<Outcome> out(requests.size());
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto c = std::make_unique<Call>();
    c->req = requests[i];
    c->ctx.set_deadline(absl::ToChronoTime(absl::Now() + deadlines[i]));
    calls.push_back(std::move(c));
  }
  for (size_t i = 0; i < calls.size(); ++i) {
    Call* c = calls[i].get();
    stubs[(first + i) % 2]->async()->StartSaga(
        &c->ctx, &c->req, &c->resp, [&, c, i](grpc::Status s) {
          std::lock_guard<std::mutex> lock(mu);
          out[i] = {s.error_code(), c->resp.saga_id(), c->resp.created()};
          ++done;
          cv.notify_all();
        });
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done == calls.size(); });
  return out;
}

TEST(FaultScenario, DuplicateStarts) {
  Scenario scenario("duplicate_starts");
  const bool quick = QuickMode();
  const int keys = static_cast<int>(EnvInt("SAGA_FAULT_DUP_KEYS", quick ? 40 : 200));
  const int callers = static_cast<int>(EnvInt("SAGA_FAULT_DUP_CALLERS", quick ? 10 : 20));
  const int changed = static_cast<int>(EnvInt("SAGA_FAULT_DUP_CHANGED", quick ? 10 : 50));
  const int deadline_keys =
      static_cast<int>(EnvInt("SAGA_FAULT_DUP_DEADLINE_KEYS", quick ? 10 : 50));
  ASSERT_TRUE(scenario.StartDatabase().ok());
  bank::v1::FaultConfig faults;
  faults.set_seed(scenario.seed());
  ASSERT_TRUE(scenario.StartBank(faults, false).ok());
  absl::StatusOr<SagadProcess*> sagad = scenario.Spawn(scenario.SagadDefaults("dup-1"));
  ASSERT_TRUE(sagad.ok()) << sagad.status();
  ASSERT_TRUE(scenario.InstallAudit().ok());
  absl::StatusOr<SagadProcess*> sagad2 = scenario.Spawn(scenario.SagadDefaults("dup-2"));
  ASSERT_TRUE(sagad2.ok()) << sagad2.status();
  std::unique_ptr<saga::v1::SagaOrchestrator::Stub> stubs[2] = {
      saga::v1::SagaOrchestrator::NewStub(
          grpc::CreateChannel((*sagad)->address(), grpc::InsecureChannelCredentials())),
      saga::v1::SagaOrchestrator::NewStub(
          grpc::CreateChannel((*sagad2)->address(), grpc::InsecureChannelCredentials()))};

  const std::vector<SagaSpec> specs =
      MakeWorkload({.seed = scenario.seed(), .sagas = keys, .key_prefix = "dup"});
  std::vector<std::vector<Outcome>> per_key(static_cast<size_t>(keys));
  std::map<std::string, int> codes;
  int64_t calls = 0;
  const absl::Time start = absl::Now();
  // Phase 1: `callers` concurrent starts per key, a few keys at a time.
  const int keys_per_burst = 5;
  for (int k0 = 0; k0 < keys; k0 += keys_per_burst) {
    std::vector<saga::v1::StartSagaRequest> reqs;
    std::vector<absl::Duration> deadlines;
    std::vector<int> key_of;
    for (int k = k0; k < std::min(keys, k0 + keys_per_burst); ++k) {
      const bool short_deadline = k >= keys - deadline_keys;
      for (int c = 0; c < callers; ++c) {
        saga::v1::StartSagaRequest r;
        r.set_definition(kDefinitionName);
        r.set_input_json(specs[static_cast<size_t>(k)].input_json);
        r.set_idempotency_key(specs[static_cast<size_t>(k)].key);
        reqs.push_back(r);
        deadlines.push_back(
            short_deadline ? absl::Milliseconds(1 + Mix(scenario.seed(), "deadline",
                                                        static_cast<uint64_t>(k * callers + c)) %
                                                        30)
                           : absl::Seconds(10));
        key_of.push_back(k);
      }
    }
    std::vector<Outcome> out = Burst(stubs, reqs, deadlines);
    calls += static_cast<int64_t>(out.size());
    // Callers that did not get an answer retry with a normal deadline, up to 5 times.
    for (size_t i = 0; i < out.size(); ++i) {
      ++codes[CodeName(static_cast<int>(out[i].code))];
      for (int attempt = 0; attempt < 5 && out[i].code != grpc::StatusCode::OK; ++attempt) {
        std::vector<Outcome> again = Burst(stubs, {reqs[i]}, {absl::Seconds(10)}, i + attempt + 1);
        ++calls;
        ++codes[absl::StrCat(CodeName(static_cast<int>(again[0].code)), " (retry)")];
        out[i] = again[0];
      }
      per_key[static_cast<size_t>(key_of[i])].push_back(out[i]);
    }
  }
  // Phase 2: the same keys with another input.
  int already_exists = 0, changed_calls = 0;
  for (int k = 0; k < changed; ++k) {
    nlohmann::json input = nlohmann::json::parse(specs[static_cast<size_t>(k)].input_json);
    input["amount"] = input["amount"].get<int64_t>() + 1;
    saga::v1::StartSagaRequest r;
    r.set_definition(kDefinitionName);
    r.set_input_json(input.dump());
    r.set_idempotency_key(specs[static_cast<size_t>(k)].key);
    std::vector<Outcome> out =
        Burst(stubs, {r, r, r}, {absl::Seconds(10), absl::Seconds(10), absl::Seconds(10)});
    for (const auto& o : out) {
      ++changed_calls;
      if (o.code == grpc::StatusCode::ALREADY_EXISTS) ++already_exists;
    }
  }
  const absl::Duration took = absl::Now() - start;

  // Every caller of a key got the same id; at most one was told `created`.
  std::vector<StartRecord> records;
  int key_violations = 0, created_total = 0, keys_without_created = 0;
  std::set<std::string> distinct;
  for (int k = 0; k < keys; ++k) {
    StartRecord r;
    r.key = specs[static_cast<size_t>(k)].key;
    int created = 0;
    for (const auto& o : per_key[static_cast<size_t>(k)]) {
      if (o.code != grpc::StatusCode::OK) continue;
      r.ids_seen.insert(o.saga_id);
      if (!r.acked) {
        r.acked = true;
        r.saga_id = o.saga_id;
      }
      created += o.created ? 1 : 0;
    }
    created_total += created;
    if (created == 0) ++keys_without_created;
    // Without client deadlines in the way, exactly one caller of a key creates the saga.
    const bool plain_key = k < keys - deadline_keys;
    if (r.ids_seen.size() != 1 || created > 1 || (plain_key && created != 1)) {
      ++key_violations;
      ADD_FAILURE() << "key " << r.key << ": ids " << absl::StrJoin(r.ids_seen, ", ") << ", "
                    << created << " callers told created";
    }
    distinct.insert(r.ids_seen.begin(), r.ids_seen.end());
    records.push_back(std::move(r));
  }
  int64_t rows = -1;
  try {
    pqxx::connection conn(scenario.DbUrl());
    pqxx::nontransaction txn(conn);
    rows = txn.exec1("SELECT count(*) FROM sagas")[0].as<int64_t>();
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }

  // Let them run to the end, then check everything.
  WaitUntil(
      [&] {
        try {
          pqxx::connection conn(scenario.DbUrl());
          pqxx::nontransaction txn(conn);
          return txn.exec1(
                        "SELECT count(*) FROM sagas WHERE status NOT IN ('COMPLETED', "
                        "'COMPENSATED', 'FAILED')")[0]
                     .as<int64_t>() == 0;
        } catch (const std::exception&) {
          return false;
        }
      },
      absl::Seconds(120), absl::Milliseconds(200));
  for (SagadProcess* p : {*sagad, *sagad2}) p->Signal(SIGTERM);
  for (SagadProcess* p : {*sagad, *sagad2}) EXPECT_TRUE(p->WaitExit(absl::Seconds(30)));

  std::vector<std::string> code_list;
  for (const auto& [c, n] : codes) code_list.push_back(absl::StrCat(c, " ", n));
  const Figures figures = {
      {"keys x concurrent callers (over 2 replicas)", absl::StrCat(keys, " x ", callers)},
      {"keys whose callers used 1-30 ms deadlines first", absl::StrCat(deadline_keys)},
      {"StartSaga calls", absl::StrCat(calls + changed_calls)},
      {"answers", absl::StrJoin(code_list, ", ")},
      {"distinct saga ids answered", absl::StrCat(distinct.size())},
      {"saga rows", absl::StrCat(rows)},
      {"callers told created (keys with none)",
       absl::StrCat(created_total, " (", keys_without_created, ")")},
      {"different input -> ALREADY_EXISTS", absl::StrCat(already_exists, " of ", changed_calls)},
      {"keys with inconsistent answers", absl::StrCat(key_violations)},
      {"start phase", Seconds(took)},
  };
  CheckReport report = CheckAndReport(scenario, records, {}, figures, kAllInvariants);
  EXPECT_TRUE(report.Passed(kAllInvariants)) << report.InvariantSummary(kAllInvariants);
  EXPECT_EQ(rows, keys);
  EXPECT_EQ(static_cast<int>(distinct.size()), keys);
  EXPECT_EQ(already_exists, changed_calls);
  EXPECT_EQ(key_violations, 0);
}

}  // namespace
}  // namespace saga::fault
