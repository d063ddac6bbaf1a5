// Database outage (T2): PostgreSQL down for 30 s (immediate stop) while 200 sagas are in
// flight. Pass: health NOT_SERVING within 5 s; StartSaga answers UNAVAILABLE quickly (no hang,
// no INTERNAL); sagad's connections never exceed its pool (+1: the LISTEN connection, which is
// not pooled); progress resumes within 5 s after the database is back; I1-I8.
// Sizes: SAGA_FAULT_OUTAGE_{SAGAS,S,POOL}.
#include <atomic>
#include <thread>

#include <pqxx/pqxx>

#include "grpcpp/grpcpp.h"
#include "saga/v1/orchestrator.grpc.pb.h"
#include "tests/fault/scenarios/common.h"

namespace saga::fault {
namespace {

struct Probe {
  std::string code;
  absl::Duration latency;
};

TEST(FaultScenario, DatabaseOutage) {
  Scenario scenario("db_outage");
  const bool quick = QuickMode();
  const int sagas = static_cast<int>(EnvInt("SAGA_FAULT_OUTAGE_SAGAS", quick ? 50 : 200));
  const absl::Duration outage = absl::Seconds(EnvInt("SAGA_FAULT_OUTAGE_S", quick ? 8 : 30));
  const int pool = static_cast<int>(EnvInt("SAGA_FAULT_OUTAGE_POOL", 4));
  ASSERT_TRUE(scenario.StartDatabase().ok());
  bank::v1::FaultConfig faults;
  faults.set_seed(scenario.seed());
  ASSERT_TRUE(scenario.StartBank(faults, false, {.timeout = "3s"}).ok());
  SagadOptions so = scenario.SagadDefaults("outage-1");
  so.db_pool_size = pool;
  absl::StatusOr<SagadProcess*> sagad = scenario.Spawn(so);
  ASSERT_TRUE(sagad.ok()) << sagad.status();
  SagadProcess* proc = *sagad;
  ASSERT_TRUE(scenario.InstallAudit().ok());

  // Connections of sagad, sampled while the database is up.
  std::atomic<int> max_connections{0};
  std::atomic<bool> db_up{true}, stop_sampler{false};
  std::thread sampler([&] {
    std::unique_ptr<pqxx::connection> conn;
    while (!stop_sampler) {
      absl::SleepFor(absl::Milliseconds(100));
      if (!db_up) {
        conn.reset();
        continue;
      }
      try {
        if (!conn) {
          conn = std::make_unique<pqxx::connection>(scenario.db().Url("saga-fault-sampler"));
        }
        pqxx::nontransaction txn(*conn);
        const int n = txn.exec1(
                             "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                             "'outage-1'")[0]
                          .as<int>();
        int seen = max_connections.load();
        while (n > seen && !max_connections.compare_exchange_weak(seen, n)) {
        }
      } catch (const std::exception&) {
        conn.reset();
      }
    }
  });

  Driver driver(
      {.addresses = {proc->address()}, .db_url = scenario.DbUrl(), .in_flight = sagas},
      MakeWorkload(
          {.seed = scenario.seed(), .sagas = sagas, .key_prefix = "outage", .delay_ms = 500}));
  driver.Start();
  ASSERT_TRUE(driver.WaitAllStarted(absl::Seconds(60)));
  absl::SleepFor(absl::Milliseconds(500));
  const int in_flight_at_outage = driver.acked() - driver.terminal();
  const int64_t rss_before = RssKiB(proc->pid());

  // The outage.
  const absl::Time t0 = absl::Now();
  db_up = false;
  ASSERT_TRUE(scenario.db().Stop("immediate").ok());
  absl::Duration not_serving_after = absl::InfiniteDuration();
  std::atomic<bool> outage_over{false};
  std::thread health([&] {
    while (!outage_over) {
      if (proc->Health() == "NOT_SERVING" && not_serving_after == absl::InfiniteDuration()) {
        not_serving_after = absl::Now() - t0;
      }
      absl::SleepFor(absl::Milliseconds(100));
    }
  });
  std::vector<Probe> probes;
  {
    auto stub = saga::v1::SagaOrchestrator::NewStub(
        grpc::CreateChannel(proc->address(), grpc::InsecureChannelCredentials()));
    const std::vector<SagaSpec> probe_specs =
        MakeWorkload({.seed = scenario.seed(), .sagas = 100, .key_prefix = "outage-probe"});
    for (size_t i = 0; i < probe_specs.size() && absl::Now() < t0 + outage - absl::Seconds(2);
         ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(15)));
      saga::v1::StartSagaRequest req;
      req.set_definition(kDefinitionName);
      req.set_input_json(probe_specs[i].input_json);
      req.set_idempotency_key(probe_specs[i].key);
      saga::v1::StartSagaResponse resp;
      const absl::Time sent = absl::Now();
      grpc::Status s = stub->StartSaga(&ctx, req, &resp);
      probes.push_back({CodeName(static_cast<int>(s.error_code())), absl::Now() - sent});
      absl::SleepFor(absl::Milliseconds(1000));
    }
  }
  const absl::Time resume_at = t0 + outage;
  if (absl::Now() < resume_at) absl::SleepFor(resume_at - absl::Now());
  const absl::Duration down = absl::Now() - t0;
  ASSERT_TRUE(scenario.db().Start().ok());
  const absl::Time t1 = absl::Now();
  db_up = true;
  outage_over = true;
  health.join();

