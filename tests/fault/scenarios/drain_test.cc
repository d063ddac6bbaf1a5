// Graceful drain (T6): replica A holds 100 calls in flight (the participant holds each 2 s)
// when it gets SIGTERM; replica B runs beside it. Pass: A's health NOT_SERVING at once (< 1 s);
// new starts on A get UNAVAILABLE; A exits 0 within the drain timeout (+ 2 s); its leases are
// released so that B claims every unfinished saga within 2 s of the release (measured on the
// database clock, from the audit); a second SIGTERM makes a draining replica exit at once
// (< 1 s); I1-I8 after B finished everything. Sizes: SAGA_FAULT_DRAIN_CALLS.
#include <signal.h>
#include <sys/wait.h>

#include <pqxx/pqxx>

#include "grpcpp/grpcpp.h"
#include "saga/v1/orchestrator.grpc.pb.h"
#include "tests/fault/scenarios/common.h"

namespace saga::fault {
namespace {

TEST(FaultScenario, GracefulDrain) {
  Scenario scenario("graceful_drain");
  const bool quick = QuickMode();
  const int sagas = static_cast<int>(EnvInt("SAGA_FAULT_DRAIN_CALLS", quick ? 30 : 100));
  const absl::Duration drain_timeout = absl::Seconds(10);
  ASSERT_TRUE(scenario.StartDatabase().ok());
  bank::v1::FaultConfig faults;
  faults.set_seed(scenario.seed());
  ASSERT_TRUE(scenario.StartBank(faults, false, {.timeout = "5s"}).ok());
  SagadOptions oa = scenario.SagadDefaults("drain-a");
  oa.lease = "10s";
  oa.drain_timeout = "10s";
  absl::StatusOr<SagadProcess*> a = scenario.Spawn(oa);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(scenario.InstallAudit().ok());
  SagadOptions ob = scenario.SagadDefaults("drain-b");
  ob.lease = "10s";
  ob.poll_interval = "1s";  // the default: the takeover must come from the release's NOTIFY
  absl::StatusOr<SagadProcess*> b = scenario.Spawn(ob);
  ASSERT_TRUE(b.ok()) << b.status();

  std::vector<SagaSpec> specs = MakeWorkload(
      {.seed = scenario.seed(), .sagas = sagas, .key_prefix = "drain", .delay_ms = 2000});
  Driver driver({.addresses = {(*a)->address()}, .db_url = scenario.DbUrl(), .in_flight = sagas},
                specs);
  driver.Start();
  ASSERT_TRUE(driver.WaitAllStarted(absl::Seconds(30)));
  WaitUntil([&] { return scenario.BankInFlight() >= sagas; }, absl::Seconds(10));
  const int64_t calls_in_flight = scenario.BankInFlight();

  // SIGTERM: health, new starts, exit.
  const absl::Time t0 = absl::Now();
  (*a)->Signal(SIGTERM);
  absl::Duration not_serving = absl::InfiniteDuration();
  WaitUntil(
      [&] {
        if ((*a)->Health(absl::Milliseconds(200)) == "NOT_SERVING") {
          not_serving = absl::Now() - t0;
          return true;
        }
        return false;
      },
      absl::Seconds(3), absl::Milliseconds(10));
  std::string start_code;
  {
    auto stub = saga::v1::SagaOrchestrator::NewStub(
        grpc::CreateChannel((*a)->address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    saga::v1::StartSagaRequest req;
    req.set_definition(kDefinitionName);
    req.set_input_json(
        MakeWorkload({.seed = scenario.seed(), .sagas = 1, .key_prefix = "drain-late"})[0]
            .input_json);
    req.set_idempotency_key("drain-late-start");
    saga::v1::StartSagaResponse resp;
    start_code = CodeName(static_cast<int>(stub->StartSaga(&ctx, req, &resp).error_code()));
  }
  int status = -1;
  const bool exited = (*a)->WaitExit(drain_timeout + absl::Seconds(5), &status);
  const absl::Duration exit_after = absl::Now() - t0;

  // Release -> takeover, per saga, on the database clock (audit): the release is A's update
  // setting owner NULL on a running saga; the takeover is B's claim.
  double worst_takeover = -1;
  int64_t released = 0;
  auto measure = [&] {
    try {
      pqxx::connection conn(scenario.DbUrl());
      pqxx::nontransaction txn(conn);
      const pqxx::row row = txn.exec1(
          "SELECT count(*), coalesce(max(extract(epoch FROM c.at - r.at)), -1)"
          " FROM fault_owner_audit r"
          " JOIN LATERAL (SELECT min(at) AS at FROM fault_owner_audit c"
          "               WHERE c.saga_id = r.saga_id AND c.owner = 'drain-b' AND c.at >= r.at) c "
          "ON true"
          " WHERE r.writer = 'drain-a' AND r.owner IS NULL"
          "   AND EXISTS (SELECT 1 FROM fault_owner_audit x WHERE x.saga_id = r.saga_id"
          "               AND x.owner = 'drain-b')");
      released = row[0].as<int64_t>();
      worst_takeover = row[1].as<double>();
    } catch (const std::exception& e) {
      ADD_FAILURE() << e.what();
    }
  };

  // A second replica C gets two SIGTERMs: the second exits at once.
  SagadOptions oc = scenario.SagadDefaults("drain-c");
  oc.lease = "3s";
  oc.drain_timeout = "30s";
  absl::StatusOr<SagadProcess*> c = scenario.Spawn(oc);
  ASSERT_TRUE(c.ok()) << c.status();
  Driver driver_c(
      {.addresses = {(*c)->address()}, .db_url = scenario.DbUrl(), .in_flight = 20},
      MakeWorkload(
          {.seed = scenario.seed(), .sagas = 20, .key_prefix = "drain-c", .delay_ms = 2000}));
  driver_c.Start();
  ASSERT_TRUE(driver_c.WaitAllStarted(absl::Seconds(30)));
  WaitUntil([&] { return scenario.BankInFlight() >= 10; }, absl::Seconds(10));
  (*c)->Signal(SIGTERM);
  absl::SleepFor(absl::Milliseconds(300));
  const absl::Time t_second = absl::Now();
  (*c)->Signal(SIGTERM);
  int c_status = -1;
  const bool c_exited = (*c)->WaitExit(absl::Seconds(5), &c_status);
  const absl::Duration second_exit = absl::Now() - t_second;

  EXPECT_TRUE(driver.WaitAllTerminal(absl::Seconds(60)))
      << driver.terminal() << " of " << driver.acked() << " ended";
  EXPECT_TRUE(driver_c.WaitAllTerminal(absl::Seconds(60)));
  driver.Stop();
  driver_c.Stop();
  measure();
  (*b)->Signal(SIGTERM);
  EXPECT_TRUE((*b)->WaitExit(absl::Seconds(30)));

  std::vector<StartRecord> records = driver.Records();
  for (auto& r : driver_c.Records()) records.push_back(std::move(r));
  const Figures figures = {
      {"sagas / calls in flight at SIGTERM", absl::StrCat(sagas, " / ", calls_in_flight)},
      {"health NOT_SERVING after SIGTERM",
       not_serving == absl::InfiniteDuration() ? "never" : Millis(not_serving)},
      {"StartSaga while draining", start_code},
      {"exit status / after SIGTERM (drain timeout)",
       absl::StrCat(exited && WIFEXITED(status) ? absl::StrCat("exit ", WEXITSTATUS(status))
                                                : absl::StrCat("status ", status),
                    " / ", Seconds(exit_after), " (", Seconds(drain_timeout), ")")},
      {"sagas released by A and taken by B", absl::StrCat(released)},
      {"worst release -> takeover (database clock)", absl::StrFormat("%.2f s", worst_takeover)},
      {"second SIGTERM -> exit", c_exited ? Millis(second_exit) : "did not exit"},
  };
  CheckReport report = CheckAndReport(scenario, records, {}, figures, kAllInvariants);
  EXPECT_TRUE(report.Passed(kAllInvariants)) << report.InvariantSummary(kAllInvariants);
  EXPECT_LT(not_serving, absl::Seconds(1));
  EXPECT_EQ(start_code, "UNAVAILABLE");
  EXPECT_TRUE(exited && WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_LE(exit_after, drain_timeout + absl::Seconds(2));
  EXPECT_GT(released, 0);
  EXPECT_GE(worst_takeover, 0);
  EXPECT_LE(worst_takeover, 2.0);
  EXPECT_TRUE(c_exited);
  EXPECT_LT(second_exit, absl::Seconds(1));
}

}  // namespace
}  // namespace saga::fault

namespace saga::fault {
namespace {

// A drain that lasts longer than the lease: the draining replica must keep its leases until it
// releases them (README: calls in flight finish, then the leases are released), so that no
// other replica takes its sagas while their calls are still in flight and the drained
// outcomes are not thrown away by the fence. Lease 2 s, the first call of each saga held 4.5 s,
// drain timeout 20 s.
TEST(FaultScenario, LongDrainKeepsItsLeases) {
  Scenario scenario("long_drain");
  const int sagas = static_cast<int>(EnvInt("SAGA_FAULT_LONG_DRAIN_SAGAS", 20));
  ASSERT_TRUE(scenario.StartDatabase().ok());
  bank::v1::FaultConfig faults;
  faults.set_seed(scenario.seed());
  ASSERT_TRUE(scenario.StartBank(faults, false, {.timeout = "8s"}).ok());
  SagadOptions oa = scenario.SagadDefaults("long-a");
  oa.lease = "2s";
  oa.drain_timeout = "20s";
  absl::StatusOr<SagadProcess*> a = scenario.Spawn(oa);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(scenario.InstallAudit().ok());
  SagadOptions ob = scenario.SagadDefaults("long-b");
  ob.lease = "2s";
  absl::StatusOr<SagadProcess*> b = scenario.Spawn(ob);
  ASSERT_TRUE(b.ok()) << b.status();

  Driver driver({.addresses = {(*a)->address()}, .db_url = scenario.DbUrl(), .in_flight = sagas},
                MakeWorkload({.seed = scenario.seed(),
                              .sagas = sagas,
                              .key_prefix = "long",
                              .hold_first_step_ms = 4500}));
  driver.Start();
  ASSERT_TRUE(driver.WaitAllStarted(absl::Seconds(30)));
  WaitUntil([&] { return scenario.BankInFlight() >= sagas; }, absl::Seconds(10));
  const size_t log_from = (*a)->LogSize();
  const absl::Time t0 = absl::Now();
  (*a)->Signal(SIGTERM);
  int status = -1;
  const bool exited = (*a)->WaitExit(absl::Seconds(25), &status);
  const absl::Duration exit_after = absl::Now() - t0;
  const int fenced = (*a)->CountLogLines("is stale", log_from);
  EXPECT_TRUE(driver.WaitAllTerminal(absl::Seconds(90)));
  driver.Stop();
  (*b)->Signal(SIGTERM);
  EXPECT_TRUE((*b)->WaitExit(absl::Seconds(30)));

  // Sagas B claimed straight from A (A had not released them: the previous audit row of the
  // saga still names A as owner).
  int64_t taken_while_held = -1;
  try {
    pqxx::connection conn(scenario.DbUrl());
    pqxx::nontransaction txn(conn);
    taken_while_held =
        txn.exec1(
               "SELECT count(*) FROM fault_owner_audit c WHERE c.owner = 'long-b' AND"
               " (SELECT p.owner FROM fault_owner_audit p WHERE p.saga_id = c.saga_id AND p.id < "
               "c.id"
               "  ORDER BY p.id DESC LIMIT 1) = 'long-a'")[0]
            .as<int64_t>();
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  const Figures figures = {
      {"sagas / first call held", absl::StrCat(sagas, " / 4.5 s")},
      {"lease / drain timeout", "2 s / 20 s"},
      {"exit after SIGTERM", Seconds(exit_after)},
      {"sagas taken by B before A released them", absl::StrCat(taken_while_held)},
      {"A's drained outcomes rejected by the fence", absl::StrCat(fenced)},
  };
  CheckReport report = CheckAndReport(scenario, driver.Records(), {}, figures, kAllInvariants);
  EXPECT_TRUE(report.Passed(kAllInvariants)) << report.InvariantSummary(kAllInvariants);
  EXPECT_TRUE(exited && WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_EQ(taken_while_held, 0) << "the draining replica stopped renewing its leases";
  EXPECT_EQ(fenced, 0) << "outcomes of calls that finished during the drain were thrown away";
}

}  // namespace
}  // namespace saga::fault

namespace saga::fault {
namespace {

// A drain whose calls outlast the drain timeout: the replica must still exit 0 within the drain
// timeout (+ 2 s), release its leases, and another replica finish the sagas. The participant
// holds each saga's first call 15 s; drain timeout 2 s.
TEST(FaultScenario, DrainTimeoutWithCallsInFlight) {
  Scenario scenario("drain_timeout");
  const int sagas = static_cast<int>(EnvInt("SAGA_FAULT_DRAIN_TIMEOUT_SAGAS", 20));
  ASSERT_TRUE(scenario.StartDatabase().ok());
  bank::v1::FaultConfig faults;
  faults.set_seed(scenario.seed());
  ASSERT_TRUE(scenario.StartBank(faults, false, {.timeout = "20s"}).ok());
  SagadOptions oa = scenario.SagadDefaults("dt-a");
  oa.lease = "10s";
  oa.drain_timeout = "2s";
  absl::StatusOr<SagadProcess*> a = scenario.Spawn(oa);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(scenario.InstallAudit().ok());
  SagadOptions ob = scenario.SagadDefaults("dt-b");
  absl::StatusOr<SagadProcess*> b = scenario.Spawn(ob);
  ASSERT_TRUE(b.ok()) << b.status();

  Driver driver({.addresses = {(*a)->address()}, .db_url = scenario.DbUrl(), .in_flight = sagas},
                MakeWorkload({.seed = scenario.seed(),
                              .sagas = sagas,
                              .key_prefix = "dt",
                              .hold_first_step_ms = 15000}));
  driver.Start();
  ASSERT_TRUE(driver.WaitAllStarted(absl::Seconds(30)));
  WaitUntil([&] { return scenario.BankInFlight() >= sagas; }, absl::Seconds(10));
  const absl::Time t0 = absl::Now();
  (*a)->Signal(SIGTERM);
  int status = -1;
  const bool exited = (*a)->WaitExit(absl::Seconds(20), &status);
  const absl::Duration exit_after = absl::Now() - t0;
  const std::string how = !exited             ? "still running"
                          : WIFEXITED(status) ? absl::StrCat("exit ", WEXITSTATUS(status))
                                              : absl::StrCat("signal ", WTERMSIG(status));
  EXPECT_TRUE(driver.WaitAllTerminal(absl::Seconds(90)));
  driver.Stop();
  (*b)->Signal(SIGTERM);
  EXPECT_TRUE((*b)->WaitExit(absl::Seconds(30)));
  const Figures figures = {
      {"sagas / first call held", absl::StrCat(sagas, " / 15 s")},
      {"drain timeout", "2 s"},
      {"A after SIGTERM", absl::StrCat(how, " after ", Seconds(exit_after))},
  };
  CheckOptions options;
  options.heal_time = t0 + absl::Seconds(15);
  CheckReport report = CheckAndReport(scenario, driver.Records(), options, figures, kAllInvariants);
  EXPECT_TRUE(report.Passed(kAllInvariants)) << report.InvariantSummary(kAllInvariants);
  EXPECT_EQ(how, "exit 0") << "log " << oa.log_path;
  EXPECT_LE(exit_after, absl::Seconds(4));
}

}  // namespace
}  // namespace saga::fault