  // Progress: the first event recorded after the database came back.
  absl::Duration progress_after = absl::InfiniteDuration(),
                 serving_after = absl::InfiniteDuration();
  WaitUntil(
      [&] {
        if (serving_after == absl::InfiniteDuration() && proc->Health() == "SERVING") {
          serving_after = absl::Now() - t1;
        }
        try {
          pqxx::connection conn(scenario.db().Url("saga-fault-progress"));
          pqxx::nontransaction txn(conn);
          const int64_t n = txn.exec_params1(
                                   "SELECT count(*) FROM saga_events WHERE recorded_at > "
                                   "to_timestamp($1::double precision / 1e6)",
                                   absl::ToUnixMicros(t1))[0]
                                .as<int64_t>();
          if (n > 0 && progress_after == absl::InfiniteDuration()) {
            progress_after = absl::Now() - t1;
          }
        } catch (const std::exception&) {
        }
        return progress_after != absl::InfiniteDuration() &&
               serving_after != absl::InfiniteDuration();
      },
      absl::Seconds(30), absl::Milliseconds(100));

  EXPECT_TRUE(driver.WaitAllTerminal(absl::Seconds(90)))
      << driver.terminal() << " of " << driver.acked() << " ended";
  const int64_t rss_after = RssKiB(proc->pid());
  driver.Stop();
  stop_sampler = true;
  sampler.join();
  proc->Signal(SIGTERM);
  EXPECT_TRUE(proc->WaitExit(absl::Seconds(30)));

  // The claim loop fails at every poll while the database is down; it must not log each one.
  const int64_t claim_warnings = proc->CountLogLines("claiming due sagas failed");
  const int64_t claim_recoveries = proc->CountLogLines("claiming due sagas works again");
  const int64_t renew_warnings = proc->CountLogLines("renewing leases failed");
  const int64_t renew_recoveries = proc->CountLogLines("renewing leases works again");

  std::map<std::string, int> probe_codes;
  std::vector<double> probe_ms;
  for (const auto& p : probes) {
    ++probe_codes[p.code];
    probe_ms.push_back(absl::ToDoubleMilliseconds(p.latency));
  }
  std::vector<std::string> codes;
  for (const auto& [c, n] : probe_codes) codes.push_back(absl::StrCat(c, " ", n));
  std::vector<double> ms = probe_ms;
  const double probe_p50 = Percentile(ms, 50);  // sorts `ms`
  const double probe_max = ms.empty() ? 0.0 : ms.back();
  const Figures figures = {
      {"sagas / in flight at the outage", absl::StrCat(sagas, " / ", in_flight_at_outage)},
      {"database down", Seconds(down)},
      {"health NOT_SERVING after",
       not_serving_after == absl::InfiniteDuration() ? "never" : Millis(not_serving_after)},
      {"StartSaga during the outage", absl::StrJoin(codes, ", ")},
      {"StartSaga latency during the outage p50 / max",
       absl::StrFormat("%.0f / %.0f ms", probe_p50, probe_max)},
      {"sagad connections max (pool)",
       absl::StrCat(max_connections.load(), " (", pool, " + 1 LISTEN)")},
      {"health SERVING after the return",
       serving_after == absl::InfiniteDuration() ? "never" : Millis(serving_after)},
      {"first progress after the return",
       progress_after == absl::InfiniteDuration() ? "never" : Millis(progress_after)},
      {"sagad RSS before / after",
       absl::StrFormat("%.1f / %.1f MiB", rss_before / 1024.0, rss_after / 1024.0)},
      {"claim failures logged / 'works again' lines",
       absl::StrCat(claim_warnings, " / ", claim_recoveries)},
      {"lease renewal failures logged / 'works again' lines",
       absl::StrCat(renew_warnings, " / ", renew_recoveries)},
  };
  CheckOptions options;
  options.heal_time = t1;
  CheckReport report = CheckAndReport(scenario, driver.Records(), options, figures, kAllInvariants);
  EXPECT_TRUE(report.Passed(kAllInvariants)) << report.InvariantSummary(kAllInvariants);
  EXPECT_LE(not_serving_after, absl::Seconds(5));
  EXPECT_FALSE(probes.empty());
  for (const auto& p : probes) {
    EXPECT_EQ(p.code, "UNAVAILABLE");
    EXPECT_LE(p.latency, absl::Seconds(6)) << "StartSaga hung while the database was down";
  }
  EXPECT_LE(max_connections.load(), pool + 1);
  EXPECT_LE(progress_after, absl::Seconds(5));
  EXPECT_EQ(driver.acked(), sagas);
  // The first failure, then one line per 30 s.
  EXPECT_LE(claim_warnings, absl::ToInt64Seconds(down) / 30 + 2);
  if (claim_warnings > 0) {
    EXPECT_EQ(claim_recoveries, 1);
  }
  EXPECT_LE(renew_warnings, absl::ToInt64Seconds(down) / 30 + 2);
  if (renew_warnings > 0) {
    EXPECT_EQ(renew_recoveries, 1);
  }
}

}  // namespace
}  // namespace saga::fault

namespace saga::fault {
namespace {

// A database outage longer than the lease while participant calls outlast the outage: when the
// database returns, the replica's claim loop finds its own sagas due with expired leases. It
// must not lose them: every saga must still end (I2). One replica, lease 3 s, the first call of
// each saga held 20 s, the database down 10 s.
TEST(FaultScenario, OutageLongerThanTheLease) {
  Scenario scenario("outage_long_calls");
  const int sagas = static_cast<int>(EnvInt("SAGA_FAULT_OUTAGE_LONG_SAGAS", 10));
  ASSERT_TRUE(scenario.StartDatabase().ok());
  bank::v1::FaultConfig faults;
  faults.set_seed(scenario.seed());
  ASSERT_TRUE(scenario.StartBank(faults, false, {.timeout = "30s"}).ok());
  SagadOptions so = scenario.SagadDefaults("long-calls-1");
  so.lease = "3s";
  absl::StatusOr<SagadProcess*> sagad = scenario.Spawn(so);
  ASSERT_TRUE(sagad.ok()) << sagad.status();
  ASSERT_TRUE(scenario.InstallAudit().ok());
  Driver driver(
      {.addresses = {(*sagad)->address()}, .db_url = scenario.DbUrl(), .in_flight = sagas},
      MakeWorkload({.seed = scenario.seed(),
                    .sagas = sagas,
                    .key_prefix = "long-calls",
                    .hold_first_step_ms = 20000}));
  driver.Start();
  ASSERT_TRUE(driver.WaitAllStarted(absl::Seconds(30)));
  WaitUntil([&] { return scenario.BankInFlight() >= sagas; }, absl::Seconds(10));
  ASSERT_TRUE(scenario.db().Stop("immediate").ok());
  absl::SleepFor(absl::Seconds(10));
  ASSERT_TRUE(scenario.db().Start().ok());
  const absl::Time back = absl::Now();
  // The held calls answer ~20 s after they were sent; then each saga needs a few seconds.
  const bool ended = driver.WaitAllTerminal(absl::Seconds(60));
  const int stuck = driver.acked() - driver.terminal();
  driver.Stop();
  // A stuck saga's row: still RUNNING, owned by this very replica, its lease kept renewed.
  int64_t leased_by_itself = -1;
  try {
    pqxx::connection conn(scenario.DbUrl());
    pqxx::nontransaction txn(conn);
    leased_by_itself =
        txn.exec1(
               "SELECT count(*) FROM sagas WHERE status = 'RUNNING' AND owner = 'long-calls-1'"
               " AND lease_expires_at > now() AND fence > 1")[0]
            .as<int64_t>();
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  (*sagad)->Signal(SIGTERM);
  EXPECT_TRUE((*sagad)->WaitExit(absl::Seconds(30)));
  const Figures figures = {
      {"sagas / first call held", absl::StrCat(sagas, " / 20 s")},
      {"lease / database down", "3 s / 10 s"},
      {"sagas not ended 60 s after the database returned", absl::StrCat(stuck)},
      {"of them RUNNING, re-claimed by and still leased to the same replica",
       absl::StrCat(leased_by_itself)},
      {"'another replica owns it now' in the log (one replica only)",
       absl::StrCat((*sagad)->CountLogLines("another replica owns it now"))},
  };
  CheckOptions options;
  options.heal_time = back + absl::Seconds(12);  // when the held calls answer
  CheckReport report = CheckAndReport(scenario, driver.Records(), options, figures, kAllInvariants);
  EXPECT_TRUE(ended) << stuck << " sagas never ended";
  EXPECT_TRUE(report.Passed(kAllInvariants)) << report.InvariantSummary(kAllInvariants);
}

}  // namespace
}  // namespace saga::fault
